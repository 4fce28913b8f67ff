//! The one way tests publish: a confirming channel of its own on the
//! test's inbound exchange (its own connection, so a worker's or a
//! collector's connection dying does not take it along).

use cxone_schedule_worker::{amqp, config::Settings};
use lapin::{BasicProperties, Channel, Connection, options::*};
use serde_json::Value;

use super::{broker::broker, scenario::Planned};

pub struct Publisher {
    conn: Connection,
    ch: Channel,
    exchange: String,
}

impl Publisher {
    /// Declares the topology (as the worker would) and opens the channel.
    pub async fn new(settings: &Settings) -> Publisher {
        let conn = broker().await;
        let ch = conn.create_channel().await.unwrap();
        amqp::declare_topology(&ch, &settings.amqp)
            .await
            .expect("topology");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Publisher {
            conn,
            ch,
            exchange: settings.amqp.inbound_exchange.clone(),
        }
    }

    /// Publishes a change body as `publish` would: routing key = calendarId,
    /// message id = changeId, persistent.
    pub async fn publish(&self, body: &[u8]) {
        let (key, props) = addressed(body);
        self.publish_raw(&key, body, props).await;
    }

    /// Publishes `body` as it is, with the given key and properties, and
    /// checks the broker confirmed it.
    pub async fn publish_raw(&self, key: &str, body: &[u8], props: BasicProperties) {
        let c = self
            .ch
            .basic_publish(
                self.exchange.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(c.is_ack(), "broker nacked a message");
    }

    /// Publishes every change body as [`Publisher::publish`] does,
    /// pipelining confirms, and checks each was confirmed.
    pub async fn publish_bodies(&self, bodies: &[Vec<u8>]) {
        for chunk in bodies.chunks(250) {
            let mut confirms = Vec::with_capacity(chunk.len());
            for body in chunk {
                let (key, props) = addressed(body);
                confirms.push(self.send(&key, body, props).await);
            }
            for c in confirms {
                assert!(c.await.expect("confirm").is_ack(), "broker nacked a change");
            }
        }
    }

    /// Publishes a planned workload in order (routing key = calendar,
    /// message id = change id, persistent), pipelining confirms.
    pub async fn publish_all(&self, changes: &[Planned]) {
        for chunk in changes.chunks(250) {
            let mut confirms = Vec::with_capacity(chunk.len());
            for c in chunk {
                let props = persistent_json().with_message_id(c.id.as_str().into());
                confirms.push(self.send(&c.calendar, &c.body, props).await);
            }
            for c in confirms {
                assert!(c.await.expect("confirm").is_ack(), "broker nacked a change");
            }
        }
    }

    async fn send(
        &self,
        key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> lapin::PublisherConfirm {
        self.ch
            .basic_publish(
                self.exchange.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish")
    }

    /// A channel of the publisher's connection, for tests that declare or
    /// delete something of their own.
    pub async fn channel(&self) -> Channel {
        self.conn.create_channel().await.unwrap()
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "bye".into()).await;
    }
}

fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// The routing key (calendarId) and properties (message id = changeId) of a
/// change body; a body that is not JSON gets an empty key and no message id.
fn addressed(body: &[u8]) -> (String, BasicProperties) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let key = v["calendarId"].as_str().unwrap_or("").to_owned();
    let mut props = persistent_json();
    if let Some(id) = v["changeId"].as_str() {
        props = props.with_message_id(id.into());
    }
    (key, props)
}
