//! `bench`: a reproducible end-to-end benchmark against the broker at
//! `AMQP_URL` and an in-process simulator, printed as one JSON document.
//!
//! Scenario `throughput` (the default), in one run:
//! 1. the raw ceiling: a bare lapin consumer (prefetch 1000, one `multiple`
//!    ack per 100 deliveries) drains N pre-filled 1 KB messages from a queue
//!    of the inbound queue's type;
//! 2. the worker, started as a child process (`current_exe() run`), drains N
//!    pre-filled changes (one entry each, spread over the calendars) to their
//!    `completed` events; the simulator's jobs take no time and complete by
//!    webhook; the child's peak RSS is its `VmHWM`, read from
//!    `/proc/<pid>/status` before it is stopped with SIGTERM;
//! 3. latency: with the queue drained, changes are published at a steady
//!    rate (1,000/s by default) and publish → `completed` event is measured.
//!
//! Scenario `api-bound`: the simulator is the bottleneck (slow jobs, a rate
//! limit); the drain time is reported beside the lower limit the simulator's
//! own numbers imply, with the formula.
//!
//! Every exchange and queue gets a unique name and is deleted at the end.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Channel, Connection,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::Instant};

use crate::{
    amqp,
    config::Settings,
    sim::{SimConfig, SimServer},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Raw broker ceiling, worker drain, RSS, requests per change, latency.
    Throughput,
    /// Slow simulated jobs and a rate limit: drain time against the simulator's limit.
    ApiBound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// Change i goes to calendar i mod C (calendars interleaved).
    Interleaved,
    /// All of one calendar's changes, then the next calendar's.
    CalendarMajor,
}

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = Scenario::Throughput)]
    pub scenario: Scenario,
    /// Changes (and raw messages) to drain [throughput: 200000, --quick 20000; api-bound: 20000].
    #[arg(long)]
    pub changes: Option<usize>,
    /// A small run (20,000 changes, a 3 s latency phase): what the README example uses.
    #[arg(long)]
    pub quick: bool,
    /// Calendars the changes are spread over [throughput: 100; api-bound: 40].
    #[arg(long)]
    pub calendars: Option<usize>,
    /// Publish order of the pre-filled changes [throughput: interleaved; api-bound: calendar-major].
    #[arg(long, value_enum)]
    pub order: Option<Order>,
    /// `imports.max_concurrent` for the worker [throughput: 16; api-bound: 3].
    #[arg(long)]
    pub max_concurrent: Option<usize>,
    /// `amqp.prefetch` for the worker [throughput: interleaved calendars × batch.max_entries, calendar-major batch.max_entries × (max_concurrent + 1), at most 65535; api-bound: derived].
    #[arg(long)]
    pub prefetch: Option<u16>,
    /// `worker.threads` for the worker: 1 leaves the other core of a small
    /// machine to the broker it shares; 0 means one per CPU core.
    #[arg(long, default_value_t = 1)]
    pub worker_threads: u16,
    /// `amqp.ack_chunk` for the worker: most deliveries one `multiple` ack
    /// covers once the ack pace goes to chunks; 0 acks every settled front
    /// whole, without probes [the worker's setting, 5000 by default].
    #[arg(long)]
    pub ack_chunk: Option<u32>,
    /// Steady publish rate of the latency phase, changes per second.
    #[arg(long, default_value_t = 1000.0)]
    pub latency_rate: f64,
    /// Length of the latency phase in seconds [10; --quick 3].
    #[arg(long)]
    pub latency_seconds: Option<f64>,
    /// Skip the raw-ceiling measurement (throughput only).
    #[arg(long)]
    pub skip_raw: bool,
    /// Leave the local broker's quorum-queue log as it is. By default, when
    /// the broker runs here and `rabbitmqctl` works, its write-ahead log is
    /// rolled over before each pre-fill, so that every drain reads its
    /// messages from memory: a roll-over (every 512 MB written) that lands
    /// mid-pre-fill moves them to segment files, and the drain then costs
    /// the broker about half as much again, whether raw or worker.
    #[arg(long)]
    pub no_wal_roll: bool,
    /// Write the changes' fields in sorted order (as a `serde_json::Value`
    /// does) instead of the contract's: the worker then parses each body
    /// again to build its import, instead of copying the entries' bytes.
    #[arg(long)]
    pub sorted_keys: bool,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("the simulator could not start: {0}")]
    Sim(std::io::Error),
    #[error(transparent)]
    Amqp(#[from] amqp::AmqpError),
    #[error("broker error: {0}; is RabbitMQ running at AMQP_URL?")]
    Broker(#[from] lapin::Error),
    #[error(
        "the broker refused {0} pre-filled message(s); check the broker's disk and memory alarms"
    )]
    Refused(usize),
    #[error("cannot start the worker child process {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the worker child process did not become ready within {0} s; see its log at {1}")]
    NotReady(u64, PathBuf),
    #[error(
        "timed out after {secs} s in phase {phase} with {done} of {want} changes completed; see the worker's log at {log}"
    )]
    Timeout {
        phase: &'static str,
        secs: u64,
        done: usize,
        want: usize,
        log: PathBuf,
    },
    #[error(
        "the worker reported {0} failed or rejected change(s) during the benchmark; see its log at {1}"
    )]
    Failures(usize, PathBuf),
    #[error("cannot point the simulator's webhook at the worker: {0}")]
    Webhook(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid arguments: {0}")]
    Usage(String),
}

/// The raw ceiling's message size and consumer shape.
const RAW_MESSAGE_BYTES: usize = 1024;
const RAW_PREFETCH: u16 = 1000;
const RAW_ACK_EVERY: u64 = 100;

/// Runs the benchmark and prints its JSON report on stdout.
pub async fn run(args: BenchArgs, settings: Settings) -> Result<(), BenchError> {
    let report = run_bench(&args, settings).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("a JSON value serialises")
    );
    Ok(())
}

