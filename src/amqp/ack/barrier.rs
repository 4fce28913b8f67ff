//! The ack barrier: a calendar's next import waits until the broker
//! processed its previous batch's acks.
//!
//! Sent is not processed: a batch acked just before its connection died may
//! never have been acked on the broker, which then redelivers it after a
//! later batch of the same calendar was imported, and a replay under the
//! later batch's Idempotency-Key would leave the older changes on top. So
//! settlement records where each settled batch's deliveries end
//! ([`AckBarriers::record`]) and the calendar's next import first makes sure
//! the broker processed those acks ([`AckBarrier::wait_processed`]).
//!
//! Terms: a channel's *settled front* is the highest tag up to which every
//! delivery of that channel is settled; acks go out as one `multiple` ack
//! up to the front.

use std::{collections::HashMap, sync::Arc};

use super::{AckTracker, STRAGGLER_DELAY};
use crate::amqp::delivery::InboundMessage;

/// How long the acks may stand still before a calendar's next import stops
/// waiting for them and acks its previous batch alone.
const ACK_STALL: std::time::Duration = std::time::Duration::from_millis(100);

/// Where a settled batch's deliveries end on each channel they came on: a
/// calendar's next import first acks its channels through these tags
/// ([`AckTracker::ack_through`] says why), which sends nothing when the
/// coalesced acks already have, and makes sure the broker processed them
/// ([`AckTracker::confirm_through`]).
#[derive(Default)]
pub struct AckBarrier(Vec<(Arc<AckTracker>, u64)>);

impl AckBarrier {
    /// Whether nothing is left to make sure of: the broker processed acks
    /// past these tags on every channel, or the channel closed (the broker
    /// redelivers its deliveries, and their copies are added here when
    /// they settle again: [`AckBarrier::include`]).
    fn done(&self) -> bool {
        self.0
            .iter()
            .all(|(t, tag)| t.confirmed_through(*tag) || !t.is_open())
    }

    /// Adds another batch's deliveries.
    fn merge(&mut self, other: AckBarrier) {
        for (tracker, tag) in &other.0 {
            self.include(tracker, *tag);
        }
    }

    /// Adds a delivery that settles with this batch: a redelivered copy of
    /// one of its changes, acked without importing it again.
    fn include(&mut self, tracker: &Arc<AckTracker>, tag: u64) {
        match self.0.iter_mut().find(|(t, _)| Arc::ptr_eq(t, tracker)) {
            Some((_, through)) => *through = (*through).max(tag),
            None => self.0.push((tracker.clone(), tag)),
        }
    }

    /// Acks what is still unacked up to these tags, after giving the
    /// settled front up to [`STRAGGLER_DELAY`] (how long a delivery settled
    /// out of order waits for the front) to get there while it keeps
    /// moving, so that they go as `multiple` acks (acks sent alone cost a
    /// quorum queue a Raft command each; a front held back by a batch in
    /// retries does not move, and is not waited for). A closed channel is
    /// skipped: the broker redelivers its deliveries to this worker, which
    /// remembers them as settled and acks them without importing them again.
    pub async fn wait_processed(&self) {
        for (tracker, tag) in &self.0 {
            if tracker.confirmed_through(*tag) {
                continue;
            }
            if !tracker.acked_through(*tag) {
                tracker
                    .wait_settled_through(*tag, STRAGGLER_DELAY, ACK_STALL)
                    .await;
                if let Err(e) = tracker.ack_through(*tag).await {
                    tracing::debug!(error = %e, "could not ack a previous batch of a closed channel before the next import");
                    continue;
                }
            }
            match tracker.confirm_through(*tag).await {
                Ok(true) => {}
                Ok(false) => tracing::debug!(
                    tag,
                    "a previous batch's delivery is not settled yet; the next import goes ahead"
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "could not confirm a previous batch's acks on a closed channel before the next import")
                }
            }
        }
    }
}

/// The deliveries' tags, per channel they came on.
fn by_channel<'a>(
    messages: impl IntoIterator<Item = &'a InboundMessage>,
) -> Vec<(Arc<AckTracker>, Vec<u64>)> {
    let mut groups: Vec<(Arc<AckTracker>, Vec<u64>)> = Vec::new();
    for m in messages {
        match groups.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &m.acks)) {
            Some((_, tags)) => tags.push(m.tag),
            None => groups.push((m.acks.clone(), vec![m.tag])),
        }
    }
    groups
}

/// Acks a set of deliveries, grouped by the channel they came on; returns
/// where they end on each channel.
pub async fn ack_all<'a>(messages: impl IntoIterator<Item = &'a InboundMessage>) -> AckBarrier {
    let mut through = Vec::new();
    for (tracker, tags) in by_channel(messages) {
        if let Err(e) = tracker.settle(&tags).await {
            // The channel died: the broker redelivers these, and the redelivered
            // copies settle on the new channel.
            tracing::warn!(error = %e, count = tags.len(), "could not ack deliveries of a closed channel; the broker will redeliver them");
        }
        through.push((tracker, tags.into_iter().max().unwrap_or(0)));
    }
    AckBarrier(through)
}

/// Calendars whose last batch's acks may still be out, past which those
/// whose acks went out are forgotten (the acks go within a few seconds).
const PRUNE_AT: usize = 1024;

/// Per calendar, the barrier its next import waits at: the one place the
/// barrier's state lives. Settlement records into it, the import stage
/// takes a calendar's barrier when it starts the calendar's next import.
#[derive(Clone, Default)]
pub struct AckBarriers(Arc<parking_lot::Mutex<BarrierMap>>);

type BarrierMap = HashMap<String, AckBarrier, foldhash::fast::RandomState>;

impl AckBarriers {
    /// A batch of `calendar_id` settled with these acks: its next import
    /// waits until the broker processed them.
    pub fn record(&self, calendar_id: &str, acked: AckBarrier) {
        if acked.done() {
            return;
        }
        let mut map = self.0.lock();
        if map.len() >= PRUNE_AT {
            map.retain(|_, a| !a.done());
        }
        match map.get_mut(calendar_id) {
            // Redelivered copies settled meanwhile (`ack_settled_copy`) stay.
            Some(previous) => previous.merge(acked),
            None => {
                map.insert(calendar_id.to_owned(), acked);
            }
        }
    }

    /// Acks a redelivered copy of a change already imported and settled,
    /// without importing it again; the calendar's next import makes sure
    /// this ack reached the broker first, as it does for a previous batch's.
    pub fn ack_settled_copy(&self, calendar_id: &str, msg: InboundMessage) {
        self.0
            .lock()
            .entry(calendar_id.to_owned())
            .or_default()
            .include(&msg.acks, msg.tag);
        tokio::spawn(async move {
            ack_all([&msg]).await;
        });
    }

    /// The barrier the calendar's next import waits at, if any; taken, so
    /// the import after that waits only for what settles from now on.
    pub fn take(&self, calendar_id: &str) -> Option<AckBarrier> {
        self.0.lock().remove(calendar_id)
    }
}
