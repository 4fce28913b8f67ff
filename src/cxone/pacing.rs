//! Client-wide pacing, shared by every caller of one [`super::CxoneClient`]:
//!
//! - a "not before" instant: when CXone answers 429 with `Retry-After`, every
//!   caller holds off until then, so concurrent imports and polls do not keep
//!   hammering a rate limit that only one of them has been told about;
//! - an optional token bucket (`cxone.max_requests_per_min`, 0 = off) so the
//!   worker can stay under a limit it knows about without ever seeing a 429.
//!
//! Both cost one uncontended mutex lock per request when unused.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::time::Instant;

/// What a request is for, when the bucket is short of tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Work that moves changes forward (import submissions).
    Submit,
    /// A job poll: with webhooks, usually redundant. It only takes a token
    /// no submission is waiting for and while half the burst stays in
    /// reserve, so under a rate limit polls use spare capacity and a webhook
    /// that arrives first makes the waiting poll unnecessary (a dropped
    /// `admit` takes no token).
    Poll,
}

/// The bucket paces at this share of the configured rate, so that jitter
/// between the worker's clock and the server's arrival times never brings
/// two requests closer together than the server's limit allows.
const JITTER_MARGIN: f64 = 0.95;

#[derive(Debug)]
pub struct Pacer {
    not_before: Mutex<Option<Instant>>,
    bucket: Option<Mutex<Bucket>>,
    /// Submissions waiting for a token: polls give way to them.
    submits_waiting: AtomicUsize,
}

/// A token bucket taken only when a token is there: a caller that gives up
/// (its future is dropped) never spends one. Callers waiting at once may be
/// served in any order.
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
    /// simulator's limiter; the rate is [`JITTER_MARGIN`] of the limit.
    pub fn new(max_requests_per_min: u32) -> Self {
        let bucket = (max_requests_per_min > 0).then(|| {
            let limit_per_sec = f64::from(max_requests_per_min) / 60.0;
            let capacity = limit_per_sec.ceil().max(1.0);
            Mutex::new(Bucket {
                tokens: capacity,
                capacity,
                per_sec: limit_per_sec * JITTER_MARGIN,
                last: Instant::now(),
            })
        });
        Pacer {
            not_before: Mutex::new(None),
            bucket,
            submits_waiting: AtomicUsize::new(0),
        }
    }

    /// Waits until a request may be sent. Returns how long it waited.
    /// Cancel-safe: dropping the future takes nothing from the bucket.
    pub async fn admit(&self, priority: Priority) -> Duration {
        let started = Instant::now();
        // The shared hold first: a 429 may arrive while we wait for the
        // bucket, so check it again after the bucket too.
        self.wait_not_before().await;
        if let Some(bucket) = &self.bucket {
            let _waiting = (priority == Priority::Submit).then(|| Waiting::new(self));
            loop {
                let wait = {
                    let mut b = bucket.lock();
                    b.refill(Instant::now());
                    let need = match priority {
                        Priority::Submit => 1.0,
                        Priority::Poll if self.submits_waiting.load(Ordering::Acquire) > 0 => {
                            b.capacity + 1.0
                        }
                        Priority::Poll => (b.capacity / 2.0).max(1.0),
                    };
                    if b.tokens >= need {
                        b.tokens -= 1.0;
                        None
                    } else {
                        let short = (need.min(b.capacity) - b.tokens).max(0.0);
                        Some(
                            Duration::from_secs_f64(short / b.per_sec)
                                .max(Duration::from_millis(2)),
                        )
                    }
                };
                match wait {
                    None => break,
                    Some(w) => tokio::time::sleep(w).await,
                }
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
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
    }
}

/// Counts a waiting submission for as long as it waits (also when dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(p: &'a Pacer) -> Self {
        p.submits_waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(&p.submits_waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unused_pacer_never_waits() {
        let p = Pacer::new(0);
        for _ in 0..1000 {
            assert_eq!(p.admit(Priority::Submit).await, Duration::ZERO);
            assert_eq!(p.admit(Priority::Poll).await, Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_paces_to_the_rate_with_a_jitter_margin() {
        // 120/min = 2/s, burst 2, paced at 95 %: the 11th request goes out
        // after 9 / 1.9 = 4.74 s (never sooner than the server's 4.5 s).
        let p = Pacer::new(120);
        let start = Instant::now();
        for _ in 0..11 {
            p.admit(Priority::Submit).await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(4736) && took < Duration::from_millis(4850),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_wait_takes_no_token() {
        let p = Pacer::new(60); // 1/s, burst 1
        p.admit(Priority::Submit).await;
        // A caller that gives up while waiting (a webhook beat the poll)...
        let gave_up =
            tokio::time::timeout(Duration::from_millis(500), p.admit(Priority::Submit)).await;
        assert!(gave_up.is_err());
        // ...leaves the next token to the next caller.
        let start = Instant::now();
        p.admit(Priority::Submit).await;
        assert!(
            start.elapsed() < Duration::from_millis(600),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn polls_give_way_to_submissions_and_keep_a_reserve() {
        let p = std::sync::Arc::new(Pacer::new(240)); // 4/s, burst 4
        for _ in 0..4 {
            p.admit(Priority::Submit).await;
        }
        let start = Instant::now();
        let poll = {
            let p = p.clone();
            tokio::spawn(async move {
                p.admit(Priority::Poll).await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let submit = {
            let p = p.clone();
            tokio::spawn(async move {
                p.admit(Priority::Submit).await;
                Instant::now()
            })
        };
        let (poll_at, submit_at) = (poll.await.unwrap(), submit.await.unwrap());
        assert!(submit_at < poll_at, "the submission goes first");
        // The poll waited for half the burst to be back in reserve.
        assert!(
            poll_at - start >= Duration::from_millis(500),
            "{:?}",
            poll_at - start
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
                tokio::spawn(async move { p.admit(Priority::Poll).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(start.elapsed() >= Duration::from_secs(3));
        assert!(p.held_until().is_none());
    }
}
