//! Realistic vector sets for recall tests and benchmarks: real embeddings of real text,
//! extended where embedding that many texts would take too long, cached in a simple
//! checksummed file.
//!
//! Two extensions:
//! * [`extend_by_mixing`] (benchmarks at 100k and beyond): each new vector lies between a real
//!   vector and one of its real nearest neighbours, `normalize(a + t·(b − a))` with `t` uniform
//!   in `[0, 1)`, plus a little isotropic noise. New points follow the real neighbourhood
//!   structure, so a set of 100k has no clusters of near-equidistant siblings.
//! * [`extend_by_perturbation`]: Gaussian noise around a real vector (σ = 0.02 per component).
//!   Fine at 10k (three siblings per real vector); at 100k every real vector has ~30 siblings
//!   whose differences are isotropic noise, which makes top-10 recall hard for any HNSW.
//!
//! Random unit vectors are useless here: in 384 dimensions they have no neighbourhood
//! structure, and every HNSW implementation scores recall@10 ≈ 0.25 on them.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::embed::{EmbedError, Embedder};
use crate::index::distance::normalize;
use crate::index::persist::checksum;
use crate::index::IndexError;

/// What can go wrong building a benchmark vector set.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// Embedding the texts failed.
    #[error("embedding the corpus: {0}")]
    Embed(#[from] EmbedError),
    /// Reading or writing the cached set failed.
    #[error(transparent)]
    Index(#[from] IndexError),
}

const MAGIC: &[u8; 8] = b"MEMEXVEC";

/// A set of unit vectors of one dimension, stored contiguously.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorSet {
    /// Components per vector.
    pub dim: usize,
    /// `len() * dim` floats.
    pub data: Vec<f32>,
}

