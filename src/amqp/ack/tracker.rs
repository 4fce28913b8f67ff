//! The I/O side of acks: [`AckTracker`] owns one consumer channel's
//! [`Ledger`] and [`Pace`], sends the acks they pick on the lapin channel,
//! ticks for stragglers and tells waiters how far acks have gone.
//!
//! It follows three fronts, each the first tag not yet through one step
//! (every tag below it is): settled (`settled_front`), covered by acks sent
//! (`sent_front`), and covered by acks the broker is known to have
//! processed (`confirmed_front`, [`AckTracker::confirm_through`]).

use crate::telemetry::metrics as metric;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use lapin::{
    Channel,
    options::{BasicAckOptions, BasicQosOptions},
};
use tokio::time::Instant;

use super::{
    ledger::Ledger,
    pace::{Pace, Probed},
};
use crate::amqp::AmqpError;

/// How long a settled delivery may wait for the front to cover it before it
/// is acked alone. Acks only return prefetch credit; events are already out.
pub const STRAGGLER_DELAY: Duration = Duration::from_millis(750);

/// Tracks every delivery of one channel from receipt to ack.
///
/// Invariant: a tag is acked exactly once. Acking twice (or acking a tag a
/// `multiple` ack already covered) makes the broker close the channel, so
/// every ack of a channel is decided and sent under one async lock, in the
/// order decided; the bookkeeping itself is a short synchronous lock, so
/// registering a delivery never waits for acks being sent.
pub struct AckTracker {
    channel: Channel,
    state: parking_lot::Mutex<State>,
    /// The first tag not covered by the acks sent so far (every tag below
    /// it was acked, by a `multiple` ack or alone): waiters watch it.
    sent_front: tokio::sync::watch::Sender<u64>,
    /// The first tag not settled (every tag below it is settled, acked or
    /// held back as a short front): what [`AckTracker::wait_settled_through`]
    /// watches.
    settled_front: tokio::sync::watch::Sender<u64>,
    send: tokio::sync::Mutex<()>,
    flush_scheduled: AtomicBool,
    /// The channel's prefetch, sent again as the barrier of
    /// [`AckTracker::confirm_through`].
    prefetch: u16,
    /// The first tag not covered by acks the broker is known to have
    /// processed: acks have no reply, so sent is not processed until a
    /// synchronous method sent after them on the channel returns.
    confirmed_front: AtomicU64,
    barrier: tokio::sync::Mutex<()>,
}

/// What the tracker's synchronous lock guards: the ledger of the channel's
/// deliveries and the pace its fronts are acked at.
#[derive(Default)]
struct State {
    ledger: Ledger,
    /// How many tags one `multiple` ack covers.
    pace: Pace,
}

/// What to send, decided under the state lock.
#[derive(Debug, Default, PartialEq, Eq)]
struct Decision {
    multiples: Vec<u64>,
    singles: Vec<u64>,
    /// The front (first tag not settled) once these acks are sent.
    front: u64,
}

impl State {
    #[cfg(test)]
    fn register(&mut self, tag: u64) {
        self.register_at(tag, Instant::now);
    }

    /// Records a delivery; a probe of the pace it completes is returned.
    fn register_at(&mut self, tag: u64, now: impl FnOnce() -> Instant) -> Option<Probed> {
        let probed = self.pace.delivered(now);
        self.ledger.register(tag);
        probed
    }

    /// What to send: the settled front as `multiple` acks, then the single
    /// acks `singles` picks from behind it. (Tags acked alone that are at
    /// the front then leave; nothing settled can follow them there, since
    /// the front stopped at an unsettled tag.)
    fn decide(&mut self, singles: impl FnOnce(&mut Ledger) -> Vec<u64>) -> Decision {
        let chunk = self.pace.chunk();
        let from = self.ledger.first_held();
        let multiples = self.ledger.take_front_chunked(chunk);
        if !multiples.is_empty() {
            self.pace
                .sent(self.ledger.first_held() - from, Instant::now());
        }
        let singles = singles(&mut self.ledger);
        self.ledger.take_front_chunked(chunk);
        Decision {
            multiples,
            singles,
            front: self.ledger.first_held(),
        }
    }
}

