//! Connecting to the broker, and the backoff between reconnects.

use std::time::Duration;

use lapin::{Connect, Connection, ConnectionProperties, tcp::OwnedTLSConfig};

use super::AmqpError;
use crate::config::{AmqpSettings, load_ca_pem, redact_url};

/// Opens a connection named after this worker instance (shown in the
/// management UI). `amqps://` goes through rustls, trusting the platform's
/// store plus the certificates of `amqp.ca_file` when set.
pub async fn connect(amqp: &AmqpSettings, connection_name: &str) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default().with_connection_name(connection_name.into());
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: if amqp.ca_file.is_empty() {
            None
        } else {
            // Read on every connect: a rotated CA file is picked up on reconnect.
            Some(load_ca_pem(&amqp.ca_file).map_err(AmqpError::CaFile)?.0)
        },
    };
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
pub fn reconnect_delay(attempt: u32, initial_ms: u64, max_ms: u64) -> Duration {
    let exp = initial_ms
        .saturating_mul(1u64 << attempt.min(20))
        .min(max_ms);
    let jittered = rand::random_range(exp / 2..=exp.max(1));
    Duration::from_millis(jittered)
}