impl VectorSet {
    /// An empty set.
    pub fn new(dim: usize) -> Self {
        VectorSet {
            dim,
            data: Vec::new(),
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Vector `i`.
    pub fn get(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The first `n` vectors.
    pub fn truncated(&self, n: usize) -> VectorSet {
        VectorSet {
            dim: self.dim,
            data: self.data[..n.min(self.len()) * self.dim].to_vec(),
        }
    }

    /// Writes the set (magic, dim, count, floats, checksum) atomically.
    pub fn save(&self, path: &Path) -> Result<(), IndexError> {
        let mut bytes = Vec::with_capacity(24 + self.data.len() * 4 + 8);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(self.dim as u64).to_le_bytes());
        bytes.extend_from_slice(&(self.len() as u64).to_le_bytes());
        for x in &self.data {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum.to_le_bytes());
        let io = |e| IndexError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        crate::fsutil::write_atomic(path, &bytes).map_err(io)
    }

    /// Reads a set written by [`VectorSet::save`], validating it.
    pub fn load(path: &Path) -> Result<VectorSet, IndexError> {
        let bytes = std::fs::read(path).map_err(|e| IndexError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let bad = |r: &str| IndexError::Corrupt(format!("vector file {}: {r}", path.display()));
        if bytes.len() < 32 || &bytes[..8] != MAGIC {
            return Err(bad("not a vector file"));
        }
        let (body, tail) = bytes.split_at(bytes.len() - 8);
        let mut t = [0u8; 8];
        t.copy_from_slice(tail);
        if checksum(body) != u64::from_le_bytes(t) {
            return Err(bad("checksum mismatch"));
        }
        let mut w = [0u8; 8];
        w.copy_from_slice(&body[8..16]);
        let dim = u64::from_le_bytes(w) as usize;
        w.copy_from_slice(&body[16..24]);
        let n = u64::from_le_bytes(w) as usize;
        if dim == 0 || n.checked_mul(dim).and_then(|x| x.checked_mul(4)) != Some(body.len() - 24) {
            return Err(bad("length mismatch"));
        }
        let data = body[24..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(VectorSet { dim, data })
    }
}

fn gaussian(rng: &mut StdRng) -> f32 {
    // Box–Muller.
    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
    let u2: f32 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// A perturbed copy of `v`: each component plus N(0, sigma²), renormalised.
pub fn perturb(v: &[f32], sigma: f32, rng: &mut StdRng) -> Vec<f32> {
    let mut out: Vec<f32> = v.iter().map(|x| x + sigma * gaussian(rng)).collect();
    if !normalize(&mut out) {
        out = v.to_vec();
    }
    out
}

/// `base` followed by perturbed copies of randomly chosen base vectors up to `total` vectors.
pub fn extend_by_perturbation(base: &VectorSet, total: usize, sigma: f32, seed: u64) -> VectorSet {
    let mut out = base.truncated(total);
    if base.is_empty() {
        return out;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    out.data.reserve(total.saturating_sub(out.len()) * base.dim);
    while out.len() < total {
        let j = rng.random_range(0..base.len());
        let p = perturb(base.get(j), sigma, &mut rng);
        out.data.extend_from_slice(&p);
    }
    out
}

/// `n` query vectors not in any set: perturbations (with their own seed) of base vectors.
pub fn queries(base: &VectorSet, n: usize, sigma: f32, seed: u64) -> VectorSet {
    let mut out = VectorSet::new(base.dim);
    if base.is_empty() {
        return out;
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x005e_ed0f_9e41);
    for _ in 0..n {
        let j = rng.random_range(0..base.len());
        out.data
            .extend_from_slice(&perturb(base.get(j), sigma, &mut rng));
    }
    out
}

/// Real neighbours each real vector may be mixed with in [`extend_by_mixing`].
const MIX_NEIGHBOURS: usize = 10;

/// Per-component standard deviation of the noise added to mixed vectors (about 0.1 in norm over
/// 384 dimensions: a quarter of [`PERTURBATION_SIGMA`]'s).
const MIX_NOISE_SIGMA: f32 = 0.005;

/// Cosine above which two real vectors count as the same text (the corpus repeats some
/// boilerplate paragraphs verbatim).
const DUPLICATE_COSINE: f32 = 0.9999;

/// For each vector of `base`, the indices of its `k` nearest other vectors (exact, by dot),
/// leaving out its duplicates (cosine above [`DUPLICATE_COSINE`]): mixing a vector with a copy
/// of itself would only add noise, not follow the neighbourhood structure.
fn neighbour_lists(base: &VectorSet, k: usize) -> Vec<Vec<u32>> {
    use rayon::prelude::*;
    (0..base.len())
        .into_par_iter()
        .map(|i| {
            let v = base.get(i);
            let mut scored: Vec<(f32, u32)> = (0..base.len())
                .filter(|&j| j != i)
                .map(|j| (crate::index::dot(v, base.get(j)), j as u32))
                .filter(|(s, _)| *s <= DUPLICATE_COSINE)
                .collect();
            let k = k.min(scored.len());
            if k == 0 {
                return Vec::new();
            }
            scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            scored.truncate(k);
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            scored.into_iter().map(|(_, j)| j).collect()
        })
        .collect()
}

/// One mixed vector: a random real vector `a`, one of its real neighbours `b`,
/// `normalize(a + t·(b − a) + noise)`.
fn mix(base: &VectorSet, nbrs: &[Vec<u32>], rng: &mut StdRng) -> Vec<f32> {
    let a = rng.random_range(0..base.len());
    let va = base.get(a);
    let list = &nbrs[a];
    if list.is_empty() {
        return perturb(va, MIX_NOISE_SIGMA, rng);
    }
    let vb = base.get(list[rng.random_range(0..list.len())] as usize);
    let t: f32 = rng.random::<f32>();
    let mut out: Vec<f32> = va
        .iter()
        .zip(vb)
        .map(|(x, y)| x + t * (y - x) + MIX_NOISE_SIGMA * gaussian(rng))
        .collect();
    if !normalize(&mut out) {
        out = va.to_vec();
    }
    out
}

/// `base` (real embeddings) followed by mixed vectors (see the module docs) up to `total`.
pub fn extend_by_mixing(base: &VectorSet, total: usize, seed: u64) -> VectorSet {
    let mut out = base.truncated(total);
    if base.is_empty() || out.len() >= total {
        return out;
    }
    let nbrs = neighbour_lists(base, MIX_NEIGHBOURS);
    let mut rng = StdRng::seed_from_u64(seed);
    out.data.reserve((total - out.len()) * base.dim);
    while out.len() < total {
        let v = mix(base, &nbrs, &mut rng);
        out.data.extend_from_slice(&v);
    }
    out
}

/// `n` query vectors built like [`extend_by_mixing`]'s, with their own seed (so they are not in
/// the set).
pub fn mixed_queries(base: &VectorSet, n: usize, seed: u64) -> VectorSet {
    let mut out = VectorSet::new(base.dim);
    if base.is_empty() {
        return out;
    }
    let nbrs = neighbour_lists(base, MIX_NEIGHBOURS);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0071_e5ed_0f9e_41a7);
    for _ in 0..n {
        let v = mix(base, &nbrs, &mut rng);
        out.data.extend_from_slice(&v);
    }
    out
}

/// The real embeddings of `texts`, cached at `cache`. A cache holding at least `texts.len()`
/// vectors of the embedder's dimension is reused (its first `texts.len()` vectors: caches
/// written by [`real_vectors`] start with the real embeddings).
pub fn real_embeddings(
    embedder: &dyn Embedder,
    texts: &[String],
    cache: &Path,
) -> Result<VectorSet, DatasetError> {
    if let Ok(set) = VectorSet::load(cache) {
        if set.dim == embedder.dim() && set.len() >= texts.len() {
            return Ok(set.truncated(texts.len()));
        }
    }
    let mut base = VectorSet::new(embedder.dim());
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for batch in refs.chunks(256) {
        for v in embedder.embed(batch)? {
            base.data.extend_from_slice(&v);
        }
    }
    base.save(cache)?;
    Ok(base)
}

/// Texts for embedding: every `"text"` of `data/corpus/texts.jsonl` and every paragraph of the
/// Markdown files in `data/kb/`, under `root` (the repository). Missing inputs are skipped.
pub fn corpus_texts(root: &Path) -> Vec<String> {
    let mut texts = Vec::new();
    if let Ok(s) = std::fs::read_to_string(root.join("data/corpus/texts.jsonl")) {
        for line in s.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
                    if !t.trim().is_empty() {
                        texts.push(t.to_string());
                    }
                }
            }
        }
    }
    let mut files: Vec<_> = std::fs::read_dir(root.join("data/kb"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        if f.extension().is_some_and(|e| e == "md") {
            if let Ok(s) = std::fs::read_to_string(&f) {
                texts.extend(
                    s.split("\n\n")
                        .map(str::trim)
                        .filter(|p| p.len() > 20)
                        .map(str::to_string),
                );
            }
        }
    }
    texts
}

/// Real embeddings of `texts` extended by perturbation to `total` vectors, cached at `cache`
/// (reused when it holds at least `total` vectors of the embedder's dimension).
pub fn real_vectors(
    embedder: &dyn Embedder,
    texts: &[String],
    total: usize,
    cache: &Path,
) -> Result<VectorSet, DatasetError> {
    if let Ok(set) = VectorSet::load(cache) {
        if set.dim == embedder.dim() && set.len() >= total {
            return Ok(set.truncated(total));
        }
    }
    let mut base = VectorSet::new(embedder.dim());
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for batch in refs.chunks(256) {
        for v in embedder.embed(batch)? {
            base.data.extend_from_slice(&v);
        }
    }
    let set = extend_by_perturbation(&base, total, PERTURBATION_SIGMA, 42);
    set.save(cache)?;
    Ok(set)
}

/// Per-component standard deviation of the perturbations: about 0.4 in norm over 384
/// dimensions, cosine ≈ 0.93 to the original — near neighbours, not duplicates.
pub const PERTURBATION_SIGMA: f32 = 0.02;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perturbation_stays_close_and_unit() {
        let mut base = VectorSet::new(384);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..3 {
            let mut v: Vec<f32> = (0..384).map(|_| gaussian(&mut rng)).collect();
            normalize(&mut v);
            base.data.extend_from_slice(&v);
        }
        let ext = extend_by_perturbation(&base, 50, PERTURBATION_SIGMA, 7);
        assert_eq!(ext.len(), 50);
        for i in 3..50 {
            let v = ext.get(i);
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4);
            let best = (0..3)
                .map(|j| crate::index::dot(v, base.get(j)))
                .fold(f32::MIN, f32::max);
            assert!(best > 0.85 && best < 0.99, "cosine to origin {best}");
        }
    }

    #[test]
    fn mixing_stays_between_real_neighbours() {
        let mut base = VectorSet::new(64);
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..40 {
            let mut v: Vec<f32> = (0..64).map(|_| gaussian(&mut rng)).collect();
            normalize(&mut v);
            base.data.extend_from_slice(&v);
        }
        let nbrs = neighbour_lists(&base, 3);
        assert_eq!(nbrs[0].len(), 3);
        let d0: Vec<f32> = nbrs[0]
            .iter()
            .map(|&j| crate::index::dot(base.get(0), base.get(j as usize)))
            .collect();
        assert!(d0.windows(2).all(|w| w[0] >= w[1]), "sorted best first");
        let ext = extend_by_mixing(&base, 400, 9);
        assert_eq!(ext.len(), 400);
        assert_eq!(ext.get(5), base.get(5));
        for i in 40..400 {
            let v = ext.get(i);
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4);
            // Close to some real vector (it lies on a segment between two of them).
            let best = (0..40)
                .map(|j| crate::index::dot(v, base.get(j)))
                .fold(f32::MIN, f32::max);
            assert!(best > 0.6, "cosine to the nearest real vector {best}");
        }
        let q = mixed_queries(&base, 20, 9);
        assert_eq!(q.len(), 20);
        assert_ne!(q.get(0), ext.get(40), "queries use their own seed");
    }

    #[test]
    fn save_load_roundtrip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.bin");
        let set = VectorSet {
            dim: 2,
            data: vec![1.0, 0.0, 0.0, 1.0],
        };
        set.save(&path).unwrap();
        assert_eq!(VectorSet::load(&path).unwrap(), set);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(VectorSet::load(&path).is_err());
    }
}
