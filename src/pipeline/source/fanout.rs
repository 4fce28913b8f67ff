//! Private fanout subscriptions: how replicas hear each other's heartbeats
//! and relayed webhook notices.

use lapin::{
    Channel,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};

use crate::amqp::AmqpError;

/// A private, auto-deleted queue bound to a fanout exchange, consumed without acks.
pub(super) async fn fanout_stream(
    ch: &Channel,
    exchange: &str,
) -> Result<lapin::Consumer, AmqpError> {
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| AmqpError::Channel {
            op: "declaring the membership queue",
            source,
        })?;
    ch.queue_bind(
        q.name().clone(),
        exchange.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|source| AmqpError::Channel {
        op: "binding a private fanout queue",
        source,
    })?;
    ch.basic_consume(
        q.name().clone(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|source| AmqpError::Channel {
        op: "consuming a private fanout queue",
        source,
    })
}
