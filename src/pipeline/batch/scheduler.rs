//! The per-calendar batcher and import scheduler (docs/contract.md §5).
//!
//! All batching state is one [`Scheduler`] behind a short lock: the source
//! adds each valid change on its own task ([`Batcher`]), with no queue of
//! parsed changes in between, and the scheduler task handles timers, ended
//! imports and draining. Per calendar there is at most one open batch
//! (still taking changes), a queue of closed batches (in delivery order),
//! and at most one import in flight; overall at most
//! `imports.max_concurrent` imports are in flight. A closed batch goes to
//! the import stage ([`ImportStage`]) when its calendar and a slot are free.

use crate::telemetry::metrics as metric;
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};

use super::{
    StrMap, StrSet,
    changes::{Accepted, Batch, Repeats},
    dedup::{IdHash, IdHasher, PrehashedBuild, SettledIds},
};
use crate::{
    amqp::AckBarriers,
    cxone::import_body::EntryLocator,
    shutdown::{Phase, Shutdown},
};

/// An import ended: its calendar is free again. What the import stage sends
/// back to the scheduler task.
pub struct ImportEnded {
    pub calendar_id: String,
    pub change_ids: Vec<String>,
    /// How many deliveries the batch held, repeats of a changeId included.
    pub deliveries: usize,
    /// Its event was published and its deliveries acked (or on their way:
    /// the calendar's next import makes sure of it first); `false` when it
    /// was abandoned, unacked.
    pub settled: bool,
}

/// The stage after batching: imports a batch, then sends [`ImportEnded`].
pub trait ImportStage: Send {
    /// Starts importing `batch`; must not block.
    fn start(&mut self, batch: Batch);
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
/// rather than full is one whose imports take longer than
/// `batch.max_wait_ms` to free their calendars.
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
    /// The window: the most deliveries the broker lets this worker hold (the
    /// sum of its consumers' prefetch); 0 turns the window trigger off. When the
    /// scheduler holds that many and no import is in flight or waiting,
    /// nothing can be delivered, so no batch can grow until one is sent:
    /// every open batch is sent at once instead of waiting out
    /// `batch.max_wait_ms` (the batches are the ones the timer would send,
    /// only without the stall).
    pub window: usize,
}

/// The batching state: open and closed batches per calendar, the ready
/// calendars, batch deadlines, and which changeIds are batched or settled.
pub struct Scheduler {
    limits: Limits,
    imports: Box<dyn ImportStage>,
    calendars: StrMap<Calendar>,
    /// Calendars with a closed batch and nothing in flight, oldest first.
    ready: VecDeque<String>,
    ready_set: StrSet,
    /// (deadline, calendar, batch seq) in opening order, hence deadline order.
    ages: VecDeque<(Instant, String, u64)>,
    /// changeId → the batch holding it, while open, queued or in flight.
    owners: HashMap<IdHash, Arc<Repeats>, PrehashedBuild>,
    /// changeIds whose import settled lately: a redelivered copy of one
    /// (its ack was lost with a connection) is acked without importing it
    /// again, which could reorder the calendar.
    settled_ids: SettledIds,
    ids: IdHasher,
    /// Where a redelivered copy of a settled change is acked.
    barriers: AckBarriers,
    in_flight: usize,
    /// Deliveries in batches (open, queued or in flight), repeats included.
    held: usize,
    next_seq: u64,
    draining: bool,
    /// Looked up once: `counter!` finds its series by hashing the name on
    /// every call, and this one counts every delivery.
    accepted_total: metrics::Counter,
    /// `csw_batches_closed_total` by [`Trigger`].
    closed: [metrics::Counter; 5],
    /// `csw_changes_joined_waiting_total`.
    late_joins: metrics::Counter,
    /// Finds a joining change's entries in its body ([`BatchedChange`]).
    locator: EntryLocator,
}

/// Where the source hands valid changes over: straight into the batches,
/// under a short lock, on the source's own task (a queue of parsed changes
/// in between would hold much of the window in their largest form).
#[derive(Clone)]
pub struct Batcher {
    state: Arc<parking_lot::Mutex<Scheduler>>,
    /// Wakes the scheduler task when a batch opens with no other timer set.
    opened: Arc<Notify>,
}

impl Batcher {
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

impl Scheduler {
    pub fn new(limits: Limits, imports: impl ImportStage + 'static, barriers: AckBarriers) -> Self {
        Scheduler {
            limits,
            imports: Box::new(imports),
            calendars: StrMap::default(),
            ready: VecDeque::new(),
            ready_set: StrSet::default(),
            ages: VecDeque::new(),
            owners: HashMap::default(),
            settled_ids: SettledIds::default(),
            ids: IdHasher::default(),
            barriers,
            in_flight: 0,
            held: 0,
            next_seq: 0,
            draining: false,
            accepted_total: metrics::counter!(metric::CHANGES_ACCEPTED_TOTAL),
            closed: Trigger::ALL
                .map(|t| metrics::counter!(metric::BATCHES_CLOSED_TOTAL, "trigger" => t.as_str())),
            late_joins: metrics::counter!(metric::CHANGES_JOINED_WAITING_TOTAL),
            locator: EntryLocator::default(),
        }
    }

