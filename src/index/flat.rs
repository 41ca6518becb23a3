//! Exact search: every stored vector is scored against the query. Ground truth for HNSW.

use std::collections::{BinaryHeap, HashMap};

use super::distance::dot;
use super::graph::Cand;
use super::{check_vector, IndexError, VectorIndex};

/// An exact (brute-force) index over unit vectors; scores are dot products.
#[derive(Debug, Clone)]
pub struct FlatIndex {
    dim: usize,
    ids: Vec<u64>,
    vectors: Vec<f32>,
    positions: HashMap<u64, usize>,
}

impl FlatIndex {
    /// An empty index for vectors of dimension `dim`.
    pub fn new(dim: usize) -> Self {
        FlatIndex {
            dim,
            ids: Vec::new(),
            vectors: Vec::new(),
            positions: HashMap::new(),
        }
    }

    /// Ids in storage order.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// All vectors, `len() * dim()` floats in the order of [`FlatIndex::ids`].
    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    /// The stored vector of `id`.
    pub fn get(&self, id: u64) -> Option<&[f32]> {
        let p = *self.positions.get(&id)?;
        Some(&self.vectors[p * self.dim..(p + 1) * self.dim])
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.ids.clear();
        self.vectors.clear();
        self.positions.clear();
    }

    /// Exact top-k with internal positions (ascending distance `1 - dot`).
    pub(crate) fn top_k(&self, query: &[f32], k: usize) -> Vec<Cand> {
        if k == 0 {
            return Vec::new();
        }
        let mut heap: BinaryHeap<Cand> = BinaryHeap::with_capacity(k + 1);
        for (i, v) in self.vectors.chunks_exact(self.dim.max(1)).enumerate() {
            let d = 1.0 - dot(query, v);
            if heap.len() < k {
                heap.push(Cand {
                    dist: d,
                    node: i as u32,
                });
            } else if heap.peek().is_some_and(|w| d < w.dist) {
                heap.pop();
                heap.push(Cand {
                    dist: d,
                    node: i as u32,
                });
            }
        }
        let mut out = heap.into_vec();
        out.sort_unstable();
        out
    }
}

impl VectorIndex for FlatIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn add(&mut self, id: u64, vector: &[f32]) -> Result<(), IndexError> {
        check_vector(self.dim, vector)?;
        if let Some(&p) = self.positions.get(&id) {
            self.vectors[p * self.dim..(p + 1) * self.dim].copy_from_slice(vector);
            return Ok(());
        }
        self.positions.insert(id, self.ids.len());
        self.ids.push(id);
        self.vectors.extend_from_slice(vector);
        Ok(())
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(p) = self.positions.remove(&id) else {
            return false;
        };
        let last = self.ids.len() - 1;
        if p != last {
            let moved = self.ids[last];
            self.ids[p] = moved;
            self.positions.insert(moved, p);
            let (head, tail) = self.vectors.split_at_mut(last * self.dim);
            head[p * self.dim..(p + 1) * self.dim].copy_from_slice(&tail[..self.dim]);
        }
        self.ids.pop();
        self.vectors.truncate(last * self.dim);
        true
    }

    fn search(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>, IndexError> {
        check_vector(self.dim, query)?;
        Ok(self
            .top_k(query, k)
            .into_iter()
            .map(|c| (self.ids[c.node as usize], 1.0 - c.dist))
            .collect())
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn contains(&self, id: u64) -> bool {
        self.positions.contains_key(&id)
    }
}
