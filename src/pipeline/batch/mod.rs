//! The per-calendar batcher and import scheduler (CONTRACT section 4).
//!
//! All batching state is one [`Scheduler`] behind a short lock: the
//! consumer adds each valid change on its own task ([`Batcher`]), with no
//! queue of parsed changes in between, and the coordinator task handles
//! timers, finished imports and draining. Per calendar there is at most one
//! open batch (still taking changes), a queue of closed batches (in delivery
//! order), and at most one import in flight; overall at most
//! `imports.max_concurrent` imports are in flight.
//!
//! A batch is sent when it is full, when its oldest change has waited
//! `batch.max_wait_ms`, at shutdown, or when the worker holds its whole
//! prefetch window with nothing in flight (see [`Limits::window`]).

pub mod batch;
pub mod dedup;
pub mod rules;
pub mod scheduler;

pub use batch::{Accepted, Batch, BatchedChange, ParseSettings, Repeats};
pub use rules::BatchRules;
pub use scheduler::{Batcher, Dispatch, Input, Limits, Scheduler};

use std::collections::{HashMap, HashSet};

/// Maps keyed by calendar or agent id, looked up for every change: foldhash
/// is several times quicker than the standard SipHash on short strings, and
/// still seeded per process.
type StrMap<V> = HashMap<String, V, foldhash::fast::RandomState>;
type StrSet = HashSet<String, foldhash::fast::RandomState>;
