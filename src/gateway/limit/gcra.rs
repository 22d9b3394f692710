//! GCRA, the decision math both tiers share: one timestamp per key (the theoretical arrival
//! time, TAT), in integer microseconds. A key whose TAT is not after now is the same as no key.

use std::time::Duration;

/// A quota: `quota` requests per `window`, `burst` of them at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Its name in the headers and the metric's `policy` label.
    pub name: &'static str,
    pub quota: u32,
    pub window: Duration,
    /// Time one request costs: window / quota (at least 1 µs).
    pub interval_us: u64,
    /// How far ahead of now the TAT may run: burst × interval.
    pub tolerance_us: u64,
}

/// One decision, as the answer's headers tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests still admitted at once after this one.
    pub remaining: u64,
    /// Until the quota is whole again (the TAT's lead on now).
    pub reset_us: u64,
    /// Until the next request would be admitted (0 when this one was).
    pub retry_after_us: u64,
}

impl Policy {
    pub fn new(name: &'static str, quota: u32, window: Duration, burst: u32) -> Self {
        let window_us = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
        let interval_us = (window_us / u64::from(quota.max(1))).max(1);
        Self {
            name,
            quota,
            window,
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(burst.max(1))),
        }
    }

    /// Decides a request at `now` for a key whose TAT is `tat` (`None`: never seen); returns
    /// the decision and the key's TAT to keep when it was admitted.
    pub fn decide(&self, tat: Option<u64>, now: u64) -> (Decision, Option<u64>) {
        let tat = tat.unwrap_or(now).max(now);
        let next = tat + self.interval_us;
        if next - now > self.tolerance_us {
            (self.outcome(false, tat - now), None)
        } else {
            (self.outcome(true, next - now), Some(next))
        }
    }

    /// The decision from whether it was admitted and the TAT's lead on now afterwards (what
    /// the shared tier's script returns).
    pub fn outcome(&self, allowed: bool, lead_us: u64) -> Decision {
        if allowed {
            Decision {
                allowed,
                remaining: self.tolerance_us.saturating_sub(lead_us) / self.interval_us,
                reset_us: lead_us,
                retry_after_us: 0,
            }
        } else {
            Decision {
                allowed,
                remaining: 0,
                reset_us: lead_us,
                retry_after_us: (lead_us + self.interval_us).saturating_sub(self.tolerance_us),
            }
        }
    }

    /// How long a key's TAT is worth keeping after a decision: its lead, rounded up to ms.
    pub fn keep_ms(lead_us: u64) -> u64 {
        lead_us.div_ceil(1000).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn run(policy: &Policy, tat: &mut Option<u64>, now: u64) -> Decision {
        let (decision, next) = policy.decide(*tat, now);
        if next.is_some() {
            *tat = next;
        }
        decision
    }

    #[test]
    fn a_burst_is_admitted_at_once_then_one_per_interval() {
        let p = Policy::new("ip", 10, Duration::from_secs(10), 10);
        assert_eq!(p.interval_us, S);
        let mut tat = None;
        let now = 100 * S;
        for i in 0..10 {
            let d = run(&p, &mut tat, now);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
            assert_eq!(d.reset_us, (i + 1) * S);
        }
        let refused = run(&p, &mut tat, now);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after_us, S);
        assert_eq!(refused.reset_us, 10 * S);
        // Half an interval later: still refused, half an interval to wait.
        let d = run(&p, &mut tat, now + S / 2);
        assert_eq!((d.allowed, d.retry_after_us), (false, S / 2));
        // One interval later: exactly one more.
        assert!(run(&p, &mut tat, now + S).allowed);
        assert!(!run(&p, &mut tat, now + S).allowed);
        // After the whole window the quota is whole again: the key is as good as absent.
        let d = run(&p, &mut tat, now + 20 * S);
        assert_eq!((d.allowed, d.remaining), (true, 9));
    }

    #[test]
    fn the_burst_can_differ_from_the_quota() {
        let p = Policy::new("client", 60, Duration::from_secs(60), 3);
        let mut tat = None;
        let admitted = (0..10).filter(|_| run(&p, &mut tat, 0).allowed).count();
        assert_eq!(admitted, 3);
        let p = Policy::new("client", 1, Duration::from_secs(1), 1);
        let mut tat = None;
        assert!(run(&p, &mut tat, 0).allowed);
        let d = run(&p, &mut tat, 1);
        assert_eq!((d.allowed, d.retry_after_us), (false, S - 1));
    }

    #[test]
    fn refill_over_time_admits_the_quota_rate() {
        let p = Policy::new("ip", 100, Duration::from_secs(1), 100);
        let mut tat = None;
        // A request every ms for 10 s: the burst plus 100 per second.
        let admitted = (0..10_000u64)
            .filter(|ms| run(&p, &mut tat, ms * 1000).allowed)
            .count();
        assert!((1000..=1100).contains(&admitted), "{admitted}");
        assert_eq!(Policy::keep_ms(1), 1);
        assert_eq!(Policy::keep_ms(1500), 2);
    }

    #[test]
    fn quotas_beyond_a_microsecond_each_still_decide() {
        let p = Policy::new("ip", 10_000_000, Duration::from_secs(1), 10_000_000);
        assert_eq!(p.interval_us, 1);
        assert!(p.decide(None, 0).0.allowed);
    }
}
