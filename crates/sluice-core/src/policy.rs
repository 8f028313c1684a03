//! The batching policy, as a pure function.
//!
//! Given what waits in a model's queue (arrival order, each item's length and
//! how long it has waited), [`decide`] says whether to dispatch a batch now and
//! which items go in it, or how long to wait. Keeping the policy free of
//! channels and clocks makes each rule testable case by case (see the snapshot
//! tests below) and lets the engine's batcher stay a thin loop around it.
//!
//! Rules:
//! 1. A batch is released when `max_batch_size` items wait, when the oldest
//!    item has waited `max_delay`, or when the caller flushes (input ended).
//! 2. The oldest waiting item is always in the released batch, so no item is
//!    passed over forever.
//! 3. With length grouping on and more items waiting than fit, the batch is
//!    the run of `max_batch_size` items closest in length to each other
//!    (sorted by length) that contains the oldest item and needs the least
//!    padding. The padding a first-come-first-served batch would have needed
//!    is reported beside it, so the saving can be counted.

use std::time::Duration;

use serde::Serialize;

/// Batching limits of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Most items in one batch.
    pub max_batch_size: usize,
    /// Longest the oldest item waits for a batch to fill.
    pub max_delay: Duration,
    /// Pick items of similar length together (text models).
    pub group_by_length: bool,
}

/// One waiting item, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Cost along the padded dimension (tokens for text; 1 for fixed-size inputs).
    pub len: usize,
    /// How long the item has waited so far.
    pub waited: Duration,
}

/// What the batcher should do now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Decision {
    /// Nothing waits.
    Idle,
    /// Wait this long (or until more items arrive), then decide again.
    Wait(Duration),
    /// Release a batch.
    Dispatch(Plan),
}

/// A batch to release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Indices into the pending slice, ascending (arrival order).
    pub indices: Vec<usize>,
    /// Padding elements this batch needs: `n * max_len - sum(len)`.
    pub padding: usize,
    /// Padding the first `n` items in arrival order would have needed.
    pub fifo_padding: usize,
}

/// Decides whether to release a batch. `pending` is in arrival order; `flush`
/// releases whatever waits (end of input, shutdown).
pub fn decide(pending: &[Pending], cfg: &PolicyConfig, flush: bool) -> Decision {
    let Some(oldest) = pending.first() else {
        return Decision::Idle;
    };
    let max = cfg.max_batch_size.max(1);
    let full = pending.len() >= max;
    let expired = oldest.waited >= cfg.max_delay;
    if !(full || expired || flush) {
        return Decision::Wait(cfg.max_delay - oldest.waited);
    }
    Decision::Dispatch(select(pending, max, cfg.group_by_length))
}

fn padding_of(lens: impl Iterator<Item = usize> + Clone) -> usize {
    let max = lens.clone().max().unwrap_or(0);
    lens.map(|l| max - l).sum()
}

