//! The JSON report: every figure a run measured, how it was measured, and
//! which targets it met.

use std::time::Duration;

use cxone_schedule_worker::{config::Settings, sim::SimStats};
use serde_json::{Map, Value, json};

use crate::{
    api_limit::{JOB_BASE_MS, JOB_PER_ENTRY_MS, Limit, RATE_PER_MIN},
    args::Order,
    broker,
    latency::Latency,
    numbers::{ms, round1, round3, round6},
    raw::{RAW_ACK_EVERY, RAW_MESSAGE_BYTES, RAW_PREFETCH, Raw},
    topology::Topology,
};

/// The throughput scenario's sizes.
pub struct ThroughputPlan {
    pub n: usize,
    pub calendars: usize,
    pub order: Order,
    pub max_concurrent: usize,
    pub max_entries: usize,
    pub prefetch: u16,
    pub latency_rate: f64,
    pub latency_n: usize,
}

/// The worker's drain of the pre-filled changes.
pub struct Drain {
    /// From the worker's first delivery (or readiness) to the last completion.
    pub from_first_delivery: Duration,
    pub from_ready: Duration,
    /// From readiness to the first delivery, when it was seen.
    pub first_delivery: Option<Duration>,
    /// `cpuDuringDrain`.
    pub cpu: Value,
    /// The simulator's counters at the drain's end.
    pub stats: SimStats,
    pub imports: usize,
    /// Changes failed or rejected.
    pub failures: usize,
    pub rss_kb: Option<u64>,
    pub acks: Map<String, Value>,
    pub pace: Map<String, Value>,
    pub closed: Map<String, Value>,
}

/// The running worker's phases.
pub struct WorkerRun {
    pub ready: Duration,
    pub drain: Drain,
    pub latency: Latency,
    pub rss_end_kb: Option<u64>,
}

/// Everything the throughput scenario measured.
pub struct ThroughputFigures {
    pub raw: Option<Raw>,
    pub wal_rolled: bool,
    pub worker: WorkerRun,
    /// How the worker exited.
    pub exit: Value,
    /// The simulator's counters over the whole run.
    pub whole_run: SimStats,
}

/// `batch.max_wait_ms`, the latency target's base.
fn batch_max_wait_ms(settings: &Settings) -> u64 {
    u64::try_from(settings.batch.max_wait.as_millis()).unwrap_or(u64::MAX)
}

/// The throughput scenario's report.
pub async fn throughput(
    plan: &ThroughputPlan,
    topology: &Topology,
    f: &ThroughputFigures,
) -> Value {
    let settings = &topology.settings;
    let w = &f.worker;
    let worker_rate = plan.n as f64 / w.drain.from_first_delivery.as_secs_f64();
    let ratio = f.raw.as_ref().map(|r| worker_rate / r.rate);
    let rss_mb = w.drain.rss_kb.map(|kb| kb as f64 / 1024.0);
    json!({
        "scenario": "throughput",
        "machine": machine(settings).await,
        "queueType": settings.amqp.queue_type.as_str(),
        "changes": plan.n,
        "calendars": plan.calendars,
        "publishOrder": plan.order.name(),
        "sortedKeys": topology.sorted_keys,
        "raw": f.raw.as_ref().map(|r| raw_section(plan.n, r)),
        "worker": worker_section(plan, settings, f, worker_rate),
        "ratio": ratio.map(round3),
        "cpuDuringDrain": w.drain.cpu,
        "acksSentDuringDrain": w.drain.acks,
        "ackPaceChangesDuringDrain": w.drain.pace,
        "batchesClosedDuringDrain": w.drain.closed,
        "rss": {
            "peakMbDuringDrain": rss_mb.map(round1),
            "peakMbWholeRun": w.rss_end_kb.map(|kb| round1(kb as f64 / 1024.0)),
            "how": "the worker runs as a child process (the cxone-schedule-worker binary beside the benchmark's, `run`); VmHWM from /proc/<pid>/status, read after the drain and again before SIGTERM",
        },
        "cxone": cxone_section(plan.n, &w.drain.stats, &f.whole_run),
        "latency": {
            "ratePerSecond": plan.latency_rate,
            "changes": plan.latency_n,
            "p50Ms": w.latency.p50,
            "p99Ms": w.latency.p99,
            "maxMs": w.latency.max,
            "batchMaxWaitMs": batch_max_wait_ms(settings),
        },
        "workerExit": f.exit,
        "targets": {
            "drainRatioAtLeast0.8": ratio.map(|r| r >= 0.8),
            "peakRssAtMost64Mb": rss_mb.map(|m| m <= 64.0),
            "requestsPerChangeAtMost1Per400": requests_per_change(plan.n, &w.drain.stats) <= 1.0 / 400.0,
            "p99AtMostMaxWaitPlus150Ms": w.latency.p99.map(|p| p <= batch_max_wait_ms(settings) + 150),
        },
    })
}

fn raw_section(n: usize, r: &Raw) -> Value {
    json!({
        "messages": n,
        "messageBytes": RAW_MESSAGE_BYTES,
        "prefetch": RAW_PREFETCH,
        "ackEvery": RAW_ACK_EVERY,
        "seconds": round3(r.seconds),
        "perSecond": r.rate.round(),
        "firstDeliveryMs": ms(r.first_delivery),
        "walRolledBeforePrefill": r.wal_rolled,
        "machineStolenSeconds": r.stolen_seconds,
        "brokerCpuSeconds": r.broker_seconds,
        "how": "from the first delivery to the last; firstDeliveryMs is from basic.consume; machineStolenSeconds is the CPU time the hypervisor gave to other guests from basic.consume to the last delivery (steal in /proc/stat, all CPUs), null where it cannot be read; brokerCpuSeconds is the user + system CPU time of the local beam.smp over the same span (null when there is none), to set beside cpuDuringDrain.brokerSeconds",
    })
}