/// Moves a front forward (never back), waking its waiters when it moved.
fn advance(front: &tokio::sync::watch::Sender<u64>, to: u64) {
    front.send_if_modified(|f| {
        let moved = *f < to;
        *f = (*f).max(to);
        moved
    });
}

impl AckTracker {
    /// A tracker for `channel`'s deliveries; `prefetch` is the channel's
    /// `basic.qos`, `chunk` is `amqp.ack_chunk`, `max_wait` is
    /// `batch.max_wait_ms` (what [`Pace`] keeps rounds within).
    pub fn new(channel: Channel, prefetch: u16, chunk: u32, max_wait: Duration) -> AckTracker {
        AckTracker {
            channel,
            prefetch,
            confirmed_front: AtomicU64::new(0),
            barrier: tokio::sync::Mutex::new(()),
            state: parking_lot::Mutex::new(State {
                pace: Pace::new(u64::from(chunk), max_wait),
                ..State::default()
            }),
            send: tokio::sync::Mutex::new(()),
            flush_scheduled: AtomicBool::new(false),
            sent_front: tokio::sync::watch::Sender::new(0),
            settled_front: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Records a delivery as received, before anything else can settle it.
    pub fn register(&self, tag: u64) {
        let probed = self.state.lock().register_at(tag, Instant::now);
        if let Some(p) = probed {
            note_probe(&p);
        }
    }

    /// Whether every delivery up to `tag` was acked (the front passed it).
    pub fn acked_through(&self, tag: u64) -> bool {
        tag < *self.sent_front.borrow()
    }

    /// Whether the broker has processed acks covering every delivery up to
    /// `tag` ([`AckTracker::confirm_through`]).
    pub fn confirmed_through(&self, tag: u64) -> bool {
        tag < self.confirmed_front.load(Ordering::Acquire)
    }

    /// Makes sure the broker processed the acks sent so far, if they cover
    /// `tag`: a synchronous method on the channel after them (`basic.qos`
    /// with the channel's own prefetch, which changes nothing) returns only
    /// once the channel has handled every frame before it. One round trip
    /// covers every ack sent before it, so concurrent callers share it.
    ///
    /// Why: a calendar's next import is posted only once its previous
    /// batch can no longer be redelivered. An ack lost with its connection
    /// (sent, not yet processed) lets the broker redeliver the older batch;
    /// a worker that dies before settling that copy again leaves it to the
    /// next worker, which imports the older change after the newer one, and
    /// CXone replays the newer batch under its idempotency key instead of
    /// applying it again
    /// (`connection_loss_then_kill9_loses_nothing` checks this).
    pub async fn confirm_through(&self, tag: u64) -> Result<bool, AmqpError> {
        if self.confirmed_through(tag) {
            return Ok(true);
        }
        let _one = self.barrier.lock().await;
        if self.confirmed_through(tag) {
            return Ok(true);
        }
        let sent = *self.sent_front.borrow();
        if tag >= sent {
            // Not acked yet: nothing to confirm.
            return Ok(false);
        }
        self.channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(|source| AmqpError::Channel {
                op: "basic.qos (ack barrier)",
                source,
            })?;
        self.confirmed_front.fetch_max(sent, Ordering::AcqRel);
        Ok(true)
    }

    /// Whether the channel can still ack: once closed, the broker
    /// redelivers whatever it did not ack.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Waits until every delivery up to `tag` is settled, for at most
    /// `wait` and only while the settled front keeps moving (each step
    /// within `stall`); returns whether it is. Then [`AckTracker::ack_through`]
    /// acks them all with `multiple` acks, none alone. A closed channel is
    /// not waited for.
    pub async fn wait_settled_through(&self, tag: u64, wait: Duration, stall: Duration) -> bool {
        let mut front = self.settled_front.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let at = *front.borrow_and_update();
            if tag < at {
                return true;
            }
            if !self.is_open() {
                return false;
            }
            let step = deadline.min(tokio::time::Instant::now() + stall);
            match tokio::time::timeout_at(step, front.changed()).await {
                Ok(Ok(())) => continue,
                // Stalled, out of time, or the tracker is gone.
                _ => return tag < *front.borrow(),
            }
        }
    }

    /// Deliveries held on this channel and not acked yet.
    pub fn outstanding(&self) -> usize {
        self.state.lock().ledger.outstanding()
    }

    /// Marks deliveries settled and acks the settled front in one `multiple`
    /// ack; settled deliveries behind an unsettled one are acked within
    /// [`STRAGGLER_DELAY`]. A closed channel acks nothing (the broker
    /// redelivers its messages) and is not an error worth more than a log
    /// line to the caller.
    pub async fn settle(self: &Arc<Self>, tags: &[u64]) -> Result<(), AmqpError> {
        let _send = self.send.lock().await;
        let (decision, stragglers) = {
            let mut st = self.state.lock();
            st.ledger.mark_settled(tags);
            let decision = match st.ledger.short_front() {
                Some(settled) => {
                    self.note_settled_front(settled);
                    Decision {
                        front: st.ledger.first_held(),
                        ..Decision::default()
                    }
                }
                None => st.decide(|_| Vec::new()),
            };
            (decision, st.ledger.stragglers())
        };
        if stragglers > 0 && !self.flush_scheduled.swap(true, Ordering::AcqRel) {
            tokio::spawn(straggler_ticks(self.clone()));
        }
        self.send_acks(decision).await
    }

    /// One straggler tick; returns whether stragglers remain.
    async fn tick(&self) -> Result<bool, AmqpError> {
        let _send = self.send.lock().await;
        let (decision, left) = {
            let mut st = self.state.lock();
            (st.decide(Ledger::take_aged), st.ledger.stragglers())
        };
        self.send_acks(decision).await?;
        Ok(left > 0)
    }

    /// Acks now every settled delivery up to `tag` that is not acked yet:
    /// the front with `multiple` acks, stragglers up to `tag` alone.
    /// Nothing is sent when the front already passed `tag`, as it has in a
    /// steady drain by the time a calendar's next batch goes.
    ///
    /// Before a calendar's next import, its previous batch's deliveries must
    /// be acked: a settled delivery left unacked is redelivered after a
    /// crash and imported again, and if the next batch was already imported
    /// and comes back as the same batch, CXone replays it under its
    /// idempotency key instead of applying it, so the older change would end
    /// up applied last (`kill9_every_few_seconds_loses_nothing` checks this).
    pub async fn ack_through(&self, tag: u64) -> Result<(), AmqpError> {
        let _send = self.send.lock().await;
        let decision = {
            let mut st = self.state.lock();
            if tag < st.ledger.first_held() {
                return Ok(());
            }
            st.decide(|st| st.take_stragglers_through(tag))
        };
        self.send_acks(decision).await
    }

    /// Acks every settled delivery now: the front with `multiple` acks, the
    /// rest one by one.
    pub async fn flush(&self) -> Result<(), AmqpError> {
        let _send = self.send.lock().await;
        let decision = self.state.lock().decide(Ledger::take_stragglers);
        self.send_acks(decision).await
    }

    /// Sends what was decided; the caller holds the send lock.
    async fn send_acks(&self, d: Decision) -> Result<(), AmqpError> {
        // Whatever is sent, the front it leaves is the first tag not settled.
        self.note_settled_front(d.front);
        if d.multiples.is_empty() && d.singles.is_empty() {
            // The front can still have moved, over tags acked alone.
            self.note_sent_front(d.front);
            return Ok(());
        }
        if !self.channel.status().connected() {
            return Err(AmqpError::Disconnected);
        }
        if !d.multiples.is_empty() {
            metrics::counter!(metric::ACKS_SENT_TOTAL, "kind" => "multiple")
                .increment(d.multiples.len() as u64);
        }
        for tag in d.multiples {
            tracing::debug!(target: "csw::timeline", tag, "multiple ack sent");
            self.ack(tag, true).await?;
        }
        if !d.singles.is_empty() {
            metrics::counter!(metric::ACKS_SENT_TOTAL, "kind" => "single")
                .increment(d.singles.len() as u64);
        }
        for tag in d.singles {
            self.ack(tag, false).await?;
        }
        self.note_sent_front(d.front);
        Ok(())
    }

    fn note_settled_front(&self, front: u64) {
        advance(&self.settled_front, front);
    }

    fn note_sent_front(&self, front: u64) {
        advance(&self.sent_front, front);
    }

    async fn ack(&self, tag: u64, multiple: bool) -> Result<(), AmqpError> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple })
            .await
            .map_err(|source| AmqpError::Channel {
                op: "basic.ack",
                source,
            })
    }
}

