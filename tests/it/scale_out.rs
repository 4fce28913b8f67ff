//! Several replicas over partitioned queues: one import per calendar at a time
//! across the fleet, fair shares, and a replica's death loses nothing.

use std::{collections::HashMap, time::Duration};

use crate::support::*;
use cxone_schedule_worker::sim::SimConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_twelve_partitions_and_survive_a_kill() {
    let sim = sim(SimConfig {
        job_base_ms: 20,
        ..SimConfig::default()
    })
    .await;
    let mut settings = settings("scale", &sim.base_url(), &[("CSW__AMQP__PARTITIONS", "12")]);
    settings.amqp.partitions = 12;
    let publisher = Publisher::new(&settings).await;
    let collector = Collector::start(&settings).await;
    let ids: Vec<String> = (0..3)
        .map(|i| format!("{}-r{i}", settings.worker.instance_id))
        .collect();
    // Any replica still running when the test ends, a failed assertion
    // included, is killed on drop, so none is left consuming.
    let mut replicas: Vec<WorkerProc> = ids
        .iter()
        .map(|id| {
            let env = worker_env(
                &settings,
                &[
                    ("CSW__WORKER__INSTANCE_ID", id.clone()),
                    ("CSW__AMQP__PARTITIONS", "12".into()),
                    ("CSW__IMPORTS__MAX_CONCURRENT", "3".into()),
                ],
            );
            WorkerProc::spawn(
                &env,
                &log_path(&format!("scale-{id}")),
                "warn,cxone_schedule_worker::pipeline::source=info",
            )
        })
        .collect();

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
    let (first, rest) = bodies.split_at(5_000);
    publisher.publish_bodies(first).await;

    // Midway, kill one replica outright.
    collector
        .events_until(Duration::from_secs(120), |e| {
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
    replicas[0].kill9();
    publisher.publish_bodies(rest).await;

    collector
        .wait_completed(&change_ids, Duration::from_secs(240))
        .await;
    let stats = sim.stats();
    assert_eq!(stats.concurrent_calendar_violations, 0, "{stats:?}");
    assert!(collector.events_of("schedule.import.failed").is_empty());
    for cal in model.calendars() {
        assert_eq!(
            actual(&sim.shifts(&cal)),
            model.expected(&cal),
            "roster of {cal}"
        );
    }

    // Fair shares: every replica imported a real part of the work.
    let mut per_replica: HashMap<String, usize> = HashMap::new();
    for e in collector.events_of("schedule.import.completed") {
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

    for r in &mut replicas[1..] {
        r.sigterm();
        let status = r.wait_exit(Duration::from_secs(120)).await.unwrap();
        assert!(status.success(), "replica exit: {status:?}");
    }
    publisher.close().await;
    collector.cleanup().await;
    sim.shutdown().await;
}