/// Runs the benchmark and returns its report.
pub async fn run_bench(args: &BenchArgs, mut settings: Settings) -> Result<Value, BenchError> {
    if !(args.latency_rate.is_finite() && args.latency_rate > 0.0) {
        return Err(BenchError::Usage(
            "--latency-rate must be a positive number of changes per second".into(),
        ));
    }
    // For the worker child only: this process's runtime is already running.
    settings.worker.threads = args.worker_threads;
    if let Some(chunk) = args.ack_chunk {
        settings.amqp.ack_chunk = chunk;
    }
    match args.scenario {
        Scenario::Throughput => throughput(args, settings).await,
        Scenario::ApiBound => api_bound(args, settings).await,
    }
}

// ---------------------------------------------------------------- scenarios

async fn throughput(args: &BenchArgs, settings: Settings) -> Result<Value, BenchError> {
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
    let latency_n = (args.latency_rate * latency_s).round().max(1.0) as usize;

    let mut env = Env::open(settings, "throughput").await?;
    env.roll_wal = !args.no_wal_roll;
    env.sorted_keys = args.sorted_keys;
    let result = async {
        let raw = if args.skip_raw {
            None
        } else {
            eprintln!("bench: raw ceiling: pre-filling {n} messages of {RAW_MESSAGE_BYTES} bytes");
            Some(raw_ceiling(&env, n, args.timeout_s).await?)
        };

        let sim = SimServer::start(SimConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            job_base_ms: 0,
            ..SimConfig::default()
        })
        .await
        .map_err(BenchError::Sim)?;
        eprintln!("bench: worker drain: pre-filling {n} changes over {calendars} calendars");
        let bodies = changes("d", n, calendars, order, env.sorted_keys);
        let wal_rolled = env.before_prefill().await;
        env.prefill_changes(&bodies).await?;
        drop(bodies);
        wait_broker_quiet("worker drain").await;

        let mut worker = env
            .spawn_worker(
                &sim,
                &[
                    (
                        "CSW__IMPORTS__MAX_CONCURRENT",
                        max_concurrent.to_string(),
                    ),
                    ("CSW__AMQP__PREFETCH", prefetch.to_string()),
                ],
            )
            .await?;
        let outcome = async {
            let ready = worker.wait_ready(Duration::from_secs(60)).await?;
            eprintln!("bench: worker ready after {} ms; draining", ms(ready));
            let t0 = Instant::now();
            let cpu0 = (
                worker.cpu_seconds(),
                broker_cpu_seconds(),
                proc_cpu_seconds(std::process::id()),
                machine_stolen_seconds(),
            );
            let first_out = tokio::spawn(first_received(
                worker.port,
                Duration::from_secs(args.timeout_s),
            ));
            let mut tally = Tally::default();
            env.wait_completed(&mut tally, n, "drain", args.timeout_s, &worker.log)
                .await?;
            let end = tally.last_at.unwrap_or_else(Instant::now);
            // Without a first delivery seen (the worker's metrics did not
            // answer), the drain is timed from readiness and says so.
            let first_out = first_out.await.ok().flatten();
            let drain = (
                end - first_out.unwrap_or(t0),
                end - t0,
                first_out.map(|f| f - t0),
            );
            let cpu = json!({
                "workerSeconds": cpu0.0.zip(worker.cpu_seconds()).map(|(a, b)| round3(b - a)),
                "brokerSeconds": cpu0.1.zip(broker_cpu_seconds()).map(|(a, b)| round3(b - a)),
                "benchSeconds": cpu0.2.zip(proc_cpu_seconds(std::process::id())).map(|(a, b)| round3(b - a)),
                "machineStolenSeconds": cpu0.3.zip(machine_stolen_seconds()).map(|(a, b)| round3(b - a)),
                "how": "user + system CPU time from /readyz to the last completion event, from /proc/<pid>/stat; the broker is the local beam.smp process, null when there is none; bench is this process: the simulator and the event tap; machineStolenSeconds is the CPU time the hypervisor gave to other guests meanwhile (steal in /proc/stat, all CPUs): a noisy neighbour shows there",
            });
            let drain_stats = sim.stats();
            let drain_imports = tally.imports;
            let rss_drain_kb = worker.vm_hwm_kb();
            let acks = worker.counters("csw_acks_sent_total", "kind").await;
            let pace = worker.counters("csw_ack_pace_changes_total", "to").await;
            let closed = worker.counters("csw_batches_closed_total", "trigger").await;

            // What the broker still does after the drain (releasing the
            // settled window, say) is not the steady state the latency
            // phase measures.
            wait_broker_quiet("latency").await;
            eprintln!(
                "bench: latency: publishing {latency_n} changes at {} per second",
                args.latency_rate
            );
            let lat = env
                .latency(latency_n, calendars, args.latency_rate, args.timeout_s, &worker.log)
                .await?;
            let rss_end_kb = worker.vm_hwm_kb();
            let failures = tally.failed + tally.rejected + lat.failures;
            Ok::<_, BenchError>((
                ready,
                drain,
                cpu,
                acks,
                pace,
                closed,
                drain_stats,
                drain_imports,
                rss_drain_kb,
                rss_end_kb,
                lat,
                failures,
            ))
        }
        .await;
        let stopped = worker.stop().await;
        let final_stats = sim.stats();
        sim.shutdown().await;
        let (ready, drain, cpu, acks, pace, closed, stats, imports, rss_drain_kb, rss_end_kb, lat, failures) =
            outcome?;
        if failures > 0 {
            return Err(BenchError::Failures(failures, worker.log.clone()));
        }

        let (drain, from_ready, first_out) = drain;
        let worker_rate = n as f64 / drain.as_secs_f64();
        let requests = stats.token_requests + stats.import_requests + stats.job_requests;
        let per_change = requests as f64 / n as f64;
        let max_wait_ms = env.settings.batch.max_wait.as_millis() as u64;
        let rss_mb = rss_drain_kb.map(|kb| kb as f64 / 1024.0);
        let ratio = raw.as_ref().map(|r| worker_rate / r.rate);
        Ok(json!({
            "scenario": "throughput",
            "machine": machine(&env.settings).await,
            "queueType": env.settings.amqp.queue_type.as_str(),
            "changes": n,
            "calendars": calendars,
            "publishOrder": order_name(order),
            "sortedKeys": env.sorted_keys,
            "raw": raw.as_ref().map(|r| json!({
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
            })),
            "worker": {
                "changes": n,
                "startupMs": ms(ready),
                "seconds": round3(drain.as_secs_f64()),
                "perSecond": worker_rate.round(),
                "firstDeliveryMs": first_out.map(ms),
                "secondsFromReady": round3(from_ready.as_secs_f64()),
                "perSecondFromReady": (n as f64 / from_ready.as_secs_f64()).round(),
                "walRolledBeforePrefill": wal_rolled,
                "how": "from the worker's first delivery to the last completion event (from /readyz when firstDeliveryMs is null); firstDeliveryMs is from the worker's readiness (its consumer starting) to its first delivery, the FromReady figures include it",
                "imports": imports,
                "prefetch": prefetch,
                "maxConcurrent": max_concurrent,
                "threads": env.settings.worker.threads,
                "ackChunk": env.settings.amqp.ack_chunk,
                "batchMaxEntries": max_entries,
                "simJobMs": 0,
                "completion": "webhook (polling as the fallback)",
            },
            "ratio": ratio.map(round3),
            "cpuDuringDrain": cpu,
            "acksSentDuringDrain": acks,
            "ackPaceChangesDuringDrain": pace,
            "batchesClosedDuringDrain": closed,
            "rss": {
                "peakMbDuringDrain": rss_mb.map(round1),
                "peakMbWholeRun": rss_end_kb.map(|kb| round1(kb as f64 / 1024.0)),
                "how": "the worker runs as a child process (current_exe run); VmHWM from /proc/<pid>/status, read after the drain and again before SIGTERM",
            },
            "cxone": {
                "tokenRequests": stats.token_requests,
                "importRequests": stats.import_requests,
                "jobRequests": stats.job_requests,
                "requestsPerChange": round6(per_change),
                "changesPerRequest": (n as f64 / requests.max(1) as f64).round(),
                "wholeRun": &final_stats,
            },
            "latency": {
                "ratePerSecond": args.latency_rate,
                "changes": latency_n,
                "p50Ms": lat.p50,
                "p99Ms": lat.p99,
                "maxMs": lat.max,
                "batchMaxWaitMs": max_wait_ms,
            },
            "workerExit": stopped,
            "targets": {
                "drainRatioAtLeast0.8": ratio.map(|r| r >= 0.8),
                "peakRssAtMost64Mb": rss_mb.map(|m| m <= 64.0),
                "requestsPerChangeAtMost1Per400": per_change <= 1.0 / 400.0,
                "p99AtMostMaxWaitPlus150Ms": lat.p99.map(|p| p <= max_wait_ms + 150),
            },
        }))
    }
    .await;
    env.cleanup().await;
    result
}

