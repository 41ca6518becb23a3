//! `memex plan`: plan a task, validate it, execute it (`--dry-run` stops after validation);
//! `memex plan show|resume|list`; and the plan side of `memex approve`/`reject`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use memex::agent::{AgentConfig, Progress, Silent};
use memex::planner::{PlanReport, Planner, PlannerConfig, StepStatus};

use super::agent::{build, merchant, runtime, StderrProgress};
use super::GlobalArgs;

/// Arguments of `memex plan`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PlanArgs {
    /// `show`, `resume` or `list` an existing plan.
    #[command(subcommand)]
    pub command: Option<PlanCommand>,
    /// The merchant the plan acts for.
    #[arg(long, required = true)]
    pub merchant: Option<String>,
    /// Plan and validate, store the plan, execute nothing (run it later with `plan resume`).
    #[arg(long)]
    pub dry_run: bool,
    /// Most steps a plan may have (default 12).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Most steps running at the same time (default 4).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The task, e.g. "merchant MID001 says pay_ABC123 was charged but never settled: …".
    #[arg(required = true, num_args = 1..)]
    pub task: Vec<String>,
}

/// `memex plan …` subcommands.
#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// Print a stored plan and its step states.
    Show {
        /// The plan id (plan_…).
        id: String,
    },
    /// Continue a plan from its stored state (after a crash, or a `--dry-run` plan).
    Resume {
        /// The plan id (plan_…).
        id: String,
        /// Most steps running at the same time (default 4).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Take the plan over even if the store names a live holder (only when you know that
        /// process is gone, e.g. its process id was reused).
        #[arg(long)]
        force: bool,
    },
    /// List stored plans, newest first.
    List {
        /// Only this merchant's plans.
        #[arg(long)]
        merchant: Option<String>,
        /// Most plans listed.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

fn config(a: &PlanArgs) -> PlannerConfig {
    let mut c = PlannerConfig::default();
    if let Some(n) = a.max_steps {
        c.max_steps = n;
    }
    if let Some(n) = a.concurrency {
        c.max_concurrency = n.max(1);
    }
    c
}

/// Builds the planner over the agent the global flags describe.
pub async fn planner(g: &GlobalArgs, config: PlannerConfig) -> anyhow::Result<Planner> {
    let agent = Arc::new(build(g, AgentConfig::default()).await?);
    Ok(Planner::new(agent, config)?)
}

/// `memex plan`.
pub fn plan(g: &GlobalArgs, a: PlanArgs) -> anyhow::Result<ExitCode> {
    let progress: &dyn Progress = if g.json { &Silent } else { &StderrProgress };
    match &a.command {
        Some(PlanCommand::Show { id }) => {
            // Showing needs no model or embedder: read the store directly.
            let store = memex::agent::AgentStore::open_in(&g.data_dir())?;
            let plans = memex::planner::store::PlanStore::open(store.path())?;
            print_report(g, &memex::planner::load_report(&plans, id)?)?;
        }
        Some(PlanCommand::Resume {
            id,
            concurrency,
            force,
        }) => {
            let mut cfg = PlannerConfig::default();
            if let Some(n) = concurrency {
                cfg.max_concurrency = (*n).max(1);
            }
            let rt = runtime()?;
            let report = rt.block_on(async {
                let p = planner(g, cfg).await?;
                anyhow::Ok(if *force {
                    p.resume_forced(id, progress).await?
                } else {
                    p.resume(id, progress).await?
                })
            })?;
            print_report(g, &report)?;
        }
        Some(PlanCommand::List { merchant: m, limit }) => {
            let store = memex::agent::AgentStore::open_in(&g.data_dir())?;
            let plans = memex::planner::store::PlanStore::open(store.path())?;
            let m = m.as_deref().map(merchant).transpose()?;
            let rows = plans.list(m.as_ref().map(|x| x.as_str()), *limit)?;
            if g.json {
                println!("{}", serde_json::to_string(&rows)?);
            } else if rows.is_empty() {
                println!("no plans");
            } else {
                for r in rows {
                    println!(
                        "{}  {}  {}  {}  {}",
                        r.plan_id,
                        r.created_at,
                        r.merchant,
                        r.status,
                        one_line(&r.task, 80)
                    );
                }
            }
        }
        None => {
            let mid = merchant(a.merchant.as_deref().unwrap_or_default())?;
            let task = a.task.join(" ");
            let cfg = config(&a);
            let rt = runtime()?;
            let report = rt.block_on(async {
                let p = planner(g, cfg).await?;
                anyhow::Ok(if a.dry_run {
                    p.create(&mid, &task).await?
                } else {
                    p.run(&mid, &task, progress).await?
                })
            })?;
            print_report(g, &report)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `memex approve|reject` for an action held by a plan step.
pub fn decide(g: &GlobalArgs, action_id: &str, approve: bool) -> anyhow::Result<ExitCode> {
    let progress: &dyn Progress = if g.json { &Silent } else { &StderrProgress };
    let rt = runtime()?;
    let (report, turns) = rt.block_on(async {
        let p = planner(g, PlannerConfig::default()).await?;
        let report = if approve {
            p.approve(action_id, progress).await?
        } else {
            p.reject(action_id, progress).await?
        };
        let merchant = merchant(&report.merchant)?;
        let turns = p
            .agent()
            .store()
            .begin_session(&report.session, &merchant)?;
        anyhow::Ok((report, turns))
    })?;
    if g.json {
        println!("{}", decision_json(&report, action_id, turns)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_report(g, &report)?;
    Ok(ExitCode::SUCCESS)
}

/// `approve`/`reject --json` of a plan step: the plan report, plus the fields every
/// `approve --json` prints (`turns`, `tool_calls` with the decided call, `pending_action`,
/// `escalation`, `memory`), so scripts written for agent approvals read it too.
fn decision_json(r: &PlanReport, action_id: &str, turns: u32) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(r)?;
    let decided = r
        .steps
        .iter()
        .find(|s| s.action_id.as_deref() == Some(action_id));
    let tool_calls: Vec<serde_json::Value> = decided
        .map(|s| {
            let status = match s.status {
                StepStatus::Done => "ok",
                StepStatus::Rejected => "rejected",
                StepStatus::PendingApproval => "pending_approval",
                _ => "error",
            };
            serde_json::json!({"id": action_id, "tool": s.tool, "args": s.args, "status": status,
                "result": s.result, "latency_ms": 0.0})
        })
        .into_iter()
        .collect();
    let pending = r
        .pending_actions
        .first()
        .map(|p| serde_json::json!({"id": p.action_id, "tool": p.tool, "args": p.args}));
    if let Some(o) = v.as_object_mut() {
        o.insert("turns".into(), turns.into());
        o.insert("tool_calls".into(), tool_calls.into());
        o.insert(
            "pending_action".into(),
            pending.unwrap_or(serde_json::Value::Null),
        );
        o.insert("escalation".into(), serde_json::Value::Null);
        o.insert(
            "memory".into(),
            serde_json::json!({"kb": [], "episodes": [], "summary": null}),
        );
        if o.get("answer").is_some_and(serde_json::Value::is_null) {
            o.insert("answer".into(), "".into());
        }
    }
    Ok(v.to_string())
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        format!("{}…", flat.chars().take(max).collect::<String>())
    }
}

fn print_report(g: &GlobalArgs, r: &PlanReport) -> anyhow::Result<()> {
    if g.json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    println!(
        "plan {} for {} ({}): {}",
        r.plan_id,
        r.merchant,
        r.session,
        r.status.as_str()
    );
    for s in &r.steps {
        let deps = if s.depends_on.is_empty() {
            String::new()
        } else {
            format!(" after {}", s.depends_on.join(", "))
        };
        println!(
            "  [{}] {} {} {}{}{}",
            s.status.as_str(),
            s.id,
            s.tool,
            one_line(&s.args.to_string(), 100),
            deps,
            if s.attempts > 1 {
                format!(" ({} attempts)", s.attempts)
            } else {
                String::new()
            }
        );
        if !s.description.is_empty() {
            println!("      {}", one_line(&s.description, 100));
        }
        match s.status {
            StepStatus::Done => println!("      -> {}", one_line(&s.result.to_string(), 160)),
            _ => {
                if let Some(e) = &s.error {
                    println!("      !! {}", one_line(e, 160));
                }
            }
        }
    }
    let m = &r.summary;
    println!(
        "summary: {} steps, {} done, {} failed, {} skipped, {} pending approval",
        m.total, m.done, m.failed, m.skipped, m.pending_approval
    );
    for p in &r.pending_actions {
        println!(
            "pending approval: step {} {} {} (action {})\n  approve: memex approve {}\n  reject:  memex reject {}",
            p.step, p.tool, p.args, p.action_id, p.action_id, p.action_id
        );
    }
    if r.status == memex::planner::PlanStatus::Planned {
        println!(
            "not executed (dry run); run it with: memex plan resume {}",
            r.plan_id
        );
    }
    if let Some(a) = &r.answer {
        println!("\n{a}");
    }
    Ok(())
}
