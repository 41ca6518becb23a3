//! [`RedisEpisodicStore`]: episodic memory shared by many workers through Redis.
//!
//! # Keys
//!
//! With the default namespace `memex` and merchant `MID001`:
//!
//! * `memex:ep:{MID001}:t` — sorted set: member = episode id, score = `created_at` in µs;
//! * `memex:ep:{MID001}:e:<uuid>` — hash: `s` summary, `m` metadata JSON, `c` created_at µs,
//!   `v` embedding as little-endian `f32` bytes (absent without an embedding), `o` occurred_at
//!   µs (absent when unknown);
//! * `memex:ep:{MID001}:w` — sorted set: member = episode id, score = occurred_at µs, else
//!   created_at (the order of `recent`);
//! * `memex:ep:{MID001}:v` — the merchant's version counter, incremented by every script that
//!   changes its episodes (never deleted, so it never goes back); `search` keeps an in-process
//!   hybrid index per merchant and rebuilds it when this counter moves;
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
//! number of times ([`RedisOptions`], which is the process's one Redis [`Policy`]); then the
//! call fails with [`EpisodicError::Unavailable`]. The connection is the process's one
//! [`crate::redisdb`] connection for this URL; it reconnects by itself, so the same store works
//! again once Redis is back. The scripts touch keys they derive from the merchant's, so the store targets a
//! single Redis server (or a replicated primary), not a cluster.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

use super::episode::{
    checked_unit_vector, micros_to_datetime, opt_micros, parse_id, parse_metadata, CheckedDraft,
};
use super::hybrid::{IndexCache, IndexRow, MerchantIndex, CACHE_ENTRIES, DEFAULT_CACHE_BYTES};
use super::vector::{self, Candidate};
use super::{
    Episode, EpisodeDraft, EpisodeId, EpisodicError, EpisodicStore, ScoredEpisode, SearchQuery,
};
use crate::merchant::MerchantId;
use crate::redisdb::{Policy, RedisDb, RedisDbError, RedisStore};

/// Tuning for [`RedisEpisodicStore`]. The waits and attempts default to the process's one
/// Redis [`Policy`]; a store given others gets its own connections.
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
    /// Longest wait for one reply (default 5 s).
    pub response_timeout: Duration,
    /// Longest wait for one TCP connection (default 2 s).
    pub connection_timeout: Duration,
    /// Byte budget of the in-process search-index cache (default 256 MiB).
    pub cache_bytes: u64,
}

