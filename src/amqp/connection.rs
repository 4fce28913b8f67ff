//! Connecting to the broker, and the backoff between reconnects.

use std::time::Duration;

use lapin::{Connect, Connection, ConnectionProperties};

use super::AmqpError;
use crate::config::AmqpSettings;
use crate::redact::redact_url;
use crate::tls::amqp_client_config;

/// Opens a connection named after this worker instance (shown in the
/// management UI). `amqps://` goes through rustls, trusting the platform's
/// store plus the certificates of `amqp.ca_file` when set.
pub async fn connect(amqp: &AmqpSettings, connection_name: &str) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default().with_connection_name(connection_name.into());
    // Read on every connect: a rotated CA file is picked up on reconnect.
    let tls = amqp_client_config(&amqp.ca_file).map_err(AmqpError::CaFile)?;
    let connect_error = |source| AmqpError::Connect {
        url: redact_url(&amqp.url),
        source,
    };
    let runtime = lapin::runtime::default_runtime().map_err(connect_error)?;
    amqp.url
        .as_str()
        .connect_with_config(props, tls, runtime)
        .await
        .map_err(connect_error)
}

/// Exponential backoff with full jitter, for reconnects.
pub fn reconnect_delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    let exp = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
    let jittered = rand::random_range(exp / 2..=exp.max(1));
    Duration::from_millis(jittered)
}
