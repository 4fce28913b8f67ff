//! The ledger of one channel's deliveries: which tags are unsettled,
//! settled or acked, and what one `multiple` ack may cover. No clock and no
//! I/O: [`super::tracker`] decides when to ask it and sends what it picks.

use std::collections::VecDeque;

/// Most stragglers acked alone per tick while the front moves: a bounded
/// cost to the broker (each is a Raft command on a quorum queue), and the
/// oldest ones, which are the likeliest to be redelivered, go first.
pub const SINGLES_PER_TICK: usize = 64;

/// Ticks the front must stay where it is before every aged straggler goes
/// alone, past [`SINGLES_PER_TICK`] (3 s): longer than a round of batches
/// takes at the default `batch.max_wait_ms`, shorter than the backoff of a
/// batch stuck in retries soon becomes.
pub const FRONT_STILL_TICKS: u32 = 4;

/// A settled front shorter than 1/64 of the deliveries held behind it is
/// not acked at once: it waits for a later settle to lengthen it, or for
/// the next straggler tick (at most [`STRAGGLER_DELAY`](super::STRAGGLER_DELAY)).
/// Returning that little credit early gains the broker almost nothing, but
/// it lets the broker hand out a few deliveries of every calendar while the
/// rest of the window is still being imported, and those would start the
/// next round's `batch.max_wait_ms` clocks before the bulk of their changes
/// can arrive, so a slow round would close its batches by age, part full.
pub const SHORT_FRONT_RATIO: usize = 64;

const UNSETTLED: u8 = 0;
/// Settled (its event and dead-letter copies are confirmed), not acked yet.
const SETTLED: u8 = 1;
/// Acked on its own; leaves when the front passes it.
const ACKED: u8 = 2;
/// Settled and still behind the front at the last straggler tick.
const AGED: u8 = 3;

/// Every delivery of one channel still held, by tag.
///
/// Tags are per channel, consecutive from 1: `states[i]` is tag `base + i`.
/// Tags below `base` are acked (by a `multiple` ack or alone) and forgotten.
#[derive(Default)]
pub(super) struct Ledger {
    base: u64,
    states: VecDeque<u8>,
    stragglers: usize,
    /// The front moved since the last straggler tick.
    front_moved: bool,
    /// Consecutive ticks the front did not move.
    still_ticks: u32,
}

impl Ledger {
    /// The first tag still held: every tag below it is acked.
    pub(super) fn first_held(&self) -> u64 {
        self.base
    }

    /// Settled deliveries held behind the front, not acked yet.
    pub(super) fn stragglers(&self) -> usize {
        self.stragglers
    }

