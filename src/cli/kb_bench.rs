//! `memex bench retrieval`: HNSW vs exact search on real MiniLM vectors extended by perturbation.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use memex::index::dataset::{self, VectorSet};
use memex::index::{recall, FlatIndex, HnswIndex, HnswParams, VectorIndex};
use rayon::prelude::*;

use super::GlobalArgs;

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
    /// Number of queries (perturbed real vectors not in the index).
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// Threads for building (searches are single-threaded).
    #[arg(long, default_value_t = 1)]
    pub build_threads: usize,
    /// Vector cache file (created from real embeddings when missing or too small).
    #[arg(long, value_name = "FILE")]
    pub vectors: Option<PathBuf>,
    /// Repository root holding data/corpus/texts.jsonl and data/kb/.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub texts_root: PathBuf,
    /// Write the query vectors here (same format as the cache) for peer benchmarks.
    #[arg(long, value_name = "FILE")]
    pub queries_out: Option<PathBuf>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Row of the results table.
#[derive(serde::Serialize)]
struct Row {
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
        .vectors
        .clone()
        .unwrap_or_else(|| g.data_dir().join("bench-vectors.bin"));
    let started = Instant::now();
    let all = match VectorSet::load(&cache) {
        Ok(set) if set.len() >= largest => set,
        _ => {
            let embedder = g.load_embedder()?;
            let texts = dataset::corpus_texts(&a.texts_root);
            anyhow::ensure!(
                !texts.is_empty(),
                "no texts under {} (data/corpus/texts.jsonl, data/kb/*.md)",
                a.texts_root.display()
            );
            eprintln!("embedding {} texts for the vector cache...", texts.len());
            dataset::real_vectors(&embedder, &texts, largest, &cache)?
        }
    };
    eprintln!(
        "vectors: {} (dim {}) from {} in {:.1} s",
        all.len(),
        all.dim,
        cache.display(),
        started.elapsed().as_secs_f64()
    );
    let queries = dataset::queries(
        &all.truncated(largest.min(all.len())),
        a.queries,
        dataset::PERTURBATION_SIGMA,
        7,
    );
    if let Some(out) = &a.queries_out {
        queries.save(out).context("writing the queries")?;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.build_threads.max(1))
        .build()?;
    let mut rows = Vec::new();
    println!(
        "| vectors | build s ({} thr) | index MiB | ef | recall@{} | p50 µs | p99 µs | queries/s |",
        a.build_threads, a.k
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &size in &a.sizes {
        let set = all.truncated(size);
        let ids: Vec<u64> = (0..set.len() as u64).collect();
        let params = HnswParams {
            m: a.m,
            ef_construction: a.ef_construction,
            ef_search: 64,
        };
        let t = Instant::now();
        let mut index =
            pool.install(|| HnswIndex::build(set.dim, params, ids.clone(), set.data.clone()))?;
        let build_s = t.elapsed().as_secs_f64();
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
        for &ef in &a.ef {
            index.set_ef_search(ef);
            let mut lat = Vec::with_capacity(queries.len());
            let mut rec = 0.0;
            let t_all = Instant::now();
            for (q, truth) in truth.iter().enumerate() {
                let t = Instant::now();
                let found = index.search(queries.get(q), a.k)?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                rec += recall(truth, &found);
            }
            let total = t_all.elapsed().as_secs_f64();
            lat.sort_by(|x, y| x.total_cmp(y));
            let row = Row {
                size,
                ef,
                recall: rec / queries.len() as f64,
                p50_us: percentile(&lat, 0.5),
                p99_us: percentile(&lat, 0.99),
                qps: queries.len() as f64 / total,
            };
            println!(
                "| {} | {:.2} | {:.1} | {} | {:.4} | {:.0} | {:.0} | {:.0} |",
                size,
                build_s,
                index.memory_bytes() as f64 / (1024.0 * 1024.0),
                ef,
                row.recall,
                row.p50_us,
                row.p99_us,
                row.qps
            );
            rows.push(row);
        }
        println!("| {size} | exact | | | 1.0000 | | | {exact_qps:.0} |");
    }
    if g.json {
        println!("{}", serde_json::to_string(&rows)?);
    }
    Ok(ExitCode::SUCCESS)
}
