//! Which changes may share a batch.

use std::collections::BTreeMap;

use super::StrMap;
use crate::domain::{ConflictResolution, ValidChange, ValidationMode};

/// The admission rules of one batch, free of deliveries (so they can be
/// benchmarked without a broker): one validation mode and conflict
/// resolution, at most `max_entries` entries unless one change is larger, and
/// no two overlapping entries for one agent.
pub struct BatchRules {
    validation_mode: ValidationMode,
    conflict_resolution: ConflictResolution,
    entry_count: usize,
    /// agent → start → end, disjoint by construction.
    intervals: StrMap<BTreeMap<i64, i64>>,
}

impl BatchRules {
    /// Rules for a batch that will start with `first`.
    pub fn new(first: &ValidChange) -> BatchRules {
        BatchRules {
            validation_mode: first.validation_mode,
            conflict_resolution: first.conflict_resolution,
            entry_count: 0,
            intervals: StrMap::default(),
        }
    }

    pub fn entry_count(&self) -> usize {
        self.entry_count
    }

    /// Whether `change` may join: same mode, room for it (an empty batch
    /// takes a change of any size), no overlap with what is in.
    pub fn accepts(&self, change: &ValidChange, max_entries: usize) -> bool {
        change.validation_mode == self.validation_mode
            && change.conflict_resolution == self.conflict_resolution
            && (self.entry_count == 0 || self.entry_count + change.entries.len() <= max_entries)
            && !self.overlaps(change)
    }

    fn overlaps(&self, change: &ValidChange) -> bool {
        change.spans.iter().any(|s| {
            self.intervals.get(&s.agent_id).is_some_and(|map| {
                // The last interval starting before s ends is the only candidate.
                map.range(..s.end_ms)
                    .next_back()
                    .is_some_and(|(_, &end)| end > s.start_ms)
            })
        })
    }

    /// Records `change` as in the batch. Its spans move into the rules, and
    /// what the import does not read is dropped, since a batch may wait with
    /// hundreds of changes.
    pub fn add(&mut self, change: &mut ValidChange) {
        for s in std::mem::take(&mut change.spans) {
            match self.intervals.get_mut(&s.agent_id) {
                Some(map) => {
                    map.insert(s.start_ms, s.end_ms);
                }
                None => {
                    self.intervals
                        .insert(s.agent_id, BTreeMap::from([(s.start_ms, s.end_ms)]));
                }
            }
        }
        change.occurred_at = None;
        change.source = None;
        self.entry_count += change.entries.len();
    }
}