fn select(pending: &[Pending], max: usize, group: bool) -> Plan {
    let n = pending.len().min(max);
    let fifo_padding = padding_of(pending[..n].iter().map(|p| p.len));
    if !group || pending.len() <= max {
        return Plan {
            indices: (0..n).collect(),
            padding: fifo_padding,
            fifo_padding,
        };
    }
    // Sort by length (stable: ties keep arrival order) and slide a window of
    // `max` items that must contain the oldest item (index 0).
    let mut order: Vec<usize> = (0..pending.len()).collect();
    order.sort_by_key(|&i| pending[i].len);
    let pos = order.iter().position(|&i| i == 0).unwrap_or(0);
    let first_start = pos.saturating_sub(max - 1);
    let last_start = pos.min(order.len() - max);
    let mut best: Option<(usize, usize, usize)> = None; // (padding, age_rank, start)
    for start in first_start..=last_start {
        let window = &order[start..start + max];
        let padding = padding_of(window.iter().map(|&i| pending[i].len));
        // Among equal padding prefer the window holding older items.
        let age_rank: usize = window.iter().sum();
        if best.is_none_or(|(p, a, _)| (padding, age_rank) < (p, a)) {
            best = Some((padding, age_rank, start));
        }
    }
    let (padding, _, start) = best.unwrap_or((fifo_padding, 0, 0));
    let mut indices = order[start..start + max].to_vec();
    indices.sort_unstable();
    Plan {
        indices,
        padding,
        fifo_padding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: usize, group: bool) -> PolicyConfig {
        PolicyConfig {
            max_batch_size: max,
            max_delay: Duration::from_millis(10),
            group_by_length: group,
        }
    }

    fn items(spec: &[(usize, u64)]) -> Vec<Pending> {
        spec.iter()
            .map(|&(len, ms)| Pending {
                len,
                waited: Duration::from_millis(ms),
            })
            .collect()
    }

    #[test]
    fn empty_queue_is_idle() {
        insta::assert_yaml_snapshot!(decide(&[], &cfg(4, true), false), @"Idle");
    }

    #[test]
    fn partial_batch_waits_for_the_rest_of_the_delay() {
        insta::assert_yaml_snapshot!(decide(&items(&[(5, 3), (5, 1)]), &cfg(4, false), false), @"Wait:
  secs: 0
  nanos: 7000000");
    }

    #[test]
    fn full_batch_goes_at_once() {
        insta::assert_yaml_snapshot!(decide(&items(&[(1, 0), (1, 0), (1, 0), (1, 0), (1, 0)]), &cfg(4, false), false), @r"
        Dispatch:
          indices:
            - 0
            - 1
            - 2
            - 3
          padding: 0
          fifo_padding: 0
        ");
    }

    #[test]
    fn expired_delay_releases_a_partial_batch() {
        insta::assert_yaml_snapshot!(decide(&items(&[(3, 10), (7, 2)]), &cfg(4, true), false), @r"
        Dispatch:
          indices:
            - 0
            - 1
          padding: 4
          fifo_padding: 4
        ");
    }

    #[test]
    fn flush_releases_what_waits() {
        insta::assert_yaml_snapshot!(decide(&items(&[(2, 0)]), &cfg(4, true), true), @r"
        Dispatch:
          indices:
            - 0
          padding: 0
          fifo_padding: 0
        ");
    }

    #[test]
    fn grouping_picks_similar_lengths_around_the_oldest() {
        // Oldest is short; the other short ones join it, long ones wait.
        let pending = items(&[(4, 10), (60, 9), (5, 8), (58, 7), (3, 6), (61, 5)]);
        insta::assert_yaml_snapshot!(decide(&pending, &cfg(3, true), false), @r"
        Dispatch:
          indices:
            - 0
            - 2
            - 4
          padding: 3
          fifo_padding: 111
        ");
    }

    #[test]
    fn grouping_always_includes_the_oldest_even_if_it_is_an_outlier() {
        let pending = items(&[(100, 10), (5, 9), (5, 8), (5, 7), (90, 1)]);
        insta::assert_yaml_snapshot!(decide(&pending, &cfg(2, true), false), @r"
        Dispatch:
          indices:
            - 0
            - 4
          padding: 10
          fifo_padding: 95
        ");
    }

    #[test]
    fn grouping_off_is_first_come_first_served() {
        let pending = items(&[(4, 10), (60, 9), (5, 8), (58, 7)]);
        insta::assert_yaml_snapshot!(decide(&pending, &cfg(2, false), false), @r"
        Dispatch:
          indices:
            - 0
            - 1
          padding: 56
          fifo_padding: 56
        ");
    }

    #[test]
    fn ties_prefer_older_items() {
        let pending = items(&[(5, 10), (5, 9), (5, 8), (5, 7), (5, 6)]);
        insta::assert_yaml_snapshot!(decide(&pending, &cfg(3, true), false), @r"
        Dispatch:
          indices:
            - 0
            - 1
            - 2
          padding: 0
          fifo_padding: 0
        ");
    }
}
