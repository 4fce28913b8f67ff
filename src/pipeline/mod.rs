//! The pipeline: consume → validate → batch → import → publish → ack.
//!
//! - [`consumer`]: reads deliveries, validates them, hands valid changes to the
//!   coordinator and rejected ones to settlement.
//! - [`coordinator`]: the per-calendar batcher and import scheduler. Its
//!   state sits behind one short lock: the consumer adds each valid change
//!   on its own task ([`coordinator::Intake`]), and the coordinator task runs
//!   the timers, finished imports and draining.
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

use lapin::{BasicProperties, types::ShortString};

use crate::amqp::AckTracker;

/// One delivery, with what settlement needs to dead-letter and ack it.
pub struct InboundMessage {
    pub tag: u64,
    /// The channel the delivery came on; acks go back through it.
    pub acks: Arc<AckTracker>,
    pub body: Vec<u8>,
    pub properties: MessageProps,
    pub routing_key: String,
    pub received_at: Instant,
    pub traceparent: Option<String>,
    /// The broker says an earlier delivery of this message was not acked.
    pub redelivered: bool,
}

impl InboundMessage {
    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id()
    }
}

/// A delivery's AMQP properties, exactly as received, held compactly: a
/// worker holds tens of thousands of deliveries while batches fill, and
/// their properties differ, as a rule, only in `message_id`. Everything else
/// is shared with the previous delivery when it is the same.
pub struct MessageProps {
    /// The properties with `message_id` blanked when it is set.
    shared: Arc<BasicProperties>,
    message_id: Option<ShortString>,
}

impl MessageProps {
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_ref().map(ShortString::as_str)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.shared.content_type().as_ref().map(ShortString::as_str)
    }

    /// The properties as received.
    pub fn to_basic(&self) -> BasicProperties {
        let p = (*self.shared).clone();
        match &self.message_id {
            Some(id) => p.with_message_id(id.clone()),
            None => p,
        }
    }
}

/// Shares equal properties between consecutive deliveries.
#[derive(Default)]
pub struct PropsInterner {
    last: Option<Arc<BasicProperties>>,
}

impl PropsInterner {
    pub fn intern(&mut self, props: BasicProperties) -> MessageProps {
        let message_id = props.message_id().clone();
        let stripped = if message_id.is_some() {
            props.with_message_id(ShortString::from(""))
        } else {
            props
        };
        let shared = match &self.last {
            Some(last) if **last == stripped => last.clone(),
            _ => {
                let shared = Arc::new(stripped);
                self.last = Some(shared.clone());
                shared
            }
        };
        MessageProps { shared, message_id }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_properties_come_back_as_received() {
        let mut interner = PropsInterner::default();
        let a = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id("m-1".into());
        let b = a.clone().with_message_id("m-2".into());
        let none = BasicProperties::default().with_content_type("application/json".into());
        let (ia, ib, inone) = (
            interner.intern(a.clone()),
            interner.intern(b.clone()),
            interner.intern(none.clone()),
        );
        assert!(
            Arc::ptr_eq(&ia.shared, &ib.shared),
            "shared when only the id differs"
        );
        assert_eq!(ia.to_basic(), a);
        assert_eq!(ib.to_basic(), b);
        assert_eq!(inone.to_basic(), none);
        assert_eq!(inone.message_id(), None);
        assert_eq!(ib.message_id(), Some("m-2"));
    }
}
