//! A fleet of replica processes over 12 partitions while the fleet changes
//! under load: scale-up, a rolling update, scale-down. Every hand-over of a
//! partition must be exclusive: the simulator counts an import posted for a
//! calendar that has one running (it allows it, so a race also shows in the
//! rosters), and each calendar's final roster must equal the independent
//! model applied in publish order. Each scenario runs several rounds.

use std::time::Duration;

use crate::support::*;
use cxone_schedule_worker::sim::{ConcurrentCalendar, SimConfig};

/// Rounds of each scenario; every one must pass.
const ROUNDS: u64 = 3;
const PARTITIONS: &str = "12";

/// One round's fleet: the simulator, the topology, the event collector,
/// the publisher and the replica processes (killed on drop).
struct Fleet {
    name: String,
    sim: cxone_schedule_worker::sim::SimServer,
    settings: cxone_schedule_worker::config::Settings,
    collector: Collector,
    publisher: Publisher,
    replicas: Vec<Option<WorkerProc>>,
    /// How many processes were started, for unique instance ids and logs.
    started: usize,
}

impl Fleet {
    async fn start(name: &str) -> Fleet {
        let sim = sim(SimConfig {
            job_base_ms: 10,
            // Counted, and let through: a concurrent import then also shows
            // as a wrong roster, as it would on CXone.
            concurrent_calendar: ConcurrentCalendar::Allow,
            ..SimConfig::default()
        })
        .await;
        let mut settings = settings(name, &sim.base_url(), &[]);
        settings.amqp.partitions = 12;
        let publisher = Publisher::new(&settings).await;
        let collector = Collector::start(&settings).await;
        Fleet {
            name: name.to_owned(),
            sim,
            settings,
            collector,
            publisher,
            replicas: Vec::new(),
            started: 0,
        }
    }

    /// Starts a replica process in slot `slot` (a new slot past the end).
    fn spawn(&mut self, slot: usize) {
        self.spawn_with(slot, &[]);
    }

    /// [`Fleet::spawn`] with more environment.
    fn spawn_with(&mut self, slot: usize, extra: &[(&str, String)]) {
        let id = format!("{}-p{}", self.settings.worker.instance_id, self.started);
        self.started += 1;
        let mut env = vec![
            ("CSW__WORKER__INSTANCE_ID", id.clone()),
            ("CSW__AMQP__PARTITIONS", PARTITIONS.into()),
            ("CSW__IMPORTS__MAX_CONCURRENT", "8".into()),
        ];
        env.extend_from_slice(extra);
        let env = worker_env(&self.settings, &env);
        let proc = WorkerProc::spawn(
            &env,
            &log_path(&format!("{}-{id}", self.name)),
            "warn,cxone_schedule_worker::pipeline::source=info",
        );
        if slot == self.replicas.len() {
            self.replicas.push(Some(proc));
        } else {
            self.replicas[slot] = Some(proc);
        }
    }

    /// SIGTERM to the replica in `slot`; waits for its clean exit.
    async fn stop(&mut self, slot: usize) {
        let mut proc = self.replicas[slot].take().expect("a running replica");
        proc.sigterm();
        let status = proc
            .wait_exit(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", proc.log_tail(30)));
        assert!(
            status.success(),
            "exit after SIGTERM: {status:?}\n{}",
            proc.log_tail(30)
        );
    }

    /// Waits until at least `n` changes completed.
    async fn completed_at_least(&self, n: usize, plan: &[Planned]) {
        self.collector
            .wait_until(
                SETTLE,
                |s| completed_count(s) >= n,
                |s| describe_missing(plan, s, false),
            )
            .await;
    }

    /// Every change settled, then the fleet stops; the exact verdict, with
    /// no concurrent import, no re-import and no duplicate event (no
    /// replica crashed).
    async fn judge(self, plan: &[Planned], round: u64) {
        self.judge_after(plan, round, false).await;
    }

    /// [`Fleet::judge`]; after a lost connection (`crashed`) re-imports
    /// and duplicate events are allowed, concurrent imports are not.
    async fn judge_after(mut self, plan: &[Planned], round: u64, crashed: bool) {
        self.collector
            .wait_until(
                SETTLE,
                |s| all_settled(plan, s, false),
                |s| describe_missing(plan, s, false),
            )
            .await;
        for slot in 0..self.replicas.len() {
            if self.replicas[slot].is_some() {
                self.stop(slot).await;
            }
        }
        // The topology goes whatever the verdict, so a failing round leaves
        // nothing on the broker.
        let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.verdict(plan, round, crashed)
        }));
        self.publisher.close().await;
        self.collector.cleanup().await;
        self.sim.shutdown().await;
        if let Err(failure) = verdict {
            std::panic::resume_unwind(failure);
        }
    }

    /// The counts and the exact verdict; see [`Fleet::judge_after`].
    fn verdict(&self, plan: &[Planned], round: u64, crashed: bool) {
        let stats = self.sim.stats();
        let seen = self.collector.seen();
        let wrong: Vec<String> = {
            let o = outcomes(&seen);
            let mut model = RosterModel::default();
            for c in plan.iter().filter(|c| o.completed_jobs.contains_key(&c.id)) {
                let refs: Vec<(&str, &str, &str)> = c
                    .entries
                    .iter()
                    .map(|(a, s, e)| (a.as_str(), s.as_str(), e.as_str()))
                    .collect();
                model.apply(&c.calendar, &refs);
            }
            model
                .calendars()
                .into_iter()
                .filter(|cal| actual(&self.sim.shifts(cal)) != model.expected(cal))
                .collect()
        };
        eprintln!(
            "{} round {round}: {} concurrent imports of one calendar, {} of {} calendars with a wrong roster",
            self.name,
            stats.concurrent_calendar_violations,
            wrong.len(),
            plan.iter()
                .map(|c| &c.calendar)
                .collect::<std::collections::HashSet<_>>()
                .len()
        );
        assert_eq!(
            stats.concurrent_calendar_violations,
            0,
            "{} round {round}: concurrent imports of one calendar ({} wrong rosters: {:?}); {stats:?}",
            self.name,
            wrong.len(),
            wrong.iter().take(5).collect::<Vec<_>>()
        );
        let report = verdict(plan, &seen, &self.sim, false);
        if crashed {
            return;
        }
        assert_eq!(
            report.reimports, 0,
            "{} round {round}: {report:?}",
            self.name
        );
        assert_eq!(
            report.duplicate_events, 0,
            "{} round {round}: {report:?}",
            self.name
        );
    }
}