async fn api_bound(args: &BenchArgs, settings: Settings) -> Result<Value, BenchError> {
    let n = args.changes.unwrap_or(20_000);
    let calendars = args.calendars.unwrap_or(40).max(1);
    let order = args.order.unwrap_or(Order::CalendarMajor);
    let max_concurrent = args.max_concurrent.unwrap_or(3).max(1);
    const JOB_BASE_MS: u64 = 300;
    const JOB_PER_ENTRY_MS: f64 = 0.2;
    const RATE_PER_MIN: u32 = 300;

    let mut env = Env::open(settings, "api").await?;
    env.sorted_keys = args.sorted_keys;
    let result = async {
        let sim = SimServer::start(SimConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            job_base_ms: JOB_BASE_MS,
            job_per_entry_ms: JOB_PER_ENTRY_MS,
            rate_limit_per_min: RATE_PER_MIN,
            ..SimConfig::default()
        })
        .await
        .map_err(BenchError::Sim)?;
        eprintln!("bench: api-bound: pre-filling {n} changes over {calendars} calendars");
        let bodies = changes("a", n, calendars, order, env.sorted_keys);
        env.prefill_changes(&bodies).await?;
        drop(bodies);
        wait_broker_quiet("worker drain").await;
        let mut extra = vec![
            ("CSW__IMPORTS__MAX_CONCURRENT", max_concurrent.to_string()),
            // Told the limit: the worker paces itself instead of learning it from 429s.
            ("CSW__CXONE__MAX_REQUESTS_PER_MIN", RATE_PER_MIN.to_string()),
        ];
        if let Some(p) = args.prefetch {
            extra.push(("CSW__AMQP__PREFETCH", p.to_string()));
        }
        let mut worker = env.spawn_worker(&sim, &extra).await?;
        let outcome = async {
            let ready = worker.wait_ready(Duration::from_secs(60)).await?;
            let t0 = Instant::now();
            let mut tally = Tally::default();
            env.wait_completed(
                &mut tally,
                n,
                "api-bound drain",
                args.timeout_s,
                &worker.log,
            )
            .await?;
            let drain = tally.last_at.unwrap_or_else(Instant::now) - t0;
            Ok::<_, BenchError>((ready, drain, tally))
        }
        .await;
        let stopped = worker.stop().await;
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
            n,
            calendars,
            env.settings.batch.max_entries,
            max_concurrent,
            JOB_BASE_MS,
            JOB_PER_ENTRY_MS,
            RATE_PER_MIN,
        );
        let rate_limited = stats.import_requests + stats.job_requests;
        let share429 = stats.responses429 as f64 / rate_limited.max(1) as f64;
        let ratio = drain.as_secs_f64() / limit.seconds;
        Ok(json!({
            "scenario": "api-bound",
            "machine": machine(&env.settings).await,
            "queueType": env.settings.amqp.queue_type.as_str(),
            "changes": n,
            "calendars": calendars,
            "publishOrder": order_name(order),
            "simulator": {
                "jobBaseMs": JOB_BASE_MS,
                "jobPerEntryMs": JOB_PER_ENTRY_MS,
                "rateLimitPerMin": RATE_PER_MIN,
            },
            "worker": {
                "startupMs": ms(ready),
                "maxConcurrent": max_concurrent,
                "threads": env.settings.worker.threads,
                "maxRequestsPerMin": RATE_PER_MIN,
                "batchMaxEntries": env.settings.batch.max_entries,
                "imports": tally.imports,
            },
            "drainSeconds": round3(drain.as_secs_f64()),
            "lowerLimitSeconds": round3(limit.seconds),
            "ratio": round3(ratio),
            "formula": limit.explain,
            "cxone": {
                "tokenRequests": stats.token_requests,
                "importRequests": stats.import_requests,
                "jobRequests": stats.job_requests,
                "responses429": stats.responses429,
                "share429": round6(share429),
                "wholeRun": &stats,
            },
            "workerExit": stopped,
            "targets": {
                "drainAtMost1.15xLimit": ratio <= 1.15,
                "responses429AtMost1Percent": share429 <= 0.01,
            },
        }))
    }
    .await;
    env.cleanup().await;
    result
}

