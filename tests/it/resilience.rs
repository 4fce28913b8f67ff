//! Shutdown and broker loss: nothing is lost, nothing is acked early.

use std::time::Duration;

use crate::support::*;
use cxone_schedule_worker::app;

const WAIT: Duration = Duration::from_secs(90);

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
    let publisher = Publisher::new(&settings).await;
    let collector = Collector::start(&settings).await;
    let mut model = RosterModel::default();
    let mut env = env_of(&settings);
    let log = log_path("sigterm");

    let mut worker = WorkerProc::spawn(&env, &log, "info");
    wait_for_consumer(&settings.amqp.inbound_queue, WAIT).await;
    let mut first = Vec::new();
    for i in 0..6 {
        let cal = format!("cal-{}", i % 3);
        let entry = ("a1", at(15, i), at(15, i + 1));
        publisher
            .publish(&change(
                &format!("s{i}"),
                &cal,
                &[(entry.0, &entry.1, &entry.2)],
            ))
            .await;
        model.apply(&cal, &[(entry.0, &entry.1, &entry.2)]);
        first.push(format!("s{i}"));
    }
    wait_for_queue(
        &settings.amqp.inbound_queue,
        "all changes delivered",
        WAIT,
        |(ready, _)| ready == 0,
    )
    .await;
    worker.sigterm();
    let status = worker
        .wait_exit(Duration::from_secs(40))
        .await
        .expect("the worker exits after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    collector.wait_completed(&first, WAIT).await;

    // Published while no worker runs; a restarted worker takes them.
    let mut second = Vec::new();
    for i in 0..6 {
        let cal = format!("cal-{}", i % 3);
        let entry = ("a1", at(15, i), at(15, i + 3));
        publisher
            .publish(&change(
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
    let mut worker = WorkerProc::spawn(&env, &log, "info");
    collector.wait_completed(&second, WAIT).await;
    worker.sigterm();
    let status = worker
        .wait_exit(Duration::from_secs(40))
        .await
        .expect("the worker exits after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status:?}");

    for cal in model.calendars() {
        assert_eq!(
            actual(&sim.shifts(&cal)),
            model.expected(&cal),
            "roster of {cal}"
        );
    }
    assert_eq!(
        queue_state(&settings.amqp.inbound_queue).await.0,
        0,
        "nothing left unacked"
    );
    publisher.close().await;
    collector.cleanup().await;
    sim.shutdown().await;
}

/// The broker closes the worker's connection mid-run: it reconnects,
/// redeclares, consumes again, and nothing is lost or misordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_connection_close_loses_nothing() {
    let app = spawn_app(
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
        app.publisher
            .publish(&change(&id, &cal, &[(&entry.0, &entry.1, &entry.2)]))
            .await;
        model.apply(&cal, &[(&entry.0, &entry.1, &entry.2)]);
        ids.push(id);
        if i == 150 {
            // Wait for some progress, then pull the plug.
            app.collector
                .events_until(WAIT, |e| {
                    e.iter()
                        .filter(|e| e["type"] == "wfm.schedule.import.completed")
                        .count()
                        >= 3
                })
                .await;
            let closed = close_connections_named(&app.worker.instance_id).await;
            assert_eq!(closed, 1, "exactly the app.worker's connection is closed");
        }
    }
    app.collector.wait_completed(&ids, WAIT).await;
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
        queue_state(&app.settings.amqp.inbound_queue).await.0,
        0,
        "every delivery acked after the reconnect"
    );
    finish_test(app.publisher, app.collector, app.sim).await;
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
