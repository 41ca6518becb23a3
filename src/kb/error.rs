use std::path::PathBuf;

use crate::embed::EmbedError;
use crate::index::IndexError;

/// Errors from the knowledge base.
#[derive(Debug, thiserror::Error)]
pub enum KbError {
    /// The SQLite store failed.
    #[error("knowledge-base database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The embedder failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The vector index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A file-system operation failed.
    #[error("{path}: {source}")]
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
    /// A stored vector BLOB has the wrong length.
    #[error("stored vector of chunk {chunk_id} is damaged; run `memex ingest` on its file again")]
    CorruptVector {
        /// The chunk.
        chunk_id: u64,
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
