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
//! Insertion is sequential and deterministic (a fixed seed): the same vectors always give the
//! same graph.

use std::collections::BinaryHeap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::distance::dot;
use super::graph::{Cand, Graph, Nearest, NO_UPPER};
use super::HnswParams;

/// Highest layer a node may be given (levels are stored as `u8`; with M ≥ 2 a level above 15
/// has probability below 2⁻¹⁵ per node).
const MAX_LEVEL: u8 = 15;

/// Seed of the level generator.
const SEED: u64 = 0x6d65_6d65_785f_686e;

/// Builds the graph over `vectors` (`n * dim` floats, unit length). Node `i` is
/// `vectors[i*dim..]`.
pub(crate) fn build_graph(dim: usize, vectors: Vec<f32>, params: &HnswParams) -> Graph {
    let n = vectors.len().checked_div(dim).unwrap_or(0);
    let m = params.m.clamp(2, 128);
    let m0 = 2 * m;
    let mut rng = StdRng::seed_from_u64(SEED);
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
    let mut graph = Graph {
        dim,
        m,
        m0,
        vectors,
        levels,
        level0: vec![0u32; n * (m0 + 1)],
        upper_offsets,
        upper: vec![0u32; upper_len],
        entry: 0,
        max_level: 0,
    };
    let mut builder = Builder {
        ef: params.ef_construction.max(m),
        scratch: BuildScratch {
            visited: vec![0; n],
            generation: 0,
            candidates: BinaryHeap::new(),
            results: BinaryHeap::new(),
        },
    };
    for node in 0..n as u32 {
        builder.insert(&mut graph, node);
    }
    graph
}

struct BuildScratch {
    visited: Vec<u32>,
    generation: u32,
    candidates: BinaryHeap<Nearest>,
    results: BinaryHeap<Cand>,
}

struct Builder {
    ef: usize,
    scratch: BuildScratch,
}

#[inline]
fn distance(g: &Graph, a: &[f32], node: u32) -> f32 {
    1.0 - dot(a, g.vector(node))
}

/// Mutable neighbour list of `node` on `layer`: (count slot index, table).
#[inline]
fn slot(g: &Graph, node: u32, layer: u8) -> (usize, usize) {
    if layer == 0 {
        (node as usize * (g.m0 + 1), g.m0)
    } else {
        let base = g.upper_offsets[node as usize] as usize;
        (base + (layer as usize - 1) * (g.m + 1), g.m)
    }
}

fn neighbours(g: &Graph, node: u32, layer: u8) -> &[u32] {
    let (s, _) = slot(g, node, layer);
    let table = if layer == 0 { &g.level0 } else { &g.upper };
    let count = table[s] as usize;
    &table[s + 1..s + 1 + count]
}

fn set_neighbours(g: &mut Graph, node: u32, layer: u8, list: &[u32]) {
    let (s, cap) = slot(g, node, layer);
    let n = list.len().min(cap);
    let table = if layer == 0 {
        &mut g.level0
    } else {
        &mut g.upper
    };
    table[s] = n as u32;
    table[s + 1..s + 1 + n].copy_from_slice(&list[..n]);
}

/// The diversity heuristic: walks `sorted` (ascending distance to the base point) and keeps a
/// candidate unless it is closer to an already kept one than to the base point; at most `max`.
fn select(g: &Graph, sorted: &[Cand], max: usize, out: &mut Vec<u32>) {
    out.clear();
    for c in sorted {
        if out.len() >= max {
            break;
        }
        let v = g.vector(c.node);
        let diverse = out
            .iter()
            .all(|&kept| 1.0 - dot(v, g.vector(kept)) >= c.dist);
        if diverse {
            out.push(c.node);
        }
    }
}

impl Builder {
    fn insert(&mut self, g: &mut Graph, node: u32) {
        let level = g.levels[node as usize];
        if node == 0 {
            g.entry = 0;
            g.max_level = level;
            return;
        }
        let query = g.vector(node).to_vec();
        let mut ep = g.entry;
        let mut ep_dist = distance(g, &query, ep);
        for layer in (level.saturating_add(1)..=g.max_level).rev() {
            loop {
                let mut changed = false;
                for &nb in neighbours(g, ep, layer) {
                    let d = distance(g, &query, nb);
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
        let mut found: Vec<Cand> = Vec::new();
        let mut chosen: Vec<u32> = Vec::with_capacity(g.m0 + 1);
        let mut pool: Vec<Cand> = Vec::with_capacity(g.m0 + 1);
        let mut pruned: Vec<u32> = Vec::with_capacity(g.m0 + 1);
        for layer in (0..=level.min(g.max_level)).rev() {
            self.search_layer(g, &query, ep, ep_dist, layer, &mut found);
            select(g, &found, g.m, &mut chosen);
            set_neighbours(g, node, layer, &chosen);
            for &nb in &chosen {
                let (s, cap) = slot(g, nb, layer);
                let table = if layer == 0 { &g.level0 } else { &g.upper };
                let count = table[s] as usize;
                if count < cap {
                    let table = if layer == 0 {
                        &mut g.level0
                    } else {
                        &mut g.upper
                    };
                    table[s + 1 + count] = node;
                    table[s] = count as u32 + 1;
                    continue;
                }
                // Full: re-select among the old neighbours and the new node.
                let base = g.vector(nb);
                pool.clear();
                pool.extend(
                    table[s + 1..s + 1 + count]
                        .iter()
                        .map(|&x| Cand {
                            dist: 1.0 - dot(base, g.vector(x)),
                            node: x,
                        })
                        .chain(std::iter::once(Cand {
                            dist: 1.0 - dot(base, &query),
                            node,
                        })),
                );
                pool.sort_unstable();
                select(g, &pool, cap, &mut pruned);
                set_neighbours(g, nb, layer, &pruned);
            }
            if let Some(best) = found.first() {
                ep = best.node;
                ep_dist = best.dist;
            }
        }
        if level > g.max_level {
            g.max_level = level;
            g.entry = node;
        }
    }

    /// Best-first search on one layer from `ep`; `out` receives up to `ef` nodes, ascending.
    fn search_layer(
        &mut self,
        g: &Graph,
        query: &[f32],
        ep: u32,
        ep_dist: f32,
        layer: u8,
        out: &mut Vec<Cand>,
    ) {
        let s = &mut self.scratch;
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
        while let Some(Nearest(c)) = s.candidates.pop() {
            let bound = s.results.peek().map_or(f32::INFINITY, |f| f.dist);
            if c.dist > bound && s.results.len() >= self.ef {
                break;
            }
            let nbs = neighbours(g, c.node, layer);
            for (i, &nb) in nbs.iter().enumerate() {
                if let Some(&next) = nbs.get(i + 1) {
                    g.prefetch(next);
                }
                let seen = &mut s.visited[nb as usize];
                if *seen == s.generation {
                    continue;
                }
                *seen = s.generation;
                let d = distance(g, query, nb);
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
        out.clear();
        out.extend(s.results.drain());
        out.sort_unstable();
    }
}
