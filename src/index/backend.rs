//! [`IndexKind`] and [`AnyIndex`]: the vector index a knowledge base runs on, chosen at run
//! time (`--index hnsw|hnsw_rs|flat`, `MEMEX_INDEX`).
//!
//! * `hnsw` (default) — memex's own graph ([`HnswIndex`]): the fastest and most accurate of
//!   the three on MiniLM vectors in BENCHMARKS.md, persisted with its graph;
//! * `hnsw_rs` — the `hnsw_rs` crate ([`HnswRsIndex`]), for comparison; its file holds the
//!   vectors and the graph is rebuilt on load;
//! * `flat` — exact search ([`FlatIndex`]), linear in the corpus per query.
//!
//! Each kind keeps its own file name in the data directory ([`IndexKind::file_name`]), so
//! switching between them never reads one backend's file as another's.

use std::path::Path;

use super::flat::FlatIndex;
use super::hnsw::HnswIndex;
use super::hnswrs::HnswRsIndex;
use super::{vecfile, HnswParams, IndexError, VectorIndex};

/// Which vector index backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IndexKind {
    /// memex's own HNSW graph (default).
    #[default]
    #[value(name = "hnsw")]
    Hnsw,
    /// The `hnsw_rs` crate's HNSW graph.
    #[value(name = "hnsw_rs")]
    HnswRs,
    /// Exact brute-force search.
    #[value(name = "flat")]
    Flat,
}

impl IndexKind {
    /// Every kind, default first.
    pub const ALL: [IndexKind; 3] = [IndexKind::Hnsw, IndexKind::HnswRs, IndexKind::Flat];

    /// The name used on the command line and in `MEMEX_INDEX`.
    pub fn name(self) -> &'static str {
        match self {
            IndexKind::Hnsw => "hnsw",
            IndexKind::HnswRs => "hnsw_rs",
            IndexKind::Flat => "flat",
        }
    }

    /// The index file's name inside a knowledge base's data directory.
    pub fn file_name(self) -> &'static str {
        match self {
            IndexKind::Hnsw => "kb.hnsw",
            IndexKind::HnswRs => "kb.hnsw_rs.vec",
            IndexKind::Flat => "kb.flat.vec",
        }
    }
}

