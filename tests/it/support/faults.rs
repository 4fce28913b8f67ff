//! Fault-injection harness: a deterministic workload, the worker as a real
//! process (so it can be killed), a collector of events and dead letters that
//! survives broker restarts, and the exact verdict every scenario shares.
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
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use cxone_schedule_worker::{
    amqp,
    config::Settings,
    sim::{SimConfig, SimServer},
};
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::*,
    types::{AMQPValue, FieldTable},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{RosterModel, actual, amqp_url, at, broker, fast_sim, header, settings, sim};

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

/// The end of a scenario: the publisher closed, the collector's queues
/// deleted, the simulator stopped.
pub async fn finish_scenario(publisher: Publisher, collector: Collector, sim: SimServer) {
    publisher.close().await;
    collector.cleanup().await;
    sim.shutdown().await;
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

/// A confirming publisher of its own (the tap's connection may die with the broker).
pub struct Publisher {
    conn: Connection,
    ch: lapin::Channel,
    exchange: String,
}

impl Publisher {
    pub async fn new(settings: &Settings) -> Publisher {
        let conn = broker().await;
        let ch = conn.create_channel().await.unwrap();
        amqp::declare_topology(&ch, &settings.amqp)
            .await
            .expect("topology");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Publisher {
            conn,
            ch,
            exchange: settings.amqp.inbound_exchange.clone(),
        }
    }

    /// Publishes every change (routing key = calendar, message id = change
    /// id, persistent), pipelining confirms, and checks each was confirmed.
    pub async fn publish_all(&self, changes: &[Planned]) {
        for chunk in changes.chunks(250) {
            let mut confirms = Vec::with_capacity(chunk.len());
            for c in chunk {
                let props = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_message_id(c.id.as_str().into())
                    .with_delivery_mode(2);
                confirms.push(
                    self.ch
                        .basic_publish(
                            self.exchange.as_str().into(),
                            c.calendar.as_str().into(),
                            BasicPublishOptions::default(),
                            &c.body,
                            props,
                        )
                        .await
                        .expect("publish"),
                );
            }
            for c in confirms {
                assert!(c.await.expect("confirm").is_ack(), "broker nacked a change");
            }
        }
    }

    pub async fn publish_raw(&self, key: &str, body: &[u8], props: BasicProperties) {
        let c = self
            .ch
            .basic_publish(
                self.exchange.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(c.is_ack(), "broker nacked a message");
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "bye".into()).await;
    }
}

/// A dead letter as the collector saw it.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    pub code: Option<String>,
    pub body_len: usize,
}

#[derive(Default)]
pub struct Seen {
    pub events: Vec<Value>,
    pub dead: Vec<DeadLetter>,
    pub reconnects: u32,
}

/// Collects events (through a durable queue of its own bound to every event)
/// and dead letters, acking each after recording it, and reconnecting when
/// the broker goes away. A redelivered message is recorded twice; the
/// verdict dedupes.
pub struct Collector {
    pub seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    settings: Settings,
    events_queue: String,
}

impl Collector {
    /// Declares the topology and the collector's queue before returning, so
    /// nothing published afterwards is missed.
    pub async fn start(settings: &Settings) -> Collector {
        let events_queue = format!("{}.collect", settings.amqp.events_exchange);
        let conn = broker().await;
        Self::declare(&conn, settings, &events_queue)
            .await
            .expect("collector topology");
        let _ = conn.close(200, "bye".into()).await;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(collect(
            settings.clone(),
            events_queue.clone(),
            seen.clone(),
            stop.clone(),
        ));
        Collector {
            seen,
            stop,
            task,
            settings: settings.clone(),
            events_queue,
        }
    }

