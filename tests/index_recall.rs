//! The index conformance suite, run over every backend (`hnsw`, `hnsw_rs`, `flat`) on ≥ 10,000
//! real(-derived) MiniLM vectors: recall against exact search, removal, additions, replacement,
//! persistence, compaction, corrupt files and bad vectors.

use crate::support::kb as support;

use memex::index::{recall, AnyIndex, FlatIndex, HnswParams, IndexKind, VectorIndex};
use memex::testkit::dataset::{queries, PERTURBATION_SIGMA};

const N: usize = 10_000;
const K: usize = 10;

fn mean_recall(index: &AnyIndex, flat: &FlatIndex, q: &memex::testkit::dataset::VectorSet) -> f64 {
    let mut total = 0.0;
    for i in 0..q.len() {
        let truth = flat.search(q.get(i), K).unwrap();
        let found = index.search(q.get(i), K).unwrap();
        assert_eq!(found.len(), K);
        assert!(
            found.windows(2).all(|w| w[0].1 >= w[1].1),
            "sorted best first"
        );
        total += recall(&truth, &found);
    }
    total / q.len() as f64
}

fn recall_and_lifecycle(kind: IndexKind) {
    let set = support::real_vectors(N);
    assert_eq!(set.len(), N);
    let ids: Vec<u64> = (0..N as u64).map(|i| i * 3 + 1).collect();
    let index = AnyIndex::build(
        kind,
        set.dim,
        HnswParams::default(),
        ids.clone(),
        set.data.clone(),
    )
    .unwrap();
    assert_eq!(index.kind(), kind);
    let mut flat = FlatIndex::new(set.dim);
    for (i, &id) in ids.iter().enumerate() {
        flat.add(id, set.get(i)).unwrap();
    }
    assert_eq!(index.len(), N);
    let q = queries(&set, 500, PERTURBATION_SIGMA, 99);
    let r = mean_recall(&index, &flat, &q);
    println!("{kind}: recall@10 over {N} real-derived vectors, 500 queries, ef=64: {r:.4}");
    assert!(r >= 0.98, "{kind}: recall@10 = {r}");

    // Removal: removed ids never come back; recall against the reduced ground truth holds.
    let mut index = index;
    for &id in ids.iter().step_by(7) {
        assert!(index.remove(id));
        assert!(flat.remove(id));
    }
    assert!(!index.remove(ids[0]), "a second removal finds nothing");
    assert!(!index.contains(ids[0]));
    for i in 0..q.len() {
        let found = index.search(q.get(i), K).unwrap();
        assert!(found.iter().all(|(id, _)| flat.contains(*id)), "{kind}");
    }
    let r = mean_recall(&index, &flat, &q);
    assert!(r >= 0.98, "{kind}: recall@10 after removals = {r}");

    // Additions are found, including as their own nearest neighbour.
    let extra = queries(&set, 50, PERTURBATION_SIGMA, 5);
    for i in 0..extra.len() {
        let id = 1_000_000 + i as u64;
        index.add(id, extra.get(i)).unwrap();
        flat.add(id, extra.get(i)).unwrap();
    }
    let top = index.search(extra.get(3), 1).unwrap();
    assert_eq!(top[0].0, 1_000_003, "{kind}");
    assert_eq!(index.len(), flat.len());

    // Replacing an id's vector moves it.
    index.add(1_000_003, extra.get(4)).unwrap();
    flat.add(1_000_003, extra.get(4)).unwrap();
    assert_eq!(index.len(), flat.len());
    let top: Vec<u64> = index
        .search(extra.get(4), 2)
        .unwrap()
        .iter()
        .map(|h| h.0)
        .collect();
    assert!(top.contains(&1_000_003), "{kind}: {top:?}");

    // Persistence round trip keeps the ids, the generation and the results.
    index.set_generation(42);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(kind.file_name());
    index.save(&path).unwrap();
    let loaded = AnyIndex::load(kind, &path, HnswParams::default()).unwrap();
    assert_eq!(loaded.len(), index.len());
    assert_eq!(loaded.generation(), 42);
    let mut a = loaded.ids();
    let mut b = index.ids();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
    if kind == IndexKind::HnswRs {
        // hnsw_rs rebuilds its graph from the stored vectors on load (in parallel, so the
        // graph may differ): the results must be as good, not identical.
        let r = mean_recall(&loaded, &flat, &q);
        assert!(r >= 0.98, "{kind}: recall@10 after reload = {r}");
    } else {
        for i in 0..20 {
            assert_eq!(
                loaded.search(q.get(i), K).unwrap(),
                index.search(q.get(i), K).unwrap()
            );
        }
    }
    // A file of another backend is refused, not misread.
    for other in IndexKind::ALL.into_iter().filter(|o| *o != kind) {
        assert!(AnyIndex::load(other, &path, HnswParams::default()).is_err());
    }

    // Compaction folds tombstones (and side lists) into a new graph.
    let mut compacted = loaded;
    compacted.compact();
    assert_eq!((compacted.pending(), compacted.tombstones()), (0, 0));
    assert_eq!(compacted.len(), flat.len());
    let r = mean_recall(&compacted, &flat, &q);
    assert!(r >= 0.98, "{kind}: recall@10 after compaction = {r}");

    // Truncated or damaged files are errors, not panics.
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 7, 64, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert!(
            AnyIndex::load(kind, &path, HnswParams::default()).is_err(),
            "{kind}: truncated at {cut}"
        );
    }
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 3;
    flipped[mid] ^= 0x40;
    std::fs::write(&path, &flipped).unwrap();
    assert!(AnyIndex::load(kind, &path, HnswParams::default()).is_err());
}

