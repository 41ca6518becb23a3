//! Building a [`Graph`]: the standard HNSW insertion algorithm (Malkov & Yashunin), written
//! directly into the compact layout the searches use, so nothing is converted afterwards.
//!
//! Each node draws a level from a geometric distribution (`⌊-ln U / ln M⌋`), descends greedily
//! from the entry point through the layers above its level, then on each of its layers runs a
//! best-first search with `ef_construction` candidates, keeps up to `M` of them with the
//! diversity heuristic (a candidate is dropped when it is closer to an already kept neighbour
//! than to the new node), and links both ways. A neighbour whose list is full (`M` on upper
//! layers, `2M` on layer 0) re-selects its list with the same heuristic.
//!
//! Levels come from a fixed seed. On a one-thread rayon pool insertion is sequential and the
//! same vectors always give the same graph; on more threads, workers take nodes in order from a
//! shared counter (as hnswlib does), each neighbour list guarded by its own spin lock. Lists
//! are atomics, so a search reading a list that another thread is rewriting sees valid node
//! ids (old or new ones), never undefined behaviour.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::distance::dot;
use super::graph::{Cand, Graph, Nearest, NO_UPPER};
use super::HnswParams;

/// Highest layer a node may be given (levels are stored as `u8`; with M ≥ 2 a level above 15
/// has probability below 2⁻¹⁵ per node).
const MAX_LEVEL: u8 = 15;

/// A candidate is pruned only when it is closer to a kept neighbour by this factor than to
/// the base point. 1.0 is the classic heuristic; slightly above keeps the links that leave a
/// tight cluster (near-duplicates of one text), whose members are all about equally far from
/// any outsider, so that a search entering the cluster can leave it.
const PRUNE_SLACK: f32 = 1.1;

/// Distance at or below which two vectors count as copies of each other.
const DUPLICATE_DISTANCE: f32 = 1e-6;

/// Nodes inserted one by one before workers start in parallel (a skeleton to insert into).
const SEQUENTIAL_PREFIX: usize = 1024;

/// Builds the graph over `vectors` (`n * dim` floats, unit length) on the current rayon pool.
/// Node `i` is `vectors[i*dim..]`.
pub(crate) fn build_graph(dim: usize, vectors: Vec<f32>, params: &HnswParams) -> Graph {
    let n = vectors.len().checked_div(dim).unwrap_or(0);
    let m = params.m.clamp(2, 128);
    let m0 = 2 * m;
    let mut rng = StdRng::seed_from_u64(params.seed);
    let ml = 1.0 / (m as f64).ln();
    let levels: Vec<u8> = (0..n)
        .map(|_| {
            let u: f64 = rng.random::<f64>();
            let l = (-(u.max(f64::MIN_POSITIVE)).ln() * ml).floor();
            l.min(MAX_LEVEL as f64) as u8
        })
        .collect();
    let mut upper_offsets = vec![NO_UPPER; n];
    let mut upper_len = 0usize;
    for (node, &level) in levels.iter().enumerate() {
        if level > 0 {
            upper_offsets[node] = upper_len as u32;
            upper_len += level as usize * (m + 1);
        }
    }
    let shared = Shared {
        dim,
        m,
        m0,
        ef: params.ef_construction.max(m),
        vectors: &vectors,
        levels: &levels,
        upper_offsets: &upper_offsets,
        level0: (0..n * (m0 + 1)).map(|_| AtomicU32::new(0)).collect(),
        upper: (0..upper_len).map(|_| AtomicU32::new(0)).collect(),
        locks: (0..n).map(|_| AtomicBool::new(false)).collect(),
        top: RwLock::new(Top {
            entry: 0,
            max_level: levels.first().copied().unwrap_or(0),
        }),
        raise: Mutex::new(()),
    };
    let threads = rayon::current_num_threads().max(1);
    let prefix = if threads == 1 {
        n
    } else {
        n.min(SEQUENTIAL_PREFIX)
    };
    let mut scratch = Scratch::new(n);
    for node in 1..prefix {
        shared.insert(node as u32, &mut scratch);
    }
    if prefix < n {
        let next = AtomicUsize::new(prefix);
        rayon::broadcast(|_| {
            let mut scratch = Scratch::new(n);
            loop {
                let node = next.fetch_add(1, Ordering::Relaxed);
                if node >= n {
                    break;
                }
                shared.insert(node as u32, &mut scratch);
            }
        });
    }
    let top = shared.top.into_inner().unwrap_or_else(|p| p.into_inner());
    let level0 = shared
        .level0
        .into_iter()
        .map(AtomicU32::into_inner)
        .collect();
    let upper = shared
        .upper
        .into_iter()
        .map(AtomicU32::into_inner)
        .collect();
    let mut graph = Graph {
        dim,
        m,
        m0,
        vectors,
        levels,
        level0,
        upper_offsets,
        upper,
        entry: top.entry,
        max_level: top.max_level,
    };
    connect_islands(&mut graph, params.ef_construction.max(m));
    graph
}