    async fn declare(conn: &Connection, settings: &Settings, queue: &str) -> Result<(), String> {
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        amqp::declare_topology(&ch, &settings.amqp)
            .await
            .map_err(|e| e.to_string())?;
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        ch.queue_bind(
            queue.into(),
            settings.amqp.events_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let _ = ch.close(200, "ok".into()).await;
        Ok(())
    }

    /// Waits until `done` holds over what was seen, polling; fails after `timeout`
    /// with `describe`'s account of what is missing.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&Seen) -> bool,
        describe: impl Fn(&Seen) -> String,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let seen = self.seen.lock().unwrap();
                if done(&seen) {
                    return;
                }
                if Instant::now() > deadline {
                    panic!("timed out after {timeout:?}: {}", describe(&seen));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops collecting and deletes everything the scenario declared.
    pub async fn cleanup(self) {
        self.stop.cancel();
        let _ = self.task.await;
        let conn = broker().await;
        let ch = conn.create_channel().await.unwrap();
        // Everything the worker declares (the webhook relay exchange
        // included, which a list of our own once missed), then the
        // collector's queue.
        amqp::delete_topology(&ch, &self.settings.amqp).await;
        let _ = ch
            .queue_delete(
                self.events_queue.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
        let _ = conn.close(200, "bye".into()).await;
    }
}

async fn collect(
    settings: Settings,
    events_queue: String,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
) {
    let mut first = true;
    while !stop.is_cancelled() {
        if !first {
            seen.lock().unwrap().reconnects += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.cancelled() => return,
            }
        }
        first = false;
        let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
        else {
            continue;
        };
        if Collector::declare(&conn, &settings, &events_queue)
            .await
            .is_err()
        {
            continue;
        }
        let Ok(ch) = conn.create_channel().await else {
            continue;
        };
        if ch.basic_qos(500, BasicQosOptions::default()).await.is_err() {
            continue;
        }
        let consume = |queue: String, tag: &'static str| {
            let ch = ch.clone();
            async move {
                ch.basic_consume(
                    queue.as_str().into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            }
        };
        let (Ok(mut events), Ok(mut dead)) = (
            consume(events_queue.clone(), "collect-events").await,
            consume(settings.amqp.dead_letter_queue.clone(), "collect-dead").await,
        ) else {
            continue;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = conn.close(200, "bye".into()).await;
                    return;
                }
                d = events.next() => match d {
                    Some(Ok(d)) => {
                        let v: Value = serde_json::from_slice(&d.data).expect("events are JSON");
                        seen.lock().unwrap().events.push(v);
                        let _ = d.ack(BasicAckOptions::default()).await;
                    }
                    _ => break,
                },
                d = dead.next() => match d {
                    Some(Ok(d)) => {
                        let headers = d.properties.headers().clone().unwrap_or_default();
                        let dl = DeadLetter {
                            message_id: d.properties.message_id().as_ref().map(|s| s.to_string()),
                            code: header(&headers, "x-error-code"),
                            body_len: d.data.len(),
                        };
                        seen.lock().unwrap().dead.push(dl);
                        let _ = d.ack(BasicAckOptions::default()).await;
                    }
                    _ => break,
                },
            }
        }
    }
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

/// The worker binary as a child process, logging to a file.
pub struct WorkerProc {
    pub child: Child,
    pub log: PathBuf,
}

impl WorkerProc {
    pub fn spawn(env: &[(String, String)], log: &std::path::Path, rust_log: &str) -> WorkerProc {
        Self::spawn_args(&["run"], env, log, rust_log)
    }

    /// `cxone-schedule-worker ARGS`; killed on drop if still running.
    pub fn spawn_args(
        args: &[&str],
        env: &[(String, String)],
        log: &std::path::Path,
        rust_log: &str,
    ) -> WorkerProc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("worker log file");
        let child = Command::new(env!("CARGO_BIN_EXE_cxone-schedule-worker"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("worker binary starts");
        WorkerProc {
            child,
            log: log.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no acks, nothing flushed.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "could not signal the worker");
    }

    /// Waits for the exit; `Err` after `timeout` (the process is then killed).
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err(format!(
                    "worker did not exit within {timeout:?}; log: {}",
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Peak resident memory (VmHWM) in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        if self.running() {
            self.kill9();
        }
    }
}

/// The environment of a worker subprocess for `settings`, plus `extra`.
pub fn worker_env(settings: &Settings, extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env = super::env_of(settings);
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push(((*k).to_owned(), v.clone()));
    }
    env
}

/// (ready, consumers) of a queue.
pub async fn queue_state(queue: &str) -> (u32, u32) {
    let conn = broker().await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "bye".into()).await;
    (q.message_count(), q.consumer_count())
}

/// Waits until the inbound queue has a consumer (the worker subscribed).
pub async fn wait_for_consumer(queue: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if queue_state(queue).await.1 >= 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no worker subscribed to {queue} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Completed change ids so far.
pub fn completed_count(seen: &Seen) -> usize {
    outcomes(seen).completed_jobs.len()
}

/// A log file for a scenario, under the target directory (kept after the run).
pub fn log_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// A header value of `AMQPValue::LongString`.
pub fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// Runs `rabbitmqctl ARGS` (as root, like CI), failing with how to fix it.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run rabbitmqctl {args:?}: {e}; fault tests need the broker's CLI on PATH \
                 and to run as a user allowed to use it (root in CI)"
            )
        });
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Messages in a queue, ready plus unacknowledged, asked of the queue itself
/// (exact, unlike the management API's sampled statistics).
pub fn queue_depth(queue: &str) -> u64 {
    let out = rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ]);
    for line in out.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() == 3 && cols[0] == queue {
            return cols[1].parse::<u64>().unwrap_or(u64::MAX)
                + cols[2].parse::<u64>().unwrap_or(u64::MAX);
        }
    }
    panic!("queue {queue} not listed by rabbitmqctl list_queues: {out}");
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

/// Closes every broker connection named `name` through the management API,
/// waiting up to 30 s for the API to list one. Returns how many it closed.
pub async fn close_connections_named(name: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let http = reqwest::Client::new();
    let api = "http://127.0.0.1:15672/api/connections";
    loop {
        let list: Value = match http
            .get(api)
            .basic_auth("guest", Some("guest"))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "RabbitMQ management API unreachable at {api}: {e}; enable it with \
                     `rabbitmq-plugins enable rabbitmq_management`"
                );
                Value::Null
            }
        };
        let mut closed = 0;
        for c in list.as_array().into_iter().flatten() {
            if c["client_properties"]["connection_name"] == name {
                let mut url = reqwest::Url::parse(api).unwrap();
                url.path_segments_mut()
                    .unwrap()
                    .push(c["name"].as_str().unwrap());
                let r = http
                    .delete(url)
                    .basic_auth("guest", Some("guest"))
                    .header("X-Reason", "fault test: forced close")
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    closed += 1;
                }
            }
        }
        if closed > 0 || Instant::now() > deadline {
            return closed;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
