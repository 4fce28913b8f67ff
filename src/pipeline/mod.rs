//! The pipeline: consume → validate → batch → import → publish → ack.
//!
//! - [`source`]: reads deliveries, validates them, hands valid changes to the
//!   coordinator and rejected ones to settlement.
//! - [`batch`]: the per-calendar batcher and import scheduler. Its
//!   state sits behind one short lock: the consumer adds each valid change
//!   on its own task ([`batch::Batcher`]), and the coordinator task runs
//!   the timers, finished imports and draining.
//! - [`import`]: one task per batch: submit, follow the job (poll or webhook),
//!   then settle.
//! - [`settle`]: events first, then dead-letter copies, then acks.
//! - [`events`]: the CloudEvents the worker publishes.

pub mod batch;
pub mod events;
pub mod import;
pub mod jobs;
pub mod settle;
pub mod source;