/// 1 replica under load, 2 more join once a fifth of the changes completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_under_load_hands_partitions_over_exclusively() {
    for round in 0..ROUNDS {
        let mut fleet = Fleet::start("fleet-up").await;
        let plan = workload(100 + round, 10_000, 100, 0);
        fleet.spawn(0);
        fleet.publisher.publish_all(&plan).await;
        fleet.completed_at_least(plan.len() / 5, &plan).await;
        fleet.spawn(1);
        fleet.spawn(2);
        fleet.judge(&plan, round).await;
    }
}

/// 3 replicas; each in turn gets SIGTERM and is started again while the
/// backlog drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_under_load_hands_partitions_over_exclusively() {
    for round in 0..ROUNDS {
        let mut fleet = Fleet::start("fleet-roll").await;
        let plan = workload(200 + round, 8_000, 100, 0);
        for slot in 0..3 {
            fleet.spawn(slot);
        }
        fleet.publisher.publish_all(&plan).await;
        for slot in 0..3 {
            fleet
                .completed_at_least(plan.len() * (1 + 2 * slot) / 8, &plan)
                .await;
            fleet.stop(slot).await;
            fleet.spawn(slot);
        }
        fleet.judge(&plan, round).await;
    }
}

/// 3 replicas; one leaves with SIGTERM under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_under_load_hands_partitions_over_exclusively() {
    for round in 0..ROUNDS {
        let mut fleet = Fleet::start("fleet-down").await;
        let plan = workload(300 + round, 8_000, 100, 0);
        for slot in 0..3 {
            fleet.spawn(slot);
        }
        fleet.publisher.publish_all(&plan).await;
        fleet.completed_at_least(plan.len() / 4, &plan).await;
        fleet.stop(0).await;
        fleet.judge(&plan, round).await;
    }
}

/// 3 replicas; one is paused (SIGSTOP) under load for longer than the
/// membership expiry, and the broker closes its connection meanwhile (as
/// its heartbeat timeout would) and hands its partitions on; when it
/// resumes, it must not post what it took before the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_fences_itself() {
    let mut fleet = Fleet::start("fleet-pause").await;
    let plan = workload(400, 6_000, 100, 0);
    fleet.spawn(0);
    let paused_id = format!("{}-p0", fleet.settings.worker.instance_id);
    fleet.spawn(1);
    fleet.spawn(2);
    fleet.publisher.publish_all(&plan).await;
    fleet.completed_at_least(plan.len() / 4, &plan).await;
    let paused = fleet.replicas[0].as_ref().unwrap();
    signal(paused.pid(), "-STOP");
    let paused_at = tokio::time::Instant::now();
    assert_eq!(close_connections_named(&paused_id).await, 1);
    // Resume once the others took the paused replica's partitions over and
    // the pause outlasted the membership expiry (3.5 s).
    let at = completed_count(&fleet.collector.seen());
    fleet
        .collector
        .wait_until(
            SETTLE,
            |s| {
                completed_count(s) >= at + plan.len() / 8
                    && paused_at.elapsed() > Duration::from_secs(5)
            },
            |s| describe_missing(&plan, s, false),
        )
        .await;
    signal(paused.pid(), "-CONT");
    let log = paused.log.clone();
    fleet.judge_after(&plan, 0, true).await;
    let log = std::fs::read_to_string(log).unwrap_or_default();
    // On resuming, either the fence closed first or lapin saw the closed
    // connection first; either way what it took before the pause is left.
    assert!(
        log.contains("own heartbeat not heard back")
            || log.contains("connection lost")
            || log.contains("broker unavailable"),
        "the paused replica noticed it may no longer own its partitions"
    );
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "could not signal the worker");
}
