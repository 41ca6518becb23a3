//! Episodic memory: what the agent remembers about each merchant across sessions.
//!
//! An [`Episode`] is a summary of a past conversation with its metadata (outcome, ticket ids,
//! ...) and, usually, an embedding of the summary. Episodes belong to exactly one
//! [`MerchantId`]; every operation except [`EpisodicStore::prune`] is scoped to one merchant,
//! and the scoping lives in the storage query itself (SQLite `WHERE merchant_id = ?`, Redis key
//! names), so a merchant never sees another merchant's episodes.
//!
//! Two backends implement the one contract [`EpisodicStore`]:
//!
//! * [`SqliteEpisodicStore`] — the default: one file (`episodes.db` in the data directory), WAL,
//!   busy timeout, one transaction per write;
//! * [`RedisEpisodicStore`] — shared by many agent workers: namespaced keys, a per-merchant
//!   sorted set by time plus one hash per episode, atomic Lua scripts, bounded retries.
//!
//! [`open`] picks one from a URL (`sqlite://PATH` or `redis://HOST:PORT/DB`).
//!
//! This module stores vectors; it does not compute them. Callers embed summaries and queries
//! (the CLI uses [`crate::embed::MiniLmEmbedder`]).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::merchant::MerchantId;

mod episode;
mod error;
mod hints;
mod hybrid;
pub mod import;
pub mod redis;
pub mod sqlite;
mod vector;
mod words;

pub use episode::{
    parse_occurred_at, Episode, EpisodeDraft, EpisodeId, ScoredEpisode, MAX_EMBEDDING_DIM,
    MAX_METADATA_BYTES, MAX_SUMMARY_BYTES,
};
pub use error::EpisodicError;
pub use hints::{date_span, dense_query_text, DAYS_AFTER, DAYS_BEFORE};
pub use hybrid::{Fusion, SearchQuery, DEFAULT_CACHE_BYTES};
pub use redis::{RedisEpisodicStore, RedisOptions};
pub use sqlite::{SqliteEpisodicStore, SqliteOptions};

/// File name of the default SQLite store inside the data directory.
pub const DEFAULT_SQLITE_FILE: &str = "episodes.db";

/// Per-merchant episodic memory. Implementations are cheap to share (`Arc<dyn EpisodicStore>`)
/// and safe to call from many tasks at once.
///
/// Contract (checked by `tests/episodic_conformance.rs` against every backend):
/// * `save` is atomic: an episode is either entirely visible or not at all;
/// * `created_at` is strictly increasing per merchant in save order, so [`recent`](Self::recent)
///   is a stable, newest-first order;
/// * nothing in one merchant's results ever comes from another merchant.
#[async_trait]
pub trait EpisodicStore: Send + Sync {
    /// Validates and stores a new episode for `merchant`; returns it with its id and time.
    async fn save(
        &self,
        merchant: &MerchantId,
        draft: EpisodeDraft,
    ) -> Result<Episode, EpisodicError>;

    /// Validates every draft, then stores them in one write (one transaction on SQLite, one
    /// pipeline of atomic scripts on Redis). Drafts whose idempotency key was already saved are
    /// skipped. Returns how many episodes were newly stored. Nothing is stored if a draft is
    /// invalid.
    async fn save_many(
        &self,
        merchant: &MerchantId,
        drafts: Vec<EpisodeDraft>,
    ) -> Result<u64, EpisodicError>;

    /// The `n` most recent episodes of `merchant`, newest first by `occurred_at` when present,
    /// else by `created_at` (ties: the later saved first).
    async fn recent(&self, merchant: &MerchantId, n: usize) -> Result<Vec<Episode>, EpisodicError>;

    /// The `k` episodes of `merchant` whose embeddings are most cosine-similar to `query`,
    /// best first (ties: newer first). Episodes saved without an embedding are not candidates.
    async fn similar(
        &self,
        merchant: &MerchantId,
        query: &[f32],
        k: usize,
    ) -> Result<Vec<ScoredEpisode>, EpisodicError>;

    /// Hybrid search among `merchant`'s episodes: BM25 over the summaries fused with cosine
    /// over the embeddings (when `query.vector` is given), best first, scores fused
    /// ([`Fusion`]). Served from an in-process per-merchant index rebuilt whenever the
    /// merchant's version counter (bumped by every write) moves.
    async fn search(
        &self,
        merchant: &MerchantId,
        query: &SearchQuery,
    ) -> Result<Vec<ScoredEpisode>, EpisodicError>;

    /// The distinct speakers of `merchant`'s episodes (their string `metadata.speaker`), in
    /// first-saved order, from the same index [`search`](Self::search) uses. Callers take
    /// them out of a query before embedding it ([`dense_query_text`]). The default, for a
    /// store that keeps no speakers, is none.
    async fn speakers(&self, merchant: &MerchantId) -> Result<Vec<String>, EpisodicError> {
        let _ = merchant;
        Ok(Vec::new())
    }

