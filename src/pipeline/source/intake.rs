//! Takes deliveries off lapin's hands, validates them and hands them on.

use crate::telemetry::metrics as metric;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::Instrument;

use super::Source;
use crate::{
    amqp::{AckTracker, InboundMessage, PropertiesInterner},
    domain::{self, Rejection},
    pipeline::{batch::Accepted, events, settle::Outbound},
};

/// Takes a delivery off lapin's hands in the compact form the worker keeps
/// it in: registered for its ack, properties shared with the previous
/// delivery's where equal. Cheap, so lapin's own buffer is drained quickly.
pub(super) fn take(
    delivery: lapin::message::Delivery,
    tracker: &Arc<AckTracker>,
    interner: &mut PropertiesInterner,
    received_total: &metrics::Counter,
) -> InboundMessage {
    tracker.register(delivery.delivery_tag);
    received_total.increment(1);
    InboundMessage::new(
        delivery.delivery_tag,
        tracker.clone(),
        delivery.data,
        delivery.routing_key.as_str(),
        delivery.properties,
        interner,
        delivery.redelivered,
    )
}

/// Validates a taken delivery and hands it to its batch, or to settlement
/// as a rejection.
pub(super) fn process(src: &Source, mut msg: InboundMessage) {
    let cfg = &src.cfg;
    // One span per delivery, at debug level: at the default `info` filter it
    // costs nothing on the hot path; batches and imports have info spans.
    let span = tracing::debug_span!(
        "delivery",
        delivery_tag = msg.tag,
        redelivered = msg.redelivered,
        change_id = tracing::field::Empty,
        calendar_id = tracing::field::Empty,
    );
    let _entered = span.enter();
    let started = Instant::now();
    let parsed = domain::parse_change(
        msg.body(),
        &msg.meta(),
        &cfg.parse.limits,
        cfg.parse.default_mode,
    );
    let validation = started.elapsed();
    match &parsed {
        Ok(c) => {
            span.record("change_id", c.change_id.as_str());
            span.record("calendar_id", c.calendar_id.as_str());
        }
        Err(r) => {
            span.record("change_id", r.change_id.as_str());
        }
    }
    tracing::debug!(valid = parsed.is_ok(), "delivery validated");
    match parsed {
        Ok(change) => {
            msg.set_change_id(&change.change_id);
            src.batcher.add(Accepted {
                change,
                msg,
                validation,
            });
        }
        Err(rejection) => {
            let outbound = src.outbound.clone();
            let source = cfg.source.clone();
            let span = tracing::info_span!("rejection", change_id = %rejection.change_id);
            crate::telemetry::adopt_parent(&span, msg.traceparent());
            src.tasks.spawn(
                async move { settle_rejection(&outbound, &source, rejection, msg).await }
                    .instrument(span),
            );
        }
    }
}

async fn settle_rejection(
    outbound: &Outbound,
    source: &str,
    rejection: Rejection,
    msg: InboundMessage,
) {
    let code = rejection.primary_code();
    metrics::counter!(metric::CHANGES_REJECTED_TOTAL, "code" => code.as_str()).increment(1);
    tracing::info!(change_id = %rejection.change_id, %code, "change rejected: {}", rejection.summary());
    let traceparent = crate::telemetry::outgoing_traceparent(msg.traceparent());
    let tp = traceparent.as_deref();
    let event = events::encode(
        events::REJECTED,
        &rejection.change_id,
        source,
        rejection.calendar_id.as_deref(),
        tp,
        &events::Rejected {
            change_id: &rejection.change_id,
            calendar_id: rejection.calendar_id.as_deref(),
            message_id: msg.message_id(),
            errors: &rejection.errors,
        },
    );
    if let Err(e) = outbound
        .settle(
            None,
            events::REJECTED,
            event,
            tp,
            Some((code.as_str(), &rejection.summary())),
            &[&msg],
        )
        .await
    {
        tracing::warn!(error = %e, "rejection left unacked; the broker will redeliver it");
    }
}
