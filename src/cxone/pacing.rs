//! Client-wide pacing, shared by every caller of one [`super::CxoneClient`]:
//!
//! - a "not before" instant: when CXone answers 429 with `Retry-After`, every
//!   caller holds off until then, so concurrent imports and polls do not keep
//!   hammering a rate limit that only one of them has been told about;
//! - an optional token bucket (`cxone.max_requests_per_min`, 0 = off) so the
//!   worker can stay under a limit it knows about without ever seeing a 429.
//!
//! Both cost one uncontended mutex lock per request when unused.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Pacer {
    not_before: Mutex<Option<Instant>>,
    bucket: Option<Mutex<Bucket>>,
}

/// A reservation-style token bucket: a caller takes its token at once (the
/// balance may go negative) and sleeps until that token would have existed.
/// Callers are therefore served in arrival order with no polling loop.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    capacity: f64,
    per_sec: f64,
    last: Instant,
}

impl Pacer {
    /// `max_requests_per_min` = 0 turns the bucket off. The burst is one
    /// second's worth of requests (at least one), the same shape as the
    /// simulator's limiter, so a worker configured with the server's limit
    /// does not trip it.
    pub fn new(max_requests_per_min: u32) -> Self {
        let bucket = (max_requests_per_min > 0).then(|| {
            let per_sec = f64::from(max_requests_per_min) / 60.0;
            let capacity = per_sec.ceil().max(1.0);
            Mutex::new(Bucket {
                tokens: capacity,
                capacity,
                per_sec,
                last: Instant::now(),
            })
        });
        Pacer {
            not_before: Mutex::new(None),
            bucket,
        }
    }

    /// Waits until a request may be sent. Returns how long it waited.
    pub async fn admit(&self) -> Duration {
        let started = Instant::now();
        // The shared hold first: a 429 may arrive while we sleep in the
        // bucket, so check it again after the bucket too.
        self.wait_not_before().await;
        if let Some(bucket) = &self.bucket {
            let wait = bucket.lock().reserve(Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            self.wait_not_before().await;
        }
        started.elapsed()
    }

    async fn wait_not_before(&self) {
        loop {
            let until = *self.not_before.lock();
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    /// CXone said "not before `now + after`": hold every caller off until then.
    pub fn hold_off(&self, after: Duration) {
        let until = Instant::now() + after;
        let mut nb = self.not_before.lock();
        if nb.is_none_or(|t| t < until) {
            *nb = Some(until);
        }
    }

    /// The current shared hold, if it lies in the future (for tests and logs).
    pub fn held_until(&self) -> Option<Instant> {
        self.not_before.lock().filter(|t| *t > Instant::now())
    }
}

impl Bucket {
    fn reserve(&mut self, now: Instant) -> Duration {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unused_pacer_never_waits() {
        let p = Pacer::new(0);
        for _ in 0..1000 {
            assert_eq!(p.admit().await, Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_paces_to_the_rate() {
        // 120/min = 2/s, burst 2: the 11th request goes out after 4.5 s.
        let p = Pacer::new(120);
        let start = Instant::now();
        for _ in 0..11 {
            p.admit().await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(4500) && took < Duration::from_millis(4600),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hold_off_delays_everyone_until_then() {
        let p = std::sync::Arc::new(Pacer::new(0));
        p.hold_off(Duration::from_secs(3));
        p.hold_off(Duration::from_secs(1)); // a shorter hold never shortens it
        let start = Instant::now();
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.admit().await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(start.elapsed() >= Duration::from_secs(3));
        assert!(p.held_until().is_none());
    }
}
