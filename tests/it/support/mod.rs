//! Test harness: a real broker ([`broker`]), the in-process simulator,
//! uniquely named topology per test, the worker in process ([`spawn_app`])
//! or as a child process ([`launcher`]), one [`publisher`], one event
//! [`collector`], an independent model of the roster ([`roster`]), and the
//! workload and verdict of scenarios under load ([`scenario`]).
// Each test binary uses a different part of the harness.
#![allow(dead_code, unused_imports)]

pub mod broker;
pub mod collector;
pub mod launcher;
pub mod publisher;
pub mod roster;
pub mod scenario;

pub use broker::*;
pub use collector::*;
pub use launcher::*;
pub use publisher::*;
pub use roster::*;
pub use scenario::*;

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

use cxone_schedule_worker::{
    app,
    config::Settings,
    sim::{SimConfig, SimServer},
};
use secrecy::ExposeSecret;
use serde_json::json;

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
        (
            "CSW__AMQP__CONTROL_EXCHANGE_PREFIX",
            format!("{base}.control"),
        ),
        ("CSW_FLEET_SECRET", format!("{base}.fleet-secret")),
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
            "CSW__AMQP__CONTROL_EXCHANGE_PREFIX".into(),
            a.control_exchange_prefix.clone(),
        ),
        (
            "CSW_FLEET_SECRET".into(),
            s.fleet.secret.expose_secret().to_owned(),
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
/// publisher, collector, and the worker itself (`finish` takes them back).
pub struct TestApp {
    pub sim: SimServer,
    pub settings: Settings,
    pub publisher: Publisher,
    pub collector: Collector,
    pub worker: app::AppHandle,
}

/// Starts the simulator (`sim_cfg`, on a free port), declares the test's
/// own topology under `prefix` with its collector and publisher, and
/// starts the worker with the test settings plus `extra`.
pub async fn spawn_app(sim_cfg: SimConfig, prefix: &str, extra: &[(&str, &str)]) -> TestApp {
    let sim = sim(sim_cfg).await;
    let settings = settings(prefix, &sim.base_url(), extra);
    let collector = Collector::start(&settings).await;
    let publisher = Publisher::new(&settings).await;
    let worker = app::start(settings.clone())
        .await
        .expect("the worker starts");
    TestApp {
        sim,
        settings,
        publisher,
        collector,
        worker,
    }
}

impl TestApp {
    /// Messages ready in the inbound queue (unacked ones are not counted).
    pub async fn inbound_ready(&self) -> u32 {
        queue_state(&self.settings.amqp.inbound_queue).await.0
    }

    /// Stops the worker gracefully, then removes the test's topology and
    /// the simulator. Returns the messages left ready in the inbound queue
    /// once the worker stopped (unacked ones are back in the queue by then).
    pub async fn finish(self) -> u32 {
        self.worker.shutdown();
        self.worker.wait().await.expect("graceful shutdown");
        let left = queue_state(&self.settings.amqp.inbound_queue).await.0;
        finish_test(self.publisher, self.collector, self.sim).await;
        left
    }
}

/// The end of a test: the publisher closed, the collector stopped and the
/// test's topology deleted, the simulator stopped.
pub async fn finish_test(publisher: Publisher, collector: Collector, sim: SimServer) {
    publisher.close().await;
    collector.cleanup().await;
    sim.shutdown().await;
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

/// `2024-01-{day}T{hour}:00:00Z`.
pub fn at(day: u32, hour: u32) -> String {
    format!("2024-01-{day:02}T{hour:02}:00:00Z")
}
