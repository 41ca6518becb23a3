//! Profiles single-query embedding (development aid).
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
            ..Default::default()
        },
    )
    .unwrap();
    let q = "why was my settlement for pay_ABC123 delayed after the customer paid by UPI";
    println!("tokens {}", e.count_tokens(q).unwrap());
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
