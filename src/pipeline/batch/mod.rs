//! Batching: valid changes grouped per calendar into imports.
//!
//! - [`rules`]: which changes may share a batch (same mode, room, no overlap).
//! - [`changes`]: a batch's changes and the repeated deliveries that settle with it.
//! - [`dedup`]: which changeIds are batched now or settled lately.
//! - [`scheduler`]: open and closed batches per calendar, their deadlines,
//!   and when each goes to the import stage.
//!
//! A batch is sent when it is full, when its oldest change has waited
//! `batch.max_wait_ms`, at shutdown, or when the worker holds its whole
//! prefetch window with nothing in flight (see [`Limits::window`]).

pub mod changes;
mod dedup;
pub mod rules;
pub mod scheduler;

pub use changes::{Accepted, Batch, BatchedChange, ParseSettings, Repeats};
pub use rules::BatchRules;
pub use scheduler::{Batcher, ImportEnded, ImportStage, Limits, Scheduler};

use std::collections::{HashMap, HashSet};

/// Maps keyed by calendar or agent id, looked up for every change: foldhash
/// is several times quicker than the standard SipHash on short strings, and
/// still seeded per process.
type StrMap<V> = HashMap<String, V, foldhash::fast::RandomState>;
type StrSet = HashSet<String, foldhash::fast::RandomState>;
