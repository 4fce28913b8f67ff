//! Scenarios under load: a deterministic workload, its start and end, and
//! the exact verdict every scenario shares.
//!
//! The verdict (see [`verdict`]):
//! - every valid change has a `completed` event, or (when the scenario allows
//!   FAILED jobs) a `failed` event and a dead-letter copy instead;
//! - every invalid change has a `rejected` event with the expected code and a
//!   dead-letter copy with the same `x-error-code`;
//! - every dead letter carries `x-error-code` (none was dropped by the
//!   broker's delivery limit);
//! - the simulator's roster of every calendar equals [`RosterModel`] applied,
//!   in publish order, to the changes that completed (exact, not approximate);
//! - duplicates (re-imports caused by redelivery) are counted, not failed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use cxone_schedule_worker::{
    config::Settings,
    sim::{SimConfig, SimServer},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    at,
    broker::{queue_depth, queue_state},
    collector::{Collector, Seen},
    fast_sim,
    launcher::WorkerProc,
    publisher::Publisher,
    roster::{RosterModel, actual},
    settings, sim,
};

/// What kind of invalid change a planned change is, and the code it must get.
pub const INVALID_KINDS: [(&str, &str); 4] = [
    ("backwards", "END_NOT_AFTER_START"),
    ("overlap", "OVERLAPPING_SHIFTS"),
    ("no-agent", "MISSING_FIELD"),
    ("bad-date", "INVALID_DATETIME"),
];

/// What a scenario under load starts from: a simulator whose jobs take
/// 50 ms, settings named after the scenario with batches of at most 50
/// changes (and `extra`), the event collector and a publisher.
pub struct Scenario {
    pub sim: SimServer,
    pub settings: Settings,
    pub collector: Collector,
    pub publisher: Publisher,
}

impl Scenario {
    pub async fn start(name: &str, extra: &[(&str, &str)]) -> Scenario {
        let sim = sim(SimConfig {
            job_base_ms: 50,
            ..fast_sim()
        })
        .await;
        let mut env = vec![("CSW__BATCH__MAX_ENTRIES", "50")];
        env.extend_from_slice(extra);
        let settings = settings(name, &sim.base_url(), &env);
        let collector = Collector::start(&settings).await;
        let publisher = Publisher::new(&settings).await;
        Scenario {
            sim,
            settings,
            collector,
            publisher,
        }
    }
}

/// The end of a run without injected failures: every change settled and
/// the inbound queue drained, then SIGTERM (exit 0, nothing left in the
/// queue) and the exact verdict.
pub async fn stop_and_judge(
    mut worker: WorkerProc,
    collector: &Collector,
    plan: &[Planned],
    settings: &Settings,
    sim: &SimServer,
) -> Report {
    wait_settled_and_drained(collector, plan, &settings.amqp.inbound_queue, false, SETTLE).await;
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(40)).await.unwrap();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    assert_eq!(queue_state(&settings.amqp.inbound_queue).await.0, 0);
    verdict(plan, &collector.seen.lock().unwrap(), sim, false)
}

/// How long a scenario may take to settle; normally well under a minute.
pub const SETTLE: Duration = Duration::from_secs(180);

/// One change of a workload, in publish order.
#[derive(Clone, Debug)]
pub struct Planned {
    pub id: String,
    pub calendar: String,
    pub body: Vec<u8>,
    /// `None` for a valid change, else the rejection code it must get.
    pub rejection: Option<&'static str>,
    /// `(agent, start, end)` of a valid change, for the roster model.
    pub entries: Vec<(String, String, String)>,
}

