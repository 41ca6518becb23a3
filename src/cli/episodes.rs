//! `memex episodes add|list|search|forget`: per-merchant episodic memory from the shell.
//!
//! The store is `--episodic URL` / `$MEMEX_EPISODIC_URL`, else `episodes.db` in the data
//! directory. Summaries and queries are embedded with the local MiniLM model. Read-only
//! subcommands (`list`, `search`) never create a database.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::SecondsFormat;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memex::embed::Embedder;
use memex::episodic::{self, import, Episode, EpisodeDraft, EpisodicStore, SearchQuery};
use memex::merchant::MerchantId;
use serde_json::{json, Value};

use super::GlobalArgs;

/// Queries embedded per batch by `search --input`.
const IMPORT_BATCH: usize = import::IMPORT_BATCH;

/// The `memex episodes` subcommands.
#[derive(Subcommand, Debug)]
pub enum EpisodesCommand {
    /// Add an episode for a merchant (its summary is embedded with the local model).
    Add(AddArgs),
    /// List a merchant's most recent episodes, newest first.
    List(ListArgs),
    /// Find a merchant's episodes for a query (keywords fused with embedding similarity).
    Search(SearchArgs),
    /// Import episodes from JSONL ({"summary", "metadata"?, "occurred_at"?} per line).
    Import(ImportArgs),
    /// Erase every episode of a merchant.
    Forget(ForgetArgs),
}

/// Arguments of `memex episodes add`.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// Merchant id (ASCII letters, digits, '_' and '-'; at most 64).
    #[arg(long)]
    merchant: String,
    /// What happened, in a few sentences.
    #[arg(long)]
    summary: String,
    /// A JSON object stored with the episode, e.g. '{"outcome":"resolved"}'.
    #[arg(long)]
    metadata: Option<String>,
    /// When it happened: RFC 3339 or YYYY-MM-DD.
    #[arg(long)]
    occurred_at: Option<String>,
}

/// Arguments of `memex episodes import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Merchant id.
    #[arg(long)]
    merchant: String,
    /// JSONL file, or `-` for standard input.
    file: PathBuf,
}

/// Arguments of `memex episodes list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Merchant id.
    #[arg(long)]
    merchant: String,
    /// Most episodes to show (1 to 10000).
    #[arg(long, default_value_t = 20, value_parser = super::counts::bounded(1, 10_000))]
    limit: usize,
}

/// Arguments of `memex episodes search`.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Merchant id.
    #[arg(long)]
    merchant: String,
    /// What to look for (or use --input).
    #[arg(required_unless_present = "input", conflicts_with = "input")]
    query: Option<String>,
    /// Batch mode: one query per line (plain text or {"query": ...}), `-` for standard input;
    /// prints one JSON line {"query", "results"} per query, in input order.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Number of episodes to return (1 to 1000).
    #[arg(short = 'k', long = "top-k", default_value_t = 5, value_parser = super::counts::bounded(1, 1_000))]
    k: usize,
}

/// Arguments of `memex episodes forget`.
#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Merchant id.
    #[arg(long)]
    merchant: String,
}

/// Runs one `memex episodes` subcommand on a tokio runtime of its own.
pub fn run(g: &GlobalArgs, c: EpisodesCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(g, c))?;
    Ok(ExitCode::SUCCESS)
}

async fn run_async(g: &GlobalArgs, c: EpisodesCommand) -> anyhow::Result<()> {
    match c {
        EpisodesCommand::Add(a) => add(g, a).await,
        EpisodesCommand::List(a) => list(g, a).await,
        EpisodesCommand::Search(a) => search(g, a).await,
        EpisodesCommand::Import(a) => import(g, a).await,
        EpisodesCommand::Forget(a) => forget(g, a).await,
    }
}