fn bad_vectors_and_near_duplicates(kind: IndexKind) {
    let mut idx = AnyIndex::new(kind, 4, HnswParams::default());
    assert!(idx.add(1, &[1.0, 0.0]).is_err());
    assert!(idx.add(1, &[f32::NAN, 0.0, 0.0, 0.0]).is_err());
    assert!(idx.search(&[1.0], 3).is_err());
    assert!(idx.search(&[1.0, 0.0, 0.0, 0.0], 3).unwrap().is_empty());
    idx.add(1, &[1.0, 0.0, 0.0, 0.0]).unwrap();
    idx.add(1, &[0.0, 1.0, 0.0, 0.0]).unwrap();
    assert_eq!(idx.len(), 1);
    let top = idx.search(&[0.0, 1.0, 0.0, 0.0], 5).unwrap();
    assert_eq!(top.len(), 1);
    assert!((top[0].1 - 1.0).abs() < 1e-6);
    // Near-duplicates whose dot product rounds above 1 (what makes hnsw_rs's own DistDot
    // panic on real MiniLM vectors) are handled.
    let v = [0.5f32, 0.5, 0.5, 0.5];
    let over: Vec<f32> = v.iter().map(|x| x * 1.0001).collect();
    idx.add(2, &v).unwrap();
    idx.add(3, &over).unwrap();
    let top = idx.search(&over, 3).unwrap();
    assert_eq!(top.len(), 3);
    assert!(top[0].0 == 2 || top[0].0 == 3, "{top:?}");
}

macro_rules! conformance {
    ($($name:ident => $kind:expr),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[test]
                fn recall_at_10_on_real_vectors_and_its_lifecycle() {
                    recall_and_lifecycle($kind);
                }

                #[test]
                fn wrong_dimensions_non_finite_and_near_duplicate_vectors() {
                    bad_vectors_and_near_duplicates($kind);
                }
            }
        )*
    };
}

conformance! {
    hnsw => IndexKind::Hnsw,
    hnsw_rs => IndexKind::HnswRs,
    flat => IndexKind::Flat,
}
