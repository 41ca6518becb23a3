//! Vector search over unit-length embeddings.
//!
//! * [`VectorIndex`] — the seam: add, remove, search, len.
//! * [`FlatIndex`] — exact search; ground truth for tests and small sets.
//! * [`HnswIndex`] — approximate search: an HNSW graph built by our own insertion code directly
//!   into a compact read-only layout that is searched without locks or per-query allocations,
//!   and persisted in our own validated format.
//! * [`HnswRsIndex`] — the `hnsw_rs` crate's graph, for comparison (`--index hnsw_rs`).
//! * [`AnyIndex`] / [`IndexKind`] — the backend chosen at run time, with the knowledge base's
//!   lifecycle (generation, compaction, persistence) over all three.
//!
//! Scores are dot products (cosine similarity for unit vectors): higher is closer.
//!
//! Architecture invariant: this module knows nothing about chunks, files or SQLite; ids are
//! opaque `u64`s chosen by the caller.

mod backend;
mod build;
pub mod distance;
mod flat;
mod graph;
mod hnsw;
mod hnswrs;
pub(crate) mod persist;
mod vecfile;

use std::path::PathBuf;

pub use backend::{AnyIndex, IndexKind};
pub use distance::{dot, normalize, ClampedDot};
pub use flat::FlatIndex;
pub use hnsw::HnswIndex;
pub use hnswrs::{ClampedDotDistance, HnswRsIndex};

/// Errors from the vector index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A vector has the wrong number of components.
    #[error("vector has dimension {got}, the index expects {expected}")]
    Dimension {
        /// The index's dimension.
        expected: usize,
        /// The offending vector's dimension.
        got: usize,
    },
    /// A vector contains NaN or infinity.
    #[error("vector contains a non-finite component")]
    NonFinite,
    /// An index file is damaged, truncated or not an index file.
    #[error("index file is corrupt: {0}")]
    Corrupt(String),
    /// Reading or writing an index file failed.
    #[error("index file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Default seed of the level assignment ([`HnswParams::seed`]).
pub const DEFAULT_SEED: u64 = 0x6d65_6d65_785f_686e;

/// HNSW construction and search parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HnswParams {
    /// Neighbours per node on the upper layers (layer 0 keeps twice as many).
    pub m: usize,
    /// Candidate-list size while building.
    pub ef_construction: usize,
    /// Candidate-list size while searching (raised to `k` when smaller).
    pub ef_search: usize,
    /// Seed of the random level assignment while building (not stored with the index).
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 200,
            ef_search: 64,
            seed: DEFAULT_SEED,
        }
    }
}

/// A searchable set of unit vectors keyed by caller-chosen ids.
pub trait VectorIndex: Send + Sync {
    /// Dimension of every vector.
    fn dim(&self) -> usize;

    /// Adds `vector` under `id`, replacing any vector already stored under it.
    fn add(&mut self, id: u64, vector: &[f32]) -> Result<(), IndexError>;

    /// Removes `id`; returns whether it was present.
    fn remove(&mut self, id: u64) -> bool;

    /// The `k` best `(id, score)` pairs for `query`, best first; the score is the dot product.
    fn search(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>, IndexError>;

    /// Number of live vectors.
    fn len(&self) -> usize;

    /// True when no vector is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is stored (and not removed).
    fn contains(&self, id: u64) -> bool;
}

/// Checks a vector's dimension and finiteness.
pub(crate) fn check_vector(dim: usize, v: &[f32]) -> Result<(), IndexError> {
    if v.len() != dim {
        return Err(IndexError::Dimension {
            expected: dim,
            got: v.len(),
        });
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(IndexError::NonFinite);
    }
    Ok(())
}

/// Fraction of `truth`'s ids found in `found` (recall@k when both hold k ids).
pub fn recall(truth: &[(u64, f32)], found: &[(u64, f32)]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let hits = truth
        .iter()
        .filter(|(id, _)| found.iter().any(|(f, _)| f == id))
        .count();
    hits as f64 / truth.len() as f64
}
