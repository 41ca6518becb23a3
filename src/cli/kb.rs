//! `memex ingest`, `memex search`, `memex reindex` (`memex bench retrieval` is `kb_bench.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memex::index::IndexKind;
use memex::kb::{
    display_path, escape_controls, FileStatus, IngestObserver, IngestOptions, KbOptions,
    KnowledgeBase, SearchHit, SearchMode,
};

use super::GlobalArgs;

/// Arguments of `memex ingest`.
#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 when every input was read (files skipped for their content, links and FIFOs are warnings only); 3 when a file or folder exists but could not be read (its stored documents are kept, even with --prune) or a PATH is missing, the rest being ingested; 1 on other errors."
)]
pub struct IngestArgs {
    /// Files or folders to ingest (folders recursively: .md, .markdown, .txt, .html, .htm, .jsonl).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Remove documents whose files are gone (or no longer ingestible under PATH). Documents
    /// whose files or folders exist but cannot be read are kept.
    #[arg(long)]
    pub prune: bool,
    /// Follow symbolic links whose target stays inside one of the given PATHs (by default no
    /// link is followed; each skipped link is one warning).
    #[arg(long)]
    pub follow_symlinks: bool,
    #[command(flatten)]
    pub index: IndexArg,
}

/// The `--index` flag of the commands that open the knowledge base's vector index.
#[derive(Args, Debug, Clone, Copy)]
pub struct IndexArg {
    /// Vector index backend: memex's own HNSW, the hnsw_rs crate's, or exact search. Each
    /// keeps its own index file in the data directory.
    #[arg(long = "index", env = "MEMEX_INDEX", value_enum, default_value_t = IndexKind::Hnsw)]
    pub kind: IndexKind,
}

/// How `memex search` ranks.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum ModeArg {
    /// Vector and keyword results fused by reciprocal rank.
    Hybrid,
    /// Vector similarity only.
    Vector,
    /// BM25 keyword search only.
    Keyword,
}

impl From<ModeArg> for SearchMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Hybrid => SearchMode::Hybrid,
            ModeArg::Vector => SearchMode::Vector,
            ModeArg::Keyword => SearchMode::Keyword,
        }
    }
}

/// Exit status of `memex ingest` when some inputs exist but could not be read (or a PATH is
/// missing): everything else was ingested and nothing of theirs was pruned.
pub const EXIT_PARTIAL: u8 = 3;

/// Arguments of `memex search`.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// The query.
    #[arg(required = true, value_name = "QUERY")]
    pub query: Vec<String>,
    /// Number of results (1 to 10000).
    #[arg(short, long, default_value_t = 10, value_parser = parse_k)]
    pub k: usize,
    /// How results are ranked.
    #[arg(long, value_enum, default_value_t = ModeArg::Hybrid)]
    pub mode: ModeArg,
    #[command(flatten)]
    pub index: IndexArg,
}

fn parse_k(s: &str) -> Result<usize, String> {
    let max = memex::kb::MAX_K;
    match s.trim().parse::<u64>() {
        Ok(k) if (1..=max as u64).contains(&k) => Ok(k as usize),
        _ => Err(format!("must be a whole number from 1 to {max}")),
    }
}

/// Arguments of `memex reindex`.
#[derive(Args, Debug)]
pub struct ReindexArgs {
    #[command(flatten)]
    pub index: IndexArg,
}

fn open_kb(g: &GlobalArgs, index: IndexArg) -> anyhow::Result<KnowledgeBase> {
    let embedder = g.load_embedder().context("loading the embedding model")?;
    let dir = g.data_dir();
    KnowledgeBase::open_with(&dir, Arc::new(embedder), kb_options(g, index)?)
        .with_context(|| format!("opening the knowledge base in {}", display_path(&dir)))
}

/// `memex ingest --kb-url`: ingests into a working copy of the latest published generation
/// (`kb-work/` in the data directory) and publishes the result as the next generation.
fn ingest_published(
    g: &GlobalArgs,
    shared: &memex::kb::publish::SharedKb,
    index: IndexArg,
    paths: &[PathBuf],
    opts: &IngestOptions,
    progress: &mut Progress,
) -> anyhow::Result<(memex::kb::IngestReport, String)> {
    let embedder = g.load_embedder().context("loading the embedding model")?;
    let work = g.data_dir().join(memex::kb::follow::WORK_DIR);
    let out = shared
        .ingest(
            &work,
            Arc::new(embedder),
            kb_options(g, index)?,
            paths,
            opts,
            progress,
        )
        .with_context(|| {
            format!(
                "publishing to {}",
                escape_controls(&shared.url().to_string())
            )
        })?;
    Ok(out)
}

fn kb_options(g: &GlobalArgs, index: IndexArg) -> anyhow::Result<KbOptions> {
    g.tuning.kb_options(index.kind)
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
            .suspend(|| eprintln!("warning: {}: {message}", display_path(path)));
    }
}

/// `memex ingest PATH... [--prune]`.
pub fn ingest(g: &GlobalArgs, a: IngestArgs) -> anyhow::Result<ExitCode> {
    let mut progress = Progress::new();
    let opts = IngestOptions {
        prune: a.prune,
        follow_symlinks: a.follow_symlinks,
    };
    let (report, published) = match g.shared_kb()? {
        None => (
            open_kb(g, a.index)?.ingest_with(&a.paths, &opts, &mut progress)?,
            None,
        ),
        Some(shared) => {
            let (report, generation) =
                ingest_published(g, &shared, a.index, &a.paths, &opts, &mut progress)?;
            (report, Some((generation, shared.url().to_string())))
        }
    };
    progress.bar.finish_and_clear();
    if g.json {
        let mut out = serde_json::to_value(&report)?;
        if let (Some((generation, url)), Some(obj)) = (&published, out.as_object_mut()) {
            obj.insert("generation".into(), generation.clone().into());
            obj.insert("kb_url".into(), url.clone().into());
        }
        println!("{out}");
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
        if let Some((generation, url)) = &published {
            println!("published {generation} at {}", escape_controls(url));
        }
    }
    if report.files_unreadable > 0 {
        eprintln!(
            "error: {} input(s) could not be read (see the warnings); exit status {EXIT_PARTIAL}",
            report.files_unreadable
        );
        return Ok(ExitCode::from(EXIT_PARTIAL));
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

/// `memex search QUERY [-k 10] [--mode hybrid|vector|keyword]`: reads the knowledge base (with
/// `--kb-url`, the published one) and creates nothing in it.
pub fn search(g: &GlobalArgs, a: SearchArgs) -> anyhow::Result<ExitCode> {
    let embedder = g.load_embedder().context("loading the embedding model")?;
    let kb = super::kb_read::open(g, Arc::new(embedder), kb_options(g, a.index)?, true)?;
    let query = a.query.join(" ");
    let hits = kb.search(&query, a.k, a.mode.into())?;
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
            escape_controls(&display_source(&h.source)),
            h.line_start,
            h.line_end,
            escape_controls(&h.heading),
            h.score,
            rank(h.vector_rank),
            rank(h.keyword_rank)
        );
        let snippet: String = h.text.chars().take(300).collect();
        for line in snippet.lines() {
            println!("    {}", escape_controls(line));
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

/// `memex reindex`.
pub fn reindex(g: &GlobalArgs, a: ReindexArgs) -> anyhow::Result<ExitCode> {
    let kb = open_kb(g, a.index)?;
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
            display_path(&kb.index_path())
        );
    }
    Ok(ExitCode::SUCCESS)
}