    /// Records a delivery as received (unsettled).
    pub(super) fn register(&mut self, tag: u64) {
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

    /// Marks deliveries settled; tags unknown or settled before are skipped.
    pub(super) fn mark_settled(&mut self, tags: &[u64]) {
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
    pub(super) fn take_front(&mut self) -> Option<u64> {
        self.take_front_chunked(u64::MAX).pop()
    }

    /// Pops the settled front as `multiple` acks of at most about `chunk`
    /// tags each, ascending; each ack is at a tag not acked before.
    pub(super) fn take_front_chunked(&mut self, chunk: u64) -> Vec<u64> {
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

    /// Whether the settled front is shorter than 1/[`SHORT_FRONT_RATIO`] of
    /// the deliveries held behind it (and so waits for more or for a tick).
    /// If so, the first tag not settled.
    pub(super) fn short_front(&self) -> Option<u64> {
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
    pub(super) fn take_stragglers(&mut self) -> Vec<u64> {
        self.take_stragglers_through(u64::MAX)
    }

    /// Every straggler up to `tag`, to be acked alone now.
    pub(super) fn take_stragglers_through(&mut self, tag: u64) -> Vec<u64> {
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
    pub(super) fn take_aged(&mut self) -> Vec<u64> {
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

    /// Deliveries held and not acked yet.
    pub(super) fn outstanding(&self) -> usize {
        self.states.iter().filter(|&&s| s != ACKED).count()
    }

    /// The first tag past those held.
    #[cfg(test)]
    pub(super) fn end(&self) -> u64 {
        self.base + self.states.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(tags: std::ops::RangeInclusive<u64>) -> Ledger {
        let mut s = Ledger::default();
        for t in tags {
            s.register(t);
        }
        s
    }

    #[test]
    fn the_settled_front_goes_as_one_multiple_ack() {
        let mut s = ledger(1..=5);
        s.mark_settled(&[2, 1, 3]);
        assert_eq!(s.take_front(), Some(3));
        assert_eq!(s.outstanding(), 2);
        assert_eq!(s.take_front(), None);
    }

    #[test]
    fn stragglers_wait_for_the_front_or_go_alone() {
        let mut s = ledger(1..=6);
        s.mark_settled(&[2, 4]);
        assert_eq!(s.take_front(), None, "tag 1 is unsettled");
        assert_eq!(s.stragglers, 2);
        // The flush acks them alone...
        assert_eq!(s.take_stragglers(), vec![2, 4]);
        assert_eq!(s.outstanding(), 4);
        // ...and a later multiple ack is at a tag never acked before.
        s.mark_settled(&[1, 3, 5]);
        assert_eq!(s.take_front(), Some(5));
        assert_eq!(s.outstanding(), 1);
        // Tag 4 was acked alone: the front passes it without acking it again.
        s.mark_settled(&[6]);
        assert_eq!(s.take_front(), Some(6));
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn a_front_of_only_acked_singles_sends_nothing() {
        let mut s = ledger(1..=3);
        s.mark_settled(&[2, 3]);
        assert_eq!(s.take_stragglers(), vec![2, 3]);
        s.mark_settled(&[1]);
        // 1 is settled, 2 and 3 were acked alone: only 1 is acked, as multiple.
        assert_eq!(s.take_front(), Some(1));
        assert!(s.states.is_empty());
    }

    #[test]
    fn settling_twice_or_unknown_tags_is_harmless() {
        let mut s = ledger(10..=12);
        s.mark_settled(&[10, 10, 99, 3]);
        assert_eq!(s.stragglers, 1);
        assert_eq!(s.take_front(), Some(10));
        s.mark_settled(&[10]);
        assert_eq!(s.take_front(), None);
        assert_eq!(s.outstanding(), 2);
    }

    #[test]
    fn stragglers_are_acked_alone_only_on_their_second_tick() {
        let mut s = ledger(1..=4);
        s.mark_settled(&[2]);
        assert!(s.take_aged().is_empty(), "first tick: 2 ages");
        s.mark_settled(&[3]);
        assert_eq!(s.take_aged(), vec![2], "second tick: 2 goes, 3 ages");
        s.mark_settled(&[1]);
        // The front covers 1 (and 3, aged but not acked), passing 2.
        assert_eq!(s.take_front(), Some(3));
        assert_eq!(s.stragglers, 0);
        assert_eq!(s.outstanding(), 1);
    }

    #[test]
    fn a_moving_front_caps_single_acks_a_stuck_one_releases_all() {
        let n = 5 * SINGLES_PER_TICK as u64;
        let mut s = ledger(1..=n + 2);
        s.mark_settled(&(3..=n + 2).collect::<Vec<_>>());
        s.mark_settled(&[1]);
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
        let mut s = ledger(1..=10);
        s.mark_settled(&[1, 2, 3, 5, 6, 7, 8, 9]);
        // 4 is acked alone first, so no chunk may end on it.
        s.mark_settled(&[4]);
        assert_eq!(s.take_stragglers_through(4), vec![1, 2, 3, 4]);
        s.mark_settled(&[1]);
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
        let mut s = ledger(1..=6);
        s.mark_settled(&[2, 3, 5]);
        assert_eq!(s.take_front(), None, "tag 1 is unsettled");
        assert_eq!(s.take_stragglers_through(4), vec![2, 3]);
        assert_eq!(s.stragglers, 1, "5 still waits for the front or a tick");
        assert!(s.take_stragglers_through(4).is_empty(), "acked once");
        assert_eq!(s.take_stragglers_through(u64::MAX), vec![5]);
        s.mark_settled(&[1]);
        // 1 settles; 2, 3 and 5 were acked alone, 4 is unsettled.
        assert_eq!(s.take_front(), Some(1));
        assert!(s.take_stragglers_through(0).is_empty(), "before the base");
        assert_eq!(s.outstanding(), 2, "4 and 6 are held");
    }

    #[test]
    fn a_front_short_beside_what_is_held_behind_it_waits() {
        let n = 4 * (SHORT_FRONT_RATIO as u64 + 1);
        let mut s = ledger(1..=n);
        s.mark_settled(&[1]);
        assert_eq!(s.short_front(), Some(2), "1 settled, {} held behind", n - 1);
        s.mark_settled(&[2, 3, 4]);
        assert_eq!(
            s.short_front(),
            Some(5),
            "4 of {n}: 5 is the first unsettled"
        );
        s.mark_settled(&[5]);
        assert_eq!(s.short_front(), None, "5 of {n} goes");
        assert_eq!(s.take_front(), Some(5));
        // With little held behind it, even one settled delivery goes.
        let mut s = ledger(1..=SHORT_FRONT_RATIO as u64);
        s.mark_settled(&[1]);
        assert_eq!(s.short_front(), None);
        // Nothing settled at the front: nothing to hold.
        let mut s = ledger(1..=n);
        s.mark_settled(&[2]);
        assert_eq!(s.short_front(), None);
    }

    #[test]
    fn a_gap_in_tags_blocks_the_front() {
        let mut s = Ledger::default();
        s.register(1);
        s.register(3);
        s.mark_settled(&[1, 3]);
        assert_eq!(s.take_front(), Some(1));
        assert_eq!(s.take_front(), None, "tag 2 was never handled");
        assert_eq!(s.take_stragglers(), vec![3]);
    }
}
