//! `memex episodes add|list|search|forget`.

use std::process::ExitCode;

use clap::Subcommand;

use super::GlobalArgs;

/// The `memex episodes` subcommands.
#[derive(Subcommand, Debug)]
pub enum EpisodesCommand {
    /// Add an episode for a merchant.
    Add {},
}

pub fn run(_g: &GlobalArgs, _c: EpisodesCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("episodes is not built yet")
}
