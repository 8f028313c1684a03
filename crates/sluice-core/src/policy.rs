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
//!
//! With a token budget (`max_batch_tokens`, for text):
//! 6. A batch's padded tokens (items × its longest item) stay within the
//!    budget, so long texts go in smaller batches than short ones. A batch is
//!    also full when the waiting items fill the budget. An item longer than
//!    the budget goes alone (the runtime truncates it as before), so nothing
//!    waits forever. Length grouping then prefers the run of similar lengths
//!    that holds the most items within the budget.
//!
//! [`Backoff`] is the other half of the policy: the effective
//! `max_batch_size` after out-of-memory failures (rule 7, see its docs).

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
    /// Most padded tokens (items × longest item) in one batch; None: no budget.
    pub max_batch_tokens: Option<usize>,
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

/// Decides whether to release a batch from the two lanes (rules 1 to 6).
pub fn decide_lanes(lanes: Lanes<'_>, cfg: &PolicyConfig, now: Moment) -> LaneDecision {
    let (rt, bulk) = (lanes.realtime, lanes.bulk);
    let total = rt.len() + bulk.len();
    if total == 0 {
        return LaneDecision::Idle;
    }
    let max = cfg.max_batch_size.max(1);
    let budget = cfg.max_batch_tokens;
    let oldest = rt.iter().chain(bulk).map(|p| p.waited).max().unwrap_or_default();
    // Full: the items (or, with a budget, the tokens) of one batch wait.
    let full = total >= max || fifo_count(rt.iter().chain(bulk), Fill::EMPTY, max, budget) < total;
    let expired = oldest >= cfg.max_delay;
    let eager = now.idle && !rt.is_empty();
    if !(full || expired || now.flush || eager) {
        return LaneDecision::Wait(cfg.max_delay - oldest);
    }
    let reserve = cfg.bulk_reserve.min(bulk.len()).min(max);
    let mut rt_take = fifo_count(rt.iter(), Fill::EMPTY, max - reserve, budget);
    if reserve > 0 && budget.is_some() {
        // The reserve holds under a token budget too: real-time items make
        // room for the oldest bulk item.
        while rt_take > 0 && !Fill::of(&rt[..rt_take]).with(bulk[0].len).fits(budget) {
            rt_take -= 1;
        }
    }
    let base = Fill::of(&rt[..rt_take]);
    let mut plan = if bulk.is_empty() || rt_take == max {
        Plan {
            indices: Vec::new(),
            padding: 0,
            fifo_padding: 0,
        }
    } else {
        select(bulk, base, max - rt_take, budget, cfg.group_by_length)
    };
    if rt_take > 0 {
        // Padding is that of the whole batch: real-time items pad with the rest.
        let lens = rt[..rt_take].iter().map(|p| p.len);
        let chosen = lens.clone().chain(plan.indices.iter().map(|&i| bulk[i].len));
        let fifo = lens.chain(bulk[..plan.indices.len()].iter().map(|p| p.len));
        plan.padding = padding_of(chosen);
        plan.fifo_padding = padding_of(fifo);
    }
    LaneDecision::Dispatch(LanePlan {
        realtime: (0..rt_take).collect(),
        bulk: plan,
    })
}

/// Decides whether to release a batch from one lane. `pending` is in
/// arrival order; `flush` releases whatever waits (end of input, shutdown).
pub fn decide(pending: &[Pending], cfg: &PolicyConfig, flush: bool) -> Decision {
    let lanes = Lanes {
        realtime: &[],
        bulk: pending,
    };
    match decide_lanes(lanes, cfg, Moment { flush, idle: false }) {
        LaneDecision::Idle => Decision::Idle,
        LaneDecision::Wait(d) => Decision::Wait(d),
        LaneDecision::Dispatch(plan) => Decision::Dispatch(plan.bulk),
    }
}

/// What a batch holds so far: its items and its longest item.
#[derive(Debug, Clone, Copy)]
struct Fill {
    count: usize,
    longest: usize,
}

impl Fill {
    const EMPTY: Fill = Fill { count: 0, longest: 0 };

    fn of(items: &[Pending]) -> Fill {
        items.iter().fold(Fill::EMPTY, |f, p| f.with(p.len))
    }

    /// This fill with one more item of length `len`.
    fn with(self, len: usize) -> Fill {
        Fill {
            count: self.count + 1,
            longest: self.longest.max(len),
        }
    }

    /// Padded tokens: items × longest item.
    fn tokens(self) -> usize {
        self.count.saturating_mul(self.longest)
    }

    fn fits(self, budget: Option<usize>) -> bool {
        budget.is_none_or(|b| self.tokens() <= b)
    }
}

