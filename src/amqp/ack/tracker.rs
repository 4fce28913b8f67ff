//! Acks for one consumer channel, coalesced into `multiple` acks.
//!
//! Batches hold deliveries of many calendars, so the deliveries one batch
//! settles are rarely contiguous on the channel: acking each of them alone
//! costs a frame per message and, on a quorum queue, a Raft command per
//! frame. Instead, settled deliveries are held: the settled run at the front
//! of the channel (every delivery up to it settled) goes out as one
//! `multiple` ack at once, unless it is short beside what is held behind it
//! ([`SHORT_FRONT_RATIO`] says why). Settled deliveries stuck behind an unsettled one
//! ("stragglers") are acked one by one after one to two [`STRAGGLER_DELAY`]s
//! (a tick ages fresh stragglers and acks the aged ones), but at most
//! [`SINGLES_PER_TICK`] a tick, oldest first, unless the front itself is
//! stuck (it has not moved for [`FRONT_STILL_TICKS`] ticks): then all of
//! them go, so they return their prefetch credit when one calendar's batch
//! is stuck in retries.
//! [`AckTracker::flush`] acks every settled delivery at once (shutdown,
//! handing a partition over).
//!
//! Why not sooner: single acks on a quorum queue cost the broker a Raft
//! command each; measured on the benchmark's broker, acking 50,000 deliveries
//! one by one stalled deliveries for 10-40 s, while the front of a draining
//! queue catches up with nearly every straggler within a second or two.
//!
//! Why the cap: with no cap, a round of the benchmark that ran a little
//! long sent thousands of single acks, which slowed the next round further
//! (4,242 single acks and 1.7 times the broker CPU in such a run). Why not
//! longer: a settled delivery left unacked is one a crash redelivers and the
//! next worker imports again. That is harmless on its own, but not after a
//! newer batch of its calendar was imported: [`AckTracker::ack_through`]
//! says why, and a calendar's next import acks its previous batch first.
//!
//! A long settled front goes as one `multiple` ack, or, once the broker has
//! shown it is quick enough, as several of at most `amqp.ack_chunk`
//! deliveries, so that it settles the front in pieces and starts delivering
//! again after the first: [`Pace`] decides, from how long the broker took
//! to refill earlier fronts.

