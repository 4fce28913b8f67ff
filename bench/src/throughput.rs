//! Scenario `throughput`: the raw ceiling, the worker's drain of the same
//! number of pre-filled changes, its peak RSS and CPU, CXone requests per
//! change, then publish → `completed` latency at a steady rate.

use cxone_schedule_worker::telemetry::metrics as metric;
use std::{path::Path, time::Duration};

use cxone_schedule_worker::{
    config::Settings,
    sim::{SimConfig, SimServer},
};
use serde_json::Value;
use tokio::time::Instant;

use crate::{
    args::{BenchArgs, Order},
    broker,
    changes::changes,
    error::BenchError,
    events::Tally,
    latency,
    numbers::ms,
    proc_stats::CpuSample,
    raw::{RAW_MESSAGE_BYTES, raw_ceiling},
    report::{self, Drain, ThroughputFigures, ThroughputPlan, WorkerRun},
    topology::Topology,
    worker::{Worker, first_received},
};

pub async fn run(
    args: &BenchArgs,
    settings: Settings,
    worker_exe: &Path,
) -> Result<Value, BenchError> {
    let plan = plan(args, &settings);
    let mut topology = Topology::open(settings, "throughput").await?;
    topology.roll_wal = !args.no_wal_roll;
    topology.sorted_keys = args.sorted_keys;
    let result = measure(&plan, args, &mut topology, worker_exe).await;
    topology.cleanup().await;
    result
}

/// The run's sizes, from the arguments and the scenario's defaults.
fn plan(args: &BenchArgs, settings: &Settings) -> ThroughputPlan {
    let n = args
        .changes
        .unwrap_or(if args.quick { 20_000 } else { 200_000 });
    let calendars = args.calendars.unwrap_or(100).max(1);
    let order = args.order.unwrap_or(Order::Interleaved);
    let max_concurrent = args.max_concurrent.unwrap_or(16).max(1);
    let max_entries = settings.batch.max_entries;
    // The window full batches need for the queue's shape. Interleaved: every
    // calendar's batch fills at once, so C x max_entries held deliveries
    // (when the window is full and nothing is in flight the worker sends
    // them at once: the window trigger). Calendar-major: batches fill one
    // after another, so one per import slot plus the one filling, which is
    // the worker's own default (`amqp.prefetch` = 0).
    let prefetch = args.prefetch.unwrap_or_else(|| {
        let window = match order {
            Order::Interleaved => calendars * max_entries,
            Order::CalendarMajor => max_entries * (max_concurrent + 1),
        };
        window.clamp(1, usize::from(u16::MAX)) as u16
    });
    let latency_s = args
        .latency_seconds
        .unwrap_or(if args.quick { 3.0 } else { 10.0 });
    ThroughputPlan {
        n,
        calendars,
        order,
        max_concurrent,
        max_entries,
        prefetch,
        latency_rate: args.latency_rate,
        latency_n: (args.latency_rate * latency_s).round().max(1.0) as usize,
    }
}

/// Every phase of the scenario on the run's topology; the report.
async fn measure(
    plan: &ThroughputPlan,
    args: &BenchArgs,
    topology: &mut Topology,
    worker_exe: &Path,
) -> Result<Value, BenchError> {
    let raw = if args.skip_raw {
        None
    } else {
        eprintln!(
            "bench: raw ceiling: pre-filling {} messages of {RAW_MESSAGE_BYTES} bytes",
            plan.n
        );
        Some(raw_ceiling(topology, plan.n, args.timeout_s).await?)
    };
    let sim = SimServer::start(SimConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        job_base_ms: 0,
        ..SimConfig::default()
    })
    .await
    .map_err(BenchError::Sim)?;
    let wal_rolled = prefill(plan, topology).await?;
    let extra = [
        (
            "CSW__IMPORTS__MAX_CONCURRENT",
            plan.max_concurrent.to_string(),
        ),
        ("CSW__AMQP__PREFETCH", plan.prefetch.to_string()),
    ];
    let mut worker = Worker::spawn(worker_exe, topology, &sim, &extra).await?;
    let outcome = drain_then_latency(plan, args, topology, &mut worker, &sim).await;
    let stopped = worker.stop().await;
    let final_stats = sim.stats();
    sim.shutdown().await;
    let run = outcome?;
    let failures = run.drain.failures + run.latency.failures;
    if failures > 0 {
        return Err(BenchError::Failures(failures, worker.log.clone()));
    }
    let figures = ThroughputFigures {
        raw,
        wal_rolled,
        worker: run,
        exit: stopped,
        whole_run: final_stats,
    };
    Ok(report::throughput(plan, topology, &figures).await)
}

