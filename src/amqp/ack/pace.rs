//! The ack pace: whether a long settled front goes as one `multiple` ack
//! ("whole") or as several of at most `amqp.ack_chunk` deliveries
//! ("chunked"), chosen by timing how the broker refills long fronts.

use std::time::Duration;

use tokio::time::Instant;

/// Most deliveries one `multiple` ack covers by default (`amqp.ack_chunk`):
/// a longer settled front goes as several, so a quorum queue settles it in
/// pieces and delivers again after the first instead of after all (one long
/// ack is one Raft command the queue must apply before it hands out the
/// credit it returns). On a slow broker the deliveries after the first
/// piece can start the next round's batch clocks long before the rest of
/// the round arrives, so chunks are used only where [`Pace`] finds the
/// broker quick enough for them.
pub const MULTIPLE_ACK_CHUNK: u64 = 5000;

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
/// of step for the rest of the backlog. A whole front makes the broker
/// settle it all first and then deliver in one run. Where chunks keep the
/// rounds in step they are faster, though: the broker's one long settle
/// costs more than its pieces.
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
pub(super) struct Pace {
    /// `amqp.ack_chunk`; 0 = always whole, never probed.
    chunk: u64,
    max_wait: Duration,
    whole: bool,
    probe: Option<Probe>,
}

impl Default for Pace {
    /// No chunks: every front whole.
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
pub(super) struct Probed {
    /// Whether the front went whole.
    pub(super) was_whole: bool,
    /// From the ack to the refill's first delivery: the broker settling
    /// (the whole front, or the first chunk).
    pub(super) settled: Duration,
    /// From the refill's first delivery to its last.
    pub(super) spread: Duration,
    /// What a chunked refill spread over, or would have.
    pub(super) chunked_spread: Duration,
    /// Whether fronts go whole from now on.
    pub(super) whole: bool,
}

impl Probed {
    pub(super) fn switched(&self) -> bool {
        self.was_whole != self.whole
    }
}

impl Pace {
    /// Starts whole; `chunk` is `amqp.ack_chunk`, `max_wait` is
    /// `batch.max_wait_ms`.
    pub(super) fn new(chunk: u64, max_wait: Duration) -> Pace {
        Pace {
            chunk,
            max_wait,
            whole: true,
            probe: None,
        }
    }

    /// A pace that already goes in chunks, as if a probe had found the
    /// broker quick.
    #[cfg(test)]
    pub(super) fn chunked(chunk: u64, max_wait: Duration) -> Pace {
        Pace {
            whole: false,
            ..Pace::new(chunk, max_wait)
        }
    }

    /// Whether a front's refill is being timed.
    #[cfg(test)]
    pub(super) fn is_probing(&self) -> bool {
        self.probe.is_some()
    }

    /// Most tags one `multiple` ack covers now.
    pub(super) fn chunk(&self) -> u64 {
        if self.chunk == 0 || self.whole {
            u64::MAX
        } else {
            self.chunk
        }
    }

    /// A front of `acked` tags went out at `now`: a long one starts a probe
    /// (replacing one whose refill never completed: the queue ran short).
    pub(super) fn sent(&mut self, acked: u64, now: Instant) {
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
    pub(super) fn delivered(&mut self, now: impl FnOnce() -> Instant) -> Option<Probed> {
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
