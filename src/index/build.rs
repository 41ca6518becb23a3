//! Building a [`Graph`] with hnsw_rs and flattening it.

use hnsw_rs::hnsw::Hnsw;

use super::distance::ClampedDot;
use super::graph::{Graph, NO_UPPER};
use super::HnswParams;

/// Most layers hnsw_rs may use (its own ceiling is 16).
const MAX_LAYERS: usize = 16;

/// Builds the graph over `vectors` (`n * dim` floats, unit length) with hnsw_rs, inserting in
/// parallel on the current rayon pool, then flattens it. Node `i` is `vectors[i*dim..]`.
pub(crate) fn build_graph(dim: usize, vectors: Vec<f32>, params: &HnswParams) -> Graph {
    let n = vectors.len().checked_div(dim).unwrap_or(0);
    let m = params.m.clamp(2, 128);
    let m0 = 2 * m;
    if n == 0 {
        return Graph {
            dim,
            m,
            m0,
            vectors: Vec::new(),
            levels: Vec::new(),
            level0: Vec::new(),
            upper_offsets: Vec::new(),
            upper: Vec::new(),
            entry: 0,
            max_level: 0,
        };
    }
    let hnsw: Hnsw<'_, f32, ClampedDot> =
        Hnsw::new(m, n, MAX_LAYERS, params.ef_construction.max(m), ClampedDot);
    let items: Vec<(&[f32], usize)> = vectors.chunks_exact(dim).zip(0..n).collect();
    hnsw.parallel_insert_slice(&items);
    drop(items);

    let mut levels = vec![0u8; n];
    let mut entry = 0u32;
    let mut max_level = 0u8;
    let mut first = true;
    for point in hnsw.get_point_indexation() {
        let node = point.get_origin_id();
        if node >= n {
            continue;
        }
        let level = point.get_point_id().0;
        levels[node] = level;
        if first || level > max_level {
            max_level = max_level.max(level);
            entry = node as u32;
            first = false;
        }
    }
    let mut level0 = vec![0u32; n * (m0 + 1)];
    let mut upper_offsets = vec![NO_UPPER; n];
    let mut upper: Vec<u32> = Vec::new();
    for point in hnsw.get_point_indexation() {
        let node = point.get_origin_id();
        if node >= n {
            continue;
        }
        let level = levels[node];
        if level > 0 {
            upper_offsets[node] = upper.len() as u32;
            upper.resize(upper.len() + level as usize * (m + 1), 0);
        }
        let layers = point.get_neighborhood_id();
        for (l, list) in layers.iter().enumerate().take(level as usize + 1) {
            let cap = if l == 0 { m0 } else { m };
            // A neighbour on layer l must itself live on layer l or above.
            let ids: Vec<u32> = list
                .iter()
                .map(|nb| nb.get_origin_id())
                .filter(|&id| id != node && id < n && levels[id] as usize >= l)
                .take(cap)
                .map(|id| id as u32)
                .collect();
            let s = if l == 0 {
                node * (m0 + 1)
            } else {
                upper_offsets[node] as usize + (l - 1) * (m + 1)
            };
            let table = if l == 0 { &mut level0 } else { &mut upper };
            table[s] = ids.len() as u32;
            table[s + 1..s + 1 + ids.len()].copy_from_slice(&ids);
        }
    }
    drop(hnsw);
    Graph {
        dim,
        m,
        m0,
        vectors,
        levels,
        level0,
        upper_offsets,
        upper,
        entry,
        max_level,
    }
}
