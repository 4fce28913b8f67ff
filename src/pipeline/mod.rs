//! The pipeline: consume → validate → batch → import → publish → ack.
//!
//! - [`consumer`]: reads deliveries, validates them, hands valid changes to the
//!   coordinator and rejected ones to settlement.
//! - [`coordinator`]: the per-calendar batcher and import scheduler: one task
//!   owns all batching state, so there are no locks on the hot path.
//! - [`import`]: one task per batch: submit, follow the job (poll or webhook),
//!   then settle.
//! - [`settle`]: events first, then dead-letter copies, then acks.
//! - [`events`]: the CloudEvents the worker publishes.

pub mod consumer;
pub mod coordinator;
pub mod events;
pub mod import;
pub mod jobs;
pub mod membership;
pub mod settle;

use std::sync::Arc;

use tokio::time::Instant;

use lapin::BasicProperties;

use crate::amqp::AckTracker;

/// One delivery, with what settlement needs to dead-letter and ack it.
pub struct InboundMessage {
    pub tag: u64,
    /// The channel the delivery came on; acks go back through it.
    pub acks: Arc<AckTracker>,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub routing_key: String,
    pub received_at: Instant,
    pub traceparent: Option<String>,
    /// The broker says an earlier delivery of this message was not acked.
    pub redelivered: bool,
}

impl InboundMessage {
    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id().as_ref().map(|s| s.as_str())
    }
}

/// Acks a set of deliveries, grouped by the channel they came on.
pub async fn ack_all<'a>(messages: impl IntoIterator<Item = &'a InboundMessage>) {
    let mut groups: Vec<(Arc<AckTracker>, Vec<u64>)> = Vec::new();
    for m in messages {
        match groups.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &m.acks)) {
            Some((_, tags)) => tags.push(m.tag),
            None => groups.push((m.acks.clone(), vec![m.tag])),
        }
    }
    for (tracker, tags) in groups {
        if let Err(e) = tracker.settle(&tags).await {
            // The channel died: the broker redelivers these, and the redelivered
            // copies settle on the new channel.
            tracing::warn!(error = %e, count = tags.len(), "could not ack deliveries of a closed channel; the broker will redeliver them");
        }
    }
}
