//! How the command line reports failures: one line `error: …` on stderr, or with `--json`
//! (`MEMEX_JSON`) one JSON object `{"error": {"code": …, "message": …}}`. The exit code is the
//! same either way: 2 for a usage error, 1 for anything else.

use std::process::ExitCode;

use serde_json::json;

use super::GlobalArgs;

/// A failure the command line itself detects, with its machine-readable code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// The `code` of the JSON error.
    pub code: &'static str,
    /// One sentence for the user.
    pub message: String,
}

/// Variables that hold an LLM API key, in the order `LlmConfig::from_env` reads them.
const KEY_VARIABLES: [&str; 3] = ["MEMEX_LLM_API_KEY", "GROQ_API_KEY", "OPENAI_API_KEY"];

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Fails at once, naming what to set, when neither a base URL nor an API key is configured:
/// the default (Groq) would otherwise be tried without a key.
pub fn require_llm(g: &GlobalArgs) -> Result<(), CliError> {
    let filled = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
    let has_url = filled(&g.llm_base_url);
    let has_key = filled(&g.llm_api_key) || KEY_VARIABLES.iter().any(|v| env_set(v));
    if has_url || has_key {
        return Ok(());
    }
    Err(CliError {
        code: "llm_not_configured",
        message: "no LLM is configured: set GROQ_API_KEY for Groq, or MEMEX_LLM_BASE_URL for any \
                  OpenAI-compatible server (e.g. MEMEX_LLM_BASE_URL=http://127.0.0.1:11434/v1 \
                  for a local Ollama)"
            .to_owned(),
    })
}

/// The machine-readable code of an error: the first code found along its chain of causes.
pub fn code_of(err: &anyhow::Error) -> &'static str {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return e.code;
        }
        if cause.is::<memex::kb::KbError>() {
            return "knowledge_base";
        }
        if cause.is::<memex::embed::EmbedError>() {
            return "model";
        }
        if cause.is::<memex::llm::LlmError>() {
            return "llm";
        }
        if cause.is::<memex::episodic::EpisodicError>() {
            return "episodic";
        }
        if cause.is::<memex::planner::PlanError>() {
            return "plan";
        }
        if cause.is::<memex::agent::AgentError>() {
            return "agent";
        }
        if cause.is::<serde_json::Error>() {
            return "json";
        }
        if cause.is::<std::io::Error>() {
            return "io";
        }
    }
    "error"
}

/// The JSON form of an error: `{"error": {"code": CODE, "message": MESSAGE}}`.
pub fn to_json(code: &str, message: &str) -> serde_json::Value {
    json!({"error": {"code": code, "message": message}})
}

/// Prints a failed command's error on stderr (as JSON with `--json`) and returns exit code 1.
pub fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    let message = message_of(err);
    if json {
        eprintln!("{}", to_json(code_of(err), &message));
    } else {
        eprintln!("error: {message}");
    }
    ExitCode::FAILURE
}

/// An error and its causes on one line, `outer: cause: …`, without saying anything twice: a
/// cause whose text (or whose innermost cause's text) the line already holds adds nothing
/// (library errors put their cause's words in their own message *and* keep the cause as a typed
/// source, so a caller can match on it).
pub fn message_of(err: &anyhow::Error) -> String {
    let mut message = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        let mut innermost: &(dyn std::error::Error + 'static) = cause;
        while let Some(next) = innermost.source() {
            innermost = next;
        }
        let inner = innermost.to_string();
        if message.contains(&text) || (!inner.is_empty() && message.contains(&inner)) {
            continue;
        }
        message.push_str(": ");
        message.push_str(&text);
    }
    message
}

/// Whether `--json` was asked for before the arguments could be parsed.
pub fn json_requested() -> bool {
    let flag = std::env::args_os().skip(1).any(|a| a == "--json");
    let env = std::env::var("MEMEX_JSON").is_ok_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        !v.is_empty() && v != "0" && v != "false" && v != "no" && v != "off"
    });
    flag || env
}

/// Handles a command line clap could not parse: help and version print as usual; a usage error
/// becomes JSON with `--json`. Exit codes are clap's (0 for help, 2 for usage errors).
pub fn usage(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let shows_info = matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if shows_info || !json_requested() {
        let _ = err.print();
        return ExitCode::from(err.exit_code().clamp(0, 255) as u8);
    }
    let rendered = err.render().to_string();
    let message = rendered
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_owned();
    eprintln!("{}", to_json("usage", &message));
    ExitCode::from(err.exit_code().clamp(0, 255) as u8)
}
