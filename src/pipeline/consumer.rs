//! The broker side of the worker: one connection at a time, rebuilt after a
//! loss, feeding deliveries into the pipeline.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, stream::select_all};
use lapin::{
    Connection,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{
    InboundMessage,
    coordinator::{Accepted, Input},
    events,
    settle::Outbound,
};
use crate::{
    amqp::{self, AckTracker, AmqpError, Publisher, header_str},
    config::{AmqpSettings, Limits},
    domain::{self, MessageMeta, Rejection, ValidationMode},
};

/// What the connection manager needs to know.
pub struct ConsumerConfig {
    pub amqp: AmqpSettings,
    pub prefetch: u16,
    pub limits: Limits,
    pub default_mode: ValidationMode,
    pub connection_name: String,
    /// CloudEvents `source` for rejection events.
    pub source: String,
}

/// Signals between the connection manager and the rest of the app.
pub struct Control {
    /// Stop taking deliveries (shutdown has begun).
    pub stop_consuming: CancellationToken,
    /// Cancelled by the manager once it no longer consumes.
    pub consumer_stopped: CancellationToken,
    /// Close the connection (the pipeline has drained or given up).
    pub close: CancellationToken,
    /// Broker connection and channels are up: what `/readyz` reports.
    pub ready: Arc<AtomicBool>,
}

enum SessionEnd {
    Lost,
    Closed,
}

/// Runs connections until `control.close`; reconnects with backoff after a
/// loss. Returns an error only for problems reconnecting cannot fix (a
/// topology that conflicts with what is on the broker).
pub async fn run(
    cfg: ConsumerConfig,
    publisher: watch::Sender<Option<Publisher>>,
    coordinator: mpsc::UnboundedSender<Input>,
    outbound: Outbound,
    tasks: TaskTracker,
    control: Control,
) -> Result<(), AmqpError> {
    let mut attempt = 0u32;
    loop {
        if control.close.is_cancelled() {
            break;
        }
        let started = Instant::now();
        match session(&cfg, &publisher, &coordinator, &outbound, &tasks, &control).await {
            Ok(SessionEnd::Closed) => break,
            Ok(SessionEnd::Lost) => {
                tracing::warn!(
                    "broker connection lost; reconnecting (unacked deliveries will be redelivered)"
                );
            }
            Err(e) if !e.is_transient() => {
                control.ready.store(false, Ordering::SeqCst);
                publisher.send_replace(None);
                control.consumer_stopped.cancel();
                return Err(e);
            }
            Err(e) => tracing::warn!(error = %e, "broker unavailable; retrying"),
        }
        control.ready.store(false, Ordering::SeqCst);
        metrics::gauge!("csw_broker_connected").set(0.0);
        publisher.send_replace(None);
        metrics::counter!("csw_broker_reconnects_total").increment(1);
        if started.elapsed() > Duration::from_secs(30) {
            attempt = 0;
        }
        let delay = amqp::reconnect_delay(
            attempt,
            cfg.amqp.reconnect_initial_ms,
            cfg.amqp.reconnect_max_ms,
        );
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = control.close.cancelled() => break,
        }
    }
    control.consumer_stopped.cancel();
    Ok(())
}

