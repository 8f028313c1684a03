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
//!
//! Real-time items (single requests waiting for an answer) and bulk items (job
//! and run inputs) wait in two lanes; [`decide_lanes`] extends the rules:
//! 4. Real-time items enter each batch first, oldest first; bulk items fill
//!    the rest. While bulk items wait, `bulk_reserve` slots of every batch are
//!    kept for them, so a flood of real-time traffic slows bulk work down but
//!    never starves it.
//! 5. A batch is also released at once when real-time items wait, the model
//!    is idle (every instance free) and nothing else is arriving: waiting for
//!    the delay then could only add latency, since nothing would join.

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
    /// Slots of each batch kept for bulk items when both lanes wait.
    pub bulk_reserve: usize,
}

impl PolicyConfig {
    /// Slots to reserve for bulk items out of `max_batch_size` for a share
    /// in `[0, 1]`: rounded up, so any positive share keeps at least one.
    pub fn reserve_for(max_batch_size: usize, share: f64) -> usize {
        if share <= 0.0 {
            return 0;
        }
        // max_batch_size is small (a batch); the product fits f64 exactly.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let slots = (max_batch_size as f64 * share.min(1.0)).ceil() as usize;
        slots.clamp(1, max_batch_size)
    }
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

/// What waits, per lane, each in arrival order.
#[derive(Debug, Clone, Copy)]
pub struct Lanes<'a> {
    /// Real-time items.
    pub realtime: &'a [Pending],
    /// Bulk items.
    pub bulk: &'a [Pending],
}

/// The state of the model around the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moment {
    /// Release whatever waits (end of input, shutdown).
    pub flush: bool,
    /// Every instance is free and no more items are arriving right now.
    pub idle: bool,
}

/// What the batcher should do now, with two lanes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LaneDecision {
    /// Nothing waits.
    Idle,
    /// Wait this long (or until more items arrive), then decide again.
    Wait(Duration),
    /// Release a batch.
    Dispatch(LanePlan),
}

/// A batch drawn from both lanes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LanePlan {
    /// Indices into the real-time lane, ascending; these go first.
    pub realtime: Vec<usize>,
    /// Indices into the bulk lane, with the padding of the whole batch.
    pub bulk: Plan,
}