/// The fastest any worker could drain the api-bound scenario, from the
/// simulator's own numbers.
struct Limit {
    seconds: f64,
    explain: Value,
}

fn api_limit(
    n: usize,
    calendars: usize,
    max_entries: usize,
    concurrent: usize,
    base_ms: u64,
    per_entry_ms: f64,
    per_min: u32,
) -> Limit {
    // A change is never split and a batch holds one calendar, so the fewest
    // imports are ceil(entries of the calendar / max_entries) per calendar.
    let mut batches = Vec::new();
    for c in 0..calendars {
        let mut entries = n / calendars + usize::from(c < n % calendars);
        while entries > 0 {
            let b = entries.min(max_entries);
            batches.push(b);
            entries -= b;
        }
    }
    let b = batches.len();
    let job_s = |e: usize| (base_ms as f64 + per_entry_ms * e as f64) / 1000.0;
    let per_s = f64::from(per_min) / 60.0;
    let burst = per_s.ceil().max(1.0);
    // Rate: each import costs at least its POST (completion comes by webhook,
    // which costs no request; the token endpoint is not rate limited). The
    // bucket starts with `burst` tokens and refills at per_s, so the b-th
    // POST is admitted no sooner than (b - burst) / per_s; its job then runs.
    let shortest = batches
        .iter()
        .copied()
        .map(job_s)
        .fold(f64::INFINITY, f64::min);
    let shortest = if shortest.is_finite() { shortest } else { 0.0 };
    let rate_bound = ((b as f64 - burst).max(0.0)) / per_s + shortest;
    // Concurrency: jobs run at most `concurrent` at once (and one per calendar).
    let total_job: f64 = batches.iter().copied().map(job_s).sum();
    let rounds = b.div_ceil(concurrent.max(1));
    let longest = batches.iter().copied().map(job_s).fold(0.0, f64::max);
    let conc_bound = (total_job / concurrent.max(1) as f64)
        .max(longest)
        .max(rounds as f64 * shortest);
    let seconds = rate_bound.max(conc_bound);
    Limit {
        seconds,
        explain: json!({
            "batches": b,
            "batchesWhy": format!("ceil({} entries per calendar / batch.max_entries {max_entries}) per calendar, summed over {calendars} calendars (a change is never split)", n / calendars),
            "jobSecondsPerBatch": round3(job_s(max_entries.min(n / calendars.max(1)).max(1))),
            "jobWhy": format!("jobBaseMs {base_ms} + jobPerEntryMs {per_entry_ms} x entries"),
            "rateBoundSeconds": round3(rate_bound),
            "rateBoundWhy": format!("(batches {b} - burst {burst}) / ({per_min}/60 per s) + the last job: one POST per batch is the fewest requests (webhook completion needs none, tokens are not rate limited); the bucket starts full with one second's worth"),
            "concurrencyBoundSeconds": round3(conc_bound),
            "concurrencyWhy": format!("max(total job time / imports.max_concurrent {concurrent}, longest job, ceil(batches {b} / {concurrent}) x shortest job)"),
            "limit": "max(rateBound, concurrencyBound)",
        }),
    }
}

// ---------------------------------------------------------------- the run's broker side

/// The run's own topology on the broker, and a connection to feed and tap it.
struct Env {
    settings: Settings,
    prefix: String,
    conn: Connection,
    ch: Channel,
    tap_queue: String,
    raw_queue: String,
    events: mpsc::UnboundedReceiver<Seen>,
    /// Roll the local broker's log over before each pre-fill (`--no-wal-roll`).
    roll_wal: bool,
    /// `--sorted-keys`.
    sorted_keys: bool,
}

/// What the tap saw in one event.
struct Seen {
    at: Instant,
    kind: Kind,
    change_ids: Vec<String>,
}

#[derive(PartialEq, Eq)]
enum Kind {
    Completed,
    Failed,
    Rejected,
    Other,
}

#[derive(Default)]
struct Tally {
    completed: usize,
    failed: usize,
    rejected: usize,
    imports: usize,
    last_at: Option<Instant>,
}

