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
    fn zero_weights_and_no_jobs_get_nothing() {
        assert_eq!(fair_shares(&[], 10, 3), Vec::<u32>::new());
        assert_eq!(fair_shares(&[0, 2], 4, 0), vec![0, 4]);
    }
}
