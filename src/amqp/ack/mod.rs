//! Acks for one consumer channel, coalesced into `multiple` acks.
//!
//! Batches hold deliveries of many calendars, so the deliveries one batch
//! settles are rarely contiguous on the channel: acking each of them alone
//! costs a frame per message and, on a quorum queue, a Raft command per
//! frame. Instead, settled deliveries are held: the front goes out as one
//! `multiple` ack at once, unless it is short beside what is held behind it
//! ([`ledger::SHORT_FRONT_RATIO`] says why). Stragglers are acked one by
//! one after one to two [`STRAGGLER_DELAY`]s (a tick ages fresh stragglers
//! and acks the aged ones), but at most [`ledger::SINGLES_PER_TICK`] a
//! tick, oldest first, unless the front itself is stuck (it has not moved
//! for [`ledger::FRONT_STILL_TICKS`] ticks): then all of them go, so they
//! return their prefetch credit when one calendar's batch is stuck in
//! retries. [`AckTracker::flush`] acks every settled delivery at once
//! (shutdown, handing a partition over).
//!
//! Why not ack stragglers sooner: each single ack is a Raft command on a
//! quorum queue, enough of them stall deliveries for seconds, and the front
//! of a draining queue catches up with nearly every straggler within a
//! second or two anyway. Why the cap: uncapped, a slow round's burst of
//! single acks slows the broker and so the next round, which feeds on
//! itself. Why not later: a settled delivery left unacked is one a crash
//! redelivers and the next worker imports again. That is harmless on its
//! own, but not after a newer batch of its calendar was imported:
//! [`AckTracker::ack_through`] says why, and a calendar's next import acks
//! its previous batch first.
//!
//! A long front goes as one `multiple` ack, or, once the broker has shown
//! it is quick enough, in chunks, so that the broker settles it in pieces
//! and starts delivering again after the first: the pace decides, from how
//! long the broker took to refill earlier fronts.
//!
//! # Vocabulary
//!
//! - **tag**: the number the broker gives each delivery on a channel,
//!   consecutive from 1; a `multiple` ack at tag `t` acks every tag up to
//!   `t` not acked yet.
//! - **settled**: a delivery whose outcome is safe with the broker (its
//!   event and dead-letter copies are confirmed), so it may be acked. Acked
//!   is a later step: the ack returns the delivery's prefetch credit.
//! - **front**: the contiguous run of settled deliveries at the start of
//!   those the channel still holds, which one `multiple` ack may cover
//!   because every tag before its last is settled too. Its end, the first
//!   tag not settled, is also called the front ("the front passed tag `t`").
//! - **straggler**: a settled delivery behind an unsettled one, so no
//!   `multiple` ack may cover it yet; it waits for the front to reach it,
//!   or is acked alone (a "single") after one to two ticks.
//! - **tick**: one straggler check, every [`STRAGGLER_DELAY`] while
//!   stragglers remain.
//! - **window**: the deliveries the broker hands out before it waits for
//!   acks: the channel's prefetch (`amqp.prefetch`).
//! - **round**: one turn of the window in a saturated drain: the broker
//!   delivers a window, the worker batches, imports and settles it, and the
//!   credit its acks return brings the next window. A round's batches
//!   should fill before their `batch.max_wait_ms` clocks run out.
//! - **chunk**: a piece of a long front acked on its own, of at most
//!   `amqp.ack_chunk` ([`MULTIPLE_ACK_CHUNK`] by default) deliveries.
//! - **pace**: whether long fronts currently go whole (one ack) or in
//!   chunks ([`pace`]).
//! - **probe** and **refill**: a long front's ack returns its credit, and
//!   the broker refills it with as many new deliveries; a probe times how
//!   long the broker took to start the refill and how long it spread.
//!
//! # Files
//!
//! - [`ledger`]: which tags are unsettled, settled or acked, and what the
//!   next acks may cover. No clock, no I/O.
//! - [`pace`]: whole fronts or chunks, from probes of the broker.
//! - [`tracker`]: [`AckTracker`], the I/O side: sends what the ledger picks
//!   on the lapin channel, ticks for stragglers, waits for the broker.
//! - [`barrier`]: [`AckBarriers`], per calendar where its previous batch's
//!   deliveries end on each channel; the calendar's next import waits until
//!   the broker processed those acks.

mod barrier;
mod ledger;
mod pace;
mod tracker;

pub use barrier::{AckBarrier, AckBarriers, ack_all};
pub use pace::MULTIPLE_ACK_CHUNK;
pub use tracker::{AckTracker, STRAGGLER_DELAY};