use std::{
    collections::VecDeque,
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

use super::AmqpError;

/// How long a settled delivery may wait for the front to cover it before it
/// is acked alone. Acks only return prefetch credit; events are already out.
pub const STRAGGLER_DELAY: Duration = Duration::from_millis(750);

/// Most stragglers acked alone per tick while the front moves: a bounded
/// cost to the broker (each is a Raft command on a quorum queue), and the
/// oldest ones, which are the likeliest to be redelivered, go first.
pub const SINGLES_PER_TICK: usize = 64;

/// Ticks the front must stay where it is before every aged straggler goes
/// alone, past [`SINGLES_PER_TICK`] (3 s): longer than a round of batches
/// takes at the default `batch.max_wait_ms`, shorter than the backoff of a
/// batch stuck in retries soon becomes.
pub const FRONT_STILL_TICKS: u32 = 4;

/// Most deliveries one `multiple` ack covers by default (`amqp.ack_chunk`):
/// a longer settled front goes as several, so a quorum queue settles it in
/// pieces and delivers again after the first instead of after all (a
/// 50,000-delivery ack is one Raft command the queue must apply before it
/// hands out the credit it returns). On a slow broker the deliveries after
/// the first piece can start the next round's batch clocks long before the
/// rest of the round arrives, so chunks are used only where [`Pace`] finds
/// the broker quick enough for them.
pub const MULTIPLE_ACK_CHUNK: u64 = 5000;

/// A settled front shorter than 1/64 of the deliveries held behind it is
/// not acked at once: it waits for a later settle to lengthen it, or for
/// the next straggler tick (at most [`STRAGGLER_DELAY`]). Returning that
/// little credit early gains the broker almost nothing, but it lets the
/// broker hand out a few deliveries of every calendar while the rest of
/// the window is still being imported, and those start the next batches'
/// `batch.max_wait_ms` clocks before the bulk of their changes can arrive:
/// when many calendars interleave, a round's first import to finish used to
/// start the next round's clocks, and a slow round then closed its batches
/// by age, part full, instead of full.
pub const SHORT_FRONT_RATIO: usize = 64;

const UNSETTLED: u8 = 0;
/// Settled (its event and dead-letter copies are confirmed), not acked yet.
const SETTLED: u8 = 1;
/// Acked on its own; leaves when the front passes it.
const ACKED: u8 = 2;
/// Settled and still behind the front at the last straggler tick.
const AGED: u8 = 3;

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

/// Tags are per channel, consecutive from 1: `states[i]` is tag `base + i`.
#[derive(Default)]
struct State {
    base: u64,
    states: VecDeque<u8>,
    stragglers: usize,
    /// The front moved since the last straggler tick.
    front_moved: bool,
    /// Consecutive ticks the front did not move.
    still_ticks: u32,
    /// How many tags one `multiple` ack covers.
    pace: Pace,
}

/// A front at least this many chunks long is a probe of the broker's pace
/// ([`Pace`]): shorter ones are not rounds of a saturated drain, and the
/// broker's time to refill them says little.
pub const PACE_PROBE_CHUNKS: u64 = 4;

/// Whole fronts go in chunks once the spread a chunked refill would have
/// had is under this fraction of `batch.max_wait_ms` ([`Pace`]).
pub const CHUNKED_BELOW: f64 = 0.75;

/// Chunked fronts go whole again once a chunked refill's deliveries spread
/// over more than this fraction of `batch.max_wait_ms`.
pub const WHOLE_ABOVE: f64 = 0.9;

/// Whether a long settled front goes as `multiple` acks of at most
/// `amqp.ack_chunk` deliveries ("chunked"), or as one ("whole").
///
/// Chunks let a quorum queue deliver again after settling the first one,
/// but it then interleaves those deliveries with settling the rest, so the
/// credit a long front returns comes back spread over the settle *and* the
/// deliveries. Every batch clock starts at its first change: when those
/// deliveries spread over more than `batch.max_wait_ms`, a round of a
/// saturated drain closes its batches by age, part full, and falls out of
/// step (more imports, a tail that waits out its clock), and it stays out
/// of step for the rest of the backlog (docs/benchmarks.md, seventh and
/// eighth rounds). A whole front makes the broker settle it all first and
/// then deliver in one run. Where chunks keep the rounds in step they are
/// faster, though: the broker's one long settle costs more than its pieces.
///
/// So the pace starts whole, the safe side, and each long front (at least
/// [`PACE_PROBE_CHUNKS`] chunks) probes the broker: how long it took to
/// settle before delivering again, and over how long the deliveries of the
/// refill (as many as were acked) then spread. A whole refill tells what a
/// chunked one would spread over: the settle of all but the first chunk
/// plus the same deliveries. Under [`CHUNKED_BELOW`] of
/// `batch.max_wait_ms`, fronts go in chunks; a chunked refill that spreads
/// over more than [`WHOLE_ABOVE`] of it sends them back to whole. The gap
/// between the two keeps the pace from flapping on a noisy broker.
struct Pace {
    /// `amqp.ack_chunk`; 0 = always whole, never probed.
    chunk: u64,
    max_wait: Duration,
    whole: bool,
    probe: Option<Probe>,
}

impl Default for Pace {
    /// No chunks: every front whole (what `State::default()` tests use).
    fn default() -> Pace {
        Pace::new(0, Duration::ZERO)
    }
}

/// One front's refill being timed.
struct Probe {
    sent_at: Instant,
    first_at: Option<Instant>,
    acked: u64,
    /// Deliveries still to come before the refill is complete.
    left: u64,
}

/// What a completed probe found.
#[derive(Debug, PartialEq, Eq)]
struct Probed {
    /// Whether the front went whole.
    was_whole: bool,
    /// From the ack to the refill's first delivery: the broker settling
    /// (the whole front, or the first chunk).
    settled: Duration,
    /// From the refill's first delivery to its last.
    spread: Duration,
    /// What a chunked refill spread over, or would have.
    chunked_spread: Duration,
    /// Whether fronts go whole from now on.
    whole: bool,
}

impl Probed {
    fn switched(&self) -> bool {
        self.was_whole != self.whole
    }
}

impl Pace {
    fn new(chunk: u64, max_wait: Duration) -> Pace {
        Pace {
            chunk,
            max_wait,
            whole: true,
            probe: None,
        }
    }

    /// Most tags one `multiple` ack covers now.
    fn chunk(&self) -> u64 {
        if self.chunk == 0 || self.whole {
            u64::MAX
        } else {
            self.chunk
        }
    }

    /// A front of `acked` tags went out at `now`: a long one starts a probe
    /// (replacing one whose refill never completed: the queue ran short).
    fn sent(&mut self, acked: u64, now: Instant) {
        if self.chunk > 0 && acked >= PACE_PROBE_CHUNKS.saturating_mul(self.chunk) {
            self.probe = Some(Probe {
                sent_at: now,
                first_at: None,
                acked,
                left: acked,
            });
        }
    }

    /// A delivery arrived (`now` is read only while a probe runs); a probe
    /// it completes is returned.
    fn delivered(&mut self, now: impl FnOnce() -> Instant) -> Option<Probed> {
        let probe = self.probe.as_mut()?;
        probe.left -= 1;
        if probe.first_at.is_some() && probe.left > 0 {
            return None;
        }
        let now = now();
        let first = *probe.first_at.get_or_insert(now);
        if probe.left > 0 {
            return None;
        }
        let settled = first - probe.sent_at;
        let spread = now - first;
        let acked = probe.acked;
        self.probe = None;
        let was_whole = self.whole;
        let chunked_spread = if was_whole {
            // The chunks after the first would be settled between the
            // deliveries.
            let rest = acked.saturating_sub(self.chunk) as f64 / acked as f64;
            settled.mul_f64(rest) + spread
        } else {
            spread
        };
        self.whole = if was_whole {
            chunked_spread >= self.max_wait.mul_f64(CHUNKED_BELOW)
        } else {
            chunked_spread > self.max_wait.mul_f64(WHOLE_ABOVE)
        };
        Some(Probed {
            was_whole,
            settled,
            spread,
            chunked_spread,
            whole: self.whole,
        })
    }
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
        self.push(tag);
        probed
    }

    fn push(&mut self, tag: u64) {
        if self.states.is_empty() && self.base == 0 {
            self.base = tag;
        }
        let end = self.base + self.states.len() as u64;
        if tag < end {
            return;
        }
        if self.states.is_empty() {
            self.base = tag;
        } else {
            // A tag never handed to us (cannot happen with one consumer per
            // channel) stays unsettled: a `multiple` ack must never cover it.
            for _ in end..tag {
                self.states.push_back(UNSETTLED);
            }
        }
        self.states.push_back(UNSETTLED);
    }

    fn mark(&mut self, tags: &[u64]) {
        for &tag in tags {
            if tag < self.base {
                continue;
            }
            if let Some(s) = self.states.get_mut((tag - self.base) as usize)
                && *s == UNSETTLED
            {
                *s = SETTLED;
                self.stragglers += 1;
            }
        }
    }

    /// Pops the settled front; the highest popped tag not yet acked is the
    /// `multiple` ack that covers the run (tags acked alone are no longer
    /// outstanding, so covering them again is harmless).
    #[cfg(test)]
    fn take_front(&mut self) -> Option<u64> {
        self.take_front_chunked(u64::MAX).pop()
    }

    /// Pops the settled front as `multiple` acks of at most about `chunk`
    /// tags each, ascending; each ack is at a tag not acked before.
    fn take_front_chunked(&mut self, chunk: u64) -> Vec<u64> {
        let mut acks = Vec::new();
        let mut last = None;
        let mut since = 0u64;
        while let Some(&s) = self.states.front() {
            if s == UNSETTLED {
                break;
            }
            if s == SETTLED || s == AGED {
                last = Some(self.base);
                self.stragglers -= 1;
            }
            self.states.pop_front();
            self.base += 1;
            self.front_moved = true;
            since += 1;
            if since >= chunk
                && let Some(tag) = last.take()
            {
                acks.push(tag);
                since = 0;
            }
        }
        acks.extend(last);
        acks
    }

    /// What to send: the settled front as `multiple` acks, then the single
    /// acks `singles` picks from behind it. (Tags acked alone that are at
    /// the front then leave; nothing settled can follow them there, since
    /// the front stopped at an unsettled tag.)
    fn decide(&mut self, singles: impl FnOnce(&mut State) -> Vec<u64>) -> Decision {
        let chunk = self.pace.chunk();
        let from = self.base;
        let multiples = self.take_front_chunked(chunk);
        if !multiples.is_empty() {
            self.pace.sent(self.base - from, Instant::now());
        }
        let singles = singles(self);
        self.take_front_chunked(chunk);
        Decision {
            multiples,
            singles,
            front: self.base,
        }
    }

    /// Whether the settled front is shorter than 1/[`SHORT_FRONT_RATIO`] of
    /// the deliveries held behind it (and so waits for more or for a tick).
    /// If so, the first tag not settled.
    fn short_front(&self) -> Option<u64> {
        // run ≤ len / (ratio + 1) means ratio × run ≤ what is behind it; only
        // that many states need looking at.
        let limit = self.states.len() / (SHORT_FRONT_RATIO + 1);
        let run = self
            .states
            .iter()
            .take(limit + 1)
            .take_while(|&&s| s != UNSETTLED)
            .count();
        (run > 0 && run <= limit).then(|| self.base + run as u64)
    }

    /// Every straggler, to be acked alone now.
    fn take_stragglers(&mut self) -> Vec<u64> {
        self.take_stragglers_through(u64::MAX)
    }

    /// Every straggler up to `tag`, to be acked alone now.
    fn take_stragglers_through(&mut self, tag: u64) -> Vec<u64> {
        let mut singles = Vec::new();
        if self.stragglers == 0 || tag < self.base {
            return singles;
        }
        let upto = usize::try_from(tag - self.base).map_or(self.states.len(), |n| {
            n.saturating_add(1).min(self.states.len())
        });
        for (i, s) in self.states.range_mut(..upto).enumerate() {
            if *s == SETTLED || *s == AGED {
                *s = ACKED;
                singles.push(self.base + i as u64);
            }
        }
        self.stragglers -= singles.len();
        singles
    }

    /// A straggler tick: fresh stragglers age; aged ones are acked alone,
    /// oldest first, up to [`SINGLES_PER_TICK`] unless the front has been
    /// still for [`FRONT_STILL_TICKS`] ticks.
    fn take_aged(&mut self) -> Vec<u64> {
        if std::mem::take(&mut self.front_moved) {
            self.still_ticks = 0;
        } else {
            self.still_ticks = self.still_ticks.saturating_add(1);
        }
        let mut singles = Vec::new();
        if self.stragglers == 0 {
            return singles;
        }
        let budget = if self.still_ticks >= FRONT_STILL_TICKS {
            usize::MAX
        } else {
            SINGLES_PER_TICK
        };
        for (i, s) in self.states.iter_mut().enumerate() {
            match *s {
                AGED if singles.len() < budget => {
                    *s = ACKED;
                    singles.push(self.base + i as u64);
                }
                SETTLED => *s = AGED,
                _ => {}
            }
        }
        self.stragglers -= singles.len();
        singles
    }

    fn outstanding(&self) -> usize {
        self.states.iter().filter(|&&s| s != ACKED).count()
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
    /// applying it again (the double-fault test found that roster).
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
        self.state.lock().outstanding()
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
            st.mark(tags);
            let decision = match st.short_front() {
                Some(settled) => {
                    self.note_settled_front(settled);
                    Decision {
                        front: st.base,
                        ..Decision::default()
                    }
                }
                None => st.decide(|_| Vec::new()),
            };
            (decision, st.stragglers)
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
            (st.decide(State::take_aged), st.stragglers)
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
    /// up applied last (the kill -9 test caught that roster).
    pub async fn ack_through(&self, tag: u64) -> Result<(), AmqpError> {
        let _send = self.send.lock().await;
        let decision = {
            let mut st = self.state.lock();
            if tag < st.base {
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
        let decision = self.state.lock().decide(State::take_stragglers);
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
            metrics::counter!("csw_acks_sent_total", "kind" => "multiple")
                .increment(d.multiples.len() as u64);
        }
        for tag in d.multiples {
            tracing::debug!(target: "csw::timeline", tag, "multiple ack sent");
            self.ack(tag, true).await?;
        }
        if !d.singles.is_empty() {
            metrics::counter!("csw_acks_sent_total", "kind" => "single")
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
    metrics::counter!("csw_ack_pace_changes_total", "to" => to).increment(1);
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
        if tracker.state.lock().stragglers == 0
            || tracker.flush_scheduled.swap(true, Ordering::AcqRel)
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            pace: Pace {
                whole: false,
                ..Pace::new(MULTIPLE_ACK_CHUNK, Duration::from_secs(1))
            },
            ..state(1..=long)
        };
        chunked.mark(&all);
        let d = chunked.decide(|_| Vec::new());
        assert_eq!(
            d.multiples,
            vec![MULTIPLE_ACK_CHUNK, 2 * MULTIPLE_ACK_CHUNK, long]
        );
        let mut whole = state(1..=long);
        whole.mark(&all);
        let d = whole.decide(|_| Vec::new());
        assert_eq!(d.multiples, vec![long], "amqp.ack_chunk = 0: one ack");
        assert_eq!(d.front, long + 1);
    }

    /// Settles every tag held and acks the front; the multiple acks sent.
    fn ack_all(s: &mut State) -> Vec<u64> {
        let held: Vec<u64> = (s.base..s.base + s.states.len() as u64).collect();
        s.mark(&held);
        s.decide(|_| Vec::new()).multiples
    }

    /// Delivers `n` more tags, the first at `first` and the others at
    /// `last` after now; what the probes they completed found.
    fn refill(s: &mut State, n: u64, first: Duration, last: Duration) -> Vec<Probed> {
        let t0 = Instant::now();
        let start = s.base + s.states.len() as u64;
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
        assert!(s.pace.probe.is_none());
    }

    #[test]
    fn the_settled_front_goes_as_one_multiple_ack() {
        let mut s = state(1..=5);
        s.mark(&[2, 1, 3]);
        assert_eq!(s.take_front(), Some(3));
        assert_eq!(s.outstanding(), 2);
        assert_eq!(s.take_front(), None);
    }

    #[test]
    fn stragglers_wait_for_the_front_or_go_alone() {
        let mut s = state(1..=6);
        s.mark(&[2, 4]);
        assert_eq!(s.take_front(), None, "tag 1 is unsettled");
        assert_eq!(s.stragglers, 2);
        // The flush acks them alone...
        assert_eq!(s.take_stragglers(), vec![2, 4]);
        assert_eq!(s.outstanding(), 4);
        // ...and a later multiple ack is at a tag never acked before.
        s.mark(&[1, 3, 5]);
        assert_eq!(s.take_front(), Some(5));
        assert_eq!(s.outstanding(), 1);
        // Tag 4 was acked alone: the front passes it without acking it again.
        s.mark(&[6]);
        assert_eq!(s.take_front(), Some(6));
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn a_front_of_only_acked_singles_sends_nothing() {
        let mut s = state(1..=3);
        s.mark(&[2, 3]);
        assert_eq!(s.take_stragglers(), vec![2, 3]);
        s.mark(&[1]);
        // 1 is settled, 2 and 3 were acked alone: only 1 is acked, as multiple.
        assert_eq!(s.take_front(), Some(1));
        assert!(s.states.is_empty());
    }

    #[test]
    fn settling_twice_or_unknown_tags_is_harmless() {
        let mut s = state(10..=12);
        s.mark(&[10, 10, 99, 3]);
        assert_eq!(s.stragglers, 1);
        assert_eq!(s.take_front(), Some(10));
        s.mark(&[10]);
        assert_eq!(s.take_front(), None);
        assert_eq!(s.outstanding(), 2);
    }

    #[test]
    fn stragglers_are_acked_alone_only_on_their_second_tick() {
        let mut s = state(1..=4);
        s.mark(&[2]);
        assert!(s.take_aged().is_empty(), "first tick: 2 ages");
        s.mark(&[3]);
        assert_eq!(s.take_aged(), vec![2], "second tick: 2 goes, 3 ages");
        s.mark(&[1]);
        // The front covers 1 (and 3, aged but not acked), passing 2.
        assert_eq!(s.take_front(), Some(3));
        assert_eq!(s.stragglers, 0);
        assert_eq!(s.outstanding(), 1);
    }

    #[test]
    fn a_moving_front_caps_single_acks_a_stuck_one_releases_all() {
        let n = 5 * SINGLES_PER_TICK as u64;
        let mut s = state(1..=n + 2);
        s.mark(&(3..=n + 2).collect::<Vec<_>>());
        s.mark(&[1]);
        assert_eq!(s.take_front(), Some(1), "the front moves");
        assert!(s.take_aged().is_empty(), "first tick: all age");
        // 2 stays unsettled, so the front stands still from now on: capped
        // single acks, oldest first, until it has been still long enough.
        let first = s.take_aged();
        assert_eq!(
            first,
            (3..3 + SINGLES_PER_TICK as u64).collect::<Vec<_>>(),
            "oldest first, capped"
        );
        for _ in 2..FRONT_STILL_TICKS {
            assert_eq!(s.take_aged().len(), SINGLES_PER_TICK);
        }
        // Still for FRONT_STILL_TICKS ticks: the rest go at once.
        let rest = s.take_aged();
        let capped = SINGLES_PER_TICK as u64 * u64::from(FRONT_STILL_TICKS - 1);
        assert_eq!(rest.len() as u64, n - capped);
        assert!(rest.len() > SINGLES_PER_TICK);
        assert_eq!(s.stragglers, 0);
        assert_eq!(s.outstanding(), 1, "only 2 is held");
    }

    #[test]
    fn a_long_front_goes_in_chunks_at_tags_not_acked_before() {
        let mut s = state(1..=10);
        s.mark(&[1, 2, 3, 5, 6, 7, 8, 9]);
        // 4 is acked alone first, so no chunk may end on it.
        s.mark(&[4]);
        assert_eq!(s.take_stragglers_through(4), vec![1, 2, 3, 4]);
        s.mark(&[1]);
        assert_eq!(s.take_front_chunked(4), vec![5, 9], "4 was acked alone");
        assert_eq!(
            s.take_front_chunked(4),
            Vec::<u64>::new(),
            "10 is unsettled"
        );
        assert_eq!(s.stragglers, 0);
        assert_eq!(s.outstanding(), 1);
    }

    #[test]
    fn acking_through_a_tag_leaves_later_stragglers_waiting() {
        let mut s = state(1..=6);
        s.mark(&[2, 3, 5]);
        assert_eq!(s.take_front(), None, "tag 1 is unsettled");
        assert_eq!(s.take_stragglers_through(4), vec![2, 3]);
        assert_eq!(s.stragglers, 1, "5 still waits for the front or a tick");
        assert!(s.take_stragglers_through(4).is_empty(), "acked once");
        assert_eq!(s.take_stragglers_through(u64::MAX), vec![5]);
        s.mark(&[1]);
        // 1 settles; 2, 3 and 5 were acked alone, 4 is unsettled.
        assert_eq!(s.take_front(), Some(1));
        assert!(s.take_stragglers_through(0).is_empty(), "before the base");
        assert_eq!(s.outstanding(), 2, "4 and 6 are held");
    }

    #[test]
    fn a_front_short_beside_what_is_held_behind_it_waits() {
        let n = 4 * (SHORT_FRONT_RATIO as u64 + 1);
        let mut s = state(1..=n);
        s.mark(&[1]);
        assert_eq!(s.short_front(), Some(2), "1 settled, {} held behind", n - 1);
        s.mark(&[2, 3, 4]);
        assert_eq!(
            s.short_front(),
            Some(5),
            "4 of {n}: 5 is the first unsettled"
        );
        s.mark(&[5]);
        assert_eq!(s.short_front(), None, "5 of {n} goes");
        assert_eq!(s.take_front(), Some(5));
        // With little held behind it, even one settled delivery goes.
        let mut s = state(1..=SHORT_FRONT_RATIO as u64);
        s.mark(&[1]);
        assert_eq!(s.short_front(), None);
        // Nothing settled at the front: nothing to hold.
        let mut s = state(1..=n);
        s.mark(&[2]);
        assert_eq!(s.short_front(), None);
    }

    #[test]
    fn a_gap_in_tags_blocks_the_front() {
        let mut s = State::default();
        s.register(1);
        s.register(3);
        s.mark(&[1, 3]);
        assert_eq!(s.take_front(), Some(1));
        assert_eq!(s.take_front(), None, "tag 2 was never handled");
        assert_eq!(s.take_stragglers(), vec![3]);
    }
}
