//! Profiles single-query embedding (development aid). `MEMEX_PROBE_CANDLE=1` times the candle
//! path (candle-transformers' BERT, what GPUs run) on the CPU instead of memex's own encoder.
//! `MEMEX_PROBE_BATCH=N` times one `embed` call of N query-like texts instead (texts/s).
//! `MEMEX_PRECISION` and `MEMEX_KERNEL` pick the precision and kernels as for `memex`.
use memex::embed::{Embedder, EmbedderOptions, MiniLmEmbedder};
use std::time::Instant;
fn main() {
    let threads = std::env::var("MEMEX_THREADS")
        .ok()
        .and_then(|s| s.parse().ok());
    let e = MiniLmEmbedder::load(
        std::path::Path::new("models/all-MiniLM-L6-v2"),
        EmbedderOptions {
            threads,
            candle_forward: std::env::var("MEMEX_PROBE_CANDLE").is_ok_and(|v| v == "1"),
            precision: std::env::var("MEMEX_PRECISION")
                .map_or(Ok(Default::default()), |v| v.parse())
                .unwrap(),
            kernel: std::env::var("MEMEX_KERNEL")
                .map_or(Ok(Default::default()), |v| v.parse())
                .unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    let q = "why was my settlement for pay_ABC123 delayed after the customer paid by UPI";
    println!("tokens {}", e.count_tokens(q).unwrap());
    let batch: usize = std::env::var("MEMEX_PROBE_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if batch > 0 {
        let texts: Vec<String> = (0..batch).map(|i| format!("{q} case {i}")).collect();
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let mut lat = Vec::new();
        for _ in 0..60 {
            let t0 = Instant::now();
            e.embed(&refs).unwrap();
            lat.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "batch {batch}: p50 {:.2} ms ({:.0} texts/s)",
            lat[30],
            batch as f64 / lat[30] * 1e3
        );
        return;
    }
    let mut lat = Vec::new();
    for _ in 0..400 {
        let t0 = Instant::now();
        e.embed_one(q).unwrap();
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "p50 {:.2} ms p10 {:.2} p99 {:.2}",
        lat[200], lat[40], lat[396]
    );
}
