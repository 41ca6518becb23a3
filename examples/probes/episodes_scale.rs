//! Episode search latency at scale and import throughput against raw embedding throughput
//! (issue 17 targets; figures in BENCHMARKS.md, "Episode retrieval on LoCoMo").
//!
//! ```text
//! cargo run --release --example episodes_scale -- \
//!     [--episodes 20000] [--queries 300] [--import 1024] [--backends sqlite,redis] \
//!     [--redis redis://127.0.0.1:PORT/0] [--model-dir models/all-MiniLM-L6-v2] [--sessions N]
//!
//! `--sessions N`: the big merchant's episodes are conversations of N turns (one
//! `occurred_at` a day per session, `metadata.speaker` alternating between two people), and
//! every query names one of them and half give a month, so the speaker and date hints, the
//! neighbours and the session prior all run (0, the default: distinct times, no speakers).
//! ```
//!
//! *Search*: `--episodes` episodes for one merchant (plus three other merchants of 1,000 each),
//! synthetic summaries over a Zipf-like vocabulary with random unit embeddings (search cost
//! depends on the count, the dimension and the postings, not on what the vectors mean), then
//! `--queries` hybrid searches (text + a real MiniLM query vector, k = 10) after one warm-up
//! search that builds the merchant's index; p50/p99 of `EpisodicStore::search`.
//!
//! *Import*: `--import` realistic summaries embedded raw (`MiniLmEmbedder::embed`, batches of
//! 64, the import's batch) and, back to back, imported with the library import (the code of
//! `memex episodes import` and of the HTTP import) into a fresh store; both in texts/s.
//! Redis needs `--redis URL` (start a private `redis-server` first).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use memex::embed::{Embedder, EmbedderOptions, MiniLmEmbedder};
use memex::episodic::import::{self, BatchEmbed};
use memex::episodic::{
    EpisodeDraft, EpisodicStore, RedisEpisodicStore, RedisOptions, SearchQuery,
    SqliteEpisodicStore, SqliteOptions,
};
use memex::merchant::MerchantId;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// The two people of `--sessions` conversations.
const SPEAKERS: [&str; 2] = ["Ana", "Ben"];

struct Args {
    episodes: usize,
    queries: usize,
    import: usize,
    backends: Vec<String>,
    redis: Option<String>,
    model_dir: PathBuf,
    sessions: usize,
}

fn args() -> Result<Args, AnyError> {
    let mut a = Args {
        episodes: 20_000,
        queries: 300,
        import: 1024,
        backends: vec!["sqlite".into()],
        redis: None,
        model_dir: PathBuf::from("models/all-MiniLM-L6-v2"),
        sessions: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--episodes" => a.episodes = value()?.parse()?,
            "--queries" => a.queries = value()?.parse()?,
            "--import" => a.import = value()?.parse()?,
            "--backends" => a.backends = value()?.split(',').map(str::to_owned).collect(),
            "--redis" => a.redis = Some(value()?),
            "--model-dir" => a.model_dir = value()?.into(),
            "--sessions" => a.sessions = value()?.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(a)
}

/// A tiny deterministic generator (SplitMix64), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A word index with a Zipf-like (1/rank) distribution over `n` words.
    fn zipf(&mut self, n: usize) -> usize {
        let x = self.unit();
        (((n as f64).powf(x)) as usize).saturating_sub(1).min(n - 1)
    }
}

const TOPICS: &[&str] = &[
    "refund",
    "payout",
    "settlement",
    "chargeback",
    "dispute",
    "invoice",
    "upi",
    "card",
    "netbanking",
    "kyc",
    "webhook",
    "api",
    "subscription",
    "mandate",
    "wallet",
    "emi",
    "gst",
    "tds",
    "onboarding",
    "limit",
    "risk",
    "fraud",
    "reversal",
    "capture",
];

fn vocabulary(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match TOPICS.get(i) {
            Some(t) => (*t).to_owned(),
            None => format!("term{i}"),
        })
        .collect()
}

fn summary(rng: &mut Rng, vocab: &[String], i: usize) -> String {
    let words: Vec<&str> = (0..12)
        .map(|_| vocab[rng.zipf(vocab.len())].as_str())
        .collect();
    format!(
        "Merchant asked about {} and {}; agent explained {} for order ord_{i:06} ({}).",
        words[0],
        words[1],
        words[2..8].join(" "),
        words[8..].join(" ")
    )
}

fn unit_vector(rng: &mut Rng, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|_| (rng.unit() * 2.0 - 1.0) as f32).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.into_iter().map(|x| x / norm).collect()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn open(
    backend: &str,
    a: &Args,
    dir: &std::path::Path,
    tag: &str,
) -> Result<Arc<dyn EpisodicStore>, AnyError> {
    Ok(match backend {
        "sqlite" => Arc::new(
            SqliteEpisodicStore::open(&dir.join(format!("{tag}.db")), SqliteOptions::default())
                .await?,
        ),
        "redis" => {
            let url = a
                .redis
                .as_deref()
                .ok_or("--backends redis needs --redis URL")?;
            let opts = RedisOptions {
                namespace: format!("bench{}{tag}", std::process::id()),
                ..RedisOptions::default()
            };
            Arc::new(RedisEpisodicStore::connect(url, opts).await?)
        }
        other => return Err(format!("unknown backend {other}").into()),
    })
}

struct Local(Arc<MiniLmEmbedder>);

