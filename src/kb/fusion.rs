//! Reciprocal rank fusion of ranked lists.

use std::collections::HashMap;

/// The RRF constant: a document at rank r in a list contributes `1 / (RRF_K + r)`.
pub const RRF_K: f64 = 60.0;

/// A fused result: the id, its fused score and its 1-based rank in each input list.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused {
    /// The document (chunk) id.
    pub id: u64,
    /// Sum of reciprocal ranks.
    pub score: f64,
    /// Rank in the vector list, if present.
    pub vector_rank: Option<usize>,
    /// Rank in the keyword list, if present.
    pub keyword_rank: Option<usize>,
}

/// Fuses two best-first id lists; ties are broken by the better single rank, then by id.
pub fn rrf(vector: &[u64], keyword: &[u64]) -> Vec<Fused> {
    let mut by_id: HashMap<u64, Fused> = HashMap::new();
    for (i, &id) in vector.iter().enumerate() {
        let e = by_id.entry(id).or_insert(Fused {
            id,
            score: 0.0,
            vector_rank: None,
            keyword_rank: None,
        });
        if e.vector_rank.is_none() {
            e.vector_rank = Some(i + 1);
            e.score += 1.0 / (RRF_K + (i + 1) as f64);
        }
    }
    for (i, &id) in keyword.iter().enumerate() {
        let e = by_id.entry(id).or_insert(Fused {
            id,
            score: 0.0,
            vector_rank: None,
            keyword_rank: None,
        });
        if e.keyword_rank.is_none() {
            e.keyword_rank = Some(i + 1);
            e.score += 1.0 / (RRF_K + (i + 1) as f64);
        }
    }
    let mut out: Vec<Fused> = by_id.into_values().collect();
    // Ties: found by both lists first, then the better keyword rank (an exact-token match is
    // stronger evidence than a nearest neighbour at the same rank), then vector rank, then id.
    let both = |f: &Fused| !(f.vector_rank.is_some() && f.keyword_rank.is_some());
    let rank = |r: Option<usize>| r.unwrap_or(usize::MAX);
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(both(a).cmp(&both(b)))
            .then(rank(a.keyword_rank).cmp(&rank(b.keyword_rank)))
            .then(rank(a.vector_rank).cmp(&rank(b.vector_rank)))
            .then(a.id.cmp(&b.id))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_items_rise_and_ranks_are_reported() {
        let fused = rrf(&[1, 2, 3], &[3, 4]);
        assert_eq!(fused[0].id, 3);
        assert_eq!(fused[0].vector_rank, Some(3));
        assert_eq!(fused[0].keyword_rank, Some(1));
        let four = fused.iter().find(|f| f.id == 4).map(|f| f.vector_rank);
        assert_eq!(four, Some(None));
        assert_eq!(fused.len(), 4);
        // 1 (vector rank 1) beats 4 (keyword rank 2).
        let pos = |id| fused.iter().position(|f| f.id == id);
        assert!(pos(1) < pos(4));
    }

    #[test]
    fn ties_prefer_the_keyword_match() {
        let fused = rrf(&[10], &[20]);
        assert_eq!(fused[0].id, 20);
        assert_eq!(fused[0].score, fused[1].score);
    }

    #[test]
    fn empty_inputs() {
        assert!(rrf(&[], &[]).is_empty());
    }
}