async fn add(g: &GlobalArgs, a: AddArgs) -> anyhow::Result<()> {
    let merchant = merchant(&a.merchant)?;
    let metadata = match &a.metadata {
        Some(text) => serde_json::from_str::<Value>(text)
            .map_err(|e| anyhow::anyhow!("--metadata is not valid JSON: {e}"))?,
        None => json!({}),
    };
    let occurred_at = a
        .occurred_at
        .as_deref()
        .map(episodic::parse_occurred_at)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--occurred-at: {e}"))?;
    let store = open(g).await?;
    let embedder = g.load_embedder()?;
    let embedding = embedder
        .embed_one(&a.summary)
        .context("cannot embed the summary")?;
    let mut draft = EpisodeDraft::new(a.summary)
        .with_metadata(metadata)
        .with_embedding(embedding);
    draft.occurred_at = occurred_at;
    let episode = store.save(&merchant, draft).await?;
    if g.json {
        println!("{}", episode_json(&episode));
    } else {
        println!(
            "added episode {} for {} at {}",
            episode.id,
            episode.merchant_id,
            rfc3339(&episode)
        );
    }
    Ok(())
}

async fn list(g: &GlobalArgs, a: ListArgs) -> anyhow::Result<()> {
    let merchant = merchant(&a.merchant)?;
    let episodes = match open_existing(g).await? {
        Some(store) => store.recent(&merchant, a.limit).await?,
        None => Vec::new(),
    };
    if g.json {
        let arr: Vec<Value> = episodes.iter().map(episode_json).collect();
        println!("{}", Value::Array(arr));
    } else if episodes.is_empty() {
        println!("no episodes for {merchant}");
    } else {
        for e in &episodes {
            println!("{}  {}  {}", when(e), e.id, one_line(&e.summary));
        }
    }
    Ok(())
}

async fn search(g: &GlobalArgs, a: SearchArgs) -> anyhow::Result<()> {
    let merchant = merchant(&a.merchant)?;
    let queries = match (&a.input, &a.query) {
        (Some(path), _) => read_queries(path)?,
        (None, Some(q)) => {
            if q.trim().is_empty() {
                anyhow::bail!("the search query is empty");
            }
            vec![q.clone()]
        }
        (None, None) => anyhow::bail!("give a query or --input FILE"),
    };
    let Some(store) = open_existing(g).await? else {
        // Nothing stored yet: every query has no results, and nothing is created.
        for q in &queries {
            print_hits(g, &a, &merchant, q, &[]);
        }
        return Ok(());
    };
    let embedder = g.load_embedder()?;
    // Speaker names leave the text that is embedded (`episodic::dense_query_text`).
    let speakers = store.speakers(&merchant).await?;
    for chunk in queries.chunks(IMPORT_BATCH) {
        let dense: Vec<String> = chunk
            .iter()
            .map(|q| memex::episodic::dense_query_text(q, &speakers))
            .collect();
        let texts: Vec<&str> = dense.iter().map(String::as_str).collect();
        let vectors = embedder.embed(&texts).context("cannot embed the queries")?;
        for (q, v) in chunk.iter().zip(vectors) {
            let hits = store
                .search(&merchant, &SearchQuery::new(q.clone(), Some(v), a.k))
                .await?;
            print_hits(g, &a, &merchant, q, &hits);
        }
    }
    Ok(())
}

fn print_hits(
    g: &GlobalArgs,
    a: &SearchArgs,
    merchant: &MerchantId,
    query: &str,
    hits: &[episodic::ScoredEpisode],
) {
    let arr: Vec<Value> = hits
        .iter()
        .map(|h| {
            let mut v = episode_json(&h.episode);
            v["score"] = json!(h.score);
            v
        })
        .collect();
    if a.input.is_some() && g.json {
        println!("{}", json!({"query": query, "results": arr}));
    } else if g.json {
        println!("{}", Value::Array(arr));
    } else {
        if a.input.is_some() {
            println!("# {}", one_line(query));
        }
        if hits.is_empty() {
            println!("no episodes found for {merchant}");
        }
        for h in hits {
            println!(
                "{:.4}  {}  {}  {}",
                h.score,
                when(&h.episode),
                h.episode.id,
                one_line(&h.episode.summary)
            );
        }
    }
}

