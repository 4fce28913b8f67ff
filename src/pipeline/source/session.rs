//! One broker connection: topology, subscriptions, deliveries, partitions.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures_util::{FutureExt, StreamExt};
use lapin::{
    Channel, Connection,
    options::{
        BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use std::collections::{HashMap, VecDeque};
use tokio::{sync::watch, time::Instant};
use tokio_stream::StreamMap;
use tokio_util::task::TaskTracker;

use super::{
    Control, SourceConfig,
    intake::{process, take},
    partitions::{HEARTBEAT, Heartbeat, Members, send_heartbeat},
    per_queue_prefetch,
};
use crate::{
    amqp::{self, AckTracker, AmqpError, InboundMessage, PropertiesInterner, Publisher},
    cxone::webhook::WebhookEvent,
    pipeline::{batch::Batcher, settle::Outbound},
};

pub(super) enum SessionEnd {
    Lost,
    Closed,
}

/// One consumed queue (the inbound queue, or one partition) on its own channel.
struct Subscription {
    channel: Channel,
    consumer: lapin::Consumer,
    tracker: Arc<AckTracker>,
}

async fn subscribe(
    conn: &Connection,
    cfg: &SourceConfig,
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

pub(super) async fn session(
    cfg: &SourceConfig,
    publisher_tx: &watch::Sender<Option<Publisher>>,
    coordinator: &Batcher,
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

    let mut props = PropertiesInterner::default();
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
