//! HNSW against exact search on ≥ 10,000 real(-derived) MiniLM vectors: recall, removal,
//! side list, persistence, and corrupt files.

#[path = "support/model.rs"]
mod model;
#[path = "support/kb.rs"]
mod support;

use memex::index::dataset::{queries, PERTURBATION_SIGMA};
use memex::index::{recall, FlatIndex, HnswIndex, HnswParams, VectorIndex};

const N: usize = 10_000;
const K: usize = 10;

fn mean_recall(hnsw: &HnswIndex, flat: &FlatIndex, q: &memex::index::dataset::VectorSet) -> f64 {
    let mut total = 0.0;
    for i in 0..q.len() {
        let truth = flat.search(q.get(i), K).unwrap();
        let found = hnsw.search(q.get(i), K).unwrap();
        assert_eq!(found.len(), K);
        assert!(
            found.windows(2).all(|w| w[0].1 >= w[1].1),
            "sorted best first"
        );
        total += recall(&truth, &found);
    }
    total / q.len() as f64
}

#[test]
fn hnsw_recall_at_10_on_real_vectors_and_its_lifecycle() {
    let set = support::real_vectors(N);
    assert_eq!(set.len(), N);
    let ids: Vec<u64> = (0..N as u64).map(|i| i * 3 + 1).collect();
    let hnsw = HnswIndex::build(
        set.dim,
        HnswParams::default(),
        ids.clone(),
        set.data.clone(),
    )
    .unwrap();
    let mut flat = FlatIndex::new(set.dim);
    for (i, &id) in ids.iter().enumerate() {
        flat.add(id, set.get(i)).unwrap();
    }
    assert_eq!(hnsw.len(), N);
    let q = queries(&set, 500, PERTURBATION_SIGMA, 99);
    let r = mean_recall(&hnsw, &flat, &q);
    println!("recall@10 over {N} real-derived vectors, 500 queries, ef=64: {r:.4}");
    assert!(r >= 0.98, "recall@10 = {r}");

    // Removal: tombstoned ids never come back; recall against the reduced ground truth holds.
    let mut hnsw = hnsw;
    for &id in ids.iter().step_by(7) {
        assert!(hnsw.remove(id));
        assert!(flat.remove(id));
    }
    assert!(!hnsw.contains(ids[0]));
    let r = mean_recall(&hnsw, &flat, &q);
    assert!(r >= 0.98, "recall@10 after removals = {r}");

    // Additions go to the exact side list and are found.
    let extra = queries(&set, 50, PERTURBATION_SIGMA, 5);
    for i in 0..extra.len() {
        let id = 1_000_000 + i as u64;
        hnsw.add(id, extra.get(i)).unwrap();
        flat.add(id, extra.get(i)).unwrap();
    }
    let top = hnsw.search(extra.get(3), 1).unwrap();
    assert_eq!(top[0].0, 1_000_003);
    assert_eq!(hnsw.len(), flat.len());

    // Persistence round trip keeps results identical.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kb.hnsw");
    hnsw.save(&path).unwrap();
    let loaded = HnswIndex::load(&path).unwrap();
    assert_eq!(loaded.len(), hnsw.len());
    for i in 0..20 {
        assert_eq!(
            loaded.search(q.get(i), K).unwrap(),
            hnsw.search(q.get(i), K).unwrap()
        );
    }
    // Compaction folds side list and tombstones into a new graph.
    let mut compacted = loaded;
    compacted.compact();
    assert_eq!((compacted.pending(), compacted.tombstones()), (0, 0));
    assert_eq!(compacted.len(), flat.len());
    let r = mean_recall(&compacted, &flat, &q);
    assert!(r >= 0.98, "recall@10 after compaction = {r}");

    // Truncated or damaged files are errors, not panics.
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 7, 64, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert!(HnswIndex::load(&path).is_err(), "truncated at {cut}");
    }
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 3;
    flipped[mid] ^= 0x40;
    std::fs::write(&path, &flipped).unwrap();
    assert!(HnswIndex::load(&path).is_err());
}

#[test]
fn wrong_dimensions_and_non_finite_vectors_are_rejected() {
    let mut idx = HnswIndex::new(4, HnswParams::default());
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
}