/// Logs a probe of the broker's pace; a change of pace at info.
fn note_probe(p: &Probed) {
    let ms = |d: Duration| d.as_millis() as u64;
    let (settled_ms, spread_ms, chunked_spread_ms) =
        (ms(p.settled), ms(p.spread), ms(p.chunked_spread));
    tracing::debug!(
        target: "csw::timeline",
        settled_ms,
        spread_ms,
        chunked_spread_ms,
        was_whole = p.was_whole,
        whole = p.whole,
        "ack pace probed"
    );
    if !p.switched() {
        return;
    }
    if p.whole {
        tracing::info!(
            spread_ms,
            "the broker spread what a chunked ack returned over {spread_ms} ms, close to batch.max_wait_ms: acking long settled fronts whole from now on, so that a round's batches fill before their clocks run out"
        );
    } else {
        tracing::info!(
            settled_ms,
            spread_ms,
            "the broker settled a whole front in {settled_ms} ms and delivered it again over {spread_ms} ms, quick enough for chunks: acking long settled fronts in chunks of amqp.ack_chunk"
        );
    }
    let to = if p.whole { "whole" } else { "chunked" };
    metrics::counter!(metric::ACK_PACE_CHANGES_TOTAL, "to" => to).increment(1);
}

/// Ticks while stragglers remain; a later settle starts it again.
async fn straggler_ticks(tracker: Arc<AckTracker>) {
    loop {
        tokio::time::sleep(STRAGGLER_DELAY).await;
        match tracker.tick().await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(error = %e, "could not ack settled deliveries of a closed channel; the broker will redeliver them");
            }
        }
        tracker.flush_scheduled.store(false, Ordering::Release);
        // A straggler that arrived between the tick and the store: tick on.
        if tracker.state.lock().ledger.stragglers() == 0
            || tracker.flush_scheduled.swap(true, Ordering::AcqRel)
        {
            return;
        }
    }
}

