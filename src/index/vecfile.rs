//! The on-disk form of the backends whose file is just their live vectors ([`FlatIndex`] and
//! [`HnswRsIndex`]): a magic, the backend kind, the dimension, the count, the generation, the
//! ids, the vectors and a trailing checksum. Written atomically through
//! [`persist::write_atomic`]; read back in full and validated before use.
//!
//! [`FlatIndex`]: super::FlatIndex
//! [`HnswRsIndex`]: super::HnswRsIndex

use std::path::Path;

use super::persist::{checksum, write_atomic};
use super::{check_vector, IndexError};

const MAGIC: &[u8; 8] = b"MEMEXVEC";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 4 + 8 + 8 + 8;

/// Which backend wrote a file (a file of one kind is refused by the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Flat = 1,
    HnswRs = 2,
}

/// The contents of a vector file.
pub(crate) struct VecFile {
    pub dim: usize,
    pub generation: u64,
    pub ids: Vec<u64>,
    pub vectors: Vec<f32>,
}

pub(crate) fn save(
    path: &Path,
    kind: Kind,
    dim: usize,
    generation: u64,
    ids: &[u64],
    vectors: &[f32],
) -> Result<(), IndexError> {
    let mut out = Vec::with_capacity(HEADER + ids.len() * 8 + vectors.len() * 4 + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&(dim as u64).to_le_bytes());
    out.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    for x in vectors {
        out.extend_from_slice(&x.to_le_bytes());
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    write_atomic(path, &out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

pub(crate) fn load(path: &Path, kind: Kind) -> Result<VecFile, IndexError> {
    let bytes = std::fs::read(path).map_err(|e| IndexError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let corrupt = |m: &str| IndexError::Corrupt(m.to_owned());
    if bytes.len() < HEADER + 8 || &bytes[..8] != MAGIC {
        return Err(corrupt("not a memex vector file"));
    }
    let body = bytes.len() - 8;
    if checksum(&bytes[..body]) != u64_at(&bytes, body) {
        return Err(corrupt("checksum mismatch"));
    }
    if u32_at(&bytes, 8) != VERSION {
        return Err(corrupt("unsupported version"));
    }
    if u32_at(&bytes, 12) != kind as u32 {
        return Err(corrupt("the file was written by another index backend"));
    }
    let dim = usize::try_from(u64_at(&bytes, 16)).map_err(|_| corrupt("bad dimension"))?;
    let n = usize::try_from(u64_at(&bytes, 24)).map_err(|_| corrupt("bad count"))?;
    let generation = u64_at(&bytes, 32);
    let expected = n
        .checked_mul(8)
        .and_then(|ids| n.checked_mul(dim)?.checked_mul(4)?.checked_add(ids))
        .and_then(|payload| payload.checked_add(HEADER));
    if dim == 0 || expected != Some(body) {
        return Err(corrupt("lengths do not match the header"));
    }
    let ids: Vec<u64> = (0..n).map(|i| u64_at(&bytes, HEADER + i * 8)).collect();
    let start = HEADER + n * 8;
    let vectors: Vec<f32> = bytes[start..body]
        .chunks_exact(4)
        .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    for v in vectors.chunks_exact(dim) {
        check_vector(dim, v).map_err(|_| corrupt("a stored vector is not finite"))?;
    }
    Ok(VecFile {
        dim,
        generation,
        ids,
        vectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.idx");
        save(&path, Kind::Flat, 2, 7, &[5, 9], &[1.0, 0.0, 0.0, 1.0]).unwrap();
        let f = load(&path, Kind::Flat).unwrap();
        assert_eq!((f.dim, f.generation, f.ids.clone()), (2, 7, vec![5, 9]));
        assert_eq!(f.vectors, vec![1.0, 0.0, 0.0, 1.0]);
        assert!(load(&path, Kind::HnswRs).is_err());
        let bytes = std::fs::read(&path).unwrap();
        for cut in 0..bytes.len() {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(load(&path, Kind::Flat).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[HEADER + 3] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(load(&path, Kind::Flat).is_err());
    }
}