async fn session(
    cfg: &ConsumerConfig,
    publisher_tx: &watch::Sender<Option<Publisher>>,
    coordinator: &mpsc::UnboundedSender<Input>,
    outbound: &Outbound,
    tasks: &TaskTracker,
    control: &Control,
) -> Result<SessionEnd, AmqpError> {
    let conn = amqp::connect(&cfg.amqp.url, &cfg.connection_name).await?;
    let setup = conn
        .create_channel()
        .await
        .map_err(|source| AmqpError::Channel {
            op: "opening the setup channel",
            source,
        })?;
    let queues = amqp::declare_topology(&setup, &cfg.amqp).await?;
    let _ = setup.close(200, "topology declared".into()).await;
    let publisher = Publisher::open(&conn).await?;
    publisher_tx.send_replace(Some(publisher.clone()));

    let consuming = !control.stop_consuming.is_cancelled();
    let mut consumer_channel = None;
    let mut stream = None;
    if consuming {
        let ch = conn
            .create_channel()
            .await
            .map_err(|source| AmqpError::Channel {
                op: "opening the consumer channel",
                source,
            })?;
        // Prefetch is the only backpressure (lapin buffers without bound), and it
        // must be applied again on every new channel.
        ch.basic_qos(cfg.prefetch, BasicQosOptions::default())
            .await
            .map_err(|source| AmqpError::Channel {
                op: "basic.qos",
                source,
            })?;
        let mut consumers = Vec::with_capacity(queues.len());
        for (i, q) in queues.iter().enumerate() {
            let consumer = ch
                .basic_consume(
                    ShortString::from(q.as_str()),
                    ShortString::from(format!("{}-{i}", cfg.connection_name)),
                    BasicConsumeOptions::default(),
                    consume_args(),
                )
                .await
                .map_err(|source| AmqpError::Channel {
                    op: "basic.consume",
                    source,
                })?;
            consumers.push(consumer);
        }
        stream = Some((select_all(consumers), Arc::new(AckTracker::new(ch.clone()))));
        consumer_channel = Some(ch);
    }
    control.ready.store(true, Ordering::SeqCst);
    metrics::gauge!("csw_broker_connected").set(1.0);
    tracing::info!(queues = ?queues, prefetch = cfg.prefetch, "connected to the broker");

    let mut health = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            delivery = next(&mut stream) => match delivery {
                Some(Ok(delivery)) => {
                    let tracker = &stream.as_ref().expect("consuming").1;
                    handle(cfg, delivery, tracker, coordinator, outbound, tasks).await;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    close_quietly(&conn).await;
                    return Ok(SessionEnd::Lost);
                }
                None => {
                    tracing::warn!("the broker cancelled the consumer");
                    close_quietly(&conn).await;
                    return Ok(SessionEnd::Lost);
                }
            },
            _ = control.stop_consuming.cancelled(), if stream.is_some() => {
                if let (Some(ch), Some((consumers, _))) = (&consumer_channel, &stream) {
                    for c in consumers.iter() {
                        let _ = ch.basic_cancel(c.tag(), BasicCancelOptions::default()).await;
                    }
                }
                // Deliveries still buffered stay unacked; the broker requeues
                // them when the connection closes.
                stream = None;
                control.consumer_stopped.cancel();
                tracing::info!("stopped consuming; draining open batches");
            }
            _ = control.close.cancelled() => {
                control.ready.store(false, Ordering::SeqCst);
                publisher_tx.send_replace(None);
                close_quietly(&conn).await;
                return Ok(SessionEnd::Closed);
            }
            _ = health.tick() => {
                if !conn.status().connected() || !publisher.is_open()
                    || consumer_channel.as_ref().is_some_and(|c| !c.status().connected())
                {
                    close_quietly(&conn).await;
                    return Ok(SessionEnd::Lost);
                }
            }
        }
        if control.stop_consuming.is_cancelled() && stream.is_none() {
            control.consumer_stopped.cancel();
        }
    }
}

type Merged = (
    futures_util::stream::SelectAll<lapin::Consumer>,
    Arc<AckTracker>,
);

async fn next(stream: &mut Option<Merged>) -> Option<lapin::Result<lapin::message::Delivery>> {
    match stream {
        Some((s, _)) => s.next().await,
        None => std::future::pending().await,
    }
}

fn consume_args() -> FieldTable {
    let mut args = FieldTable::default();
    // Consumer priorities let single-active-consumer partitions prefer live replicas.
    args.insert("x-priority".into(), AMQPValue::LongInt(0));
    args
}

async fn close_quietly(conn: &Connection) {
    if conn.status().connected() {
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into())).await;
    }
}

async fn handle(
    cfg: &ConsumerConfig,
    delivery: lapin::message::Delivery,
    tracker: &Arc<AckTracker>,
    coordinator: &mpsc::UnboundedSender<Input>,
    outbound: &Outbound,
    tasks: &TaskTracker,
) {
    let received_at = Instant::now();
    tracker.register(delivery.delivery_tag).await;
    metrics::counter!("csw_changes_received_total").increment(1);
    let props = delivery.properties;
    let parsed = {
        let meta = MessageMeta {
            content_type: props.content_type().as_ref().map(|s| s.as_str()),
            message_id: props.message_id().as_ref().map(|s| s.as_str()),
        };
        domain::parse_change(&delivery.data, &meta, &cfg.limits, cfg.default_mode)
    };
    let validation = received_at.elapsed();
    let msg = InboundMessage {
        tag: delivery.delivery_tag,
        acks: tracker.clone(),
        traceparent: header_str(props.headers().as_ref(), "traceparent"),
        body: delivery.data,
        properties: props,
        routing_key: delivery.routing_key.to_string(),
        received_at,
        redelivered: delivery.redelivered,
    };
    match parsed {
        Ok(change) => {
            let _ = coordinator.send(Input::Change(Box::new(Accepted {
                change,
                msg,
                validation,
            })));
        }
        Err(rejection) => {
            let outbound = outbound.clone();
            let source = cfg.source.clone();
            let span = tracing::info_span!("rejection", change_id = %rejection.change_id);
            crate::telemetry::adopt_parent(&span, msg.traceparent.as_deref());
            tasks.spawn(
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
    metrics::counter!("csw_changes_rejected_total", "code" => code.as_str()).increment(1);
    tracing::info!(change_id = %rejection.change_id, %code, "change rejected: {}", rejection.summary());
    let traceparent = crate::telemetry::outgoing_traceparent(msg.traceparent.as_deref());
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
            events::REJECTED,
            &event,
            tp,
            Some((code.as_str(), &rejection.summary())),
            &[&msg],
        )
        .await
    {
        tracing::warn!(error = %e, "rejection left unacked; the broker will redeliver it");
    }
}
