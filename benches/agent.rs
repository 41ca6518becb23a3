//! Agent overhead per turn, excluding the LLM: memory assembly (query embedding, hybrid
//! knowledge-base search, this merchant's recent + similar episodes, the conversation buffer),
//! guards, one tool call, the audit log and persistence. The model is a `ScriptedModel` that
//! answers instantly (one tool call, then text), so what is timed is memex.
//!
//! Sizes: `MEMEX_BENCH_CHUNKS` (knowledge-base chunks: data/kb plus perturbed copies of its
//! vectors, default 20,000) and `MEMEX_BENCH_EPISODES` (episodes over 20 per merchant, default
//! 20,000). The target sizes are 100,000 chunks and 200,000 episodes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use memex::agent::{Agent, AgentConfig, AgentParts, AgentStore, Silent};
use memex::conversation::SqliteConversationStore;
use memex::domain::payments::{payments_registry, KbSearch, PaymentsDb, PaymentsDomain};
use memex::embed::{Embedder, EmbedderOptions, MiniLmEmbedder};
use memex::episodic::{EpisodeDraft, EpisodicStore};
use memex::kb::{Chunk, IngestOptions, KnowledgeBase};
use memex::llm::{ScriptedModel, ToolCall};
use memex::merchant::MerchantId;
use rand::{Rng, SeedableRng};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unit(rng: &mut rand::rngs::StdRng, base: &[f32], sigma: f32) -> Vec<f32> {
    let mut v: Vec<f32> = base
        .iter()
        .map(|x| x + sigma * (rng.random::<f32>() - 0.5))
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn bench(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("temp dir");
    let embedder: Arc<dyn Embedder> = Arc::new(
        MiniLmEmbedder::load(
            &root.join("models/all-MiniLM-L6-v2"),
            EmbedderOptions::default(),
        )
        .expect("model loads"),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);

    // Knowledge base: data/kb, then perturbed copies of a few real vectors up to the target.
    let kb = Arc::new(KnowledgeBase::open(dir.path(), Arc::clone(&embedder)).expect("kb"));
    kb.ingest(&[root.join("data/kb")], &IngestOptions::default())
        .expect("ingest");
    let target_chunks = env_usize("MEMEX_BENCH_CHUNKS", 20_000);
    let seeds = embedder
        .embed(&[
            "settlement delayed",
            "refund timeline for UPI",
            "GATEWAY_ERROR meaning",
            "KYC documents",
        ])
        .expect("embed");
    let have = kb.stats().map(|s| s.chunks as usize).unwrap_or(0);
    let mut added = have;
    while added < target_chunks {
        let n = (target_chunks - added).min(2_000);
        let chunks: Vec<Chunk> = (0..n)
            .map(|i| Chunk {
                heading: vec![format!("Synthetic {added}")],
                text: format!(
                    "synthetic passage {} about settlements refunds and payouts",
                    added + i
                ),
                line_start: 1,
                line_end: 1,
                metadata: None,
            })
            .collect();
        let vectors: Vec<Vec<f32>> = (0..n)
            .map(|i| unit(&mut rng, &seeds[i % seeds.len()], 0.2))
            .collect();
        kb.insert_embedded(&format!("synthetic/{added}.md"), &chunks, &vectors)
            .expect("insert");
        added += n;
    }
    kb.sync_index(true).expect("index");

    // Episodes: 20 per merchant.
    let episodes: Arc<dyn EpisodicStore> = rt
        .block_on(memex::episodic::open(None, dir.path()))
        .expect("episodes");
    let total_eps = env_usize("MEMEX_BENCH_EPISODES", 20_000);
    rt.block_on(async {
        for i in 0..total_eps {
            let m = MerchantId::parse(&format!("MID{:06}", i / 20)).expect("id");
            let v = unit(&mut rng, &seeds[i % seeds.len()], 0.3);
            episodes
                .save(
                    &m,
                    EpisodeDraft::new(format!("episode {i}: settlement query resolved"))
                        .with_embedding(v),
                )
                .await
                .expect("save");
        }
    });

    let payments = Arc::new(PaymentsDb::open_in_dir(dir.path()).expect("payments"));
    payments
        .seed_from_file(&root.join("data/payments/seed.json"))
        .expect("seed");
    let model = Arc::new(ScriptedModel::new());
    let agent = Agent::new(AgentParts {
        model: Arc::clone(&model) as _,
        tools: payments_registry(payments, Arc::new(KbSearch(Arc::clone(&kb)))).expect("tools"),
        embedder: Arc::clone(&embedder),
        kb: Some(Arc::clone(&kb)),
        episodes,
        conversations: Arc::new(
            SqliteConversationStore::open_in(dir.path()).expect("conversations"),
        ),
        store: Arc::new(AgentStore::open_in(dir.path()).expect("store")), // The rate limits pace a real model (10 calls/s); an instant scripted model would
        // otherwise measure the pacing, not the overhead.
        config: AgentConfig {
            llm_rate: (1e9, 1e9),
            tool_rate: (1e9, 1e9),
            ..AgentConfig::default()
        },
    })
    .with_domain(Arc::new(PaymentsDomain));
    let merchant = MerchantId::parse("MID000001").expect("id");
    eprintln!("agent bench: {added} chunks, {total_eps} episodes");

    let mut group = c.benchmark_group("agent_turn");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(15));
    let mut turn = 0u64;
    let mut samples = Vec::new();
    group.bench_function("overhead_excluding_llm", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                turn += 1;
                model
                    .push_tool_calls(vec![ToolCall::new(
                        format!("c{turn}"),
                        "get_merchant_account",
                        "{}",
                    )])
                    .push_text("Your settlement runs on T+2.");
                let session = format!("bench-{turn}");
                let t0 = Instant::now();
                rt.block_on(agent.ask(
                    &merchant,
                    &session,
                    "when will my settlement for pay_ABC123 arrive?",
                    &Silent,
                ))
                .expect("turn");
                let dt = t0.elapsed();
                samples.push(dt.as_secs_f64() * 1e3);
                total += dt;
            }
            total
        })
    });
    group.finish();
    samples.sort_by(|a, b| a.total_cmp(b));
    if !samples.is_empty() {
        let p = |q: f64| samples[((q * samples.len() as f64) as usize).min(samples.len() - 1)];
        eprintln!(
            "agent turn overhead over {} turns: p50 {:.2} ms, p99 {:.2} ms",
            samples.len(),
            p(0.50),
            p(0.99)
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