/// How many of `items`, in order, join `base` within `slots` more items and
/// the token budget. The first item of an empty batch always counts (an item
/// longer than the budget runs alone).
fn fifo_count<'a>(items: impl Iterator<Item = &'a Pending>, base: Fill, slots: usize, budget: Option<usize>) -> usize {
    let mut fill = base;
    let mut n = 0;
    for p in items.take(slots) {
        let next = fill.with(p.len);
        if !next.fits(budget) && fill.count > 0 {
            break;
        }
        fill = next;
        n += 1;
    }
    n
}

fn padding_of(lens: impl Iterator<Item = usize> + Clone) -> usize {
    let max = lens.clone().max().unwrap_or(0);
    lens.map(|l| max - l).sum()
}

/// Picks up to `slots` items of `pending` to join `base` within `budget`;
/// the oldest (index 0) is among them unless it cannot fit beside `base`.
fn select(pending: &[Pending], base: Fill, slots: usize, budget: Option<usize>, group: bool) -> Plan {
    let fifo_n = fifo_count(pending.iter(), base, slots, budget);
    let fifo_plan = |n: usize| {
        let fifo_padding = padding_of(pending[..n].iter().map(|p| p.len));
        Plan {
            indices: (0..n).collect(),
            padding: fifo_padding,
            fifo_padding,
        }
    };
    let everything_fits = fifo_n == pending.len();
    if !group || everything_fits || fifo_n == 0 {
        return fifo_plan(fifo_n);
    }
    // Sort by length (stable: ties keep arrival order) and look at each run
    // of neighbours that contains the oldest item (index 0): the most items
    // within the slots and the budget, then the least padding.
    let mut order: Vec<usize> = (0..pending.len()).collect();
    order.sort_by_key(|&i| pending[i].len);
    let pos = order.iter().position(|&i| i == 0).unwrap_or(0);
    let n = order.len();
    let mut best: Option<(usize, usize, usize, usize, usize)> = None; // (−count, padding, age_rank, start, end)
    for start in pos.saturating_sub(slots - 1)..=pos {
        let mut end = (start + slots).min(n);
        // Sorted by length, so the last item of a run is its longest.
        let fits = |end: usize| {
            let f = Fill {
                count: base.count + (end - start),
                longest: base.longest.max(pending[order[end - 1]].len),
            };
            f.fits(budget)
        };
        while end > pos + 1 && !fits(end) {
            end -= 1;
        }
        if !fits(end) {
            continue;
        }
        let window = &order[start..end];
        let padding = padding_of(window.iter().map(|&i| pending[i].len));
        // Among equal padding prefer the window holding older items.
        let age_rank: usize = window.iter().sum();
        let key = (usize::MAX - window.len(), padding, age_rank, start, end);
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    let Some((_, _, _, start, end)) = best else {
        return fifo_plan(fifo_n);
    };
    let mut indices = order[start..end].to_vec();
    indices.sort_unstable();
    let padding = padding_of(indices.iter().map(|&i| pending[i].len));
    Plan {
        indices,
        padding,
        fifo_padding: padding_of(pending[..end - start].iter().map(|p| p.len)),
    }
}

/// Full batches at the effective size before it grows by one.
pub const GROW_AFTER: usize = 8;
/// Full batches at the largest size below one that ran out of memory before
/// that size is tried again (the memory may have been freed since).
pub const RETRY_AFTER: usize = 64;

/// The effective `max_batch_size` of a model whose batches may run out of
/// memory (rule 7), as a pure state machine the engine feeds with outcomes.
///
/// - A batch of `n` items that runs out of memory lowers the effective size
///   to the larger of `n / 2` and the largest size that succeeded since the
///   last failure (never raising it), and remembers `n` as too big. The
///   engine splits that batch and retries the halves, so no item fails.
/// - After [`GROW_AFTER`] successful full batches the size grows by one,
///   up to the configured maximum, but not up to a size known to be too big;
///   after [`RETRY_AFTER`] full batches just below such a size it is tried
///   again, so the size grows back once memory is freed. A size that still
///   fails costs one split batch per [`RETRY_AFTER`].
///
/// The size then settles at the largest that fits: a model that fails above
/// 5 items goes 32 → 16 → 8 → 4 and grows to 5.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backoff {
    ceiling: usize,
    limit: usize,
    /// Smallest size known to run out of memory.
    too_big: Option<usize>,
    /// Largest size that succeeded since the last failure.
    good: usize,
    /// Full batches in a row since the size last changed.
    streak: usize,
}

