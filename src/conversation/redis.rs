//! [`RedisConversationStore`]: conversation buffers in Redis.
//!
//! Per session, two keys sharing a hash tag (so they live on one cluster slot):
//! `PREFIX:conv:{SESSION}:meta` — a hash with `summary`, `watermark`, `compressions`,
//! `updated_at` — and `PREFIX:conv:{SESSION}:msgs` — a sorted set scored by sequence number whose
//! members are `SEQ|JSON` (the number keeps equal messages distinct). Loading reads both in one
//! MULTI/EXEC; committing a summary is one Lua script, which Redis runs atomically: it checks
//! the watermark, writes the summary and watermark, and removes the folded messages, with no
//! other command in between.
//!
//! The connection is the process's one [`crate::redisdb`] connection for the URL, under its one
//! retry policy: loads, appends and deletes are safe to repeat and are retried like any
//! transient failure; a summary commit is retried only when the connection was refused
//! (nothing was sent), so it never runs twice.

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use crate::llm::Message;
use crate::redisdb::RedisStore;

use super::store::{validate_session_id, ConversationStore, PruneReport, StoredSession};
use super::ConversationError;

/// Deletes one session if its last activity is still before the cutoff (ARGV[2]) — checked
/// inside the script, so an append that moved it on in the meantime keeps it. Returns the
/// number of messages removed, or -1 when the session was kept.
const PRUNE_SCRIPT: &str = r"
local t = redis.call('ZSCORE', KEYS[3], ARGV[1])
if (not t) or tonumber(t) >= tonumber(ARGV[2]) then
  return -1