/// Makes every node reachable on layer 0 from the entry point.
///
/// The diversity heuristic can prune every link into a small, tight cluster far from the rest
/// (a rare real text and the vectors around it): such an island is never returned by any
/// search, however large `ef`. After insertion, a breadth-first walk from the entry point finds
/// the unreachable nodes; for each island, its first node is linked from its nearest reachable
/// node that has a free slot (or, failing that, replaces the last link of the nearest one),
/// and the walk resumes from it. Usually no island exists and this costs one walk.
fn connect_islands(g: &mut Graph, ef: usize) {
    let n = g.len();
    if n < 2 {
        return;
    }
    let stride = g.m0 + 1;
    let walk = |g: &Graph, seen: &mut Vec<bool>, stack: &mut Vec<u32>, from: u32| {
        seen[from as usize] = true;
        stack.push(from);
        while let Some(x) = stack.pop() {
            let s = x as usize * stride;
            let count = g.level0[s] as usize;
            for &y in &g.level0[s + 1..s + 1 + count] {
                if !seen[y as usize] {
                    seen[y as usize] = true;
                    stack.push(y);
                }
            }
        }
    };
    // A replaced link (only when no nearby node has a free slot) may cut off another node:
    // a few passes settle it.
    for _pass in 0..4 {
        let mut seen = vec![false; n];
        let mut stack = Vec::new();
        walk(g, &mut seen, &mut stack, g.entry);
        if seen.iter().all(|&x| x) {
            return;
        }
        for u in 0..n as u32 {
            if seen[u as usize] {
                continue;
            }
            let query = g.vector(u).to_vec();
            let near = g.search(&query, ef, ef, &|x| !seen[x as usize] || x == u);
            let with_room = near.iter().find(|c| {
                let s = c.node as usize * stride;
                (g.level0[s] as usize) < g.m0
            });
            let host = with_room
                .or(near.first())
                .map(|c| c.node)
                .unwrap_or(g.entry);
            let s = host as usize * stride;
            let count = g.level0[s] as usize;
            if count < g.m0 {
                g.level0[s + 1 + count] = u;
                g.level0[s] = count as u32 + 1;
            } else {
                g.level0[s + count] = u;
            }
            walk(g, &mut seen, &mut stack, u);
        }
    }
}

/// Ascending distance; among equal distances the newer (higher) node first. Exact duplicates
/// are common in real corpora (a boilerplate paragraph in every document): preferring the
/// older duplicate would leave every new copy out of its duplicates' full lists (no in-links,
/// unreachable), as hnswlib's heap order also avoids.
fn newest_first_on_ties(a: &Cand, b: &Cand) -> std::cmp::Ordering {
    a.dist.total_cmp(&b.dist).then(b.node.cmp(&a.node))
}

#[derive(Clone, Copy)]
struct Top {
    entry: u32,
    max_level: u8,
}

/// Per-worker search state.
struct Scratch {
    visited: Vec<u32>,
    generation: u32,
    candidates: BinaryHeap<Nearest>,
    results: BinaryHeap<Cand>,
    found: Vec<Cand>,
    chosen: Vec<u32>,
    pool: Vec<Cand>,
    pruned: Vec<u32>,
    list: Vec<u32>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Scratch {
            visited: vec![0; n],
            generation: 0,
            candidates: BinaryHeap::new(),
            results: BinaryHeap::new(),
            found: Vec::new(),
            chosen: Vec::new(),
            pool: Vec::new(),
            pruned: Vec::new(),
            list: Vec::new(),
        }
    }
}

