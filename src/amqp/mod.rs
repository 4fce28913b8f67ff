//! AMQP: connection, topology, the confirmed publisher and the ack tracker.
//!
//! The worker never uses lapin's automatic recovery: after a connection loss
//! it builds a new connection and new channels, so an ack can never reach the
//! broker for a delivery of the dead channel (lapin poisons those ackers) and
//! the broker redelivers them, as CONTRACT section 4 requires.

mod acks;
mod topology;

pub use acks::{AckTracker, MULTIPLE_ACK_CHUNK, STRAGGLER_DELAY};
pub use topology::{
    declare_topology, delete_topology, members_exchange_name, partition_exchange_name,
    partition_queue_name, webhook_relay_exchange_name,
};

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Connect, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use crate::config::AmqpSettings;
use crate::redact::redact_url;
use crate::tls::{CaFileError, amqp_client_config};

/// Something went wrong with the broker.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error(
        "cannot connect to the broker at {url}: {source}; check amqp.url (AMQP_URL) and that RabbitMQ is running"
    )]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("declaring {what} failed: {source}{hint}")]
    Topology {
        what: String,
        hint: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("broker channel error during {op}: {source}")]
    Channel {
        op: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error(
        "the broker refused (nacked) a message published to exchange {exchange:?} with routing key {routing_key:?}"
    )]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    #[error(
        "a message published to exchange {exchange:?} with routing key {routing_key:?} was returned as unroutable: the topology is broken (missing binding or alternate exchange); restart the worker to redeclare it"
    )]
    Returned {
        exchange: String,
        routing_key: String,
    },
    #[error("the broker connection is down; the message was not published")]
    Disconnected,
    #[error("amqp.ca_file: {0}")]
    CaFile(CaFileError),
}

impl AmqpError {
    /// Connection-level problems heal by reconnecting; topology mismatches do not.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            AmqpError::Topology { .. } | AmqpError::Returned { .. } | AmqpError::CaFile(_)
        )
    }
}

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

/// A channel in confirm mode: every publish waits for the broker's ack, and a
/// `mandatory` publish that comes back unroutable is an error, not a success.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn open(conn: &Connection) -> Result<Publisher, AmqpError> {
        let channel = conn
            .create_channel()
            .await
            .map_err(|source| AmqpError::Channel {
                op: "opening the publisher channel",
                source,
            })?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|source| AmqpError::Channel {
                op: "confirm.select",
                source,
            })?;
        Ok(Publisher { channel })
    }

    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes and waits for the broker's confirm. Many publishes may be in
    /// flight at once on the one channel: confirms are pipelined by lapin.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), AmqpError> {
        self.send(exchange, routing_key, body, properties)
            .await?
            .wait()
            .await
    }

    /// The first half of [`Publisher::publish`]: returns once the message's
    /// frames are written, so a later publish on this channel reaches the
    /// broker after it, without waiting for its confirm.
    pub async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Confirm, AmqpError> {
        if !self.is_open() {
            return Err(AmqpError::Disconnected);
        }
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                properties,
            )
            .await
            .map_err(|source| AmqpError::Channel {
                op: "basic.publish",
                source,
            })?;
        Ok(Confirm {
            confirm,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        })
    }
}

/// The broker's answer to a [`Publisher::send`], still to come.
pub struct Confirm {
    confirm: lapin::PublisherConfirm,
    exchange: String,
    routing_key: String,
}

impl Confirm {
    /// Waits for the broker's confirm: a nack, or a `mandatory` message
    /// that came back unroutable, is an error.
    pub async fn wait(self) -> Result<(), AmqpError> {
        let confirm = self.confirm.await.map_err(|source| AmqpError::Channel {
            op: "waiting for a publisher confirm",
            source,
        })?;
        if confirm.is_nack() {
            return Err(AmqpError::Nacked {
                exchange: self.exchange,
                routing_key: self.routing_key,
            });
        }
        if confirm.take_message().is_some() {
            return Err(AmqpError::Returned {
                exchange: self.exchange,
                routing_key: self.routing_key,
            });
        }
        Ok(())
    }
}

/// Properties of a persistent message.
pub fn persistent(content_type: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(content_type.into())
        .with_delivery_mode(2)
}

/// Reads a string header (`traceparent`, ...) from a property table.
pub fn header_str(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    let value = headers?.inner().get(name)?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Exponential backoff with full jitter, for reconnects.
pub fn reconnect_delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    let exp = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
    let jittered = rand::random_range(exp / 2..=exp.max(1));
    Duration::from_millis(jittered)
}
