//! `memex eval locomo FILE...`: LoCoMo turn-level retrieval recall of episodic memory;
//! `memex eval export` and `memex eval agent` (stored sessions as test cases) are in
//! `eval_cases.rs`.
//!
//! A benchmark, not a test: it imports each conversation as its own merchant into a scratch
//! SQLite database (or the store named by `--episodic`, under fresh merchant ids that are
//! forgotten afterwards), asks every question of categories 1–4, and prints recall@k overall
//! and per category, with search latency.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use memex::episodic::{self, Fusion};
use memex::eval::locomo::{self, Conversation, EvalConfig};

use super::GlobalArgs;

/// The `memex eval` subcommands.
#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Turn-level recall@k on LoCoMo conversation files (categories 1–4).
    Locomo(LocomoArgs),
    /// Write stored sessions as test cases, one JSON object per line, to stdout.
    Export(super::eval_cases::ExportArgs),
    /// Replay a cases file against the configured model, tools answering from the recording.
    Agent(super::eval_cases::ReplayArgs),
}

/// Arguments of `memex eval locomo`.
#[derive(Args, Debug)]
pub struct LocomoArgs {
    /// LoCoMo conversation JSON files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Episodic store to measure (e.g. a private redis://HOST:PORT/DB); default a scratch
    /// SQLite store. The global --episodic / MEMEX_EPISODIC_URL is deliberately not used, so an
    /// evaluation never writes into a live store by accident.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Cut-offs, comma-separated.
    #[arg(
        short = 'k',
        long = "k",
        value_delimiter = ',',
        default_value = "1,5,10,20",
        value_parser = super::counts::bounded(1, 1_000)
    )]
    ks: Vec<usize>,
    /// Print each question's retrieved turn ids too (with --json).
    #[arg(long)]
    details: bool,
    /// Tuning: turns before each turn in its embedded text.
    #[arg(long, hide = true)]
    context_before: Option<usize>,
    /// Tuning: turns after each turn in its embedded text.
    #[arg(long, hide = true)]
    context_after: Option<usize>,
    /// Tuning: dense leg weight.
    #[arg(long, hide = true)]
    dense_weight: Option<f32>,
    /// Tuning: keyword leg weight.
    #[arg(long, hide = true)]
    keyword_weight: Option<f32>,
    /// Tuning: RRF constant.
    #[arg(long, hide = true)]
    rrf_c: Option<f32>,
    /// Tuning: BM25 k1.
    #[arg(long, hide = true)]
    bm25_k1: Option<f32>,
    /// Tuning: BM25 b.
    #[arg(long, hide = true)]
    bm25_b: Option<f32>,
    /// Tuning: keyword-leg share of same-session neighbours' scores.
    #[arg(long, hide = true)]
    keyword_neighbours: Option<f32>,
    /// Tuning: dense-leg share of same-session neighbours' scores.
    #[arg(long, hide = true)]
    dense_neighbours: Option<f32>,
    /// Tuning: weight of the episodes outside the hints.
    #[arg(long, hide = true)]
    outside_hints: Option<f32>,
    /// Tuning: weight of the session prior.
    #[arg(long, hide = true)]
    session_weight: Option<f32>,
    /// Search without the speaker and date hints, and embed questions with their names (the
    /// other defaults stay; the ranking before the hints also needs `--dense-weight 0.5
    /// --keyword-neighbours 0.3 --session-weight 0`).
    #[arg(long)]
    no_hints: bool,
}

/// Runs one `memex eval` subcommand.
pub fn run(g: &GlobalArgs, c: EvalCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match c {
        EvalCommand::Locomo(a) => rt.block_on(locomo_cmd(g, a))?,
        EvalCommand::Export(a) => return super::eval_cases::export(g, a),
        EvalCommand::Agent(a) => return rt.block_on(super::eval_cases::replay(g, a)),
    }
    Ok(ExitCode::SUCCESS)
}

async fn locomo_cmd(g: &GlobalArgs, a: LocomoArgs) -> anyhow::Result<()> {
    if a.ks.is_empty() || a.ks.contains(&0) {
        anyhow::bail!("-k needs positive cut-offs, e.g. -k 1,5,10,20");
    }
    let conversations = a
        .files
        .iter()
        .map(|f| Conversation::load(f))
        .collect::<Result<Vec<_>, _>>()?;
    let d = EvalConfig::default();
    let f = Fusion::default();
    let cfg = EvalConfig {
        ks: a.ks.clone(),
        context_before: a.context_before.unwrap_or(d.context_before),
        context_after: a.context_after.unwrap_or(d.context_after),
        fusion: Fusion {
            dense_weight: a.dense_weight.unwrap_or(f.dense_weight),
            keyword_weight: a.keyword_weight.unwrap_or(f.keyword_weight),
            rrf_c: a.rrf_c.unwrap_or(f.rrf_c),
            bm25_k1: a.bm25_k1.unwrap_or(f.bm25_k1),
            bm25_b: a.bm25_b.unwrap_or(f.bm25_b),
            keyword_neighbours: a.keyword_neighbours.unwrap_or(f.keyword_neighbours),
            dense_neighbours: a.dense_neighbours.unwrap_or(f.dense_neighbours),
            hints: !a.no_hints,
            outside_hints: a.outside_hints.unwrap_or(f.outside_hints),
            session_weight: a.session_weight.unwrap_or(f.session_weight),
            ..f
        },
        details: a.details,
    };
    let embedder = g.load_embedder()?;
    let scratch = std::env::temp_dir().join(format!(
        "memex-eval-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    ));
    let store = episodic::open(a.store.as_deref(), &scratch).await?;
    let prefix = format!("LOCOMO{}_", std::process::id());
    let report = locomo::run(&*store, &embedder, &conversations, &prefix, &cfg).await;
    drop(store);
    let _ = std::fs::remove_dir_all(&scratch);
    let report = report?;
    if g.json {
        println!("{}", report.to_json());
        return Ok(());
    }
    println!(
        "LoCoMo: {} conversation(s), {} episodes, {} questions (categories 1-4)",
        conversations.len(),
        report.episodes,
        report.questions
    );
    let row = |r: &[f64]| -> String {
        r.iter()
            .map(|x| format!("{x:<7.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let names = ["", "multi-hop", "temporal", "open-domain", "single-hop"];
    for (label, pick) in [
        (
            "R",
            (|s: &memex::eval::locomo::Scores| s.recall.clone()) as fn(&_) -> Vec<f64>,
        ),
        ("any", |s| s.any.clone()),
        ("all", |s| s.all.clone()),
    ] {
        let header: Vec<String> = report
            .ks
            .iter()
            .map(|k| format!("{:<7}", format!("{label}@{k}")))
            .collect();
        println!("{:<14} {:>4}  {}", "category", "n", header.join(" "));
        for (c, sc) in &report.per_category {
            let name = names.get(usize::from(*c)).copied().unwrap_or("other");
            println!(
                "{:<14} {:>4}  {}",
                format!("{c} {name}"),
                sc.questions,
                row(&pick(sc))
            );
        }
        let all = memex::eval::locomo::Scores {
            questions: report.questions,
            recall: report.recall.clone(),
            any: report.any.clone(),
            all: report.all.clone(),
        };
        println!(
            "{:<14} {:>4}  {}",
            "all",
            report.questions,
            row(&pick(&all))
        );
    }
    println!(
        "search latency p50 {:.2} ms, p99 {:.2} ms; import {:.0} episodes/s",
        report.latency_ms.0, report.latency_ms.1, report.import_per_sec
    );
    Ok(())
}
