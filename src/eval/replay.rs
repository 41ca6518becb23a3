//! Replaying recorded cases against a model (`memex eval agent`): each case's merchant messages
//! go to an agent whose tools answer from the recorded results ([`RecordedTool`]) and whose
//! memory is the memory each turn saw ([`CaseMemory`]). No tool runs for real; an irreversible
//! call is held at the gate as always, and nothing approves it. [`replay`] compares, per turn,
//! the tools chosen (in order with their arguments, and as a set) and the outcome.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{json, Value};

use super::cases::Case;
use crate::agent::prompt::MemoryContext;
use crate::agent::{Agent, AuditEntry, RecordedMemory, Silent, TurnReport};
use crate::merchant::MerchantId;
use crate::tools::{canonical_json, Tool, ToolContext, ToolError, ToolOrigin};

/// The key memex adds to shown arguments when it replaced the model's merchant.
const MERCHANT_OVERRIDE: &str = "$merchant_override";

/// One recorded call a replay may answer from.
#[derive(Debug, Clone)]
struct Recorded {
    tool: String,
    args: Value,
    status: String,
    result: Value,
    used: bool,
}

/// Every case's recorded tool results, by session.
#[derive(Debug, Default)]
pub struct Recordings {
    by_session: Mutex<HashMap<String, Vec<Recorded>>>,
}

impl Recordings {
    /// The results of `cases` that came from a tool (a call the gate settled by itself, such as
    /// a held irreversible call or a repeat refused as a loop, is not a tool result).
    pub fn from_cases(cases: &[Case]) -> Self {
        let mut by_session: HashMap<String, Vec<Recorded>> = HashMap::new();
        for case in cases {
            let calls = by_session.entry(case.session.clone()).or_default();
            for call in case.turns.iter().flat_map(|t| &t.tool_calls) {
                if matches!(call.status.as_str(), "ok" | "cached")
                    || (call.status == "error" && from_a_tool(&call.result))
                {
                    calls.push(Recorded {
                        tool: call.tool.clone(),
                        args: call.args.clone(),
                        status: call.status.clone(),
                        result: call.result.clone(),
                        used: false,
                    });
                }
            }
        }
        Recordings {
            by_session: Mutex::new(by_session),
        }
    }

    /// The recorded answer to `tool` with `args` in `session`: an unused call with the same
    /// arguments, else (a read asked twice) a used one; a write with other arguments takes the
    /// next unused recorded call of the same tool (a ticket's text names the session, an
    /// amount may be worded differently), since its effect is what the case recorded.
    fn answer(
        &self,
        session: &str,
        tool: &str,
        args: &Value,
        merchant_arg: Option<&str>,
        read_only: bool,
    ) -> Option<(String, Value)> {
        let mut guard = self.by_session.lock().ok()?;
        let calls = guard.get_mut(session)?;
        let want = normalized(args, merchant_arg);
        let same = |r: &Recorded| r.tool == tool && normalized(&r.args, merchant_arg) == want;
        let pick = calls
            .iter()
            .position(|r| !r.used && same(r))
            .or_else(|| calls.iter().position(same))
            .or_else(|| {
                (!read_only)
                    .then(|| calls.iter().position(|r| !r.used && r.tool == tool))
                    .flatten()
            })?;
        let r = &mut calls[pick];
        r.used = true;
        Some((r.status.clone(), r.result.clone()))
    }
}

/// Whether an error result came from a tool (one of [`ToolError`]'s kinds), not from the gate
/// (`tool_call_limit`, `not_executed`, …).
fn from_a_tool(result: &Value) -> bool {
    matches!(
        result.get("error").and_then(Value::as_str),
        Some("not_found" | "invalid_args" | "refused" | "transient" | "internal" | "unavailable")
    )
}

/// `args` as compared across a recording and a replay: canonical JSON of the arguments as the
/// audit keeps them (secrets redacted), without memex's merchant override note and without the
/// merchant argument memex binds itself.
pub fn normalized(args: &Value, merchant_arg: Option<&str>) -> String {
    let mut a = crate::agent::guards::redact(args);
    if let Some(map) = a.as_object_mut() {
        map.remove(MERCHANT_OVERRIDE);
        if let Some(m) = merchant_arg {
            map.remove(m);
        }
    }
    canonical_json(&a)
}

/// A tool that answers from [`Recordings`] and never runs the tool it stands for (whose name,
/// description, schema and policy the model and the gate see unchanged).
pub struct RecordedTool {
    inner: Arc<dyn Tool>,
    recordings: Arc<Recordings>,
}

