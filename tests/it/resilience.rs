//! Shutdown and broker loss: nothing is lost, nothing is acked early.

use std::{
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use crate::support::*;
use cxone_schedule_worker::app;

const WAIT: Duration = Duration::from_secs(90);

fn spawn_worker(env: &[(String, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cxone-schedule-worker"))
        .arg("run")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("worker binary starts")
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "could not signal the worker");
}

async fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("worker did not exit within {timeout:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for(tap: &Tap, what: &str, pred: impl Fn((u32, u32)) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let state = tap.queue_state().await;
        if pred(state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; queue (ready, consumers) = {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM while batches are open: they are sent, imported, evented and acked,
/// and the process exits 0; a restarted worker completes what came meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_open_batches_and_restart_completes_the_rest() {
    let sim = sim(fast_sim()).await;
    // Batches stay open for a minute unless shutdown flushes them.
    let settings = settings(
        "sigterm",
        &sim.base_url(),
        &[("CSW__BATCH__MAX_WAIT_MS", "60000")],
    );
    let mut tap = Tap::new(&settings).await;
    let mut model = RosterModel::default();
    let mut env = env_of(&settings);

    let mut worker = spawn_worker(&env);
    wait_for(&tap, "the worker to subscribe", |(_, consumers)| {
        consumers >= 1
    })
    .await;
    let mut first = Vec::new();
    for i in 0..6 {
        let cal = format!("cal-{}", i % 3);
        let entry = ("a1", at(15, i), at(15, i + 1));
        tap.publish(&change(
            &format!("s{i}"),
            &cal,
            &[(entry.0, &entry.1, &entry.2)],
        ))
        .await;
        model.apply(&cal, &[(entry.0, &entry.1, &entry.2)]);
        first.push(format!("s{i}"));
    }
    wait_for(&tap, "all changes delivered", |(ready, _)| ready == 0).await;
    sigterm(&worker);
    let status = wait_exit(&mut worker, Duration::from_secs(40)).await;
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    tap.wait_completed(&first, WAIT).await;

    // Published while no worker runs; a restarted worker takes them.
    let mut second = Vec::new();
    for i in 0..6 {
        let cal = format!("cal-{}", i % 3);
        let entry = ("a1", at(15, i), at(15, i + 3));
        tap.publish(&change(
            &format!("t{i}"),
            &cal,
            &[(entry.0, &entry.1, &entry.2)],
        ))
        .await;
        model.apply(&cal, &[(entry.0, &entry.1, &entry.2)]);
        second.push(format!("t{i}"));
    }
    env.retain(|(k, _)| k != "CSW__BATCH__MAX_WAIT_MS");
    env.push(("CSW__BATCH__MAX_WAIT_MS".into(), "100".into()));
    let mut worker = spawn_worker(&env);
    tap.wait_completed(&second, WAIT).await;
    sigterm(&worker);
    let status = wait_exit(&mut worker, Duration::from_secs(40)).await;
    assert!(status.success(), "exit status after SIGTERM: {status:?}");

    for cal in model.calendars() {
        assert_eq!(
            actual(&sim.shifts(&cal)),
            model.expected(&cal),
            "roster of {cal}"
        );
    }
    assert_eq!(tap.queue_state().await.0, 0, "nothing left unacked");
    tap.cleanup().await;
    sim.shutdown().await;
}

/// Closes the worker's connections through the management API, waiting for
/// them to be listed (the API refreshes its view every few seconds).
async fn close_connection_named(name: &str) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let closed = try_close_connection_named(name).await;
        if closed > 0 || tokio::time::Instant::now() > deadline {
            return closed;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn try_close_connection_named(name: &str) -> usize {
    let http = reqwest::Client::new();
    let api = "http://127.0.0.1:15672/api/connections";
    let list: serde_json::Value = http
        .get(api)
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ management API unreachable at {api}: {e}; \
                 enable it with `rabbitmq-plugins enable rabbitmq_management`"
            )
        })
        .json()
        .await
        .unwrap();
    let mut closed = 0;
    for c in list.as_array().unwrap() {
        if c["client_properties"]["connection_name"] == name {
            let mut url = reqwest::Url::parse(api).unwrap();
            url.path_segments_mut()
                .unwrap()
                .push(c["name"].as_str().unwrap());
            let r = http
                .delete(url)
                .basic_auth("guest", Some("guest"))
                .header("X-Reason", "test: forced close")
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "closing {name}: {}", r.status());
            closed += 1;
        }
    }
    closed
}

/// The broker closes the worker's connection mid-run: it reconnects,
/// redeclares, consumes again, and nothing is lost or misordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_connection_close_loses_nothing() {
    let mut app = spawn_app(
        cxone_schedule_worker::sim::SimConfig {
            job_base_ms: 40,
            ..fast_sim()
        },
        "connkill",
        &[("CSW__BATCH__MAX_ENTRIES", "20")],
    )
    .await;
    let mut model = RosterModel::default();
    let mut ids = Vec::new();
    for i in 0..300u32 {
        let cal = format!("cal-{}", i % 10);
        let start = i % 17;
        let entry = (
            format!("a{}", i % 4),
            at(15, start),
            at(15, start + 1 + i % 5),
        );
        let id = format!("k{i}");
        app.tap
            .publish(&change(&id, &cal, &[(&entry.0, &entry.1, &entry.2)]))
            .await;
        model.apply(&cal, &[(&entry.0, &entry.1, &entry.2)]);
        ids.push(id);
        if i == 150 {
            // Wait for some progress, then pull the plug.
            app.tap
                .events_until(WAIT, |e| {
                    e.iter()
                        .filter(|e| e["type"] == "wfm.schedule.import.completed")
                        .count()
                        >= 3
                })
                .await;
            let closed = close_connection_named(&app.worker.instance_id).await;
            assert_eq!(closed, 1, "exactly the app.worker's connection is closed");
        }
    }
    app.tap.wait_completed(&ids, WAIT).await;
    for cal in model.calendars() {
        assert_eq!(
            actual(&app.sim.shifts(&cal)),
            model.expected(&cal),
            "roster of {cal}"
        );
    }
    assert_eq!(app.sim.stats().concurrent_calendar_violations, 0);
    let metrics = reqwest::get(format!("http://{}/metrics", app.worker.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reconnects = metrics
        .lines()
        .find_map(|l| l.strip_prefix("csw_broker_reconnects_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        reconnects >= 1.0,
        "the app.worker reconnected: {reconnects}"
    );
    app.worker.shutdown();
    app.worker.wait().await.unwrap();
    assert_eq!(
        app.tap.inbound_ready().await,
        0,
        "every delivery acked after the reconnect"
    );
    app.tap.cleanup().await;
    app.sim.shutdown().await;
}

/// With the broker unreachable the worker keeps retrying, says so on /readyz,
/// and still shuts down at once when asked (the grace period here is far
/// longer than the test's patience, so waiting it out would fail the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_not_ready_and_shutdown_is_prompt() {
    let sim = sim(fast_sim()).await;
    let mut settings = settings(
        "nobroker",
        &sim.base_url(),
        &[("CSW__SHUTDOWN__TIMEOUT_S", "600")],
    );
    settings.amqp.url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let worker = app::start(settings).await.unwrap();
    let r = reqwest::get(format!("http://{}/readyz", worker.http_addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "broker connection down");
    worker.shutdown();
    tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("shutdown does not wait out the grace period while disconnected")
        .unwrap();
    sim.shutdown().await;
}
