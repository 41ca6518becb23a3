//! `memex bench retrieval`: HNSW vs exact search on real MiniLM vectors extended by mixing real
//! neighbours (or by perturbation), plus end-to-end search and ingestion figures.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use memex::index::{AnyIndex, FlatIndex, HnswParams, IndexKind, VectorIndex};
use memex::testkit::dataset::{self, VectorSet};
use rayon::prelude::*;

use super::GlobalArgs;

/// The `memex bench` subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// HNSW vs exact search on real MiniLM vectors (extended by perturbation): build time,
    /// recall@k, latency percentiles, queries/s; optionally end-to-end hybrid search.
    Retrieval(RetrievalArgs),
}

/// `memex bench ...`.
pub fn run(g: &GlobalArgs, c: BenchCommand) -> anyhow::Result<ExitCode> {
    match c {
        BenchCommand::Retrieval(a) => retrieval(g, a),
    }
}

/// Arguments of `memex bench retrieval`.
#[derive(Args, Debug)]
pub struct RetrievalArgs {
    /// Index sizes to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub sizes: Vec<usize>,
    /// Neighbours per query.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Search candidate-list sizes to sweep (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128")]
    pub ef: Vec<usize>,
    /// HNSW neighbours per node (layer 0 keeps 2·M).
    #[arg(long = "m", default_value_t = 16)]
    pub m: usize,
    /// Candidate-list size while building.
    #[arg(long, default_value_t = 200)]
    pub ef_construction: usize,
    /// Number of queries (built like the extension vectors, not in the index).
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// How the real embeddings are extended to the benchmark sizes: `mix` (between real
    /// nearest neighbours, plus small noise) or `perturb` (Gaussian noise around one vector).
    #[arg(long, default_value = "mix", value_parser = ["mix", "perturb"])]
    pub extend: String,
    /// Seed of the HNSW level assignment (default: the library's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Threads for building (searches are single-threaded).
    #[arg(long, default_value_t = 1)]
    pub build_threads: usize,
    /// Cache of the real embeddings of the corpus texts (created when missing or too small;
    /// a cache holding more vectors is reused for its first texts-count vectors).
    #[arg(long, value_name = "FILE")]
    pub real: Option<PathBuf>,
    /// Write the extended vector set here (same format) for peer benchmarks.
    #[arg(long, value_name = "FILE")]
    pub vectors_out: Option<PathBuf>,
    /// Repository root holding data/corpus/texts.jsonl and data/kb/.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub texts_root: PathBuf,
    /// Write the query vectors here (same format as the cache) for peer benchmarks.
    #[arg(long, value_name = "FILE")]
    pub queries_out: Option<PathBuf>,
    /// Also measure end-to-end search (embed + HNSW + FTS5 + fusion) on a knowledge base seeded
    /// with this many chunks (0: skip).
    #[arg(long, default_value_t = 0)]
    pub e2e_chunks: usize,
    /// Also measure ingestion of data/kb against raw embedding, and re-ingesting an unchanged
    /// tree of this many small files (0: skip).
    #[arg(long, default_value_t = 0)]
    pub ingest_files: usize,
    /// Skip the HNSW-vs-exact table.
    #[arg(long)]
    pub no_ann: bool,
    /// Index backends to measure (comma-separated), side by side with the default `hnsw`
    /// (always measured), each against the same vectors, queries and exact ground truth.
    #[arg(
        long = "index",
        env = "MEMEX_INDEX",
        value_enum,
        value_delimiter = ',',
        default_value = "hnsw"
    )]
    pub index: Vec<IndexKind>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Recall@k that does not count ties as misses (as the peer script does): a found item counts
/// when it scores at least the exact k-th score (duplicate vectors in the real corpus make the
/// exact top-k ambiguous).
fn recall_with_ties(truth: &[(u64, f32)], found: &[(u64, f32)]) -> f64 {
    let Some(&(_, kth)) = truth.last() else {
        return 1.0;
    };
    let hits = found.iter().filter(|(_, s)| *s >= kth - 1e-6).count();
    hits.min(truth.len()) as f64 / truth.len() as f64
}