/// A change of the effective batch size, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SizeChange {
    /// Lowered after a batch of `failed` items ran out of memory.
    BackedOff {
        /// Size before.
        from: usize,
        /// Size after.
        to: usize,
        /// Items in the batch that failed.
        failed: usize,
    },
    /// Raised after successes.
    Grew {
        /// Size before.
        from: usize,
        /// Size after.
        to: usize,
    },
}

impl Backoff {
    /// Starts at the configured maximum.
    pub fn new(max_batch_size: usize) -> Backoff {
        let ceiling = max_batch_size.max(1);
        Backoff {
            ceiling,
            limit: ceiling,
            too_big: None,
            good: 0,
            streak: 0,
        }
    }

    /// The effective max batch size now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A batch of `size` items ran out of memory.
    pub fn on_out_of_memory(&mut self, size: usize) -> Option<SizeChange> {
        self.streak = 0;
        self.too_big = Some(self.too_big.map_or(size, |b| b.min(size)));
        let known_good = if self.good < size { self.good } else { 0 };
        self.good = 0;
        let to = (size / 2).max(known_good).max(1).min(self.limit);
        let from = std::mem::replace(&mut self.limit, to);
        (to != from).then_some(SizeChange::BackedOff { from, to, failed: size })
    }

    /// A batch of `size` items ran.
    pub fn on_success(&mut self, size: usize) -> Option<SizeChange> {
        self.good = self.good.max(size);
        if size < self.limit || self.limit >= self.ceiling {
            // A partial batch says nothing about the limit.
            return None;
        }
        self.streak += 1;
        let next = self.limit + 1;
        if self.too_big.is_some_and(|b| next >= b) {
            if self.streak < RETRY_AFTER {
                return None;
            }
            self.too_big = None;
        } else if self.streak < GROW_AFTER {
            return None;
        }
        self.streak = 0;
        let from = std::mem::replace(&mut self.limit, next);
        Some(SizeChange::Grew { from, to: next })
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
            max_batch_tokens: None,
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

    fn budget(max: usize, tokens: usize, group: bool) -> PolicyConfig {
        PolicyConfig {
            max_batch_tokens: Some(tokens),
            ..cfg(max, group)
        }
    }

    #[test]
    fn a_token_budget_holds_fewer_long_items_than_short_ones() {
        // 8 slots, 256 tokens: four 64-token texts fill the budget.
        let long = items(&[(64, 3); 6]);
        insta::assert_yaml_snapshot!(decide(&long, &budget(8, 256, false), false), @r"
        Dispatch:
          indices:
            - 0
            - 1
            - 2
            - 3
          padding: 0
          fifo_padding: 0
        ");
        // Short texts: the slots are the limit, not the budget.
        let short = items(&[(16, 3); 9]);
        let Decision::Dispatch(plan) = decide(&short, &budget(8, 256, false), false) else {
            panic!("a full batch of short items goes at once");
        };
        assert_eq!(plan.indices.len(), 8);
    }

    #[test]
    fn a_filled_budget_releases_the_batch_before_the_delay() {
        // Three items, 8 slots free, but 3 × 100 tokens is over 256: full now.
        let pending = items(&[(100, 1), (100, 1), (100, 0)]);
        insta::assert_yaml_snapshot!(decide(&pending, &budget(8, 256, false), false), @r"
        Dispatch:
          indices:
            - 0
            - 1
          padding: 0
          fifo_padding: 0
        ");
        // Within the budget it waits for the delay as before.
        let pending = items(&[(100, 1), (100, 0)]);
        assert!(matches!(
            decide(&pending, &budget(8, 256, false), false),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn an_item_longer_than_the_budget_goes_alone() {
        let pending = items(&[(512, 10), (8, 9), (8, 8)]);
        insta::assert_yaml_snapshot!(decide(&pending, &budget(8, 256, true), false), @r"
        Dispatch:
          indices:
            - 0
          padding: 0
          fifo_padding: 0
        ");
    }

    #[test]
    fn grouping_under_a_budget_prefers_the_run_with_the_most_items() {
        // Oldest is 40 tokens; with 160 tokens, the short neighbours let four in
        // (4 × 40) where the long ones would let two (2 × 80).
        let pending = items(&[(40, 10), (80, 9), (80, 8), (30, 7), (35, 6), (20, 5), (80, 4)]);
        insta::assert_yaml_snapshot!(decide(&pending, &budget(8, 160, true), false), @r"
        Dispatch:
          indices:
            - 0
            - 3
            - 4
            - 5
          padding: 35
          fifo_padding: 90
        ");
    }

    #[test]
    fn under_a_budget_realtime_items_make_room_for_the_bulk_reserve() {
        // Two real-time items of 100 tokens fill a 200-token budget; one bulk slot
        // is reserved, so one real-time item waits and the oldest bulk item goes.
        let rt = items(&[(100, 1), (100, 1)]);
        let bulk = items(&[(50, 20)]);
        let cfg = PolicyConfig {
            max_batch_tokens: Some(200),
            ..lanes_cfg(4, 1)
        };
        insta::assert_yaml_snapshot!(decide_lanes(lanes(&rt, &bulk), &cfg, Moment::default()), @r"
        Dispatch:
          realtime:
            - 0
          bulk:
            indices:
              - 0
            padding: 50
            fifo_padding: 50
        ");
    }

    #[test]
    fn no_batch_exceeds_the_budget_whatever_waits() {
        // Every length mix, every budget: a released batch holds more than one
        // item only when items × longest fits.
        for tokens in [1, 7, 64, 100, 333] {
            for seed in 0..50usize {
                let lens: Vec<(usize, u64)> = (0..12)
                    .map(|i| (1 + (seed * 31 + i * 17) % 97, 12 - i as u64))
                    .collect();
                let pending = items(&lens);
                for group in [false, true] {
                    let Decision::Dispatch(plan) = decide(&pending, &budget(8, tokens, group), true) else {
                        panic!("flush releases a batch");
                    };
                    assert!(plan.indices.contains(&0), "the oldest item is in: {plan:?}");
                    let longest = plan.indices.iter().map(|&i| pending[i].len).max().unwrap_or(0);
                    assert!(
                        plan.indices.len() == 1 || plan.indices.len() * longest <= tokens,
                        "{plan:?} over {tokens} tokens"
                    );
                }
            }
        }
    }

    /// Feeds a back-off a model that runs out of memory above `fits` items,
    /// with a queue that always fills the effective size; returns the sizes
    /// of the batches that ran and the changes.
    fn drive(b: &mut Backoff, fits: usize, batches: usize) -> (Vec<usize>, Vec<SizeChange>) {
        let (mut sizes, mut changes) = (Vec::new(), Vec::new());
        for _ in 0..batches {
            // The engine splits a failed batch into halves until they fit.
            let mut todo = vec![b.limit()];
            while let Some(n) = todo.pop() {
                if n > fits && n > 1 {
                    changes.extend(b.on_out_of_memory(n));
                    todo.push(n - n / 2);
                    todo.push(n / 2);
                } else {
                    sizes.push(n);
                    changes.extend(b.on_success(n));
                }
            }
        }
        (sizes, changes)
    }

    #[test]
    fn backoff_settles_at_the_largest_size_that_fits() {
        let mut b = Backoff::new(32);
        let (sizes, changes) = drive(&mut b, 5, 40);
        insta::assert_yaml_snapshot!(changes, @r"
        - BackedOff:
            from: 32
            to: 16
            failed: 32
        - BackedOff:
            from: 16
            to: 8
            failed: 16
        - BackedOff:
            from: 8
            to: 4
            failed: 8
        - Grew:
            from: 4
            to: 5
        - Grew:
            from: 5
            to: 6
        - BackedOff:
            from: 6
            to: 5
            failed: 6
        ");
        assert_eq!(b.limit(), 5);
        assert!(sizes.iter().all(|&n| n <= 5), "no batch that ran was too big");
    }

    #[test]
    fn backoff_retries_a_failed_size_and_grows_back_once_memory_is_freed() {
        let mut b = Backoff::new(32);
        drive(&mut b, 5, 40);
        // Still too small: one retry per RETRY_AFTER full batches, each split.
        let (_, changes) = drive(&mut b, 5, RETRY_AFTER + 1);
        assert_eq!(
            changes,
            vec![
                SizeChange::Grew { from: 5, to: 6 },
                SizeChange::BackedOff {
                    from: 6,
                    to: 5,
                    failed: 6
                }
            ]
        );
        // The limit is lifted: it grows back to the configured maximum.
        let (_, changes) = drive(&mut b, usize::MAX, RETRY_AFTER + 27 * GROW_AFTER);
        assert_eq!(b.limit(), 32, "{changes:?}");
        assert!(changes.iter().all(|c| matches!(c, SizeChange::Grew { .. })));
    }

    #[test]
    fn backoff_never_goes_below_one_or_above_the_maximum() {
        let mut b = Backoff::new(4);
        drive(&mut b, 0, 3);
        assert_eq!(b.limit(), 1);
        let mut b = Backoff::new(4);
        drive(&mut b, usize::MAX, 100);
        assert_eq!(b.limit(), 4);
        // A failure reported for a batch formed before a back-off never raises the size.
        let mut b = Backoff::new(32);
        b.on_out_of_memory(8);
        assert_eq!(b.on_out_of_memory(32), None);
        assert_eq!(b.limit(), 4);
    }
}