/// The pace's tests: they drive it as the tracker does, through
/// [`State::decide`] and [`State::register_at`].
#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::ack::pace::{MULTIPLE_ACK_CHUNK, PACE_PROBE_CHUNKS};

    fn state(tags: std::ops::RangeInclusive<u64>) -> State {
        let mut s = State::default();
        for t in tags {
            s.register(t);
        }
        s
    }

    #[test]
    fn ack_chunk_bounds_each_multiple_ack_and_zero_means_none() {
        let long = 2 * MULTIPLE_ACK_CHUNK + 100;
        let all: Vec<u64> = (1..=long).collect();
        let mut chunked = State {
            pace: Pace::chunked(MULTIPLE_ACK_CHUNK, Duration::from_secs(1)),
            ..state(1..=long)
        };
        chunked.ledger.mark_settled(&all);
        let d = chunked.decide(|_| Vec::new());
        assert_eq!(
            d.multiples,
            vec![MULTIPLE_ACK_CHUNK, 2 * MULTIPLE_ACK_CHUNK, long]
        );
        let mut whole = state(1..=long);
        whole.ledger.mark_settled(&all);
        let d = whole.decide(|_| Vec::new());
        assert_eq!(d.multiples, vec![long], "amqp.ack_chunk = 0: one ack");
        assert_eq!(d.front, long + 1);
    }

    /// Settles every tag held and acks the front; the multiple acks sent.
    fn ack_all(s: &mut State) -> Vec<u64> {
        let held: Vec<u64> = (s.ledger.first_held()..s.ledger.end()).collect();
        s.ledger.mark_settled(&held);
        s.decide(|_| Vec::new()).multiples
    }

    /// Delivers `n` more tags, the first at `first` and the others at
    /// `last` after now; what the probes they completed found.
    fn refill(s: &mut State, n: u64, first: Duration, last: Duration) -> Vec<Probed> {
        let t0 = Instant::now();
        let start = s.ledger.end();
        (start..start + n)
            .filter_map(|tag| {
                let at = if tag == start { first } else { last };
                s.register_at(tag, || t0 + at)
            })
            .collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fronts_start_whole_go_in_chunks_on_a_quick_broker_and_back_on_a_slow_one() {
        const CHUNK: u64 = 100;
        let mut s = State {
            pace: Pace::new(CHUNK, ms(1000)),
            ..state(1..=1000)
        };
        assert_eq!(ack_all(&mut s), vec![1000], "whole at first");
        // Settled in 300 ms, delivered over 600: chunks would have spread
        // over 0.9 × 300 + 600 = 870 ms, not under 0.75 of max_wait.
        let slow = refill(&mut s, 1000, ms(300), ms(900));
        assert_eq!(slow.len(), 1);
        assert_eq!(slow[0].spread, ms(600));
        assert!(slow[0].chunked_spread >= ms(870), "{slow:?}");
        assert!(slow[0].whole && !slow[0].switched());
        assert_eq!(ack_all(&mut s), vec![2000]);
        // 0.9 × 200 + 400 = 580 ms: chunks.
        let quick = refill(&mut s, 1000, ms(200), ms(600));
        assert_eq!(quick.len(), 1);
        assert!(!quick[0].whole && quick[0].switched(), "{quick:?}");
        assert_eq!(ack_all(&mut s).len(), 10, "chunked");
        // Chunked, a spread of 850 ms (under 0.9 of max_wait) keeps them.
        let fine = refill(&mut s, 1000, ms(50), ms(900));
        assert_eq!(fine.len(), 1);
        assert_eq!(fine[0].chunked_spread, ms(850));
        assert!(!fine[0].whole && !fine[0].switched());
        assert_eq!(ack_all(&mut s).len(), 10);
        let spread = refill(&mut s, 1000, ms(50), ms(1000));
        assert_eq!(spread.len(), 1);
        assert_eq!(spread[0].spread, ms(950));
        assert!(spread[0].whole && spread[0].switched());
        assert_eq!(ack_all(&mut s), vec![5000], "whole again");
    }

    #[test]
    fn short_fronts_partial_refills_and_chunk_zero_do_not_probe() {
        const CHUNK: u64 = 100;
        let slow = (Duration::ZERO, Duration::from_secs(5));
        // A front under PACE_PROBE_CHUNKS chunks says nothing.
        let mut s = State {
            pace: Pace::new(CHUNK, ms(1000)),
            ..state(1..=PACE_PROBE_CHUNKS * CHUNK - 1)
        };
        ack_all(&mut s);
        assert_eq!(refill(&mut s, 1000, slow.0, slow.1), []);
        // A refill that never completes (the queue ran short) decides
        // nothing, and the next long front probes afresh.
        let mut s = State {
            pace: Pace::new(CHUNK, ms(1000)),
            ..state(1..=1000)
        };
        ack_all(&mut s);
        assert_eq!(refill(&mut s, 999, slow.0, slow.1), []);
        ack_all(&mut s);
        let fast = refill(&mut s, 999, Duration::ZERO, ms(100));
        assert_eq!(fast.len(), 1);
        assert!(!fast[0].whole);
        assert_eq!(
            refill(&mut s, 1, slow.0, slow.1),
            [],
            "the old probe is gone"
        );
        // amqp.ack_chunk = 0: always whole, never probed.
        let mut s = State {
            pace: Pace::new(0, ms(1000)),
            ..state(1..=1000)
        };
        assert_eq!(ack_all(&mut s), vec![1000]);
        assert_eq!(refill(&mut s, 1000, slow.0, slow.1), []);
        assert!(!s.pace.is_probing());
    }
}
