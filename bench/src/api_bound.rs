//! Scenario `api-bound`: the simulator is the bottleneck (slow jobs, a rate
//! limit); the worker's drain is set beside the simulator's own limit.

use std::{path::Path, time::Duration};

use cxone_schedule_worker::{
    config::Settings,
    sim::{SimConfig, SimServer},
};
use serde_json::Value;
use tokio::time::Instant;

use crate::{
    api_limit::{JOB_BASE_MS, JOB_PER_ENTRY_MS, RATE_PER_MIN, api_limit},
    args::{BenchArgs, Order},
    broker,
    changes::changes,
    error::BenchError,
    events::Tally,
    report::{self, ApiBoundFigures, ApiBoundPlan},
    topology::Topology,
    worker::Worker,
};

pub async fn run(
    args: &BenchArgs,
    settings: Settings,
    worker_exe: &Path,
) -> Result<Value, BenchError> {
    let plan = ApiBoundPlan {
        n: args.changes.unwrap_or(20_000),
        calendars: args.calendars.unwrap_or(40).max(1),
        order: args.order.unwrap_or(Order::CalendarMajor),
        max_concurrent: args.max_concurrent.unwrap_or(3).max(1),
    };
    let mut topology = Topology::open(settings, "api").await?;
    topology.sorted_keys = args.sorted_keys;
    let result = measure(&plan, args, &mut topology, worker_exe).await;
    topology.cleanup().await;
    result
}

/// Pre-fills the changes, drains them through the worker against the slow
/// simulator; the report.
async fn measure(
    plan: &ApiBoundPlan,
    args: &BenchArgs,
    topology: &mut Topology,
    worker_exe: &Path,
) -> Result<Value, BenchError> {
    let sim = SimServer::start(SimConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        job_base_ms: JOB_BASE_MS,
        job_per_entry_ms: JOB_PER_ENTRY_MS,
        rate_limit_per_min: RATE_PER_MIN,
        ..SimConfig::default()
    })
    .await
    .map_err(BenchError::Sim)?;
    eprintln!(
        "bench: api-bound: pre-filling {} changes over {} calendars",
        plan.n, plan.calendars
    );
    let bodies = changes(
        "a",
        plan.n,
        plan.calendars,
        plan.order,
        topology.sorted_keys,
    );
    topology.prefill_changes(&bodies).await?;
    drop(bodies);
    broker::wait_quiet("worker drain").await;
    let mut extra = vec![
        (
            "CSW__IMPORTS__MAX_CONCURRENT",
            plan.max_concurrent.to_string(),
        ),
        // Told the limit: the worker paces itself instead of learning it from 429s.
        ("CSW__CXONE__MAX_REQUESTS_PER_MIN", RATE_PER_MIN.to_string()),
    ];
    if let Some(p) = args.prefetch {
        extra.push(("CSW__AMQP__PREFETCH", p.to_string()));
    }
    let mut worker = Worker::spawn(worker_exe, topology, &sim, &extra).await?;
    let outcome = drain(plan.n, args.timeout_s, topology, &mut worker).await;
    let exit = worker.stop().await;
    let stats = sim.stats();
    sim.shutdown().await;
    let (ready, drain, tally) = outcome?;
    if tally.failed + tally.rejected > 0 {
        return Err(BenchError::Failures(
            tally.failed + tally.rejected,
            worker.log.clone(),
        ));
    }
    let limit = api_limit(
        plan.n,
        plan.calendars,
        topology.settings.batch.max_entries,
        plan.max_concurrent,
        JOB_BASE_MS,
        JOB_PER_ENTRY_MS,
        RATE_PER_MIN,
    );
    let figures = ApiBoundFigures {
        ready,
        drain,
        imports: tally.imports,
        limit,
        stats,
        exit,
    };
    Ok(report::api_bound(plan, &topology.settings, &figures).await)
}

/// Waits for the worker, then times its drain from readiness to the last
/// `completed` event.
async fn drain(
    n: usize,
    timeout_s: u64,
    topology: &mut Topology,
    worker: &mut Worker,
) -> Result<(Duration, Duration, Tally), BenchError> {
    let ready = worker.wait_ready(Duration::from_secs(60)).await?;
    let t0 = Instant::now();
    let mut tally = Tally::default();
    topology
        .wait_completed(&mut tally, n, "api-bound drain", timeout_s, &worker.log)
        .await?;
    let drain = tally.last_at.unwrap_or_else(Instant::now) - t0;
    Ok((ready, drain, tally))
}
