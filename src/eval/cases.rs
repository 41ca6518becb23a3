//! Stored sessions as test cases (`memex eval export`): each session of the agent store becomes
//! one [`Case`] with, per turn, the merchant's message, the memory the turn saw, the tool calls
//! with their arguments and outcomes, the models' figures and the turn's outcome. Cases are
//! written one JSON object per line and read back by [`read_cases`] for `memex eval agent`.

use std::collections::BTreeSet;
use std::io::BufRead;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::{AgentError, AgentStore, AuditEntry, ModelUse, StoredTurn};
use crate::merchant::MerchantId;

/// The tags a case can carry, each a filter of `memex eval export --only`.
pub const TAGS: [&str; 4] = ["escalated", "ticketed", "clarified", "failed"];

/// One stored session as a test case.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Case {
    /// The case id (the session id it was exported from).
    pub case: String,
    /// The session.
    pub session: String,
    /// Its merchant.
    pub merchant_id: String,
    /// When the session was created (RFC 3339).
    pub created_at: String,
    /// The outcome of its last turn.
    pub outcome: String,
    /// What happened in it: `escalated`, `ticketed`, `clarified`, `failed`.
    pub tags: Vec<String>,
    /// Its turns, oldest first.
    pub turns: Vec<CaseTurn>,
}

/// One turn of a case.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CaseTurn {
    /// Turn number within the session (1-based).
    pub turn: u32,
    /// `message` (the merchant wrote), `approve`/`reject` (an operator decided), `plan`.
    pub kind: String,
    /// The merchant's message (or the operator's note, or the plan's task).
    pub message: String,
    /// The memory the turn saw (knowledge-base hits with their text, episodes, summary).
    pub memory: Value,
    /// The tool calls, in order, with their arguments and outcomes.
    pub tool_calls: Vec<CaseCall>,
    /// `answer`, `pending_action`, `escalation`, `clarification` or `error`.
    pub outcome: String,
    /// What the agent answered.
    pub answer: String,
    /// Which model produced what, with tokens and time.
    #[serde(default)]
    pub models: Vec<ModelUse>,
    /// Wall time of the turn, milliseconds.
    pub latency_ms: f64,
    /// When it finished (RFC 3339).
    pub at: String,
}

/// One recorded tool call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CaseCall {
    /// The call id (the model's, `escalation_N`, or an action id for an approved action).
    pub id: String,
    /// The tool.
    pub tool: String,
    /// Its arguments (secrets redacted, as in the audit).
    pub args: Value,
    /// `ok`, `cached`, `error`, `pending_approval`, `loop_detected`, …
    pub status: String,
    /// What the tool (or the gate) answered.
    pub result: Value,
    /// Time spent, milliseconds.
    pub latency_ms: f64,
    /// The model that chose the call, if a model did.
    #[serde(default)]
    pub model: Option<String>,
}

/// Which sessions `memex eval export` writes.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Only this merchant's sessions.
    pub merchant: Option<MerchantId>,
    /// Only sessions created at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only sessions carrying at least one of these tags (all when empty).
    pub only: Vec<String>,
    /// The tools whose successful call opens a ticket (the domain's escalation tool).
    pub ticket_tools: Vec<String>,
}

