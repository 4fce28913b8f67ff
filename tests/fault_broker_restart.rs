//! Fault injection: the broker restarts mid-run (`rabbitmqctl stop_app`, then
//! `start_app`), and later the worker's connections are force-closed through
//! the management API. Nothing is lost, the roster is exact.
//!
//! This is the only test of this file: it takes the broker away from every
//! other test, and CI runs test binaries one after another. It always leaves
//! the broker running (a guard starts the app again even if the test fails).

#[path = "it/support/mod.rs"]
mod support;

use std::time::Duration;

use cxone_schedule_worker::sim::SimConfig;
use support::*;
use tokio::time::Instant;

/// Starts the broker's application again on drop, so a failing test never
/// leaves the broker stopped for the test binaries after it.
struct BrokerGuard;

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
    }
}

/// Waits until the broker accepts AMQP connections again.
async fn wait_broker_up(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if lapin::Connection::connect(&support::amqp_url(), Default::default())
            .await
            .is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the broker did not come back within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_and_forced_close_lose_nothing() {
    let started = Instant::now();
    let sim = sim(SimConfig {
        job_base_ms: 50,
        ..fast_sim()
    })
    .await;
    let settings = settings(
        "brokerrestart",
        &sim.base_url(),
        &[("CSW__BATCH__MAX_ENTRIES", "50")],
    );
    let collector = Collector::start(&settings).await;
    let publisher = Publisher::new(&settings).await;
    let plan = workload(4, 2500, 80, 40);
    let valid = plan.iter().filter(|c| c.rejection.is_none()).count();
    publisher.publish_all(&plan).await;
    publisher.close().await;
    let env = worker_env(&settings, &[]);
    let log = log_path("brokerrestart");
    let mut worker = WorkerProc::spawn(&env, &log, "warn");

    collector
        .wait_until(
            Duration::from_secs(60),
            |s| completed_count(s) >= valid / 5,
            |s| format!("progress before the restart: {}", completed_count(s)),
        )
        .await;
    let guard = BrokerGuard;
    let down = Instant::now();
    rabbitmqctl(&["stop_app"]);
    // The outage itself: a fault's duration, not synchronisation.
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbitmqctl(&["start_app"]);
    drop(guard);
    wait_broker_up(Duration::from_secs(60)).await;
    let outage = down.elapsed();
    wait_for_consumer(&settings.amqp.inbound_queue, Duration::from_secs(60)).await;
    assert!(worker.running(), "worker died: {}", worker.log_tail(20));

    let after_restart = completed_count(&collector.seen.lock().unwrap());
    collector
        .wait_until(
            Duration::from_secs(60),
            |s| completed_count(s) >= after_restart + valid / 10,
            |s| format!("progress after the restart: {}", completed_count(s)),
        )
        .await;
    let closed = close_connections_named(&settings.worker.instance_id).await;
    assert!(closed >= 1, "the worker's connection was listed and closed");

    wait_settled_and_drained(
        &collector,
        &plan,
        &settings.amqp.inbound_queue,
        false,
        SETTLE,
    )
    .await;
    assert!(worker.running(), "worker died: {}", worker.log_tail(20));
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(40)).await.unwrap();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    assert_eq!(queue_state(&settings.amqp.inbound_queue).await.0, 0);
    let report = verdict(&plan, &collector.seen.lock().unwrap(), &sim, false);
    println!(
        "FAULT broker-restart: outage={outage:?} forced_closes={closed} {report:?} sim={:?} elapsed={:?}",
        sim.stats(),
        started.elapsed()
    );
    collector.cleanup().await;
    sim.shutdown().await;
}
