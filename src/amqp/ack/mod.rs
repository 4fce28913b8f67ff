//! Acks for one consumer channel, coalesced into `multiple` acks.

mod tracker;

use super::AmqpError;

pub use tracker::{AckTracker, MULTIPLE_ACK_CHUNK, STRAGGLER_DELAY};