impl RecordedTool {
    /// `inner`'s stand-in answering from `recordings`.
    pub fn new(inner: Arc<dyn Tool>, recordings: Arc<Recordings>) -> Self {
        RecordedTool { inner, recordings }
    }
}

#[async_trait]
impl Tool for RecordedTool {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn description(&self) -> &str {
        self.inner.description()
    }
    fn parameters(&self) -> &Value {
        self.inner.parameters()
    }
    fn irreversible(&self) -> bool {
        self.inner.irreversible()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn output_schema(&self) -> Option<Value> {
        self.inner.output_schema()
    }
    fn origin(&self) -> ToolOrigin {
        self.inner.origin()
    }
    fn merchant_arg(&self) -> Option<&str> {
        self.inner.merchant_arg()
    }
    fn progress(&self, args: &Value) -> String {
        self.inner.progress(args)
    }
    async fn call(&self, args: Value, ctx: &ToolContext) -> Result<Value, ToolError> {
        let found = self.recordings.answer(
            &ctx.session_id,
            self.name(),
            &args,
            self.merchant_arg(),
            self.read_only(),
        );
        let Some((status, result)) = found else {
            return Err(ToolError::Refused(format!(
                "replay: the recorded case has no result for {} with these arguments",
                self.name()
            )));
        };
        if status != "error" {
            return Ok(result);
        }
        let message = result
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the recorded call failed")
            .to_string();
        Err(match result.get("error").and_then(Value::as_str) {
            Some("not_found") => ToolError::NotFound(message),
            Some("invalid_args") => ToolError::InvalidArgs(message),
            Some("transient") => ToolError::Transient(message),
            Some("internal") => ToolError::Internal(message),
            Some("unavailable") => ToolError::Unavailable(message),
            _ => ToolError::Refused(message),
        })
    }
}

/// The memory each recorded turn saw, by session and message, in order.
#[derive(Debug, Default)]
pub struct CaseMemory {
    turns: Mutex<HashMap<(String, String), VecDeque<MemoryContext>>>,
}

impl CaseMemory {
    /// The memory of every message turn of `cases` (empty where it was forgotten or unreadable).
    pub fn from_cases(cases: &[Case]) -> Self {
        let mut turns: HashMap<(String, String), VecDeque<MemoryContext>> = HashMap::new();
        for case in cases {
            for t in case.turns.iter().filter(|t| t.kind == "message") {
                let memory = serde_json::from_value(t.memory.clone()).unwrap_or_default();
                turns
                    .entry((case.session.clone(), t.message.clone()))
                    .or_default()
                    .push_back(memory);
            }
        }
        CaseMemory {
            turns: Mutex::new(turns),
        }
    }
}

impl RecordedMemory for CaseMemory {
    fn memory_for(
        &self,
        _merchant: &MerchantId,
        session: &str,
        message: &str,
    ) -> Option<MemoryContext> {
        let mut turns = self.turns.lock().ok()?;
        let queue = turns.get_mut(&(session.to_string(), message.to_string()))?;
        // The same message said twice in one session gets each turn's memory in order; a
        // message replayed more often than recorded keeps the last.
        if queue.len() > 1 {
            queue.pop_front()
        } else {
            queue.front().cloned()
        }
    }
}

/// What one side (recorded or replayed) of a turn did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TurnSide {
    /// The tools called, in order.
    pub tools: Vec<String>,
    /// The calls with their arguments (as compared).
    pub calls: Vec<Value>,
    /// The turn's outcome.
    pub outcome: String,
    /// Calls refused as repeats.
    pub loops: usize,
    /// The answer.
    pub answer: String,
    /// Wall time, milliseconds.
    pub latency_ms: f64,
    /// Why the replayed turn failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One replayed turn beside its recording.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TurnComparison {
    /// The recorded turn number.
    pub turn: u32,
    /// The merchant's message.
    pub message: String,
    /// What the recording did.
    pub recorded: TurnSide,
    /// What the replay did.
    pub replayed: TurnSide,
    /// Same tools in the same order with the same arguments.
    pub tools_exact: bool,
    /// Same set of tool names.
    pub tools_set: bool,
    /// Same outcome.
    pub outcome_match: bool,
}

