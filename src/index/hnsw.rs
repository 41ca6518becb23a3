//! [`HnswIndex`]: an HNSW graph in compact form, plus an exact
//! side list for vectors added since the last build and tombstones for removed ones.

use std::collections::HashMap;

use super::build::build_graph;
use super::flat::FlatIndex;
use super::graph::{Cand, Graph};
use super::{check_vector, HnswParams, IndexError, VectorIndex};

/// Approximate nearest-neighbour index over unit vectors (scores are dot products).
///
/// The graph is immutable once built. [`VectorIndex::add`] puts new vectors in an exact side
/// list searched alongside the graph, [`VectorIndex::remove`] tombstones graph nodes (they
/// still route searches but never appear in results); [`HnswIndex::compact`] rebuilds the graph
/// from the live vectors when [`HnswIndex::needs_compaction`] says the side list or the
/// tombstones have grown.
#[derive(Debug, Clone)]
pub struct HnswIndex {
    pub(crate) params: HnswParams,
    pub(crate) graph: Graph,
    /// Graph node → external id.
    pub(crate) ids: Vec<u64>,
    pub(crate) positions: HashMap<u64, u32>,
    pub(crate) dead: Vec<bool>,
    pub(crate) dead_count: usize,
    pub(crate) delta: FlatIndex,
    pub(crate) generation: u64,
}

impl HnswIndex {
    /// An empty index.
    pub fn new(dim: usize, params: HnswParams) -> Self {
        HnswIndex {
            graph: build_graph(dim, Vec::new(), &params),
            params,
            ids: Vec::new(),
            positions: HashMap::new(),
            dead: Vec::new(),
            dead_count: 0,
            delta: FlatIndex::new(dim),
            generation: 0,
        }
    }

    /// Builds the graph over `ids[i]` ↦ `vectors[i*dim..(i+1)*dim]` (unit vectors), inserting
    /// sequentially (deterministic). A repeated id keeps its last vector.
    pub fn build(
        dim: usize,
        params: HnswParams,
        ids: Vec<u64>,
        vectors: Vec<f32>,
    ) -> Result<Self, IndexError> {
        if dim == 0 {
            return Err(IndexError::Dimension {
                expected: 1,
                got: 0,
            });
        }
        if vectors.len() != ids.len() * dim {
            return Err(IndexError::Dimension {
                expected: ids.len() * dim,
                got: vectors.len(),
            });
        }
        for v in vectors.chunks_exact(dim) {
            check_vector(dim, v)?;
        }
        let mut positions: HashMap<u64, u32> = HashMap::with_capacity(ids.len());
        let (ids, vectors) = if has_duplicates(&ids) {
            let mut last: HashMap<u64, usize> = HashMap::new();
            for (i, &id) in ids.iter().enumerate() {
                last.insert(id, i);
            }
            let mut keep_ids = Vec::with_capacity(last.len());
            let mut keep_vecs = Vec::with_capacity(last.len() * dim);
            for (i, &id) in ids.iter().enumerate() {
                if last.get(&id) == Some(&i) {
                    keep_ids.push(id);
                    keep_vecs.extend_from_slice(&vectors[i * dim..(i + 1) * dim]);
                }
            }
            (keep_ids, keep_vecs)
        } else {
            (ids, vectors)
        };
        for (i, &id) in ids.iter().enumerate() {
            positions.insert(id, i as u32);
        }
        let graph = build_graph(dim, vectors, &params);
        let n = ids.len();
        Ok(HnswIndex {
            params,
            graph,
            ids,
            positions,
            dead: vec![false; n],
            dead_count: 0,
            delta: FlatIndex::new(dim),
            generation: 0,
        })
    }

    /// The parameters in force.
    pub fn params(&self) -> &HnswParams {
        &self.params
    }

    /// Sets the size of the candidate list explored by searches.
    pub fn set_ef_search(&mut self, ef: usize) {
        self.params.ef_search = ef.max(1);
    }

    /// Vectors in the exact side list (added since the last build).
    pub fn pending(&self) -> usize {
        self.delta.len()
    }

    /// Graph nodes removed since the last build.
    pub fn tombstones(&self) -> usize {
        self.dead_count
    }

