//! The key store in Redis, shared by every worker of a `--state redis://…`.
//!
//! Keys (prefix `memex:st:`): `key:ID` (hash: id, hash, name, role, merchant, created_at,
//! revoked_at), `keyhash:SHA256` (the id of the key with that hash), `keys` (sorted set of ids
//! by creation sequence `keyseq`). Only hashes are stored. Every lookup reads Redis (one
//! script, one round trip), so a revocation is visible to every worker on its next request.

use std::collections::HashMap;

use redis::Script;

use super::types::{parse_role, KeyBackend, KeyError, KeyInfo, LiveKey, Role};
use crate::merchant::MerchantId;
use crate::redisdb::RedisStore;
use crate::state::redis::PREFIX;

/// The key store on a Redis pool.
pub struct RedisKeys {
    pool: RedisStore,
    lookup: Script,
    insert: Script,
    revoke: Script,
}

// KEYS: keyhash:HASH, key prefix
const LOOKUP_LUA: &str = r#"
local id = redis.call('GET', KEYS[1])
if not id then return false end
local h = redis.call('HMGET', KEYS[2] .. id, 'role', 'merchant', 'revoked_at')
if not h[1] or h[3] then return false end
return {id, h[1], h[2] or ''}
"#;

// KEYS: key:ID, keyhash:HASH, keys, keyseq; ARGV: id, hash, name, role, merchant, created_at
const INSERT_LUA: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'hash', ARGV[2], 'role', ARGV[4], 'created_at', ARGV[6])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'name', ARGV[3]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'merchant', ARGV[5]) end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
return 1
"#;

// KEYS: key:ID; ARGV: now. -1 when there is no such key.
const REVOKE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1])
return 1
"#;

impl RedisKeys {
    /// The key store on `pool`.
    pub fn new(pool: RedisStore) -> Self {
        RedisKeys {
            pool,
            lookup: Script::new(LOOKUP_LUA),
            insert: Script::new(INSERT_LUA),
            revoke: Script::new(REVOKE_LUA),
        }
    }
}

impl KeyBackend for RedisKeys {
    fn insert(
        &self,
        id: &str,
        hash: &str,
        name: Option<&str>,
        role: Role,
        merchant: Option<&MerchantId>,
        now: &str,
    ) -> Result<(), KeyError> {
        let keys = [
            format!("{PREFIX}key:{id}"),
            format!("{PREFIX}keyhash:{hash}"),
            format!("{PREFIX}keys"),
            format!("{PREFIX}keyseq"),
        ];
        self.pool.run(|c| {
            let mut inv = self.insert.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            inv.arg(id)
                .arg(hash)
                .arg(name.unwrap_or(""))
                .arg(role.as_str())
                .arg(merchant.map_or("", MerchantId::as_str))
                .arg(now);
            inv.invoke::<i64>(c)
        })?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<KeyInfo>, KeyError> {
        let set = format!("{PREFIX}keys");
        let ids: Vec<String> = self
            .pool
            .run(|c| redis::cmd("ZRANGE").arg(&set).arg(0).arg(-1).query(c))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<HashMap<String, String>> = self.pool.run(|c| {
            let mut p = redis::pipe();
            for id in &ids {
                p.cmd("HGETALL").arg(format!("{PREFIX}key:{id}"));
            }
            p.query(c)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, mut h) in ids.into_iter().zip(rows) {
            let role = h
                .get("role")
                .and_then(|r| parse_role(r))
                .ok_or_else(|| KeyError::Damaged(id.clone()))?;
            out.push(KeyInfo {
                name: h.remove("name"),
                role,
                merchant: h.remove("merchant"),
                created_at: h.remove("created_at").unwrap_or_default(),
                revoked_at: h.remove("revoked_at"),
                id,
            });
        }
        Ok(out)
    }

    fn revoke(&self, id: &str, now: &str) -> Result<(), KeyError> {
        let k = format!("{PREFIX}key:{id}");
        let r: i64 = self.pool.run(|c| self.revoke.key(&k).arg(now).invoke(c))?;
        if r < 0 {
            return Err(KeyError::NotFound(id.to_owned()));
        }
        Ok(())
    }

    fn lookup(&self, hash: &str) -> Result<Option<LiveKey>, KeyError> {
        let (k1, k2) = (format!("{PREFIX}keyhash:{hash}"), format!("{PREFIX}key:"));
        let row: Option<(String, String, String)> =
            self.pool.run(|c| self.lookup.key(&k1).key(&k2).invoke(c))?;
        Ok(row.map(|(id, role, merchant)| (id, role, Some(merchant).filter(|m| !m.is_empty()))))
    }
}
