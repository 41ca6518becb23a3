//! Plans on Redis, shared by every worker that names the same `--state redis://…`.
//!
//! Keys (`P` is the prefix, `memex:st:plan:`; ids and merchants that are not plain
//! `[A-Za-z0-9_.-]` are written as `~` and their hex bytes, so no id can reach another key):
//!
//! * `P{ID}` — a hash: `session`, `merchant`, `task`, `status`, `answer`, `turn`, `runner`,
//!   `created_at`, `updated_at`;
//! * `P{ID}:steps` — a hash: step id → the step's [`StepRecord`] as JSON;
//! * `P action:ACTION` — a hash `{plan, step}`: which step holds approval `ACTION`;
//! * `P index:created` and `P index:merchant:M` — sorted sets of plan ids scored by minus the
//!   creation time in milliseconds, so `ZRANGE 0 N` is "newest first, ties by id", as SQLite's
//!   `ORDER BY created_at DESC, id`.
//!
//! Atomicity: `insert` is one MULTI/EXEC under WATCH of the plan key (a replay of our own insert
//! after a lost reply is recognised by its session id); `update_step`, `set_status` and
//! `release` are Lua scripts (Redis runs each with no other command in between); `claim` is a
//! WATCH/MULTI check-and-set, retried when another worker changed the plan meanwhile.
//! The connections are the process's one Redis layer ([`crate::redisdb`]): connection errors
//! are retried on a fresh connection as its policy says (every operation is safe to repeat);
//! then the error says which Redis (`HOST:PORT/DB`, never a password) is unreachable.

use std::collections::HashMap;

use redis::RedisResult;

use super::backend::{
    plan_status, PlanBackend, PlanListing, PlanRow, StepRecord, StepUpdate, FORGOTTEN,
    FORGOTTEN_JSON,
};
use crate::planner::error::PlanError;
use crate::planner::plan::{DraftStep, PlanStatus};
use crate::redisdb::{Conn, RedisDb, RedisStore};

/// `KEYS[1]` the plan's steps hash, `KEYS[2]` the action index key (or `KEYS[1]` again).
const UPDATE_STEP: &str = r"
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local s = cjson.decode(raw)
s.status = ARGV[2]
s.attempts = tonumber(ARGV[3])
if ARGV[4] == '1' then s.resolved_args = ARGV[5] end
if ARGV[6] == '1' then s.result = ARGV[7] else s.result = nil end
if ARGV[8] == '1' then s.error = ARGV[9] else s.error = nil end
if ARGV[10] == '1' then
  s.action_id = ARGV[11]
  redis.call('HSET', KEYS[2], 'plan', ARGV[14], 'step', ARGV[1])
end
if ARGV[12] ~= '' then s.started_at = ARGV[12] end
if ARGV[13] ~= '' then s.finished_at = ARGV[13] else s.finished_at = nil end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(s))
return 1
";

/// `KEYS[1]` the plan hash.
const SET_STATUS: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at', ARGV[4])
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'answer', ARGV[3]) end
return 1
";

/// `KEYS[1]` the plan hash: compare-and-delete of the runner.
const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'runner') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'runner')
  return 1
end
return 0
";

