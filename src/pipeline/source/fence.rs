//! Self-fencing on a stale membership view: a replica that has not heard
//! even its own heartbeat back within the membership's expiry (a pause, a
//! stalled connection) may already be counted out by the others, so it
//! stops taking deliveries and posting imports until one of its heartbeats,
//! sent after it noticed, has come back through the broker.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::{sync::watch, time::Instant};

use super::partitions::EXPIRY;

/// Whether this replica may take deliveries and post imports: the source
/// opens and closes it, imports wait at it before posting.
#[derive(Clone)]
pub struct Fence(Arc<watch::Sender<bool>>);

impl Default for Fence {
    fn default() -> Self {
        Fence(Arc::new(watch::Sender::new(true)))
    }
}

/// How often a fenced import looks again whether its deliveries' channels closed.
const RECHECK: Duration = Duration::from_millis(100);

impl Fence {
    pub fn is_open(&self) -> bool {
        *self.0.borrow()
    }

    /// Opens or closes the fence; whether that changed it.
    pub(super) fn set_open(&self, open: bool) -> bool {
        self.0
            .send_if_modified(|o| std::mem::replace(o, open) != open)
    }

    /// Waits until the fence is open, or until `give_up` holds (checked
    /// again every [`RECHECK`]): an import stops waiting once its
    /// deliveries' channels closed, since it will not be posted then.
    pub async fn wait_open(&self, give_up: impl Fn() -> bool) {
        let mut open = self.0.subscribe();
        while !*open.borrow_and_update() && !give_up() {
            let _ = tokio::time::timeout(RECHECK, open.changed()).await;
        }
    }
}

/// This replica's own heartbeats, sent and heard back, over one connection.
/// The broker's fanout queue returns them in the order sent, so the n-th
/// own notice heard is the n-th heartbeat sent.
pub(super) struct OwnBeats {
    /// When each heartbeat not heard back yet was sent, oldest first.
    outstanding: VecDeque<Instant>,
    sent: u64,
    heard: u64,
    /// While stale: how many own notices must have been heard to be fresh
    /// again (the first heartbeat sent after the staleness was noticed).
    stale_until: Option<u64>,
    last_check: Instant,
}

impl OwnBeats {
    pub(super) fn new(now: Instant) -> OwnBeats {
        OwnBeats {
            outstanding: VecDeque::new(),
            sent: 0,
            heard: 0,
            stale_until: None,
            last_check: now,
        }
    }

    pub(super) fn sent(&mut self, now: Instant) {
        self.sent += 1;
        self.outstanding.push_back(now);
    }

    pub(super) fn heard(&mut self) {
        self.heard += 1;
        self.outstanding.pop_front();
    }

    /// Whether the view is fresh at `now`. Checked often (every quarter
    /// second): a gap longer than the expiry between two checks means this
    /// process did not run (a pause), which makes the view stale as well.
    pub(super) fn fresh(&mut self, now: Instant) -> bool {
        let paused = now.saturating_duration_since(self.last_check) > EXPIRY;
        let unheard = self
            .outstanding
            .front()
            .is_some_and(|sent| now.saturating_duration_since(*sent) > EXPIRY);
        self.last_check = now;
        if (paused || unheard) && self.stale_until.is_none() {
            self.stale_until = Some(self.sent + 1);
        }
        if let Some(need) = self.stale_until
            && self.heard >= need
        {
            self.stale_until = None;
        }
        self.stale_until.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stale_after_a_pause_until_a_later_heartbeat_comes_back() {
        let t0 = Instant::now();
        let mut own = OwnBeats::new(t0);
        own.sent(t0);
        own.heard();
        assert!(own.fresh(t0 + Duration::from_millis(250)));
        // Paused for 10 s; a heartbeat sent before the pause comes back
        // after it, which proves nothing about now.
        own.sent(t0 + Duration::from_millis(900));
        let resumed = t0 + Duration::from_secs(10);
        own.heard();
        assert!(!own.fresh(resumed));
        own.sent(resumed);
        assert!(!own.fresh(resumed + Duration::from_millis(250)));
        own.heard();
        assert!(own.fresh(resumed + Duration::from_millis(500)));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_when_own_heartbeats_stop_coming_back() {
        let t0 = Instant::now();
        let mut own = OwnBeats::new(t0);
        let mut now = t0;
        for _ in 0..3 {
            own.sent(now);
            now += Duration::from_millis(1000);
            assert!(own.fresh(now));
        }
        own.sent(now);
        now += Duration::from_millis(750);
        assert!(!own.fresh(now), "the first one is 3.75 s old, unheard");
        // The backlog comes back, then the one sent after noticing.
        for _ in 0..4 {
            own.heard();
        }
        assert!(!own.fresh(now));
        own.sent(now);
        own.heard();
        assert!(own.fresh(now));
    }

    #[tokio::test]
    async fn imports_wait_at_a_closed_fence() {
        let fence = Fence::default();
        assert!(fence.set_open(false));
        assert!(!fence.set_open(false));
        let waiting = tokio::spawn({
            let fence = fence.clone();
            async move { fence.wait_open(|| false).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        fence.set_open(true);
        waiting.await.unwrap();
        fence.set_open(false);
        fence.wait_open(|| true).await;
    }
}
