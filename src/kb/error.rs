use std::path::PathBuf;

use crate::embed::EmbedError;
use crate::index::IndexError;

/// Errors from the knowledge base.
#[derive(Debug, thiserror::Error)]
pub enum KbError {
    /// The SQLite store failed.
    #[error("knowledge-base database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// `kb.db` could not be opened (busy, read-only, not a database, ...).
    #[error("knowledge-base database error: {0}")]
    Open(#[from] crate::sqlite::SqliteError),
    /// The embedder failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The vector index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A file-system operation failed.
    #[error("{}: {source}", crate::kb::text::display_path(.path))]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The knowledge base was built with an embedder of another dimension.
    #[error("the knowledge base holds {stored}-dimensional vectors but the embedder produces {embedder}; use the same model or start a new data directory")]
    DimensionMismatch {
        /// Dimension recorded in the store.
        stored: usize,
        /// Dimension of the current embedder.
        embedder: usize,
    },
    /// The knowledge base's vectors were made with another embedder weight precision.
    #[error("the knowledge base holds vectors embedded at precision {stored} but the embedder runs at {embedder}; pass --precision {stored} (or MEMEX_PRECISION={stored}), or re-ingest into a new data directory with --precision {embedder} (`memex reindex` rebuilds the index from the stored vectors, it does not re-embed them)")]
    PrecisionMismatch {
        /// Precision recorded in the store.
        stored: String,
        /// Precision of the current embedder.
        embedder: String,
    },
    /// A stored vector BLOB has the wrong length.
    #[error("stored vector of chunk {chunk_id} is damaged; run `memex ingest` on its file again")]
    CorruptVector {
        /// The chunk.
        chunk_id: u64,
    },
    /// A read-only command found no knowledge base (it creates none).
    #[error("there is no knowledge base in {}; run `memex ingest PATH` first", crate::kb::text::display_path(.dir))]
    Missing {
        /// The data directory.
        dir: PathBuf,
    },
    /// The data directory or `kb.db` cannot be written.
    #[error("the knowledge base in {} is read-only; memex needs write access to that directory and its kb.db", crate::kb::text::display_path(.dir))]
    ReadOnly {
        /// The data directory.
        dir: PathBuf,
    },
    /// The embedder returned a different number of vectors than texts.
    #[error("the embedder returned {got} vectors for {expected} texts")]
    EmbedCount {
        /// Texts sent.
        expected: usize,
        /// Vectors received.
        got: usize,
    },
}
