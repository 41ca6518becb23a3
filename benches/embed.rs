//! Embedding benchmarks: throughput at batch 1, 32 and 64, single-query latency, cold start.
//!
//! Corpus: `data/corpus/texts.jsonl` (first `MEMEX_BENCH_TEXTS` texts, default 512).
//! Threads: `MEMEX_BENCH_THREADS` (default: all cores). `benches/compare_embed.sh` runs this and
//! the sentence-transformers peer in one go and prints the ratios.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use memex::embed::{Embedder, EmbedderOptions, MiniLmEmbedder};

fn model_dir() -> PathBuf {
    std::env::var_os("MEMEX_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
        })
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn corpus() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/corpus/texts.jsonl");
    let raw = std::fs::read_to_string(&path).expect("data/corpus/texts.jsonl is readable");
    let n = env_usize("MEMEX_BENCH_TEXTS").unwrap_or(512);
    raw.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .take(n)
        .collect()
}

/// A 14-word query, the size the agent embeds once per turn.
const QUERY: &str = "why was my settlement for pay_ABC123 delayed after the customer paid by UPI";

fn load(max_batch: usize) -> MiniLmEmbedder {
    MiniLmEmbedder::load(
        &model_dir(),
        EmbedderOptions {
            threads: env_usize("MEMEX_BENCH_THREADS"),
            max_batch,
            max_batch_tokens: max_batch * 128,
            ..EmbedderOptions::default()
        },
    )
    .expect("model loads")
}

fn throughput(c: &mut Criterion) {
    let texts = corpus();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let probe = load(32);
    let tokens: usize = refs
        .iter()
        .map(|t| probe.count_tokens(t).unwrap_or(0).min(256))
        .sum();
    eprintln!(
        "corpus: {} texts, {} tokens after truncation, {:.1} tokens/text",
        refs.len(),
        tokens,
        tokens as f64 / refs.len() as f64
    );
    let mut group = c.benchmark_group("embed_throughput");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for batch in [1usize, 32, 64] {
        let emb = load(batch);
        // Batch 1 is slow per text; a quarter of the corpus keeps the run short.
        let slice: &[&str] = if batch == 1 {
            &refs[..refs.len() / 4]
        } else {
            &refs
        };
        group.throughput(Throughput::Elements(slice.len() as u64));
        group.bench_with_input(BenchmarkId::new("texts", batch), &slice, |b, s| {
            b.iter(|| emb.embed(s).expect("embeds"))
        });
    }
    group.finish();
}

fn query_latency(c: &mut Criterion) {
    let emb = load(32);
    let mut group = c.benchmark_group("embed_query");
    group.sample_size(200);
    group.bench_function("single_14_words", |b| {
        b.iter(|| emb.embed_one(QUERY).expect("embeds"))
    });
    group.finish();
}

fn cold_start(c: &mut Criterion) {
    let bin = env!("CARGO_BIN_EXE_memex");
    let mut group = c.benchmark_group("embed_cold_start");
    group.sample_size(10);
    group.bench_function("process_start_to_first_vector", |b| {
        b.iter(|| {
            let out = Command::new(bin)
                .arg("--model-dir")
                .arg(model_dir())
                .args(["embed", QUERY])
                .output()
                .expect("memex runs");
            assert!(out.status.success());
        })
    });
    group.finish();
}

criterion_group!(benches, throughput, query_latency, cold_start);
criterion_main!(benches);
