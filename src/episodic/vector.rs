//! Vector helpers shared by the backends: normalisation, byte encoding, exact top-k.

use super::EpisodicError;

/// Scales `v` to unit length in place; returns `false` (leaving `v` unchanged) for a zero vector.
pub(crate) fn normalize(v: &mut [f32]) -> bool {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return false;
    }
    for x in v.iter_mut() {
        *x = (f64::from(*x) / norm) as f32;
    }
    true
}

/// Little-endian `f32` bytes of `v`, the on-disk and on-wire form of embeddings.
pub(crate) fn to_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Decodes [`to_bytes`] output; `id` names the episode in the error.
pub(crate) fn from_bytes(bytes: &[u8], id: &str) -> Result<Vec<f32>, EpisodicError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(EpisodicError::Corrupt {
            id: id.to_owned(),
            message: format!("embedding is {} bytes, not a multiple of 4", bytes.len()),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Dot product of the query with a little-endian `f32` byte slice of the same dimension.
fn dot_bytes(query: &[f32], bytes: &[u8]) -> f32 {
    query
        .iter()
        .zip(bytes.chunks_exact(4))
        .map(|(q, c)| q * f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .sum()
}

/// One stored candidate for [`top_k`]: a key the caller understands, the creation time for
/// tie-breaking, and the stored unit vector as bytes.
pub(crate) struct Candidate<K> {
    pub key: K,
    pub id: String,
    pub created_us: i64,
    pub embedding: Vec<u8>,
}

/// Exact cosine top-`k` of unit `query` against unit candidates. Ties go to the newer episode.
/// Fails closed if any candidate's dimension differs from the query's.
pub(crate) fn top_k<K>(
    query: &[f32],
    candidates: Vec<Candidate<K>>,
    k: usize,
) -> Result<Vec<(K, f32)>, EpisodicError> {
    let mut scored = Vec::with_capacity(candidates.len());
    for c in candidates {
        if c.embedding.len() != query.len() * 4 {
            if c.embedding.len() % 4 != 0 {
                return Err(EpisodicError::Corrupt {
                    id: c.id,
                    message: format!(
                        "embedding is {} bytes, not a multiple of 4",
                        c.embedding.len()
                    ),
                });
            }
            return Err(EpisodicError::DimensionMismatch {
                id: c.id,
                expected: query.len(),
                found: c.embedding.len() / 4,
            });
        }
        let score = dot_bytes(query, &c.embedding).clamp(-1.0, 1.0);
        scored.push((score, c.created_us, c.key));
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    scored.truncate(k);
    Ok(scored.into_iter().map(|(s, _, key)| (key, s)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let v = vec![0.5, -1.25, 3.0e-7, f32::MAX];
        assert_eq!(from_bytes(&to_bytes(&v), "x").unwrap(), v);
        assert!(from_bytes(&[1, 2, 3], "x").is_err());
    }

    #[test]
    fn top_k_orders_by_score_then_newest() {
        let mk = |key: u32, created_us: i64, v: [f32; 2]| Candidate {
            key,
            id: key.to_string(),
            created_us,
            embedding: to_bytes(&v),
        };
        let got = top_k(
            &[1.0, 0.0],
            vec![
                mk(1, 10, [0.0, 1.0]),
                mk(2, 11, [1.0, 0.0]),
                mk(3, 12, [1.0, 0.0]),
                mk(4, 13, [-1.0, 0.0]),
            ],
            3,
        )
        .unwrap();
        let keys: Vec<u32> = got.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![3, 2, 1]);
        assert!((got[0].1 - 1.0).abs() < 1e-6);
        let err = top_k(&[1.0, 0.0, 0.0], vec![mk(1, 1, [1.0, 0.0])], 1).unwrap_err();
        assert!(matches!(
            err,
            EpisodicError::DimensionMismatch {
                found: 2,
                expected: 3,
                ..
            }
        ));
    }
}
