//! The Redis backend of the agent store, shared by every `memex serve` worker that names the
//! same `--state redis://…`.
//!
//! Keys (prefix `memex:st:`; an id is always the last part of a key, so no id — whatever
//! characters it holds — can make one key collide with another of a different kind):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `sess:ID` | hash | `merchant`, `created_at`, `turns`, `ended_at`, `episode_id`, `ended_turns` |
//! | `msess:MERCHANT` | sorted set | the merchant's session ids, scored by creation time (ms) |
//! | `turns:SESSION` | list | one JSON record per finished turn |
//! | `audit:SESSION` | list | one JSON audit row per tool call, in order |
//! | `act:ID` | hash | one action: session, merchant, tool, args, status, result, executor, … |
//! | `actcall:SESSION` | hash | tool-call id → the first action created for it |
//! | `actsess:SESSION` | set | every action id of the session (for `forget`) |
//! | `actall`, `actst:STATUS` | sorted sets | action ids by creation sequence (`actseq`) |
//! | `slock:SESSION` | string | the holder of the session's turn lock |
//! | `stats` | hash | counters kept at write time for `memex stats` |
//! | `mstats` | hash | per model: `METRIC|ROLE|MODEL` → calls, tokens, time (the name last) |
//! | `lat` | sorted set | turn latencies (percentiles by rank, no scan) |
//!
//! Atomicity: session creation, turn counting, action creation, claims, transitions and locks
//! are Lua scripts (one round trip, atomic in Redis); a claim or lock that depends on a
//! caller's liveness check reads the current holder first and passes the holder it found dead
//! to the script, which only proceeds if the holder is still that one. Turn records and audit
//! rows are one `MULTI` with their counters. An acknowledged write is as durable as the
//! server's `appendfsync` makes it (`always`: nothing lost on a crash; `everysec`: up to 1 s).

use std::collections::HashMap;

use redis::Script;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::types::{
    ActionStatus, AgentStateBackend, AuditEntry, ModelStats, PendingAction, Percentiles, Redacted,
    SessionInfo, Stats, StoredTurn, TurnRecord,
};
use crate::agent::error::AgentError;
use crate::agent::report::ModelUse;
use crate::merchant::MerchantId;
use crate::redisdb::RedisStore;
use crate::state::redis::PREFIX;

/// The agent store in a Redis database.
pub struct RedisAgentState {
    pool: RedisStore,
    scripts: Scripts,
}

struct Scripts {
    begin: Script,
    next_turn: Script,
    create_action: Script,
    claim: Script,
    transition: Script,
    end_session: Script,
    lock: Script,
    unlock: Script,
    forget_action: Script,
}

// KEYS: act:ID, status-set prefix (…actst:)
// ARGV: merchant, the redacted value, now
// Redacts one action of the merchant (a pending one is rejected first); 1 when it changed.
const FORGET_ACTION_LUA: &str = r#"
local st = redis.call('HMGET', KEYS[1], 'merchant', 'status', 'seq', 'args', 'result')
if st[1] ~= ARGV[1] then return 0 end
local changed = 0
if st[2] == 'pending' then
  redis.call('HSET', KEYS[1], 'status', 'rejected', 'decided_at', ARGV[3])
  redis.call('ZREM', KEYS[2] .. 'pending', redis.call('HGET', KEYS[1], 'id'))
  redis.call('ZADD', KEYS[2] .. 'rejected', st[3], redis.call('HGET', KEYS[1], 'id'))
end
if st[4] ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'args', ARGV[2])
  changed = 1
end
if st[5] and st[5] ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'result', ARGV[2])
  changed = 1
end
return changed
"#;

const BEGIN_LUA: &str = r#"
local m = redis.call('HGET', KEYS[1], 'merchant')
if m then
  if m ~= ARGV[1] then return -1 end
  return tonumber(redis.call('HGET', KEYS[1], 'turns') or '0')
end
redis.call('HSET', KEYS[1], 'merchant', ARGV[1], 'created_at', ARGV[2], 'turns', 0)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('HINCRBY', KEYS[3], 'sessions', 1)
return 0
"#;

const NEXT_TURN_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], 'turns', 1)
"#;

