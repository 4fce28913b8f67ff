//! AMQP: connection, topology, the confirmed publisher and the ack tracker.
//!
//! The worker never uses lapin's automatic recovery: after a connection loss
//! it builds a new connection and new channels, so an ack can never reach the
//! broker for a delivery of the dead channel (lapin poisons those ackers) and
//! the broker redelivers them, as docs/contract.md §9.3 requires.
//!
//! - `connection`: [`connect`] (TLS included) and the [`reconnect_delay`] backoff.
//! - `topology`: [`declare_topology`] and the names of the derived exchanges
//!   and queues.
//! - `publisher`: the confirmed [`Publisher`] and its pending [`Confirm`].
//! - `ack`: [`AckTracker`], which coalesces one channel's acks, and
//!   [`AckBarriers`], each calendar's previous batch's acks, which its next
//!   import waits for; its module docs define front, straggler, round,
//!   window, chunk and pace.
//! - `delivery`: [`InboundMessage`], a delivery as the worker keeps it.
//! - `headers`: [`header_str`]; `error`: [`AmqpError`].
//!
//! Everything the rest of the crate uses is re-exported here, so its paths
//! are `crate::amqp::X` whatever file `X` lives in.

mod ack;
mod connection;
pub mod delivery;
mod error;
mod headers;
mod publisher;
mod topology;

pub use ack::{AckBarrier, AckBarriers, AckTracker, MULTIPLE_ACK_CHUNK, STRAGGLER_DELAY, ack_all};
pub use connection::{connect, reconnect_delay};
pub use delivery::{InboundMessage, PropertiesInterner};
pub use error::AmqpError;
pub use headers::header_str;
pub use publisher::{Confirm, Publisher, persistent};
pub use topology::{
    declare_topology, delete_topology, members_exchange_name, partition_exchange_name,
    partition_queue_name, webhook_relay_exchange_name,
};
