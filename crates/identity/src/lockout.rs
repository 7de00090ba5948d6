//! Account lockout with exponential backoff after repeated login failures (AUTH-1).
//!
//! Pure arithmetic over the failure count and the time of the last failure; the caller stores
//! both per account, resets the count on success, audits and alerts on every lock (AUD-5), and
//! refuses logins while [`Lockout::locked_until`] is in the future, without running Argon2 and
//! with the same answer as a wrong password.
//!
//! Below `threshold` failures nothing is locked. From the `threshold`-th failure on, the account
//! is locked for `base · 2^(failures − threshold)`, capped at `max`: with the defaults 30 s,
//! 1 min, 2 min, … up to 1 h.

use std::time::Duration;

/// Backoff policy; [`Lockout::default`] gives 5 failures, 30 s base, 1 h cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    /// Failures that trigger the first lock; a value of 0 is treated as 1.
    pub threshold: u32,
    /// Length of the first lock.
    pub base: Duration,
    /// Longest lock.
    pub max: Duration,
}

impl Default for Lockout {
    fn default() -> Self {
        Lockout {
            threshold: 5,
            base: Duration::from_secs(30),
            max: Duration::from_secs(3600),
        }
    }
}

impl Lockout {
    /// The lock duration after `failures` consecutive failures, or `None` below the threshold.
    pub fn lock_duration(&self, failures: u32) -> Option<Duration> {
        let threshold = self.threshold.max(1);
        let doublings = failures.checked_sub(threshold)?;
        let lock = 1u32
            .checked_shl(doublings)
            .and_then(|factor| self.base.checked_mul(factor))
            .unwrap_or(self.max);
        Some(lock.min(self.max))
    }

    /// Unix milliseconds until which the account is locked, or `None` when it is not locked.
    pub fn locked_until(&self, failures: u32, last_failure_ms: i64) -> Option<i64> {
        let lock = self.lock_duration(failures)?;
        let lock_ms = i64::try_from(lock.as_millis()).unwrap_or(i64::MAX);
        Some(last_failure_ms.saturating_add(lock_ms))
    }

    /// Whether a login attempt at `now_ms` must be refused without checking the password.
    pub fn is_locked(&self, failures: u32, last_failure_ms: i64, now_ms: i64) -> bool {
        self.locked_until(failures, last_failure_ms)
            .is_some_and(|until| now_ms < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_700_000_000_000;

    fn check(policy: Lockout, failures: u32, expect_seconds: Option<i64>) {
        assert_eq!(
            policy.locked_until(failures, T),
            expect_seconds.map(|s| T + s * 1000),
            "{failures} failures under {policy:?}"
        );
    }

    #[test]
    fn default_policy() {
        let table = [
            (0, None),
            (1, None),
            (4, None),
            (5, Some(30)),
            (6, Some(60)),
            (7, Some(120)),
            (8, Some(240)),
            (9, Some(480)),
            (10, Some(960)),
            (11, Some(1920)),
            (12, Some(3600)),
            (13, Some(3600)),
            (40, Some(3600)),
            (u32::MAX, Some(3600)),
        ];
        for (failures, expect) in table {
            check(Lockout::default(), failures, expect);
        }
    }

    #[test]
    fn custom_policies() {
        let strict = Lockout {
            threshold: 3,
            base: Duration::from_secs(60),
            max: Duration::from_secs(600),
        };
        let table = [
            (2, None),
            (3, Some(60)),
            (4, Some(120)),
            (6, Some(480)),
            (7, Some(600)),
        ];
        for (failures, expect) in table {
            check(strict, failures, expect);
        }
        let zero = Lockout {
            threshold: 0,
            ..Lockout::default()
        };
        check(zero, 0, None);
        check(zero, 1, Some(30));
        let huge_base = Lockout {
            base: Duration::MAX,
            max: Duration::MAX,
            ..Lockout::default()
        };
        assert_eq!(huge_base.locked_until(6, T), Some(i64::MAX));
    }

    #[test]
    fn lock_expires_at_the_computed_instant() {
        let policy = Lockout::default();
        assert!(!policy.is_locked(4, T, T));
        assert!(policy.is_locked(5, T, T));
        assert!(policy.is_locked(5, T, T + 29_999));
        assert!(!policy.is_locked(5, T, T + 30_000));
    }
}