impl Env {
    async fn open(mut settings: Settings, what: &str) -> Result<Env, BenchError> {
        let prefix = format!(
            "csw-bench-{what}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        );
        super::demo::rename_topology(&mut settings.amqp, &prefix);
        settings.worker.instance_id = prefix.clone();
        let conn = amqp::connect(&settings.amqp, "cxone-schedule-worker bench").await?;
        let ch = conn.create_channel().await?;
        amqp::declare_topology(&ch, &settings.amqp).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let tap_queue = format!("{prefix}.tap");
        let tap_ch = conn.create_channel().await?;
        let consumer = super::demo::tap(&tap_ch, &settings.amqp, &tap_queue).await?;
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(tap_loop(consumer, tx));
        Ok(Env {
            roll_wal: false,
            sorted_keys: false,
            raw_queue: format!("{prefix}.raw"),
            settings,
            prefix,
            conn,
            ch,
            tap_queue,
            events,
        })
    }

    /// Rolls the local broker's quorum-queue log over (see `--no-wal-roll`);
    /// returns whether it did.
    async fn before_prefill(&self) -> bool {
        if !self.roll_wal || self.settings.amqp.queue_type.as_str() != "quorum" {
            return false;
        }
        roll_broker_wal().await
    }

    /// Publishes the changes to the inbound exchange, confirmed, before the worker runs.
    async fn prefill_changes(
        &self,
        bodies: &[(String, String, Vec<u8>)],
    ) -> Result<(), BenchError> {
        let exchange = self.settings.amqp.inbound_exchange.clone();
        publish_confirmed(
            &self.ch,
            bodies.iter().map(|(id, cal, body)| {
                (
                    exchange.as_str(),
                    cal.as_str(),
                    body.as_slice(),
                    change_props(id),
                )
            }),
        )
        .await
    }

    async fn spawn_worker(
        &self,
        sim: &SimServer,
        extra: &[(&str, String)],
    ) -> Result<Worker, BenchError> {
        let port = free_port()?;
        let secret = format!("bench-{:016x}", rand::random::<u64>());
        sim.set_webhook(
            Some(format!("http://127.0.0.1:{port}/webhooks/cxone")),
            Some(secret.clone()),
        )
        .map_err(BenchError::Webhook)?;
        let s = &self.settings;
        let a = &s.amqp;
        let mut env: Vec<(String, String)> = vec![
            ("AMQP_URL".into(), a.url.clone()),
            (
                "CSW__AMQP__INBOUND_EXCHANGE".into(),
                a.inbound_exchange.clone(),
            ),
            ("CSW__AMQP__INBOUND_QUEUE".into(), a.inbound_queue.clone()),
            ("CSW__AMQP__QUEUE_TYPE".into(), a.queue_type.as_str().into()),
            (
                "CSW__AMQP__DEAD_LETTER_EXCHANGE".into(),
                a.dead_letter_exchange.clone(),
            ),
            (
                "CSW__AMQP__DEAD_LETTER_QUEUE".into(),
                a.dead_letter_queue.clone(),
            ),
            (
                "CSW__AMQP__EVENTS_EXCHANGE".into(),
                a.events_exchange.clone(),
            ),
            (
                "CSW__AMQP__UNROUTED_EVENTS_QUEUE".into(),
                a.unrouted_events_queue.clone(),
            ),
            ("CSW__AMQP__PARTITIONS".into(), "1".into()),
            (
                "CSW__WORKER__INSTANCE_ID".into(),
                s.worker.instance_id.clone(),
            ),
            ("CSW__WORKER__THREADS".into(), s.worker.threads.to_string()),
            ("CSW__AMQP__ACK_CHUNK".into(), a.ack_chunk.to_string()),
            ("CSW__HTTP__LISTEN".into(), format!("127.0.0.1:{port}")),
            ("CXONE_BASE_URL".into(), sim.base_url()),
            ("CXONE_AUTH_URL".into(), sim.base_url()),
            ("CXONE_CLIENT_ID".into(), "sim-client".into()),
            ("CXONE_CLIENT_SECRET".into(), "sim-secret".into()),
            ("CXONE_WEBHOOK_SECRET".into(), secret),
            ("CSW__CXONE__GRANT_TYPE".into(), "client_credentials".into()),
        ];
        for (k, v) in extra {
            env.push(((*k).to_owned(), v.clone()));
        }
        let exe = std::env::current_exe()?;
        let log = std::env::temp_dir().join(format!("{}.worker.log", self.prefix));
        let log_file = std::fs::File::create(&log)?;
        // A profiler can wrap the child, e.g.
        // CSW_BENCH_WORKER_WRAPPER="heaptrack -o /tmp/worker": the wrapper
        // runs with the worker's command line after its own words.
        let wrapper = std::env::var("CSW_BENCH_WORKER_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut c = std::process::Command::new(program);
                c.args(words).arg(&exe);
                c
            }
            None => std::process::Command::new(&exe),
        };
        let child = command
            .arg("run")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .map_err(|source| BenchError::Spawn {
                exe: exe.clone(),
                source,
            })?;
        Ok(Worker {
            child: Some(child),
            port,
            log,
            started: Instant::now(),
        })
    }

    /// Reads events until `want` changes are in `completed` events (counting
    /// failures and rejections too, so a broken run ends instead of hanging).
    async fn wait_completed(
        &mut self,
        tally: &mut Tally,
        want: usize,
        phase: &'static str,
        timeout_s: u64,
        log: &std::path::Path,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(timeout_s);
        while tally.completed + tally.failed + tally.rejected < want {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(seen)) => tally.add(&seen),
                _ => {
                    return Err(BenchError::Timeout {
                        phase,
                        secs: timeout_s,
                        done: tally.completed,
                        want,
                        log: log.to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Publishes `n` changes at `rate` per second and measures each one's
    /// publish → `completed` event time.
    async fn latency(
        &mut self,
        n: usize,
        calendars: usize,
        rate: f64,
        timeout_s: u64,
        log: &std::path::Path,
    ) -> Result<Latency, BenchError> {
        let bodies = changes("l", n, calendars, Order::Interleaved, self.sorted_keys);
        let index: HashMap<String, usize> = bodies
            .iter()
            .enumerate()
            .map(|(i, (id, _, _))| (id.clone(), i))
            .collect();
        let ch = self.conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let exchange = self.settings.amqp.inbound_exchange.clone();
        let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(usize, Instant)>();
        let publisher = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut pending = FuturesUnordered::new();
            let mut refused = 0usize;
            for (i, (id, cal, body)) in bodies.iter().enumerate() {
                ticker.tick().await;
                let _ = sent_tx.send((i, Instant::now()));
                let confirm = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        cal.as_str().into(),
                        BasicPublishOptions::default(),
                        body,
                        change_props(id),
                    )
                    .await?;
                pending.push(confirm);
                // Collect confirms as they come without holding up the pace.
                while let Some(Some(c)) = futures_util::FutureExt::now_or_never(pending.next()) {
                    if !c?.is_ack() {
                        refused += 1;
                    }
                }
            }
            while let Some(c) = pending.next().await {
                if !c?.is_ack() {
                    refused += 1;
                }
            }
            let _ = ch.close(200, "done".into()).await;
            Ok::<usize, lapin::Error>(refused)
        });

        let mut published: Vec<Option<Instant>> = vec![None; n];
        let mut latencies: Vec<u64> = Vec::with_capacity(n);
        let mut early: Vec<(usize, Instant)> = Vec::new();
        let mut failures = 0usize;
        let deadline = Instant::now() + Duration::from_secs(timeout_s);
        while latencies.len() + failures < n {
            let seen = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(seen)) => seen,
                _ => {
                    publisher.abort();
                    return Err(BenchError::Timeout {
                        phase: "latency",
                        secs: timeout_s,
                        done: latencies.len(),
                        want: n,
                        log: log.to_owned(),
                    });
                }
            };
            while let Ok((i, at)) = sent_rx.try_recv() {
                published[i] = Some(at);
            }
            match seen.kind {
                Kind::Completed => {
                    for id in &seen.change_ids {
                        if let Some(&i) = index.get(id) {
                            match published[i] {
                                Some(p) => latencies.push(ms(seen.at - p)),
                                None => early.push((i, seen.at)),
                            }
                        }
                    }
                }
                Kind::Failed => failures += seen.change_ids.len().max(1),
                Kind::Rejected => failures += 1,
                Kind::Other => {}
            }
        }
        while let Ok((i, at)) = sent_rx.try_recv() {
            published[i] = Some(at);
        }
        for (i, at) in early {
            if let Some(p) = published[i] {
                latencies.push(ms(at.saturating_duration_since(p)));
            }
        }
        match publisher.await {
            Ok(Ok(0)) => {}
            Ok(Ok(refused)) => return Err(BenchError::Refused(refused)),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {}
        }
        latencies.sort_unstable();
        Ok(Latency {
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            max: latencies.last().copied(),
            failures,
        })
    }

    async fn cleanup(self) {
        let Ok(ch) = self.conn.create_channel().await else {
            return;
        };
        let a = &self.settings.amqp;
        for q in [&self.tap_queue, &self.raw_queue] {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        amqp::delete_topology(&ch, a).await;
        let _ = self.conn.close(200, "bench done".into()).await;
    }
}

