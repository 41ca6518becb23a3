//! The tool cache shared across sessions (opt-in, `--shared-tool-cache`): results of read-only
//! tools kept per merchant, so `get_transaction` for the same id reaches the database once
//! whichever session asks. One cache per merchant, never shared between merchants: every key
//! starts with the merchant, and a merchant's write clears only its own entries. In-process
//! ([`InProcessToolCache`]) or on the Redis of a `--state redis://…` ([`RedisToolCache`]), so
//! every worker shares it.
//!
//! Invalidation is by generation: each merchant has a counter that is part of every key; any
//! write or executed irreversible call of the merchant bumps it, so all its cached reads are
//! gone at once (old entries expire by their TTL).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::merchant::MerchantId;
use crate::redisdb::RedisStore;
use crate::state::redis::PREFIX;

/// A cache of read-only tool results, one per merchant.
pub trait SharedToolCache: Send + Sync {
    /// The cached result of call `key` (tool + canonical arguments) for `merchant`, if fresh.
    fn get(&self, merchant: &MerchantId, key: &str) -> Option<Value>;
    /// Keeps `value` for `ttl`.
    fn put(&self, merchant: &MerchantId, key: &str, value: &Value, ttl: Duration);
    /// Forgets every cached result of `merchant` (it wrote something).
    fn invalidate(&self, merchant: &MerchantId);
}

/// A fixed-length digest of a call key (keys stay short whatever the arguments).
fn digest(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The shared cache in this process (moka, bounded), for a SQLite state.
pub struct InProcessToolCache {
    entries: moka::sync::Cache<String, (Instant, Value)>,
    generations: Mutex<HashMap<String, u64>>,
}

impl InProcessToolCache {
    /// A cache of at most `max_entries` results, none kept longer than `max_ttl`.
    pub fn new(max_entries: u64, max_ttl: Duration) -> Self {
        InProcessToolCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(max_ttl)
                .build(),
            generations: Mutex::new(HashMap::new()),
        }
    }

    fn full_key(&self, merchant: &MerchantId, key: &str) -> Option<String> {
        let generation = *self
            .generations
            .lock()
            .ok()?
            .get(merchant.as_str())
            .unwrap_or(&0);
        Some(format!(
            "{}\u{1f}{generation}\u{1f}{}",
            merchant.as_str(),
            digest(key)
        ))
    }
}

impl SharedToolCache for InProcessToolCache {
    fn get(&self, merchant: &MerchantId, key: &str) -> Option<Value> {
        let (expires, value) = self.entries.get(&self.full_key(merchant, key)?)?;
        (Instant::now() < expires).then_some(value)
    }

    fn put(&self, merchant: &MerchantId, key: &str, value: &Value, ttl: Duration) {
        if let Some(k) = self.full_key(merchant, key) {
            self.entries
                .insert(k, (Instant::now() + ttl, value.clone()));
        }
    }

    fn invalidate(&self, merchant: &MerchantId) {
        if let Ok(mut g) = self.generations.lock() {
            *g.entry(merchant.as_str().to_string()).or_insert(0) += 1;
        }
    }
}

/// The shared cache on the Redis of the agent state: `tc:MERCHANT:gen` (the generation) and
/// `tc:MERCHANT:GEN:DIGEST` (a JSON result with its TTL), under memex's key prefix. A Redis
/// that fails is a miss (the tool runs), never an error of the call.
pub struct RedisToolCache {
    pool: RedisStore,
}

impl RedisToolCache {
    /// A cache on `pool`.
    pub fn new(pool: RedisStore) -> Self {
        RedisToolCache { pool }
    }

    fn generation(&self, merchant: &MerchantId) -> Option<u64> {
        let k = format!("{PREFIX}tc:{}:gen", merchant.as_str());
        let g: Option<u64> = self
            .pool
            .run(|c| redis::cmd("GET").arg(&k).query(c))
            .map_err(|e| tracing::warn!(error = %e, "shared tool cache: cannot read"))
            .ok()?;
        Some(g.unwrap_or(0))
    }

    fn entry_key(merchant: &MerchantId, generation: u64, key: &str) -> String {
        format!(
            "{PREFIX}tc:{}:{generation}:{}",
            merchant.as_str(),
            digest(key)
        )
    }
}

impl SharedToolCache for RedisToolCache {
    fn get(&self, merchant: &MerchantId, key: &str) -> Option<Value> {
        let k = Self::entry_key(merchant, self.generation(merchant)?, key);
        let raw: Option<String> = self
            .pool
            .run(|c| redis::cmd("GET").arg(&k).query(c))
            .map_err(|e| tracing::warn!(error = %e, "shared tool cache: cannot read"))
            .ok()?;
        serde_json::from_str(&raw?).ok()
    }

    fn put(&self, merchant: &MerchantId, key: &str, value: &Value, ttl: Duration) {
        let Some(generation) = self.generation(merchant) else {
            return;
        };
        let k = Self::entry_key(merchant, generation, key);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let text = value.to_string();
        if let Err(e) = self.pool.run(|c| {
            redis::cmd("SET")
                .arg(&k)
                .arg(&text)
                .arg("PX")
                .arg(ms)
                .query::<()>(c)
        }) {
            tracing::warn!(error = %e, "shared tool cache: cannot write");
        }
    }

    fn invalidate(&self, merchant: &MerchantId) {
        let k = format!("{PREFIX}tc:{}:gen", merchant.as_str());
        if let Err(e) = self
            .pool
            .run(|c| redis::cmd("INCR").arg(&k).query::<i64>(c))
        {
            tracing::error!(error = %e, "shared tool cache: cannot invalidate a merchant's reads");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn in_process_cache_is_per_merchant_and_cleared_by_a_write() {
        let c = InProcessToolCache::new(100, Duration::from_secs(60));
        let (a, b) = (
            MerchantId::parse("MA").unwrap(),
            MerchantId::parse("MB").unwrap(),
        );
        c.put(
            &a,
            "get_transaction\u{1f}{}",
            &json!({"id": 1}),
            Duration::from_secs(60),
        );
        assert_eq!(c.get(&a, "get_transaction\u{1f}{}"), Some(json!({"id": 1})));
        assert_eq!(
            c.get(&b, "get_transaction\u{1f}{}"),
            None,
            "never across merchants"
        );
        c.invalidate(&b);
        assert!(
            c.get(&a, "get_transaction\u{1f}{}").is_some(),
            "B's write leaves A alone"
        );
        c.invalidate(&a);
        assert_eq!(c.get(&a, "get_transaction\u{1f}{}"), None);
        c.put(&a, "k", &json!(2), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.get(&a, "k"), None, "each entry has its own TTL");
    }
}