    /// Removes `merchant`'s episodes that happened (`occurred_at`, else `created_at`)
    /// strictly before `before`; returns how many were removed.
    async fn forget_before(
        &self,
        merchant: &MerchantId,
        before: DateTime<Utc>,
    ) -> Result<u64, EpisodicError>;

    /// One episode of `merchant` by id; `None` if it does not exist or belongs to another merchant.
    async fn get(
        &self,
        merchant: &MerchantId,
        id: EpisodeId,
    ) -> Result<Option<Episode>, EpisodicError>;

    /// Number of episodes stored for `merchant`.
    async fn count(&self, merchant: &MerchantId) -> Result<u64, EpisodicError>;

    /// Erases everything stored for `merchant`; returns how many episodes were removed.
    async fn forget(&self, merchant: &MerchantId) -> Result<u64, EpisodicError>;

    /// Removes every episode (of every merchant) created strictly before `older_than`;
    /// returns how many were removed.
    async fn prune(&self, older_than: DateTime<Utc>) -> Result<u64, EpisodicError>;

    /// Where the store lives, for messages: `sqlite://PATH` or `redis://HOST:PORT/DB`
    /// (never with credentials).
    fn describe(&self) -> String;
}

pub use crate::store_url::StoreUrl;

/// Parses an `--episodic` URL: `sqlite://PATH` or `redis://HOST:PORT/DB` (the one parser,
/// [`crate::store_url`]). Errors never echo more than the scheme.
pub fn parse_url(url: &str) -> Result<StoreUrl, EpisodicError> {
    use crate::store_url::Scheme;
    StoreUrl::parse(url, &[Scheme::Sqlite, Scheme::Redis], DEFAULT_SQLITE_FILE)
        .map_err(|e| EpisodicError::InvalidUrl(e.0))
}

/// Opens the store named by `url`, or the default SQLite file `episodes.db` in `data_dir`
/// (created if missing) when `url` is `None`.
pub async fn open(
    url: Option<&str>,
    data_dir: &Path,
) -> Result<Arc<dyn EpisodicStore>, EpisodicError> {
    open_with_cache(url, data_dir, DEFAULT_CACHE_BYTES).await
}

/// [`open`] with a byte budget for the in-process search-index cache (`--episodic-cache-mb`).
pub async fn open_with_cache(
    url: Option<&str>,
    data_dir: &Path,
    cache_bytes: u64,
) -> Result<Arc<dyn EpisodicStore>, EpisodicError> {
    let parsed = match url {
        Some(u) => parse_url(u)?,
        None => StoreUrl::Sqlite(data_dir.join(DEFAULT_SQLITE_FILE)),
    };
    match parsed {
        StoreUrl::Sqlite(path) => {
            let opts = SqliteOptions {
                cache_bytes,
                ..SqliteOptions::default()
            };
            let store = SqliteEpisodicStore::open(&path, opts).await?;
            Ok(Arc::new(store))
        }
        StoreUrl::File(_) => Err(EpisodicError::InvalidUrl(
            "must be sqlite://PATH or redis://HOST:PORT/DB (got scheme \"file\")".into(),
        )),
        StoreUrl::Redis(u) => {
            let opts = RedisOptions {
                cache_bytes,
                ..RedisOptions::default()
            };
            let store = RedisEpisodicStore::connect(&u, opts).await?;
            Ok(Arc::new(store))
        }
    }
}

/// Opens the store named by `url` (or the default SQLite file) for reading, creating nothing:
/// `Ok(None)` when the default file does not exist yet, [`EpisodicError::Missing`] when a
/// SQLite file named by `url` does not exist.
pub async fn open_existing(
    url: Option<&str>,
    data_dir: &Path,
) -> Result<Option<Arc<dyn EpisodicStore>>, EpisodicError> {
    let parsed = match url {
        Some(u) => parse_url(u)?,
        None => StoreUrl::Sqlite(data_dir.join(DEFAULT_SQLITE_FILE)),
    };
    if let StoreUrl::Sqlite(path) = &parsed {
        if !path.exists() {
            return match url {
                Some(_) => Err(EpisodicError::Missing { path: path.clone() }),
                None => Ok(None),
            };
        }
    }
    open(url, data_dir).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("sqlite:///tmp/e.db").unwrap(),
            StoreUrl::Sqlite("/tmp/e.db".into())
        );
        assert_eq!(
            parse_url("sqlite://rel/e.db").unwrap(),
            StoreUrl::Sqlite("rel/e.db".into())
        );
        assert_eq!(
            parse_url("redis://127.0.0.1:6379/2").unwrap(),
            StoreUrl::Redis("redis://127.0.0.1:6379/2".into())
        );
        let empty = parse_url("sqlite://").unwrap_err().to_string();
        assert!(empty.contains("episodes.db"), "{empty}");
        let err = parse_url("postgres://user:hunter2@db/x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("postgres") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(parse_url("episodes.db").is_err());
        assert!(parse_url("file:///srv/kb").is_err());
    }
}
