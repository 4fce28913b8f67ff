//! The per-calendar batcher and import scheduler (CONTRACT section 4).
//!
//! All batching state is one [`Coordinator`] behind a short lock: the
//! consumer adds each valid change on its own task ([`Intake`]), with no
//! queue of parsed changes in between, and the coordinator task handles
//! timers, finished imports and draining. Per calendar there is at most one
//! open batch (still taking changes), a queue of closed batches (in delivery
//! order), and at most one import in flight; overall at most
//! `imports.max_concurrent` imports are in flight.
//!
//! A batch is sent when it is full, when its oldest change has waited
//! `batch.max_wait_ms`, at shutdown, or when the worker holds its whole
//! prefetch window with nothing in flight (see [`Limits::window`]).

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    hash::{BuildHasher, Hasher, RandomState},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{AckedThrough, InboundMessage};
use crate::domain::{ConflictResolution, ScheduleEntry, ValidChange, ValidationMode};

/// Maps keyed by calendar or agent id, looked up for every change: foldhash
/// is several times quicker than the standard SipHash on short strings, and
/// still seeded per process.
type StrMap<V> = HashMap<String, V, foldhash::fast::RandomState>;
type StrSet = HashSet<String, foldhash::fast::RandomState>;

/// A valid change and its delivery.
pub struct Accepted {
    pub change: ValidChange,
    pub msg: InboundMessage,
    pub validation: Duration,
}

/// What the coordinator task hears (changes come in through [`Intake`]).
pub enum Input {
    /// An import ended: the calendar is free again. `acked` when its event
    /// was published and its deliveries acked (or on their way: the
    /// calendar's next import makes sure of it first).
    Finished {
        calendar_id: String,
        change_ids: Vec<String>,
        /// How many deliveries the batch held, repeats of a changeId included.
        deliveries: usize,
        acked: Option<AckedThrough>,
    },
}

/// State a batch shares with the coordinator after it leaves it: deliveries
/// of a repeated `changeId` attach here and settle with the batch's outcome.
#[derive(Default)]
pub struct BatchShared {
    duplicates: Mutex<Option<Vec<InboundMessage>>>,
    /// How many repeats ever attached (they stay counted after settlement
    /// takes them), so the coordinator can count the batch's deliveries.
    attached: AtomicUsize,
}

impl BatchShared {
    fn new() -> Arc<BatchShared> {
        Arc::new(BatchShared {
            duplicates: Mutex::new(Some(Vec::new())),
            attached: AtomicUsize::new(0),
        })
    }

