//! `memex ingest`, `memex search`, `memex reindex`, `memex bench retrieval`.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

/// Arguments of `memex ingest`.
#[derive(Args, Debug)]
pub struct IngestArgs {}

/// Arguments of `memex search`.
#[derive(Args, Debug)]
pub struct SearchArgs {}

/// Arguments of `memex reindex`.
#[derive(Args, Debug)]
pub struct ReindexArgs {}

pub fn ingest(_g: &GlobalArgs, _a: IngestArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ingest is not built yet")
}

pub fn search(_g: &GlobalArgs, _a: SearchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("search is not built yet")
}

pub fn reindex(_g: &GlobalArgs, _a: ReindexArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("reindex is not built yet")
}
