//! Confirmed publishing: every message waits for the broker's confirm.

use lapin::{
    BasicProperties, Channel, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};

use super::AmqpError;

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
