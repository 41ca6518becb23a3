//! The knowledge base (semantic memory): documents from disk, chunked by structure, embedded,
//! stored in SQLite with an FTS5 index, and searched by hybrid retrieval (HNSW ∪ BM25, fused by
//! reciprocal rank).
//!
//! Invariants:
//! * SQLite (`kb.db`) is the source of truth; vectors live there as little-endian f32 BLOBs.
//!   The HNSW file (`kb.hnsw`) is a cache: written under a temporary name, fsynced, renamed;
//!   rebuilt or caught up whenever it is missing, stale (its generation differs from the
//!   store's) or corrupt.
//! * Each file is written in one transaction: a killed ingestion leaves whole documents only,
//!   and the next run finishes the rest (content hashes decide what is left to do).
//! * Chunking, fusion and query sanitising are pure functions ([`chunk`], [`fusion`], [`fts`]).
//!
//! The module knows nothing about merchants or agents: it stores shared reference documents.

pub mod chunk;
mod error;
pub mod fts;
pub mod fusion;
pub mod html;
mod ingest;
pub mod loader;
pub mod markdown;
mod search;
mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::embed::Embedder;
use crate::index::{HnswIndex, HnswParams, IndexError, VectorIndex};

pub use chunk::{Block, Chunk, ChunkOptions};
pub use error::KbError;
pub use ingest::{FileStatus, IngestObserver, IngestOptions, IngestReport, NoProgress};
pub use loader::{FileKind, SkipReason};
pub use search::{SearchHit, SearchMode};
pub use store::{blob_to_vector, vector_to_blob};

use store::Store;

/// File name of the SQLite store inside the data directory.
pub const DB_FILE: &str = "kb.db";
/// File name of the persisted HNSW index inside the data directory.
pub const INDEX_FILE: &str = "kb.hnsw";

/// Knowledge-base settings.
#[derive(Debug, Clone)]
pub struct KbOptions {
    /// HNSW build and search parameters.
    pub hnsw: HnswParams,
    /// Chunk size and overlap; `max_tokens` is capped at the embedder's limit.
    pub chunking: ChunkOptions,
    /// Chunks per call to the embedder during ingestion.
    pub embed_batch: usize,
    /// Most rows the keyword leg lets FTS5 score with BM25 per query: rarer terms are kept,
    /// the most common dropped until their summed document frequency fits (see
    /// [`fts::plan`]). Bounds keyword latency at any corpus size.
    pub keyword_budget: usize,
}

impl Default for KbOptions {
    fn default() -> Self {
        KbOptions {
            hnsw: HnswParams::default(),
            chunking: ChunkOptions::default(),
            embed_batch: 64,
            keyword_budget: 1000,
        }
    }
}

/// Sizes of the knowledge base.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KbStats {
    /// Documents stored.
    pub documents: u64,
    /// Chunks stored.
    pub chunks: u64,
    /// Vectors in the in-memory index (after synchronising with the store).
    pub indexed: usize,
    /// Vectors added since the graph was last built (searched exactly).
    pub pending: usize,
    /// Graph nodes removed since the graph was last built.
    pub tombstones: usize,
}

/// How the index was brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexSync {
    /// It already matched the store.
    Fresh,
    /// Loaded or held, then caught up with added/removed chunks.
    CaughtUp,
    /// Rebuilt from the vectors in the store.
    Rebuilt,
}

/// A knowledge base in a data directory.
pub struct KnowledgeBase {
    dir: PathBuf,
    index_path: PathBuf,
    store: Mutex<Store>,
    index: RwLock<Option<HnswIndex>>,
    embedder: Arc<dyn Embedder>,
    options: KbOptions,
}

