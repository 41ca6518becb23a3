//! `memex episodes add|list|search|forget`: per-merchant episodic memory from the shell.
//!
//! The store is `--episodic URL` / `$MEMEX_EPISODIC_URL`, else `episodes.db` in the data
//! directory. Summaries and queries are embedded with the local MiniLM model.

use std::process::ExitCode;

use anyhow::Context;
use chrono::SecondsFormat;
use clap::{Args, Subcommand};
use memex::embed::Embedder;
use memex::episodic::{self, Episode, EpisodeDraft, EpisodicStore};
use memex::merchant::MerchantId;
use serde_json::{json, Value};

use super::GlobalArgs;

/// The `memex episodes` subcommands.
#[derive(Subcommand, Debug)]
pub enum EpisodesCommand {
    /// Add an episode for a merchant (its summary is embedded with the local model).
    Add(AddArgs),
    /// List a merchant's most recent episodes, newest first.
    List(ListArgs),
    /// Find a merchant's episodes most similar to a query.
    Search(SearchArgs),
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
}

/// Arguments of `memex episodes list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Merchant id.
    #[arg(long)]
    merchant: String,
    /// Most episodes to show.
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

/// Arguments of `memex episodes search`.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Merchant id.
    #[arg(long)]
    merchant: String,
    /// What to look for.
    query: String,
    /// Number of episodes to return.
    #[arg(short = 'k', long = "top-k", default_value_t = 5)]
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
    let store = open(g).await?;
    let embedder = g.load_embedder()?;
    let embedding = embedder
        .embed_one(&a.summary)
        .context("cannot embed the summary")?;
    let draft = EpisodeDraft::new(a.summary)
        .with_metadata(metadata)
        .with_embedding(embedding);
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
    let store = open(g).await?;
    let episodes = store.recent(&merchant, a.limit).await?;
    if g.json {
        let arr: Vec<Value> = episodes.iter().map(episode_json).collect();
        println!("{}", Value::Array(arr));
    } else if episodes.is_empty() {
        println!("no episodes for {merchant}");
    } else {
        for e in &episodes {
            println!("{}  {}  {}", rfc3339(e), e.id, one_line(&e.summary));
        }
    }
    Ok(())
}

async fn search(g: &GlobalArgs, a: SearchArgs) -> anyhow::Result<()> {
    let merchant = merchant(&a.merchant)?;
    if a.query.trim().is_empty() {
        anyhow::bail!("the search query is empty");
    }
    let store = open(g).await?;
    let embedder = g.load_embedder()?;
    let query = embedder
        .embed_one(&a.query)
        .context("cannot embed the query")?;
    let hits = store.similar(&merchant, &query, a.k).await?;
    if g.json {
        let arr: Vec<Value> = hits
            .iter()
            .map(|h| {
                let mut v = episode_json(&h.episode);
                v["score"] = json!(h.score);
                v
            })
            .collect();
        println!("{}", Value::Array(arr));
    } else if hits.is_empty() {
        println!("no episodes with embeddings for {merchant}");
    } else {
        for h in &hits {
            println!(
                "{:.3}  {}  {}  {}",
                h.score,
                rfc3339(&h.episode),
                h.episode.id,
                one_line(&h.episode.summary)
            );
        }
    }
    Ok(())
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
    Ok(episodic::open(g.episodic.as_deref(), &g.data_dir()).await?)
}

fn rfc3339(e: &Episode) -> String {
    e.created_at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The CLI's JSON form of an episode: everything but the embedding.
fn episode_json(e: &Episode) -> Value {
    json!({
        "id": e.id.to_string(),
        "merchant_id": e.merchant_id.as_str(),
        "summary": e.summary,
        "metadata": e.metadata,
        "created_at": rfc3339(e),
    })
}

/// The summary on one line, control characters replaced, for terminal output.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
