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
pub mod follow;
pub mod fts;
pub mod fusion;
pub mod html;
mod ingest;
pub mod loader;
pub mod markdown;
pub mod publish;
mod search;
mod store;
pub mod text;
pub mod walk;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::embed::Embedder;
use crate::index::{AnyIndex, HnswParams, IndexError, IndexKind, VectorIndex};

pub use chunk::{Block, Chunk, ChunkOptions};
pub use error::KbError;
pub use ingest::{FileStatus, IngestObserver, IngestOptions, IngestReport, NoProgress};
pub use loader::{FileKind, SkipReason};
pub use search::{SearchHit, SearchMode, MAX_K};
pub use store::{blob_to_vector, vector_to_blob};
pub use text::{display_path, escape_controls};
pub use walk::{resolve_link, WalkOptions};

use store::Store;

/// File name of the SQLite store inside the data directory.
pub const DB_FILE: &str = "kb.db";
/// File name of the persisted HNSW index inside the data directory.
pub const INDEX_FILE: &str = "kb.hnsw";

/// Knowledge-base settings.
#[derive(Debug, Clone)]
pub struct KbOptions {
    /// Which vector index backend to run on (each keeps its own file in the data directory).
    pub index: IndexKind,
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
            index: IndexKind::default(),
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
///
/// The store and index it serves can be replaced while it is shared ([`KnowledgeBase::swap_in`],
/// the hot swap of `memex serve --kb-url`): every call takes the served `Core` once at its
/// start and finishes on it, so a call in flight during a swap ends on the old generation and
/// a later call starts on the new one; no call ever sees a mix.
pub struct KnowledgeBase {
    current: RwLock<Arc<Core>>,
    embedder: Arc<dyn Embedder>,
    options: KbOptions,
}

/// One opened knowledge base: a SQLite store and the index cache beside it. What
/// [`KnowledgeBase`] serves, and what a swap replaces whole.
pub(crate) struct Core {
    dir: PathBuf,
    index_path: PathBuf,
    store: Mutex<Store>,
    index: RwLock<Option<AnyIndex>>,
    embedder: Arc<dyn Embedder>,
    options: KbOptions,
    /// The published generation this copy was made from (`--kb-url`), if any.
    published: Option<String>,
}

impl std::fmt::Debug for KnowledgeBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnowledgeBase")
            .field("dir", &self.dir())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl KnowledgeBase {
    fn from_core(core: Core) -> Self {
        KnowledgeBase {
            embedder: Arc::clone(&core.embedder),
            options: core.options.clone(),
            current: RwLock::new(Arc::new(core)),
        }
    }

    /// The core served now; a call keeps it until it returns.
    pub(crate) fn core(&self) -> Arc<Core> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Opens (creating if needed) the knowledge base in `dir` with default options.
    pub fn open(dir: &Path, embedder: Arc<dyn Embedder>) -> Result<Self, KbError> {
        Self::open_with(dir, embedder, KbOptions::default())
    }

    /// Opens the existing knowledge base in `dir` for a command that only reads it (search):
    /// creates nothing, fails with [`KbError::Missing`] when there is none and with
    /// [`KbError::ReadOnly`] when the directory or `kb.db` cannot be written (SQLite's WAL
    /// needs both, and the index cache is kept there).
    pub fn open_existing(
        dir: &Path,
        embedder: Arc<dyn Embedder>,
        options: KbOptions,
    ) -> Result<Self, KbError> {
        Core::open_existing(dir, embedder, options).map(Self::from_core)
    }

    /// Opens (creating if needed) the knowledge base in `dir`.
    pub fn open_with(
        dir: &Path,
        embedder: Arc<dyn Embedder>,
        options: KbOptions,
    ) -> Result<Self, KbError> {
        Core::open_with(dir, embedder, options).map(Self::from_core)
    }

    /// Opens the copy of published generation `generation` in `dir` with this knowledge
    /// base's embedder and options, brings its index up to date, and serves it from now on
    /// (calls already running finish on the old one).
    pub fn swap_in(&self, dir: &Path, generation: &str) -> Result<(), KbError> {
        let mut core = Core::open_with(dir, Arc::clone(&self.embedder), self.options.clone())?;
        core.published = Some(generation.to_string());
        core.sync_index(true)?;
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        *guard = Arc::new(core);
        Ok(())
    }

    /// Marks the store served now as a copy of published generation `generation`.
    pub fn set_published(&self, generation: &str) {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        if let Some(core) = Arc::get_mut(&mut guard) {
            core.published = Some(generation.to_string());
        }
    }

    /// The published generation served now (`--kb-url`), or `None` for a data directory's
    /// own knowledge base.
    pub fn published_generation(&self) -> Option<String> {
        self.core().published.clone()
    }

    /// The data directory served now.
    pub fn dir(&self) -> PathBuf {
        self.core().dir.clone()
    }

    /// Path of the persisted index file served now.
    pub fn index_path(&self) -> PathBuf {
        self.core().index_path.clone()
    }

    /// The embedder used for documents and queries.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// The options in force.
    pub fn options(&self) -> &KbOptions {
        &self.options
    }

    /// Counts of documents, chunks and index state.
    pub fn stats(&self) -> Result<KbStats, KbError> {
        self.core().stats()
    }

    /// Rebuilds the HNSW index from the vectors in SQLite and persists it; returns the number of
    /// vectors indexed.
    ///
    /// Chunks whose stored vector is damaged (NaN, infinity, wrong length) are re-embedded
    /// from their text first.
    pub fn reindex(&self) -> Result<usize, KbError> {
        self.core().reindex()
    }

    /// Re-embeds every chunk whose stored vector is damaged (NaN, infinity, wrong length)
    /// from its stored text; returns how many were repaired.
    pub fn repair_vectors(&self) -> Result<usize, KbError> {
        self.core().repair_vectors()
    }

    /// Brings the in-memory index up to date with the store: loads the index file if none is
    /// held, catches up with chunks added or removed since (by any process), rebuilds when the
    /// file is missing or unusable. With `persist`, a changed index is saved.
    pub fn sync_index(&self, persist: bool) -> Result<IndexSync, KbError> {
        self.core().sync_index(persist)
    }

    /// Writes a consistent copy of the served store into `dest` (a new, empty directory):
    /// `kb.db` by SQLite's `VACUUM INTO` (never a file copy of a live WAL database) and the
    /// index file as it stands after bringing it up to date. Returns the file names written.
    pub fn snapshot_into(&self, dest: &Path) -> Result<Vec<String>, KbError> {
        self.core().snapshot_into(dest)
    }
}

impl Core {
    /// Opens the existing knowledge base in `dir` for a command that only reads it (search):
    /// creates nothing, fails with [`KbError::Missing`] when there is none and with
    /// [`KbError::ReadOnly`] when the directory or `kb.db` cannot be written (SQLite's WAL
    /// needs both, and the index cache is kept there).
    pub(crate) fn open_existing(
        dir: &Path,
        embedder: Arc<dyn Embedder>,
        options: KbOptions,
    ) -> Result<Self, KbError> {
        let db = dir.join(DB_FILE);
        if !db.is_file() {
            return Err(KbError::Missing {
                dir: dir.to_path_buf(),
            });
        }
        let read_only = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.permissions().readonly());
        if read_only(dir) || read_only(&db) {
            return Err(KbError::ReadOnly {
                dir: dir.to_path_buf(),
            });
        }
        Self::open_with(dir, embedder, options).map_err(|e| match e {
            KbError::Open(
                crate::sqlite::SqliteError::ReadOnly { .. }
                | crate::sqlite::SqliteError::CannotOpen { .. },
            ) => KbError::ReadOnly {
                dir: dir.to_path_buf(),
            },
            KbError::Sqlite(ref s)
                if matches!(
                    s.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::ReadOnly)
                        | Some(rusqlite::ErrorCode::CannotOpen)
                        | Some(rusqlite::ErrorCode::PermissionDenied)
                ) =>
            {
                KbError::ReadOnly {
                    dir: dir.to_path_buf(),
                }
            }
            other => other,
        })
    }

    /// Opens (creating if needed) the knowledge base in `dir`.
    pub(crate) fn open_with(
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
        store.check_vector_precision(embedder.precision().as_str())?;
        options.chunking.max_tokens = options
            .chunking
            .max_tokens
            .min(embedder.max_tokens())
            .max(8);
        options.embed_batch = options.embed_batch.max(1);
        Ok(Core {
            dir: dir.to_path_buf(),
            index_path: dir.join(options.index.file_name()),
            store: Mutex::new(store),
            index: RwLock::new(None),
            embedder,
            options,
            published: None,
        })
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        crate::sqlite::lock(&self.store)
    }

    /// See [`KnowledgeBase::snapshot_into`].
    pub(crate) fn snapshot_into(&self, dest: &Path) -> Result<Vec<String>, KbError> {
        self.sync_index(true)?;
        let db = dest.join(DB_FILE);
        self.store().vacuum_into(&db)?;
        let mut files = vec![DB_FILE.to_string()];
        let held = self.index.read().unwrap_or_else(|p| p.into_inner());
        if let Some(idx) = held.as_ref() {
            let name = self.options.index.file_name();
            idx.save(&dest.join(name))?;
            files.push(name.to_string());
        }
        Ok(files)
    }

    /// Counts of documents, chunks and index state.
    pub(crate) fn stats(&self) -> Result<KbStats, KbError> {
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
    ///
    /// Chunks whose stored vector is damaged (NaN, infinity, wrong length) are re-embedded
    /// from their text first.
    pub(crate) fn reindex(&self) -> Result<usize, KbError> {
        self.repair_vectors()?;
        let mut guard = self.index.write().unwrap_or_else(|p| p.into_inner());
        let idx = self.rebuild()?;
        let n = idx.len();
        idx.save(&self.index_path)?;
        *guard = Some(idx);
        Ok(n)
    }

    /// Re-embeds every chunk whose stored vector is damaged (NaN, infinity, wrong length)
    /// from its stored text; returns how many were repaired.
    pub(crate) fn repair_vectors(&self) -> Result<usize, KbError> {
        let dim = self.embedder.dim();
        let damaged = self.store().damaged_chunks(dim)?;
        let mut repaired = 0;
        for id in damaged {
            let Some(text) = self.store().chunk_embedding_text(id)? else {
                continue;
            };
            let v = self.embedder.embed_one(&text)?;
            if v.len() != dim || v.iter().any(|x| !x.is_finite()) {
                tracing::warn!("chunk {id}: the embedder gave no usable vector; left as it is");
                continue;
            }
            self.store().set_vector(id, &v)?;
            repaired += 1;
        }
        Ok(repaired)
    }

    /// One warning per damaged chunk, naming it and its source.
    fn warn_damaged(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let rows = self.store().chunks(ids).unwrap_or_default();
        for id in ids {
            let source = rows
                .get(id)
                .map_or_else(|| "?".to_string(), |r| text::escape_controls(&r.source));
            tracing::warn!(
                "chunk {id} of {source} has a damaged vector (NaN, infinity or wrong length); \
                 left out of vector search until `memex reindex` or `memex ingest` re-embeds it"
            );
        }
    }

    fn rebuild(&self) -> Result<AnyIndex, KbError> {
        let dim = self.embedder.dim();
        let all = self.store().all_vectors(dim)?;
        self.warn_damaged(&all.damaged);
        let mut idx = AnyIndex::build(
            self.options.index,
            dim,
            self.options.hnsw.clone(),
            all.ids,
            all.vectors,
        )?;
        idx.set_generation(all.generation);
        Ok(idx)
    }

    /// Brings the in-memory index up to date with the store: loads the index file if none is
    /// held, catches up with chunks added or removed since (by any process), rebuilds when the
    /// file is missing or unusable. With `persist`, a changed index is saved.
    pub(crate) fn sync_index(&self, persist: bool) -> Result<IndexSync, KbError> {
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
            match AnyIndex::load(
                self.options.index,
                &self.index_path,
                self.options.hnsw.clone(),
            ) {
                Ok(idx) if idx.dim() == dim => {
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
                let (vectors, damaged) = self.store().vectors_for(&missing, dim)?;
                self.warn_damaged(&damaged);
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
