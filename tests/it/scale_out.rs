//! Several replicas over partitioned queues: one import per calendar at a time
//! across the fleet, fair shares, and a replica's death loses nothing.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::support::*;
use cxone_schedule_worker::{cmd::publish::publish_all, sim::SimConfig};
use indicatif::ProgressBar;
use lapin::options::ConfirmSelectOptions;

/// The replica processes; any still running when the test ends, a failed
/// assertion included, is killed, so none is left consuming from the
/// broker.
struct Replicas(Vec<Child>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for r in &mut self.0 {
            if matches!(r.try_wait(), Ok(None)) {
                let _ = r.kill();
                let _ = r.wait();
            }
        }
    }
}

fn spawn_replica(env: &[(String, String)], id: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cxone-schedule-worker"))
        .arg("run")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("CSW__WORKER__INSTANCE_ID", id)
        .env("CSW__AMQP__PARTITIONS", "12")
        .env("CSW__IMPORTS__MAX_CONCURRENT", "3")
        .env(
            "RUST_LOG",
            "warn,cxone_schedule_worker::pipeline::consumer=info",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("worker binary starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_twelve_partitions_and_survive_a_kill() {
    let sim = sim(SimConfig {
        job_base_ms: 20,
        ..SimConfig::default()
    })
    .await;
    let mut settings = settings("scale", &sim.base_url(), &[("CSW__AMQP__PARTITIONS", "12")]);
    settings.amqp.partitions = 12;
    let mut tap = Tap::new(&settings).await;
    let env = env_of(&settings);
    let ids: Vec<String> = (0..3)
        .map(|i| format!("{}-r{i}", settings.worker.instance_id))
        .collect();
    let mut replicas = Replicas(ids.iter().map(|id| spawn_replica(&env, id)).collect());

    // 10,000 changes over 200 calendars, overlapping within calendars.
    let mut model = RosterModel::default();
    let mut bodies = Vec::new();
    let mut change_ids = Vec::new();
    for i in 0..10_000u32 {
        let cal = format!("cal-{:03}", i % 200);
        let agent = format!("a{}", (i / 200) % 7);
        let start = (i / 1400) % 20;
        let entry = (agent, at(15, start), at(15, start + 1 + i % 3));
        let id = format!("x{i}");
        bodies.push(change(&id, &cal, &[(&entry.0, &entry.1, &entry.2)]));
        model.apply(&cal, &[(&entry.0, &entry.1, &entry.2)]);
        change_ids.push(id);
    }
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    let ch = tap.conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let (first, rest) = refs.split_at(5_000);
    publish_all(
        &ch,
        &settings.amqp.inbound_exchange,
        first,
        0.0,
        &ProgressBar::hidden(),
    )
    .await
    .unwrap();

    // Midway, kill one replica outright.
    tap.events_until(Duration::from_secs(120), |e| {
        e.iter()
            .filter(|e| e["type"] == "wfm.schedule.import.completed")
            .flat_map(|e| {
                e["data"]["changeIds"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .count()
            >= 2_500
    })
    .await;
    replicas.0[0].kill().unwrap();
    replicas.0[0].wait().unwrap();
    publish_all(
        &ch,
        &settings.amqp.inbound_exchange,
        rest,
        0.0,
        &ProgressBar::hidden(),
    )
    .await
    .unwrap();

    tap.wait_completed(&change_ids, Duration::from_secs(240))
        .await;
    let stats = sim.stats();
    assert_eq!(stats.concurrent_calendar_violations, 0, "{stats:?}");
    assert!(tap.events_of("schedule.import.failed").is_empty());
    for cal in model.calendars() {
        assert_eq!(
            actual(&sim.shifts(&cal)),
            model.expected(&cal),
            "roster of {cal}"
        );
    }

    // Fair shares: every replica imported a real part of the work.
    let mut per_replica: HashMap<String, usize> = HashMap::new();
    for e in tap.events_of("schedule.import.completed") {
        *per_replica
            .entry(e["source"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let total: usize = per_replica.values().sum();
    for id in &ids[1..] {
        let n = per_replica
            .get(&format!("/cxone-schedule-worker/{id}"))
            .copied()
            .unwrap_or(0);
        assert!(
            n * 6 >= total,
            "{id} did {n} of {total} imports: {per_replica:?}"
        );
    }

    for r in &mut replicas.0[1..] {
        let _ = Command::new("kill")
            .args(["-TERM", &r.id().to_string()])
            .status();
        let status = r.wait().unwrap();
        assert!(status.success(), "replica exit: {status:?}");
    }
    tap.cleanup().await;
    sim.shutdown().await;
}
