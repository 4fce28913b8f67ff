//! cxone-schedule-worker: imports schedule changes from RabbitMQ into NICE
//! CXone Workforce Management, at least once, batched per calendar.
//!
//! # Layout
//!
//! Data flows one way: consume → validate → batch → import → publish → ack.
//!
//! - [`config`]: typed settings, layered defaults, env overrides, validation.
//! - [`tls`]: extra CA certificates for `amqps://` and `https://`.
//! - [`redact`]: URLs with their password masked, for logs and errors.
//! - [`domain`]: the change model and every validation rule; capacity.
//! - [`cxone`]: the only module that knows CXone: token cache, API client,
//!   error classes, retry policy.
//! - [`sim`]: the CXone simulator, in process for tests or standalone.
//! - [`amqp`]: connection, topology, confirmed publisher.
//! - [`pipeline`]: per-calendar batcher, import scheduler, job tracker,
//!   settlement (events, dead letters, then acks).
//! - [`http`]: health, readiness, metrics and the CXone webhook.
//! - [`telemetry`]: logs, traces and the metrics registry.
//! - [`app`]: wires the pieces together and owns shutdown.
//! - [`cmd`]: the CLI subcommands other than `run` (`validate`, `publish`, `demo`, `bench`).
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
pub mod sim;
pub mod telemetry;
pub mod tls;
