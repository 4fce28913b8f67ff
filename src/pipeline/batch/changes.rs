//! A batch: the changes of one import, and the deliveries that settle with it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::rules::BatchRules;
use crate::{
    amqp::InboundMessage,
    cxone::import_body::{EntriesAt, EntryLocator, ImportBody},
    domain::{ConflictResolution, ValidChange, ValidationMode},
};

/// A valid change and its delivery.
pub struct Accepted {
    pub change: ValidChange,
    pub msg: InboundMessage,
    pub validation: Duration,
}

/// State a batch shares with the scheduler after it leaves it: deliveries
/// of a repeated `changeId` attach here and settle with the batch's outcome.
#[derive(Default)]
pub struct Repeats {
    duplicates: Mutex<Option<Vec<InboundMessage>>>,
    /// How many repeats ever attached (they stay counted after settlement
    /// takes them), so the scheduler can count the batch's deliveries.
    attached: AtomicUsize,
}

impl Repeats {
    pub(super) fn new() -> Arc<Repeats> {
        Arc::new(Repeats {
            duplicates: Mutex::new(Some(Vec::new())),
            attached: AtomicUsize::new(0),
        })
    }

    /// Attaches a repeated delivery; gives it back if the batch already settled.
    pub(super) fn attach(&self, msg: InboundMessage) -> Option<InboundMessage> {
        match self.duplicates.lock().expect("batch lock").as_mut() {
            Some(list) => {
                list.push(msg);
                self.attached.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => Some(msg),
        }
    }

    /// How many repeated deliveries attached to the batch.
    pub fn attached(&self) -> usize {
        self.attached.load(Ordering::Relaxed)
    }

    /// Takes the repeated deliveries for settlement; later repeats are new changes.
    pub fn take_duplicates(&self) -> Vec<InboundMessage> {
        self.duplicates
            .lock()
            .expect("batch lock")
            .take()
            .unwrap_or_default()
    }
}

/// A change in a batch: what its import and settlement still need. Its
/// entries are rebuilt from its delivery's body at import time
/// ([`Batch::import_body`]) and its change id is kept by the delivery
/// ([`InboundMessage::change_id`]).
pub struct BatchedChange {
    /// A change holds at most `limits.max_entries_per_change` shifts of at
    /// most a day: far below `u32::MAX` minutes.
    pub capacity_minutes: u32,
    /// Validation time in microseconds (saturating).
    pub validation_us: u32,
    /// Where the body holds the change's entries as the import body writes
    /// them: the import copies those bytes instead of parsing the body
    /// again. `None`: the import parses it again.
    entries_at: Option<EntriesAt>,
    pub msg: InboundMessage,
}

/// Changes for one import: same calendar, mode and conflict resolution, no
/// two overlapping entries for one agent.
pub struct Batch {
    pub calendar_id: String,
    pub validation_mode: ValidationMode,
    pub conflict_resolution: ConflictResolution,
    pub changes: Vec<BatchedChange>,
    pub entry_count: usize,
    pub repeats: Arc<Repeats>,
    pub(super) seq: u64,
    rules: BatchRules,
}

/// How the source parsed the bodies: an import parses its changes' bodies
/// again, the same way, to rebuild their entries.
#[derive(Clone)]
pub struct ParseSettings {
    pub limits: crate::domain::Limits,
    pub default_mode: ValidationMode,
}

impl ParseSettings {
    pub fn of(settings: &crate::config::Settings) -> ParseSettings {
        ParseSettings {
            limits: settings.limits,
            default_mode: settings.cxone.default_validation_mode,
        }
    }
}

impl Batch {
    pub(super) fn new(seq: u64, first: &ValidChange) -> Batch {
        Batch {
            calendar_id: first.calendar_id.clone(),
            validation_mode: first.validation_mode,
            conflict_resolution: first.conflict_resolution,
            changes: Vec::new(),
            entry_count: 0,
            repeats: Repeats::new(),
            seq,
            rules: BatchRules::new(first),
        }
    }

    pub(super) fn accepts(&self, change: &ValidChange, max_entries: usize) -> bool {
        self.rules.accepts(change, max_entries)
    }

    pub(super) fn push(&mut self, accepted: Accepted, locator: &mut EntryLocator) {
        let Accepted {
            mut change,
            msg,
            validation,
        } = accepted;
        self.rules.add(&mut change);
        self.entry_count = self.rules.entry_count();
        let entries_at = locator.locate(msg.body(), &change.entries);
        self.changes.push(BatchedChange {
            capacity_minutes: u32::try_from(change.capacity_minutes).unwrap_or(u32::MAX),
            validation_us: u32::try_from(validation.as_micros()).unwrap_or(u32::MAX),
            entries_at,
            msg,
        });
    }

    /// The `POST .../schedules/import` body, byte for byte what serialising
    /// the batch's [`crate::domain::ImportPayload`] gives.
    ///
    /// A batched change keeps only its delivery: the body must stay for a
    /// dead-letter copy anyway, and keeping its serialised entries as well
    /// would about double what a full window of waiting changes takes. Where
    /// the body already holds them byte for byte as they serialise
    /// ([`BatchedChange`]'s `entries_at`, checked when the change joined the
    /// batch), those bytes are copied. Otherwise the body is parsed
    /// again here, as the source parsed it (same settings, same result);
    /// an error means exactly that broke, and fails the batch rather than
    /// sending something else.
    pub fn import_body(&self, parse: &ParseSettings) -> Result<Vec<u8>, String> {
        let mut body = ImportBody::with_capacity(self.entry_count);
        for held in &self.changes {
            if let Some(at) = held.entries_at {
                body.push_copied(held.msg.body(), at);
                continue;
            }
            let change = crate::domain::parse_change(
                held.msg.body(),
                &held.msg.meta(),
                &parse.limits,
                parse.default_mode,
            )
            .map_err(|r| {
                format!(
                    "change {} did not parse again as it did when it was accepted ({}); \
                     this is a bug in the worker, please report it",
                    held.msg.change_id(),
                    r.summary()
                )
            })?;
            body.push_entries(&change.entries);
        }
        Ok(body.finish(
            self.validation_mode,
            self.conflict_resolution,
            &self.calendar_id,
        ))
    }

    /// Change ids in batch order.
    pub fn change_ids(&self) -> Vec<String> {
        self.changes
            .iter()
            .map(|a| a.msg.change_id().to_owned())
            .collect()
    }
}