/// A stored plan hash without one of its fields.
#[derive(Debug, thiserror::Error)]
#[error("the stored plan has no `{0}`")]
struct MissingField(&'static str);

/// The planner's keys in one Redis.
pub struct RedisPlans {
    redis: RedisStore,
    endpoint: String,
    prefix: String,
    update_step: redis::Script,
    set_status: redis::Script,
    release: redis::Script,
    forget: redis::Script,
}

/// `KEYS[1]` the plan hash, `KEYS[2]` its steps hash; `ARGV`: merchant, session, the
/// forgotten text, the same as a JSON document, now. 1 when the plan changed.
const FORGET: &str = r"
local p = redis.call('HMGET', KEYS[1], 'merchant', 'session', 'task', 'status', 'answer')
if p[1] ~= ARGV[1] or p[2] ~= ARGV[2] then return 0 end
if p[3] == ARGV[3] and p[4] == 'completed' then return 0 end
redis.call('HSET', KEYS[1], 'task', ARGV[3], 'status', 'completed', 'updated_at', ARGV[5])
if p[5] and p[5] ~= '' then redis.call('HSET', KEYS[1], 'answer', ARGV[3]) end
local steps = redis.call('HGETALL', KEYS[2])
for i = 1, #steps, 2 do
  local s = cjson.decode(steps[i + 1])
  s.description = ARGV[3]
  s.args = ARGV[4]
  if s.resolved_args and s.resolved_args ~= cjson.null then s.resolved_args = ARGV[4] end
  if s.result and s.result ~= cjson.null then s.result = ARGV[4] end
  if s.error and s.error ~= cjson.null then s.error = ARGV[3] end
  redis.call('HSET', KEYS[2], steps[i], cjson.encode(s))
end
return 1
";

/// `s` as a key part: itself when plain, else `~` and its bytes in hex.
fn key_part(s: &str) -> String {
    let plain = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if plain {
        s.to_string()
    } else {
        let mut out = String::with_capacity(1 + 2 * s.len());
        out.push('~');
        for b in s.bytes() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// `-created_at` in milliseconds: the sort score of a plan created at `at` (RFC 3339).
fn score(at: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(at)
        .map(|d| -(d.timestamp_millis() as f64))
        .unwrap_or(0.0)
}

enum Claimed {
    Taken,
    Busy,
    Unknown,
}

impl RedisPlans {
    /// Connects to `url` now (so an unreachable Redis is reported at open).
    pub fn connect(url: &str, prefix: &str) -> Result<Self, PlanError> {
        let redis = RedisDb::open(url)
            .map_err(|source| PlanError::Redis {
                endpoint: crate::state::redact_url(url),
                action: "parse its URL".into(),
                source: Box::new(source),
            })?
            .store("plans");
        // `HOST:PORT`, as the plan store's messages have always named it.
        let endpoint = redis
            .endpoint()
            .rsplit_once('/')
            .map_or(redis.endpoint(), |(host, _)| host)
            .to_string();
        let store = RedisPlans {
            redis,
            endpoint,
            prefix: prefix.to_string(),
            update_step: redis::Script::new(UPDATE_STEP),
            set_status: redis::Script::new(SET_STATUS),
            release: redis::Script::new(RELEASE),
            forget: redis::Script::new(FORGET),
        };
        store.run(
            || "connect".into(),
            |con| redis::cmd("PING").query::<String>(con),
        )?;
        Ok(store)
    }

    fn plan_key(&self, id: &str) -> String {
        format!("{}{{{}}}", self.prefix, key_part(id))
    }

    fn steps_key(&self, id: &str) -> String {
        format!("{}{{{}}}:steps", self.prefix, key_part(id))
    }

    fn action_key(&self, action: &str) -> String {
        format!("{}action:{}", self.prefix, key_part(action))
    }

    fn created_index(&self) -> String {
        format!("{}index:created", self.prefix)
    }

    fn merchant_index(&self, merchant: &str) -> String {
        format!("{}index:merchant:{}", self.prefix, key_part(merchant))
    }

    /// Runs `f` on a pooled connection of the process's one Redis layer, which retries a
    /// failed connection as its policy says; `f` must be safe to repeat.
    fn run<T>(
        &self,
        action: impl Fn() -> String,
        f: impl FnMut(&mut Conn) -> RedisResult<T>,
    ) -> Result<T, PlanError> {
        self.redis.run(f).map_err(|source| {
            let endpoint = self.endpoint.clone();
            let action = action();
            let source = Box::new(source);
            if source.is_unreachable() {
                PlanError::RedisUnreachable {
                    endpoint,
                    action,
                    source,
                }
            } else {
                PlanError::Redis {
                    endpoint,
                    action,
                    source,
                }
            }
        })
    }
}

fn corrupt(what: String, e: impl std::error::Error + Send + Sync + 'static) -> PlanError {
    PlanError::Corrupt {
        what,
        source: Box::new(e),
    }
}

impl PlanBackend for RedisPlans {
    fn insert(&self, row: &PlanRow, steps: &[DraftStep], at: &str) -> Result<(), PlanError> {
        let pk = self.plan_key(&row.id);
        let sk = self.steps_key(&row.id);
        let (by_created, by_merchant) = (self.created_index(), self.merchant_index(&row.merchant));
        let fields: Vec<(&str, String)> = vec![
            ("session", row.session.clone()),
            ("merchant", row.merchant.clone()),
            ("task", row.task.clone()),
            ("status", row.status.as_str().to_string()),
            ("turn", row.turn.to_string()),
            ("created_at", at.to_string()),
            ("updated_at", at.to_string()),
        ];
        let records = steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::to_string(&StepRecord::planned(i, s))
                    .map(|json| (s.id.clone(), json))
                    .map_err(|e| corrupt(format!("step {} of plan {}", s.id, row.id), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let score = score(at);
        let ours = self.run(
            || format!("store plan {}", row.id),
            |con| {
                redis::transaction(con, &[&pk], |con, pipe| {
                    let session: Option<String> =
                        redis::cmd("HGET").arg(&pk).arg("session").query(con)?;
                    if let Some(s) = session {
                        // Ours when a lost reply made us send it again; else another plan's.
                        return Ok(Some(s == row.session));
                    }
                    pipe.cmd("HSET").arg(&pk).arg(&fields).ignore();
                    if !records.is_empty() {
                        pipe.cmd("HSET").arg(&sk).arg(&records).ignore();
                    }
                    pipe.cmd("ZADD")
                        .arg(&by_created)
                        .arg(score)
                        .arg(&row.id)
                        .ignore();
                    pipe.cmd("ZADD")
                        .arg(&by_merchant)
                        .arg(score)
                        .arg(&row.id)
                        .ignore();
                    let done: Option<()> = pipe.query(con)?;
                    Ok(done.map(|()| true))
                })
            },
        )?;
        if ours {
            Ok(())
        } else {
            Err(PlanError::Exists(row.id.clone()))
        }
    }

    fn plan(&self, id: &str) -> Result<Option<PlanRow>, PlanError> {
        let pk = self.plan_key(id);
        let mut h: HashMap<String, String> = self.run(
            || format!("read plan {id}"),
            |con| redis::cmd("HGETALL").arg(&pk).query(con),
        )?;
        if h.is_empty() {
            return Ok(None);
        }
        let what = || format!("plan {id}");
        let mut take =
            |f: &'static str| h.remove(f).ok_or_else(|| corrupt(what(), MissingField(f)));
        let session = take("session")?;
        let merchant = take("merchant")?;
        let task = take("task")?;
        let status = plan_status(&take("status")?)?;
        let turn = take("turn")?
            .parse::<u32>()
            .map_err(|e| corrupt(what(), e))?;
        let answer = h.remove("answer");
        Ok(Some(PlanRow {
            id: id.to_string(),
            session,
            merchant,
            task,
            status,
            answer,
            turn,
        }))
    }

    fn step_records(&self, id: &str) -> Result<Vec<StepRecord>, PlanError> {
        let sk = self.steps_key(id);
        let raw: Vec<String> = self.run(
            || format!("read the steps of plan {id}"),
            |con| redis::cmd("HVALS").arg(&sk).query(con),
        )?;
        let mut records = raw
            .iter()
            .map(|json| {
                serde_json::from_str::<StepRecord>(json)
                    .map_err(|e| corrupt(format!("a step of plan {id}"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        records.sort_by_key(|r| r.idx);
        Ok(records)
    }

    fn update_step(&self, u: &StepUpdate<'_>, at: &str) -> Result<(), PlanError> {
        let sk = self.steps_key(u.plan);
        let ak = match u.action_id {
            Some(a) => self.action_key(a),
            None => sk.clone(),
        };
        let (started, finished) = u.times(at);
        let flag = |b: bool| if b { "1" } else { "0" };
        let resolved = u.resolved_args.map(|v| v.to_string());
        let result = u.result.map(|v| v.to_string());
        let mut inv = self.update_step.prepare_invoke();
        inv.key(&sk)
            .key(&ak)
            .arg(u.step)
            .arg(u.status.as_str())
            .arg(u.attempts)
            .arg(flag(resolved.is_some()))
            .arg(resolved.as_deref().unwrap_or(""))
            .arg(flag(result.is_some()))
            .arg(result.as_deref().unwrap_or(""))
            .arg(flag(u.error.is_some()))
            .arg(u.error.unwrap_or(""))
            .arg(flag(u.action_id.is_some()))
            .arg(u.action_id.unwrap_or(""))
            .arg(started.as_deref().unwrap_or(""))
            .arg(finished.as_deref().unwrap_or(""))
            .arg(u.plan);
        self.run(
            || format!("update step {} of plan {}", u.step, u.plan),
            |con| inv.invoke::<i64>(con),
        )?;
        Ok(())
    }

    fn set_status(
        &self,
        plan: &str,
        status: PlanStatus,
        answer: Option<&str>,
        at: &str,
    ) -> Result<(), PlanError> {
        let pk = self.plan_key(plan);
        let mut inv = self.set_status.prepare_invoke();
        inv.key(&pk)
            .arg(status.as_str())
            .arg(if answer.is_some() { "1" } else { "0" })
            .arg(answer.unwrap_or(""))
            .arg(at);
        self.run(
            || format!("set the status of plan {plan}"),
            |con| inv.invoke::<i64>(con),
        )?;
        Ok(())
    }

    fn claim(
        &self,
        plan: &str,
        runner: &str,
        alive: &dyn Fn(&str) -> bool,
    ) -> Result<bool, PlanError> {
        let pk = self.plan_key(plan);
        let claimed = self.run(
            || format!("claim plan {plan}"),
            |con| {
                redis::transaction(con, &[&pk], |con, pipe| {
                    let (exists, holder): (i64, Option<String>) = redis::pipe()
                        .cmd("EXISTS")
                        .arg(&pk)
                        .cmd("HGET")
                        .arg(&pk)
                        .arg("runner")
                        .query(con)?;
                    if exists == 0 {
                        return Ok(Some(Claimed::Unknown));
                    }
                    if let Some(h) = holder {
                        if h != runner && alive(&h) {
                            return Ok(Some(Claimed::Busy));
                        }
                    }
                    pipe.cmd("HSET").arg(&pk).arg("runner").arg(runner).ignore();
                    let done: Option<()> = pipe.query(con)?;
                    Ok(done.map(|()| Claimed::Taken))
                })
            },
        )?;
        match claimed {
            Claimed::Taken => Ok(true),
            Claimed::Busy => Ok(false),
            Claimed::Unknown => Err(PlanError::UnknownPlan(plan.to_string())),
        }
    }

    fn release(&self, plan: &str, runner: &str) -> Result<(), PlanError> {
        let pk = self.plan_key(plan);
        let mut inv = self.release.prepare_invoke();
        inv.key(&pk).arg(runner);
        self.run(
            || format!("release plan {plan}"),
            |con| inv.invoke::<i64>(con),
        )?;
        Ok(())
    }

    fn step_for_action(&self, action_id: &str) -> Result<Option<(String, String)>, PlanError> {
        let ak = self.action_key(action_id);
        let (plan, step): (Option<String>, Option<String>) = self.run(
            || format!("look up the plan step of action {action_id}"),
            |con| {
                redis::cmd("HMGET")
                    .arg(&ak)
                    .arg("plan")
                    .arg("step")
                    .query(con)
            },
        )?;
        Ok(plan.zip(step))
    }

    fn list(&self, merchant: Option<&str>, limit: usize) -> Result<Vec<PlanListing>, PlanError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let index = match merchant {
            Some(m) => self.merchant_index(m),
            None => self.created_index(),
        };
        // As SQLite's `LIMIT` of `limit as i64`: a limit beyond i64 means no limit.
        let stop: i64 = i64::try_from(limit).map_or(-1, |n| n - 1);
        let rows: Vec<(String, Vec<Option<String>>)> = self.run(
            || "list plans".into(),
            |con| {
                let ids: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(0)
                    .arg(stop)
                    .query(con)?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.cmd("HMGET")
                        .arg(self.plan_key(id))
                        .arg("merchant")
                        .arg("status")
                        .arg("task")
                        .arg("created_at");
                }
                let fields: Vec<Vec<Option<String>>> = pipe.query(con)?;
                Ok(ids.into_iter().zip(fields).collect())
            },
        )?;
        Ok(rows
            .into_iter()
            .filter_map(|(plan_id, f)| {
                let mut f = f.into_iter();
                let (m, status, task, created_at) =
                    (f.next()??, f.next()??, f.next()??, f.next()??);
                // The index names this merchant; the row must say so too.
                if merchant.is_some_and(|want| want != m) {
                    return None;
                }
                Some(PlanListing {
                    plan_id,
                    merchant: m,
                    status,
                    task,
                    created_at,
                })
            })
            .collect())
    }

    fn forget(&self, merchant: &str, sessions: &[String]) -> Result<u64, PlanError> {
        let index = self.merchant_index(merchant);
        let ids: Vec<String> = self.run(
            || "list a merchant's plans".into(),
            |con| redis::cmd("ZRANGE").arg(&index).arg(0).arg(-1).query(con),
        )?;
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut n = 0u64;
        for id in ids {
            let (pk, sk) = (self.plan_key(&id), self.steps_key(&id));
            for session in sessions {
                let changed: i64 = self.run(
                    || format!("forget plan {id}"),
                    |con| {
                        self.forget
                            .key(&pk)
                            .key(&sk)
                            .arg(merchant)
                            .arg(session)
                            .arg(FORGOTTEN)
                            .arg(FORGOTTEN_JSON)
                            .arg(&at)
                            .invoke(con)
                    },
                )?;
                n += changed as u64;
            }
        }
        Ok(n)
    }
}
