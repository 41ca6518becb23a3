//! The key store's records, errors and backend seam, shared by the facade
//! ([`super::KeyStore`]) and its backends, so that no backend names the facade.

use std::path::PathBuf;

use serde::Serialize;

use crate::merchant::MerchantId;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Acts for one merchant only.
    Merchant,
    /// Acts for every merchant, ingests documents, decides approvals.
    Admin,
}

impl Role {
    /// `"merchant"` or `"admin"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Merchant => "merchant",
            Role::Admin => "admin",
        }
    }
}

/// Errors of the key store.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// SQLite failed.
    #[error("key store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// `keys.db` could not be opened (busy, read-only, not a database).
    #[error(transparent)]
    Open(#[from] crate::sqlite::SqliteError),
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A stored row is not one memex wrote.
    #[error("key store row {0} is damaged")]
    Damaged(String),
    /// No key has this id.
    #[error("no key {0}")]
    NotFound(String),
    /// The store's lock was poisoned by a panic elsewhere.
    #[error("the key store is unusable after an earlier failure")]
    Poisoned,
    /// The Redis key store failed (unreachable, refused, damaged value).
    #[error(transparent)]
    Redis(#[from] crate::redisdb::RedisDbError),
}

/// A key as listed (never the key itself).
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// Public id (`key_…`), safe to log.
    pub id: String,
    /// Name given at creation.
    pub name: Option<String>,
    /// `merchant` or `admin`.
    pub role: Role,
    /// The merchant of a merchant key.
    pub merchant: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 revocation time, if revoked.
    pub revoked_at: Option<String>,
}

/// A freshly created key: the only time the secret exists outside the caller.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedKey {
    /// Public id.
    pub id: String,
    /// The secret to put in `Authorization: Bearer …`.
    pub key: String,
    /// The merchant, for a merchant key.
    pub merchant: Option<String>,
    /// `merchant` or `admin`.
    pub role: Role,
}

/// Who a valid key belongs to.
#[derive(Debug, Clone)]
pub struct KeyOwner {
    /// Public id.
    pub id: String,
    /// Role.
    pub role: Role,
    /// Merchant of a merchant key.
    pub merchant: Option<MerchantId>,
}

/// A live key as a backend finds it: id, role (`merchant`/`admin`), merchant.
pub type LiveKey = (String, String, Option<String>);

/// One backend of the key store; each method means what the [`super::KeyStore`] method of the same
/// name does.
pub trait KeyBackend: Send + Sync {
    /// Stores a new key (`id`, the SHA-256 `hash` of the secret) made at `now`.
    fn insert(
        &self,
        id: &str,
        hash: &str,
        name: Option<&str>,
        role: Role,
        merchant: Option<&MerchantId>,
        now: &str,
    ) -> Result<(), KeyError>;
    /// See [`super::KeyStore::list`].
    fn list(&self) -> Result<Vec<KeyInfo>, KeyError>;
    /// Revokes `id` at `now` (see [`super::KeyStore::revoke`]).
    fn revoke(&self, id: &str, now: &str) -> Result<(), KeyError>;
    /// The live key whose secret hashes to `hash`: its id, role and merchant.
    fn lookup(&self, hash: &str) -> Result<Option<LiveKey>, KeyError>;
}

pub(crate) fn parse_role(s: &str) -> Option<Role> {
    match s {
        "merchant" => Some(Role::Merchant),
        "admin" => Some(Role::Admin),
        _ => None,
    }
}
