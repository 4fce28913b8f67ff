//! How much one change may hold: the limits of docs/contract.md §3.2, set by
//! the `[limits]` section of the configuration.

use serde::Deserialize;

/// Validation limits of docs/contract.md §3.2.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_entries_per_change: usize,
    pub max_shift_minutes: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1024 * 1024,
            max_entries_per_change: 1000,
            max_shift_minutes: 1440,
        }
    }
}
