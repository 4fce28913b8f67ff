//! The broker-side control plane is not trusted blindly (docs/contract.md
//! §11): relayed webhook notices settle nothing unless CXone's signature
//! verifies, and membership heartbeats that are forged or replayed move no
//! partition.

use std::{net::SocketAddr, time::Duration};

use crate::support::*;
use cxone_schedule_worker::{
    amqp,
    cxone::{JobStatus, webhook},
    pipeline::source::partitions::owner,
    sim::SimConfig,
};
use lapin::{
    BasicProperties, Channel,
    options::{BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::{Value, json};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(60);
/// Longer than a replica's membership expiry (3.5 s): a forged heartbeat
/// that were believed would have moved partitions within it.
const HOLD: Duration = Duration::from_secs(6);
const PARTITIONS: u16 = 6;

async fn publish(ch: &Channel, exchange: &str, body: &[u8], props: BasicProperties) {
    ch.basic_publish(
        exchange.into(),
        "".into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// The value of a counter series whose labels include every `labels` pair.
async fn counter(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn job_of(event: &Value) -> String {
    event["data"]["jobId"].as_str().unwrap().to_owned()
}

/// Forged COMPLETED and FAILED notices for jobs in flight, published straight
/// to the relay exchange (unsigned and wrongly signed), settle nothing: each
/// import ends as CXone decided, once CXone decided. A notice with CXone's
/// valid signature still settles its import at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_relay_notices_settle_no_import() {
    let secret = unique("webhook-secret");
    let sim = sim(SimConfig {
        job_base_ms: 3000,
        ..SimConfig::default()
    })
    .await;
    let settings = settings(
        "relay",
        &sim.base_url(),
        &[("CXONE_WEBHOOK_SECRET", secret.as_str())],
    );
    let collector = Collector::start(&settings).await;
    let publisher = Publisher::new(&settings).await;
    let worker = cxone_schedule_worker::app::start(settings.clone())
        .await
        .expect("the worker starts");
    let app = TestApp {
        sim,
        settings,
        publisher,
        collector,
        worker,
    };
    let ids = ["forged-ok", "forged-fail"];
    for (i, id) in ids.iter().enumerate() {
        let cal = format!("cal-{i}");
        app.publisher
            .publish(&change(id, &cal, &[("a1", &at(10, 9), &at(10, 10))]))
            .await;
    }
    app.collector
        .events_until(WAIT, |e| {
            e.iter()
                .filter(|e| e["type"] == "wfm.schedule.import.submitted")
                .count()
                >= 2
        })
        .await;
    let jobs: Vec<String> = app
        .collector
        .events_of("schedule.import.submitted")
        .iter()
        .map(job_of)
        .collect();
    let relay = amqp::webhook_relay_exchange_name(&app.settings.amqp);
    let conn = broker().await;
    let ch = conn.create_channel().await.unwrap();
    for (job, status) in jobs.iter().zip(["COMPLETED", "FAILED"]) {
        assert!(
            app.sim.job_status(job).is_some_and(|s| !s.is_terminal()),
            "the job must still be in flight when the forgery arrives"
        );
        let body = serde_json::to_vec(&json!({
            "eventType": webhook::EVENT_IMPORT_COMPLETED,
            "jobId": job,
            "status": status,
        }))
        .unwrap();
        // Unsigned, then signed with a guessed secret.
        publish(&ch, &relay, &body, BasicProperties::default()).await;
        let mut headers = FieldTable::default();
        headers.insert(
            webhook::SIGNATURE_HEADER.into(),
            long_string(&webhook::sign(b"guessed", &body)),
        );
        publish(
            &ch,
            &relay,
            &body,
            BasicProperties::default().with_headers(headers),
        )
        .await;
    }
    // Every settled import must be one CXone had finished when it was evented.
    let deadline = Instant::now() + WAIT;
    loop {
        let settled: Vec<Value> = app
            .collector
            .events()
            .into_iter()
            .filter(|e| {
                e["type"] == "wfm.schedule.import.completed"
                    || e["type"] == "wfm.schedule.import.failed"
            })
            .collect();
        for e in &settled {
            assert_eq!(
                app.sim.job_status(&job_of(e)),
                Some(JobStatus::Completed),
                "an import was settled before CXone finished it: {e}"
            );
        }
        if settled.len() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "imports never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut completed = app.collector.change_ids_in("schedule.import.completed");
    completed.sort();
    assert_eq!(completed, ["forged-fail", "forged-ok"]);
    assert!(app.collector.events_of("schedule.import.failed").is_empty());
    let rejected = counter(
        app.worker.http_addr,
        "csw_control_messages_rejected_total",
        &[("kind", "webhook_relay")],
    )
    .await;
    assert!(rejected >= 4.0, "forged notices not counted: {rejected}");

    // The same notice signed with the real secret is CXone's word: it
    // settles the import at once, while the job would still run for seconds.
    app.publisher
        .publish(&change(
            "genuine",
            "cal-2",
            &[("a1", &at(10, 9), &at(10, 10))],
        ))
        .await;
    app.collector
        .events_until(WAIT, |e| {
            e.iter()
                .filter(|e| e["type"] == "wfm.schedule.import.submitted")
                .count()
                >= 3
        })
        .await;
    let job = job_of(&app.collector.events_of("schedule.import.submitted")[2]);
    let body = serde_json::to_vec(&json!({
        "eventType": webhook::EVENT_IMPORT_COMPLETED,
        "jobId": job,
        "status": "COMPLETED",
    }))
    .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        webhook::SIGNATURE_HEADER.into(),
        long_string(&webhook::sign(secret.as_bytes(), &body)),
    );
    publish(
        &ch,
        &relay,
        &body,
        BasicProperties::default().with_headers(headers),
    )
    .await;
    app.collector
        .wait_completed(&["genuine".into()], WAIT)
        .await;
    assert!(
        app.sim.job_status(&job).is_some_and(|s| !s.is_terminal()),
        "the signed notice should have settled the import before polling could"
    );
    let _ = conn.close(200, "bye".into()).await;
    app.finish().await;
}

/// A free local port for a worker's HTTP listener.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Consumers of every partition queue, in order.
async fn consumers(settings: &cxone_schedule_worker::config::Settings) -> Vec<u32> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        out.push(
            queue_state(&amqp::partition_queue_name(&settings.amqp, p))
                .await
                .1,
        );
    }
    out
}

async fn owned(addrs: &[SocketAddr]) -> f64 {
    let mut sum = 0.0;
    for a in addrs {
        let text = reqwest::get(format!("http://{a}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sum += text
            .lines()
            .filter(|l| l.starts_with("csw_partitions_owned"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    sum
}

/// Waits until every partition has exactly one consumer and the replicas
/// at `addrs` own all partitions between them.
async fn settled(settings: &cxone_schedule_worker::config::Settings, addrs: &[SocketAddr]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let c = consumers(settings).await;
        if c.iter().all(|&n| n == 1) && owned(addrs).await == f64::from(PARTITIONS) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions never settled: consumers {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `forge()` every 250 ms for [`HOLD`], checking all the while
/// that every partition keeps exactly one consumer.
async fn hold_under(
    ch: &Channel,
    exchange: &str,
    settings: &cxone_schedule_worker::config::Settings,
    addrs: &[SocketAddr],
    forge: impl Fn() -> Vec<Vec<u8>>,
) {
    let end = Instant::now() + HOLD;
    while Instant::now() < end {
        for body in forge() {
            publish(ch, exchange, &body, BasicProperties::default()).await;
        }
        let c = consumers(settings).await;
        let owned = owned(addrs).await;
        assert!(
            c.iter().all(|&n| n == 1) && owned == f64::from(PARTITIONS),
            "a forged heartbeat moved a partition: consumers {c:?}, owned by the replicas {owned}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A replica id that, if believed, would own at least two partitions
/// beside `members`, so a ghost that were admitted could not go unnoticed.
fn greedy_ghost(members: &[String]) -> String {
    loop {
        let ghost = unique("ghost");
        let all: Vec<&str> = members
            .iter()
            .map(String::as_str)
            .chain([ghost.as_str()])
            .collect();
        let taken = (0..PARTITIONS)
            .filter(|p| owner(all.iter().copied(), *p) == Some(ghost.as_str()))
            .count();
        if taken >= 2 {
            return ghost;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Takes one genuine, not-leaving heartbeat of `instance` from `queue`.
async fn capture(ch: &Channel, queue: &str, instance: &str) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let hb: Value = serde_json::from_slice(&m.delivery.data).unwrap();
            if hb["instance"] == instance && hb["leaving"] == false {
                return m.delivery.data.clone();
            }
            continue;
        }
        assert!(Instant::now() < deadline, "no heartbeat of {instance}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Heartbeats with a bad MAC (a ghost replica joining, a live one "leaving")
/// and the replay of a captured genuine heartbeat of a replica that has
/// left: no partition loses its consumer or goes to a ghost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_heartbeats_move_no_partition() {
    let sim = sim(fast_sim()).await;
    let partitions = PARTITIONS.to_string();
    let settings = settings(
        "members",
        &sim.base_url(),
        &[("CSW__AMQP__PARTITIONS", partitions.as_str())],
    );
    let publisher = Publisher::new(&settings).await;
    let collector = Collector::start(&settings).await;
    let members = amqp::members_exchange_name(&settings.amqp);
    let conn = broker().await;
    let ch = conn.create_channel().await.unwrap();
    let capture_queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        capture_queue.name().clone(),
        members.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let ids: Vec<String> = (0..3)
        .map(|i| format!("{}-r{i}", settings.worker.instance_id))
        .collect();
    let mut replicas: Vec<WorkerProc> = ids
        .iter()
        .zip(&addrs)
        .map(|(id, addr)| {
            let env = worker_env(
                &settings,
                &[
                    ("CSW__WORKER__INSTANCE_ID", id.clone()),
                    ("CSW__AMQP__PARTITIONS", partitions.clone()),
                    ("CSW__HTTP__LISTEN", addr.to_string()),
                ],
            );
            WorkerProc::spawn(&env, &log_path(&format!("control-{id}")), "info")
        })
        .collect();
    settled(&settings, &addrs).await;

    // A ghost joining and a live replica "leaving", under a guessed key.
    let ghost = greedy_ghost(&ids);
    let live = ids[0].clone();
    hold_under(&ch, &members, &settings, &addrs, || {
        let t = now_ms();
        [(&ghost, false), (&live, true)]
            .iter()
            .map(|(instance, leaving)| {
                serde_json::to_vec(&json!({
                    "instance": instance,
                    "leaving": leaving,
                    "sent_at_ms": t,
                    "seq": t * 1000,
                    "mac": "00".repeat(32),
                }))
                .unwrap()
            })
            .collect()
    })
    .await;
    for addr in &addrs {
        let bad = counter(
            *addr,
            "csw_control_messages_rejected_total",
            &[("kind", "heartbeat"), ("reason", "bad_mac")],
        )
        .await;
        assert!(bad >= 2.0, "forged heartbeats not counted at {addr}: {bad}");
    }

    // A genuine heartbeat of the third replica, replayed after it left.
    let leaver = ids[2].clone();
    let captured = capture(&ch, capture_queue.name().as_str(), &leaver).await;
    replicas[2].sigterm();
    replicas[2].wait_exit(WAIT).await.expect("the leaver exits");
    let staying = &addrs[..2];
    settled(&settings, staying).await;
    hold_under(&ch, &members, &settings, staying, || vec![captured.clone()]).await;
    for addr in staying {
        let replayed = counter(
            *addr,
            "csw_control_messages_rejected_total",
            &[("kind", "heartbeat"), ("reason", "replayed")],
        )
        .await;
        assert!(replayed >= 1.0, "replays not counted at {addr}: {replayed}");
    }

    for r in &replicas[..2] {
        r.sigterm();
    }
    for r in &mut replicas[..2] {
        r.wait_exit(WAIT).await.expect("a replica exits");
    }
    let _ = conn.close(200, "bye".into()).await;
    finish_test(publisher, collector, sim).await;
}