fn worker_section(
    plan: &ThroughputPlan,
    settings: &Settings,
    f: &ThroughputFigures,
    worker_rate: f64,
) -> Value {
    let w = &f.worker;
    json!({
        "changes": plan.n,
        "startupMs": ms(w.ready),
        "seconds": round3(w.drain.from_first_delivery.as_secs_f64()),
        "perSecond": worker_rate.round(),
        "firstDeliveryMs": w.drain.first_delivery.map(ms),
        "secondsFromReady": round3(w.drain.from_ready.as_secs_f64()),
        "perSecondFromReady": (plan.n as f64 / w.drain.from_ready.as_secs_f64()).round(),
        "walRolledBeforePrefill": f.wal_rolled,
        "how": "from the worker's first delivery to the last completion event (from /readyz when firstDeliveryMs is null); firstDeliveryMs is from the worker's readiness (its consumer starting) to its first delivery, the FromReady figures include it",
        "imports": w.drain.imports,
        "prefetch": plan.prefetch,
        "maxConcurrent": plan.max_concurrent,
        "threads": settings.worker.threads,
        "ackChunk": settings.amqp.ack_chunk,
        "batchMaxEntries": plan.max_entries,
        "simJobMs": 0,
        "completion": "webhook (polling as the fallback)",
    })
}

/// CXone requests of every kind per change drained.
fn requests_per_change(n: usize, stats: &SimStats) -> f64 {
    requests(stats) as f64 / n as f64
}

fn requests(stats: &SimStats) -> u64 {
    stats.token_requests + stats.import_requests + stats.job_requests
}

fn cxone_section(n: usize, drain: &SimStats, whole_run: &SimStats) -> Value {
    json!({
        "tokenRequests": drain.token_requests,
        "importRequests": drain.import_requests,
        "jobRequests": drain.job_requests,
        "requestsPerChange": round6(requests_per_change(n, drain)),
        "changesPerRequest": (n as f64 / requests(drain).max(1) as f64).round(),
        "wholeRun": whole_run,
    })
}

/// What the numbers were measured on.
pub async fn machine(settings: &Settings) -> Value {
    // It reads the cgroup's CPU quota from files.
    let cpus = tokio::task::spawn_blocking(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    })
    .await
    .unwrap_or(0);
    let broker = broker::version(&settings.amqp.url).await;
    json!({
        "cpus": cpus,
        "broker": format!("RabbitMQ {}", broker.unwrap_or_else(|| "?".into())),
        "brokerUrl": cxone_schedule_worker::redact::redact_url(&settings.amqp.url),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// The api-bound scenario's sizes.
pub struct ApiBoundPlan {
    pub n: usize,
    pub calendars: usize,
    pub order: Order,
    pub max_concurrent: usize,
}

/// Everything the api-bound scenario measured.
pub struct ApiBoundFigures {
    pub ready: Duration,
    pub drain: Duration,
    pub imports: usize,
    pub limit: Limit,
    /// The simulator's counters over the whole run.
    pub stats: SimStats,
    /// How the worker exited.
    pub exit: Value,
}

/// The api-bound scenario's report.
pub async fn api_bound(plan: &ApiBoundPlan, settings: &Settings, f: &ApiBoundFigures) -> Value {
    let rate_limited = f.stats.import_requests + f.stats.job_requests;
    let share429 = f.stats.responses429 as f64 / rate_limited.max(1) as f64;
    let ratio = f.drain.as_secs_f64() / f.limit.seconds;
    json!({
        "scenario": "api-bound",
        "machine": machine(settings).await,
        "queueType": settings.amqp.queue_type.as_str(),
        "changes": plan.n,
        "calendars": plan.calendars,
        "publishOrder": plan.order.name(),
        "simulator": {
            "jobBaseMs": JOB_BASE_MS,
            "jobPerEntryMs": JOB_PER_ENTRY_MS,
            "rateLimitPerMin": RATE_PER_MIN,
        },
        "worker": {
            "startupMs": ms(f.ready),
            "maxConcurrent": plan.max_concurrent,
            "threads": settings.worker.threads,
            "maxRequestsPerMin": RATE_PER_MIN,
            "batchMaxEntries": settings.batch.max_entries,
            "imports": f.imports,
        },
        "drainSeconds": round3(f.drain.as_secs_f64()),
        "lowerLimitSeconds": round3(f.limit.seconds),
        "ratio": round3(ratio),
        "formula": f.limit.explain,
        "cxone": {
            "tokenRequests": f.stats.token_requests,
            "importRequests": f.stats.import_requests,
            "jobRequests": f.stats.job_requests,
            "responses429": f.stats.responses429,
            "share429": round6(share429),
            "wholeRun": &f.stats,
        },
        "workerExit": f.exit,
        "targets": {
            "drainAtMost1.15xLimit": ratio <= 1.15,
            "responses429AtMost1Percent": share429 <= 0.01,
        },
    })
}
