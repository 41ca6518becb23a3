//! `memex plan`: plan a task, validate it, execute it (`--dry-run` stops after validation);
//! `memex plan show|resume|list`; and the plan side of `memex approve`/`reject`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use memex::agent::{Progress, Silent};
use memex::planner::{PlanReport, PlannerConfig, StepStatus};

use super::compose::{merchant, planner, runtime, StderrProgress};
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
    /// Most steps a plan may have (default 12; 1 to 100).
    #[arg(long, value_parser = super::counts::bounded(1, memex::planner::MAX_STEPS_LIMIT))]
    pub max_steps: Option<usize>,
    /// Most steps running at the same time (default 4; 1 to 64).
    #[arg(long, value_parser = super::counts::bounded(1, memex::planner::MAX_CONCURRENCY_LIMIT))]
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
        /// Most steps running at the same time (default 4; 1 to 64).
        #[arg(long, value_parser = super::counts::bounded(1, memex::planner::MAX_CONCURRENCY_LIMIT))]
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
        /// Most plans listed (1 to 10000).
        #[arg(long, default_value_t = 20, value_parser = super::counts::bounded(1, 10_000))]
        limit: usize,
    },
}

/// The planner settings of every surface (`--plan-max-steps`, `--plan-concurrency`, their
/// variables and memex.toml), with this command's own flags over them.
fn config(g: &GlobalArgs, a: &PlanArgs) -> PlannerConfig {
    let mut c = g.tuning.planner_config();
    if let Some(n) = a.max_steps {
        c.max_steps = n;
    }
    if let Some(n) = a.concurrency {
        c.max_concurrency = n.max(1);
    }
    c
}

/// Whether the data directory already holds the agent store (`plan show`/`plan list` read it
/// and must not create it).
fn has_agent_store(g: &GlobalArgs) -> bool {
    match g.state_url() {
        Ok(memex::state::StateUrl::Sqlite(path)) => path.is_file(),
        // A shared store always exists; a bad URL is reported when the store is opened.
        Ok(memex::state::StateUrl::Redis(_)) | Err(_) => true,
    }
}

/// `memex plan`.
pub fn plan(g: &GlobalArgs, a: PlanArgs) -> anyhow::Result<ExitCode> {
    let progress: &dyn Progress = if g.json { &Silent } else { &StderrProgress };
    match &a.command {
        Some(PlanCommand::Show { id }) => {
            // Showing needs no model or embedder: read the store directly, creating nothing.
            if !has_agent_store(g) {
                return Err(memex::planner::PlanError::UnknownPlan(id.clone()).into());
            }
            let store = memex::agent::AgentStore::open_state(&g.state_url()?)?;
            let plans = memex::planner::store::PlanStore::open_state(store.state())?;
            print_report(g, &memex::planner::load_report(&plans, id)?)?;
        }
        Some(PlanCommand::Resume {
            id,
            concurrency,
            force,
        }) => {
            let mut cfg = g.tuning.planner_config();
            if let Some(n) = concurrency {
                cfg.max_concurrency = (*n).max(1);
            }
            let rt = runtime()?;
            let report = rt.block_on(async {
                let p = planner(g, Some(cfg)).await?;
                anyhow::Ok(if *force {
                    p.resume_forced(id, progress).await?
                } else {
                    p.resume(id, progress).await?
                })
            })?;
            print_report(g, &report)?;
        }
        Some(PlanCommand::List { merchant: m, limit }) => {
            let m = m.as_deref().map(merchant).transpose()?;
            // A read-only command creates nothing: no store yet means no plans.
            let rows = if has_agent_store(g) {
                let store = memex::agent::AgentStore::open_state(&g.state_url()?)?;
                let plans = memex::planner::store::PlanStore::open_state(store.state())?;
                plans.list(m.as_ref().map(|x| x.as_str()), *limit)?
            } else {
                Vec::new()
            };
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
            let cfg = config(g, &a);
            let rt = runtime()?;
            let report = rt.block_on(async {
                let p = planner(g, Some(cfg)).await?;
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

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        format!("{}…", flat.chars().take(max).collect::<String>())
    }
}

/// Prints a plan report (JSON with `--json`).
pub(super) fn print_report(g: &GlobalArgs, r: &PlanReport) -> anyhow::Result<()> {
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