/// The queries of a batch file: one per non-blank line, plain text or `{"query": ...}`.
fn read_queries(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let reader = open_input(path)?;
    let mut out = Vec::new();
    for (i, line) in import::bounded_lines(reader, import::MAX_LINE_BYTES).enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("cannot read line {n} of the query file"))?;
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let q = if t.starts_with('{') {
            let v: Value = serde_json::from_str(t).map_err(|e| {
                anyhow::anyhow!("line {n} of the query file is not valid JSON: {e}")
            })?;
            match v.get("query").and_then(Value::as_str) {
                Some(q) => q.to_owned(),
                None => anyhow::bail!("line {n} of the query file has no string field \"query\""),
            }
        } else {
            t.to_owned()
        };
        if q.trim().is_empty() {
            anyhow::bail!("line {n} of the query file is an empty query");
        }
        out.push(q);
    }
    Ok(out)
}

fn open_input(path: &std::path::Path) -> anyhow::Result<Box<dyn BufRead>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::BufReader::new(std::io::stdin())));
    }
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Box::new(std::io::BufReader::new(f)))
}

async fn import(g: &GlobalArgs, a: ImportArgs) -> anyhow::Result<()> {
    let merchant = merchant(&a.merchant)?;
    let reader = open_input(&a.file)?;
    let store = open(g).await?;
    let embedder = LocalEmbed(g.load_embedder()?);
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template("{spinner} importing {pos} episodes {per_sec}")
    {
        pb.set_style(style);
    }
    if std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::stderr());
    }
    let bar = pb.clone();
    let outcome = import::import_lines(
        &*store,
        &embedder,
        &merchant,
        import::bounded_lines(reader, import::MAX_LINE_BYTES),
        &mut move |n| bar.set_position(n),
    )
    .await;
    pb.finish_and_clear();
    let imported = match outcome {
        Ok(n) => n,
        Err(f) => {
            let imported = f.imported;
            // The store's own error stays in the chain, so its code (`episodic`) is reported.
            let cause = match f.error {
                import::ImportError::Store(e) => anyhow::Error::new(e),
                other => anyhow::Error::new(other),
            };
            return Err(cause.context(format!(
                "imported {imported} episode(s) for {merchant} before the error"
            )));
        }
    };
    if g.json {
        println!("{}", json!({"imported": imported}));
    } else {
        println!("imported {imported} episode(s) for {merchant}");
    }
    Ok(())
}

/// The local model as the import's embedding seam.
struct LocalEmbed(memex::embed::MiniLmEmbedder);

#[async_trait::async_trait]
impl import::BatchEmbed for LocalEmbed {
    async fn embed_batch(
        &self,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        Ok(self.0.embed(&refs)?)
    }
}

async fn forget(g: &GlobalArgs, a: ForgetArgs) -> anyhow::Result<()> {
    let merchant = merchant(&a.merchant)?;
    let store = open(g).await?;
    let n = store.forget(&merchant).await?;
    if g.json {
        println!("{}", json!({"merchant_id": merchant, "forgotten": n}));
    } else {
        println!("forgot {n} episode(s) of {merchant}");
    }
    Ok(())
}

fn merchant(raw: &str) -> anyhow::Result<MerchantId> {
    MerchantId::parse(raw).map_err(|e| anyhow::anyhow!("invalid --merchant: {e}"))
}

async fn open(g: &GlobalArgs) -> anyhow::Result<std::sync::Arc<dyn EpisodicStore>> {
    Ok(episodic::open_with_cache(
        g.episodic.as_deref(),
        &g.data_dir(),
        g.episodic_cache_bytes(),
    )
    .await?)
}

/// Opens the store for reading without creating anything: `None` when the default database
/// does not exist yet; an error when an explicitly named SQLite database does not exist.
async fn open_existing(
    g: &GlobalArgs,
) -> anyhow::Result<Option<std::sync::Arc<dyn EpisodicStore>>> {
    Ok(episodic::open_existing(g.episodic.as_deref(), &g.data_dir()).await?)
}

fn rfc3339(e: &Episode) -> String {
    e.created_at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// When it happened if known, else when it was stored.
fn when(e: &Episode) -> String {
    e.when().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The CLI's JSON form of an episode: everything but the embedding.
fn episode_json(e: &Episode) -> Value {
    json!({
        "id": e.id.to_string(),
        "merchant_id": e.merchant_id.as_str(),
        "summary": e.summary,
        "metadata": e.metadata,
        "created_at": rfc3339(e),
        "occurred_at": e.occurred_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
    })
}

/// The summary on one line, control characters replaced, for terminal output.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
