//! Retry timing: exponential backoff with full jitter, floored by
//! `Retry-After`, within a total budget.
//!
//! Everything here is pure (no sleeping, no clock reads except where a time is
//! passed in), so the delay rules are tested without waiting and without the
//! paused-clock pitfalls of real sockets.

use std::time::{Duration, SystemTime};

use tokio_retry::strategy::{ExponentialBackoff, jitter};

use crate::config::RetrySettings;

/// The retry rules of one client, from `[retry]`.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub max_elapsed: Duration,
}

impl RetryPolicy {
    pub fn from_settings(s: &RetrySettings) -> Self {
        RetryPolicy {
            base: s.base.max(Duration::from_millis(1)),
            cap: s.cap.max(s.base).max(Duration::from_millis(1)),
            max_elapsed: s.max_elapsed,
        }
    }

    /// The un-jittered backoff ceilings: base, 2·base, 4·base, ... capped.
    ///
    /// tokio-retry's `ExponentialBackoff` yields `b^n · factor`; with b = 2 and
    /// factor = base/2 that is base·2^(n-1). We keep milliseconds in the factor
    /// and halve it, so an odd base loses half a millisecond: irrelevant.
    pub fn backoff(&self) -> ExponentialBackoff {
        let base_ms = self.base.as_millis().min(u64::MAX as u128) as u64;
        ExponentialBackoff::from_millis(2)
            .factor((base_ms / 2).max(1))
            .max_delay(self.cap)
    }
}

/// One retry's delay: full jitter (uniform in `[0, ceiling]`) of the backoff
/// ceiling, never below what the server asked for with `Retry-After`.
pub fn retry_delay(ceiling: Duration, retry_after: Option<Duration>) -> Duration {
    floor_delay(jitter(ceiling), retry_after)
}

/// The part of [`retry_delay`] that is not random.
pub fn floor_delay(jittered: Duration, retry_after: Option<Duration>) -> Duration {
    match retry_after {
        Some(ra) => jittered.max(ra),
        None => jittered,
    }
}

/// Whether sleeping `delay` more keeps the whole call within `max_elapsed`.
/// Retrying past the budget would only delay the inevitable failure.
pub fn within_budget(elapsed: Duration, delay: Duration, max_elapsed: Duration) -> bool {
    elapsed.saturating_add(delay) <= max_elapsed
}

/// Parses `Retry-After`: delta-seconds (`"2"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`), relative to `now`. A date in the past
/// means "now" (zero); an unparseable value is ignored (`None`), because a
/// broken header must not stop the retry.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long values are clamped rather than overflowing; the
        // budget check turns them into RetriesExhausted anyway.
        let secs: u64 = v.parse().unwrap_or(u64::MAX).min(365 * 24 * 3600);
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::from_settings(&RetrySettings::default())
    }

    #[test]
    fn backoff_doubles_from_base_up_to_cap() {
        let d: Vec<u64> = policy()
            .backoff()
            .take(10)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(
            d,
            [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
    }

    #[test]
    fn backoff_never_overflows() {
        let last = policy().backoff().nth(200).unwrap();
        assert_eq!(last, Duration::from_secs(30));
    }

    #[test]
    fn full_jitter_stays_within_zero_and_ceiling() {
        let ceiling = Duration::from_millis(800);
        let mut seen_low = false;
        for _ in 0..2000 {
            let d = retry_delay(ceiling, None);
            assert!(d <= ceiling);
            seen_low |= d < Duration::from_millis(100);
        }
        assert!(
            seen_low,
            "full jitter reaches near zero, not just [ceiling/2, ceiling]"
        );
    }

    #[test]
    fn retry_after_is_a_floor() {
        for _ in 0..200 {
            let d = retry_delay(Duration::from_millis(200), Some(Duration::from_secs(2)));
            assert!(d >= Duration::from_secs(2));
        }
        assert_eq!(
            floor_delay(Duration::from_secs(5), Some(Duration::from_secs(2))),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn parses_delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert!(parse_retry_after("99999999999999999999999", now).is_some());
    }

    #[test]
    fn parses_http_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:07 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means retry now"
        );
    }

    #[test]
    fn budget() {
        let max = Duration::from_secs(10);
        assert!(within_budget(
            Duration::from_secs(9),
            Duration::from_secs(1),
            max
        ));
        assert!(!within_budget(
            Duration::from_secs(9),
            Duration::from_secs(2),
            max
        ));
    }
}