impl Tally {
    fn add(&mut self, seen: &Seen) {
        match seen.kind {
            Kind::Completed => {
                self.completed += seen.change_ids.len();
                self.imports += 1;
                self.last_at = Some(seen.at);
            }
            Kind::Failed => self.failed += seen.change_ids.len().max(1),
            Kind::Rejected => self.rejected += 1,
            Kind::Other => {}
        }
    }
}

struct Latency {
    p50: Option<u64>,
    p99: Option<u64>,
    max: Option<u64>,
    failures: usize,
}

async fn tap_loop(mut consumer: lapin::Consumer, tx: mpsc::UnboundedSender<Seen>) {
    #[derive(Deserialize)]
    struct Event {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        data: Data,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        #[serde(default)]
        change_ids: Vec<String>,
    }
    while let Some(Ok(d)) = consumer.next().await {
        let at = Instant::now();
        let Ok(e) = serde_json::from_slice::<Event>(&d.data) else {
            continue;
        };
        let kind = match e.kind.as_str() {
            "wfm.schedule.import.completed" => Kind::Completed,
            "wfm.schedule.import.failed" => Kind::Failed,
            "wfm.schedule.change.rejected" => Kind::Rejected,
            _ => Kind::Other,
        };
        if tx
            .send(Seen {
                at,
                kind,
                change_ids: e.data.change_ids,
            })
            .is_err()
        {
            return;
        }
    }
}

// ---------------------------------------------------------------- the raw ceiling

struct Raw {
    /// From the first delivery to the last.
    seconds: f64,
    rate: f64,
    /// From `basic.consume` to the first delivery.
    first_delivery: Duration,
    wal_rolled: bool,
    /// CPU time the hypervisor gave to others over the drain.
    stolen_seconds: Option<f64>,
    /// CPU time the local broker used over the drain.
    broker_seconds: Option<f64>,
}

