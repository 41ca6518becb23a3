//! The plan's data: steps as the model drafts them ([`DraftStep`], parsed leniently from its
//! JSON reply), steps as they are executed ([`Step`], [`StepStatus`]) and the report every
//! command prints ([`PlanReport`]).

use serde::Serialize;
use serde_json::Value;

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waiting for its dependencies (or for a free execution slot).
    Pending,
    /// Executing now (or interrupted by a crash: a resume runs it again, safely, with the
    /// same idempotency key).
    Running,
    /// Finished; `result` holds the tool's output.
    Done,
    /// Failed after its retries; `error` says why.
    Failed,
    /// Not run because a step it depends on failed, was skipped or was rejected.
    Skipped,
    /// An irreversible step held until a human approves it (`memex approve`).
    PendingApproval,
    /// An irreversible step a human rejected; it never ran.
    Rejected,
}

impl StepStatus {
    /// The status as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Done => "done",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::PendingApproval => "pending_approval",
            StepStatus::Rejected => "rejected",
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => StepStatus::Pending,
            "running" => StepStatus::Running,
            "done" => StepStatus::Done,
            "failed" => StepStatus::Failed,
            "skipped" => StepStatus::Skipped,
            "pending_approval" => StepStatus::PendingApproval,
            "rejected" => StepStatus::Rejected,
            _ => return None,
        })
    }

    /// Whether the step will not change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            StepStatus::Done | StepStatus::Failed | StepStatus::Skipped | StepStatus::Rejected
        )
    }

    /// Whether steps depending on this one can never run.
    pub fn blocks_dependents(self) -> bool {
        matches!(
            self,
            StepStatus::Failed | StepStatus::Skipped | StepStatus::Rejected
        )
    }
}

/// Where a whole plan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    /// Validated and stored, not executed (`--dry-run`); `memex plan resume` runs it.
    Planned,
    /// Being executed (or interrupted by a crash; `memex plan resume` continues it).
    Running,
    /// Stopped at irreversible steps waiting for a human decision; the rest is finished.
    AwaitingApproval,
    /// Every step is finished (done, failed, skipped or rejected).
    Completed,
}

impl PlanStatus {
    /// The status as stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanStatus::Planned => "planned",
            PlanStatus::Running => "running",
            PlanStatus::AwaitingApproval => "awaiting_approval",
            PlanStatus::Completed => "completed",
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "planned" => PlanStatus::Planned,
            "running" => PlanStatus::Running,
            "awaiting_approval" => PlanStatus::AwaitingApproval,
            "completed" => PlanStatus::Completed,
            _ => return None,
        })
    }
}

/// One step as the model wrote it, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftStep {
    /// The step id (numbers are turned into their decimal text).
    pub id: String,
    /// What the step is for.
    pub description: String,
    /// The tool it calls.
    pub tool: String,
    /// The tool's arguments; values may be `{"$ref": "STEP.result.PATH"}`.
    pub args: Value,
    /// Ids of the steps that must be done first.
    pub depends_on: Vec<String>,
}

/// One step of a stored plan, in the shape `memex plan --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// The step id.
    pub id: String,
    /// What the step is for.
    pub description: String,
    /// The tool it calls.
    pub tool: String,
    /// The arguments as planned (with their `$ref`s); a step that ran reports its resolved
    /// arguments.
    pub args: Value,
    /// Ids of the steps that must be done first.
    pub depends_on: Vec<String>,
    /// Where it stands.
    pub status: StepStatus,
    /// Times the tool was called for this step.
    pub attempts: u32,
    /// The tool's output (for a step held for approval: the approval request).
    pub result: Value,
    /// Why the step failed, was skipped or was rejected.
    pub error: Option<String>,
    /// When its first attempt started (RFC 3339, UTC), once it ran.
    pub started_at: Option<String>,
    /// When it reached a final status (RFC 3339, UTC).
    pub finished_at: Option<String>,
    /// The approval id (`act_…`) of an irreversible step.
    #[serde(skip)]
    pub action_id: Option<String>,
}

/// Step counts of a plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PlanSummary {
    /// Steps in the plan.
    pub total: usize,
    /// Steps done.
    pub done: usize,
    /// Steps failed.
    pub failed: usize,
    /// Steps skipped.
    pub skipped: usize,
    /// Steps waiting for a human's approval.
    pub pending_approval: usize,
}