/// One replayed case.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CaseResult {
    /// The case id.
    pub case: String,
    /// Its session.
    pub session: String,
    /// Its merchant.
    pub merchant_id: String,
    /// Every turn matched exactly (tools, arguments and outcome).
    pub same: bool,
    /// Every turn's tools matched exactly.
    pub tools_exact: bool,
    /// Every turn's tool set matched.
    pub tools_set: bool,
    /// Every turn's outcome matched.
    pub outcome_match: bool,
    /// Replayed turns (merchant messages; operator decisions, plans and turns recorded before
    /// messages were kept are not replayed).
    pub turns: Vec<TurnComparison>,
}

/// Percentiles of replayed turn latency.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Latency {
    /// Median, milliseconds.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// The overall figures of a replay.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Summary {
    /// Cases replayed.
    pub cases: usize,
    /// Cases with no turn to replay (only operator decisions or plans, or recorded before
    /// messages were kept): left out of every other figure.
    pub skipped: usize,
    /// Turns replayed.
    pub turns: usize,
    /// Cases that matched in every turn.
    pub same_cases: usize,
    /// Cases with at least one difference.
    pub differences: usize,
    /// Share of turns whose tools matched exactly (order and arguments).
    pub tools_exact: f64,
    /// Share of turns whose tool sets matched.
    pub tools_set: f64,
    /// Share of turns whose outcome matched.
    pub outcome_match: f64,
    /// Calls refused as repeats in the replay (and in the recording).
    pub loops: usize,
    /// Loops in the recording.
    pub recorded_loops: usize,
    /// Tool calls made by the replay.
    pub tool_calls: usize,
    /// Tool calls in the recording.
    pub recorded_tool_calls: usize,
    /// Replayed turns that failed with an error.
    pub errors: usize,
    /// Replayed turn latency.
    pub latency_ms: Latency,
}

/// A whole replay.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ReplayReport {
    /// Overall.
    pub summary: Summary,
    /// Per case.
    pub cases: Vec<CaseResult>,
}

/// Replays every message turn of `cases` on `agent` (built over [`RecordedTool`]s,
/// [`CaseMemory`] and scratch stores), in each case's own session, and compares.
pub async fn replay(agent: &Agent, cases: &[Case]) -> ReplayReport {
    let mut report = ReplayReport::default();
    let mut latencies = Vec::new();
    let mut skipped = 0;
    for case in cases {
        let mut turns = Vec::new();
        // Turns recorded before messages were kept have none to replay.
        let replayable = case
            .turns
            .iter()
            .filter(|t| t.kind == "message" && !t.message.trim().is_empty());
        for t in replayable {
            let merchant_arg = |tool: &str| {
                agent
                    .tools()
                    .get(tool)
                    .and_then(|t| t.merchant_arg().map(str::to_string))
            };
            let shown = |tool: &str, args: &Value| {
                let n = normalized(args, merchant_arg(tool).as_deref());
                json!({"tool": tool, "args": serde_json::from_str::<Value>(&n).unwrap_or(Value::Null)})
            };
            let recorded = TurnSide {
                tools: t.tool_calls.iter().map(|c| c.tool.clone()).collect(),
                calls: t
                    .tool_calls
                    .iter()
                    .map(|c| shown(&c.tool, &c.args))
                    .collect(),
                outcome: t.outcome.clone(),
                loops: t
                    .tool_calls
                    .iter()
                    .filter(|c| c.status == "loop_detected")
                    .count(),
                answer: t.answer.clone(),
                latency_ms: t.latency_ms,
                error: None,
            };
            // What the scratch audit holds already: a turn that fails leaves its calls there.
            let audited = agent
                .store()
                .audit_log(&case.session)
                .map_or(0, |log| log.len());
            let started = Instant::now();
            let result = match MerchantId::parse(&case.merchant_id) {
                Ok(m) => agent
                    .ask(&m, &case.session, &t.message, &Silent)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("the case's merchant id is not valid: {e}")),
            };
            let latency_ms = started.elapsed().as_secs_f64() * 1e3;
            latencies.push(latency_ms);
            let replayed = match result {
                Ok(r) => side_of(&r, latency_ms, &shown),
                Err(error) => {
                    let made: Vec<AuditEntry> = agent
                        .store()
                        .audit_log(&case.session)
                        .map(|log| log.into_iter().skip(audited).collect())
                        .unwrap_or_default();
                    TurnSide {
                        tools: made.iter().map(|c| c.tool.clone()).collect(),
                        calls: made.iter().map(|c| shown(&c.tool, &c.args)).collect(),
                        outcome: "error".into(),
                        loops: made.iter().filter(|c| c.status == "loop_detected").count(),
                        answer: String::new(),
                        latency_ms,
                        error: Some(error),
                    }
                }
            };
            let set = |s: &TurnSide| s.tools.iter().cloned().collect::<BTreeSet<_>>();
            turns.push(TurnComparison {
                turn: t.turn,
                message: t.message.clone(),
                tools_exact: recorded.calls == replayed.calls,
                tools_set: set(&recorded) == set(&replayed),
                outcome_match: recorded.outcome == replayed.outcome,
                recorded,
                replayed,
            });
        }
        if turns.is_empty() {
            skipped += 1;
            continue;
        }
        let all = |f: fn(&TurnComparison) -> bool| turns.iter().all(f);
        let (tools_exact, tools_set, outcome_match) = (
            all(|t| t.tools_exact),
            all(|t| t.tools_set),
            all(|t| t.outcome_match),
        );
        report.cases.push(CaseResult {
            case: case.case.clone(),
            session: case.session.clone(),
            merchant_id: case.merchant_id.clone(),
            same: tools_exact && outcome_match,
            tools_exact,
            tools_set,
            outcome_match,
            turns,
        });
    }
    report.summary = summarise(&report.cases, latencies);
    report.summary.skipped = skipped;
    report
}