/// Pre-fills a queue of the inbound queue's type with `n` 1 KB messages and
/// drains it with a bare consumer: the most this broker gives one consumer.
/// The clock starts at the first delivery, as the worker's starts when it has
/// its first change ([`first_received`]).
async fn raw_ceiling(env: &Env, n: usize, timeout_s: u64) -> Result<Raw, BenchError> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(env.settings.amqp.queue_type.as_str())),
    );
    env.ch
        .queue_declare(
            env.raw_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let body = vec![b'x'; RAW_MESSAGE_BYTES];
    let props = BasicProperties::default().with_delivery_mode(2);
    let wal_rolled = env.before_prefill().await;
    publish_confirmed(
        &env.ch,
        (0..n).map(|_| ("", env.raw_queue.as_str(), body.as_slice(), props.clone())),
    )
    .await?;

    wait_broker_quiet("raw ceiling").await;
    // Its own connection, like a worker's.
    let conn = amqp::connect(&env.settings.amqp, "cxone-schedule-worker bench raw").await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(RAW_PREFETCH, BasicQosOptions::default())
        .await?;
    let started = Instant::now();
    let stolen0 = machine_stolen_seconds();
    let broker0 = broker_cpu_seconds();
    let mut consumer = ch
        .basic_consume(
            env.raw_queue.as_str().into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let deadline = started + Duration::from_secs(timeout_s);
    let mut got = 0usize;
    let mut first = None;
    while got < n {
        let d = match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => return Err(e.into()),
            _ => {
                return Err(BenchError::Usage(format!(
                    "the raw consumer received only {got} of {n} messages within {timeout_s} s"
                )));
            }
        };
        got += 1;
        first.get_or_insert_with(Instant::now);
        if got as u64 % RAW_ACK_EVERY == 0 || got == n {
            ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
    }
    let first = first.unwrap_or(started);
    let seconds = first.elapsed().as_secs_f64();
    let stolen_seconds = stolen0
        .zip(machine_stolen_seconds())
        .map(|(a, b)| round3(b - a));
    let broker_seconds = broker0
        .zip(broker_cpu_seconds())
        .map(|(a, b)| round3(b - a));
    let _ = conn.close(200, "raw done".into()).await;
    Ok(Raw {
        seconds,
        rate: n as f64 / seconds,
        first_delivery: first - started,
        wal_rolled,
        stolen_seconds,
        broker_seconds,
    })
}

// ---------------------------------------------------------------- the worker child

struct Worker {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    started: Instant,
}

impl Worker {
    /// Waits for `/readyz`; returns how long the worker took to get there.
    async fn wait_ready(&mut self, within: Duration) -> Result<Duration, BenchError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let deadline = self.started + within;
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(self.started.elapsed());
            }
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() > deadline {
                return Err(BenchError::NotReady(within.as_secs(), self.log.clone()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A counter family from the worker's `/metrics`, by the value of its
    /// one label: acks sent by kind (single acks cost a quorum queue a Raft
    /// command each), batches closed by trigger (closed by age means the
    /// drain's rounds outlasted `batch.max_wait_ms`).
    async fn counters(&self, family: &str, label: &str) -> serde_json::Map<String, Value> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let text = match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let prefix = format!("{family}{{{label}=\"");
        let mut out = serde_json::Map::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(&prefix)
                && let Some((value_of_label, count)) = rest.split_once("\"} ")
                && let Ok(v) = count.trim().parse::<f64>()
            {
                out.insert(value_of_label.to_owned(), json!(v as u64));
            }
        }
        out
    }

    /// The child's CPU time so far (user + system), in seconds.
    fn cpu_seconds(&self) -> Option<f64> {
        proc_cpu_seconds(self.child.as_ref()?.id())
    }

    /// The child's peak resident set so far, in kB (`VmHWM`).
    fn vm_hwm_kb(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGTERM (graceful shutdown), then waits for the exit; what it exited with.
    async fn stop(&mut self) -> Value {
        let Some(mut child) = self.child.take() else {
            return Value::Null;
        };
        let pid = child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return json!({"signal": "SIGTERM", "code": status.code()});
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return json!({"signal": "SIGKILL after 60 s", "code": null});
                }
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------- helpers

/// `n` valid changes of one entry each: (changeId, calendarId, body). Change
/// k of a calendar is agent k mod 50, on day k / 50, 08:00–16:00 UTC, so no
/// two of a calendar overlap and batches fill up to `batch.max_entries`.
fn changes(
    tag: &str,
    n: usize,
    calendars: usize,
    order: Order,
    sorted_keys: bool,
) -> Vec<(String, String, Vec<u8>)> {
    let run = rand::random::<u32>();
    let per_cal = n.div_ceil(calendars);
    (0..n)
        .map(|i| {
            let (cal, k) = match order {
                Order::Interleaved => (i % calendars, i / calendars),
                Order::CalendarMajor => (i / per_cal, i % per_cal),
            };
            let id = format!("bench-{tag}-{run:08x}-{i}");
            let calendar = format!("bench-cal-{cal:03}");
            let day = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).expect("a date")
                + chrono::Days::new((k / 50) as u64);
            // Fields in the contract's order, compact, as a publisher
            // serialising its own types writes them (not sorted, as a
            // `serde_json::Value` would).
            let body = BenchChange {
                schema_version: 1,
                change_id: &id,
                calendar_id: &calendar,
                occurred_at: "2024-01-01T00:00:00Z",
                source: "bench",
                entries: [crate::domain::ScheduleEntry {
                    agent_id: format!("agent-{:03}", k % 50),
                    start_date_time: format!("{day}T08:00:00Z"),
                    end_date_time: format!("{day}T16:00:00Z"),
                    breaks: vec![crate::domain::Break {
                        start_offset_minutes: 240,
                        duration_minutes: 30,
                    }],
                    availability_overrides: Vec::new(),
                }],
            };
            let body = if sorted_keys {
                serde_json::to_vec(&serde_json::to_value(&body).expect("JSON")).expect("JSON")
            } else {
                serde_json::to_vec(&body).expect("JSON")
            };
            (id, calendar, body)
        })
        .collect()
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct BenchChange<'a> {
    schema_version: u32,
    change_id: &'a str,
    calendar_id: &'a str,
    occurred_at: &'a str,
    source: &'a str,
    entries: [crate::domain::ScheduleEntry; 1],
}

fn change_props(id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(id.into())
}

/// Publishes with up to 2,000 confirms outstanding; fails if any is refused.
async fn publish_confirmed<'a>(
    ch: &Channel,
    messages: impl Iterator<Item = (&'a str, &'a str, &'a [u8], BasicProperties)>,
) -> Result<(), BenchError> {
    let mut pending = FuturesUnordered::new();
    let mut refused = 0usize;
    for (exchange, key, body, props) in messages {
        let c = ch
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?;
        pending.push(c);
        while pending.len() >= 2000 {
            if let Some(c) = pending.next().await
                && !c?.is_ack()
            {
                refused += 1;
            }
        }
    }
    while let Some(c) = pending.next().await {
        if !c?.is_ack() {
            refused += 1;
        }
    }
    if refused > 0 {
        return Err(BenchError::Refused(refused));
    }
    Ok(())
}

/// User + system CPU time of a process, from `/proc/<pid>/stat`.
fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    // utime and stime, in clock ticks.
    let stat = proc_stat(pid)?;
    Some((stat_field(&stat, 14)? + stat_field(&stat, 15)?) as f64 / CLOCK_TICKS_PER_SECOND)
}

/// `/proc/<pid>/stat` after the parenthesised command name (which may hold
/// spaces): the line from its 3rd field on.
fn proc_stat(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.to_owned())
}

