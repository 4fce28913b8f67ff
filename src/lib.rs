//! cxone-schedule-worker: imports schedule changes from RabbitMQ into NICE
//! CXone Workforce Management, at least once, batched per calendar.
//!
//! # Layout
//!
//! Data flows one way: consume → validate → batch → import → publish → ack.
//!
//! - [`config`]: typed settings (`mod`), layered defaults and env overrides
//!   (`load`), checks at start (`validate`).
//! - [`tls`]: extra CA certificates for `amqps://` and `https://`.
//! - [`redact`]: URLs with their password masked, for logs and errors.
//! - [`domain`]: the change model and every validation rule; capacity.
//! - [`cxone`]: the only module that knows CXone: token cache, API client,
//!   error classes, retry policy, the import body's JSON shape.
//! - [`sim`]: the CXone simulator, in process for tests or standalone.
//! - [`amqp`]: connection, topology, confirmed publisher, the delivery as
//!   the worker keeps it, acks and the ack barrier.
//! - [`pipeline`]: the stages in order: `source` (consume, validate),
//!   `batch`, `import` (with `jobs`), `settle` (publish, ack), `events`.
//! - [`http`]: health, readiness, metrics and the CXone webhook.
//! - [`telemetry`]: logs, traces and the metrics registry; `telemetry::metrics`
//!   names every metric once, with its help text.
//! - [`shutdown`]: the shutdown's phases and the signals that start it.
//! - [`app`]: wires the stages together and runs the shutdown's phases.
//! - [`cmd`]: the CLI subcommands other than `run` (`validate`, `publish`, `demo`).
//! - `substring`: the substring search the delivery and the import body share.
#![forbid(unsafe_code)]

pub mod amqp;
pub mod app;
pub mod cmd;
pub mod config;
pub mod cxone;
pub mod domain;
pub mod http;
pub mod pipeline;
pub mod redact;
pub mod shutdown;
pub mod sim;
mod substring;
pub mod telemetry;
pub mod tls;