    /// Attaches a repeated delivery; gives it back if the batch already settled.
    fn attach(&self, msg: InboundMessage) -> Option<InboundMessage> {
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

/// A change in a batch: what its import and settlement still need. Its
/// entries are rebuilt from its delivery's body at import time
/// ([`Batch::import_body`]) and its change id is kept by the delivery
/// ([`InboundMessage::change_id`]).
pub struct Held {
    /// A change holds at most `limits.max_entries_per_change` shifts of at
    /// most a day: far below `u32::MAX` minutes.
    pub capacity_minutes: u32,
    /// Validation time in microseconds (saturating).
    pub validation_us: u32,
    /// Where the body holds the change's entries exactly as the import
    /// serialises them, comma-joined (compact JSON, fields in the contract's
    /// order, as a publisher serialising its own types writes it): the
    /// import copies those bytes instead of
    /// parsing the body again. `None`: the import parses it again.
    entries_at: Option<(u32, u32)>,
    pub msg: InboundMessage,
}

/// Changes for one import: same calendar, mode and conflict resolution, no
/// two overlapping entries for one agent.
pub struct Batch {
    pub calendar_id: String,
    pub validation_mode: ValidationMode,
    pub conflict_resolution: ConflictResolution,
    pub changes: Vec<Held>,
    pub entry_count: usize,
    pub shared: Arc<BatchShared>,
    /// The calendar's previous batch, when its acks may not all be out yet.
    pub previous: Option<AckedThrough>,
    seq: u64,
    rules: BatchRules,
}

/// How the consumer parsed the bodies: an import parses its changes' bodies
/// again, the same way, to rebuild their entries.
#[derive(Clone)]
pub struct ParseSettings {
    pub limits: crate::domain::Limits,
    pub default_mode: ValidationMode,
}

const BODY_HEAD: &[u8] = br#"{"scheduleEntries":["#;

fn append_entries(body: &mut Vec<u8>, entries: &[ScheduleEntry]) {
    for entry in entries {
        if body.len() > BODY_HEAD.len() {
            body.push(b',');
        }
        serde_json::to_writer(&mut *body, entry).expect("a schedule entry serialises");
    }
}

/// Where `body` holds `entries` byte for byte as [`append_entries`] writes
/// them as a body's first entries (comma-joined): then copying those bytes
/// ([`append_span`]) builds the same import body as serialising the
/// entries. `scratch` is reused; the serialised form is `append_entries`'s
/// own output, so the two cannot drift apart.
fn entries_span(
    body: &[u8],
    entries: &[ScheduleEntry],
    scratch: &mut Vec<u8>,
) -> Option<(u32, u32)> {
    scratch.clear();
    scratch.extend_from_slice(BODY_HEAD);
    append_entries(scratch, entries);
    let needle = &scratch[BODY_HEAD.len()..];
    let at = super::find(body, needle)?;
    Some((u32::try_from(at).ok()?, u32::try_from(needle.len()).ok()?))
}

/// Finds changes' entries in their bodies ([`entries_span`]), and stops
/// looking, but for one change in [`EntryCopier::RETRY_EVERY`], once
/// [`EntryCopier::GIVE_UP_AFTER`] in a row were not there: a publisher
/// whose bodies never hold them so (sorted keys, say) would otherwise pay
/// for a serialisation and a search per change and gain nothing.
#[derive(Default)]
struct EntryCopier {
    scratch: Vec<u8>,
    misses: u32,
    skipped: u32,
}

impl EntryCopier {
    const GIVE_UP_AFTER: u32 = 32;
    const RETRY_EVERY: u32 = 256;

    fn span(&mut self, body: &[u8], entries: &[ScheduleEntry]) -> Option<(u32, u32)> {
        if self.misses >= Self::GIVE_UP_AFTER {
            self.skipped += 1;
            if self.skipped < Self::RETRY_EVERY {
                return None;
            }
            self.skipped = 0;
        }
        let span = entries_span(body, entries, &mut self.scratch);
        self.misses = if span.is_some() {
            0
        } else {
            self.misses.saturating_add(1)
        };
        span
    }
}

/// Appends the entries `span` of `source` marks, as [`append_entries`] would.
fn append_span(body: &mut Vec<u8>, source: &[u8], (at, len): (u32, u32)) {
    if len == 0 {
        return;
    }
    if body.len() > BODY_HEAD.len() {
        body.push(b',');
    }
    let at = at as usize;
    body.extend_from_slice(&source[at..at + len as usize]);
}

fn finish_body(
    mut body: Vec<u8>,
    mode: ValidationMode,
    conflict: ConflictResolution,
    calendar_id: &str,
) -> Vec<u8> {
    body.extend_from_slice(br#"],"validationMode":"#);
    serde_json::to_writer(&mut body, &mode).expect("an enum serialises");
    body.extend_from_slice(br#","conflictResolution":"#);
    serde_json::to_writer(&mut body, &conflict).expect("an enum serialises");
    body.extend_from_slice(br#","targetCalendarId":"#);
    serde_json::to_writer(&mut body, calendar_id).expect("a string serialises");
    body.push(b'}');
    body
}

impl Batch {
    fn new(seq: u64, first: &ValidChange) -> Batch {
        Batch {
            calendar_id: first.calendar_id.clone(),
            validation_mode: first.validation_mode,
            conflict_resolution: first.conflict_resolution,
            changes: Vec::new(),
            entry_count: 0,
            shared: BatchShared::new(),
            previous: None,
            seq,
            rules: BatchRules::new(first),
        }
    }

    fn accepts(&self, change: &ValidChange, max_entries: usize) -> bool {
        self.rules.accepts(change, max_entries)
    }

    fn push(&mut self, accepted: Accepted, copier: &mut EntryCopier) {
        let Accepted {
            mut change,
            msg,
            validation,
        } = accepted;
        self.rules.add(&mut change);
        self.entry_count = self.rules.entry_count();
        let entries_at = copier.span(msg.body(), &change.entries);
        self.changes.push(Held {
            capacity_minutes: u32::try_from(change.capacity_minutes).unwrap_or(u32::MAX),
            validation_us: u32::try_from(validation.as_micros()).unwrap_or(u32::MAX),
            entries_at,
            msg,
        });
    }

    /// The `POST .../schedules/import` body, byte for byte what serialising
    /// the batch's [`crate::domain::ImportPayload`] gives.
    ///
    /// A held change keeps only its delivery: the body must stay for a
    /// dead-letter copy anyway, and keeping its serialised entries as well
    /// was, at a full window of one-entry changes, a sixth of the worker's
    /// heap. Where the body already holds them byte for byte as they
    /// serialise ([`Held`]'s `entries_at`, checked when the change joined
    /// the batch), those bytes are copied. Otherwise the body is parsed
    /// again here, as the consumer parsed it (same settings, same result);
    /// an error means exactly that broke, and fails the batch rather than
    /// sending something else.
    pub fn import_body(&self, parse: &ParseSettings) -> Result<Vec<u8>, String> {
        let mut body = Vec::with_capacity(BODY_HEAD.len() + 192 * self.entry_count + 128);
        body.extend_from_slice(BODY_HEAD);
        for held in &self.changes {
            if let Some(span) = held.entries_at {
                append_span(&mut body, held.msg.body(), span);
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
            append_entries(&mut body, &change.entries);
        }
        Ok(finish_body(
            body,
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

#[derive(Default)]
struct Calendar {
    open: Option<Batch>,
    closed: VecDeque<Batch>,
    in_flight: bool,
}

impl Calendar {
    fn idle(&self) -> bool {
        self.open.is_none() && self.closed.is_empty() && !self.in_flight
    }
}

/// Why a batch stopped taking changes (the `trigger` label of
/// `csw_batches_closed_total`): a drain that closes many batches by age
/// rather than full is one whose rounds outlast `batch.max_wait_ms`.
#[derive(Clone, Copy)]
enum Trigger {
    /// `batch.max_entries` reached (or the next change would not fit).
    Full,
    /// The next change overlaps, or has another mode.
    Conflict,
    /// The oldest change waited `batch.max_wait_ms`.
    Age,
    /// The prefetch window is full with nothing in flight.
    Window,
    /// Shutdown.
    Drain,
}

impl Trigger {
    const ALL: [Trigger; 5] = [
        Trigger::Full,
        Trigger::Conflict,
        Trigger::Age,
        Trigger::Window,
        Trigger::Drain,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Trigger::Full => "full",
            Trigger::Conflict => "conflict",
            Trigger::Age => "age",
            Trigger::Window => "window",
            Trigger::Drain => "drain",
        }
    }
}

pub struct Limits {
    pub max_entries: usize,
    pub max_wait: Duration,
    pub max_concurrent: usize,
    /// The most deliveries the broker lets this worker hold (the sum of its
    /// consumers' prefetch); 0 turns the window trigger off. When the
    /// coordinator holds that many and no import is in flight or waiting,
    /// nothing can be delivered, so no batch can grow until one is sent:
    /// every open batch is sent at once instead of waiting out
    /// `batch.max_wait_ms` (the batches are the ones the timer would send,
    /// only without the stall).
    pub window: usize,
}

/// Starts an import of a batch; whoever runs it sends [`Input::Finished`]
/// when the batch is settled.
pub type Dispatch = Box<dyn FnMut(Batch) + Send>;

pub struct Coordinator {
    limits: Limits,
    dispatch: Dispatch,
    calendars: StrMap<Calendar>,
    /// Calendars with a closed batch and nothing in flight, oldest first.
    ready: VecDeque<String>,
    ready_set: StrSet,
    /// (deadline, calendar, batch seq) in opening order, hence deadline order.
    ages: VecDeque<(Instant, String, u64)>,
    /// changeId → the batch holding it, while open, queued or in flight.
    owners: HashMap<IdKey, Arc<BatchShared>, KeyIsHash>,
    /// changeIds whose import settled lately: a redelivered copy of one
    /// (its ack was lost with a connection) is acked without importing it
    /// again, which could reorder the calendar.
    recent: Recent,
    ids: IdHasher,
    /// Per calendar, its last settled batch while that batch's acks may
    /// still be coalescing: the calendar's next import acks them first.
    previous: StrMap<AckedThrough>,
    in_flight: usize,
    /// Deliveries in batches (open, queued or in flight), repeats included.
    held: usize,
    next_seq: u64,
    draining: bool,
    /// Looked up once: `counter!` finds its series by hashing the name on
    /// every call, which showed in the per-delivery profile.
    accepted_total: metrics::Counter,
    /// `csw_batches_closed_total` by [`Trigger`].
    closed: [metrics::Counter; 5],
    /// `csw_changes_joined_waiting_total`.
    late_joins: metrics::Counter,
    /// Finds a joining change's entries in its body ([`Held`]).
    copier: EntryCopier,
}

/// Calendars whose last batch's acks may still be out, past which those
/// whose acks went out are forgotten (the acks go within a few seconds).
const PREVIOUS_PRUNE_AT: usize = 1024;

/// How many settled changeIds to remember for redeliveries.
const RECENT_CAPACITY: usize = 200_000;

/// A changeId as a 128-bit keyed hash: 16 bytes per remembered id instead of
/// a string (twice), which matters at 200,000 remembered ids. Two ids share
/// a key with probability about n² / 2^129 (with random keys per process), so
/// the exactness of the string comparison is kept for all practical purposes.
/// Two `u64`s rather than a `u128`: aligned to 8, an owner entry (key and
/// batch) takes 24 bytes instead of 32.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct IdKey(u64, u64);

impl std::hash::Hash for IdKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.1);
    }
}

/// The changeIds settled lately, in two generations of `RECENT_CAPACITY / 2`
/// (so the last half to all of `RECENT_CAPACITY` are remembered). Every
/// settled change is appended, but only redelivered deliveries are looked
/// up, so a generation is a plain array, sorted only when a lookup finds
/// more than [`UNSORTED_SCAN_MAX`] keys appended since its last sort: 16
/// bytes an id, allocated once. (Two hash sets took up to 5.5 MB at the
/// benchmark's peak, tables and a resize's copy, where these take 3.2.)
#[derive(Default)]
struct Recent {
    current: Generation,
    old: Generation,
}

#[derive(Default)]
struct Generation {
    keys: Vec<IdKey>,
    /// `keys[..sorted]` is in order.
    sorted: usize,
}

/// Keys appended since the last sort that a lookup scans one by one (64 KB).
const UNSORTED_SCAN_MAX: usize = 4096;

impl Generation {
    fn contains(&mut self, key: IdKey) -> bool {
        if self.keys.len() - self.sorted > UNSORTED_SCAN_MAX {
            self.keys.sort_unstable();
            self.sorted = self.keys.len();
        }
        self.keys[..self.sorted].binary_search(&key).is_ok()
            || self.keys[self.sorted..].contains(&key)
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.sorted = 0;
    }
}

impl Recent {
    fn insert(&mut self, key: IdKey) {
        let generation = RECENT_CAPACITY / 2;
        if self.current.keys.capacity() == 0 {
            self.current.keys.reserve_exact(generation);
        }
        self.current.keys.push(key);
        if self.current.keys.len() >= generation {
            // The oldest generation is forgotten; its array takes the next.
            std::mem::swap(&mut self.current, &mut self.old);
            self.current.clear();
        }
    }

    fn contains(&mut self, key: IdKey) -> bool {
        self.current.contains(key) || self.old.contains(key)
    }
}

/// An [`IdKey`] is already a keyed hash: maps of them use its low 64 bits
/// as they are rather than hashing it again (two map operations per change
/// showed in the profile).
#[derive(Clone, Copy, Default)]
struct KeyIsHash;

impl BuildHasher for KeyIsHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
    /// Only [`IdKey`]s are hashed here; anything else still spreads.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[derive(Default)]
struct IdHasher(RandomState, RandomState);

impl IdHasher {
    fn key(&self, id: &str) -> IdKey {
        IdKey(self.0.hash_one(id), self.1.hash_one(id))
    }
}

/// Where the consumer hands valid changes over: straight into the batches,
/// under a short lock, on the consumer's own task. (A queue of parsed
/// changes in between held, at the benchmark's peak, most of the prefetch
/// window in its largest form; a batch keeps a change as its serialised
/// entries and its delivery.)
#[derive(Clone)]
pub struct Intake {
    state: Arc<parking_lot::Mutex<Coordinator>>,
    /// Wakes the coordinator task when a batch opens with no other timer set.
    opened: Arc<Notify>,
}

impl Intake {
    pub fn add(&self, accepted: Accepted) {
        let mut c = self.state.lock();
        let timers_before = c.ages.len();
        c.add(accepted);
        c.send_what_can_go();
        let first_timer = timers_before == 0 && !c.ages.is_empty();
        drop(c);
        if first_timer {
            self.opened.notify_one();
        }
    }
}

impl Coordinator {
    pub fn new(limits: Limits, dispatch: impl FnMut(Batch) + Send + 'static) -> Self {
        Coordinator {
            limits,
            dispatch: Box::new(dispatch),
            calendars: StrMap::default(),
            ready: VecDeque::new(),
            ready_set: StrSet::default(),
            ages: VecDeque::new(),
            owners: HashMap::default(),
            recent: Recent::default(),
            ids: IdHasher::default(),
            previous: StrMap::default(),
            in_flight: 0,
            held: 0,
            next_seq: 0,
            draining: false,
            accepted_total: metrics::counter!("csw_changes_accepted_total"),
            closed: Trigger::ALL
                .map(|t| metrics::counter!("csw_batches_closed_total", "trigger" => t.as_str())),
            late_joins: metrics::counter!("csw_changes_joined_waiting_total"),
            copier: EntryCopier::default(),
        }
    }

    /// Splits the coordinator into the consumer's [`Intake`] and the task
    /// that runs timers, finished imports and draining: it returns when
    /// `drain` is cancelled and every batch has been imported and settled.
    pub fn start(
        self,
        rx: mpsc::UnboundedReceiver<Input>,
        drain: CancellationToken,
    ) -> (Intake, impl Future<Output = ()> + Send + 'static) {
        let intake = Intake {
            state: Arc::new(parking_lot::Mutex::new(self)),
            opened: Arc::new(Notify::new()),
        };
        (intake.clone(), Self::run(intake, rx, drain))
    }

    async fn run(intake: Intake, mut rx: mpsc::UnboundedReceiver<Input>, drain: CancellationToken) {
        loop {
            let (draining, next_age) = {
                let c = intake.state.lock();
                if c.draining && c.is_empty() && rx.is_empty() {
                    return;
                }
                (c.draining, c.ages.front().map(|(at, _, _)| *at))
            };
            tokio::select! {
                biased;
                input = rx.recv() => match input {
                    Some(input) => intake.state.lock().handle(input),
                    None => return,
                },
                _ = drain.cancelled(), if !draining => {
                    intake.state.lock().draining = true;
                }
                // A batch opened with no timer running: take its deadline.
                _ = intake.opened.notified() => {}
                _ = sleep_until_opt(next_age) => intake.state.lock().close_aged(Instant::now()),
            }
            intake.state.lock().send_what_can_go();
        }
    }

    /// Closes every open batch when draining or when the window is stalled,
    /// then starts imports for ready batches as slots allow.
    fn send_what_can_go(&mut self) {
        if self.draining {
            self.close_all_open(Trigger::Drain);
        } else if self.window_stalled() {
            self.close_all_open(Trigger::Window);
        }
        self.dispatch_ready();
    }

    /// The broker's window is full of deliveries held here and nothing is
    /// on its way to free it: waiting would only delay the same batches.
    /// (A finished import not yet handled still counts in `in_flight`.)
    fn window_stalled(&self) -> bool {
        self.limits.window > 0
            && self.held >= self.limits.window
            && self.in_flight == 0
            && self.ready.is_empty()
            && self.calendars.values().any(|c| c.open.is_some())
    }

    fn is_empty(&self) -> bool {
        self.in_flight == 0 && self.calendars.values().all(Calendar::idle)
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Finished {
                calendar_id,
                change_ids,
                deliveries,
                acked,
            } => {
                let settled = acked.is_some();
                if let Some(acked) = acked.filter(|a| !a.done()) {
                    if self.previous.len() >= PREVIOUS_PRUNE_AT {
                        self.previous.retain(|_, a| !a.done());
                    }
                    match self.previous.get_mut(&calendar_id) {
                        // Redelivered copies settled meanwhile (`add`) stay.
                        Some(previous) => previous.merge(acked),
                        None => {
                            self.previous.insert(calendar_id.clone(), acked);
                        }
                    }
                }
                self.held = self.held.saturating_sub(deliveries);
                for id in &change_ids {
                    let key = self.ids.key(id);
                    self.owners.remove(&key);
                    if settled {
                        self.recent.insert(key);
                    }
                }
                self.in_flight -= 1;
                metrics::gauge!("csw_imports_in_flight").set(self.in_flight as f64);
                if let Some(cal) = self.calendars.get_mut(&calendar_id) {
                    cal.in_flight = false;
                    if !cal.closed.is_empty() {
                        self.mark_ready(&calendar_id);
                    } else if cal.idle() {
                        self.calendars.remove(&calendar_id);
                    }
                }
            }
        }
    }

    fn add(&mut self, accepted: Accepted) {
        self.accepted_total.increment(1);
        let key = self.ids.key(&accepted.change.change_id);
        if accepted.msg.redelivered && self.recent.contains(key) {
            metrics::counter!("csw_changes_redelivered_settled_total").increment(1);
            tracing::info!(change_id = %accepted.change.change_id, "redelivered change already imported and settled; acking it without importing again");
            // The calendar's next import makes sure this ack reached the
            // broker first, as it does for a previous batch's.
            self.previous
                .entry(accepted.change.calendar_id.clone())
                .or_default()
                .include(&accepted.msg.acks, accepted.msg.tag);
            tokio::spawn(async move {
                super::ack_all([&accepted.msg]).await;
            });
            return;
        }
        // A repeated changeId rides along with the first one's batch.
        let accepted = match self.owners.get(&key) {
            Some(owner) => {
                let Accepted {
                    change,
                    msg,
                    validation,
                } = accepted;
                match owner.attach(msg) {
                    None => {
                        self.held += 1;
                        metrics::counter!("csw_changes_duplicate_total").increment(1);
                        tracing::debug!(change_id = %change.change_id, "repeated changeId attached to its first delivery's batch");
                        return;
                    }
                    Some(msg) => Accepted {
                        change,
                        msg,
                        validation,
                    },
                }
            }
            None => accepted,
        };
        self.held += 1;
        let calendar_id = accepted.change.calendar_id.clone();
        let max = self.limits.max_entries;
        if !self.calendars.contains_key(&calendar_id) {
            self.calendars
                .insert(calendar_id.clone(), Calendar::default());
        }
        let cal = self.calendars.get_mut(&calendar_id).expect("just ensured");
        // The calendar's newest batch, closed (by age, say) but still
        // waiting for an import slot, takes a later change that fits: the
        // batch goes no later for it, the change no later than in a batch
        // of its own (which would wait behind this one), and that is one
        // import fewer. It also puts interleaved calendars back in step
        // after a round that ran past `batch.max_wait_ms`: deliveries that
        // arrive while the round's batches wait for slots join them instead
        // of opening next round's batches early.
        if cal.open.is_none()
            && let Some(waiting) = cal.closed.back_mut()
            && waiting.accepts(&accepted.change, max)
        {
            self.owners.insert(key, waiting.shared.clone());
            waiting.push(accepted, &mut self.copier);
            self.late_joins.increment(1);
            return;
        }
        let mut closed_one = false;
        if let Some(open) = cal.open.as_ref()
            && !open.accepts(&accepted.change, max)
        {
            // Overlap, another mode, or full: close it so order holds.
            let full = open.entry_count + accepted.change.entries.len() > max;
            self.closed[if full {
                Trigger::Full
            } else {
                Trigger::Conflict
            } as usize]
                .increment(1);
            cal.closed.push_back(cal.open.take().expect("checked"));
            closed_one = true;
        }
        if cal.open.is_none() {
            let seq = self.next_seq;
            self.next_seq += 1;
            cal.open = Some(Batch::new(seq, &accepted.change));
            self.ages.push_back((
                Instant::now() + self.limits.max_wait,
                calendar_id.clone(),
                seq,
            ));
        }
        let open = cal.open.as_mut().expect("just ensured");
        self.owners.insert(key, open.shared.clone());
        open.push(accepted, &mut self.copier);
        if open.entry_count >= max {
            self.closed[Trigger::Full as usize].increment(1);
            cal.closed.push_back(cal.open.take().expect("present"));
            closed_one = true;
        }
        if closed_one && !cal.in_flight {
            self.mark_ready(&calendar_id);
        }
    }

    fn close_aged(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.ages.front() {
            if *at > now {
                break;
            }
            let (_, calendar_id, seq) = self.ages.pop_front().expect("peeked");
            self.close_open(&calendar_id, Some(seq), Trigger::Age);
        }
    }

    fn close_all_open(&mut self, trigger: Trigger) {
        let ids: Vec<String> = self
            .calendars
            .iter()
            .filter(|(_, c)| c.open.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            self.close_open(&id, None, trigger);
        }
        self.ages.clear();
    }

    /// Closes the calendar's open batch (only if it is batch `seq`, when given).
    fn close_open(&mut self, calendar_id: &str, seq: Option<u64>, trigger: Trigger) {
        let Some(cal) = self.calendars.get_mut(calendar_id) else {
            return;
        };
        if cal
            .open
            .as_ref()
            .is_some_and(|b| seq.is_none_or(|s| s == b.seq))
        {
            self.closed[trigger as usize].increment(1);
            cal.closed.push_back(cal.open.take().expect("checked"));
            if !cal.in_flight {
                self.mark_ready(calendar_id);
            }
        }
    }

    fn mark_ready(&mut self, calendar_id: &str) {
        if self.ready_set.insert(calendar_id.to_owned()) {
            self.ready.push_back(calendar_id.to_owned());
        }
    }

    fn dispatch_ready(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        while self.in_flight < self.limits.max_concurrent {
            let Some(calendar_id) = self.ready.pop_front() else {
                break;
            };
            self.ready_set.remove(&calendar_id);
            let Some(cal) = self.calendars.get_mut(&calendar_id) else {
                continue;
            };
            if cal.in_flight {
                continue;
            }
            let Some(mut batch) = cal.closed.pop_front() else {
                continue;
            };
            batch.previous = self.previous.remove(&calendar_id);
            cal.in_flight = true;
            self.in_flight += 1;
            metrics::gauge!("csw_imports_in_flight").set(self.in_flight as f64);
            metrics::histogram!("csw_batch_entries").record(batch.entry_count as f64);
            (self.dispatch)(batch);
        }
        metrics::gauge!("csw_imports_in_flight").set(self.in_flight as f64);
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AvailabilityOverride, Break, ImportPayload, OverrideType};

    fn nth_key(i: u64) -> IdKey {
        // Spread like hashes, so sorting reorders them.
        IdKey(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i)
    }

    #[test]
    fn recent_remembers_the_last_half_to_all_of_its_capacity() {
        let mut recent = Recent::default();
        let n = RECENT_CAPACITY as u64;
        // A few, looked up from the unsorted tail.
        for i in 0..10 {
            recent.insert(nth_key(i));
        }
        assert!((0..10).all(|i| recent.contains(nth_key(i))));
        assert!(!recent.contains(nth_key(10)));
        // Past the scan limit a lookup sorts; keys appended after that are
        // found in the new tail, and the sorted ones still by search.
        for i in 10..(UNSORTED_SCAN_MAX as u64 * 3) {
            recent.insert(nth_key(i));
        }
        assert!(recent.contains(nth_key(5)));
        assert_eq!(recent.current.sorted, recent.current.keys.len());
        for i in (UNSORTED_SCAN_MAX as u64 * 3)..(UNSORTED_SCAN_MAX as u64 * 3 + 100) {
            recent.insert(nth_key(i));
        }
        assert!(recent.contains(nth_key(UNSORTED_SCAN_MAX as u64 * 3 + 99)));
        assert!(recent.contains(nth_key(7)));
        assert!(!recent.contains(nth_key(n)));
        // A full generation moves to the old one: still remembered.
        for i in (UNSORTED_SCAN_MAX as u64 * 3 + 100)..n / 2 + 1 {
            recent.insert(nth_key(i));
        }
        assert!(recent.contains(nth_key(0)));
        assert!(recent.contains(nth_key(n / 2)));
        // A second full generation forgets the first, and the arrays are
        // reused rather than grown.
        let capacity = recent.old.keys.capacity();
        for i in n / 2 + 1..n {
            recent.insert(nth_key(i));
        }
        assert!(!recent.contains(nth_key(0)));
        assert!(!recent.contains(nth_key(n / 2 - 1)));
        assert!(recent.contains(nth_key(n / 2)));
        assert!(recent.contains(nth_key(n - 1)));
        assert_eq!(recent.current.keys.capacity(), capacity);
        assert!(capacity <= RECENT_CAPACITY / 2 + 16, "{capacity}");
    }

    fn entry(agent: &str, with_extras: bool) -> ScheduleEntry {
        ScheduleEntry {
            agent_id: agent.into(),
            start_date_time: "2024-01-15T08:00:00.000+01:00".into(),
            end_date_time: "2024-01-15T16:00:00Z".into(),
            breaks: if with_extras {
                vec![Break {
                    start_offset_minutes: 240,
                    duration_minutes: 30,
                }]
            } else {
                vec![]
            },
            availability_overrides: if with_extras {
                vec![AvailabilityOverride {
                    kind: OverrideType::Unavailable,
                    reason: Some("TRAINING \"q\"".into()),
                    start: None,
                    end: None,
                }]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn the_incremental_body_is_the_serialised_payload() {
        let changes = [
            vec![entry("a", true)],
            vec![entry("b", false), entry("c\u{e9}", true)],
        ];
        let mut body = BODY_HEAD.to_vec();
        for c in &changes {
            append_entries(&mut body, c);
        }
        let body = finish_body(
            body,
            ValidationMode::Lenient,
            ConflictResolution::AutoResolve,
            "cal-\"1\"",
        );
        let payload = ImportPayload {
            schedule_entries: changes.concat(),
            validation_mode: ValidationMode::Lenient,
            conflict_resolution: ConflictResolution::AutoResolve,
            target_calendar_id: "cal-\"1\"".into(),
        };
        assert_eq!(
            String::from_utf8(body).unwrap(),
            String::from_utf8(serde_json::to_vec(&payload).unwrap()).unwrap()
        );
    }

    /// Entries copied from a body build the same import body as entries
    /// serialised, and are copied only when the body holds them exactly so.
    #[test]
    fn entries_are_copied_from_bodies_that_hold_them_as_serialised() {
        let limits = crate::domain::Limits::default();
        let meta = crate::domain::MessageMeta::default();
        let parse = |body: &str| {
            crate::domain::parse_change(body.as_bytes(), &meta, &limits, ValidationMode::Strict)
                .unwrap_or_else(|r| panic!("{body}: {}", r.summary()))
        };
        let e1 = r#"{"agentId":"a","startDateTime":"2024-01-15T08:00:00Z","endDateTime":"2024-01-15T16:00:00Z","breaks":[{"startOffsetMinutes":240,"durationMinutes":30}]}"#;
        let e2 = r#"{"agentId":"b\u00e9","startDateTime":"2024-01-15T08:00:00+01:00","endDateTime":"2024-01-15T09:00:00+01:00","availabilityOverrides":[{"type":"UNAVAILABLE","reason":"TRAINING","start":"2024-01-15T08:00:00+01:00","end":"2024-01-15T08:30:00+01:00"}]}"#;
        let wrap = |entries: &str| {
            format!(r#"{{"changeId":"c","calendarId":"cal","entries":[{entries}]}}"#)
        };
        // (body, entries copied?)
        let cases = [
            (wrap(e1), true),
            // The escaped name serialises as "bé": parsed again.
            (wrap(&format!("{e1},{e2}")), false),
            (
                wrap(&format!("{e1},{}", e2.replace("b\\u00e9", "b\u{e9}"))),
                true,
            ),
            // Keys sorted (as a serde_json::Value writes them), spaces, an
            // unknown field, an empty list: parsed again.
            (
                wrap(
                    r#"{"agentId":"a","endDateTime":"2024-01-15T16:00:00Z","startDateTime":"2024-01-15T08:00:00Z"}"#,
                ),
                false,
            ),
            (
                wrap(
                    r#"{"agentId": "a", "startDateTime": "2024-01-15T08:00:00Z", "endDateTime": "2024-01-15T16:00:00Z"}"#,
                ),
                false,
            ),
            (
                wrap(
                    r#"{"agentId":"a","startDateTime":"2024-01-15T08:00:00Z","endDateTime":"2024-01-15T16:00:00Z","note":"x"}"#,
                ),
                false,
            ),
            (
                wrap(
                    r#"{"agentId":"a","startDateTime":"2024-01-15T08:00:00Z","endDateTime":"2024-01-15T16:00:00Z","breaks":[]}"#,
                ),
                false,
            ),
        ];
        let mut scratch = Vec::new();
        let (mut copied, mut serialised) = (BODY_HEAD.to_vec(), BODY_HEAD.to_vec());
        for (body, expect_copy) in &cases {
            let change = parse(body);
            let span = entries_span(body.as_bytes(), &change.entries, &mut scratch);
            assert_eq!(span.is_some(), *expect_copy, "{body}");
            match span {
                Some(span) => append_span(&mut copied, body.as_bytes(), span),
                None => append_entries(&mut copied, &change.entries),
            }
            append_entries(&mut serialised, &change.entries);
        }
        assert_eq!(
            String::from_utf8(copied).unwrap(),
            String::from_utf8(serialised).unwrap()
        );
    }

    #[test]
    fn the_copier_stops_looking_where_entries_are_never_found_and_tries_again_now_and_then() {
        let entries = vec![entry("a", false)];
        let found = format!(
            r#"{{"entries":[{}]}}"#,
            String::from_utf8(serde_json::to_vec(&entries[0]).unwrap()).unwrap()
        );
        let mut c = EntryCopier::default();
        for _ in 0..EntryCopier::GIVE_UP_AFTER {
            assert!(c.span(b"{}", &entries).is_none());
        }
        // Given up: even a body that holds them is not searched...
        for _ in 1..EntryCopier::RETRY_EVERY {
            assert!(c.span(found.as_bytes(), &entries).is_none());
        }
        // ...but for one in RETRY_EVERY, and a find starts over.
        assert!(c.span(found.as_bytes(), &entries).is_some());
        assert!(c.span(found.as_bytes(), &entries).is_some());
        assert!(c.span(b"{}", &entries).is_none());
        assert!(c.span(found.as_bytes(), &entries).is_some());
    }
}
