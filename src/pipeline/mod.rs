//! The pipeline, its stages in order: consume → validate → batch → import →
//! publish → ack.
//!
//! - [`source`]: consume and validate. Reads deliveries (one connection at a
//!   time; partitions shared between replicas), validates them, hands valid
//!   changes to the batcher and rejected ones to settlement.
//! - [`batch`]: per-calendar batches and the scheduler that decides when
//!   each goes to the import stage. Its state sits behind one short lock:
//!   the source adds each valid change on its own task ([`batch::Batcher`]),
//!   and the scheduler task runs the timers, ended imports and draining.
//! - [`import`]: one task per batch: wait at the calendar's ack barrier,
//!   submit, follow the job ([`jobs`]: poll or webhook), then settle.
//! - [`settle`]: publish and ack: events first, then dead-letter copies,
//!   then acks, which the ack barrier ([`crate::amqp::AckBarriers`]) records.
//! - [`events`]: the CloudEvents the worker publishes.

pub mod batch;
pub mod events;
pub mod import;
pub mod jobs;
pub mod settle;
pub mod source;
