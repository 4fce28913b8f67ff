//! `csw-bench`: a reproducible end-to-end benchmark of the worker against
//! the broker at `AMQP_URL` and an in-process CXone simulator, printed as one
//! JSON document on stdout (progress on stderr).
//!
//! Scenario `throughput` (the default), in one run:
//! 1. the raw ceiling: a bare lapin consumer (prefetch 1000, one `multiple`
//!    ack per 100 deliveries) drains N pre-filled 1 KB messages from a queue
//!    of the inbound queue's type;
//! 2. the worker, started as a child process (the `cxone-schedule-worker`
//!    binary built beside this one, `run`), drains N pre-filled changes (one
//!    entry each, spread over the calendars) to their `completed` events; the
//!    simulator's jobs take no time and complete by webhook; the child's peak
//!    RSS is its `VmHWM`, read from `/proc/<pid>/status` before it is stopped
//!    with SIGTERM;
//! 3. latency: with the queue drained, changes are published at a steady
//!    rate (1,000/s by default) and publish → `completed` event is measured.
//!
//! Scenario `api-bound`: the simulator is the bottleneck (slow jobs, a rate
//! limit); the drain time is reported beside the lower limit the simulator's
//! own numbers imply, with the formula.
//!
//! Every exchange and queue gets a unique name and is deleted at the end.
#![forbid(unsafe_code)]

mod api_bound;
mod api_limit;
mod args;
mod broker;
mod changes;
mod error;
mod events;
mod latency;
mod numbers;
mod proc_stats;
mod raw;
mod report;
mod throughput;
mod topology;
mod worker;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Parser;
use cxone_schedule_worker::{config::Settings, telemetry};
use serde_json::Value;

use crate::{
    args::{BenchArgs, Scenario},
    error::BenchError,
};

#[derive(Parser)]
#[command(
    name = "csw-bench",
    version,
    about = "End-to-end benchmark: raw broker ceiling, worker drain, peak RSS, CXone requests, latency (JSON on stdout)."
)]
struct Cli {
    /// A TOML file layered over config/default.toml (for this process; the
    /// worker child is configured by `CSW__…` variables).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    bench: BenchArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Before any broker work: without the worker binary there is nothing to measure.
    let worker_exe = match worker::locate_binary() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match cxone_schedule_worker::app::runtime(settings.worker.threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        let _telemetry = telemetry::init(&settings.telemetry)?;
        run(&cli.bench, settings, &worker_exe).await
    });
    match result {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("a JSON value serialises")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs the scenario and returns its report.
async fn run(
    args: &BenchArgs,
    mut settings: Settings,
    worker_exe: &Path,
) -> Result<Value, BenchError> {
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
        Scenario::Throughput => throughput::run(args, settings, worker_exe).await,
        Scenario::ApiBound => api_bound::run(args, settings, worker_exe).await,
    }
}
