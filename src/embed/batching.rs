//! Planning batches: length-sorted, bounded by sequence count and padded-token budget.
//!
//! Pure functions over token lengths, so the plan is unit-tested without a model.

/// One batch: indices into the original input, longest first, and the padded length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Indices of the texts in this batch (into the caller's input order).
    pub members: Vec<usize>,
    /// Length every member is padded to (the longest member's length).
    pub padded_len: usize,
}

/// Groups texts of the given token lengths into batches.
///
/// Texts are sorted by length (longest first, ties by input order, so the plan is deterministic);
/// a batch takes texts while it holds at most `max_batch` of them and `count × longest ≤
/// max_tokens_per_batch` (a single text always fits). Sorting keeps padding small; the caller
/// restores input order with the `members` indices.
pub fn plan_batches(
    lengths: &[usize],
    max_batch: usize,
    max_tokens_per_batch: usize,
) -> Vec<Batch> {
    let max_batch = max_batch.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut padded_len = 0;
    for idx in order {
        let len = lengths[idx].max(1);
        let new_pad = padded_len.max(len);
        let fits =
            current.len() < max_batch && new_pad * (current.len() + 1) <= max_tokens_per_batch;
        if !current.is_empty() && !fits {
            batches.push(Batch {
                members: std::mem::take(&mut current),
                padded_len,
            });
            padded_len = 0;
        }
        padded_len = padded_len.max(len);
        current.push(idx);
    }
    if !current.is_empty() {
        batches.push(Batch {
            members: current,
            padded_len,
        });
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_appears_once() {
        let lens = [5, 100, 7, 7, 256, 1, 30, 30, 30];
        let plan = plan_batches(&lens, 3, 10_000);
        let mut seen: Vec<usize> = plan.iter().flat_map(|b| b.members.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>());
    }

    #[test]
    fn respects_count_and_token_budget() {
        let lens = [10; 10];
        let plan = plan_batches(&lens, 4, 10_000);
        assert_eq!(
            plan.iter().map(|b| b.members.len()).collect::<Vec<_>>(),
            [4, 4, 2]
        );
        let plan = plan_batches(&lens, 64, 30);
        assert!(plan.iter().all(|b| b.members.len() * b.padded_len <= 30));
        assert_eq!(plan.len(), 4);
    }

    #[test]
    fn longest_first_and_padded_to_longest() {
        let lens = [3, 9, 5];
        let plan = plan_batches(&lens, 8, 1_000);
        assert_eq!(
            plan,
            vec![Batch {
                members: vec![1, 2, 0],
                padded_len: 9
            }]
        );
    }

    #[test]
    fn oversized_single_text_gets_its_own_batch() {
        let plan = plan_batches(&[300, 2], 8, 100);
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].members, vec![0]);
    }

    #[test]
    fn empty_input_plans_nothing() {
        assert!(plan_batches(&[], 8, 100).is_empty());
    }
}