impl PlanSummary {
    /// Counts `steps`.
    pub fn of(steps: &[Step]) -> Self {
        let count = |s: StepStatus| steps.iter().filter(|x| x.status == s).count();
        PlanSummary {
            total: steps.len(),
            done: count(StepStatus::Done),
            failed: count(StepStatus::Failed),
            skipped: count(StepStatus::Skipped),
            pending_approval: count(StepStatus::PendingApproval),
        }
    }
}

/// An irreversible step waiting for a human.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingStep {
    /// The step id.
    pub step: String,
    /// The approval id to pass to `memex approve` / `memex reject`.
    pub action_id: String,
    /// The tool.
    pub tool: String,
    /// The exact arguments an approval executes.
    pub args: Value,
}

/// A plan and its state: what `memex plan`, `plan show`, `plan resume` and an approval of a
/// plan step print.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanReport {
    /// The plan id (`plan_…`).
    pub plan_id: String,
    /// The steps in plan order.
    pub steps: Vec<Step>,
    /// Step counts.
    pub summary: PlanSummary,
    /// Where the plan stands.
    pub status: PlanStatus,
    /// The merchant it acts for.
    pub merchant: String,
    /// The agent session its tool calls are audited under (`memex audit --session`).
    pub session: String,
    /// The task as given.
    pub task: String,
    /// A short human summary of the outcome (written by the model once the plan is
    /// finished; a plain account while it waits for approvals).
    pub answer: Option<String>,
    /// Irreversible steps waiting for a human decision.
    pub pending_actions: Vec<PendingStep>,
}

impl PlanReport {
    /// Builds the report and its derived fields from the steps.
    pub(crate) fn new(
        plan_id: String,
        steps: Vec<Step>,
        status: PlanStatus,
        merchant: String,
        session: String,
        task: String,
        answer: Option<String>,
    ) -> Self {
        let pending_actions = steps
            .iter()
            .filter(|s| s.status == StepStatus::PendingApproval)
            .filter_map(|s| {
                s.action_id.as_ref().map(|a| PendingStep {
                    step: s.id.clone(),
                    action_id: a.clone(),
                    tool: s.tool.clone(),
                    args: s.args.clone(),
                })
            })
            .collect();
        PlanReport {
            plan_id,
            summary: PlanSummary::of(&steps),
            steps,
            status,
            merchant,
            session,
            task,
            answer,
            pending_actions,
        }
    }
}