impl std::fmt::Display for IndexKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A vector index of any [`IndexKind`], with the lifecycle the knowledge base needs (build,
/// generation, compaction, persistence) whichever backend is inside.
#[derive(Debug)]
pub enum AnyIndex {
    /// memex's own HNSW.
    Hnsw(HnswIndex),
    /// The `hnsw_rs` graph.
    HnswRs(HnswRsIndex),
    /// Exact search, with the generation stored alongside.
    Flat(FlatIndex, u64),
}

impl AnyIndex {
    /// An empty index of `kind`.
    pub fn new(kind: IndexKind, dim: usize, params: HnswParams) -> Self {
        match kind {
            IndexKind::Hnsw => AnyIndex::Hnsw(HnswIndex::new(dim, params)),
            IndexKind::HnswRs => AnyIndex::HnswRs(HnswRsIndex::new(dim, params)),
            IndexKind::Flat => AnyIndex::Flat(FlatIndex::new(dim), 0),
        }
    }

    /// Builds an index of `kind` over `ids[i]` ↦ `vectors[i*dim..(i+1)*dim]`.
    pub fn build(
        kind: IndexKind,
        dim: usize,
        params: HnswParams,
        ids: Vec<u64>,
        vectors: Vec<f32>,
    ) -> Result<Self, IndexError> {
        Ok(match kind {
            IndexKind::Hnsw => AnyIndex::Hnsw(HnswIndex::build(dim, params, ids, vectors)?),
            IndexKind::HnswRs => AnyIndex::HnswRs(HnswRsIndex::build(dim, params, ids, vectors)?),
            IndexKind::Flat => {
                if dim == 0 || vectors.len() != ids.len() * dim {
                    return Err(IndexError::Dimension {
                        expected: ids.len() * dim.max(1),
                        got: vectors.len(),
                    });
                }
                let mut flat = FlatIndex::new(dim);
                for (id, v) in ids.iter().zip(vectors.chunks_exact(dim)) {
                    flat.add(*id, v)?;
                }
                AnyIndex::Flat(flat, 0)
            }
        })
    }

    /// Reads an index of `kind` written by [`AnyIndex::save`]; `params` apply to backends that
    /// rebuild on load (and set the search list size of all graphs).
    pub fn load(kind: IndexKind, path: &Path, params: HnswParams) -> Result<Self, IndexError> {
        Ok(match kind {
            IndexKind::Hnsw => {
                let mut idx = HnswIndex::load(path)?;
                idx.set_ef_search(params.ef_search);
                AnyIndex::Hnsw(idx)
            }
            IndexKind::HnswRs => AnyIndex::HnswRs(HnswRsIndex::load(path, params)?),
            IndexKind::Flat => {
                let file = vecfile::load(path, vecfile::Kind::Flat)?;
                let mut flat = FlatIndex::new(file.dim);
                for (id, v) in file.ids.iter().zip(file.vectors.chunks_exact(file.dim)) {
                    flat.add(*id, v)?;
                }
                AnyIndex::Flat(flat, file.generation)
            }
        })
    }

    /// Writes the index to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), IndexError> {
        match self {
            AnyIndex::Hnsw(i) => i.save(path),
            AnyIndex::HnswRs(i) => i.save(path),
            AnyIndex::Flat(i, generation) => vecfile::save(
                path,
                vecfile::Kind::Flat,
                i.dim(),
                *generation,
                i.ids(),
                i.vectors(),
            ),
        }
    }

    /// Which backend this is.
    pub fn kind(&self) -> IndexKind {
        match self {
            AnyIndex::Hnsw(_) => IndexKind::Hnsw,
            AnyIndex::HnswRs(_) => IndexKind::HnswRs,
            AnyIndex::Flat(..) => IndexKind::Flat,
        }
    }

    /// Sets the size of the candidate list explored by graph searches (exact search ignores it).
    pub fn set_ef_search(&mut self, ef: usize) {
        match self {
            AnyIndex::Hnsw(i) => i.set_ef_search(ef),
            AnyIndex::HnswRs(i) => i.set_ef_search(ef),
            AnyIndex::Flat(..) => {}
        }
    }

    /// The caller-chosen generation stored with the index.
    pub fn generation(&self) -> u64 {
        match self {
            AnyIndex::Hnsw(i) => i.generation(),
            AnyIndex::HnswRs(i) => i.generation(),
            AnyIndex::Flat(_, g) => *g,
        }
    }

    /// Sets the generation stored with the index.
    pub fn set_generation(&mut self, generation: u64) {
        match self {
            AnyIndex::Hnsw(i) => i.set_generation(generation),
            AnyIndex::HnswRs(i) => i.set_generation(generation),
            AnyIndex::Flat(_, g) => *g = generation,
        }
    }

    /// Vectors searched exactly beside the graph (only memex's HNSW has such a list).
    pub fn pending(&self) -> usize {
        match self {
            AnyIndex::Hnsw(i) => i.pending(),
            _ => 0,
        }
    }

    /// Removed vectors still in the graph.
    pub fn tombstones(&self) -> usize {
        match self {
            AnyIndex::Hnsw(i) => i.tombstones(),
            AnyIndex::HnswRs(i) => i.tombstones(),
            AnyIndex::Flat(..) => 0,
        }
    }

    /// The live ids.
    pub fn ids(&self) -> Vec<u64> {
        match self {
            AnyIndex::Hnsw(i) => i.ids(),
            AnyIndex::HnswRs(i) => i.ids(),
            AnyIndex::Flat(i, _) => i.ids().to_vec(),
        }
    }

    /// True when a rebuild pays off.
    pub fn needs_compaction(&self) -> bool {
        match self {
            AnyIndex::Hnsw(i) => i.needs_compaction(),
            AnyIndex::HnswRs(i) => i.needs_compaction(),
            AnyIndex::Flat(..) => false,
        }
    }

    /// Rebuilds the graph from the live vectors.
    pub fn compact(&mut self) {
        match self {
            AnyIndex::Hnsw(i) => i.compact(),
            AnyIndex::HnswRs(i) => i.compact(),
            AnyIndex::Flat(..) => {}
        }
    }

    fn inner(&self) -> &dyn VectorIndex {
        match self {
            AnyIndex::Hnsw(i) => i,
            AnyIndex::HnswRs(i) => i,
            AnyIndex::Flat(i, _) => i,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn VectorIndex {
        match self {
            AnyIndex::Hnsw(i) => i,
            AnyIndex::HnswRs(i) => i,
            AnyIndex::Flat(i, _) => i,
        }
    }
}

impl VectorIndex for AnyIndex {
    fn dim(&self) -> usize {
        self.inner().dim()
    }

    fn add(&mut self, id: u64, vector: &[f32]) -> Result<(), IndexError> {
        self.inner_mut().add(id, vector)
    }

    fn remove(&mut self, id: u64) -> bool {
        self.inner_mut().remove(id)
    }

    fn search(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>, IndexError> {
        self.inner().search(query, k)
    }

    fn len(&self) -> usize {
        self.inner().len()
    }

    fn contains(&self, id: u64) -> bool {
        self.inner().contains(id)
    }
}