/// `n` changes over `calendars` calendars, about one in `invalid_every` invalid.
pub fn workload(seed: u64, n: usize, calendars: usize, invalid_every: usize) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let calendar = format!("cal-{:03}", rng.random_range(0..calendars));
        let id = format!("chg-{seed}-{i:05}");
        let count = rng.random_range(1..=3usize);
        let mut entries = Vec::new();
        // Distinct agents within a change so that it is valid; collisions
        // across changes (AUTO_RESOLVE's work) are frequent: 6 agents, 3 days.
        let first = rng.random_range(0..6usize);
        for k in 0..count {
            let agent = format!("agent-{}", (first + k * 2) % 6);
            let day = rng.random_range(15..18);
            let start = rng.random_range(0..16);
            let len = rng.random_range(1..9);
            entries.push((agent, at(day, start), at(day, start + len)));
        }
        let invalid = invalid_every > 0 && i % invalid_every == invalid_every / 2;
        let mut rejection = None;
        let mut json_entries: Vec<Value> = entries
            .iter()
            .map(|(a, s, e)| json!({"agentId": a, "startDateTime": s, "endDateTime": e}))
            .collect();
        if invalid {
            let (kind, code) = INVALID_KINDS[(i / invalid_every) % INVALID_KINDS.len()];
            rejection = Some(code);
            match kind {
                "backwards" => {
                    let e = &mut json_entries[0];
                    let (s, end) = (e["startDateTime"].clone(), e["endDateTime"].clone());
                    e["startDateTime"] = end;
                    e["endDateTime"] = s;
                }
                "overlap" => {
                    let dup = json_entries[0].clone();
                    json_entries.push(dup);
                }
                "no-agent" => {
                    json_entries[0].as_object_mut().unwrap().remove("agentId");
                }
                _ => json_entries[0]["endDateTime"] = json!("2024-02-30T08:00:00Z"),
            }
            entries.clear();
        }
        let body = serde_json::to_vec(&json!({
            "schemaVersion": 1,
            "changeId": id,
            "calendarId": calendar,
            "occurredAt": "2024-01-14T09:00:00Z",
            "entries": json_entries,
        }))
        .unwrap();
        out.push(Planned {
            id,
            calendar,
            body,
            rejection,
            entries,
        });
    }
    out
}

/// Per change: the outcomes seen.
#[derive(Default, Debug)]
pub struct Outcomes {
    /// changeId → distinct CXone jobs whose `completed` event listed it.
    pub completed_jobs: HashMap<String, HashSet<String>>,
    /// changeId → `completed` events listing it (after dropping copies the
    /// collector saw twice... kept: all copies, for the duplicate-event count).
    pub completed_events: HashMap<String, usize>,
    pub failed: HashMap<String, String>,
    pub rejected: HashMap<String, String>,
    pub dead: HashMap<String, Vec<Option<String>>>,
}

