//! Quick throughput/latency probe for the embedder (a development aid; the real numbers come from
//! `cargo bench --bench embed`).
//!
//! `cargo run --release --example embed_speed -- [CORPUS.jsonl] [N] [BATCH]`

use std::time::Instant;

use memex::embed::{Embedder, EmbedderOptions, MiniLmEmbedder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let corpus = args
        .get(1)
        .cloned()
        .unwrap_or("data/corpus/texts.jsonl".into());
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(256);
    let batch: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let texts: Vec<String> = std::fs::read_to_string(&corpus)?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .take(n)
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let emb = MiniLmEmbedder::load(
        std::path::Path::new("models/all-MiniLM-L6-v2"),
        EmbedderOptions {
            max_batch: batch,
            max_batch_tokens: batch * 128,
            threads: std::env::var("MEMEX_THREADS")
                .ok()
                .and_then(|s| s.parse().ok()),
            ..EmbedderOptions::default()
        },
    )?;
    println!("load: {:?}", t0.elapsed());
    let tokens: usize = refs
        .iter()
        .map(|t| emb.count_tokens(t).unwrap_or(0).min(256))
        .sum();
    emb.embed(&refs[..refs.len().min(16)])?;
    let t0 = Instant::now();
    emb.embed(&refs)?;
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "{} texts, {} tokens: {:.1} texts/s, {:.0} tokens/s",
        refs.len(),
        tokens,
        refs.len() as f64 / dt,
        tokens as f64 / dt
    );
    let q = "why was my settlement for pay_ABC123 delayed after the customer paid by UPI";
    let mut lat = Vec::new();
    for _ in 0..100 {
        let t0 = Instant::now();
        emb.embed_one(q)?;
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!("query p50 {:.2} ms p99 {:.2} ms", lat[50], lat[98]);
    Ok(())
}