/// Field `n` of a [`proc_stat`] line, numbered as in proc(5) (from 1, the
/// process id).
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    stat.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// CPU time stolen from this virtual machine so far, in seconds (all
/// CPUs): the `steal` column of `/proc/stat`'s `cpu` line, which counts
/// clock ticks. Runs that differ by a noisy neighbour differ here.
fn machine_stolen_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq steal ...
    let steal: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(steal as f64 / CLOCK_TICKS_PER_SECOND)
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux architecture Rust targets.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Rolls the local broker's quorum-queue write-ahead log over with
/// `rabbitmqctl`, so that a pre-fill after it is written to the new log and
/// the drain after that reads its messages from memory, every run alike.
/// Only for a broker on this machine; false (with a note) when it fails.
async fn roll_broker_wal() -> bool {
    if broker_cpu_seconds().is_none() {
        return false;
    }
    let run = tokio::process::Command::new("rabbitmqctl")
        .args(["eval", "ra_log_wal:force_roll_over(ra_log_wal)."])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok(out)) if out.status.success() && out.stdout.starts_with(b"ok") => true,
        Ok(Ok(out)) => {
            eprintln!(
                "bench: rabbitmqctl could not roll the broker's log over ({}); measuring without it (--no-wal-roll to skip the attempt)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Ok(Err(e)) => {
            eprintln!(
                "bench: cannot run rabbitmqctl ({e}); the broker's log is not rolled over before pre-fills"
            );
            false
        }
        Err(_) => {
            eprintln!(
                "bench: rabbitmqctl did not answer within 60 s; the broker's log is not rolled over"
            );
            false
        }
    }
}

/// When the worker, at `port`, had its first change in hand: the start of
/// its drain, as the raw consumer's clock starts at its first delivery. A new
/// consumer's first delivery comes late on a quorum queue, the later the
/// larger its prefetch (here about 20 ms at 1,000 and 350 ms at 50,000: the
/// queue checks a whole window out before it sends any of it). That is the
/// broker starting, once per consumer, not the rate the worker drains at; it
/// is reported beside the drain. Polls `csw_changes_received_total`; the
/// time is when the last poll that still saw 0 was sent.
async fn first_received(port: u16, within: Duration) -> Option<Instant> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    let mut before = Instant::now();
    while Instant::now() < deadline {
        let asked = Instant::now();
        let text = client.get(&url).send().await.ok()?.text().await.ok()?;
        let received = text
            .lines()
            .find_map(|l| l.strip_prefix("csw_changes_received_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if received > 0.0 {
            return Some(before);
        }
        before = asked;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

/// CPU time of the local broker (the `beam.smp` process), if it runs here.
fn broker_cpu_seconds() -> Option<f64> {
    // `rabbitmqctl` (which the benchmark runs to roll the broker's log)
    // is a `beam.smp` too, for a moment: the broker is the oldest one.
    let pid = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == "beam.smp").then_some(pid)
        })
        .min_by_key(|&pid| proc_start_ticks(pid).unwrap_or(u64::MAX))?;
    proc_cpu_seconds(pid)
}

/// When a process started, in clock ticks after boot (`starttime`, the
/// 22nd field of `/proc/<pid>/stat`).
fn proc_start_ticks(pid: u32) -> Option<u64> {
    stat_field(&proc_stat(pid)?, 22)
}

/// Waits (up to 20 s) until the local broker uses under a tenth of a core
/// over a quarter second: what it still does after a pre-fill (writing its
/// log to segments, say) or a drain must not be counted against the phase
/// after it.
/// Returns at once when the broker is not local.
async fn wait_broker_quiet(phase: &str) {
    const WINDOW: Duration = Duration::from_millis(250);
    let started = Instant::now();
    let Some(mut before) = broker_cpu_seconds() else {
        return;
    };
    loop {
        tokio::time::sleep(WINDOW).await;
        let Some(now) = broker_cpu_seconds() else {
            return;
        };
        let busy = (now - before) / WINDOW.as_secs_f64();
        before = now;
        if busy < 0.1 || started.elapsed() > Duration::from_secs(20) {
            eprintln!(
                "bench: {phase}: broker quiet after {} ms (last {:.0} % of a core)",
                ms(started.elapsed()),
                busy * 100.0
            );
            return;
        }
    }
}

fn free_port() -> Result<u16, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// What the numbers were measured on.
async fn machine(settings: &Settings) -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let broker = broker_version(&settings.amqp.url).await;
    json!({
        "cpus": cpus,
        "broker": format!("RabbitMQ {}", broker.unwrap_or_else(|| "?".into())),
        "brokerUrl": crate::redact::redact_url(&settings.amqp.url),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// The broker's version, from the management API on the AMQP host (port
/// 15672, the URL's credentials); `None` when that is not reachable.
async fn broker_version(amqp_url: &str) -> Option<String> {
    let url = reqwest::Url::parse(amqp_url).ok()?;
    let host = url.host_str()?;
    let user = if url.username().is_empty() {
        "guest"
    } else {
        url.username()
    };
    let pass = url.password().unwrap_or("guest");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let v: Value = http
        .get(format!("http://{host}:15672/api/overview"))
        .basic_auth(user, Some(pass))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["rabbitmq_version"].as_str().map(str::to_owned)
}

fn order_name(o: Order) -> &'static str {
    match o {
        Order::Interleaved => "interleaved",
        Order::CalendarMajor => "calendar-major",
    }
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[idx])
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_limit_for_the_documented_scenario() {
        // 40 calendars x 500 one-entry changes, max 500 entries: 40 batches of
        // 500; job 300 + 0.2 x 500 = 400 ms; 300/min = 5/s with a burst of 5.
        let l = api_limit(20_000, 40, 500, 3, 300, 0.2, 300);
        // rate: (40 - 5) / 5 + 0.4 = 7.4 s; concurrency: ceil(40/3) x 0.4 = 5.6 s.
        assert!((l.seconds - 7.4).abs() < 1e-9, "{}", l.seconds);
    }

    #[test]
    fn a_process_started_after_init() {
        let me = proc_start_ticks(std::process::id()).expect("this process's start");
        let init = proc_start_ticks(1).expect("init's start");
        assert!(init <= me, "init at {init}, this process at {me}");
    }

    #[test]
    fn changes_never_overlap_within_a_calendar() {
        let c = changes("t", 1000, 10, Order::Interleaved, false);
        let mut seen = std::collections::HashSet::new();
        for (_, cal, body) in &c {
            let v: Value = serde_json::from_slice(body).unwrap();
            let e = &v["entries"][0];
            assert!(seen.insert((
                cal.clone(),
                e["agentId"].as_str().unwrap().to_owned(),
                e["startDateTime"].as_str().unwrap().to_owned()
            )));
        }
    }
}