/// Decides whether to release a batch from the two lanes (rules 1 to 5).
pub fn decide_lanes(lanes: Lanes<'_>, cfg: &PolicyConfig, now: Moment) -> LaneDecision {
    let (rt, bulk) = (lanes.realtime, lanes.bulk);
    let total = rt.len() + bulk.len();
    if total == 0 {
        return LaneDecision::Idle;
    }
    let max = cfg.max_batch_size.max(1);
    let oldest = rt.iter().chain(bulk).map(|p| p.waited).max().unwrap_or_default();
    let full = total >= max;
    let expired = oldest >= cfg.max_delay;
    let eager = now.idle && !rt.is_empty();
    if !(full || expired || now.flush || eager) {
        return LaneDecision::Wait(cfg.max_delay - oldest);
    }
    let reserve = cfg.bulk_reserve.min(bulk.len()).min(max);
    let rt_take = rt.len().min(max - reserve);
    let bulk_take = bulk.len().min(max - rt_take);
    let mut plan = if bulk_take > 0 {
        select(bulk, bulk_take, cfg.group_by_length)
    } else {
        Plan {
            indices: Vec::new(),
            padding: 0,
            fifo_padding: 0,
        }
    };
    if rt_take > 0 {
        // Padding is that of the whole batch: real-time items pad with the rest.
        let lens = rt[..rt_take].iter().map(|p| p.len);
        let chosen = lens.clone().chain(plan.indices.iter().map(|&i| bulk[i].len));
        let fifo = lens.chain(bulk[..bulk_take].iter().map(|p| p.len));
        plan.padding = padding_of(chosen);
        plan.fifo_padding = padding_of(fifo);
    }
    LaneDecision::Dispatch(LanePlan {
        realtime: (0..rt_take).collect(),
        bulk: plan,
    })
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
            bulk_reserve: 0,
        }
    }

    fn lanes_cfg(max: usize, reserve: usize) -> PolicyConfig {
        PolicyConfig {
            bulk_reserve: reserve,
            ..cfg(max, false)
        }
    }

    fn lanes<'a>(realtime: &'a [Pending], bulk: &'a [Pending]) -> Lanes<'a> {
        Lanes { realtime, bulk }
    }

    #[test]
    fn realtime_goes_first_and_bulk_fills_the_rest() {
        let rt = items(&[(1, 0), (1, 0)]);
        let bulk = items(&[(1, 9), (1, 8), (1, 7), (1, 6)]);
        insta::assert_yaml_snapshot!(decide_lanes(lanes(&rt, &bulk), &lanes_cfg(4, 1), Moment::default()), @r"
        Dispatch:
          realtime:
            - 0
            - 1
          bulk:
            indices:
              - 0
              - 1
            padding: 0
            fifo_padding: 0
        ");
    }

    #[test]
    fn bulk_keeps_its_reserve_under_a_realtime_flood() {
        let rt = items(&[(1, 0); 6]);
        let bulk = items(&[(1, 50), (1, 40), (1, 30)]);
        insta::assert_yaml_snapshot!(decide_lanes(lanes(&rt, &bulk), &lanes_cfg(4, 1), Moment::default()), @r"
        Dispatch:
          realtime:
            - 0
            - 1
            - 2
          bulk:
            indices:
              - 0
            padding: 0
            fifo_padding: 0
        ");
    }

    #[test]
    fn reserve_is_unused_when_no_bulk_waits() {
        let rt = items(&[(1, 0); 5]);
        insta::assert_yaml_snapshot!(decide_lanes(lanes(&rt, &[]), &lanes_cfg(4, 2), Moment::default()), @r"
        Dispatch:
          realtime:
            - 0
            - 1
            - 2
            - 3
          bulk:
            indices: []
            padding: 0
            fifo_padding: 0
        ");
    }

    #[test]
    fn a_lone_realtime_item_waits_while_the_model_is_busy() {
        let rt = items(&[(1, 2)]);
        insta::assert_yaml_snapshot!(decide_lanes(lanes(&rt, &[]), &lanes_cfg(4, 1), Moment::default()), @"Wait:
  secs: 0
  nanos: 8000000");
    }

    #[test]
    fn a_lone_realtime_item_goes_at_once_when_the_model_is_idle() {
        let rt = items(&[(1, 0)]);
        let idle = Moment {
            flush: false,
            idle: true,
        };
        insta::assert_yaml_snapshot!(decide_lanes(lanes(&rt, &[]), &lanes_cfg(4, 1), idle), @r"
        Dispatch:
          realtime:
            - 0
          bulk:
            indices: []
            padding: 0
            fifo_padding: 0
        ");
    }

    #[test]
    fn idle_alone_does_not_release_a_partial_bulk_batch() {
        let bulk = items(&[(1, 1), (1, 0)]);
        let idle = Moment {
            flush: false,
            idle: true,
        };
        insta::assert_yaml_snapshot!(decide_lanes(lanes(&[], &bulk), &lanes_cfg(4, 1), idle), @"Wait:
  secs: 0
  nanos: 9000000");
    }

    #[test]
    fn the_oldest_item_of_either_lane_sets_the_delay() {
        let rt = items(&[(1, 1)]);
        let bulk = items(&[(1, 10)]);
        insta::assert_yaml_snapshot!(decide_lanes(lanes(&rt, &bulk), &lanes_cfg(4, 1), Moment::default()), @r"
        Dispatch:
          realtime:
            - 0
          bulk:
            indices:
              - 0
            padding: 0
            fifo_padding: 0
        ");
    }

    #[test]
    fn reserve_rounds_up() {
        assert_eq!(PolicyConfig::reserve_for(32, 0.125), 4);
        assert_eq!(PolicyConfig::reserve_for(8, 0.01), 1);
        assert_eq!(PolicyConfig::reserve_for(8, 0.0), 0);
        assert_eq!(PolicyConfig::reserve_for(8, 1.0), 8);
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