    /// Splits the scheduler into the source's [`Batcher`] and the task
    /// that runs timers, ended imports and draining: it returns when the
    /// shutdown drains the batches and every batch has been imported and settled.
    pub fn start(
        self,
        rx: mpsc::UnboundedReceiver<ImportEnded>,
        shutdown: Shutdown,
    ) -> (Batcher, impl Future<Output = ()> + Send + 'static) {
        let batcher = Batcher {
            state: Arc::new(parking_lot::Mutex::new(self)),
            opened: Arc::new(Notify::new()),
        };
        (batcher.clone(), Self::run(batcher, rx, shutdown))
    }

    async fn run(
        batcher: Batcher,
        mut rx: mpsc::UnboundedReceiver<ImportEnded>,
        shutdown: Shutdown,
    ) {
        loop {
            let (draining, next_age) = {
                let c = batcher.state.lock();
                if c.draining && c.is_empty() && rx.is_empty() {
                    return;
                }
                (c.draining, c.ages.front().map(|(at, _, _)| *at))
            };
            tokio::select! {
                biased;
                ended = rx.recv() => match ended {
                    Some(ended) => batcher.state.lock().import_ended(ended),
                    None => return,
                },
                _ = shutdown.entered(Phase::DrainBatches), if !draining => {
                    batcher.state.lock().draining = true;
                }
                // A batch opened with no timer running: take its deadline.
                _ = batcher.opened.notified() => {}
                _ = sleep_until_opt(next_age) => batcher.state.lock().close_aged(Instant::now()),
            }
            batcher.state.lock().send_what_can_go();
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

    fn import_ended(&mut self, ended: ImportEnded) {
        let ImportEnded {
            calendar_id,
            change_ids,
            deliveries,
            settled,
        } = ended;
        self.held = self.held.saturating_sub(deliveries);
        for id in &change_ids {
            let key = self.ids.key(id);
            self.owners.remove(&key);
            if settled {
                self.settled_ids.insert(key);
            }
        }
        self.in_flight -= 1;
        metrics::gauge!(metric::IMPORTS_IN_FLIGHT).set(self.in_flight as f64);
        if let Some(cal) = self.calendars.get_mut(&calendar_id) {
            cal.in_flight = false;
            if !cal.closed.is_empty() {
                self.mark_ready(&calendar_id);
            } else if cal.idle() {
                self.calendars.remove(&calendar_id);
            }
        }
    }

    fn add(&mut self, accepted: Accepted) {
        self.accepted_total.increment(1);
        let key = self.ids.key(&accepted.change.change_id);
        if accepted.msg.redelivered && self.settled_ids.contains(key) {
            metrics::counter!(metric::CHANGES_REDELIVERED_SETTLED_TOTAL).increment(1);
            tracing::info!(change_id = %accepted.change.change_id, "redelivered change already imported and settled; acking it without importing again");
            self.barriers
                .ack_settled_copy(&accepted.change.calendar_id, accepted.msg);
            return;
        }
        let Some(accepted) = self.attach_repeat(key, accepted) else {
            return;
        };
        self.held += 1;
        self.put_in_batch(key, accepted);
    }

    /// A repeated changeId rides along with the first one's batch; gives the
    /// change back when its changeId is in no batch (or that one settled).
    fn attach_repeat(&mut self, key: IdHash, accepted: Accepted) -> Option<Accepted> {
        let Some(owner) = self.owners.get(&key) else {
            return Some(accepted);
        };
        let Accepted {
            change,
            msg,
            validation,
        } = accepted;
        match owner.attach(msg) {
            None => {
                self.held += 1;
                metrics::counter!(metric::CHANGES_DUPLICATE_TOTAL).increment(1);
                tracing::debug!(change_id = %change.change_id, "repeated changeId attached to its first delivery's batch");
                None
            }
            Some(msg) => Some(Accepted {
                change,
                msg,
                validation,
            }),
        }
    }

    /// Adds a change to its calendar's batches: the newest closed one still
    /// waiting, else the open one, closing and opening batches as needed.
    fn put_in_batch(&mut self, key: IdHash, accepted: Accepted) {
        let calendar_id = accepted.change.calendar_id.clone();
        let max = self.limits.max_entries;
        let cal = self.calendars.entry(calendar_id.clone()).or_default();
        // The calendar's newest batch, closed (by age, say) but still
        // waiting for an import slot, takes a later change that fits: the
        // batch goes no later for it, the change no later than in a batch
        // of its own (which would wait behind this one), and that is one
        // import fewer. It also puts interleaved calendars back in step
        // after imports that took longer than `batch.max_wait_ms`:
        // deliveries that arrive while those batches wait for slots join
        // them instead of opening new batches early.
        if cal.open.is_none()
            && let Some(waiting) = cal.closed.back_mut()
            && waiting.accepts(&accepted.change, max)
        {
            self.owners.insert(key, waiting.repeats.clone());
            waiting.push(accepted, &mut self.locator);
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
        self.owners.insert(key, open.repeats.clone());
        open.push(accepted, &mut self.locator);
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
            let Some(batch) = cal.closed.pop_front() else {
                continue;
            };
            cal.in_flight = true;
            self.in_flight += 1;
            metrics::gauge!(metric::IMPORTS_IN_FLIGHT).set(self.in_flight as f64);
            metrics::histogram!(metric::BATCH_ENTRIES).record(batch.entry_count as f64);
            self.imports.start(batch);
        }
        metrics::gauge!(metric::IMPORTS_IN_FLIGHT).set(self.in_flight as f64);
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
