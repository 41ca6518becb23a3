//! On-disk form of [`HnswIndex`]: one little-endian file with a magic, a header, the sections
//! and a trailing checksum. Written under a temporary name, fsynced, then renamed; read back in
//! full and validated (lengths, checksum, graph invariants) before use.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use super::flat::FlatIndex;
use super::graph::Graph;
use super::hnsw::HnswIndex;
use super::{HnswParams, IndexError, VectorIndex};

const MAGIC: &[u8; 8] = b"MEMEXHNS";
const VERSION: u32 = 1;

/// A 64-bit checksum over the bytes (four interleaved FNV-style lanes over 8-byte words).
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    const P: u64 = 0x0000_0100_0000_01b3;
    let mut lanes = [
        0xcbf2_9ce4_8422_2325u64,
        0x9e37_79b9_7f4a_7c15,
        0xc2b2_ae3d_27d4_eb4f,
        0x1656_67b1_9e37_79f9,
    ];
    let mut words = bytes.chunks_exact(32);
    for block in &mut words {
        for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            *lane = (*lane ^ u64::from_le_bytes(b))
                .wrapping_mul(P)
                .rotate_left(29);
        }
    }
    let mut h =
        lanes[0] ^ lanes[1].rotate_left(17) ^ lanes[2].rotate_left(31) ^ lanes[3].rotate_left(47);
    for &byte in words.remainder() {
        h = (h ^ byte as u64).wrapping_mul(P);
    }
    (h ^ bytes.len() as u64).wrapping_mul(P)
}

struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32s(&mut self, v: &[u32]) {
        self.0.reserve(v.len() * 4);
        for x in v {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
    }
    fn u64s(&mut self, v: &[u64]) {
        self.0.reserve(v.len() * 8);
        for x in v {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
    }
    fn f32s(&mut self, v: &[f32]) {
        self.0.reserve(v.len() * 4);
        for x in v {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], IndexError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| corrupt("the file is truncated"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, IndexError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, IndexError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    fn len(&mut self, count: u64, elem: usize) -> Result<usize, IndexError> {
        let count = usize::try_from(count).map_err(|_| corrupt("a section length overflows"))?;
        let bytes = count
            .checked_mul(elem)
            .ok_or_else(|| corrupt("a section length overflows"))?;
        if bytes > self.bytes.len() - self.pos {
            return Err(corrupt("the file is truncated"));
        }
        Ok(count)
    }
    fn u32s(&mut self, count: u64) -> Result<Vec<u32>, IndexError> {
        let n = self.len(count, 4)?;
        Ok(self
            .take(n * 4)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    fn u64s(&mut self, count: u64) -> Result<Vec<u64>, IndexError> {
        let n = self.len(count, 8)?;
        Ok(self
            .take(n * 8)?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }
    fn f32s(&mut self, count: u64) -> Result<Vec<f32>, IndexError> {
        let n = self.len(count, 4)?;
        Ok(self
            .take(n * 4)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    fn bytes(&mut self, count: u64) -> Result<&'a [u8], IndexError> {
        let n = self.len(count, 1)?;
        self.take(n)
    }
}

fn corrupt(reason: &str) -> IndexError {
    IndexError::Corrupt(reason.to_string())
}

fn encode(index: &HnswIndex) -> Vec<u8> {
    let g = &index.graph;
    let n = g.len() as u64;
    let mut w = Writer(Vec::with_capacity(
        64 + g.vectors.len() * 4 + g.level0.len() * 4,
    ));
    w.0.extend_from_slice(MAGIC);
    w.u32(VERSION);
    w.u32(g.dim as u32);
    w.u32(index.params.m as u32);
    w.u32(index.params.ef_construction as u32);
    w.u32(index.params.ef_search as u32);
    w.u32(g.m as u32);
    w.u32(g.m0 as u32);
    w.u32(g.entry);
    w.u32(g.max_level as u32);
    w.u64(index.generation);
    w.u64(n);
    w.u64(g.upper.len() as u64);
    w.u64(index.delta.len() as u64);
    w.u64s(&index.ids);
    w.0.extend_from_slice(&g.levels);
    w.0.extend(index.dead.iter().map(|&d| d as u8));
    w.u32s(&g.upper_offsets);
    w.u32s(&g.level0);
    w.u32s(&g.upper);
    w.f32s(&g.vectors);
    w.u64s(index.delta.ids());
    w.f32s(index.delta.vectors());
    let sum = checksum(&w.0);
    w.u64(sum);
    w.0
}

fn decode(bytes: &[u8]) -> Result<HnswIndex, IndexError> {
    if bytes.len() < MAGIC.len() + 8 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt("not a memex index file"));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 8);
    let mut stored = [0u8; 8];
    stored.copy_from_slice(tail);
    if checksum(body) != u64::from_le_bytes(stored) {
        return Err(corrupt("checksum mismatch (truncated or damaged)"));
    }
    let mut r = Reader {
        bytes: body,
        pos: MAGIC.len(),
    };
    let version = r.u32()?;
    if version != VERSION {
        return Err(corrupt(&format!(
            "unsupported index format version {version}"
        )));
    }
    let dim = r.u32()? as usize;
    let params = HnswParams {
        m: r.u32()? as usize,
        ef_construction: r.u32()? as usize,
        ef_search: (r.u32()? as usize).max(1),
        seed: super::DEFAULT_SEED,
    };
    let m = r.u32()? as usize;
    let m0 = r.u32()? as usize;
    let entry = r.u32()?;
    let max_level = r.u32()?;
    let generation = r.u64()?;
    let n = r.u64()?;
    let upper_len = r.u64()?;
    let delta_len = r.u64()?;
    if dim == 0 || dim > 65_536 || m == 0 || m > 1024 || m0 == 0 || m0 > 2048 || max_level > 64 {
        return Err(corrupt("implausible header"));
    }
    let ids = r.u64s(n)?;
    let levels = r.bytes(n)?.to_vec();
    let dead: Vec<bool> = r.bytes(n)?.iter().map(|&b| b != 0).collect();
    let upper_offsets = r.u32s(n)?;
    let level0 = r.u32s(
        n.checked_mul(m0 as u64 + 1)
            .ok_or_else(|| corrupt("overflow"))?,
    )?;
    let upper = r.u32s(upper_len)?;
    let vectors = r.f32s(
        n.checked_mul(dim as u64)
            .ok_or_else(|| corrupt("overflow"))?,
    )?;
    let delta_ids = r.u64s(delta_len)?;
    let delta_vectors = r.f32s(
        delta_len
            .checked_mul(dim as u64)
            .ok_or_else(|| corrupt("overflow"))?,
    )?;
    if r.pos != body.len() {
        return Err(corrupt("trailing bytes after the last section"));
    }
    let graph = Graph {
        dim,
        m,
        m0,
        vectors,
        levels,
        level0,
        upper_offsets,
        upper,
        entry,
        max_level: max_level as u8,
    };
    graph.validate().map_err(|e| corrupt(&e))?;
    let mut positions = HashMap::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        if positions.insert(id, i as u32).is_some() {
            return Err(corrupt("duplicate id in the graph"));
        }
    }
    let dead_count = dead.iter().filter(|&&d| d).count();
    let mut delta = FlatIndex::new(dim);
    for (i, &id) in delta_ids.iter().enumerate() {
        delta
            .add(id, &delta_vectors[i * dim..(i + 1) * dim])
            .map_err(|_| corrupt("invalid vector in the side list"))?;
    }
    Ok(HnswIndex {
        params,
        graph,
        ids,
        positions,
        dead,
        dead_count,
        delta,
        generation,
    })
}

pub(crate) fn save(index: &HnswIndex, path: &Path) -> Result<(), IndexError> {
    write_atomic(path, &encode(index))
}

/// Writes `bytes` to `path` with [`crate::fsutil::write_atomic`], naming `path` on failure.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IndexError> {
    crate::fsutil::write_atomic(path, bytes).map_err(|source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn load(path: &Path) -> Result<HnswIndex, IndexError> {
    let bytes = fs::read(path).map_err(|e| IndexError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    decode(&bytes)
}

/// Saving and loading live here, beside the file format, so `hnsw.rs` need not name this file.
impl HnswIndex {
    /// Writes the index to `path`: to a temporary file beside it, fsynced, then renamed over
    /// `path`, so readers see the old file or the new one, never a mix.
    pub fn save(&self, path: &Path) -> Result<(), IndexError> {
        save(self, path)
    }

    /// Reads an index written by [`HnswIndex::save`], validating it completely; a truncated,
    /// foreign or corrupted file is an error, never a panic.
    pub fn load(path: &Path) -> Result<Self, IndexError> {
        load(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_detects_single_bit_flip() {
        let mut data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let a = checksum(&data);
        data[500] ^= 1;
        assert_ne!(a, checksum(&data));
    }

    #[test]
    fn decode_rejects_garbage_and_every_truncation() {
        let mut idx = HnswIndex::new(4, HnswParams::default());
        idx.add(7, &[1.0, 0.0, 0.0, 0.0]).unwrap();
        let bytes = encode(&idx);
        assert!(decode(&bytes).is_ok());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        assert!(decode(b"garbage garbage garbage").is_err());
    }
}