/// The graph under construction, shared by the workers.
struct Shared<'a> {
    dim: usize,
    m: usize,
    m0: usize,
    ef: usize,
    vectors: &'a [f32],
    levels: &'a [u8],
    upper_offsets: &'a [u32],
    /// Same layout as [`Graph::level0`].
    level0: Vec<AtomicU32>,
    /// Same layout as [`Graph::upper`].
    upper: Vec<AtomicU32>,
    /// One spin lock per node, held while its neighbour lists are written.
    locks: Vec<AtomicBool>,
    top: RwLock<Top>,
    /// Held for the whole insertion of a node whose level exceeds the current top layer.
    raise: Mutex<()>,
}

impl Shared<'_> {
    #[inline]
    fn vector(&self, node: u32) -> &[f32] {
        let s = node as usize * self.dim;
        &self.vectors[s..s + self.dim]
    }

    #[inline]
    fn distance(&self, a: &[f32], node: u32) -> f32 {
        1.0 - dot(a, self.vector(node))
    }

    #[inline]
    fn prefetch(&self, node: u32) {
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

    /// (table, index of the count slot, capacity) of `node`'s list on `layer`.
    #[inline]
    fn slot(&self, node: u32, layer: u8) -> (&[AtomicU32], usize, usize) {
        if layer == 0 {
            (&self.level0, node as usize * (self.m0 + 1), self.m0)
        } else {
            let base = self.upper_offsets[node as usize] as usize;
            (
                &self.upper,
                base + (layer as usize - 1) * (self.m + 1),
                self.m,
            )
        }
    }

    /// Copies `node`'s neighbour list on `layer` into `out`.
    #[inline]
    fn read(&self, node: u32, layer: u8, out: &mut Vec<u32>) {
        let (table, s, cap) = self.slot(node, layer);
        let count = (table[s].load(Ordering::Acquire) as usize).min(cap);
        out.clear();
        out.extend(
            table[s + 1..s + 1 + count]
                .iter()
                .map(|x| x.load(Ordering::Relaxed)),
        );
    }

    /// Overwrites `node`'s list on `layer` (caller holds the node's lock).
    fn write(&self, node: u32, layer: u8, list: &[u32]) {
        let (table, s, cap) = self.slot(node, layer);
        let n = list.len().min(cap);
        for (slot, &x) in table[s + 1..s + 1 + n].iter().zip(list) {
            slot.store(x, Ordering::Relaxed);
        }
        table[s].store(n as u32, Ordering::Release);
    }

    fn lock(&self, node: u32) {
        let l = &self.locks[node as usize];
        let mut spins = 0u32;
        while l
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    fn unlock(&self, node: u32) {
        self.locks[node as usize].store(false, Ordering::Release);
    }

    /// The diversity heuristic: walks `sorted` (ascending distance to the base point) and keeps
    /// a candidate unless it is closer to an already kept one than to the base point, or is a
    /// duplicate of a kept one; at most `max`.
    ///
    /// The duplicate rule matters for copies of one vector (a boilerplate paragraph in every
    /// document): without it, each copy's list fills with the other copies (distance 0 ties),
    /// and a search that enters the group, on any layer, finds no way out.
    fn select(&self, sorted: &[Cand], max: usize, out: &mut Vec<u32>) {
        out.clear();
        for c in sorted {
            if out.len() >= max {
                break;
            }
            let v = self.vector(c.node);
            let diverse = out.iter().all(|&kept| {
                let d = 1.0 - dot(v, self.vector(kept));
                d * PRUNE_SLACK >= c.dist && d > DUPLICATE_DISTANCE
            });
            if diverse {
                out.push(c.node);
            }
        }
    }

    fn insert(&self, node: u32, s: &mut Scratch) {
        let level = self.levels[node as usize];
        let mut top = *self.top.read().unwrap_or_else(|p| p.into_inner());
        // A node that raises the top layer is inserted under one lock, seeing the latest entry
        // point (as hnswlib does): two concurrent raisers would otherwise leave the upper
        // layers of one of them unlinked.
        let _raising = if level > top.max_level {
            let guard = self.raise.lock().unwrap_or_else(|p| p.into_inner());
            top = *self.top.read().unwrap_or_else(|p| p.into_inner());
            Some(guard)
        } else {
            None
        };
        let query = self.vector(node);
        let mut ep = top.entry;
        let mut ep_dist = self.distance(query, ep);
        for layer in (level.saturating_add(1)..=top.max_level).rev() {
            loop {
                let mut changed = false;
                self.read(ep, layer, &mut s.list);
                for &nb in &s.list {
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
        for layer in (0..=level.min(top.max_level)).rev() {
            self.search_layer(query, ep, ep_dist, layer, s);
            // A list being rewritten by another worker may momentarily be read torn; never
            // link a node to itself.
            s.found.retain(|c| c.node != node);
            self.select(&s.found, self.m, &mut s.chosen);
            self.lock(node);
            // Workers inserting at the same time may already have linked themselves into this
            // node's list (their search can start from it): keep those links.
            self.read(node, layer, &mut s.list);
            if s.list.is_empty() {
                self.write(node, layer, &s.chosen);
            } else {
                let (_, _, cap) = self.slot(node, layer);
                for &x in &s.chosen {
                    if !s.list.contains(&x) {
                        s.list.push(x);
                    }
                }
                if s.list.len() > cap {
                    s.pool.clear();
                    s.pool.extend(s.list.iter().map(|&x| Cand {
                        dist: self.distance(query, x),
                        node: x,
                    }));
                    s.pool.sort_unstable_by(newest_first_on_ties);
                    let mut pruned = std::mem::take(&mut s.pruned);
                    self.select(&s.pool, cap, &mut pruned);
                    self.write(node, layer, &pruned);
                    s.pruned = pruned;
                } else {
                    self.write(node, layer, &s.list);
                }
            }
            self.unlock(node);
            for &nb in &s.chosen {
                self.lock(nb);
                let (table, slot, cap) = self.slot(nb, layer);
                let count = (table[slot].load(Ordering::Relaxed) as usize).min(cap);
                if count < cap {
                    table[slot + 1 + count].store(node, Ordering::Relaxed);
                    table[slot].store(count as u32 + 1, Ordering::Release);
                } else {
                    // Full: re-select among the old neighbours and the new node.
                    let base = self.vector(nb);
                    s.pool.clear();
                    s.pool.extend(
                        table[slot + 1..slot + 1 + count]
                            .iter()
                            .map(|x| {
                                let x = x.load(Ordering::Relaxed);
                                Cand {
                                    dist: 1.0 - dot(base, self.vector(x)),
                                    node: x,
                                }
                            })
                            .chain(std::iter::once(Cand {
                                dist: 1.0 - dot(base, query),
                                node,
                            })),
                    );
                    s.pool.sort_unstable_by(newest_first_on_ties);
                    let mut pruned = std::mem::take(&mut s.pruned);
                    self.select(&s.pool, cap, &mut pruned);
                    self.write(nb, layer, &pruned);
                    s.pruned = pruned;
                }
                self.unlock(nb);
            }
            if let Some(best) = s.found.first() {
                ep = best.node;
                ep_dist = best.dist;
            }
        }
        if level > top.max_level {
            let mut t = self.top.write().unwrap_or_else(|p| p.into_inner());
            if level > t.max_level {
                t.max_level = level;
                t.entry = node;
            }
        }
    }

    /// Best-first search on one layer from `ep`; `s.found` receives up to `ef` nodes, ascending.
    fn search_layer(&self, query: &[f32], ep: u32, ep_dist: f32, layer: u8, s: &mut Scratch) {
        s.generation = s.generation.wrapping_add(1);
        if s.generation == 0 {
            s.visited.iter_mut().for_each(|v| *v = 0);
            s.generation = 1;
        }
        s.candidates.clear();
        s.results.clear();
        let start = Cand {
            dist: ep_dist,
            node: ep,
        };
        s.visited[ep as usize] = s.generation;
        s.candidates.push(Nearest(start));
        s.results.push(start);
        let mut list = std::mem::take(&mut s.list);
        while let Some(Nearest(c)) = s.candidates.pop() {
            let bound = s.results.peek().map_or(f32::INFINITY, |f| f.dist);
            if c.dist > bound && s.results.len() >= self.ef {
                break;
            }
            self.read(c.node, layer, &mut list);
            for (i, &nb) in list.iter().enumerate() {
                if let Some(&next) = list.get(i + 1) {
                    self.prefetch(next);
                }
                let seen = &mut s.visited[nb as usize];
                if *seen == s.generation {
                    continue;
                }
                *seen = s.generation;
                let d = self.distance(query, nb);
                let bound = s.results.peek().map_or(f32::INFINITY, |f| f.dist);
                if s.results.len() < self.ef || d < bound {
                    let cand = Cand { dist: d, node: nb };
                    s.candidates.push(Nearest(cand));
                    s.results.push(cand);
                    if s.results.len() > self.ef {
                        s.results.pop();
                    }
                }
            }
        }
        s.list = list;
        s.found.clear();
        s.found.extend(s.results.drain());
        s.found.sort_unstable_by(newest_first_on_ties);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::normalize;

    /// 3,000 random unit vectors in 16 dimensions, then 40 exact copies of one vector and 200
    /// noisy copies around it (the boilerplate-paragraph pattern of real corpora).
    fn vectors_with_duplicates() -> (usize, Vec<f32>) {
        let dim = 16;
        let mut rng = StdRng::seed_from_u64(5);
        let mut gauss = || {
            let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
            let u2: f32 = rng.random::<f32>();
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        };
        let mut data = Vec::new();
        for _ in 0..3000 {
            let mut v: Vec<f32> = (0..dim).map(|_| gauss()).collect();
            normalize(&mut v);
            data.extend_from_slice(&v);
        }
        let mut dup: Vec<f32> = (0..dim).map(|_| gauss()).collect();
        normalize(&mut dup);
        for _ in 0..40 {
            data.extend_from_slice(&dup);
        }
        for _ in 0..200 {
            let mut v: Vec<f32> = dup.iter().map(|x| x + 0.01 * gauss()).collect();
            normalize(&mut v);
            data.extend_from_slice(&v);
        }
        (dim, data)
    }

    fn reachable(g: &Graph) -> usize {
        let stride = g.m0 + 1;
        let mut seen = vec![false; g.len()];
        let mut stack = vec![g.entry];
        seen[g.entry as usize] = true;
        let mut count = 0;
        while let Some(x) = stack.pop() {
            count += 1;
            let s = x as usize * stride;
            for &y in &g.level0[s + 1..s + 1 + g.level0[s] as usize] {
                if !seen[y as usize] {
                    seen[y as usize] = true;
                    stack.push(y);
                }
            }
        }
        count
    }

    fn self_hits(g: &Graph, range: std::ops::Range<usize>) -> usize {
        range
            .filter(|&i| {
                let q = g.vector(i as u32).to_vec();
                g.search(&q, 10, 64, &|_| false)
                    .iter()
                    .any(|c| c.dist <= 1e-5)
            })
            .count()
    }

    #[test]
    fn every_node_is_findable_despite_duplicates_sequential_and_parallel() {
        let (dim, data) = vectors_with_duplicates();
        let n = data.len() / dim;
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let g = pool.install(|| build_graph(dim, data.clone(), &HnswParams::default()));
            assert_eq!(g.len(), n);
            g.validate().unwrap();
            assert_eq!(reachable(&g), n, "every node reachable on layer 0");
            let cloud = self_hits(&g, 3040..n);
            assert!(
                cloud >= 198,
                "{threads} threads: {cloud}/200 noisy copies found"
            );
            let all = self_hits(&g, 0..n);
            assert!(all * 1000 >= n * 995, "{threads} threads: {all}/{n} found");
        }
    }

    #[test]
    fn sequential_builds_are_deterministic() {
        let (dim, data) = vectors_with_duplicates();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let a = pool.install(|| build_graph(dim, data.clone(), &HnswParams::default()));
        let b = pool.install(|| build_graph(dim, data, &HnswParams::default()));
        assert_eq!(a.level0, b.level0);
        assert_eq!(a.upper, b.upper);
        assert_eq!(a.entry, b.entry);
    }
}
