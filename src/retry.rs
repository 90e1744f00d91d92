//! How long a failing step waits before it is tried again: exponential in the number of
//! failures in a row, spread per key (a request, a channel), and never shorter than the
//! other side asked for.

use std::time::Duration;

use jiff::Timestamp;

/// Longest wait between two attempts at a failing step.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Exponential backoff from the failure count: 0.5 s, 1 s, 2 s, ... up to five minutes.
pub fn backoff(failures: i32) -> Duration {
    let exponent = failures.saturating_sub(1).clamp(0, 16).unsigned_abs();
    Duration::from_millis(500u64.saturating_mul(1u64 << exponent)).min(MAX_BACKOFF)
}

/// A delay spread over 75% to 125% of `delay`, never above the longest backoff, so that
/// requests failing together do not retry together.
pub fn jittered(delay: Duration, fraction: f64) -> Duration {
    delay
        .mul_f64(0.75 + 0.5 * fraction.clamp(0.0, 1.0))
        .min(MAX_BACKOFF)
}

/// A number in [0, 1) fixed by the request and its failure count: spread across requests,
/// and the same on every replica and after a restart (so `decide` stays pure).
pub fn fraction(uid: &str, failures: i32) -> f64 {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{uid}/{failures}").as_bytes(),
    );
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&digest.as_ref()[..4]);
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

/// How long the request with `uid` waits after its `failures`-th failure in a row, at least
/// what the target asked for (`retry_after`), at most [`MAX_BACKOFF`].
pub fn delay(uid: &str, failures: i32, retry_after: Option<Duration>) -> Duration {
    jittered(backoff(failures), fraction(uid, failures))
        .max(retry_after.unwrap_or_default())
        .min(MAX_BACKOFF)
}

/// Time from `now` to `deadline`, zero when it has passed.
pub fn until(now: Timestamp, deadline: Timestamp) -> Duration {
    Duration::try_from(deadline.duration_since(now)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(5), Duration::from_secs(8));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn retries_are_spread_around_the_backoff_and_capped() {
        let base = Duration::from_secs(8);
        assert_eq!(jittered(base, 0.0), Duration::from_secs(6));
        assert_eq!(jittered(base, 1.0), Duration::from_secs(10));
        assert_eq!(jittered(base, 0.5), base);
        assert_eq!(jittered(MAX_BACKOFF, 1.0), MAX_BACKOFF);
        let spread: std::collections::BTreeSet<u64> = (0..50)
            .map(|n| delay(&format!("uid-{n}"), 5, None).as_millis() as u64)
            .collect();
        assert!(spread.len() > 40, "requests failing together retry apart");
        for n in 0..100 {
            let fraction = fraction(&format!("uid-{n}"), n);
            assert!((0.0..1.0).contains(&fraction), "{fraction}");
            assert_eq!(fraction, super::fraction(&format!("uid-{n}"), n));
        }
    }

    #[test]
    fn the_targets_retry_after_is_honoured_up_to_the_cap() {
        let asked = Some(Duration::from_secs(20));
        assert_eq!(delay("u", 1, asked), Duration::from_secs(20));
        assert!(delay("u", 9, asked) > Duration::from_secs(20));
        assert_eq!(delay("u", 1, Some(Duration::from_secs(3600))), MAX_BACKOFF);
    }
}
