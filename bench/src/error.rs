//! Why a benchmark run stopped without a report.

use std::path::PathBuf;

use cxone_schedule_worker::{amqp, telemetry::TelemetryError};

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
    #[error(
        "the worker binary {path} is missing: the benchmark runs the one built beside it; build it with `{build}`"
    )]
    WorkerMissing { path: PathBuf, build: &'static str },
    #[error("cannot start telemetry: {0}")]
    Telemetry(#[from] TelemetryError),
}