/// Row of the results table.
#[derive(serde::Serialize)]
struct Row {
    index: &'static str,
    build_s: f64,
    size: usize,
    ef: usize,
    recall: f64,
    p50_us: f64,
    p99_us: f64,
    qps: f64,
}

/// Runs the retrieval benchmark.
pub fn retrieval(g: &GlobalArgs, a: RetrievalArgs) -> anyhow::Result<ExitCode> {
    let largest = a.sizes.iter().copied().max().unwrap_or(0);
    let cache = a
        .real
        .clone()
        .unwrap_or_else(|| g.data_dir().join("bench-real.bin"));
    let started = Instant::now();
    let texts = dataset::corpus_texts(&a.texts_root);
    anyhow::ensure!(
        !texts.is_empty(),
        "no texts under {} (data/corpus/texts.jsonl, data/kb/*.md)",
        a.texts_root.display()
    );
    let embedder = g.load_embedder()?;
    let real = dataset::real_embeddings(&embedder, &texts, &cache)?;
    drop(embedder);
    let (all, queries) = if a.extend == "perturb" {
        let all = dataset::extend_by_perturbation(&real, largest, dataset::PERTURBATION_SIGMA, 42);
        let q = dataset::queries(&all, a.queries, dataset::PERTURBATION_SIGMA, 7);
        (all, q)
    } else {
        (
            dataset::extend_by_mixing(&real, largest, 42),
            dataset::mixed_queries(&real, a.queries, 7),
        )
    };
    eprintln!(
        "vectors: {} real (dim {}, {}) extended by {} to {} in {:.1} s",
        real.len(),
        real.dim,
        cache.display(),
        a.extend,
        all.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(out) = &a.vectors_out {
        all.save(out).context("writing the vectors")?;
    }
    if let Some(out) = &a.queries_out {
        queries.save(out).context("writing the queries")?;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.build_threads.max(1))
        .build()?;
    let mut rows = Vec::new();
    let mut kinds = vec![IndexKind::Hnsw];
    kinds.extend(a.index.iter().copied().filter(|k| *k != IndexKind::Hnsw));
    if a.no_ann {
        return extras(g, &a, &all);
    }
    println!(
        "| index | vectors | build s ({} thr) | index MiB | ef | recall@{} | p50 µs | p99 µs | queries/s |",
        a.build_threads, a.k
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &size in &a.sizes {
        let set = all.truncated(size);
        let ids: Vec<u64> = (0..set.len() as u64).collect();
        let params = HnswParams {
            m: a.m,
            ef_construction: a.ef_construction,
            ef_search: 64,
            seed: a.seed.unwrap_or(memex::index::DEFAULT_SEED),
        };
        let mut flat = FlatIndex::new(set.dim);
        for (i, id) in ids.iter().enumerate() {
            flat.add(*id, set.get(i))?;
        }
        // Ground truth in parallel; then an exact single-thread timing on a sample.
        let truth: Vec<Vec<(u64, f32)>> = (0..queries.len())
            .into_par_iter()
            .map(|q| flat.search(queries.get(q), a.k).unwrap_or_default())
            .collect();
        let sample = queries.len().min(200);
        let t = Instant::now();
        for q in 0..sample {
            let _ = flat.search(queries.get(q), a.k)?;
        }
        let exact_qps = sample as f64 / t.elapsed().as_secs_f64();
        for &kind in &kinds {
            let t = Instant::now();
            let mut index = pool.install(|| {
                AnyIndex::build(kind, set.dim, params.clone(), ids.clone(), set.data.clone())
            })?;
            let build_s = t.elapsed().as_secs_f64();
            let mib = match &index {
                AnyIndex::Hnsw(h) => format!("{:.1}", h.memory_bytes() as f64 / (1024.0 * 1024.0)),
                _ => "-".to_owned(),
            };
            for &ef in &a.ef {
                index.set_ef_search(ef);
                let mut lat = Vec::with_capacity(queries.len());
                let mut rec = 0.0;
                let t_all = Instant::now();
                for (q, truth) in truth.iter().enumerate() {
                    let t = Instant::now();
                    let found = index.search(queries.get(q), a.k)?;
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                    rec += recall_with_ties(truth, &found);
                }
                let total = t_all.elapsed().as_secs_f64();
                lat.sort_by(|x, y| x.total_cmp(y));
                let row = Row {
                    index: kind.name(),
                    build_s,
                    size,
                    ef,
                    recall: rec / queries.len() as f64,
                    p50_us: percentile(&lat, 0.5),
                    p99_us: percentile(&lat, 0.99),
                    qps: queries.len() as f64 / total,
                };
                println!(
                    "| {} | {} | {:.2} | {} | {} | {:.4} | {:.0} | {:.0} | {:.0} |",
                    kind, size, build_s, mib, ef, row.recall, row.p50_us, row.p99_us, row.qps
                );
                rows.push(row);
            }
        }
        println!("| exact | {size} | | | | 1.0000 | | | {exact_qps:.0} |");
    }
    if g.json {
        println!("{}", serde_json::to_string(&rows)?);
    }
    extras(g, &a, &all)
}

fn extras(g: &GlobalArgs, a: &RetrievalArgs, all: &VectorSet) -> anyhow::Result<ExitCode> {
    if a.e2e_chunks > 0 {
        e2e(g, a, all)?;
    }
    if a.ingest_files > 0 {
        ingest_bench(g, a)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn scratch_dir(g: &GlobalArgs, name: &str) -> anyhow::Result<PathBuf> {
    let dir = g
        .data_dir()
        .join(format!("bench-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn summary(label: &str, mut lat: Vec<f64>) {
    lat.sort_by(|x, y| x.total_cmp(y));
    println!(
        "| {label} | {:.2} | {:.2} | {:.2} |",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.iter().sum::<f64>() / lat.len().max(1) as f64
    );
}

/// End-to-end search latency on a knowledge base seeded with cached vectors.
fn e2e(g: &GlobalArgs, a: &RetrievalArgs, all: &VectorSet) -> anyhow::Result<()> {
    use memex::embed::Embedder;
    use memex::kb::{Chunk, KnowledgeBase, SearchMode};
    use std::sync::Arc;
    let n = a.e2e_chunks.min(all.len());
    let texts = dataset::corpus_texts(&a.texts_root);
    anyhow::ensure!(
        !texts.is_empty(),
        "no corpus texts under {}",
        a.texts_root.display()
    );
    let dir = scratch_dir(g, "e2e")?;
    let embedder: Arc<dyn Embedder> = Arc::new(g.load_embedder()?);
    let kb = KnowledgeBase::open(&dir, embedder.clone())?;
    let t = Instant::now();
    let per_doc = 100;
    for d in 0..n.div_ceil(per_doc) {
        let range = d * per_doc..((d + 1) * per_doc).min(n);
        let chunks: Vec<Chunk> = range
            .clone()
            .map(|i| Chunk {
                heading: vec![format!("Bench document {d}")],
                text: texts[i % texts.len()].clone(),
                line_start: i + 1,
                line_end: i + 1,
                metadata: None,
            })
            .collect();
        let vectors: Vec<Vec<f32>> = range.map(|i| all.get(i).to_vec()).collect();
        kb.insert_embedded(&format!("bench/doc-{d:05}.md"), &chunks, &vectors)?;
    }
    let seed_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    kb.sync_index(true)?;
    let index_s = t.elapsed().as_secs_f64();
    let qtext = std::fs::read_to_string(a.texts_root.join("data/corpus/queries.jsonl"))
        .context("reading data/corpus/queries.jsonl")?;
    let queries: Vec<String> = qtext
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("query").and_then(|q| q.as_str()).map(str::to_string))
        .collect();
    // A second handle on the same store: its keyword leg sees each query's terms for the
    // first time (the per-term document-frequency cache is per handle).
    let cold = KnowledgeBase::open(&dir, embedder.clone())?;
    // Warm up.
    for q in queries.iter().take(5) {
        kb.search(q, 10, SearchMode::Hybrid)?;
    }
    let (mut full, mut embed, mut vector, mut keyword, mut hybrid, mut keyword_cold) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for q in &queries {
        let t = Instant::now();
        cold.search_with_vector(q, &[], 10, SearchMode::Keyword)?;
        keyword_cold.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        kb.search(q, 10, SearchMode::Hybrid)?;
        full.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let v = embedder.embed_one(q)?;
        embed.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        kb.search_with_vector(q, &v, 10, SearchMode::Vector)?;
        vector.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        kb.search_with_vector(q, &v, 10, SearchMode::Keyword)?;
        keyword.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        kb.search_with_vector(q, &v, 10, SearchMode::Hybrid)?;
        hybrid.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!();
    println!(
        "End-to-end search, {n} chunks (seeded in {seed_s:.1} s, index built in {index_s:.1} s), {} queries, k=10:",
        queries.len()
    );
    println!("| stage | p50 ms | p99 ms | mean ms |");
    println!("|---|---:|---:|---:|");
    summary("hybrid search incl. query embedding", full);
    summary("query embedding only", embed);
    summary("vector (HNSW + rows)", vector);
    summary(
        "keyword (FTS5 BM25 + rows), term frequencies cached",
        keyword,
    );
    summary("keyword, first sight of the query's terms", keyword_cold);
    summary("hybrid without embedding", hybrid);
    drop(kb);
    drop(cold);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Ingestion throughput vs raw embedding, and re-ingesting an unchanged tree.
fn ingest_bench(g: &GlobalArgs, a: &RetrievalArgs) -> anyhow::Result<()> {
    use memex::embed::Embedder;
    use memex::kb::{IngestOptions, KnowledgeBase};
    use std::sync::Arc;
    let embedder: Arc<dyn Embedder> = Arc::new(g.load_embedder()?);
    let dir = scratch_dir(g, "ingest")?;
    let kb = KnowledgeBase::open(&dir, embedder.clone())?;
    let report = kb.ingest(&[a.texts_root.join("data/kb")], &IngestOptions::default())?;
    let ingest_rate = report.chunks_added as f64 / report.seconds;
    // Raw embedding of exactly the texts ingestion embedded.
    let conn = memex::sqlite::OpenOptions::new()
        .read_only()
        .open(&dir.join(memex::kb::DB_FILE))?;
    let mut stmt = conn.prepare("SELECT heading, text FROM chunks ORDER BY id")?;
    let texts: Vec<String> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .filter_map(Result::ok)
        .map(|(h, t)| if h.is_empty() { t } else { format!("{h}\n{t}") })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let t = Instant::now();
    for batch in refs.chunks(kb.options().embed_batch) {
        embedder.embed(batch)?;
    }
    let raw_rate = refs.len() as f64 / t.elapsed().as_secs_f64();
    println!();
    println!("| ingestion of data/kb | value |");
    println!("|---|---:|");
    println!(
        "| files / chunks | {} / {} |",
        report.files_new, report.chunks_added
    );
    println!("| ingest seconds | {:.2} |", report.seconds);
    println!("| ingest chunks/s | {ingest_rate:.1} |");
    println!("| raw embedding chunks/s (same texts, same batches) | {raw_rate:.1} |");
    println!("| ratio | {:.2} |", ingest_rate / raw_rate);
    drop(stmt);
    drop(conn);
    drop(kb);

    let tree = scratch_dir(g, "tree")?;
    for i in 0..a.ingest_files {
        let sub = tree.join(format!("d{:02}", i % 20));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(
            sub.join(format!("f{i:05}.md")),
            format!(
                "# File {i}\n\nShort note {i} about settlement batch {} and refund ref_{i:06}.\n",
                i % 97
            ),
        )?;
    }
    let dir2 = scratch_dir(g, "tree-kb")?;
    let kb = KnowledgeBase::open(&dir2, embedder.clone())?;
    let first = kb.ingest(std::slice::from_ref(&tree), &IngestOptions::default())?;
    drop(kb);
    // A fresh process-like open, as `memex ingest` would do.
    let t = Instant::now();
    let kb = KnowledgeBase::open(&dir2, embedder)?;
    let second = kb.ingest(std::slice::from_ref(&tree), &IngestOptions::default())?;
    let reingest = t.elapsed().as_secs_f64();
    println!(
        "| first ingest of {} small files | {:.2} s ({} chunks) |",
        a.ingest_files, first.seconds, first.chunks_added
    );
    println!(
        "| re-ingest unchanged ({} unchanged, {} embedded) incl. open | {reingest:.3} s |",
        second.files_unchanged, second.chunks_embedded
    );
    drop(kb);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
    let _ = std::fs::remove_dir_all(&tree);
    Ok(())
}