/// The replayed side of a turn from its report. Calls the turn stopped before running (after a
/// held action or an escalation in the same reply) are left out: the audit the recording
/// comes from never had them.
fn side_of(r: &TurnReport, latency_ms: f64, shown: &dyn Fn(&str, &Value) -> Value) -> TurnSide {
    let ran: Vec<_> = r
        .tool_calls
        .iter()
        .filter(|c| c.result.get("error").and_then(Value::as_str) != Some("not_executed"))
        .collect();
    let outcome = if r.clarification.is_some() {
        "clarification"
    } else if r.escalation.is_some() {
        "escalation"
    } else if r.pending_action.is_some() {
        "pending_action"
    } else {
        "answer"
    };
    TurnSide {
        tools: ran.iter().map(|c| c.tool.clone()).collect(),
        calls: ran.iter().map(|c| shown(&c.tool, &c.args)).collect(),
        outcome: outcome.into(),
        loops: ran.iter().filter(|c| c.status == "loop_detected").count(),
        answer: r.answer.clone(),
        latency_ms,
        error: None,
    }
}

fn summarise(cases: &[CaseResult], mut latencies: Vec<f64>) -> Summary {
    let turns: Vec<&TurnComparison> = cases.iter().flat_map(|c| &c.turns).collect();
    let share = |f: fn(&TurnComparison) -> bool| {
        if turns.is_empty() {
            0.0
        } else {
            turns.iter().filter(|t| f(t)).count() as f64 / turns.len() as f64
        }
    };
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    let same_cases = cases.iter().filter(|c| c.same).count();
    Summary {
        cases: cases.len(),
        skipped: 0,
        turns: turns.len(),
        same_cases,
        differences: cases.len() - same_cases,
        tools_exact: share(|t| t.tools_exact),
        tools_set: share(|t| t.tools_set),
        outcome_match: share(|t| t.outcome_match),
        loops: turns.iter().map(|t| t.replayed.loops).sum(),
        recorded_loops: turns.iter().map(|t| t.recorded.loops).sum(),
        tool_calls: turns.iter().map(|t| t.replayed.tools.len()).sum(),
        recorded_tool_calls: turns.iter().map(|t| t.recorded.tools.len()).sum(),
        errors: turns.iter().filter(|t| t.replayed.error.is_some()).count(),
        latency_ms: Latency {
            p50: pct(0.50),
            p95: pct(0.95),
            p99: pct(0.99),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_compare_without_the_merchant() {
        let a = json!({"id": "pay_1", "$merchant_override": {"argument": "merchant_id"}});
        let b = json!({"merchant_id": "M2", "id": "pay_1"});
        assert_eq!(
            normalized(&a, Some("merchant_id")),
            normalized(&b, Some("merchant_id"))
        );
        assert_ne!(normalized(&b, None), normalized(&a, None));
        // The audit keeps secrets redacted; a replay's live arguments compare equal to them.
        let live = json!({"id": "pay_1", "otp_code": "123456"});
        let audited = json!({"id": "pay_1", "otp_code": "[redacted]"});
        assert_eq!(normalized(&live, None), normalized(&audited, None));
    }

    #[test]
    fn gate_errors_are_not_recorded_results() {
        assert!(from_a_tool(&json!({"error": "not_found", "message": "x"})));
        assert!(!from_a_tool(&json!({"error": "tool_call_limit"})));
        assert!(!from_a_tool(&json!({"error": "not_executed"})));
    }
}