// KEYS: act:ID, actcall:SESSION, actall, actseq, actst:pending, actsess:SESSION
// ARGV: id, session, merchant, turn, call_id, tool, args, created_at
const CREATE_ACTION_LUA: &str = r#"
local seq = redis.call('INCR', KEYS[4])
redis.call('SADD', KEYS[6], ARGV[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'session', ARGV[2], 'merchant', ARGV[3],
  'turn', ARGV[4], 'call_id', ARGV[5], 'tool', ARGV[6], 'args', ARGV[7], 'status', 'pending',
  'created_at', ARGV[8], 'seq', seq)
redis.call('HSETNX', KEYS[2], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('ZADD', KEYS[5], seq, ARGV[1])
return seq
"#;

// KEYS: act:ID, status-set prefix (…actst:)
// ARGV: id, runner, dead executor ('' = none found dead), now
// Returns 1 when claimed, 0 when not claimable, -1 when another executor (not the one passed
// as dead) holds it: the caller then asks whether that one is alive.
const CLAIM_LUA: &str = r#"
local st = redis.call('HMGET', KEYS[1], 'status', 'executor', 'seq')
local status, executor, seq = st[1], st[2], st[3]
if not status then return 0 end
if status == 'approved' then
  if executor and executor ~= ARGV[2] and executor ~= ARGV[3] then return -1 end
elseif status ~= 'pending' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'approved', 'executor', ARGV[2])
redis.call('HSETNX', KEYS[1], 'decided_at', ARGV[4])
redis.call('ZREM', KEYS[2] .. status, ARGV[1])
redis.call('ZADD', KEYS[2] .. 'approved', seq, ARGV[1])
return 1
"#;

// KEYS: act:ID, status-set prefix
// ARGV: id, to, result ('' = keep), time column, now, from...
const TRANSITION_LUA: &str = r#"
local st = redis.call('HMGET', KEYS[1], 'status', 'seq')
local status, seq = st[1], st[2]
if not status then return 0 end
local ok = false
for i = 6, #ARGV do if ARGV[i] == status then ok = true end end
if not ok then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], ARGV[4], ARGV[5])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[3]) end
redis.call('ZREM', KEYS[2] .. status, ARGV[1])
redis.call('ZADD', KEYS[2] .. ARGV[2], seq, ARGV[1])
return 1
"#;

const END_SESSION_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local turns = redis.call('HGET', KEYS[1], 'turns') or '0'
redis.call('HSET', KEYS[1], 'ended_at', ARGV[1], 'episode_id', ARGV[2], 'ended_turns', turns)
return 1
"#;

// KEYS: slock:SESSION; ARGV: holder, dead holder ('' = none found dead)
// Returns 1 when taken, -1 when another holder (not the one passed as dead) has it.
const LOCK_LUA: &str = r#"
local h = redis.call('GET', KEYS[1])
if h and h ~= ARGV[1] and h ~= ARGV[2] then return -1 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"#;

const UNLOCK_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// One finished turn as stored in `turns:SESSION`.
#[derive(Serialize, Deserialize)]
struct TurnRow {
    merchant: String,
    turn: u32,
    at: String,
    outcome: String,
    latency_ms: f64,
    prompt_tokens: u64,
    completion_tokens: u64,
    context: Value,
    #[serde(default = "message_kind")]
    kind: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    answer: String,
    #[serde(default)]
    models: Vec<ModelUse>,
}

/// The kind of a turn stored before turns had one.
fn message_kind() -> String {
    "message".into()
}

/// One audit row as stored in `audit:SESSION`.
#[derive(Serialize, Deserialize)]
struct AuditRow {
    session: String,
    merchant: String,
    turn: u32,
    call_id: String,
    tool: String,
    args: Value,
    result: Value,
    status: String,
    latency_ms: f64,
    at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
}