impl Default for RedisOptions {
    fn default() -> Self {
        let policy = Policy::default();
        RedisOptions {
            namespace: "memex".into(),
            max_attempts: policy.max_attempts,
            initial_backoff: policy.initial_backoff,
            max_backoff: policy.max_backoff,
            response_timeout: policy.response_timeout,
            connection_timeout: policy.connection_timeout,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

impl RedisOptions {
    /// The Redis policy these options spell out.
    pub fn policy(&self) -> Policy {
        Policy {
            max_attempts: self.max_attempts,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
            connection_timeout: self.connection_timeout,
            response_timeout: self.response_timeout,
        }
    }
}

/// The episodic store's error for a failure of the Redis layer.
fn from_db(e: RedisDbError) -> EpisodicError {
    match e {
        RedisDbError::InvalidUrl { category, .. } => EpisodicError::InvalidUrl(format!(
            "is not a usable Redis URL ({category}); expected redis://HOST:PORT/DB"
        )),
        RedisDbError::InvalidPolicy(why) => {
            EpisodicError::InvalidInput(format!("RedisOptions: {why}"))
        }
        RedisDbError::Unreachable {
            endpoint,
            attempts,
            elapsed_ms,
            source,
            ..
        } => EpisodicError::Unavailable {
            endpoint,
            attempts,
            elapsed_ms,
            last: source,
        },
        RedisDbError::Refused {
            endpoint, source, ..
        } => EpisodicError::Redis { endpoint, source },
        e @ RedisDbError::Damaged { .. } => EpisodicError::InvalidInput(e.to_string()),
    }
}

/// Episodic memory in Redis. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RedisEpisodicStore {
    redis: RedisStore,
    ns: String,
    endpoint: String,
    scripts: Arc<Scripts>,
    cache: Arc<IndexCache<String>>,
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
    index: Script,
    forget_before: Script,
    recent: Script,
    candidates: Script,
    fetch: Script,
    forget: Script,
    prune: Script,
}

/// KEYS: zset, hash, merchants set, when zset, version. ARGV: id, summary, metadata,
/// has-embedding flag, embedding bytes, merchant, occurred_at µs or ''. Returns
/// {created_at µs (decimal string), 1 if stored now / 0 if the id already existed}.
const SAVE_LUA: &str = r#"
local existing = redis.call('HGET', KEYS[2], 'c')
if existing then return {existing, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  local l = tonumber(last[2])
  if l >= now then now = l + 1 end
end
local c = string.format('%.0f', now)
redis.call('HSET', KEYS[2], 's', ARGV[2], 'm', ARGV[3], 'c', c)
if ARGV[4] == '1' then redis.call('HSET', KEYS[2], 'v', ARGV[5]) end
local w = c
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[2], 'o', ARGV[7])
  w = ARGV[7]
end
redis.call('ZADD', KEYS[1], c, ARGV[1])
redis.call('ZADD', KEYS[4], w, ARGV[1])
redis.call('SADD', KEYS[3], ARGV[6])
redis.call('INCR', KEYS[5])
return {c, 1}
"#;

/// KEYS: zset, version. ARGV: hash key prefix. Returns {version, rows} with one row
/// {id, c, s, when, speaker, v} per episode (in created order): everything the hybrid index
/// is built from, at one version. `speaker` is the metadata's string `speaker`, or empty
/// (metadata is decoded only when it holds the word, so a large one without a speaker costs
/// one substring search).
const INDEX_LUA: &str = r#"
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for i, id in ipairs(ids) do
  local h = redis.call('HMGET', ARGV[1] .. id, 'c', 's', 'o', 'v', 'm')
  if h[1] and h[2] then
    local w = h[3] or h[1]
    local who = ''
    if h[5] and string.find(h[5], '"speaker"', 1, true) then
      local ok, m = pcall(cjson.decode, h[5])
      if ok and type(m) == 'table' and type(m.speaker) == 'string' then who = m.speaker end
    end
    if h[4] then out[#out + 1] = {id, h[1], h[2], w, who, h[4]} else out[#out + 1] = {id, h[1], h[2], w, who} end
  end
end
local v = redis.call('GET', KEYS[2]) or '0'
return {v, out}
"#;

/// KEYS: zset, when zset, merchants set, version. ARGV: hash key prefix, cutoff µs, merchant.
/// Removes the merchant's episodes whose time (occurred_at, else created_at) is before the
/// cutoff; returns how many. Episodes saved before the when zset existed are copied into it
/// first (as `RECENT_LUA` does), so none escapes.
const FORGET_BEFORE_LUA: &str = r#"
if redis.call('ZCARD', KEYS[2]) < redis.call('ZCARD', KEYS[1]) then
  local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do redis.call('ZADD', KEYS[2], 'NX', all[i + 1], all[i]) end
end
local bound = '(' .. ARGV[2]
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', bound)
for i = 1, #ids, 256 do
  local batch = {}
  local hashes = {}
  for j = i, math.min(i + 255, #ids) do
    batch[#batch + 1] = ids[j]
    hashes[#hashes + 1] = ARGV[1] .. ids[j]
  end
  redis.call('DEL', unpack(hashes))
  redis.call('ZREM', KEYS[1], unpack(batch))
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', bound)
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[3])
end
redis.call('INCR', KEYS[4])
return #ids
"#;

/// KEYS: when zset, created zset. ARGV: last rank (n - 1), hash key prefix. Returns rows
/// {id, s, m, c, v, o}: the n latest by time plus every episode tied with the last of them (the
/// caller breaks ties by created_at and keeps n). Episodes saved before the when zset existed
/// (older memex) are copied into it first, scored by created_at, so they are never hidden.
const RECENT_LUA: &str = r#"
if redis.call('ZCARD', KEYS[1]) < redis.call('ZCARD', KEYS[2]) then
  local all = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do redis.call('ZADD', KEYS[1], 'NX', all[i + 1], all[i]) end
end
local top = redis.call('ZREVRANGE', KEYS[1], 0, ARGV[1], 'WITHSCORES')
if #top == 0 then return {} end
local b = top[#top]
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '(' .. b)
local ties = redis.call('ZRANGEBYSCORE', KEYS[1], b, b)
for _, id in ipairs(ties) do ids[#ids + 1] = id end
local out = {}
for i, id in ipairs(ids) do
  local h = redis.call('HMGET', ARGV[2] .. id, 's', 'm', 'c', 'v', 'o')
  out[i] = {id, h[1], h[2], h[3], h[4], h[5]}
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

/// ARGV: hash key prefix, ids... Returns rows {id, s, m, c, v, o} of the ids that still exist.
const FETCH_LUA: &str = r#"
local out = {}
for i = 2, #ARGV do
  local h = redis.call('HMGET', ARGV[1] .. ARGV[i], 's', 'm', 'c', 'v', 'o')
  if h[3] then out[#out + 1] = {ARGV[i], h[1], h[2], h[3], h[4], h[5]} end
end
return out
"#;

/// KEYS: zset, merchants set, when zset, version. ARGV: hash key prefix, merchant. Returns the
/// number removed.
const FORGET_LUA: &str = r#"
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = 1, #ids, 256 do
  local batch = {}
  for j = i, math.min(i + 255, #ids) do batch[#batch + 1] = ARGV[1] .. ids[j] end
  redis.call('DEL', unpack(batch))
end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('INCR', KEYS[4])
return #ids
"#;

/// KEYS: zset, merchants set, when zset, version. ARGV: hash key prefix, cutoff µs, merchant.
/// Removes the merchant's episodes created before the cutoff; returns how many.
const PRUNE_LUA: &str = r#"
local bound = '(' .. ARGV[2]
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', bound)
for i = 1, #ids, 256 do
  local batch = {}
  local hashes = {}
  for j = i, math.min(i + 255, #ids) do
    batch[#batch + 1] = ids[j]
    hashes[#hashes + 1] = ARGV[1] .. ids[j]
  end
  redis.call('DEL', unpack(hashes))
  redis.call('ZREM', KEYS[3], unpack(batch))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', bound)
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('SREM', KEYS[2], ARGV[3])
end
if #ids > 0 then redis.call('INCR', KEYS[4]) end
return #ids
"#;

/// One stored row as the scripts return it: id, summary, metadata, created_at, embedding,
/// occurred_at.
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
        let redis = RedisDb::open_with(url, opts.policy())
            .map_err(from_db)?
            .store("episodes");
        let endpoint = redis.endpoint().to_string();
        // Reach the server now, so an unreachable Redis is reported at open.
        redis
            .retry(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map_err(from_db)?;
        let cache = Arc::new(IndexCache::new(CACHE_ENTRIES, opts.cache_bytes));
        Ok(RedisEpisodicStore {
            redis,
            ns: opts.namespace.clone(),
            endpoint,
            cache,
            scripts: Arc::new(Scripts {
                save: Script::new(SAVE_LUA),
                index: Script::new(INDEX_LUA),
                forget_before: Script::new(FORGET_BEFORE_LUA),
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

    fn when_key(&self, m: &MerchantId) -> String {
        format!("{}:w", self.merchant_prefix(m))
    }

    fn version_key(&self, m: &MerchantId) -> String {
        format!("{}:v", self.merchant_prefix(m))
    }

    /// The save script's invocation for one checked draft.
    fn save_invocation(
        &self,
        merchant: &MerchantId,
        d: &CheckedDraft,
    ) -> redis::ScriptInvocation<'_> {
        let id = d.id.to_string();
        let emb = d.embedding.as_deref().map(vector::to_bytes);
        let mut inv = self.scripts.save.prepare_invoke();
        inv.key(self.timeline_key(merchant))
            .key(format!("{}{}", self.episode_prefix(merchant), id))
            .key(self.merchants_key())
            .key(self.when_key(merchant))
            .key(self.version_key(merchant))
            .arg(&id)
            .arg(&d.summary)
            .arg(&d.metadata_json)
            .arg(if emb.is_some() { "1" } else { "0" })
            .arg(emb.as_deref().unwrap_or(&[]))
            .arg(merchant.as_str())
            .arg(d.occurred_us.map(|o| o.to_string()).unwrap_or_default());
        inv
    }

    /// The merchant's hybrid index, rebuilt from Redis when its version counter has moved.
    async fn index(
        &self,
        merchant: &MerchantId,
    ) -> Result<Arc<MerchantIndex<String>>, EpisodicError> {
        let vkey = self.version_key(merchant);
        let version: Option<i64> = self
            .run(|mut c| {
                let vkey = vkey.clone();
                async move { redis::cmd("GET").arg(vkey).query_async(&mut c).await }
            })
            .await?;
        if let Some(i) = self.cache.get(merchant.as_str(), version.unwrap_or(0)) {
            return Ok(i);
        }
        let mut inv = self.scripts.index.prepare_invoke();
        inv.key(self.timeline_key(merchant))
            .key(&vkey)
            .arg(self.episode_prefix(merchant));
        let (version, raw): (i64, Vec<Vec<Vec<u8>>>) = self
            .run(|mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        let mut rows = Vec::with_capacity(raw.len());
        for r in raw {
            let mut it = r.into_iter();
            let id = String::from_utf8_lossy(&it.next().unwrap_or_default()).into_owned();
            let corrupt = |what: &str| EpisodicError::Corrupt {
                id: id.clone(),
                message: format!("the {what} field is not valid"),
            };
            let created_us: i64 = std::str::from_utf8(&it.next().unwrap_or_default())
                .ok()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| corrupt("created_at"))?;
            let summary =
                String::from_utf8(it.next().unwrap_or_default()).map_err(|_| corrupt("summary"))?;
            let when_us: i64 = std::str::from_utf8(&it.next().unwrap_or_default())
                .ok()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| corrupt("occurred_at"))?;
            let speaker = String::from_utf8(it.next().unwrap_or_default())
                .ok()
                .filter(|s| !s.is_empty());
            let embedding = it.next();
            rows.push(IndexRow {
                key: id.clone(),
                id,
                created_us,
                when_us,
                summary,
                embedding,
                speaker,
            });
        }
        let built = Arc::new(MerchantIndex::build(version, rows)?);
        self.cache.put(merchant.as_str(), Arc::clone(&built));
        Ok(built)
    }

    /// Fetches the rows of `ids` (those that still exist), keyed by id.
    async fn fetch(
        &self,
        merchant: &MerchantId,
        ids: impl Iterator<Item = &String>,
    ) -> Result<std::collections::HashMap<String, Episode>, EpisodicError> {
        let mut inv = self.scripts.fetch.prepare_invoke();
        inv.arg(self.episode_prefix(merchant));
        for id in ids {
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
        Ok(by_id)
    }

    fn merchants_key(&self) -> String {
        format!("{}:ep:merchants", self.ns)
    }

    async fn run<T, F, Fut>(&self, mut f: F) -> Result<T, EpisodicError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.redis.retry(&mut f).await.map_err(from_db)
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
        let occurred = match it.next().flatten() {
            None => None,
            Some(b) => Some(
                std::str::from_utf8(&b)
                    .ok()
                    .and_then(|o| o.parse::<i64>().ok())
                    .ok_or_else(|| EpisodicError::Corrupt {
                        id: id.clone(),
                        message: "occurred_at is not an integer".into(),
                    })?,
            ),
        };
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
            occurred_at: opt_micros(occurred, &id)?,
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
        let checked = CheckedDraft::check(merchant, draft)?;
        let id = checked.id.to_string();
        let inv = self.save_invocation(merchant, &checked);
        let (created, new): (String, i64) = self
            .run(|mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        if new == 0 {
            return self
                .get(merchant, checked.id)
                .await?
                .ok_or_else(|| EpisodicError::Corrupt {
                    id: id.clone(),
                    message: "the episode vanished right after it was saved".into(),
                });
        }
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
            occurred_at: opt_micros(checked.occurred_us, &id)?,
        })
    }

    async fn save_many(
        &self,
        merchant: &MerchantId,
        drafts: Vec<EpisodeDraft>,
    ) -> Result<u64, EpisodicError> {
        let checked = drafts
            .into_iter()
            .map(|d| CheckedDraft::check(merchant, d))
            .collect::<Result<Vec<_>, _>>()?;
        if checked.is_empty() {
            return Ok(0);
        }
        // Each episode is its own atomic script; the pipeline saves round trips. A retry after
        // a lost reply re-runs scripts whose ids exist already, which are no-ops.
        let replies: Vec<(String, i64)> = self
            .run(|mut c| {
                let mut pipe = redis::pipe();
                pipe.load_script(&self.scripts.save).ignore();
                for d in &checked {
                    let id = d.id.to_string();
                    let emb = d.embedding.as_deref().map(vector::to_bytes);
                    pipe.invoke_script(
                        self.scripts
                            .save
                            .key(self.timeline_key(merchant))
                            .key(format!("{}{}", self.episode_prefix(merchant), id))
                            .key(self.merchants_key())
                            .key(self.when_key(merchant))
                            .key(self.version_key(merchant))
                            .arg(&id)
                            .arg(&d.summary)
                            .arg(&d.metadata_json)
                            .arg(if emb.is_some() { "1" } else { "0" })
                            .arg(emb.as_deref().unwrap_or(&[]))
                            .arg(merchant.as_str())
                            .arg(d.occurred_us.map(|o| o.to_string()).unwrap_or_default()),
                    );
                }
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok(replies.iter().filter(|(_, new)| *new == 1).count() as u64)
    }

    async fn search(
        &self,
        merchant: &MerchantId,
        query: &SearchQuery,
    ) -> Result<Vec<ScoredEpisode>, EpisodicError> {
        let vector = query
            .vector
            .clone()
            .map(|v| checked_unit_vector(v, "the query vector"))
            .transpose()?;
        if query.k == 0 {
            return Ok(Vec::new());
        }
        let index = self.index(merchant).await?;
        let best = index.search(&query.text, vector.as_deref(), query.k, &query.fusion)?;
        if best.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_id = self.fetch(merchant, best.iter().map(|(id, _)| id)).await?;
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

    async fn speakers(&self, merchant: &MerchantId) -> Result<Vec<String>, EpisodicError> {
        Ok(self.index(merchant).await?.speakers().to_vec())
    }

    async fn forget_before(
        &self,
        merchant: &MerchantId,
        before: DateTime<Utc>,
    ) -> Result<u64, EpisodicError> {
        let mut inv = self.scripts.forget_before.prepare_invoke();
        inv.key(self.timeline_key(merchant))
            .key(self.when_key(merchant))
            .key(self.merchants_key())
            .key(self.version_key(merchant))
            .arg(self.episode_prefix(merchant))
            .arg(before.timestamp_micros().to_string())
            .arg(merchant.as_str());
        self.run(|mut c| {
            let inv = &inv;
            async move { inv.invoke_async(&mut c).await }
        })
        .await
    }

    async fn recent(&self, merchant: &MerchantId, n: usize) -> Result<Vec<Episode>, EpisodicError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.recent.prepare_invoke();
        inv.key(self.when_key(merchant))
            .key(self.timeline_key(merchant))
            .arg(i64::try_from(n - 1).unwrap_or(i64::MAX))
            .arg(self.episode_prefix(merchant));
        let rows: Vec<RawRow> = self
            .run(|mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        let mut out = rows
            .into_iter()
            .map(|r| self.decode_row(merchant, r))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| {
            b.when()
                .cmp(&a.when())
                .then(b.created_at.cmp(&a.created_at))
        });
        out.truncate(n);
        Ok(out)
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
                        .arg(&["s", "m", "c", "v", "o"])
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
            .key(self.when_key(merchant))
            .key(self.version_key(merchant))
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
                                    .key(self.when_key(m))
                                    .key(self.version_key(m))
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
