//! [`RedisEpisodicStore`]: episodic memory shared by many workers through Redis.
//!
//! # Keys
//!
//! With the default namespace `memex` and merchant `MID001`:
//!
//! * `memex:ep:{MID001}:t` — sorted set: member = episode id, score = `created_at` in µs;
//! * `memex:ep:{MID001}:e:<uuid>` — hash: `s` summary, `m` metadata JSON, `c` created_at µs,
//!   `v` embedding as little-endian `f32` bytes (absent without an embedding);
//! * `memex:ep:merchants` — set of merchants with at least one episode (used by `prune`).
//!
//! A merchant's keys are built only from a validated [`MerchantId`], whose charset excludes
//! `:`, `{`, `}`, `*`, `?`, `[` and whitespace, so no merchant id can name or match another
//! merchant's keys; the braces make the id a Redis Cluster hash tag as well.
//!
//! # Atomicity and failures
//!
//! Every write and every multi-key read is one Lua script, so an episode is visible entirely or
//! not at all. Ids are generated client-side and the save script is a no-op when the id already
//! exists, so a save retried after a lost reply is never duplicated. Transient failures
//! (connection refused or dropped, timeouts) are retried with exponential backoff a bounded
//! number of times ([`RedisOptions`]); then the call fails with [`EpisodicError::Unavailable`].
//! The connection manager reconnects by itself, so the same store works again once Redis is
//! back. The scripts touch keys they derive from the merchant's, so the store targets a
//! single Redis server (or a replicated primary), not a cluster.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, RetryMethod, Script};

use super::episode::{
    checked_unit_vector, micros_to_datetime, parse_id, parse_metadata, CheckedDraft,
};
use super::vector::{self, Candidate};
use super::{Episode, EpisodeDraft, EpisodeId, EpisodicError, EpisodicStore, ScoredEpisode};
use crate::merchant::MerchantId;

/// Tuning for [`RedisEpisodicStore`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// First component of every key (default `memex`); same charset as a [`MerchantId`].
    pub namespace: String,
    /// Attempts per call before giving up with [`EpisodicError::Unavailable`] (default 5).
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubles after each further failure (default 100 ms).
    pub initial_backoff: Duration,
    /// Longest wait between two attempts (default 1 s).
    pub max_backoff: Duration,
    /// Longest wait for one reply (default 2 s).
    pub response_timeout: Duration,
    /// Longest wait for one TCP connection (default 1 s).
    pub connection_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            namespace: "memex".into(),
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            connection_timeout: Duration::from_secs(1),
        }
    }
}

/// Episodic memory in Redis. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RedisEpisodicStore {
    conn: ConnectionManager,
    ns: String,
    endpoint: String,
    opts: RedisOptions,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisEpisodicStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEpisodicStore")
            .field("endpoint", &self.endpoint)
            .field("namespace", &self.ns)
            .finish_non_exhaustive()
    }
}

struct Scripts {
    save: Script,
    recent: Script,
    candidates: Script,
    fetch: Script,
    forget: Script,
    prune: Script,
}

/// KEYS: zset, hash, merchants set. ARGV: id, summary, metadata, has-embedding flag,
/// embedding bytes, merchant. Returns the episode's created_at (µs, decimal string).
const SAVE_LUA: &str = r#"
local existing = redis.call('HGET', KEYS[2], 'c')
if existing then return existing end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  local l = tonumber(last[2])
  if l >= now then now = l + 1 end
end
local c = string.format('%.0f', now)
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[2], 's', ARGV[2], 'm', ARGV[3], 'c', c, 'v', ARGV[5])
else
  redis.call('HSET', KEYS[2], 's', ARGV[2], 'm', ARGV[3], 'c', c)
end
redis.call('ZADD', KEYS[1], c, ARGV[1])
redis.call('SADD', KEYS[3], ARGV[6])
return c
"#;

/// KEYS: zset. ARGV: last rank (n - 1), hash key prefix. Returns up to n rows {id, s, m, c, v},
/// newest first.
const RECENT_LUA: &str = r#"
local ids = redis.call('ZREVRANGE', KEYS[1], 0, ARGV[1])
local out = {}
for i, id in ipairs(ids) do
  local h = redis.call('HMGET', ARGV[2] .. id, 's', 'm', 'c', 'v')
  out[i] = {id, h[1], h[2], h[3], h[4]}
end
return out
"#;

