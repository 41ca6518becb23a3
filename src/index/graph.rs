//! A compact, read-only copy of an HNSW graph, searched without locks or per-query allocation.
//!
//! [`Graph`] holds vectors in one contiguous array, layer-0 neighbour lists at a fixed stride,
//! upper layers in a side table; searches reuse a visited-generation array and heaps per thread
//! (no `HashMap` of visited points, no allocation per candidate — what made hnsw_rs's own
//! search 4× slower than hnswlib). `build` writes this layout directly.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::distance::dot;

/// A candidate: internal node index with its distance to the query.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cand {
    pub(crate) dist: f32,
    pub(crate) node: u32,
}

impl PartialEq for Cand {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.dist
            .total_cmp(&other.dist)
            .then(self.node.cmp(&other.node))
    }
}

/// Closer-first ordering for the candidate queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Nearest(pub(crate) Cand);
impl PartialOrd for Nearest {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Nearest {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.cmp(&self.0)
    }
}

/// Per-thread search state reused across queries.
#[derive(Default)]
struct Scratch {
    visited: Vec<u32>,
    generation: u32,
    candidates: BinaryHeap<Nearest>,
    results: BinaryHeap<Cand>,
}

impl Scratch {
    fn begin(&mut self, n: usize) {
        if self.visited.len() < n {
            self.visited.resize(n, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.visited.iter_mut().for_each(|v| *v = 0);
            self.generation = 1;
        }
        self.candidates.clear();
        self.results.clear();
    }

    #[inline]
    fn visit(&mut self, node: u32) -> bool {
        let slot = &mut self.visited[node as usize];
        if *slot == self.generation {
            false
        } else {
            *slot = self.generation;
            true
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Marker for "this node has no upper layers" in [`Graph::upper_offsets`].
pub(crate) const NO_UPPER: u32 = u32::MAX;

/// The flattened HNSW graph.
///
/// Invariants (checked by [`Graph::validate`] for graphs read from disk): every neighbour index
/// is `< len()`, neighbour counts fit their stride, `entry < len()` unless empty, and every node's
/// upper-layer slots lie inside `upper`.
#[derive(Debug, Clone)]
pub(crate) struct Graph {
    pub(crate) dim: usize,
    /// Neighbours per node on layers ≥ 1.
    pub(crate) m: usize,
    /// Neighbours per node on layer 0 (2·m).
    pub(crate) m0: usize,
    /// `len() * dim` floats, node-major.
    pub(crate) vectors: Vec<f32>,
    /// Layer of each node (0 = only the base layer).
    pub(crate) levels: Vec<u8>,
    /// `len() * (m0 + 1)`: a count followed by up to `m0` neighbour indices.
    pub(crate) level0: Vec<u32>,
    /// Start of a node's upper-layer block in `upper`, or [`NO_UPPER`].
    pub(crate) upper_offsets: Vec<u32>,
    /// Per node with level L ≥ 1: L groups of `m + 1` slots (count, neighbours) for layers 1..=L.
    pub(crate) upper: Vec<u32>,
    pub(crate) entry: u32,
    pub(crate) max_level: u8,
}

impl Graph {
    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.levels.len()
    }

    #[inline]
    pub(crate) fn vector(&self, node: u32) -> &[f32] {
        let s = node as usize * self.dim;
        &self.vectors[s..s + self.dim]
    }

    #[inline]
    fn neighbours(&self, node: u32, layer: u8) -> &[u32] {
        if layer == 0 {
            let s = node as usize * (self.m0 + 1);
            let count = self.level0[s] as usize;
            &self.level0[s + 1..s + 1 + count]
        } else {
            let base = self.upper_offsets[node as usize] as usize;
            let s = base + (layer as usize - 1) * (self.m + 1);
            let count = self.upper[s] as usize;
            &self.upper[s + 1..s + 1 + count]
        }
    }

    #[inline]
    fn distance(&self, query: &[f32], node: u32) -> f32 {
        1.0 - dot(query, self.vector(node))
    }

    #[inline]
    pub(crate) fn prefetch(&self, node: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            let s = node as usize * self.dim;
            if let Some(v) = self.vectors.get(s..s + self.dim) {
                // SAFETY: prefetch is a hint; the address is inside `vectors`.
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                    let p = v.as_ptr() as *const i8;
                    _mm_prefetch(p, _MM_HINT_T0);
                    _mm_prefetch(p.add(64), _MM_HINT_T0);
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = node;
    }

    /// The `k` nearest live nodes to `query` (ascending distance), exploring `ef` candidates on
    /// layer 0. `is_dead(node)` hides tombstoned nodes from the results (they still route).
    pub(crate) fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        is_dead: &dyn Fn(u32) -> bool,
    ) -> Vec<Cand> {
        if self.len() == 0 || k == 0 {
            return Vec::new();
        }
        let ef = ef.max(k);
        let mut ep = self.entry;
        let mut ep_dist = self.distance(query, ep);
        for layer in (1..=self.max_level).rev() {
            loop {
                let mut changed = false;
                for &nb in self.neighbours(ep, layer) {
                    let d = self.distance(query, nb);
                    if d < ep_dist {
                        ep_dist = d;
                        ep = nb;
                        changed = true;
                    }
                }
                if !changed {
                    break;
                }
            }
        }
        SCRATCH.with(|cell| {
            let mut s = cell.borrow_mut();
            s.begin(self.len());
            let start = Cand {
                dist: ep_dist,
                node: ep,
            };
            s.visit(ep);
            s.candidates.push(Nearest(start));
            if !is_dead(ep) {
                s.results.push(start);
            }
            while let Some(Nearest(c)) = s.candidates.pop() {
                let bound = s.results.peek().map_or(f32::INFINITY, |f| f.dist);
                if c.dist > bound && s.results.len() >= ef {
                    break;
                }
                let nbs = self.neighbours(c.node, 0);
                if let Some(&first) = nbs.first() {
                    self.prefetch(first);
                }
                for (i, &nb) in nbs.iter().enumerate() {
                    if let Some(&next) = nbs.get(i + 1) {
                        self.prefetch(next);
                    }
                    if !s.visit(nb) {
                        continue;
                    }
                    let d = self.distance(query, nb);
                    let bound = s.results.peek().map_or(f32::INFINITY, |f| f.dist);
                    if s.results.len() < ef || d < bound {
                        let cand = Cand { dist: d, node: nb };
                        s.candidates.push(Nearest(cand));
                        if !is_dead(nb) {
                            s.results.push(cand);
                            if s.results.len() > ef {
                                s.results.pop();
                            }
                        }
                    }
                }
            }
            let mut out: Vec<Cand> = s.results.drain().collect();
            out.sort_unstable();
            out.truncate(k);
            out
        })
    }

    /// Checks the structural invariants; `Err` names the first violation.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let n = self.len();
        if self.m == 0 || self.m0 == 0 {
            return Err("zero neighbour count".into());
        }
        if self.vectors.len() != n * self.dim {
            return Err("vector array length does not match node count".into());
        }
        if self.level0.len() != n * (self.m0 + 1) || self.upper_offsets.len() != n {
            return Err("neighbour table length does not match node count".into());
        }
        if n == 0 {
            return Ok(());
        }
        if self.entry as usize >= n || self.levels[self.entry as usize] != self.max_level {
            return Err("entry point out of range".into());
        }
        let in_range = |list: &[u32]| list.iter().all(|&x| (x as usize) < n);
        for node in 0..n {
            let s = node * (self.m0 + 1);
            let count = self.level0[s] as usize;
            if count > self.m0 || !in_range(&self.level0[s + 1..s + 1 + count]) {
                return Err(format!("bad layer-0 neighbour list at node {node}"));
            }
            let level = self.levels[node];
            if level > self.max_level {
                return Err(format!("node {node} above the top layer"));
            }
            if level == 0 {
                continue;
            }
            let base = self.upper_offsets[node] as usize;
            let end = base + level as usize * (self.m + 1);
            if self.upper_offsets[node] == NO_UPPER || end > self.upper.len() {
                return Err(format!("bad upper-layer block at node {node}"));
            }
            for l in 0..level as usize {
                let gs = base + l * (self.m + 1);
                let count = self.upper[gs] as usize;
                let list = self.upper.get(gs + 1..gs + 1 + count).unwrap_or(&[]);
                let ok = count <= self.m
                    && in_range(list)
                    && list.iter().all(|&x| self.levels[x as usize] as usize > l);
                if !ok {
                    return Err(format!("bad upper-layer neighbour list at node {node}"));
                }
            }
        }
        Ok(())
    }
}