    /// True when the side list or the tombstones are large enough that a rebuild pays off.
    pub fn needs_compaction(&self) -> bool {
        let n = self.graph.len();
        self.delta.len() > 1024.max(n / 10) || self.dead_count > 256.max(n / 5)
    }

    /// Rebuilds the graph from the live vectors, emptying the side list and the tombstones.
    pub fn compact(&mut self) {
        let dim = self.graph.dim;
        let live = self.len();
        let mut ids = Vec::with_capacity(live);
        let mut vectors = Vec::with_capacity(live * dim);
        for (node, &id) in self.ids.iter().enumerate() {
            if !self.dead[node] {
                ids.push(id);
                vectors.extend_from_slice(self.graph.vector(node as u32));
            }
        }
        ids.extend_from_slice(self.delta.ids());
        vectors.extend_from_slice(self.delta.vectors());
        let generation = self.generation;
        if let Ok(mut rebuilt) = Self::build(dim, self.params.clone(), ids, vectors) {
            rebuilt.generation = generation;
            *self = rebuilt;
        }
    }

    /// A caller-defined version tag stored with the index (the knowledge base stores its
    /// change counter here).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Sets the version tag.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// All live ids, in no particular order.
    pub fn ids(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .ids
            .iter()
            .zip(&self.dead)
            .filter(|(_, &d)| !d)
            .map(|(&id, _)| id)
            .collect();
        out.extend_from_slice(self.delta.ids());
        out
    }

    /// Approximate bytes of memory held by the index.
    pub fn memory_bytes(&self) -> usize {
        let g = &self.graph;
        g.vectors.len() * 4
            + g.level0.len() * 4
            + g.upper.len() * 4
            + g.upper_offsets.len() * 4
            + g.levels.len()
            + self.ids.len() * 8
            + self.positions.len() * 16
            + self.dead.len()
            + self.delta.vectors().len() * 4
            + self.delta.len() * 24
    }

    /// Searches with an explicit candidate-list size `ef` (≥ `k`).
    pub fn search_with_ef(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
    ) -> Result<Vec<(u64, f32)>, IndexError> {
        check_vector(self.graph.dim, query)?;
        let base: Vec<Cand> = if self.dead_count == 0 {
            self.graph.search(query, k, ef, &|_| false)
        } else {
            let dead = &self.dead;
            self.graph.search(query, k, ef, &|node| dead[node as usize])
        };
        let mut out: Vec<(u64, f32)> = base
            .into_iter()
            .map(|c| (self.ids[c.node as usize], 1.0 - c.dist))
            .collect();
        if !self.delta.is_empty() {
            out.extend(
                self.delta
                    .top_k(query, k)
                    .into_iter()
                    .map(|c| (self.delta.ids()[c.node as usize], 1.0 - c.dist)),
            );
            out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            out.truncate(k);
        }
        Ok(out)
    }
}

fn has_duplicates(ids: &[u64]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    !ids.iter().all(|id| seen.insert(*id))
}

impl VectorIndex for HnswIndex {
    fn dim(&self) -> usize {
        self.graph.dim
    }

    fn add(&mut self, id: u64, vector: &[f32]) -> Result<(), IndexError> {
        check_vector(self.graph.dim, vector)?;
        if let Some(&node) = self.positions.get(&id) {
            if !self.dead[node as usize] {
                self.dead[node as usize] = true;
                self.dead_count += 1;
            }
        }
        self.delta.add(id, vector)
    }

    fn remove(&mut self, id: u64) -> bool {
        let mut removed = self.delta.remove(id);
        if let Some(&node) = self.positions.get(&id) {
            if !self.dead[node as usize] {
                self.dead[node as usize] = true;
                self.dead_count += 1;
                removed = true;
            }
        }
        removed
    }

    fn search(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>, IndexError> {
        self.search_with_ef(query, k, self.params.ef_search.max(k))
    }

    fn len(&self) -> usize {
        self.graph.len() - self.dead_count + self.delta.len()
    }

    fn contains(&self, id: u64) -> bool {
        self.delta.contains(id)
            || self
                .positions
                .get(&id)
                .is_some_and(|&n| !self.dead[n as usize])
    }
}