/// Publishes the worker's changes; returns whether the broker's log was
/// rolled over first.
async fn prefill(plan: &ThroughputPlan, topology: &Topology) -> Result<bool, BenchError> {
    eprintln!(
        "bench: worker drain: pre-filling {} changes over {} calendars",
        plan.n, plan.calendars
    );
    let bodies = changes(
        "d",
        plan.n,
        plan.calendars,
        plan.order,
        topology.sorted_keys,
    );
    let wal_rolled = topology.before_prefill().await;
    topology.prefill_changes(&bodies).await?;
    drop(bodies);
    broker::wait_quiet("worker drain").await;
    Ok(wal_rolled)
}

/// The worker's drain, then the latency phase, on the running worker.
async fn drain_then_latency(
    plan: &ThroughputPlan,
    args: &BenchArgs,
    topology: &mut Topology,
    worker: &mut Worker,
    sim: &SimServer,
) -> Result<WorkerRun, BenchError> {
    let ready = worker.wait_ready(Duration::from_secs(60)).await?;
    eprintln!("bench: worker ready after {} ms; draining", ms(ready));
    let drain = drain(plan, args.timeout_s, topology, worker, sim).await?;
    // What the broker still does after the drain (releasing the settled
    // window, say) is not the steady state the latency phase measures.
    broker::wait_quiet("latency").await;
    eprintln!(
        "bench: latency: publishing {} changes at {} per second",
        plan.latency_n, plan.latency_rate
    );
    let latency = latency::measure(
        topology,
        plan.latency_n,
        plan.calendars,
        plan.latency_rate,
        args.timeout_s,
        &worker.log,
    )
    .await?;
    let rss_end_kb = worker.peak_rss_kb().await;
    Ok(WorkerRun {
        ready,
        drain,
        latency,
        rss_end_kb,
    })
}

/// Times the drain of the pre-filled changes from the worker's first
/// delivery to the last `completed` event, and takes its readings.
async fn drain(
    plan: &ThroughputPlan,
    timeout_s: u64,
    topology: &mut Topology,
    worker: &Worker,
    sim: &SimServer,
) -> Result<Drain, BenchError> {
    let t0 = Instant::now();
    let first_out = tokio::spawn(first_received(worker.port, Duration::from_secs(timeout_s)));
    let cpu0 = CpuSample::take(Some(worker.pid)).await;
    let mut tally = Tally::default();
    topology
        .wait_completed(&mut tally, plan.n, "drain", timeout_s, &worker.log)
        .await?;
    let end = tally.last_at.unwrap_or_else(Instant::now);
    // Without a first delivery seen (the worker's metrics did not answer),
    // the drain is timed from readiness and says so.
    let first_out = first_out.await.ok().flatten();
    let cpu = CpuSample::take(Some(worker.pid)).await.since(&cpu0);
    let stats = sim.stats();
    let rss_kb = worker.peak_rss_kb().await;
    Ok(Drain {
        from_first_delivery: end - first_out.unwrap_or(t0),
        from_ready: end - t0,
        first_delivery: first_out.map(|f| f - t0),
        cpu,
        stats,
        imports: tally.imports,
        failures: tally.failed + tally.rejected,
        rss_kb,
        acks: worker.counters(metric::ACKS_SENT_TOTAL, "kind").await,
        pace: worker.counters(metric::ACK_PACE_CHANGES_TOTAL, "to").await,
        closed: worker
            .counters(metric::BATCHES_CLOSED_TOTAL, "trigger")
            .await,
    })
}
