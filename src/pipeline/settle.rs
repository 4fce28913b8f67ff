//! Settlement: the outcome's event, then any dead-letter copies, each
//! confirmed by the broker, and only then the acks (docs/contract.md §9.1; dead letters §8).

use crate::telemetry::metrics as metric;
use std::time::Duration;

use futures_util::future::try_join_all;
use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::events;
use crate::amqp::{AckBarrier, AmqpError, Confirm, InboundMessage, Publisher, ack_all, persistent};

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
        self.publish(
            &self.events_exchange,
            routing_key,
            body,
            event_properties(traceparent),
        )
        .await?;
        metrics::counter!(metric::EVENTS_PUBLISHED_TOTAL, "type" => routing_key.to_owned())
            .increment(1);
        Ok(())
    }

    /// Sends an event without waiting for its confirm: a later event on the
    /// publisher channel reaches the broker after it, and
    /// [`SentEvent::confirmed`] waits for the broker to take it. With the
    /// connection down it is not sent yet; `confirmed` then publishes it,
    /// waiting for the broker like [`Outbound::publish_event`].
    pub async fn send_event(
        &self,
        routing_key: &'static str,
        body: Vec<u8>,
        traceparent: Option<&str>,
    ) -> SentEvent {
        let properties = event_properties(traceparent);
        let current = self.publisher.borrow().clone();
        let confirm = match current.filter(Publisher::is_open) {
            Some(p) => p
                .send(&self.events_exchange, routing_key, &body, properties.clone())
                .await
                .inspect_err(|e| {
                    tracing::debug!(error = %e, routing_key, "event not sent yet; it is published before the batch is acked")
                })
                .ok(),
            None => None,
        };
        SentEvent {
            routing_key,
            body,
            properties,
            confirm,
        }
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
            let props = m.properties();
            let headers = dead_letter_headers(props.headers().as_ref(), code, message);
            let props = props.with_headers(headers).with_delivery_mode(2);
            self.publish(&self.dead_letter_exchange, m.routing_key(), m.body(), props)
        }))
        .await?;
        metrics::counter!(metric::DEAD_LETTERED_TOTAL, "code" => code.to_owned())
            .increment(messages.len() as u64);
        Ok(())
    }

    /// Event, dead-letter copies if any, then acks; returns where the acked
    /// deliveries end on each channel. On `Err` nothing was acked.
    ///
    /// `earlier` is an event of the same batch sent before this one (the
    /// import's `submitted`): it reaches the broker first, and its confirm is
    /// awaited with this event's, before anything is acked. Waiting for the
    /// two confirms together rather than one after the other takes a broker
    /// round trip (a quorum queue's log sync) off every import.
    pub async fn settle(
        &self,
        earlier: Option<SentEvent>,
        routing_key: &'static str,
        event: Vec<u8>,
        traceparent: Option<&str>,
        dead_letter: Option<(&str, &str)>,
        messages: &[&InboundMessage],
    ) -> Result<AckBarrier, Abandoned> {
        // An earlier event that could not be sent yet is published first, so
        // listeners still see the batch's events in order.
        let earlier = match earlier {
            Some(e) if e.confirm.is_none() => {
                e.confirmed(self).await?;
                None
            }
            e => e,
        };
        let this = self.send_event(routing_key, event, traceparent).await;
        if let Some(e) = earlier {
            e.confirmed(self).await?;
        }
        this.confirmed(self).await?;
        if let Some((code, message)) = dead_letter {
            self.dead_letter(messages, code, message).await?;
        }
        Ok(ack_all(messages.iter().copied()).await)
    }
}

/// An event sent by [`Outbound::send_event`], its confirm still to come.
pub struct SentEvent {
    routing_key: &'static str,
    body: Vec<u8>,
    properties: lapin::BasicProperties,
    /// `None` when it could not be sent (the connection was down).
    confirm: Option<Confirm>,
}

impl SentEvent {
    /// Waits until the broker has taken the event. A nack or a return
    /// abandons it; a connection lost before the confirm means publishing it
    /// again, waiting through the outage like [`Outbound::publish_event`]
    /// (listeners drop the duplicate by its id).
    pub async fn confirmed(self, outbound: &Outbound) -> Result<(), Abandoned> {
        let taken = match self.confirm {
            Some(confirm) => match confirm.wait().await {
                Ok(()) => true,
                Err(e) if !e.is_transient() => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, routing_key = self.routing_key, "event not confirmed; publishing it again once the broker connection is back");
                    false
                }
            },
            None => false,
        };
        if !taken {
            outbound
                .publish(
                    &outbound.events_exchange,
                    self.routing_key,
                    &self.body,
                    self.properties,
                )
                .await?;
        }
        metrics::counter!(metric::EVENTS_PUBLISHED_TOTAL, "type" => self.routing_key).increment(1);
        Ok(())
    }
}