end
local n = redis.call('ZCARD', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
";

const COMMIT_SCRIPT: &str = r"
local stored = tonumber(redis.call('HGET', KEYS[1], 'watermark') or '0') or 0
local ours = tonumber(ARGV[2])
if stored >= ours then
  return {0, stored}
end
redis.call('HSET', KEYS[1], 'summary', ARGV[1], 'watermark', ARGV[2], 'updated_at', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'compressions', 1)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
return {1, ours}
";

/// Conversation buffers in Redis (see the module docs for the key layout).
#[derive(Clone)]
pub struct RedisConversationStore {
    redis: RedisStore,
    prefix: String,
    commit: redis::Script,
    prune: redis::Script,
}

impl std::fmt::Debug for RedisConversationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConversationStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisConversationStore {
    /// Connects to `url` (`redis://host:port/db`); keys start with `prefix` (e.g. `memex`).
    /// Connecting follows the process's one Redis [`crate::redisdb::Policy`].
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, ConversationError> {
        let action = || format!("connect to Redis at {}", crate::store_url::redact(url));
        let redis = crate::redisdb::RedisDb::open(url)
            .map_err(|e| ConversationError::store(action(), e))?
            .store("conversations");
        // Reach the server now, so an unreachable Redis is reported at open.
        redis
            .retry(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map_err(|e| ConversationError::store(action(), e.detail()))?;
        Ok(RedisConversationStore {
            redis,
            prefix: prefix.to_string(),
            commit: redis::Script::new(COMMIT_SCRIPT),
            prune: redis::Script::new(PRUNE_SCRIPT),
        })
    }

    /// This runtime's connection, for the many commands of a prune (each run once; a failure
    /// ends the prune, and the next one reconnects).
    async fn conn(
        &self,
        action: &(dyn Fn() -> String + Sync),
    ) -> Result<ConnectionManager, ConversationError> {
        self.redis
            .once(|m| async move { Ok(m) })
            .await
            .map_err(|e| ConversationError::store(action(), e.detail()))
    }

    /// The sorted set of every session by its last activity (µs since the epoch), for
    /// retention. Written before each message, so a message is never newer than its time.
    fn active_key(&self) -> String {
        format!("{}:conv:active", self.prefix)
    }

    fn keys(&self, session: &str) -> (String, String) {
        (
            format!("{}:conv:{{{session}}}:meta", self.prefix),
            format!("{}:conv:{{{session}}}:msgs", self.prefix),
        )
    }
}

#[async_trait]
impl ConversationStore for RedisConversationStore {
    async fn load(&self, session: &str) -> Result<StoredSession, ConversationError> {
        validate_session_id(session)?;
        let (meta, msgs) = self.keys(session);
        let action = || format!("load session `{session}` from Redis");
        let ((summary, watermark, compressions), members): (
            (Option<String>, Option<u64>, Option<u64>),
            Vec<String>,
        ) = self
            .redis
            .retry(|mut c| {
                let (meta, msgs) = (&meta, &msgs);
                async move {
                    redis::pipe()
                        .atomic()
                        .cmd("HMGET")
                        .arg(meta)
                        .arg("summary")
                        .arg("watermark")
                        .arg("compressions")
                        .cmd("ZRANGE")
                        .arg(msgs)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut c)
                        .await
                }
            })
            .await
            .map_err(|e| ConversationError::store(action(), e.detail()))?;
        let watermark = watermark.unwrap_or(0);
        let mut messages = Vec::with_capacity(members.len());
        for member in members {
            let corrupt = |seq: u64, reason: String| ConversationError::Corrupt {
                session: session.to_string(),
                seq,
                reason,
            };
            let (seq, json) = member
                .split_once('|')
                .ok_or_else(|| corrupt(0, "a stored member has no sequence number".into()))?;
            let seq: u64 = seq
                .parse()
                .map_err(|_| corrupt(0, format!("bad sequence number `{seq}`")))?;
            if seq <= watermark {
                continue;
            }
            let message: Message =
                serde_json::from_str(json).map_err(|e| corrupt(seq, e.to_string()))?;
            messages.push((seq, message));
        }
        Ok(StoredSession {
            summary: summary.unwrap_or_default(),
            watermark,
            compressions: compressions.unwrap_or(0),
            messages,
        })
    }

    async fn append(
        &self,
        session: &str,
        seq: u64,
        message: &Message,
    ) -> Result<(), ConversationError> {
        validate_session_id(session)?;
        let action = || format!("append message #{seq} to session `{session}` in Redis");
        let json =
            serde_json::to_string(message).map_err(|e| ConversationError::store(action(), e))?;
        let (_, msgs) = self.keys(session);
        let (active, member) = (self.active_key(), format!("{seq:020}|{json}"));
        // Both commands are safe to repeat (the same member; the time only moves on), so a
        // dropped connection is retried like any read.
        self.redis
            .retry(|mut c| {
                let (active, msgs, member) = (&active, &msgs, &member);
                async move {
                    // The time first: a prune racing this append then sees the session active.
                    let _: i64 = redis::cmd("ZADD")
                        .arg(active)
                        .arg(now_us())
                        .arg(session)
                        .query_async(&mut c)
                        .await?;
                    let _: i64 = redis::cmd("ZADD")
                        .arg(msgs)
                        .arg(seq)
                        .arg(member)
                        .query_async(&mut c)
                        .await?;
                    Ok(())
                }
            })
            .await
            .map_err(|e| ConversationError::store(action(), e.detail()))
    }

    async fn commit_summary(
        &self,
        session: &str,
        summary: &str,
        watermark: u64,
    ) -> Result<(), ConversationError> {
        validate_session_id(session)?;
        let (meta, msgs) = self.keys(session);
        let action = || format!("commit the summary of session `{session}` in Redis");
        let at = chrono::Utc::now().to_rfc3339();
        let (applied, stored): (i64, u64) = self
            .redis
            .once(|mut c| {
                let (meta, msgs, at) = (&meta, &msgs, &at);
                async move {
                    self.commit
                        .key(meta)
                        .key(msgs)
                        .arg(summary)
                        .arg(watermark)
                        .arg(at)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await
            .map_err(|e| ConversationError::store(action(), e.detail()))?;
        if applied == 1 {
            Ok(())
        } else {
            Err(ConversationError::Conflict {
                session: session.to_string(),
                stored,
                ours: watermark,
            })
        }
    }

    async fn delete(&self, session: &str) -> Result<(), ConversationError> {
        validate_session_id(session)?;
        let (meta, msgs) = self.keys(session);
        let action = || format!("delete session `{session}` from Redis");
        let active = self.active_key();
        self.redis
            .retry(|mut c| {
                let (meta, msgs, active) = (&meta, &msgs, &active);
                async move {
                    let _: i64 = redis::cmd("DEL")
                        .arg(meta)
                        .arg(msgs)
                        .query_async(&mut c)
                        .await?;
                    let _: i64 = redis::cmd("ZREM")
                        .arg(active)
                        .arg(session)
                        .query_async(&mut c)
                        .await?;
                    Ok(())
                }
            })
            .await
            .map_err(|e| ConversationError::store(action(), e.detail()))
    }

    async fn prune_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<PruneReport, ConversationError> {
        let action = || "prune conversations in Redis".to_string();
        let mut conn = self.conn(&action).await?;
        let active = self.active_key();
        let mut report = PruneReport::default();
        // Sessions stored before times were kept: found by their keys, stamped with now
        // (retention counts from the first prune that sees them), never deleted blindly.
        let stamp = now_us();
        let mut stamped = std::collections::HashSet::new();
        let pattern = format!("{}:conv:{{*}}:*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(|e| ConversationError::store(action(), e))?;
            for key in keys {
                let Some(session) = self.session_of(&key) else {
                    continue;
                };
                let added: i64 = redis::cmd("ZADD")
                    .arg(&active)
                    .arg("NX")
                    .arg(stamp)
                    .arg(session)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| ConversationError::store(action(), e))?;
                if added > 0 {
                    report.untimed += 1;
                    stamped.insert(session.to_owned());
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let cutoff_us = cutoff.timestamp_micros();
        let old: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&active)
            .arg("-inf")
            .arg(format!("({cutoff_us}"))
            .query_async(&mut conn)
            .await
            .map_err(|e| ConversationError::store(action(), e))?;
        for session in old {
            // Stamped by this run: kept whatever the cutoff.
            if stamped.contains(&session) {
                continue;
            }
            let (meta, msgs) = self.keys(&session);
            let removed: i64 = self
                .prune
                .key(&meta)
                .key(&msgs)
                .key(&active)
                .arg(&session)
                .arg(cutoff_us)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| ConversationError::store(action(), e))?;
            if removed >= 0 {
                report.sessions += 1;
                report.messages += u64::try_from(removed).unwrap_or(0);
            }
        }
        Ok(report)
    }
}

impl RedisConversationStore {
    /// The session a `PREFIX:conv:{SESSION}:meta|msgs` key belongs to.
    fn session_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(":conv:{")?;
        rest.strip_suffix("}:meta")
            .or_else(|| rest.strip_suffix("}:msgs"))
    }
}

/// Microseconds since the epoch, now.
fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// `s` with Redis glob metacharacters escaped, for a literal prefix in `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