/// KEYS: zset. ARGV: hash key prefix. Returns {id, c, v} for every episode with an embedding.
const CANDIDATES_LUA: &str = r#"
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local h = redis.call('HMGET', ARGV[1] .. id, 'c', 'v')
  if h[1] and h[2] then out[#out + 1] = {id, h[1], h[2]} end
end
return out
"#;

/// ARGV: hash key prefix, ids... Returns rows {id, s, m, c, v} of the ids that still exist.
const FETCH_LUA: &str = r#"
local out = {}
for i = 2, #ARGV do
  local h = redis.call('HMGET', ARGV[1] .. ARGV[i], 's', 'm', 'c', 'v')
  if h[3] then out[#out + 1] = {ARGV[i], h[1], h[2], h[3], h[4]} end
end
return out
"#;

/// KEYS: zset, merchants set. ARGV: hash key prefix, merchant. Returns the number removed.
const FORGET_LUA: &str = r#"
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = 1, #ids, 256 do
  local batch = {}
  for j = i, math.min(i + 255, #ids) do batch[#batch + 1] = ARGV[1] .. ids[j] end
  redis.call('DEL', unpack(batch))
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return #ids
"#;

/// KEYS: zset, merchants set. ARGV: hash key prefix, cutoff µs, merchant.
/// Removes the merchant's episodes created before the cutoff; returns how many.
const PRUNE_LUA: &str = r#"
local bound = '(' .. ARGV[2]
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', bound)
for i = 1, #ids, 256 do
  local batch = {}
  for j = i, math.min(i + 255, #ids) do batch[#batch + 1] = ARGV[1] .. ids[j] end
  redis.call('DEL', unpack(batch))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', bound)
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[3])
end
return #ids
"#;

/// One stored row as the scripts return it: id, summary, metadata, created_at, embedding.
type RawRow = Vec<Option<Vec<u8>>>;

impl RedisEpisodicStore {
    /// Connects to the Redis server at `url` (`redis://[:PASSWORD@]HOST:PORT/DB`), retrying with
    /// backoff like every other call.
    pub async fn connect(url: &str, opts: RedisOptions) -> Result<Self, EpisodicError> {
        MerchantId::parse(&opts.namespace).map_err(|e| {
            EpisodicError::InvalidInput(format!("the Redis namespace is not valid: {e}"))
        })?;
        if opts.max_attempts == 0 {
            return Err(EpisodicError::InvalidInput(
                "RedisOptions::max_attempts must be at least 1".into(),
            ));
        }
        let client = redis::Client::open(url).map_err(|e| {
            EpisodicError::InvalidUrl(format!(
                "is not a usable Redis URL ({}); expected redis://HOST:PORT/DB",
                e.category()
            ))
        })?;
        let info = client.get_connection_info();
        let endpoint = format!("{}/{}", info.addr, info.redis.db);
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(opts.connection_timeout)
            .set_response_timeout(opts.response_timeout);
        let conn = retry(&opts, &endpoint, || {
            ConnectionManager::new_with_config(client.clone(), config.clone())
        })
        .await?;
        Ok(RedisEpisodicStore {
            conn,
            ns: opts.namespace.clone(),
            endpoint,
            opts,
            scripts: Arc::new(Scripts {
                save: Script::new(SAVE_LUA),
                recent: Script::new(RECENT_LUA),
                candidates: Script::new(CANDIDATES_LUA),
                fetch: Script::new(FETCH_LUA),
                forget: Script::new(FORGET_LUA),
                prune: Script::new(PRUNE_LUA),
            }),
        })
    }

    /// The namespace every key starts with.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// `NS:ep:{MID}`: the prefix of every key of one merchant.
    fn merchant_prefix(&self, m: &MerchantId) -> String {
        format!("{}:ep:{{{}}}", self.ns, m.as_str())
    }

    fn timeline_key(&self, m: &MerchantId) -> String {
        format!("{}:t", self.merchant_prefix(m))
    }

    fn episode_prefix(&self, m: &MerchantId) -> String {
        format!("{}:e:", self.merchant_prefix(m))
    }

    fn merchants_key(&self) -> String {
        format!("{}:ep:merchants", self.ns)
    }

    async fn run<T, F, Fut>(&self, mut f: F) -> Result<T, EpisodicError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        retry(&self.opts, &self.endpoint, || f(self.conn.clone())).await
    }

    fn decode_row(&self, m: &MerchantId, row: RawRow) -> Result<Episode, EpisodicError> {
        let mut it = row.into_iter();
        let mut next = |what: &str, id: &str| -> Result<Option<Vec<u8>>, EpisodicError> {
            it.next().ok_or_else(|| EpisodicError::Corrupt {
                id: id.to_owned(),
                message: format!("the reply lacks the {what} field"),
            })
        };
        let id_bytes = next("id", "?")?.unwrap_or_default();
        let id = String::from_utf8_lossy(&id_bytes).into_owned();
        let text = |v: Option<Vec<u8>>, what: &str| -> Result<String, EpisodicError> {
            let v = v.ok_or_else(|| EpisodicError::Corrupt {
                id: id.clone(),
                message: format!("the {what} field is missing"),
            })?;
            String::from_utf8(v).map_err(|_| EpisodicError::Corrupt {
                id: id.clone(),
                message: format!("the {what} field is not UTF-8"),
            })
        };
        let summary = text(next("summary", &id)?, "summary")?;
        let metadata = text(next("metadata", &id)?, "metadata")?;
        let created = text(next("created_at", &id)?, "created_at")?;
        let embedding = next("embedding", &id)?;
        let created_us: i64 = created.parse().map_err(|_| EpisodicError::Corrupt {
            id: id.clone(),
            message: "created_at is not an integer".into(),
        })?;
        Ok(Episode {
            id: parse_id(&id)?,
            merchant_id: m.clone(),
            summary,
            metadata: parse_metadata(&metadata, &id)?,
            created_at: micros_to_datetime(created_us, &id)?,
            embedding: embedding.map(|b| vector::from_bytes(&b, &id)).transpose()?,
        })
    }
}

#[async_trait]
impl EpisodicStore for RedisEpisodicStore {
    async fn save(
        &self,
        merchant: &MerchantId,
        draft: EpisodeDraft,
    ) -> Result<Episode, EpisodicError> {
        let checked = CheckedDraft::check(draft)?;
        let id = checked.id.to_string();
        let emb = checked.embedding.as_deref().map(vector::to_bytes);
        let mut inv = self.scripts.save.prepare_invoke();
        inv.key(self.timeline_key(merchant))
            .key(format!("{}{}", self.episode_prefix(merchant), id))
            .key(self.merchants_key())
            .arg(&id)
            .arg(&checked.summary)
            .arg(&checked.metadata_json)
            .arg(if emb.is_some() { "1" } else { "0" })
            .arg(emb.as_deref().unwrap_or(&[]))
            .arg(merchant.as_str());
        let created: String = self
            .run(|mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        let created_us: i64 = created.parse().map_err(|_| EpisodicError::Corrupt {
            id: id.clone(),
            message: "the save script returned a non-integer time".into(),
        })?;
        Ok(Episode {
            id: checked.id,
            merchant_id: merchant.clone(),
            summary: checked.summary,
            metadata: parse_metadata(&checked.metadata_json, &id)?,
            created_at: micros_to_datetime(created_us, &id)?,
            embedding: checked.embedding,
        })
    }

    async fn recent(&self, merchant: &MerchantId, n: usize) -> Result<Vec<Episode>, EpisodicError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.recent.prepare_invoke();
        inv.key(self.timeline_key(merchant))
            .arg(i64::try_from(n - 1).unwrap_or(i64::MAX))
            .arg(self.episode_prefix(merchant));
        let rows: Vec<RawRow> = self
            .run(|mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        rows.into_iter()
            .map(|r| self.decode_row(merchant, r))
            .collect()
    }

    async fn similar(
        &self,
        merchant: &MerchantId,
        query: &[f32],
        k: usize,
    ) -> Result<Vec<ScoredEpisode>, EpisodicError> {
        let query = checked_unit_vector(query.to_vec(), "the query vector")?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let prefix = self.episode_prefix(merchant);
        let mut inv = self.scripts.candidates.prepare_invoke();
        inv.key(self.timeline_key(merchant)).arg(&prefix);
        let raw: Vec<(String, String, Vec<u8>)> = self
            .run(|mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        let mut candidates = Vec::with_capacity(raw.len());
        for (id, created, embedding) in raw {
            let created_us = created.parse().map_err(|_| EpisodicError::Corrupt {
                id: id.clone(),
                message: "created_at is not an integer".into(),
            })?;
            candidates.push(Candidate {
                key: id.clone(),
                id,
                created_us,
                embedding,
            });
        }
        let best = vector::top_k(&query, candidates, k)?;
        if best.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.fetch.prepare_invoke();
        inv.arg(&prefix);
        for (id, _) in &best {
            inv.arg(id);
        }
        let rows: Vec<RawRow> = self
            .run(|mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        let mut by_id = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let ep = self.decode_row(merchant, row)?;
            by_id.insert(ep.id.to_string(), ep);
        }
        // An episode forgotten between the two round trips is simply left out.
        Ok(best
            .into_iter()
            .filter_map(|(id, score)| {
                by_id
                    .remove(&id)
                    .map(|episode| ScoredEpisode { episode, score })
            })
            .collect())
    }

    async fn get(
        &self,
        merchant: &MerchantId,
        id: EpisodeId,
    ) -> Result<Option<Episode>, EpisodicError> {
        let id_str = id.to_string();
        let key = format!("{}{}", self.episode_prefix(merchant), id_str);
        let fields: RawRow = self
            .run(|mut c| {
                let key = key.clone();
                async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg(&["s", "m", "c", "v"])
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        if fields.get(2).is_none_or(|c| c.is_none()) {
            return Ok(None);
        }
        let mut row = Vec::with_capacity(5);
        row.push(Some(id_str.into_bytes()));
        row.extend(fields);
        self.decode_row(merchant, row).map(Some)
    }

    async fn count(&self, merchant: &MerchantId) -> Result<u64, EpisodicError> {
        let key = self.timeline_key(merchant);
        self.run(|mut c| {
            let key = key.clone();
            async move { redis::cmd("ZCARD").arg(key).query_async(&mut c).await }
        })
        .await
    }

    async fn forget(&self, merchant: &MerchantId) -> Result<u64, EpisodicError> {
        let mut inv = self.scripts.forget.prepare_invoke();
        inv.key(self.timeline_key(merchant))
            .key(self.merchants_key())
            .arg(self.episode_prefix(merchant))
            .arg(merchant.as_str());
        self.run(|mut c| {
            let inv = &inv;
            async move { inv.invoke_async(&mut c).await }
        })
        .await
    }

    async fn prune(&self, older_than: DateTime<Utc>) -> Result<u64, EpisodicError> {
        let cutoff = older_than.timestamp_micros().to_string();
        let merchants_key = self.merchants_key();
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .run(|mut c| {
                    let key = merchants_key.clone();
                    async move {
                        redis::cmd("SSCAN")
                            .arg(key)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(500)
                            .query_async(&mut c)
                            .await
                    }
                })
                .await?;
            let merchants: Vec<MerchantId> = batch
                .iter()
                .filter_map(|s| match MerchantId::parse(s) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring an invalid merchant id in the Redis merchant set");
                        None
                    }
                })
                .collect();
            if !merchants.is_empty() {
                let counts: Vec<u64> = self
                    .run(|mut c| {
                        let mut pipe = redis::pipe();
                        pipe.load_script(&self.scripts.prune).ignore();
                        for m in &merchants {
                            pipe.invoke_script(
                                self.scripts
                                    .prune
                                    .key(self.timeline_key(m))
                                    .key(&merchants_key)
                                    .arg(self.episode_prefix(m))
                                    .arg(&cutoff)
                                    .arg(m.as_str()),
                            );
                        }
                        async move { pipe.query_async(&mut c).await }
                    })
                    .await?;
                removed += counts.iter().sum::<u64>();
            }
            cursor = next;
            if cursor == 0 {
                return Ok(removed);
            }
        }
    }

    fn describe(&self) -> String {
        format!("redis://{}", self.endpoint)
    }
}

/// Whether retrying `e` (after reconnecting) may succeed.
fn is_transient(e: &RedisError) -> bool {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return false;
    }
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.retry_method(),
            RetryMethod::Reconnect | RetryMethod::RetryImmediately | RetryMethod::WaitAndRetry
        )
}

/// Runs `attempt` until it succeeds, fails permanently, or `opts.max_attempts` transient
/// failures have happened, sleeping with exponential backoff between attempts.
async fn retry<T, F, Fut>(
    opts: &RedisOptions,
    endpoint: &str,
    mut attempt: F,
) -> Result<T, EpisodicError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let start = Instant::now();
    let mut delay = opts.initial_backoff;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) => {
                if attempts >= opts.max_attempts {
                    return Err(EpisodicError::Unavailable {
                        endpoint: endpoint.to_owned(),
                        attempts,
                        elapsed_ms: start.elapsed().as_millis() as u64,
                        last: e.to_string(),
                    });
                }
                tracing::debug!(attempt = attempts, error = %e, "Redis call failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(opts.max_backoff);
            }
            Err(e) => {
                return Err(EpisodicError::Redis {
                    endpoint: endpoint.to_owned(),
                    message: e.to_string(),
                })
            }
        }
    }
}
