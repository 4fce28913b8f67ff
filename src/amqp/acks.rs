//! Acks for one consumer channel, coalesced into `multiple` acks where the
//! settled deliveries are contiguous.

use std::collections::BTreeMap;

use lapin::{Channel, options::BasicAckOptions};
use tokio::sync::Mutex;

use super::AmqpError;

/// Tracks every delivery of one channel from receipt to ack.
///
/// Invariant: a tag is acked exactly once. Acking twice (or acking a tag a
/// `multiple` ack already covered) makes the broker close the channel, so all
/// acks of a channel go out under one lock, in the order they are decided.
pub struct AckTracker {
    channel: Channel,
    /// tag → settled; entries leave once acked.
    state: Mutex<BTreeMap<u64, bool>>,
}

impl AckTracker {
    pub fn new(channel: Channel) -> AckTracker {
        AckTracker {
            channel,
            state: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records a delivery as received, before anything else can settle it.
    pub async fn register(&self, tag: u64) {
        self.state.lock().await.insert(tag, false);
    }

    /// Unacked deliveries held on this channel.
    pub async fn outstanding(&self) -> usize {
        self.state.lock().await.len()
    }

    /// Marks deliveries settled and acks what can be acked: the settled run at
    /// the front in one `multiple` ack, the others one by one. A closed channel
    /// acks nothing (the broker redelivers its messages) and is not an error
    /// worth more than a log line to the caller.
    pub async fn settle(&self, tags: &[u64]) -> Result<(), AmqpError> {
        let mut state = self.state.lock().await;
        for tag in tags {
            if let Some(settled) = state.get_mut(tag) {
                *settled = true;
            }
        }
        let mut front = None;
        while let Some(entry) = state.first_entry() {
            if !*entry.get() {
                break;
            }
            front = Some(*entry.key());
            entry.remove();
        }
        let singles: Vec<u64> = tags
            .iter()
            .copied()
            .filter(|t| state.get(t) == Some(&true))
            .collect();
        for t in &singles {
            state.remove(t);
        }
        if !self.channel.status().connected() {
            return Err(AmqpError::Disconnected);
        }
        if let Some(tag) = front {
            self.ack(tag, true).await?;
        }
        for tag in singles {
            self.ack(tag, false).await?;
        }
        Ok(())
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
