//! The integration tests, as one binary: the shared harness in [`support`]
//! is compiled once, and cargo runs the tests in parallel threads.
//!
//! Tests that need a running RabbitMQ (127.0.0.1:5672, or `AMQP_URL`) say
//! how to start one when it is missing. The one test that stops the broker
//! application, `tests/fault_broker_restart.rs`, is a binary of its own:
//! cargo runs test binaries one after another, so no test here sees the
//! broker go away.

mod support;

mod control_plane;
mod cxone_client;
mod demo;
mod deploy;
mod faults;
mod fleet;
mod fuzz_validation;
mod logs;
mod metrics_endpoint;
mod readme;
mod resilience;
mod scale_out;
mod security;
mod sim;
mod validate_cli;
mod worker;
