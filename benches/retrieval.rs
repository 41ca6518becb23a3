//! Retrieval micro-benchmarks on real(-derived) MiniLM vectors: HNSW search at several ef,
//! exact search, index build, fusion. Vectors are cached under the target dir; building the
//! cache embeds the repository's corpus with the real model once.
//!
//! The full table (10k/100k, recall, percentiles, peers, end-to-end) comes from
//! `memex bench retrieval`; see notes/kb-bench.md.

use std::path::{Path, PathBuf};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use memex::index::{FlatIndex, HnswIndex, HnswParams, VectorIndex};
use memex::testkit::dataset::{self, VectorSet, PERTURBATION_SIGMA};

const N: usize = 10_000;

fn vectors() -> VectorSet {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("memex-kb-bench-vectors-v1.bin");
    if let Ok(set) = VectorSet::load(&cache) {
        if set.len() >= N {
            return set.truncated(N);
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model_dir = std::env::var_os("MEMEX_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models/all-MiniLM-L6-v2"));
    let embedder =
        memex::embed::MiniLmEmbedder::load(&model_dir, memex::embed::EmbedderOptions::default())
            .expect("the model loads (run `memex model fetch`)");
    let mut texts = dataset::corpus_texts(&root);
    texts.truncate(3000);
    dataset::real_vectors(&embedder, &texts, N, &cache).expect("embedding the corpus")
}

fn bench(c: &mut Criterion) {
    let set = vectors();
    let ids: Vec<u64> = (0..set.len() as u64).collect();
    let queries = dataset::queries(&set, 256, PERTURBATION_SIGMA, 11);
    let mut hnsw = HnswIndex::build(
        set.dim,
        HnswParams::default(),
        ids.clone(),
        set.data.clone(),
    )
    .unwrap();
    let mut flat = FlatIndex::new(set.dim);
    for (i, id) in ids.iter().enumerate() {
        flat.add(*id, set.get(i)).unwrap();
    }

    let mut g = c.benchmark_group("search_10k_k10");
    for ef in [16usize, 32, 64, 128] {
        hnsw.set_ef_search(ef);
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("hnsw", ef), &ef, |b, _| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                black_box(hnsw.search(queries.get(i), 10).unwrap())
            })
        });
    }
    let mut i = 0;
    g.bench_function("exact", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            black_box(flat.search(queries.get(i), 10).unwrap())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    let small = set.truncated(2000);
    g.bench_function("hnsw_2k_m16_efc200", |b| {
        b.iter(|| {
            HnswIndex::build(
                small.dim,
                HnswParams::default(),
                (0..2000).collect(),
                small.data.clone(),
            )
            .unwrap()
        })
    });
    g.finish();

    let v: Vec<u64> = (0..40).collect();
    let k: Vec<u64> = (20..60).rev().collect();
    c.bench_function("rrf_40x40", |b| {
        b.iter(|| black_box(memex::kb::fusion::rrf(&v, &k)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
