//! [`RedisConversationStore`]: conversation buffers in Redis.
//!
//! Per session, two keys sharing a hash tag (so they live on one cluster slot):
//! `PREFIX:conv:{SESSION}:meta` — a hash with `summary`, `watermark`, `compressions`,
//! `updated_at` — and `PREFIX:conv:{SESSION}:msgs` — a sorted set scored by sequence number whose
//! members are `SEQ|JSON` (the number keeps equal messages distinct). Loading reads both in one
//! MULTI/EXEC; committing a summary is one Lua script, which Redis runs atomically: it checks
//! the watermark, writes the summary and watermark, and removes the folded messages, with no
//! other command in between.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use crate::llm::Message;

use super::store::{validate_session_id, ConversationStore, StoredSession};
use super::ConversationError;

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
    conn: ConnectionManager,
    prefix: String,
    commit: redis::Script,
}

impl std::fmt::Debug for RedisConversationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConversationStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The URL without a password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://[redacted]{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

impl RedisConversationStore {
    /// Connects to `url` (`redis://host:port/db`); keys start with `prefix` (e.g. `memex`).
    /// Gives up after three quick reconnection attempts (3 s connect timeout each); commands
    /// time out after 10 s.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, ConversationError> {
        let action = || format!("connect to Redis at {}", redact(url));
        let client = redis::Client::open(url).map_err(|e| ConversationError::store(action(), e))?;
        // Fail fast when Redis is down: a few quick reconnection attempts, bounded waits.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(3)
            .set_max_delay(500)
            .set_connection_timeout(Duration::from_secs(3))
            .set_response_timeout(Duration::from_secs(10));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| ConversationError::store(action(), e))?;
        Ok(RedisConversationStore {
            conn,
            prefix: prefix.to_string(),
            commit: redis::Script::new(COMMIT_SCRIPT),
        })
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
        let mut conn = self.conn.clone();
        let ((summary, watermark, compressions), members): (
            (Option<String>, Option<u64>, Option<u64>),
            Vec<String>,
        ) = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(&meta)
            .arg("summary")
            .arg("watermark")
            .arg("compressions")
            .cmd("ZRANGE")
            .arg(&msgs)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(|e| ConversationError::store(action(), e))?;
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
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("ZADD")
            .arg(&msgs)
            .arg(seq)
            .arg(format!("{seq:020}|{json}"))
            .query_async(&mut conn)
            .await
            .map_err(|e| ConversationError::store(action(), e))?;
        Ok(())
    }

    async fn commit_summary(
        &self,
        session: &str,
        summary: &str,
        watermark: u64,
    ) -> Result<(), ConversationError> {
        validate_session_id(session)?;
        let (meta, msgs) = self.keys(session);
        let mut conn = self.conn.clone();
        let (applied, stored): (i64, u64) = self
            .commit
            .key(&meta)
            .key(&msgs)
            .arg(summary)
            .arg(watermark)
            .arg(chrono::Utc::now().to_rfc3339())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| {
                ConversationError::store(
                    format!("commit the summary of session `{session}` in Redis"),
                    e,
                )
            })?;
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
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(&meta)
            .arg(&msgs)
            .query_async(&mut conn)
            .await
            .map_err(|e| {
                ConversationError::store(format!("delete session `{session}` from Redis"), e)
            })?;
        Ok(())
    }
}