fn event_properties(traceparent: Option<&str>) -> lapin::BasicProperties {
    let mut props = persistent(events::CONTENT_TYPE);
    if let Some(tp) = traceparent {
        let mut headers = FieldTable::default();
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(LongString::from(tp)),
        );
        props = props.with_headers(headers);
    }
    props
}

/// Bytes a dead-letter copy's header table may take. The broker refuses a
/// content header larger than its frame (131072 bytes by default) by closing
/// the whole connection, so a copy of a message whose headers nearly filled
/// the frame would, with `x-error-*` added, fail on every redelivery and take
/// every in-flight delivery down with it. Well under the default frame size,
/// with room for the other properties.
pub const DEAD_LETTER_HEADER_BUDGET: usize = 96 * 1024;

/// The original headers plus `x-error-code` and `x-error-message`. When that
/// exceeds [`DEAD_LETTER_HEADER_BUDGET`], the largest original headers are
/// dropped until it fits, and their names listed in `x-dropped-headers`.
pub fn dead_letter_headers(original: Option<&FieldTable>, code: &str, message: &str) -> FieldTable {
    let mut kept: BTreeMap<ShortString, AMQPValue> =
        original.map(|t| t.inner().clone()).unwrap_or_default();
    kept.remove("x-error-code");
    kept.remove("x-error-message");
    kept.remove("x-dropped-headers");
    let ours = 3 * 256 + code.len() + message.len();
    let mut total: usize = kept.iter().map(|(k, v)| entry_len(k, v)).sum::<usize>() + ours;
    let mut dropped = Vec::new();
    while total > DEAD_LETTER_HEADER_BUDGET {
        let Some((name, len)) = kept
            .iter()
            .map(|(k, v)| (k.clone(), entry_len(k, v)))
            .max_by_key(|(_, len)| *len)
        else {
            break;
        };
        kept.remove(&name);
        total -= len;
        dropped.push(name.as_str().to_owned());
    }
    let mut headers = FieldTable::from(kept);
    headers.insert(
        "x-error-code".into(),
        AMQPValue::LongString(LongString::from(code)),
    );
    headers.insert(
        "x-error-message".into(),
        AMQPValue::LongString(LongString::from(message)),
    );
    if !dropped.is_empty() {
        tracing::warn!(headers = ?dropped, "dead-letter copy too large for an AMQP frame; dropped its largest headers");
        headers.insert(
            "x-dropped-headers".into(),
            AMQPValue::LongString(LongString::from(truncate(&dropped.join(","), 1024))),
        );
    }
    headers
}

/// An upper bound of a table entry's AMQP 0-9-1 encoding: name, type, value.
fn entry_len(name: &ShortString, v: &AMQPValue) -> usize {
    1 + name.as_str().len() + value_len(v)
}

fn value_len(v: &AMQPValue) -> usize {
    1 + match v {
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
        AMQPValue::FieldArray(a) => 4 + a.as_slice().iter().map(value_len).sum::<usize>(),
        AMQPValue::FieldTable(t) => {
            4 + t
                .inner()
                .iter()
                .map(|(k, v)| entry_len(k, v))
                .sum::<usize>()
        }
        _ => 8,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn long(n: usize) -> AMQPValue {
        AMQPValue::LongString(LongString::from("h".repeat(n)))
    }

    #[test]
    fn small_headers_are_kept_and_the_error_added() {
        let mut t = FieldTable::default();
        t.insert("traceparent".into(), long(55));
        t.insert("x-error-code".into(), long(3));
        let h = dead_letter_headers(Some(&t), "INVALID_JSON", "bad");
        assert!(h.contains_key("traceparent"));
        assert!(!h.contains_key("x-dropped-headers"));
        assert_eq!(
            h.inner()["x-error-code"],
            AMQPValue::LongString(LongString::from("INVALID_JSON"))
        );
    }

    #[test]
    fn headers_that_would_overflow_a_frame_are_dropped_largest_first() {
        // Nearly a whole 128 KiB frame of headers, as a publisher may send.
        let mut t = FieldTable::default();
        t.insert("x-junk".into(), long(124_000));
        t.insert("x-more".into(), long(5_000));
        t.insert("keep-me".into(), long(10));
        let h = dead_letter_headers(Some(&t), "MISSING_FIELD", &"m".repeat(4000));
        let size: usize = h.inner().iter().map(|(k, v)| entry_len(k, v)).sum();
        assert!(size <= DEAD_LETTER_HEADER_BUDGET, "{size}");
        assert!(!h.contains_key("x-junk"));
        assert!(h.contains_key("x-more") && h.contains_key("keep-me"));
        assert_eq!(
            h.inner()["x-dropped-headers"],
            AMQPValue::LongString(LongString::from("x-junk"))
        );
    }
}
