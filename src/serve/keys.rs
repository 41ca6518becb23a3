//! API keys: created once, stored hashed, checked per request.
//!
//! A key is `mx_` followed by 64 hex characters (32 random bytes from the OS generator); only its
//! SHA-256 is stored. Lookups read the store on every request (one indexed row, or one Redis
//! round trip), so a key created or revoked by `memex keys` takes effect on every running
//! server at once, without a restart.
//!
//! [`KeyStore`] is a facade over a [`KeyBackend`] chosen by the state URL: SQLite `keys.db`
//! (beside the agent store's `agent.db`; the data directory by default) or Redis
//! ([`redis::RedisKeys`], shared by every worker).

pub mod redis;
mod types;

use std::path::{Path, PathBuf};

use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::merchant::MerchantId;

pub(crate) use types::parse_role;
pub use types::{CreatedKey, KeyBackend, KeyError, KeyInfo, KeyOwner, LiveKey, Role};

/// File name of the key store in the data directory.
pub const KEYS_FILE: &str = "keys.db";

/// The key store: a facade over the backend the state names.
pub struct KeyStore {
    backend: Box<dyn KeyBackend>,
    path: PathBuf,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("path", &self.path)
            .finish()
    }
}

/// The SQLite key table (`keys.db`).
pub struct SqliteKeys {
    conn: crate::sqlite::SharedConn,
}

fn hash(key: &str) -> String {
    let d = Sha256::digest(key.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl KeyStore {
    /// Opens (creating) the key store of `state`: `keys.db` beside a SQLite state's file, or
    /// the keys in a Redis state.
    pub fn open_state(state: &crate::state::StateUrl) -> Result<Self, KeyError> {
        match state {
            crate::state::StateUrl::Sqlite(db) => {
                let dir = db.parent().filter(|d| !d.as_os_str().is_empty());
                Self::open_in(dir.unwrap_or_else(|| Path::new(".")))
            }
            crate::state::StateUrl::Redis(url) => {
                let pool = crate::redisdb::RedisDb::open_for(url, "--state URL")?.store("keys");
                pool.ping()?;
                Ok(KeyStore {
                    backend: Box::new(redis::RedisKeys::new(pool)),
                    path: PathBuf::new(),
                })
            }
        }
    }

    /// Opens (creating) `keys.db` in `data_dir`.
    pub fn open_in(data_dir: &Path) -> Result<Self, KeyError> {
        std::fs::create_dir_all(data_dir).map_err(|source| KeyError::Dir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(KEYS_FILE);
        let conn = crate::sqlite::shared_wal(&path)?;
        crate::sqlite::lock(&conn).execute_batch(
            "CREATE TABLE IF NOT EXISTS api_keys (
                id TEXT PRIMARY KEY,
                hash TEXT NOT NULL UNIQUE,
                name TEXT,
                role TEXT NOT NULL CHECK (role IN ('merchant', 'admin')),
                merchant TEXT,
                created_at TEXT NOT NULL,
                revoked_at TEXT
            );",
        )?;
        Ok(KeyStore {
            backend: Box::new(SqliteKeys { conn }),
            path,
        })
    }

    /// Path of the SQLite database file (empty for a Redis key store).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a key for `merchant` (or an admin key when `None`).
    pub fn create(
        &self,
        merchant: Option<&MerchantId>,
        name: Option<&str>,
    ) -> Result<CreatedKey, KeyError> {
        let id = format!("key_{}", random_hex(8));
        let key = format!("mx_{}", random_hex(32));
        let role = if merchant.is_some() {
            Role::Merchant
        } else {
            Role::Admin
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.backend
            .insert(&id, &hash(&key), name, role, merchant, &now)?;
        Ok(CreatedKey {
            id,
            key,
            merchant: merchant.map(|m| m.as_str().to_owned()),
            role,
        })
    }

    /// Every key, oldest first.
    pub fn list(&self) -> Result<Vec<KeyInfo>, KeyError> {
        self.backend.list()
    }

    /// Revokes key `id`; revoking twice is not an error.
    pub fn revoke(&self, id: &str) -> Result<(), KeyError> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.backend.revoke(id, &now)
    }

    /// The owner of `key` when it is a live (not revoked) key.
    pub fn authenticate(&self, key: &str) -> Result<Option<KeyOwner>, KeyError> {
        let Some((id, role, merchant)) = self.backend.lookup(&hash(key))? else {
            return Ok(None);
        };
        let role = parse_role(&role).ok_or_else(|| KeyError::Damaged(id.clone()))?;
        let merchant = match (role, merchant) {
            (Role::Merchant, Some(m)) => {
                Some(MerchantId::parse(&m).map_err(|_| KeyError::Damaged(id.clone()))?)
            }
            (Role::Merchant, None) => return Err(KeyError::Damaged(id)),
            (Role::Admin, _) => None,
        };
        Ok(Some(KeyOwner { id, role, merchant }))
    }
}

impl SqliteKeys {
    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, KeyError> {
        self.conn.lock().map_err(|_| KeyError::Poisoned)
    }
}

impl KeyBackend for SqliteKeys {
    fn insert(
        &self,
        id: &str,
        hash: &str,
        name: Option<&str>,
        role: Role,
        merchant: Option<&MerchantId>,
        now: &str,
    ) -> Result<(), KeyError> {
        self.conn()?.execute(
            "INSERT INTO api_keys (id, hash, name, role, merchant, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, hash, name, role.as_str(), merchant.map(MerchantId::as_str), now],
        )?;
        Ok(())
    }

    /// Every key, oldest first.
    fn list(&self) -> Result<Vec<KeyInfo>, KeyError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT id, name, role, merchant, created_at, revoked_at FROM api_keys ORDER BY rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, role, merchant, created_at, revoked_at) = row?;
            let role = parse_role(&role).ok_or_else(|| KeyError::Damaged(id.clone()))?;
            out.push(KeyInfo {
                id,
                name,
                role,
                merchant,
                created_at,
                revoked_at,
            });
        }
        Ok(out)
    }

    /// Revokes key `id`; revoking twice is not an error.
    fn revoke(&self, id: &str, now: &str) -> Result<(), KeyError> {
        let conn = self.conn()?;
        let exists: Option<String> = conn
            .query_row("SELECT id FROM api_keys WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        if exists.is_none() {
            return Err(KeyError::NotFound(id.to_owned()));
        }
        conn.execute(
            "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, now],
        )?;
        Ok(())
    }

    fn lookup(&self, hash: &str) -> Result<Option<LiveKey>, KeyError> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT id, role, merchant FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL",
                [hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KeyStore::open_in(dir.path()).expect("open");
        let m = MerchantId::parse("m_1").expect("mid");
        let k = store.create(Some(&m), Some("bot")).expect("create");
        assert!(k.key.starts_with("mx_") && k.key.len() == 67);
        let owner = store.authenticate(&k.key).expect("auth").expect("live");
        assert_eq!(owner.role, Role::Merchant);
        assert_eq!(owner.merchant.as_ref().map(MerchantId::as_str), Some("m_1"));
        assert!(store.authenticate("mx_wrong").expect("auth").is_none());
        let listed = serde_json::to_string(&store.list().expect("list")).expect("json");
        assert!(!listed.contains(&k.key));
        store.revoke(&k.id).expect("revoke");
        assert!(store.authenticate(&k.key).expect("auth").is_none());
        assert!(matches!(
            store.revoke("key_none"),
            Err(KeyError::NotFound(_))
        ));
    }
}