/// Parses the model's reply into draft steps: a JSON object with a `steps` array (also found
/// under `plan`), or a bare array; code fences and text around the JSON are tolerated. Step ids
/// and dependencies may be strings or integers. Errors are sentences for the re-plan message.
pub fn parse_draft(reply: &str) -> Result<Vec<DraftStep>, Vec<String>> {
    let value = extract_json(reply).ok_or_else(|| {
        vec!["the reply is not JSON: answer with one JSON object {\"steps\": [...]}".to_string()]
    })?;
    let steps = match &value {
        Value::Array(items) => items,
        Value::Object(map) => match map.get("steps").or_else(|| {
            map.get("plan")
                .and_then(|p| p.get("steps").or(Some(p)))
                .filter(|p| p.is_array())
        }) {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(vec![
                    "the reply has no \"steps\" array: answer with {\"steps\": [...]}".to_string(),
                ])
            }
        },
        _ => {
            return Err(vec![
                "the reply is not a JSON object with a \"steps\" array".to_string(),
            ])
        }
    };
    let mut out = Vec::with_capacity(steps.len());
    let mut errors = Vec::new();
    for (i, raw) in steps.iter().enumerate() {
        let n = i + 1;
        let Some(obj) = raw.as_object() else {
            errors.push(format!("steps[{n}] is not an object"));
            continue;
        };
        let id = match obj.get("id") {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Number(x)) => x.to_string(),
            None => {
                errors.push(format!("steps[{n}] has no \"id\""));
                continue;
            }
            Some(_) => {
                errors.push(format!("steps[{n}]: \"id\" must be a string or an integer"));
                continue;
            }
        };
        let tool = match obj.get("tool") {
            Some(Value::String(s)) => s.trim().to_string(),
            _ => {
                errors.push(format!(
                    "step {}: \"tool\" must be the name of a tool",
                    shown(&id)
                ));
                continue;
            }
        };
        let description = match obj.get("description") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let args = match obj.get("args").or_else(|| obj.get("arguments")) {
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    errors.push(format!(
                        "step {}: \"args\" must be a JSON object",
                        shown(&id)
                    ));
                    continue;
                }
            },
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                errors.push(format!(
                    "step {}: \"args\" must be a JSON object",
                    shown(&id)
                ));
                continue;
            }
        };
        let depends_on = match obj.get("depends_on") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut deps = Vec::with_capacity(items.len());
                let mut bad = false;
                for d in items {
                    match d {
                        Value::String(s) => deps.push(s.trim().to_string()),
                        Value::Number(x) => deps.push(x.to_string()),
                        _ => bad = true,
                    }
                }
                if bad {
                    errors.push(format!(
                        "step {}: \"depends_on\" must list step ids",
                        shown(&id)
                    ));
                    continue;
                }
                deps
            }
            Some(Value::String(s)) => vec![s.trim().to_string()],
            Some(Value::Number(x)) => vec![x.to_string()],
            Some(_) => {
                errors.push(format!(
                    "step {}: \"depends_on\" must be an array of step ids",
                    shown(&id)
                ));
                continue;
            }
        };
        out.push(DraftStep {
            id,
            description,
            tool,
            args,
            depends_on,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A step id or tool name as shown in an error: JSON-quoted and cut, so model text cannot
/// forge lines.
pub(crate) fn shown(s: &str) -> String {
    crate::tools::quote_for_display(s)
}

/// The first JSON value in `text`: the whole text, a fenced block, or the outermost `{…}`/`[…]`.
fn extract_json(text: &str) -> Option<Value> {
    let t = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(t) {
        return Some(v);
    }
    if let Some(start) = t.find("```") {
        let rest = &t[start + 3..];
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        if let Some(end) = rest.find("```") {
            if let Ok(v) = serde_json::from_str::<Value>(rest[..end].trim()) {
                return Some(v);
            }
        }
    }
    for (open, close) in [('{', '}'), ('[', ']')] {
        if let (Some(a), Some(b)) = (t.find(open), t.rfind(close)) {
            if a < b {
                if let Ok(v) = serde_json::from_str::<Value>(&t[a..=b]) {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// Longest step id.
pub const MAX_STEP_ID_LEN: usize = 32;

/// Whether `id` is a usable step id: 1–32 ASCII letters, digits, `_` or `-` (no dots, which
/// separate the parts of a `$ref`).
pub fn valid_step_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_STEP_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_objects_arrays_fences_and_numeric_ids() {
        let a = parse_draft(r#"{"steps":[{"id":1,"tool":"t","args":{},"depends_on":[]},{"id":"2","tool":"u","depends_on":[1]}]}"#).unwrap();
        assert_eq!(a[0].id, "1");
        assert_eq!(a[1].depends_on, vec!["1"]);
        assert_eq!(a[1].args, json!({}));
        let b = parse_draft("Here:\n```json\n[{\"id\":\"a\",\"tool\":\"t\"}]\n```").unwrap();
        assert_eq!(b[0].id, "a");
        assert!(parse_draft("no plan here").is_err());
        assert!(parse_draft(r#"{"answer": 1}"#).is_err());
        let e = parse_draft(r#"{"steps":[{"id":"1"},{"tool":"t"}]}"#).unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn summary_counts_statuses() {
        let step = |s| Step {
            id: "1".into(),
            description: String::new(),
            tool: "t".into(),
            args: json!({}),
            depends_on: vec![],
            status: s,
            attempts: 0,
            result: Value::Null,
            error: None,
            started_at: None,
            finished_at: None,
            action_id: None,
        };
        let steps = vec![
            step(StepStatus::Done),
            step(StepStatus::Failed),
            step(StepStatus::Skipped),
            step(StepStatus::Skipped),
            step(StepStatus::PendingApproval),
        ];
        let s = PlanSummary::of(&steps);
        assert_eq!(
            (s.total, s.done, s.failed, s.skipped, s.pending_approval),
            (5, 1, 1, 2, 1)
        );
    }
}
