//! How a claim shares its limit between the jobs of a model: a pure function, so that every
//! backend claims alike and the policy is tested on its own.

/// The weight of a job of this priority: `1 + priority`, priority clamped to 0..=9.
pub fn weight(priority: i32) -> u32 {
    1 + u32::try_from(priority.clamp(0, 9)).unwrap_or(0)
}

/// Splits `limit` items between jobs in proportion to `weights` (largest remainders first; ties
/// go to the earlier job, so list jobs by priority, then age). Every job with a weight gets at
/// least one item when the limit allows; when it does not, the first `limit` jobs after `offset`
/// (cyclically) get one each, so that successive claims with a moving offset serve every job in
/// turn. The shares add up to `limit` whenever at least one weight is positive.
pub fn fair_shares(weights: &[u32], limit: u32, offset: usize) -> Vec<u32> {
    let n = weights.len();
    let mut shares = vec![0u32; n];
    let eligible: Vec<usize> = (0..n)
        .map(|i| (i + offset) % n.max(1))
        .filter(|&i| weights.get(i).copied().unwrap_or(0) > 0)
        .collect();
    if eligible.is_empty() || limit == 0 {
        return shares;
    }
    if (limit as usize) < eligible.len() {
        for &i in eligible.iter().take(limit as usize) {
            shares[i] = 1;
        }
        return shares;
    }
    // One each, then the rest in proportion to the weights.
    let rest = u64::from(limit) - eligible.len() as u64;
    let total: u64 = eligible.iter().map(|&i| u64::from(weights[i])).sum();
    let mut given = 0u64;
    let mut remainders: Vec<(u64, usize)> = Vec::with_capacity(eligible.len());
    for &i in &eligible {
        let exact = rest * u64::from(weights[i]);
        let whole = exact / total;
        shares[i] = 1 + u32::try_from(whole).unwrap_or(u32::MAX);
        given += whole;
        remainders.push((exact % total, i));
    }
    // Largest remainder first; on a tie the job listed first.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take((rest - given) as usize) {
        shares[i] += 1;
    }
    shares
}

/// The rounds of one claim: each round shares what is left of the limit between the jobs that
/// may still have claimable items ([`fair_shares`]), and a job that returns less than its share is
/// left out of the next rounds, so that what it could not use goes to the others. Pure, so that
/// both backends claim alike.
#[derive(Debug)]
pub(crate) struct FairRounds {
    weights: Vec<u32>,
    open: Vec<bool>,
    left: u32,
    offset: usize,
}

impl FairRounds {
    /// Rounds for jobs of these priorities (listed by priority, then age) and this limit;
    /// `offset` turns the order in which a limit smaller than the number of jobs serves them.
    pub(crate) fn new(priorities: &[i32], limit: u32, offset: usize) -> Self {
        FairRounds {
            weights: priorities.iter().map(|&p| weight(p)).collect(),
            open: vec![true; priorities.len()],
            left: limit,
            offset,
        }
    }

    /// The next round: `(job index, share)` for every job with a share; empty when the claim is
    /// over (the limit reached, or no job left with items).
    pub(crate) fn round(&self) -> Vec<(usize, u32)> {
        if self.left == 0 {
            return Vec::new();
        }
        let weights: Vec<u32> = self
            .weights
            .iter()
            .zip(&self.open)
            .map(|(&w, &open)| if open { w } else { 0 })
            .collect();
        fair_shares(&weights, self.left, self.offset)
            .into_iter()
            .enumerate()
            .filter(|&(_, share)| share > 0)
            .collect()
    }

    /// Notes that job `i`, given `share`, returned `got` items.
    pub(crate) fn took(&mut self, i: usize, share: u32, got: usize) {
        let got = u32::try_from(got).unwrap_or(u32::MAX);
        self.left = self.left.saturating_sub(got);
        if got < share {
            if let Some(open) = self.open.get_mut(i) {
                *open = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_follow_priority_clamped() {
        assert_eq!(weight(-3), 1);
        assert_eq!(weight(0), 1);
        assert_eq!(weight(4), 5);
        assert_eq!(weight(42), 10);
    }

    #[test]
    fn shares_are_proportional_and_add_up() {
        assert_eq!(fair_shares(&[1, 1], 10, 0), vec![5, 5]);
        assert_eq!(fair_shares(&[1, 3], 10, 0), vec![3, 7]);
        assert_eq!(fair_shares(&[10, 1, 1], 256, 0), vec![212, 22, 22]);
        for limit in [0u32, 1, 2, 3, 7, 64, 1000] {
            for weights in [vec![1u32], vec![1, 2, 3], vec![10, 1, 1, 1, 5]] {
                let shares = fair_shares(&weights, limit, 1);
                assert_eq!(shares.iter().sum::<u32>(), limit, "{weights:?} {limit}");
            }
        }
    }

    #[test]
    fn a_small_limit_rotates_between_jobs() {
        assert_eq!(fair_shares(&[1, 1, 1], 1, 0), vec![1, 0, 0]);
        assert_eq!(fair_shares(&[1, 1, 1], 1, 1), vec![0, 1, 0]);
        assert_eq!(fair_shares(&[1, 1, 1], 2, 2), vec![1, 0, 1]);
    }

    #[test]
    fn rounds_give_what_one_job_cannot_use_to_the_others() {
        // Two equal jobs, 10 items: the first has only 2 left, so the second gets 8.
        let available = [2usize, 100];
        let mut rounds = FairRounds::new(&[0, 0], 10, 0);
        let mut got = [0usize; 2];
        loop {
            let shares = rounds.round();
            if shares.is_empty() {
                break;
            }
            for (i, share) in shares {
                let take = (share as usize).min(available[i] - got[i]);
                got[i] += take;
                rounds.took(i, share, take);
            }
        }
        assert_eq!(got, [2, 8]);
        // Nothing anywhere: one round, then over.
        let mut rounds = FairRounds::new(&[3, 1], 5, 1);
        for (i, share) in rounds.round() {
            rounds.took(i, share, 0);
        }
        assert!(rounds.round().is_empty());
    }

    #[test]
    fn zero_weights_and_no_jobs_get_nothing() {
        assert_eq!(fair_shares(&[], 10, 3), Vec::<u32>::new());
        assert_eq!(fair_shares(&[0, 2], 4, 0), vec![0, 4]);
    }
}
