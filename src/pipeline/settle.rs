//! Settlement: the outcome's event, then any dead-letter copies, each
//! confirmed by the broker, and only then the acks (CONTRACT section 4).

use std::time::Duration;

use futures_util::future::try_join_all;
use lapin::types::{AMQPValue, FieldTable, LongString};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{InboundMessage, ack_all, events};
use crate::amqp::{AmqpError, Publisher, persistent};

/// The current publisher; `None` while the broker connection is down.
pub type PublisherWatch = watch::Receiver<Option<Publisher>>;

/// Where settlement publishes.
#[derive(Clone)]
pub struct Outbound {
    pub publisher: PublisherWatch,
    pub events_exchange: String,
    pub dead_letter_exchange: String,
    /// Cancelled when shutdown's grace period is over: stop waiting for the broker.
    pub hard_stop: CancellationToken,
}

/// Why settlement gave up: the deliveries stay unacked and the broker redelivers them.
#[derive(Debug, thiserror::Error)]
#[error("settlement abandoned: {0}")]
pub struct Abandoned(String);

impl Outbound {
    /// Publishes with confirms, waiting through broker outages (a new
    /// connection brings a new publisher) until the hard stop.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: lapin::BasicProperties,
    ) -> Result<(), Abandoned> {
        let mut watch = self.publisher.clone();
        loop {
            let current = watch.borrow_and_update().clone();
            if let Some(p) = current.filter(Publisher::is_open) {
                match p
                    .publish(exchange, routing_key, body, properties.clone())
                    .await
                {
                    Ok(()) => return Ok(()),
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %e, exchange, routing_key, "publish failed; waiting for the broker connection to come back");
                    }
                    Err(e) => return Err(Abandoned(e.to_string())),
                }
            }
            tokio::select! {
                changed = watch.changed() => {
                    if changed.is_err() {
                        return Err(Abandoned("the connection manager stopped".into()));
                    }
                }
                // A publisher can die without the watch changing yet; look again soon.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.hard_stop.cancelled() => {
                    return Err(Abandoned("shutdown grace period over".into()));
                }
            }
        }
    }

    pub async fn publish_event(
        &self,
        routing_key: &str,
        body: &[u8],
        traceparent: Option<&str>,
    ) -> Result<(), Abandoned> {
        let mut props = persistent(events::CONTENT_TYPE);
        if let Some(tp) = traceparent {
            let mut headers = FieldTable::default();
            headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(LongString::from(tp)),
            );
            props = props.with_headers(headers);
        }
        self.publish(&self.events_exchange, routing_key, body, props)
            .await?;
        metrics::counter!("csw_events_published_total", "type" => routing_key.to_owned())
            .increment(1);
        Ok(())
    }

    /// Copies each message, body and properties as received, to the
    /// dead-letter exchange with `x-error-code` and `x-error-message`.
    pub async fn dead_letter(
        &self,
        messages: &[&InboundMessage],
        code: &str,
        message: &str,
    ) -> Result<(), Abandoned> {
        // Header values are capped so a long error list cannot exceed frame limits.
        let message = truncate(message, 4000);
        try_join_all(messages.iter().map(|m| {
            let props = m.properties.to_basic();
            let mut headers = props.headers().clone().unwrap_or_default();
            headers.insert(
                "x-error-code".into(),
                AMQPValue::LongString(LongString::from(code)),
            );
            headers.insert(
                "x-error-message".into(),
                AMQPValue::LongString(LongString::from(message)),
            );
            let props = props.with_headers(headers).with_delivery_mode(2);
            self.publish(&self.dead_letter_exchange, &m.routing_key, &m.body, props)
        }))
        .await?;
        metrics::counter!("csw_dead_lettered_total", "code" => code.to_owned())
            .increment(messages.len() as u64);
        Ok(())
    }

    /// Event, dead-letter copies if any, then acks. On `Err` nothing was acked.
    pub async fn settle(
        &self,
        routing_key: &str,
        event: &[u8],
        traceparent: Option<&str>,
        dead_letter: Option<(&str, &str)>,
        messages: &[&InboundMessage],
    ) -> Result<(), Abandoned> {
        self.publish_event(routing_key, event, traceparent).await?;
        if let Some((code, message)) = dead_letter {
            self.dead_letter(messages, code, message).await?;
        }
        ack_all(messages.iter().copied()).await;
        Ok(())
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl From<AmqpError> for Abandoned {
    fn from(e: AmqpError) -> Self {
        Abandoned(e.to_string())
    }
}