#[async_trait::async_trait]
impl BatchEmbed for Local {
    async fn embed_batch(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, AnyError> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        Ok(self.0.embed(&refs)?)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), AnyError> {
    let a = args()?;
    let emb = Arc::new(MiniLmEmbedder::load(
        &a.model_dir,
        EmbedderOptions::default(),
    )?);
    let dim = emb.dim();
    let dir = tempfile::tempdir()?;
    let vocab = vocabulary(5_000);
    for backend in a.backends.clone() {
        // --- Search at scale.
        let store = open(&backend, &a, dir.path(), "scale").await?;
        let mut rng = Rng(17);
        let big = MerchantId::parse("SCALE_BIG")?;
        let start = chrono::DateTime::parse_from_rfc3339("2023-01-01T09:00:00Z")?
            .with_timezone(&chrono::Utc);
        let t0 = Instant::now();
        let mut i = 0;
        while i < a.episodes {
            let n = (a.episodes - i).min(1_000);
            let drafts = (i..i + n)
                .map(|j| {
                    let d = EpisodeDraft::new(summary(&mut rng, &vocab, j))
                        .with_embedding(unit_vector(&mut rng, dim));
                    if a.sessions == 0 {
                        return d;
                    }
                    let day = chrono::Duration::days((j / a.sessions) as i64);
                    d.with_occurred_at(start + day)
                        .with_metadata(serde_json::json!({"speaker": SPEAKERS[j % 2]}))
                })
                .collect();
            store.save_many(&big, drafts).await?;
            i += n;
        }
        for m in 0..3 {
            let other = MerchantId::parse(&format!("SCALE_OTHER{m}"))?;
            let drafts = (0..1_000)
                .map(|j| {
                    EpisodeDraft::new(summary(&mut rng, &vocab, j))
                        .with_embedding(unit_vector(&mut rng, dim))
                })
                .collect();
            store.save_many(&other, drafts).await?;
        }
        let fill_s = t0.elapsed().as_secs_f64();
        let texts: Vec<String> = (0..a.queries)
            .map(|q| {
                let text = format!(
                    "what did we tell them about {} {} for ord_{:06}",
                    vocab[rng.zipf(vocab.len())],
                    vocab[rng.zipf(vocab.len())],
                    q * 7 % a.episodes.max(1)
                );
                if a.sessions == 0 {
                    return text;
                }
                let days = (q * 37 % (a.episodes / a.sessions).max(1)) as i64;
                let month = (start + chrono::Duration::days(days)).format("%B %Y");
                let date = if q % 2 == 0 {
                    format!(" in {month}")
                } else {
                    String::new()
                };
                format!("{} said: {text}{date}", SPEAKERS[q % 2])
            })
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = emb.embed(&refs)?;
        let t0 = Instant::now();
        store
            .search(
                &big,
                &SearchQuery::new(texts[0].clone(), Some(vectors[0].clone()), 10),
            )
            .await?;
        let build_ms = t0.elapsed().as_secs_f64() * 1e3;
        let load_before = load();
        let mut lat = Vec::with_capacity(a.queries);
        for (q, v) in texts.iter().zip(&vectors) {
            let t0 = Instant::now();
            let hits = store
                .search(&big, &SearchQuery::new(q.clone(), Some(v.clone()), 10))
                .await?;
            lat.push(t0.elapsed().as_secs_f64() * 1e3);
            assert_eq!(hits.len(), 10);
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "search {backend}: {} episodes (sessions of {}) (+3,000 of other merchants) stored in {fill_s:.1} s; \
             first search (index build) {build_ms:.1} ms; warm {} queries k=10: \
             p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; load {load_before} -> {}",
            a.episodes,
            a.sessions,
            a.queries,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            load()
        );

        // --- Import vs raw embedding, back to back on the same texts.
        let mut rng = Rng(99);
        let lines: Vec<String> = (0..a.import)
            .map(|j| {
                serde_json::json!({
                    "summary": summary(&mut rng, &vocab, j),
                    "metadata": {"ticket": j},
                    "occurred_at": "2024-05-01",
                })
                .to_string()
            })
            .collect();
        let summaries: Vec<String> = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .map(|v| v["summary"].as_str().unwrap_or_default().to_owned())
            })
            .collect::<Result<_, _>>()?;
        emb.embed(&["warm-up"])?;
        let load_before = load();
        let t0 = Instant::now();
        for chunk in summaries.chunks(import::IMPORT_BATCH) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            emb.embed(&refs)?;
        }
        let raw_s = t0.elapsed().as_secs_f64();
        let fresh = open(&backend, &a, dir.path(), "import").await?;
        let m = MerchantId::parse("IMPORT_M")?;
        let local = Local(Arc::clone(&emb));
        let t0 = Instant::now();
        let n = import::import_lines(
            &*fresh,
            &local,
            &m,
            lines.iter().map(|l| Ok(l.clone())),
            &mut |_| {},
        )
        .await?;
        let import_s = t0.elapsed().as_secs_f64();
        assert_eq!(n as usize, a.import);
        assert_eq!(fresh.count(&m).await? as usize, a.import);
        let raw = a.import as f64 / raw_s;
        let imp = a.import as f64 / import_s;
        println!(
            "import {backend}: {} summaries: raw embedding {raw:.1} texts/s, import {imp:.1} \
             episodes/s = {:.1} % of raw; load {load_before} -> {}",
            a.import,
            100.0 * imp / raw,
            load()
        );
        fresh.forget(&m).await?;
        store.forget(&big).await?;
        for k in 0..3 {
            store
                .forget(&MerchantId::parse(&format!("SCALE_OTHER{k}"))?)
                .await?;
        }
    }
    Ok(())
}
