//! `memex ingest`, `memex search`, `memex reindex`, `memex bench retrieval`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memex::kb::{FileStatus, IngestObserver, IngestOptions, KnowledgeBase, SearchHit, SearchMode};

use super::GlobalArgs;

/// Arguments of `memex ingest`.
#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Files or folders to ingest (folders recursively: .md, .markdown, .txt, .html, .htm, .jsonl).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Remove documents whose files are gone (or no longer ingestible under PATH).
    #[arg(long)]
    pub prune: bool,
}

/// Arguments of `memex search`.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// The query.
    #[arg(required = true, value_name = "QUERY")]
    pub query: Vec<String>,
    /// Number of results.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// hybrid (vector + keyword, fused), vector or keyword.
    #[arg(long, default_value = "hybrid")]
    pub mode: SearchMode,
}

/// Arguments of `memex reindex`.
#[derive(Args, Debug)]
pub struct ReindexArgs {}

/// The `memex bench` subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// HNSW vs exact search on real MiniLM vectors (extended by perturbation): build time,
    /// recall@k, latency percentiles, queries/s; optionally end-to-end hybrid search.
    Retrieval(super::kb_bench::RetrievalArgs),
}

fn open_kb(g: &GlobalArgs) -> anyhow::Result<KnowledgeBase> {
    let embedder = g.load_embedder().context("loading the embedding model")?;
    let dir = g.data_dir();
    KnowledgeBase::open(&dir, Arc::new(embedder))
        .with_context(|| format!("opening the knowledge base in {}", dir.display()))
}

struct Progress {
    bar: ProgressBar,
    chunks: usize,
    started: Instant,
}

impl Progress {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} files · {msg} · ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        Progress {
            bar,
            chunks: 0,
            started: Instant::now(),
        }
    }
}

impl IngestObserver for Progress {
    fn planned(&mut self, files: usize) {
        self.bar.set_length(files as u64);
    }

    fn file_done(&mut self, _path: &Path, _status: FileStatus, chunks: usize) {
        self.chunks += chunks;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!(
            "{} chunks · {:.0} chunks/s",
            self.chunks,
            self.chunks as f64 / secs
        ));
        self.bar.inc(1);
    }

    fn warning(&mut self, path: &Path, message: &str) {
        self.bar
            .suspend(|| eprintln!("warning: {}: {message}", path.display()));
    }
}

/// `memex ingest PATH... [--prune]`.
pub fn ingest(g: &GlobalArgs, a: IngestArgs) -> anyhow::Result<ExitCode> {
    let kb = open_kb(g)?;
    let mut progress = Progress::new();
    let report = kb.ingest_with(&a.paths, &IngestOptions { prune: a.prune }, &mut progress)?;
    progress.bar.finish_and_clear();
    if g.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} files: {} new, {} changed, {} unchanged, {} skipped, {} pruned; {} chunks added, {} removed in {:.2} s",
            report.files_seen,
            report.files_new,
            report.files_changed,
            report.files_unchanged,
            report.files_skipped,
            report.files_pruned,
            report.chunks_added,
            report.chunks_removed,
            report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn display_source(source: &str) -> String {
    let p = Path::new(source);
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(&cwd).ok().map(|r| r.display().to_string()))
        .unwrap_or_else(|| source.to_string())
}

#[derive(serde::Serialize)]
struct HitJson<'a> {
    chunk_id: u64,
    source: String,
    heading: &'a str,
    text: &'a str,
    score: f64,
    vector_rank: Option<usize>,
    keyword_rank: Option<usize>,
    line_start: usize,
    line_end: usize,
}

impl<'a> From<&'a SearchHit> for HitJson<'a> {
    fn from(h: &'a SearchHit) -> Self {
        HitJson {
            chunk_id: h.chunk_id,
            source: display_source(&h.source),
            heading: &h.heading,
            text: &h.text,
            score: h.score,
            vector_rank: h.vector_rank,
            keyword_rank: h.keyword_rank,
            line_start: h.line_start,
            line_end: h.line_end,
        }
    }
}

/// `memex search QUERY [-k 10] [--mode hybrid|vector|keyword]`.
pub fn search(g: &GlobalArgs, a: SearchArgs) -> anyhow::Result<ExitCode> {
    let kb = open_kb(g)?;
    let query = a.query.join(" ");
    let hits = kb.search(&query, a.k, a.mode)?;
    if g.json {
        let out: Vec<HitJson<'_>> = hits.iter().map(HitJson::from).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if hits.is_empty() {
        println!("no results");
    }
    for (i, h) in hits.iter().enumerate() {
        let rank = |r: Option<usize>| r.map_or("-".to_string(), |r| r.to_string());
        println!(
            "{}. {}:{}-{}  [{}]  score {:.4} (vector {}, keyword {})",
            i + 1,
            display_source(&h.source),
            h.line_start,
            h.line_end,
            h.heading,
            h.score,
            rank(h.vector_rank),
            rank(h.keyword_rank)
        );
        let snippet: String = h.text.chars().take(300).collect();
        for line in snippet.lines() {
            println!("    {line}");
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

/// `memex reindex`.
pub fn reindex(g: &GlobalArgs, _a: ReindexArgs) -> anyhow::Result<ExitCode> {
    let kb = open_kb(g)?;
    let started = Instant::now();
    let n = kb.reindex()?;
    let secs = started.elapsed().as_secs_f64();
    if g.json {
        println!(
            "{}",
            serde_json::json!({"vectors": n, "seconds": secs, "index": kb.index_path()})
        );
    } else {
        println!(
            "indexed {n} vectors in {secs:.2} s -> {}",
            kb.index_path().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `memex bench ...`.
pub fn bench(g: &GlobalArgs, c: BenchCommand) -> anyhow::Result<ExitCode> {
    match c {
        BenchCommand::Retrieval(a) => super::kb_bench::retrieval(g, a),
    }
}
