//! [`HnswRsIndex`]: the `hnsw_rs` crate's HNSW graph behind [`VectorIndex`], selectable with
//! `--index hnsw_rs` so that memex's own graph can be compared with a maintained library on
//! the same data.
//!
//! Three things `hnsw_rs` does not do are handled here:
//!
//! * **Distance.** Its scalar `DistDot` asserts a non-negative `1 - dot` and panics on real
//!   MiniLM vectors, where rounding lifts the dot product of near-duplicates above 1; the
//!   graph uses [`ClampedDot`] instead.
//! * **Removal.** The graph cannot delete, so [`VectorIndex::remove`] tombstones the slot and
//!   searches filter tombstones out inside the graph walk; [`HnswRsIndex::compact`] rebuilds
//!   from the live vectors when [`HnswRsIndex::needs_compaction`] says they have grown.
//! * **Persistence.** Its reload borrows the graph from the loader object, so memex stores the
//!   live ids and vectors in its own validated file ([`super::vecfile`]) and rebuilds the
//!   graph on load (timed in BENCHMARKS.md).

use std::collections::HashMap;
use std::path::Path;

use hnsw_rs::prelude::{Distance, Hnsw};

use super::distance::ClampedDot;
use super::{check_vector, vecfile, HnswParams, IndexError, VectorIndex};

/// Layers `hnsw_rs` may use (its own maximum).
const MAX_LAYERS: usize = 16;

/// [`ClampedDot`] in the shape `hnsw_rs` wants.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClampedDotDistance;

impl Distance<f32> for ClampedDotDistance {
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        ClampedDot::distance(va, vb)
    }
}

/// An HNSW index on the `hnsw_rs` crate, keyed by caller-chosen `u64` ids.
pub struct HnswRsIndex {
    dim: usize,
    params: HnswParams,
    graph: Hnsw<'static, f32, ClampedDotDistance>,
    /// Graph slot (the `hnsw_rs` data id) → caller id.
    slots: Vec<u64>,
    /// Graph slot → its vector (kept for persistence and compaction).
    vectors: Vec<f32>,
    /// Whether each slot is still live.
    live: Vec<bool>,
    /// Caller id → its live slot.
    positions: HashMap<u64, usize>,
    dead_count: usize,
    generation: u64,
}

impl std::fmt::Debug for HnswRsIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswRsIndex")
            .field("dim", &self.dim)
            .field("params", &self.params)
            .field("len", &self.len())
            .field("tombstones", &self.dead_count)
            .finish()
    }
}

fn new_graph(params: &HnswParams, capacity: usize) -> Hnsw<'static, f32, ClampedDotDistance> {
    Hnsw::new(
        params.m.clamp(2, 255),
        capacity.max(1),
        MAX_LAYERS,
        params.ef_construction.max(1),
        ClampedDotDistance,
    )
}

impl HnswRsIndex {
    /// An empty index.
    pub fn new(dim: usize, params: HnswParams) -> Self {
        HnswRsIndex {
            dim,
            graph: new_graph(&params, 1024),
            params,
            slots: Vec::new(),
            vectors: Vec::new(),
            live: Vec::new(),
            positions: HashMap::new(),
            dead_count: 0,
            generation: 0,
        }
    }

