//! The broker side of the worker: one connection at a time, rebuilt after a
//! loss, feeding deliveries into the pipeline.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{FutureExt, StreamExt};
use lapin::{
    BasicProperties, Channel, Connection,
    options::{
        BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use std::collections::{HashMap, VecDeque};
use tokio::{sync::watch, time::Instant};
use tokio_stream::StreamMap;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{
    InboundMessage, PropsInterner,
    coordinator::{Accepted, Intake, ParseSettings},
    events,
    jobs::JobRegistry,
    membership::{HEARTBEAT, Members},
    settle::Outbound,
};
use crate::{
    amqp::{self, AckTracker, AmqpError, Publisher},
    config::AmqpSettings,
    cxone::webhook::WebhookEvent,
    domain::{self, Rejection},
};

/// What the connection manager needs to know.
pub struct ConsumerConfig {
    pub amqp: AmqpSettings,
    pub prefetch: u16,
    /// `batch.max_wait_ms`: how the ack pace judges the broker's refills.
    pub batch_max_wait: Duration,
    /// How bodies are parsed (imports parse them again the same way).
    pub parse: ParseSettings,
    pub connection_name: String,
    /// CloudEvents `source` for rejection events.
    pub source: String,
    /// Jobs this replica follows: webhook notices relayed by other replicas land here.
    pub jobs: JobRegistry,
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
    coordinator: Intake,
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
        let delay =
            amqp::reconnect_delay(attempt, cfg.amqp.reconnect_initial, cfg.amqp.reconnect_max);
        attempt = attempt.saturating_add(1);
        // Not connected means not consuming: a shutdown that starts now must
        // not wait for a consumer to stop.
        if control.stop_consuming.is_cancelled() {
            control.consumer_stopped.cancel();
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = control.stop_consuming.cancelled(), if !control.consumer_stopped.is_cancelled() => {
                control.consumer_stopped.cancel();
            }
            _ = control.close.cancelled() => break,
        }
    }
    control.consumer_stopped.cancel();
    Ok(())
}

/// One consumed queue (the inbound queue, or one partition) on its own channel.
struct Subscription {
    channel: Channel,
    consumer: lapin::Consumer,
    tracker: Arc<AckTracker>,
}

async fn subscribe(
    conn: &Connection,
    cfg: &ConsumerConfig,
    queue: &str,
) -> Result<Subscription, AmqpError> {
    let channel = conn
        .create_channel()
        .await
        .map_err(|source| AmqpError::Channel {
            op: "opening a consumer channel",
            source,
        })?;
    // Prefetch is the only backpressure (lapin buffers without bound), and it
    // must be applied again on every new channel. It counts per consumer, so
    // with partitions it is split evenly: the total never exceeds amqp.prefetch.
    let per_queue = per_queue_prefetch(cfg.prefetch, cfg.amqp.partitions);
    channel
        .basic_qos(per_queue, BasicQosOptions::default())
        .await
        .map_err(|source| AmqpError::Channel {
            op: "basic.qos",
            source,
        })?;
    let consumer = channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from(format!("{}/{queue}", cfg.connection_name)),
            BasicConsumeOptions::default(),
            consume_args(),
        )
        .await
        .map_err(|source| AmqpError::Channel {
            op: "basic.consume",
            source,
        })?;
    let tracker = Arc::new(AckTracker::new(
        channel.clone(),
        per_queue,
        cfg.amqp.ack_chunk,
        cfg.batch_max_wait,
    ));
    Ok(Subscription {
        channel,
        consumer,
        tracker,
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Heartbeat {
    instance: String,
    leaving: bool,
}

async fn session(
    cfg: &ConsumerConfig,
    publisher_tx: &watch::Sender<Option<Publisher>>,
    coordinator: &Intake,
    outbound: &Outbound,
    tasks: &TaskTracker,
    control: &Control,
) -> Result<SessionEnd, AmqpError> {
    let conn = amqp::connect(&cfg.amqp, &cfg.connection_name).await?;
    let setup = conn
        .create_channel()
        .await
        .map_err(|source| AmqpError::Channel {
            op: "opening the setup channel",
            source,
        })?;
    let queues = amqp::declare_topology(&setup, &cfg.amqp).await?;
    let publisher = Publisher::open(&conn).await?;
    publisher_tx.send_replace(Some(publisher.clone()));

    let partitioned = queues.len() > 1;
    let mut members = Members::new(&cfg.connection_name);
    let mut member_stream = if partitioned {
        Some(fanout_stream(&setup, &amqp::members_exchange_name(&cfg.amqp)).await?)
    } else {
        None
    };
    let members_exchange = amqp::members_exchange_name(&cfg.amqp);
    // Webhooks that reached another replica for a job this one follows.
    let mut relay_stream =
        Some(fanout_stream(&setup, &amqp::webhook_relay_exchange_name(&cfg.amqp)).await?);
    // Gather a view of the other replicas before claiming partitions, to
    // avoid grabbing everything and handing most of it back a second later.
    let claim_after = Instant::now()
        + if partitioned {
            HEARTBEAT + HEARTBEAT / 2
        } else {
            Duration::ZERO
        };
    let mut rebalance_due = true;

    let mut streams: StreamMap<usize, lapin::Consumer> = StreamMap::new();
    let mut active: HashMap<usize, Subscription> = HashMap::new();
    let mut releasing: HashMap<usize, Subscription> = HashMap::new();
    let mut consuming = !control.stop_consuming.is_cancelled();
    control.ready.store(true, Ordering::SeqCst);
    metrics::gauge!("csw_broker_connected").set(1.0);
    tracing::info!(
        queues = queues.len(),
        prefetch = cfg.prefetch,
        "connected to the broker"
    );

    let mut props = PropsInterner::default();
    let mut taken: VecDeque<InboundMessage> = VecDeque::new();
    let received_total = metrics::counter!("csw_changes_received_total");
    let mut health = tokio::time::interval(Duration::from_millis(250));
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            delivery = streams.next(), if !streams.is_empty() => {
                if let Some((i, result)) = delivery {
                    // Take everything lapin has buffered (cheap), then
                    // validate and batch a slice, and take again: while the
                    // broker bursts a whole window, deliveries wait here in
                    // compact form rather than in lapin's queue of 432-byte
                    // entries, which keeps its largest size for good.
                    let mut next = Some((i, result));
                    loop {
                        while let Some((i, result)) = next.take() {
                            match result {
                                Ok(d) => {
                                    if let Some(sub) = active.get(&i) {
                                        if d.delivery_tag % TIMELINE_EVERY == 0 {
                                            tracing::debug!(target: "csw::timeline", tag = d.delivery_tag, "delivery received");
                                        }
                                        taken.push_back(take(d, &sub.tracker, &mut props, &received_total));
                                    }
                                }
                                Err(e) => {
                                    // The rest stays unacked; the broker redelivers it.
                                    taken.clear();
                                    tracing::warn!(error = %e, queue = %queues[i], "consumer error");
                                    close_quietly(&conn).await;
                                    return Ok(SessionEnd::Lost);
                                }
                            }
                            next = streams.next().now_or_never().flatten();
                        }
                        for msg in taken.drain(..taken.len().min(PROCESS_SLICE)) {
                            process(cfg, msg, coordinator, outbound, tasks);
                        }
                        // A burst grows the queue to much of the window; as
                        // it drains into batches, give its room back, or it
                        // stays beside the batches the burst fills (halving
                        // at a quarter full keeps the copying linear).
                        if taken.capacity() > 4 * PROCESS_SLICE
                            && taken.len() < taken.capacity() / 4
                        {
                            taken.shrink_to(taken.len() * 2);
                        }
                        if taken.is_empty() {
                            break;
                        }
                        // Let imports and the coordinator task on this thread run.
                        tokio::task::yield_now().await;
                        next = streams.next().now_or_never().flatten();
                    }
                }
            }
            notice = next_of(&mut member_stream), if member_stream.is_some() => match notice {
                Some(Ok(d)) => {
                    if let Ok(hb) = serde_json::from_slice::<Heartbeat>(&d.data) {
                        let now = Instant::now();
                        rebalance_due |= if hb.leaving { members.left(&hb.instance) } else { members.heard(&hb.instance, now) };
                    }
                }
                _ => {
                    close_quietly(&conn).await;
                    return Ok(SessionEnd::Lost);
                }
            },
            relayed = next_of(&mut relay_stream) => match relayed {
                Some(Ok(d)) => {
                    if let Ok(notice) = serde_json::from_slice::<WebhookEvent>(&d.data)
                        && cfg.jobs.notify(&notice.job_id, notice.status)
                    {
                        metrics::counter!("csw_webhooks_total", "result" => "relayed_in").increment(1);
                    }
                }
                _ => {
                    close_quietly(&conn).await;
                    return Ok(SessionEnd::Lost);
                }
            },
            _ = heartbeat.tick(), if partitioned => {
                send_heartbeat(&setup, &members_exchange, &cfg.connection_name, !consuming).await;
                rebalance_due |= members.expire(Instant::now());
            }
            _ = control.stop_consuming.cancelled(), if consuming => {
                consuming = false;
                for (_, sub) in active.iter() {
                    let _ = sub.channel.basic_cancel(sub.consumer.tag(), BasicCancelOptions::default()).await;
                }
                streams = StreamMap::new();
                if partitioned {
                    send_heartbeat(&setup, &members_exchange, &cfg.connection_name, true).await;
                }
                // Deliveries still buffered stay unacked; the broker requeues
                // them when the connection closes.
                control.consumer_stopped.cancel();
                tracing::info!("stopped consuming; draining open batches");
            }
            _ = control.close.cancelled() => {
                // Settled deliveries whose acks are still held back go out now.
                for sub in active.values().chain(releasing.values()) {
                    let _ = sub.tracker.flush().await;
                }
                control.ready.store(false, Ordering::SeqCst);
                publisher_tx.send_replace(None);
                close_quietly(&conn).await;
                return Ok(SessionEnd::Closed);
            }
            _ = health.tick() => {
                if !conn.status().connected()
                    || !publisher.is_open()
                    || active.values().chain(releasing.values()).any(|s| !s.channel.status().connected())
                {
                    close_quietly(&conn).await;
                    return Ok(SessionEnd::Lost);
                }
                // A released partition's channel closes once all it took is settled.
                let mut done = Vec::new();
                for (i, sub) in &releasing {
                    if sub.tracker.outstanding() == 0 {
                        done.push(*i);
                    }
                }
                for i in done {
                    if let Some(sub) = releasing.remove(&i) {
                        let _ = sub.channel.close(200, "partition handed over".into()).await;
                        tracing::info!(queue = %queues[i], "released partition");
                    }
                }
            }
        }
        if !consuming {
            control.consumer_stopped.cancel();
            continue;
        }
        if rebalance_due && Instant::now() >= claim_after {
            rebalance_due = false;
            let mine: Vec<usize> = if partitioned {
                members
                    .mine(queues.len() as u16)
                    .into_iter()
                    .map(usize::from)
                    .collect()
            } else {
                vec![0]
            };
            for (i, queue) in queues.iter().enumerate() {
                let want = mine.contains(&i);
                if want && !active.contains_key(&i) {
                    let sub = match releasing.remove(&i) {
                        Some(sub) => sub,
                        None => subscribe(&conn, cfg, queue).await?,
                    };
                    streams.insert(i, sub.consumer.clone());
                    active.insert(i, sub);
                    if partitioned {
                        tracing::info!(%queue, "claimed partition");
                    }
                } else if !want && let Some(sub) = active.remove(&i) {
                    // Stop taking deliveries now; close the channel once settled.
                    streams.remove(&i);
                    let _ = sub
                        .channel
                        .basic_cancel(sub.consumer.tag(), BasicCancelOptions::default())
                        .await;
                    releasing.insert(i, sub);
                }
            }
            metrics::gauge!("csw_partitions_owned").set(active.len() as f64);
        }
    }
}

/// A private, auto-deleted queue bound to a fanout exchange, consumed without acks.
async fn fanout_stream(ch: &Channel, exchange: &str) -> Result<lapin::Consumer, AmqpError> {
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

async fn send_heartbeat(ch: &Channel, exchange: &str, me: &str, leaving: bool) {
    let body = serde_json::to_vec(&Heartbeat {
        instance: me.to_owned(),
        leaving,
    })
    .expect("heartbeat serialises");
    let _ = ch
        .basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await;
}

/// Every this many delivery tags, a `csw::timeline` debug event: with the
/// multiple acks (same target) and the imports' info lines it shows how a
/// drain's rounds of delivery, import and settlement line up
/// (`RUST_LOG=info,csw::timeline=debug`; see docs/benchmarks.md).
const TIMELINE_EVERY: u64 = 2500;

/// How many taken deliveries are validated and batched before lapin's
/// buffer is drained again.
const PROCESS_SLICE: usize = 256;

async fn next_of(
    stream: &mut Option<lapin::Consumer>,
) -> Option<lapin::Result<lapin::message::Delivery>> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Each partition queue's share of `amqp.prefetch`.
fn per_queue_prefetch(prefetch: u16, partitions: u16) -> u16 {
    (prefetch / partitions.max(1)).max(1)
}

/// The most deliveries the broker lets this worker hold at once: every
/// queue's prefetch, when it consumes every partition.
pub fn window(prefetch: u16, partitions: u16) -> usize {
    usize::from(per_queue_prefetch(prefetch, partitions)) * usize::from(partitions.max(1))
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

/// Takes a delivery off lapin's hands in the compact form the worker keeps
/// it in: registered for its ack, properties shared with the previous
/// delivery's where equal. Cheap, so lapin's own buffer is drained quickly.
fn take(
    delivery: lapin::message::Delivery,
    tracker: &Arc<AckTracker>,
    interner: &mut PropsInterner,
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
fn process(
    cfg: &ConsumerConfig,
    mut msg: InboundMessage,
    coordinator: &Intake,
    outbound: &Outbound,
    tasks: &TaskTracker,
) {
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
            coordinator.add(Accepted {
                change,
                msg,
                validation,
            });
        }
        Err(rejection) => {
            let outbound = outbound.clone();
            let source = cfg.source.clone();
            let span = tracing::info_span!("rejection", change_id = %rejection.change_id);
            crate::telemetry::adopt_parent(&span, msg.traceparent());
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
