//! Test harness: a real broker, the in-process simulator, uniquely named
//! topology per test, and an independent model of the roster.
#![allow(dead_code)]

pub mod faults;

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use chrono::DateTime;
use cxone_schedule_worker::{
    amqp, app,
    config::Settings,
    domain::ScheduleEntry,
    sim::{SimConfig, SimServer},
};
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    options::*,
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Connects to the test broker, or fails saying how to start one.
pub async fn broker() -> Connection {
    let url = amqp_url();
    match Connection::connect(&url, ConnectionProperties::default()).await {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot reach RabbitMQ at {url}: {e}\n\
             start one with `rabbitmq-server -detached` (install it with \
             `apt-get install -y rabbitmq-server`), or point AMQP_URL at a broker"
        ),
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t.{prefix}.{}.{}.{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Settings with this test's own names, pointed at `sim`.
pub fn settings(prefix: &str, sim_url: &str, extra: &[(&str, &str)]) -> Settings {
    let base = unique(prefix);
    let mut env: HashMap<String, String> = [
        ("AMQP_URL", amqp_url()),
        ("CSW__AMQP__INBOUND_EXCHANGE", format!("{base}.in")),
        ("CSW__AMQP__INBOUND_QUEUE", format!("{base}.in")),
        ("CSW__AMQP__DEAD_LETTER_EXCHANGE", format!("{base}.dlx")),
        ("CSW__AMQP__DEAD_LETTER_QUEUE", format!("{base}.dead")),
        ("CSW__AMQP__EVENTS_EXCHANGE", format!("{base}.events")),
        (
            "CSW__AMQP__UNROUTED_EVENTS_QUEUE",
            format!("{base}.unrouted"),
        ),
        ("CSW__WORKER__INSTANCE_ID", base.clone()),
        ("CSW__HTTP__LISTEN", "127.0.0.1:0".into()),
        ("CSW__BATCH__MAX_WAIT_MS", "150".into()),
        ("CSW__IMPORTS__POLL_INITIAL_MS", "20".into()),
        ("CSW__IMPORTS__POLL_MAX_MS", "100".into()),
        ("CSW__RETRY__BASE_MS", "20".into()),
        ("CSW__RETRY__CAP_MS", "500".into()),
        ("CSW__SHUTDOWN__TIMEOUT_S", "20".into()),
        ("CXONE_BASE_URL", sim_url.into()),
        ("CXONE_AUTH_URL", sim_url.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    Settings::load_from(None, &env).expect("test settings are valid")
}

/// Environment variables that reproduce `settings` for a worker subprocess.
pub fn env_of(s: &Settings) -> Vec<(String, String)> {
    let a = &s.amqp;
    vec![
        ("AMQP_URL".into(), a.url.clone()),
        (
            "CSW__AMQP__INBOUND_EXCHANGE".into(),
            a.inbound_exchange.clone(),
        ),
        ("CSW__AMQP__INBOUND_QUEUE".into(), a.inbound_queue.clone()),
        (
            "CSW__AMQP__DEAD_LETTER_EXCHANGE".into(),
            a.dead_letter_exchange.clone(),
        ),
        (
            "CSW__AMQP__DEAD_LETTER_QUEUE".into(),
            a.dead_letter_queue.clone(),
        ),
        (
            "CSW__AMQP__EVENTS_EXCHANGE".into(),
            a.events_exchange.clone(),
        ),
        (
            "CSW__AMQP__UNROUTED_EVENTS_QUEUE".into(),
            a.unrouted_events_queue.clone(),
        ),
        (
            "CSW__WORKER__INSTANCE_ID".into(),
            s.worker.instance_id.clone(),
        ),
        (
            "CSW__BATCH__MAX_WAIT_MS".into(),
            s.batch.max_wait.as_millis().to_string(),
        ),
        (
            "CSW__BATCH__MAX_ENTRIES".into(),
            s.batch.max_entries.to_string(),
        ),
        (
            "CSW__IMPORTS__POLL_INITIAL_MS".into(),
            s.imports.poll_initial.as_millis().to_string(),
        ),
        (
            "CSW__IMPORTS__POLL_MAX_MS".into(),
            s.imports.poll_max.as_millis().to_string(),
        ),
        (
            "CSW__RETRY__BASE_MS".into(),
            s.retry.base.as_millis().to_string(),
        ),
        (
            "CSW__RETRY__CAP_MS".into(),
            s.retry.cap.as_millis().to_string(),
        ),
        (
            "CSW__SHUTDOWN__TIMEOUT_S".into(),
            s.shutdown.timeout.as_secs().to_string(),
        ),
        ("CXONE_BASE_URL".into(), s.cxone.base_url.clone()),
        ("CXONE_AUTH_URL".into(), s.cxone.auth_url.clone()),
        ("CSW__HTTP__LISTEN".into(), "127.0.0.1:0".into()),
    ]
}

/// A worker started in process for one test: its simulator, settings,
/// tap on the broker, and the worker itself (`finish` takes them back).
pub struct TestApp {
    pub sim: SimServer,
    pub settings: Settings,
    pub tap: Tap,
    pub worker: app::AppHandle,
}

/// Starts the simulator (`sim_cfg`, on a free port), declares the test's
/// own topology under `prefix` with its tap, and starts the worker with
/// the test settings plus `extra`.
pub async fn spawn_app(sim_cfg: SimConfig, prefix: &str, extra: &[(&str, &str)]) -> TestApp {
    let sim = sim(sim_cfg).await;
    let settings = settings(prefix, &sim.base_url(), extra);
    let tap = Tap::new(&settings).await;
    let worker = app::start(settings.clone())
        .await
        .expect("the worker starts");
    TestApp {
        sim,
        settings,
        tap,
        worker,
    }
}

impl TestApp {
    /// [`finish`] for this app.
    pub async fn finish(self) -> u32 {
        finish(self.worker, self.tap, self.sim).await
    }
}

/// Stops the worker gracefully, then removes the test's topology and the
/// simulator. Returns the messages left ready in the inbound queue once the
/// worker stopped (unacked ones are back in the queue by then).
pub async fn finish(worker: app::AppHandle, tap: Tap, sim: SimServer) -> u32 {
    worker.shutdown();
    worker.wait().await.expect("graceful shutdown");
    let left = tap.inbound_ready().await;
    tap.cleanup().await;
    sim.shutdown().await;
    left
}

/// The simulator with instant jobs unless told otherwise.
pub async fn sim(cfg: SimConfig) -> SimServer {
    SimServer::start(SimConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        ..cfg
    })
    .await
    .expect("simulator starts")
}

pub fn fast_sim() -> SimConfig {
    SimConfig {
        job_base_ms: 5,
        ..SimConfig::default()
    }
}

/// A test's view of the broker: publishes changes and taps events and dead letters.
pub struct Tap {
    pub conn: Connection,
    pub ch: Channel,
    pub settings: Settings,
    events: Consumer,
    dead: Consumer,
    pub events_queue: String,
    pub seen_events: Vec<Value>,
    seen_event_headers: Vec<FieldTable>,
    pub seen_dead: Vec<(Vec<u8>, FieldTable)>,
}

impl Tap {
    /// Declares the topology (as the worker would) plus a queue bound to every event.
    pub async fn new(settings: &Settings) -> Tap {
        let conn = broker().await;
        let ch = conn.create_channel().await.unwrap();
        amqp::declare_topology(&ch, &settings.amqp)
            .await
            .expect("topology");
        let events_queue = format!("{}.tap", settings.amqp.events_exchange);
        ch.queue_declare(
            events_queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            events_queue.as_str().into(),
            settings.amqp.events_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let tap_ch = conn.create_channel().await.unwrap();
        let events = tap_ch
            .basic_consume(
                events_queue.as_str().into(),
                "tap-events".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let dead = tap_ch
            .basic_consume(
                settings.amqp.dead_letter_queue.as_str().into(),
                "tap-dead".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Tap {
            conn,
            ch,
            settings: settings.clone(),
            events,
            dead,
            events_queue,
            seen_events: Vec::new(),
            seen_event_headers: Vec::new(),
            seen_dead: Vec::new(),
        }
    }

    /// Publishes a change body as `publish` would (routing key = calendarId).
    pub async fn publish(&self, body: &[u8]) {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let key = v["calendarId"].as_str().unwrap_or("").to_owned();
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if let Some(id) = v["changeId"].as_str() {
            props = props.with_message_id(id.into());
        }
        self.publish_raw(&key, body, props).await;
    }

    pub async fn publish_raw(&self, key: &str, body: &[u8], props: BasicProperties) {
        let c = self
            .ch
            .basic_publish(
                self.settings.amqp.inbound_exchange.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(c.is_ack());
    }

    /// Collects events until `done` holds, or fails after `timeout`.
    pub async fn events_until(&mut self, timeout: Duration, done: impl Fn(&[Value]) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.seen_events) {
            match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(Ok(d))) => {
                    self.seen_events
                        .push(serde_json::from_slice(&d.data).expect("events are JSON"));
                    self.seen_event_headers
                        .push(d.properties.headers().clone().unwrap_or_default());
                }
                Ok(other) => panic!("event stream ended: {other:?}"),
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for events; seen {}: {}",
                    self.seen_events.len(),
                    summarize(&self.seen_events)
                ),
            }
        }
    }

    /// Collects dead letters until there are `n`.
    pub async fn dead_letters(&mut self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.seen_dead.len() < n {
            match tokio::time::timeout_at(deadline, self.dead.next()).await {
                Ok(Some(Ok(d))) => self
                    .seen_dead
                    .push((d.data, d.properties.headers().clone().unwrap_or_default())),
                Ok(other) => panic!("dead-letter stream ended: {other:?}"),
                Err(_) => panic!(
                    "timed out waiting for {n} dead letters; got {}",
                    self.seen_dead.len()
                ),
            }
        }
    }

    /// Waits until every id is in a `completed` event.
    pub async fn wait_completed(&mut self, ids: &[String], timeout: Duration) {
        let want: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let done = |events: &[Value]| {
            let seen: std::collections::HashSet<&str> = events
                .iter()
                .filter(|e| e["type"] == "wfm.schedule.import.completed")
                .flat_map(|e| e["data"]["changeIds"].as_array().into_iter().flatten())
                .filter_map(Value::as_str)
                .collect();
            want.iter().all(|id| seen.contains(id))
        };
        self.events_until(timeout, done).await;
    }

    /// The AMQP headers of the events seen, in order.
    pub fn event_headers(&self) -> &[FieldTable] {
        &self.seen_event_headers
    }

    pub fn events_of(&self, kind: &str) -> Vec<&Value> {
        let t = format!("wfm.{kind}");
        self.seen_events
            .iter()
            .filter(|e| e["type"] == t.as_str())
            .collect()
    }

    /// Change ids in terminal events of a kind.
    pub fn change_ids_in(&self, kind: &str) -> Vec<String> {
        self.events_of(kind)
            .iter()
            .flat_map(|e| {
                e["data"]["changeIds"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// Messages ready in the inbound queue (unacked ones are not counted).
    pub async fn inbound_ready(&self) -> u32 {
        self.queue_state().await.0
    }

    /// (ready messages, consumers) of the inbound queue.
    pub async fn queue_state(&self) -> (u32, u32) {
        let ch = self.conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                self.settings.amqp.inbound_queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = ch.close(200, "ok".into()).await;
        (q.message_count(), q.consumer_count())
    }

    /// Deletes everything this test declared.
    pub async fn cleanup(self) {
        let ch = self.conn.create_channel().await.unwrap();
        let _ = ch
            .queue_delete(
                self.events_queue.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
        amqp::delete_topology(&ch, &self.settings.amqp).await;
        let _ = self.conn.close(200, "bye".into()).await;
    }
}

pub fn header(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn summarize(events: &[Value]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        *counts
            .entry(e["type"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    format!("{counts:?}")
}

/// A change with the given entries `(agent, start, end)`.
pub fn change(change_id: &str, calendar: &str, entries: &[(&str, &str, &str)]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 1,
        "changeId": change_id,
        "calendarId": calendar,
        "occurredAt": "2024-01-14T09:00:00Z",
        "entries": entries.iter().map(|(a, s, e)| json!({
            "agentId": a, "startDateTime": s, "endDateTime": e,
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// The same change written compactly with the entry fields in the
/// contract's order, as a publisher serialising its own types writes it
/// (`change` sorts them): the worker copies such entries into the import
/// instead of parsing the body again.
pub fn change_in_order(change_id: &str, calendar: &str, entries: &[(&str, &str, &str)]) -> Vec<u8> {
    let entries: Vec<String> = entries
        .iter()
        .map(|(a, s, e)| {
            format!(
                r#"{{"agentId":{},"startDateTime":{},"endDateTime":{}}}"#,
                json!(a),
                json!(s),
                json!(e)
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":1,"changeId":{},"calendarId":{},"occurredAt":"2024-01-14T09:00:00Z","entries":[{}]}}"#,
        json!(change_id),
        json!(calendar),
        entries.join(",")
    )
    .into_bytes()
}

/// The roster AUTO_RESOLVE yields, computed independently of the simulator:
/// per calendar, entry by entry in publish order, the agent's overlapping
/// shifts are removed, then the entry is stored.
/// A stored shift: agent, start and end instants, start and end as written.
type Shift = (String, i64, i64, String, String);

#[derive(Default)]
pub struct RosterModel {
    calendars: HashMap<String, Vec<Shift>>,
}

impl RosterModel {
    pub fn apply(&mut self, calendar: &str, entries: &[(&str, &str, &str)]) {
        let shifts = self.calendars.entry(calendar.to_owned()).or_default();
        for (agent, start, end) in entries {
            let s = instant(start);
            let e = instant(end);
            shifts.retain(|(a, ss, se, _, _)| !(a == agent && *ss < e && s < *se));
            shifts.push((
                (*agent).to_owned(),
                s,
                e,
                (*start).to_owned(),
                (*end).to_owned(),
            ));
        }
    }

    pub fn calendars(&self) -> Vec<String> {
        let mut c: Vec<String> = self.calendars.keys().cloned().collect();
        c.sort();
        c
    }

    /// `(agent, start, end)` sorted by agent then start.
    pub fn expected(&self, calendar: &str) -> Vec<(String, String, String)> {
        let mut v = self.calendars.get(calendar).cloned().unwrap_or_default();
        v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        v.into_iter().map(|(a, _, _, s, e)| (a, s, e)).collect()
    }
}

pub fn actual(shifts: &[ScheduleEntry]) -> Vec<(String, String, String)> {
    shifts
        .iter()
        .map(|e| {
            (
                e.agent_id.clone(),
                e.start_date_time.clone(),
                e.end_date_time.clone(),
            )
        })
        .collect()
}

fn instant(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}

/// `2024-01-{day}T{hour}:00:00Z`.
pub fn at(day: u32, hour: u32) -> String {
    format!("2024-01-{day:02}T{hour:02}:00:00Z")
}
