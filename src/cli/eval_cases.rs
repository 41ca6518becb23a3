//! `memex eval export` (stored sessions as test cases, JSON lines on stdout) and
//! `memex eval agent CASES` (replay them against the configured model; no tool runs).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use memex::agent::AgentStore;
use memex::eval::cases::{self, ExportFilter};
use memex::eval::replay::{self, CaseMemory, Recordings, ReplayReport};

use super::compose;
use super::GlobalArgs;

/// Arguments of `memex eval export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Only this merchant's sessions.
    #[arg(long, value_name = "ID")]
    merchant: Option<String>,
    /// Only sessions created at or after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    since: Option<String>,
    /// Only sessions that escalated, opened a ticket, asked a clarifying question or failed
    /// (comma-separated for any of several).
    #[arg(long, value_delimiter = ',', value_parser = ["escalated", "ticketed", "clarified", "failed"])]
    only: Vec<String>,
}

/// Arguments of `memex eval agent`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The cases file `memex eval export` wrote (JSON lines); `-` reads standard input.
    cases: PathBuf,
    /// Exit with status 1 when any case differs (for CI gates); by default a replay that ran
    /// exits 0 whatever it found.
    #[arg(long)]
    fail_on_difference: bool,
}

/// `memex eval export`.
pub fn export(g: &GlobalArgs, a: ExportArgs) -> anyhow::Result<ExitCode> {
    let merchant = a.merchant.as_deref().map(compose::merchant).transpose()?;
    let since = a
        .since
        .as_deref()
        .map(memex::episodic::parse_occurred_at)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let filter = ExportFilter {
        merchant,
        since,
        only: a.only,
        ticket_tools: compose::ticket_tools(g),
    };
    // Read-only: no store yet means no sessions.
    let Some(store) = AgentStore::open_state_read_only(&g.state_url()?)? else {
        eprintln!("no sessions recorded yet");
        return Ok(ExitCode::SUCCESS);
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = cases::export(&store, &filter, |case| {
        serde_json::to_writer(&mut out, case).map_err(std::io::Error::other)?;
        out.write_all(b"\n")
    })?;
    out.flush().context("cannot write the cases")?;
    eprintln!("{written} case(s) exported");
    Ok(ExitCode::SUCCESS)
}

/// `memex eval agent`.
pub async fn replay(g: &GlobalArgs, a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let cases = if a.cases.as_os_str() == "-" {
        cases::read_cases(std::io::stdin().lock())?
    } else {
        let file = std::fs::File::open(&a.cases)
            .with_context(|| format!("cannot open the cases file {}", a.cases.display()))?;
        cases::read_cases(std::io::BufReader::new(file))
            .with_context(|| format!("in {}", a.cases.display()))?
    };
    let scratch = tempfile::Builder::new()
        .prefix("memex-replay-")
        .tempdir()
        .context("cannot make a scratch directory for the replay")?;
    let recordings = Arc::new(Recordings::from_cases(&cases));
    let memory = Arc::new(CaseMemory::from_cases(&cases));
    let agent = compose::replay_agent(g, scratch.path(), recordings, memory).await?;
    let report = replay::replay(&agent, &cases).await;
    drop(agent);
    if g.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if a.fail_on_difference && report.summary.differences > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_report(r: &ReplayReport) {
    for c in &r.cases {
        println!(
            "{} {} ({})",
            if c.same { "same" } else { "DIFF" },
            c.case,
            c.merchant_id
        );
        for t in c
            .turns
            .iter()
            .filter(|t| !(t.tools_exact && t.outcome_match))
        {
            println!(
                "  turn {}: tools {:?} -> {:?}, outcome {} -> {}{}",
                t.turn,
                t.recorded.tools,
                t.replayed.tools,
                t.recorded.outcome,
                t.replayed.outcome,
                t.replayed
                    .error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    let s = &r.summary;
    println!(
        "cases {}  same {}  different {}  turns {}\ntools exact {:.1}%  tool set {:.1}%  outcome {:.1}%\ntool calls {} (recorded {})  loops {} (recorded {})  errors {}\nturn latency p50 {:.0} ms  p95 {:.0} ms  p99 {:.0} ms",
        s.cases,
        s.same_cases,
        s.differences,
        s.turns,
        s.tools_exact * 100.0,
        s.tools_set * 100.0,
        s.outcome_match * 100.0,
        s.tool_calls,
        s.recorded_tool_calls,
        s.loops,
        s.recorded_loops,
        s.errors,
        s.latency_ms.p50,
        s.latency_ms.p95,
        s.latency_ms.p99
    );
}