pub fn outcomes(seen: &Seen) -> Outcomes {
    let mut o = Outcomes::default();
    for e in &seen.events {
        let data = &e["data"];
        let ids = || {
            data["changeIds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
        };
        match e["type"].as_str().unwrap_or_default() {
            "wfm.schedule.import.completed" => {
                let job = data["jobId"].as_str().unwrap_or_default().to_owned();
                for id in ids() {
                    o.completed_jobs
                        .entry(id.clone())
                        .or_default()
                        .insert(job.clone());
                    *o.completed_events.entry(id).or_default() += 1;
                }
            }
            "wfm.schedule.import.failed" => {
                let code = data["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                for id in ids() {
                    o.failed.insert(id, code.clone());
                }
            }
            "wfm.schedule.change.rejected" => {
                let id = data["changeId"].as_str().unwrap_or_default().to_owned();
                let code = data["errors"][0]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                o.rejected.insert(id, code);
            }
            _ => {}
        }
    }
    for d in &seen.dead {
        o.dead
            .entry(d.message_id.clone().unwrap_or_default())
            .or_default()
            .push(d.code.clone());
    }
    o
}

/// Whether every planned change reached a terminal, settled outcome.
pub fn all_settled(plan: &[Planned], seen: &Seen, allow_failed: bool) -> bool {
    missing(plan, seen, allow_failed).is_empty()
}

/// Changes without their terminal outcome yet.
pub fn missing(plan: &[Planned], seen: &Seen, allow_failed: bool) -> Vec<String> {
    let o = outcomes(seen);
    plan.iter()
        .filter(|c| match c.rejection {
            Some(_) => !(o.rejected.contains_key(&c.id) && o.dead.contains_key(&c.id)),
            None => {
                !(o.completed_jobs.contains_key(&c.id)
                    || (allow_failed && o.failed.contains_key(&c.id) && o.dead.contains_key(&c.id)))
            }
        })
        .map(|c| c.id.clone())
        .collect()
}

pub fn describe_missing(plan: &[Planned], seen: &Seen, allow_failed: bool) -> String {
    let m = missing(plan, seen, allow_failed);
    format!(
        "{} of {} changes not settled yet (first: {:?}); events seen {}, dead letters {}",
        m.len(),
        plan.len(),
        m.iter().take(5).collect::<Vec<_>>(),
        seen.events.len(),
        seen.dead.len()
    )
}

/// What a scenario measured, printed as one line for docs/reliability.md.
#[derive(Debug, Default)]
pub struct Report {
    pub changes: usize,
    pub valid: usize,
    pub invalid: usize,
    pub completed: usize,
    pub failed: usize,
    /// Extra CXone jobs that imported an already-imported change (redelivery).
    pub reimports: usize,
    /// Extra `completed` events for a change (redelivery or collector copies).
    pub duplicate_events: usize,
    pub calendars: usize,
}

/// The exact verdict; panics with what is wrong.
pub fn verdict(plan: &[Planned], seen: &Seen, sim: &SimServer, allow_failed: bool) -> Report {
    let o = outcomes(seen);
    let mut report = Report {
        changes: plan.len(),
        ..Report::default()
    };
    let mut model = RosterModel::default();
    let mut calendars: BTreeMap<&str, ()> = BTreeMap::new();
    for c in plan {
        calendars.insert(&c.calendar, ());
        match c.rejection {
            Some(code) => {
                report.invalid += 1;
                assert_eq!(
                    o.rejected.get(&c.id).map(String::as_str),
                    Some(code),
                    "change {} must be rejected with {code}",
                    c.id
                );
                let dead = o
                    .dead
                    .get(&c.id)
                    .unwrap_or_else(|| panic!("rejected change {} has no dead-letter copy", c.id));
                assert!(
                    dead.iter().all(|d| d.as_deref() == Some(code)),
                    "dead letters of {} carry x-error-code {code}: {dead:?}",
                    c.id
                );
                assert!(
                    !o.completed_jobs.contains_key(&c.id),
                    "rejected change {} was imported",
                    c.id
                );
            }
            None => {
                report.valid += 1;
                assert!(
                    !o.rejected.contains_key(&c.id),
                    "valid change {} was rejected: {:?}",
                    c.id,
                    o.rejected.get(&c.id)
                );
                if let Some(jobs) = o.completed_jobs.get(&c.id) {
                    report.completed += 1;
                    report.reimports += jobs.len() - 1;
                    report.duplicate_events += o.completed_events[&c.id] - 1;
                    let refs: Vec<(&str, &str, &str)> = c
                        .entries
                        .iter()
                        .map(|(a, s, e)| (a.as_str(), s.as_str(), e.as_str()))
                        .collect();
                    model.apply(&c.calendar, &refs);
                } else {
                    let code = o.failed.get(&c.id).unwrap_or_else(|| {
                        panic!(
                            "valid change {} has neither a completed nor a failed event",
                            c.id
                        )
                    });
                    assert!(
                        allow_failed,
                        "change {} failed ({code}) where no failure was injected",
                        c.id
                    );
                    report.failed += 1;
                    let dead = o.dead.get(&c.id).unwrap_or_else(|| {
                        panic!("failed change {} has no dead-letter copy", c.id)
                    });
                    assert!(
                        dead.iter().all(|d| d.as_deref() == Some(code.as_str())),
                        "dead letters of failed change {} carry x-error-code {code}: {dead:?}",
                        c.id
                    );
                }
            }
        }
    }
    for d in &seen.dead {
        assert!(
            d.code.is_some(),
            "a dead letter without x-error-code (the broker's delivery limit dropped {:?})",
            d.message_id
        );
    }
    report.calendars = calendars.len();
    for cal in calendars.keys() {
        let got = actual(&sim.shifts(cal));
        if got != model.expected(cal) {
            eprintln!("{}", calendar_story(cal, plan, seen));
        }
        assert_eq!(
            got,
            model.expected(cal),
            "roster of {cal} must equal AUTO_RESOLVE of its completed changes in publish order"
        );
    }
    report
}

/// What happened to one calendar, for a roster that came out wrong: its
/// planned changes in publish order, then its import events as they arrived.
fn calendar_story(cal: &str, plan: &[Planned], seen: &Seen) -> String {
    let mut out = format!("calendar {cal}, planned changes in publish order:\n");
    for c in plan.iter().filter(|c| c.calendar == cal) {
        out += &format!("  {} {:?} {:?}\n", c.id, c.rejection, c.entries);
    }
    out += "its import events as they arrived:\n";
    for e in &seen.events {
        let data = &e["data"];
        if data["calendarId"] == cal {
            out += &format!(
                "  {} job={} changes={}\n",
                e["type"].as_str().unwrap_or_default(),
                data["jobId"],
                data["changeIds"]
            );
        }
    }
    out
}

/// Completed change ids so far.
pub fn completed_count(seen: &Seen) -> usize {
    outcomes(seen).completed_jobs.len()
}

/// Waits until every change is settled and the inbound queue holds nothing
/// (no redelivery still pending).
pub async fn wait_settled_and_drained(
    collector: &Collector,
    plan: &[Planned],
    inbound_queue: &str,
    allow_failed: bool,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    collector
        .wait_until(
            timeout,
            |s| all_settled(plan, s, allow_failed),
            |s| describe_missing(plan, s, allow_failed),
        )
        .await;
    loop {
        let depth = queue_depth(inbound_queue);
        if depth == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "every change settled, but {depth} messages stay in {inbound_queue}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