    /// Builds the graph over `ids[i]` ↦ `vectors[i*dim..(i+1)*dim]` (unit vectors) with
    /// `hnsw_rs`'s parallel insertion. A repeated id keeps its last vector.
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
        let mut last: HashMap<u64, usize> = HashMap::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            last.insert(id, i);
        }
        let mut index = HnswRsIndex {
            dim,
            graph: new_graph(&params, last.len()),
            params,
            slots: Vec::with_capacity(last.len()),
            vectors: Vec::with_capacity(last.len() * dim),
            live: Vec::with_capacity(last.len()),
            positions: HashMap::with_capacity(last.len()),
            dead_count: 0,
            generation: 0,
        };
        for (i, &id) in ids.iter().enumerate() {
            if last.get(&id) == Some(&i) {
                index.positions.insert(id, index.slots.len());
                index.slots.push(id);
                index.live.push(true);
                index
                    .vectors
                    .extend_from_slice(&vectors[i * dim..(i + 1) * dim]);
            }
        }
        let batch: Vec<(&[f32], usize)> = index
            .vectors
            .chunks_exact(dim)
            .enumerate()
            .map(|(slot, v)| (v, slot))
            .collect();
        index.graph.parallel_insert_slice(&batch);
        Ok(index)
    }

    /// The parameters in force.
    pub fn params(&self) -> &HnswParams {
        &self.params
    }

    /// Sets the size of the candidate list explored by searches.
    pub fn set_ef_search(&mut self, ef: usize) {
        self.params.ef_search = ef.max(1);
    }

    /// Removed (or replaced) vectors still in the graph.
    pub fn tombstones(&self) -> usize {
        self.dead_count
    }

    /// True when tombstones are numerous enough that a rebuild pays off.
    pub fn needs_compaction(&self) -> bool {
        self.dead_count > 256.max(self.slots.len() / 5)
    }

    /// Rebuilds the graph from the live vectors, dropping the tombstones.
    pub fn compact(&mut self) {
        let (ids, vectors) = self.live_vectors();
        if let Ok(mut rebuilt) = Self::build(self.dim, self.params.clone(), ids, vectors) {
            rebuilt.generation = self.generation;
            *self = rebuilt;
        }
    }

    /// The caller-chosen generation stored with the index.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Sets the generation stored with the index.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Live ids, in slot order.
    pub fn ids(&self) -> Vec<u64> {
        self.live_slots().map(|s| self.slots[s]).collect()
    }

    fn live_slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots.len()).filter(|&s| self.live[s])
    }

    fn live_vectors(&self) -> (Vec<u64>, Vec<f32>) {
        let mut ids = Vec::with_capacity(self.len());
        let mut vectors = Vec::with_capacity(self.len() * self.dim);
        for s in self.live_slots() {
            ids.push(self.slots[s]);
            vectors.extend_from_slice(&self.vectors[s * self.dim..(s + 1) * self.dim]);
        }
        (ids, vectors)
    }

    /// Writes the live ids and vectors to `path` (atomically); [`HnswRsIndex::load`] rebuilds
    /// the graph from them.
    pub fn save(&self, path: &Path) -> Result<(), IndexError> {
        let (ids, vectors) = self.live_vectors();
        vecfile::save(
            path,
            vecfile::Kind::HnswRs,
            self.dim,
            self.generation,
            &ids,
            &vectors,
        )
    }

    /// Reads a file written by [`HnswRsIndex::save`] (validated completely) and rebuilds the
    /// graph with `params`.
    pub fn load(path: &Path, params: HnswParams) -> Result<Self, IndexError> {
        let file = vecfile::load(path, vecfile::Kind::HnswRs)?;
        let mut index = Self::build(file.dim, params, file.ids, file.vectors)?;
        index.generation = file.generation;
        Ok(index)
    }
}

impl VectorIndex for HnswRsIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn add(&mut self, id: u64, vector: &[f32]) -> Result<(), IndexError> {
        check_vector(self.dim, vector)?;
        self.remove(id);
        let slot = self.slots.len();
        self.slots.push(id);
        self.live.push(true);
        self.vectors.extend_from_slice(vector);
        self.positions.insert(id, slot);
        self.graph.insert_slice((vector, slot));
        Ok(())
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(slot) = self.positions.remove(&id) else {
            return false;
        };
        self.live[slot] = false;
        self.dead_count += 1;
        true
    }

    fn search(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>, IndexError> {
        check_vector(self.dim, query)?;
        if k == 0 || self.positions.is_empty() {
            return Ok(Vec::new());
        }
        let ef = self.params.ef_search.max(k);
        let live = |slot: &usize| self.live.get(*slot).copied().unwrap_or(false);
        let filter: Option<&dyn hnsw_rs::prelude::FilterT> = if self.dead_count > 0 {
            Some(&live)
        } else {
            None
        };
        let mut found: Vec<(u64, f32)> = self
            .graph
            .search_filter(query, k, ef, filter)
            .into_iter()
            .filter(|n| live(&n.d_id))
            .map(|n| (self.slots[n.d_id], 1.0 - n.distance))
            .collect();
        found.sort_by(|a, b| b.1.total_cmp(&a.1));
        found.truncate(k);
        Ok(found)
    }

    fn len(&self) -> usize {
        self.positions.len()
    }

    fn contains(&self, id: u64) -> bool {
        self.positions.contains_key(&id)
    }
}