impl std::fmt::Debug for KnowledgeBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnowledgeBase")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl KnowledgeBase {
    /// Opens (creating if needed) the knowledge base in `dir` with default options.
    pub fn open(dir: &Path, embedder: Arc<dyn Embedder>) -> Result<Self, KbError> {
        Self::open_with(dir, embedder, KbOptions::default())
    }

    /// Opens (creating if needed) the knowledge base in `dir`.
    pub fn open_with(
        dir: &Path,
        embedder: Arc<dyn Embedder>,
        mut options: KbOptions,
    ) -> Result<Self, KbError> {
        std::fs::create_dir_all(dir).map_err(|e| KbError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let store = Store::open(&dir.join(DB_FILE))?;
        let dim = embedder.dim();
        match store.meta("dim")?.and_then(|d| d.parse::<usize>().ok()) {
            Some(stored) if stored != dim => {
                return Err(KbError::DimensionMismatch {
                    stored,
                    embedder: dim,
                })
            }
            Some(_) => {}
            None => store.set_meta("dim", &dim.to_string())?,
        }
        options.chunking.max_tokens = options
            .chunking
            .max_tokens
            .min(embedder.max_tokens())
            .max(8);
        options.embed_batch = options.embed_batch.max(1);
        Ok(KnowledgeBase {
            dir: dir.to_path_buf(),
            index_path: dir.join(INDEX_FILE),
            store: Mutex::new(store),
            index: RwLock::new(None),
            embedder,
            options,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the persisted index file.
    pub fn index_path(&self) -> &Path {
        &self.index_path
    }

    /// The embedder used for documents and queries.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// The options in force.
    pub fn options(&self) -> &KbOptions {
        &self.options
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts of documents, chunks and index state.
    pub fn stats(&self) -> Result<KbStats, KbError> {
        self.sync_index(false)?;
        let (documents, chunks) = self.store().counts()?;
        let guard = self.index.read().unwrap_or_else(|p| p.into_inner());
        let (indexed, pending, tombstones) = guard
            .as_ref()
            .map_or((0, 0, 0), |i| (i.len(), i.pending(), i.tombstones()));
        Ok(KbStats {
            documents,
            chunks,
            indexed,
            pending,
            tombstones,
        })
    }

    /// Rebuilds the HNSW index from the vectors in SQLite and persists it; returns the number of
    /// vectors indexed.
    pub fn reindex(&self) -> Result<usize, KbError> {
        let mut guard = self.index.write().unwrap_or_else(|p| p.into_inner());
        let idx = self.rebuild()?;
        let n = idx.len();
        idx.save(&self.index_path)?;
        *guard = Some(idx);
        Ok(n)
    }

    fn rebuild(&self) -> Result<HnswIndex, KbError> {
        let dim = self.embedder.dim();
        let (generation, ids, vectors) = self.store().all_vectors(dim)?;
        let mut idx = HnswIndex::build(dim, self.options.hnsw.clone(), ids, vectors)?;
        idx.set_generation(generation);
        Ok(idx)
    }

    /// Brings the in-memory index up to date with the store: loads the index file if none is
    /// held, catches up with chunks added or removed since (by any process), rebuilds when the
    /// file is missing or unusable. With `persist`, a changed index is saved.
    pub fn sync_index(&self, persist: bool) -> Result<IndexSync, KbError> {
        let generation = self.store().generation()?;
        {
            let guard = self.index.read().unwrap_or_else(|p| p.into_inner());
            if guard.as_ref().is_some_and(|i| i.generation() == generation) {
                return Ok(IndexSync::Fresh);
            }
        }
        let dim = self.embedder.dim();
        let mut guard = self.index.write().unwrap_or_else(|p| p.into_inner());
        let mut outcome = IndexSync::Fresh;
        if guard.is_none() {
            match HnswIndex::load(&self.index_path) {
                Ok(mut idx) if idx.dim() == dim => {
                    idx.set_ef_search(self.options.hnsw.ef_search);
                    *guard = Some(idx);
                }
                Ok(_) => {
                    tracing::warn!("index file has another dimension; rebuilding it");
                }
                Err(IndexError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("{e}; rebuilding the index from the store");
                }
            }
        }
        let (snapshot_generation, ids) = self.store().id_snapshot()?;
        let caught_up = match guard.as_mut() {
            Some(idx) if idx.generation() == snapshot_generation && idx.len() == ids.len() => true,
            Some(idx) => {
                let wanted: std::collections::HashSet<u64> = ids.iter().copied().collect();
                for id in idx.ids() {
                    if !wanted.contains(&id) {
                        idx.remove(id);
                    }
                }
                let missing: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|&id| !idx.contains(id))
                    .collect();
                let vectors = self.store().vectors_for(&missing)?;
                let mut ok = true;
                for (id, v) in vectors {
                    if idx.add(id, &v).is_err() {
                        ok = false;
                        break;
                    }
                }
                if ok {
                    if idx.needs_compaction() {
                        idx.compact();
                    }
                    idx.set_generation(snapshot_generation);
                    outcome = IndexSync::CaughtUp;
                }
                ok
            }
            None => false,
        };
        if !caught_up {
            *guard = Some(self.rebuild()?);
            outcome = IndexSync::Rebuilt;
        }
        if persist && outcome != IndexSync::Fresh {
            if let Some(idx) = guard.as_ref() {
                if let Err(e) = idx.save(&self.index_path) {
                    // The index is a cache: searching still works from memory.
                    tracing::warn!("could not save the index: {e}");
                }
            }
        }
        Ok(outcome)
    }
}