/// Errors of reading cases.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The agent store failed.
    #[error(transparent)]
    Store(#[from] AgentError),
    /// A line is not a case.
    #[error("line {line} of the cases file is not a case: {source}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The cases file could not be read.
    #[error("cannot read the cases file: {0}")]
    Read(#[source] std::io::Error),
    /// A case could not be written out.
    #[error("cannot write the cases: {0}")]
    Write(#[source] std::io::Error),
}

/// Writes every session `filter` selects to `write`, one case at a time (never the whole
/// store in memory); returns how many were written. Sessions with no finished turn are skipped,
/// and so are turns `memex forget` redacted.
pub fn export(
    store: &AgentStore,
    filter: &ExportFilter,
    mut write: impl FnMut(&Case) -> std::io::Result<()>,
) -> Result<usize, CaseError> {
    let mut written = 0;
    for s in store.sessions(filter.merchant.as_ref(), filter.since)? {
        // A forgotten turn (`memex forget`) is no test case: its words are gone.
        let turns: Vec<StoredTurn> = store
            .turn_records(&s.id)?
            .into_iter()
            .filter(|t| t.context != serde_json::json!({"forgotten": true}))
            .collect();
        if turns.is_empty() {
            continue;
        }
        let audit = store.audit_log(&s.id)?;
        let case = build_case(&s.id, &s.merchant, &s.created_at, turns, audit, filter);
        if !filter.only.is_empty() && !case.tags.iter().any(|t| filter.only.contains(t)) {
            continue;
        }
        write(&case).map_err(CaseError::Write)?;
        written += 1;
    }
    Ok(written)
}

/// The case of one session from its stored turns and audit rows.
fn build_case(
    session: &str,
    merchant: &str,
    created_at: &str,
    turns: Vec<StoredTurn>,
    audit: Vec<AuditEntry>,
    filter: &ExportFilter,
) -> Case {
    let mut tags = BTreeSet::new();
    let turns: Vec<CaseTurn> = turns
        .into_iter()
        .map(|t| {
            let tool_calls: Vec<CaseCall> = audit
                .iter()
                .filter(|a| a.turn == t.turn)
                .map(|a| CaseCall {
                    id: a.call_id.clone(),
                    tool: a.tool.clone(),
                    args: a.args.clone(),
                    status: a.status.clone(),
                    result: a.result.clone(),
                    latency_ms: a.latency_ms,
                    model: a.model.clone(),
                })
                .collect();
            match t.outcome.as_str() {
                "escalation" => {
                    tags.insert("escalated");
                }
                "clarification" => {
                    tags.insert("clarified");
                }
                "error" => {
                    tags.insert("failed");
                }
                _ => {}
            }
            for c in &tool_calls {
                let ticket =
                    filter.ticket_tools.contains(&c.tool) || c.id.starts_with("escalation_");
                if ticket && matches!(c.status.as_str(), "ok" | "cached") {
                    tags.insert("ticketed");
                }
                if c.status == "error" && system_failure(&c.result) {
                    tags.insert("failed");
                }
            }
            CaseTurn {
                turn: t.turn,
                kind: t.kind,
                message: t.message,
                memory: t.context,
                tool_calls,
                outcome: t.outcome,
                answer: t.answer,
                models: t.models,
                latency_ms: t.latency_ms,
                at: t.at,
            }
        })
        .collect();
    Case {
        case: session.to_string(),
        session: session.to_string(),
        merchant_id: merchant.to_string(),
        created_at: created_at.to_string(),
        outcome: turns.last().map(|t| t.outcome.clone()).unwrap_or_default(),
        tags: tags.into_iter().map(str::to_string).collect(),
        turns,
    }
}

/// A tool error that is the system's failure (the service failed), not an answer such as
/// "not found" or "refused".
fn system_failure(result: &Value) -> bool {
    matches!(
        result.get("error").and_then(Value::as_str),
        Some("transient" | "internal" | "unavailable")
    )
}

/// Reads a cases file written by [`export`]: one case per line; blank lines are skipped.
pub fn read_cases(reader: impl BufRead) -> Result<Vec<Case>, CaseError> {
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(CaseError::Read)?;
        if line.trim().is_empty() {
            continue;
        }
        let case: Case = serde_json::from_str(&line).map_err(|source| CaseError::Line {
            line: i + 1,
            source,
        })?;
        out.push(case);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn turn(n: u32, outcome: &str) -> StoredTurn {
        StoredTurn {
            turn: n,
            at: "2026-12-07T00:00:00.000Z".into(),
            kind: "message".into(),
            message: format!("m{n}"),
            answer: "a".into(),
            outcome: outcome.into(),
            latency_ms: 1.0,
            prompt_tokens: 1,
            completion_tokens: 1,
            models: Vec::new(),
            context: json!({}),
        }
    }

    fn call(turn: u32, id: &str, tool: &str, status: &str, result: Value) -> AuditEntry {
        AuditEntry {
            session: "s".into(),
            merchant: "M".into(),
            turn,
            call_id: id.into(),
            tool: tool.into(),
            args: json!({}),
            result,
            status: status.into(),
            latency_ms: 0.0,
            at: String::new(),
            model: None,
        }
    }

    #[test]
    fn tags_follow_outcomes_and_calls() {
        let filter = ExportFilter {
            ticket_tools: vec!["create_support_ticket".into()],
            ..ExportFilter::default()
        };
        let c = build_case(
            "s",
            "M",
            "t",
            vec![turn(1, "clarification"), turn(2, "escalation")],
            vec![
                call(
                    2,
                    "c1",
                    "get_transaction",
                    "error",
                    json!({"error": "not_found"}),
                ),
                call(2, "escalation_2", "create_support_ticket", "ok", json!({})),
            ],
            &filter,
        );
        assert_eq!(c.tags, vec!["clarified", "escalated", "ticketed"]);
        assert_eq!(c.outcome, "escalation");
        assert_eq!(c.turns[1].tool_calls.len(), 2);
        assert!(c.turns[0].tool_calls.is_empty());
        let failed = build_case(
            "s",
            "M",
            "t",
            vec![turn(1, "answer")],
            vec![call(1, "c1", "x", "error", json!({"error": "unavailable"}))],
            &filter,
        );
        assert_eq!(failed.tags, vec!["failed"]);
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = read_cases(std::io::Cursor::new("\n{\"case\": 1}\n")).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