fn key(kind: &str, id: &str) -> String {
    format!("{PREFIX}{kind}:{id}")
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What a forgotten turn's message and answer read.
const FORGOTTEN: &str = "[forgotten]";

fn forgotten_value() -> Value {
    Value::String("[forgotten]".into())
}

fn forgotten_context() -> Value {
    serde_json::json!({"forgotten": true})
}

/// How many times a claim or lock is retried when its holder changes under it.
const RACE_RETRIES: usize = 16;

impl RedisAgentState {
    /// The store on `pool`.
    pub fn new(pool: RedisStore) -> Self {
        RedisAgentState {
            pool,
            scripts: Scripts {
                begin: Script::new(BEGIN_LUA),
                next_turn: Script::new(NEXT_TURN_LUA),
                create_action: Script::new(CREATE_ACTION_LUA),
                claim: Script::new(CLAIM_LUA),
                transition: Script::new(TRANSITION_LUA),
                end_session: Script::new(END_SESSION_LUA),
                lock: Script::new(LOCK_LUA),
                unlock: Script::new(UNLOCK_LUA),
                forget_action: Script::new(FORGET_ACTION_LUA),
            },
        }
    }

    fn damaged(&self, what: &str) -> AgentError {
        AgentError::Redis(self.pool.damaged(what))
    }

    fn parse_action(
        &self,
        h: HashMap<String, String>,
    ) -> Result<Option<PendingAction>, AgentError> {
        if h.is_empty() {
            return Ok(None);
        }
        let field = |name: &str| -> Result<String, AgentError> {
            h.get(name)
                .cloned()
                .ok_or_else(|| self.damaged(&format!("an action's {name}")))
        };
        let args = field("args")?;
        Ok(Some(PendingAction {
            id: field("id")?,
            session: field("session")?,
            merchant: field("merchant")?,
            tool: field("tool")?,
            args: serde_json::from_str(&args).map_err(|e| AgentError::Corrupt {
                what: "an action's arguments".into(),
                source: Box::new(e),
            })?,
            status: ActionStatus::parse(&field("status")?)?,
            result: h.get("result").and_then(|r| serde_json::from_str(r).ok()),
            call_id: field("call_id")?,
        }))
    }

    fn hgetall(&self, k: &str) -> Result<HashMap<String, String>, AgentError> {
        Ok(self.pool.run(|c| redis::cmd("HGETALL").arg(k).query(c))?)
    }

    fn list<T: serde::de::DeserializeOwned>(
        &self,
        k: &str,
        what: &str,
    ) -> Result<Vec<T>, AgentError> {
        let raw: Vec<String> = self
            .pool
            .run(|c| redis::cmd("LRANGE").arg(k).arg(0).arg(-1).query(c))?;
        raw.iter()
            .map(|r| {
                serde_json::from_str(r).map_err(|e| AgentError::Corrupt {
                    what: what.to_string(),
                    source: Box::new(e),
                })
            })
            .collect()
    }

    /// Rewrites the rows of list `k` for which `change` returns a new value, under WATCH so a
    /// concurrent append retries the whole pass. Returns how many rows changed.
    fn rewrite_list(
        &self,
        k: &str,
        change: &dyn Fn(&str) -> Option<String>,
    ) -> Result<u64, AgentError> {
        let n = self.pool.run(|c: &mut crate::redisdb::Conn| loop {
            redis::cmd("WATCH").arg(k).exec(c)?;
            let rows: Vec<String> = redis::cmd("LRANGE").arg(k).arg(0).arg(-1).query(c)?;
            let edits: Vec<(usize, String)> = rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| change(r).map(|v| (i, v)))
                .collect();
            if edits.is_empty() {
                redis::cmd("UNWATCH").exec(c)?;
                return Ok(0u64);
            }
            let mut p = redis::pipe();
            p.atomic();
            for (i, v) in &edits {
                p.cmd("LSET").arg(k).arg(*i).arg(v).ignore();
            }
            let done: Option<()> = p.query(c)?;
            if done.is_some() {
                return Ok(edits.len() as u64);
            }
        })?;
        Ok(n)
    }
}

impl AgentStateBackend for RedisAgentState {
    fn merchant_sessions(
        &self,
        merchant: &MerchantId,
        before: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<String>, AgentError> {
        let max = before.map_or("+inf".to_string(), |t| format!("({}", t.timestamp_millis()));
        let k = key("msess", merchant.as_str());
        Ok(self.pool.run(|c| {
            redis::cmd("ZRANGEBYSCORE")
                .arg(&k)
                .arg("-inf")
                .arg(&max)
                .query(c)
        })?)
    }

    fn redact_sessions(
        &self,
        merchant: &MerchantId,
        sessions: &[String],
    ) -> Result<Redacted, AgentError> {
        let mut out = Redacted::default();
        let m = merchant.as_str();
        for session in sessions {
            if self.session_merchant(session)?.as_ref() != Some(merchant) {
                continue;
            }
            out.audit_rows += self.rewrite_list(&key("audit", session), &|raw: &str| {
                let mut row: AuditRow = serde_json::from_str(raw).ok()?;
                if row.merchant != m
                    || (row.args == forgotten_value() && row.result == forgotten_value())
                {
                    return None;
                }
                row.args = forgotten_value();
                row.result = forgotten_value();
                serde_json::to_string(&row).ok()
            })?;
            out.turns += self.rewrite_list(&key("turns", session), &|raw: &str| {
                let mut row: TurnRow = serde_json::from_str(raw).ok()?;
                if row.merchant != m
                    || (row.context == forgotten_context()
                        && row.message == FORGOTTEN
                        && row.answer == FORGOTTEN)
                {
                    return None;
                }
                row.context = forgotten_context();
                row.message = FORGOTTEN.into();
                row.answer = FORGOTTEN.into();
                serde_json::to_string(&row).ok()
            })?;
            // Every action of the session (`actsess`), and those of stores written before that
            // set existed (`actcall` keeps the first action of each call id).
            let mut ids: Vec<String> = self
                .pool
                .run(|c| redis::cmd("SMEMBERS").arg(key("actsess", session)).query(c))?;
            let by_call: Vec<String> = self
                .pool
                .run(|c| redis::cmd("HVALS").arg(key("actcall", session)).query(c))?;
            ids.extend(by_call);
            ids.sort();
            ids.dedup();
            let redacted = forgotten_value().to_string();
            let (prefix, at) = (key("actst", ""), now());
            for id in ids {
                let k = key("act", &id);
                let changed: i64 = self.pool.run(|c| {
                    self.scripts
                        .forget_action
                        .key(&k)
                        .key(&prefix)
                        .arg(m)
                        .arg(&redacted)
                        .arg(&at)
                        .invoke(c)
                })?;
                out.actions += changed as u64;
            }
        }
        Ok(out)
    }

    fn begin_session(&self, session: &str, merchant: &MerchantId) -> Result<u32, AgentError> {
        let created = chrono::Utc::now();
        let at = created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (k1, k2, k3) = (
            key("sess", session),
            key("msess", merchant.as_str()),
            format!("{PREFIX}stats"),
        );
        let r: i64 = self.pool.run(|c| {
            self.scripts
                .begin
                .key(&k1)
                .key(&k2)
                .key(&k3)
                .arg(merchant.as_str())
                .arg(&at)
                .arg(created.timestamp_millis())
                .arg(session)
                .invoke(c)
        })?;
        if r < 0 {
            return Err(AgentError::SessionMerchant {
                session: session.to_string(),
            });
        }
        Ok(u32::try_from(r).unwrap_or(u32::MAX))
    }

    fn session_merchant(&self, session: &str) -> Result<Option<MerchantId>, AgentError> {
        let k = key("sess", session);
        let owner: Option<String> = self
            .pool
            .run(|c| redis::cmd("HGET").arg(&k).arg("merchant").query(c))?;
        owner
            .map(|o| {
                MerchantId::parse(&o).map_err(|e| AgentError::Corrupt {
                    what: "a session's merchant".into(),
                    source: Box::new(e),
                })
            })
            .transpose()
    }

    fn next_turn(&self, session: &str) -> Result<u32, AgentError> {
        let k = key("sess", session);
        let n: i64 = self
            .pool
            .run(|c| self.scripts.next_turn.key(&k).invoke(c))?;
        if n < 0 {
            return Err(AgentError::UnknownSession(session.to_string()));
        }
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn record_turn(
        &self,
        session: &str,
        merchant: &MerchantId,
        turn: u32,
        rec: &TurnRecord,
    ) -> Result<(), AgentError> {
        let row = serde_json::to_string(&TurnRow {
            merchant: merchant.as_str().to_string(),
            turn,
            at: now(),
            outcome: rec.outcome.clone(),
            latency_ms: rec.latency_ms,
            prompt_tokens: rec.prompt_tokens,
            completion_tokens: rec.completion_tokens,
            context: rec.context.clone(),
            kind: rec.kind.clone(),
            message: rec.message.clone(),
            answer: rec.answer.clone(),
            models: rec.models.clone(),
        })
        .map_err(|e| AgentError::Corrupt {
            what: "a turn record".into(),
            source: Box::new(e),
        })?;
        let stats = format!("{PREFIX}stats");
        let lat_member = format!("{}:{turn}:{}", uuid::Uuid::new_v4().simple(), session);
        let mut p = redis::pipe();
        p.atomic()
            .cmd("RPUSH")
            .arg(key("turns", session))
            .arg(&row)
            .ignore()
            .cmd("HINCRBY")
            .arg(&stats)
            .arg("turns")
            .arg(1)
            .ignore()
            .cmd("HINCRBY")
            .arg(&stats)
            .arg("llm_tokens")
            .arg(rec.prompt_tokens.saturating_add(rec.completion_tokens))
            .ignore()
            .cmd("ZADD")
            .arg(format!("{PREFIX}lat"))
            .arg(rec.latency_ms)
            .arg(&lat_member)
            .ignore();
        let mstats = format!("{PREFIX}mstats");
        for m in &rec.models {
            let field = |metric: &str| format!("{metric}|{}|{}", m.role, m.model);
            for (metric, n) in [
                ("turns", 1),
                ("calls", u64::from(m.calls)),
                ("prompt", m.prompt_tokens),
                ("completion", m.completion_tokens),
            ] {
                p.cmd("HINCRBY")
                    .arg(&mstats)
                    .arg(field(metric))
                    .arg(n)
                    .ignore();
            }
            p.cmd("HINCRBYFLOAT")
                .arg(&mstats)
                .arg(field("latency"))
                .arg(m.latency_ms)
                .ignore();
        }
        match rec.outcome.as_str() {
            "answer" | "pending_action" => {
                p.cmd("HINCRBY").arg(&stats).arg("ok_turns").arg(1).ignore();
            }
            "clarification" => {
                p.cmd("HINCRBY").arg(&stats).arg("ok_turns").arg(1).ignore();
                p.cmd("HINCRBY")
                    .arg(&stats)
                    .arg("clarifications")
                    .arg(1)
                    .ignore();
            }
            "escalation" => {
                p.cmd("HINCRBY")
                    .arg(&stats)
                    .arg("escalations")
                    .arg(1)
                    .ignore();
            }
            _ => {}
        }
        // A retry after a lost reply could count the turn twice; the ids make it visible.
        self.pool.run(|c| p.query::<()>(c))?;
        Ok(())
    }

    fn sessions(
        &self,
        merchant: Option<&MerchantId>,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<SessionInfo>, AgentError> {
        // The merchants: the one given, or every `msess:` set (SCAN, never KEYS).
        let merchants: Vec<String> = match merchant {
            Some(m) => vec![m.as_str().to_string()],
            None => {
                let prefix = key("msess", "");
                // The prefix holds no glob character; a merchant id after it may hold any.
                let pattern = format!("{prefix}*");
                let mut found = Vec::new();
                let mut cursor: u64 = 0;
                loop {
                    let (next, keys): (u64, Vec<String>) = self.pool.run(|c| {
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(500)
                            .query(c)
                    })?;
                    found.extend(
                        keys.into_iter()
                            .filter_map(|k| k.strip_prefix(prefix.as_str()).map(str::to_string)),
                    );
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                found.sort();
                found.dedup();
                found
            }
        };
        let min = since.map_or("-inf".to_string(), |t| t.timestamp_millis().to_string());
        let mut out = Vec::new();
        for m in merchants {
            let ids: Vec<String> = self.pool.run(|c| {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(key("msess", &m))
                    .arg(&min)
                    .arg("+inf")
                    .query(c)
            })?;
            for chunk in ids.chunks(200) {
                let mut p = redis::pipe();
                for id in chunk {
                    p.cmd("HGET").arg(key("sess", id)).arg("created_at");
                }
                let created: Vec<Option<String>> = self.pool.run(|c| p.query(c))?;
                // A session whose hash is gone (an index entry left behind) is no session.
                for (id, at) in chunk.iter().zip(created) {
                    if let Some(created_at) = at {
                        out.push(SessionInfo {
                            id: id.clone(),
                            merchant: m.clone(),
                            created_at,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(out)
    }

    fn turn_records(&self, session: &str) -> Result<Vec<StoredTurn>, AgentError> {
        let rows: Vec<TurnRow> = self.list(&key("turns", session), "a turn record")?;
        Ok(rows
            .into_iter()
            .map(|r| StoredTurn {
                turn: r.turn,
                at: r.at,
                kind: r.kind,
                message: r.message,
                answer: r.answer,
                outcome: r.outcome,
                latency_ms: r.latency_ms,
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
                models: r.models,
                context: r.context,
            })
            .collect())
    }

    fn turn_contexts(&self, session: &str) -> Result<Vec<Value>, AgentError> {
        let rows: Vec<TurnRow> = self.list(&key("turns", session), "a turn record")?;
        Ok(rows.into_iter().map(|r| r.context).collect())
    }

    fn audit(&self, e: &AuditEntry) -> Result<(), AgentError> {
        let row = serde_json::to_string(&AuditRow {
            session: e.session.clone(),
            merchant: e.merchant.clone(),
            turn: e.turn,
            call_id: e.call_id.clone(),
            tool: e.tool.clone(),
            args: e.args.clone(),
            result: e.result.clone(),
            status: e.status.clone(),
            latency_ms: e.latency_ms,
            at: e.at.clone(),
            model: e.model.clone(),
        })
        .map_err(|err| AgentError::Corrupt {
            what: "an audit row".into(),
            source: Box::new(err),
        })?;
        let stats = format!("{PREFIX}stats");
        let mut p = redis::pipe();
        p.atomic()
            .cmd("RPUSH")
            .arg(key("audit", &e.session))
            .arg(&row)
            .ignore()
            .cmd("HINCRBY")
            .arg(&stats)
            .arg("tool_calls")
            .arg(1)
            .ignore();
        let counter = match e.status.as_str() {
            "error" => Some("tool_failures"),
            "loop_detected" => Some("loop_detections"),
            "pending_approval" => Some("blocked_irreversible"),
            _ => None,
        };
        if let Some(counter) = counter {
            p.cmd("HINCRBY").arg(&stats).arg(counter).arg(1).ignore();
        }
        self.pool.run(|c| p.query::<()>(c))?;
        Ok(())
    }

    fn audit_log(&self, session: &str) -> Result<Vec<AuditEntry>, AgentError> {
        let rows: Vec<AuditRow> = self.list(&key("audit", session), "an audit row")?;
        Ok(rows
            .into_iter()
            .map(|r| AuditEntry {
                session: r.session,
                merchant: r.merchant,
                turn: r.turn,
                call_id: r.call_id,
                tool: r.tool,
                args: r.args,
                result: r.result,
                status: r.status,
                latency_ms: r.latency_ms,
                at: r.at,
                model: r.model,
            })
            .collect())
    }

    fn create_action(
        &self,
        session: &str,
        merchant: &MerchantId,
        turn: u32,
        call_id: &str,
        tool: &str,
        args: &Value,
    ) -> Result<String, AgentError> {
        let id = format!("act_{}", uuid::Uuid::new_v4().simple());
        let at = now();
        let args = args.to_string();
        let keys = [
            key("act", &id),
            key("actcall", session),
            format!("{PREFIX}actall"),
            format!("{PREFIX}actseq"),
            key("actst", ActionStatus::Pending.as_str()),
            key("actsess", session),
        ];
        // The id is fresh per call, so a retried script after a lost reply writes one action.
        let mut created = false;
        self.pool.run(|c| {
            if created {
                return Ok(());
            }
            let mut inv = self.scripts.create_action.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            inv.arg(&id)
                .arg(session)
                .arg(merchant.as_str())
                .arg(turn)
                .arg(call_id)
                .arg(tool)
                .arg(&args)
                .arg(&at);
            inv.invoke::<i64>(c)?;
            created = true;
            Ok(())
        })?;
        Ok(id)
    }

    fn action(&self, session: &str, id: &str) -> Result<Option<PendingAction>, AgentError> {
        Ok(self.action_by_id(id)?.filter(|a| a.session == session))
    }

    fn action_by_call(
        &self,
        session: &str,
        call_id: &str,
    ) -> Result<Option<PendingAction>, AgentError> {
        let k = key("actcall", session);
        let id: Option<String> = self
            .pool
            .run(|c| redis::cmd("HGET").arg(&k).arg(call_id).query(c))?;
        match id {
            Some(id) => self.action(session, &id),
            None => Ok(None),
        }
    }

    fn action_by_id(&self, id: &str) -> Result<Option<PendingAction>, AgentError> {
        let h = self.hgetall(&key("act", id))?;
        self.parse_action(h)
    }

    fn claim_execution(
        &self,
        id: &str,
        runner: &str,
        alive: &dyn Fn(&str) -> bool,
    ) -> Result<bool, AgentError> {
        let k = key("act", id);
        let prefix = format!("{PREFIX}actst:");
        let at = now();
        let mut dead = String::new();
        for _ in 0..RACE_RETRIES {
            let r: i64 = self.pool.run(|c| {
                self.scripts
                    .claim
                    .key(&k)
                    .key(&prefix)
                    .arg(id)
                    .arg(runner)
                    .arg(&dead)
                    .arg(&at)
                    .invoke(c)
            })?;
            match r {
                1 => return Ok(true),
                0 => return Ok(false),
                _ => {
                    // An approved action held by someone else: ask whether they are alive.
                    let executor: Option<String> = self
                        .pool
                        .run(|c| redis::cmd("HGET").arg(&k).arg("executor").query(c))?;
                    match executor {
                        Some(e) if !alive(&e) => dead = e,
                        Some(_) => return Ok(false),
                        None => dead.clear(),
                    }
                }
            }
        }
        Ok(false)
    }

    fn transition(
        &self,
        id: &str,
        from: &[ActionStatus],
        to: ActionStatus,
        result: Option<&Value>,
    ) -> Result<bool, AgentError> {
        let k = key("act", id);
        let prefix = format!("{PREFIX}actst:");
        let column = match to {
            ActionStatus::Executed | ActionStatus::Failed => "executed_at",
            _ => "decided_at",
        };
        let result = result.map(|r| r.to_string()).unwrap_or_default();
        let at = now();
        let n: i64 = self.pool.run(|c| {
            let mut inv = self.scripts.transition.prepare_invoke();
            inv.key(&k)
                .key(&prefix)
                .arg(id)
                .arg(to.as_str())
                .arg(&result)
                .arg(column)
                .arg(&at);
            for s in from {
                inv.arg(s.as_str());
            }
            inv.invoke(c)
        })?;
        Ok(n == 1)
    }

    fn end_session(&self, session: &str, episode_id: &str) -> Result<(), AgentError> {
        let k = key("sess", session);
        let at = now();
        self.pool.run(|c| {
            self.scripts
                .end_session
                .key(&k)
                .arg(&at)
                .arg(episode_id)
                .invoke::<i64>(c)
        })?;
        Ok(())
    }

    fn ended_episode(&self, session: &str) -> Result<Option<String>, AgentError> {
        let k = key("sess", session);
        let (episode, ended, turns): (Option<String>, Option<String>, Option<String>) =
            self.pool.run(|c| {
                redis::cmd("HMGET")
                    .arg(&k)
                    .arg("episode_id")
                    .arg("ended_turns")
                    .arg("turns")
                    .query(c)
            })?;
        Ok(match (ended, turns) {
            (Some(e), Some(t)) if e == t => episode,
            _ => None,
        })
    }

    fn lock_session(
        &self,
        session: &str,
        holder: &str,
        alive: &dyn Fn(&str) -> bool,
    ) -> Result<bool, AgentError> {
        let k = key("slock", session);
        let mut dead = String::new();
        for _ in 0..RACE_RETRIES {
            let r: i64 = self
                .pool
                .run(|c| self.scripts.lock.key(&k).arg(holder).arg(&dead).invoke(c))?;
            match r {
                1 => return Ok(true),
                0 => return Ok(false),
                _ => {
                    let current: Option<String> =
                        self.pool.run(|c| redis::cmd("GET").arg(&k).query(c))?;
                    match current {
                        Some(h) if !alive(&h) => dead = h,
                        Some(_) => return Ok(false),
                        None => dead.clear(),
                    }
                }
            }
        }
        Ok(false)
    }

    fn unlock_session(&self, session: &str, holder: &str) -> Result<(), AgentError> {
        let k = key("slock", session);
        self.pool
            .run(|c| self.scripts.unlock.key(&k).arg(holder).invoke::<i64>(c))?;
        Ok(())
    }

    fn stats(&self) -> Result<Stats, AgentError> {
        let stats_key = format!("{PREFIX}stats");
        let lat_key = format!("{PREFIX}lat");
        let (counters, n): (HashMap<String, i64>, u64) = self.pool.run(|c| {
            redis::pipe()
                .cmd("HGETALL")
                .arg(&stats_key)
                .cmd("ZCARD")
                .arg(&lat_key)
                .query(c)
        })?;
        let get = |name: &str| counters.get(name).copied().unwrap_or(0).max(0) as u64;
        let pct = |p: f64| -> Result<f64, AgentError> {
            if n == 0 {
                return Ok(0.0);
            }
            let idx = ((p * n as f64).ceil() as u64).clamp(1, n) - 1;
            let v: Vec<(String, f64)> = self.pool.run(|c| {
                redis::cmd("ZRANGE")
                    .arg(&lat_key)
                    .arg(idx)
                    .arg(idx)
                    .arg("WITHSCORES")
                    .query(c)
            })?;
            Ok(v.first().map_or(0.0, |(_, s)| *s))
        };
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let per_model: HashMap<String, String> = self.pool.run(|c| {
            redis::cmd("HGETALL")
                .arg(format!("{PREFIX}mstats"))
                .query(c)
        })?;
        let mut models: HashMap<(String, String), ModelStats> = HashMap::new();
        for (field, value) in per_model {
            let mut parts = field.splitn(3, '|');
            let (Some(metric), Some(role), Some(model)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let e = models
                .entry((model.to_string(), role.to_string()))
                .or_insert_with(|| ModelStats {
                    model: model.to_string(),
                    role: role.to_string(),
                    ..ModelStats::default()
                });
            let n = || value.parse::<i64>().unwrap_or(0).max(0) as u64;
            match metric {
                "turns" => e.turns = n(),
                "calls" => e.calls = n(),
                "prompt" => e.prompt_tokens = n(),
                "completion" => e.completion_tokens = n(),
                "latency" => e.latency_ms = value.parse::<f64>().unwrap_or(0.0),
                _ => {}
            }
        }
        let models = models
            .into_values()
            .map(|mut m| {
                m.mean_call_ms = if m.calls == 0 {
                    0.0
                } else {
                    m.latency_ms / m.calls as f64
                };
                m
            })
            .collect();
        let turns = get("turns");
        let tool_calls = get("tool_calls");
        Ok(Stats {
            sessions: get("sessions"),
            turns,
            success_rate: ratio(get("ok_turns"), turns),
            tool_calls,
            tool_failure_rate: ratio(get("tool_failures"), tool_calls),
            loop_detections: get("loop_detections"),
            blocked_irreversible: get("blocked_irreversible"),
            escalations: get("escalations"),
            clarifications: get("clarifications"),
            clarification_rate: ratio(get("clarifications"), turns),
            llm_tokens: get("llm_tokens"),
            latency_ms: Percentiles {
                p50: pct(0.50)?,
                p95: pct(0.95)?,
                p99: pct(0.99)?,
            },
            models: super::types::sorted_models(models),
        })
    }

    fn actions_with_status(
        &self,
        status: Option<ActionStatus>,
        limit: usize,
    ) -> Result<Vec<PendingAction>, AgentError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let set = match status {
            Some(s) => key("actst", s.as_str()),
            None => format!("{PREFIX}actall"),
        };
        let stop = i64::try_from(limit).unwrap_or(i64::MAX) - 1;
        let ids: Vec<String> = self
            .pool
            .run(|c| redis::cmd("ZRANGE").arg(&set).arg(0).arg(stop).query(c))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let hashes: Vec<HashMap<String, String>> = self.pool.run(|c| {
            let mut p = redis::pipe();
            for id in &ids {
                p.cmd("HGETALL").arg(key("act", id));
            }
            p.query(c)
        })?;
        let mut out = Vec::with_capacity(hashes.len());
        for h in hashes {
            if let Some(a) = self.parse_action(h)? {
                out.push(a);
            }
        }
        Ok(out)
    }
}
