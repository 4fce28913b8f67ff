//! One broker connection's life: topology, subscriptions, deliveries,
//! partitions, webhook relay, health and shutdown, each its own step.

use crate::telemetry::metrics as metric;
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures_util::{FutureExt, StreamExt};
use lapin::{
    Channel, Connection,
    options::{BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio_stream::StreamMap;

use super::{
    Source, SourceConfig,
    fence::OwnBeats,
    intake::{process, take},
    partitions::{HEARTBEAT, Heard, Membership},
    per_queue_prefetch, relay,
};
use crate::{
    amqp::{self, AckTracker, AmqpError, InboundMessage, PropertiesInterner, Publisher},
    shutdown::Phase,
};

pub(super) enum SessionEnd {
    Lost,
    Closed,
}

/// Runs one connection until it is lost or the shutdown closes it.
pub(super) async fn session(src: &Source) -> Result<SessionEnd, AmqpError> {
    let mut session = Session::open(src).await?;
    let end = session.run().await;
    if !matches!(end, Ok(SessionEnd::Closed)) {
        // Closed before the subscriptions drop: dropping a live consumer
        // would cancel it, and a cancel hands its partition on at once.
        close_quietly(&session.conn).await;
    }
    end
}

/// One connection and everything opened on it.
struct Session<'a> {
    src: &'a Source,
    conn: Connection,
    /// Declares the topology, then carries heartbeats.
    setup: Channel,
    publisher: Publisher,
    queues: Vec<String>,
    subscriptions: Subscriptions,
    membership: Membership,
    /// This replica's heartbeats heard back: whether its view is fresh.
    own_beats: OwnBeats,
    relay: lapin::Consumer,
    consuming: bool,
    /// Deliveries taken off lapin's hands, not yet validated.
    taken: VecDeque<InboundMessage>,
    properties: PropertiesInterner,
    received_total: metrics::Counter,
}

/// What a step of the session leads to.
enum Step {
    Go,
    End(SessionEnd),
}

impl<'a> Session<'a> {
    async fn open(src: &'a Source) -> Result<Session<'a>, AmqpError> {
        let cfg = &src.cfg;
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
        src.publisher.send_replace(Some(publisher.clone()));
        let partitioned = queues.len() > 1;
        let membership = Membership::join(
            &setup,
            &cfg.amqp,
            &cfg.connection_name,
            partitioned,
            &cfg.control.fleet_secret,
        )
        .await?;
        let relay = relay::subscribe(&setup, &cfg.amqp).await?;
        let consuming = !src.shutdown.has_entered(Phase::StopConsuming);
        // A new connection owns nothing the old one took: its batches are
        // not posted (their channels closed), so nothing needs fencing.
        src.fence.set_open(true);
        src.ready.store(true, Ordering::SeqCst);
        metrics::gauge!(metric::BROKER_CONNECTED).set(1.0);
        tracing::info!(
            queues = queues.len(),
            prefetch = cfg.prefetch,
            "connected to the broker"
        );
        Ok(Session {
            src,
            conn,
            setup,
            publisher,
            queues,
            subscriptions: Subscriptions::default(),
            membership,
            own_beats: OwnBeats::new(tokio::time::Instant::now()),
            relay,
            consuming,
            taken: VecDeque::new(),
            properties: PropertiesInterner::default(),
            received_total: metrics::counter!(metric::CHANGES_RECEIVED_TOTAL),
        })
    }

    async fn run(&mut self) -> Result<SessionEnd, AmqpError> {
        let src = self.src;
        let shutdown = &src.shutdown;
        let mut health = tokio::time::interval(Duration::from_millis(250));
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            let step = tokio::select! {
                delivery = self.subscriptions.streams.next(), if !self.subscriptions.streams.is_empty() && src.fence.is_open() => match delivery {
                    Some(first) => self.take_deliveries(first).await,
                    None => Step::Go,
                },
                notice = self.membership.next_notice(), if self.membership.partitioned() => match notice {
                    Some(Ok(d)) => {
                        if self.membership.heard(&d) == Heard::Own {
                            self.own_beats.heard();
                        }
                        Step::Go
                    }
                    _ => Step::End(SessionEnd::Lost),
                },
                relayed = self.relay.next() => match relayed {
                    Some(Ok(d)) => {
                        relay::pass_on(&d, &self.src.cfg.jobs, self.src.cfg.control.webhook_secret.as_ref());
                        Step::Go
                    }
                    _ => Step::End(SessionEnd::Lost),
                },
                _ = heartbeat.tick(), if self.membership.partitioned() => {
                    self.membership.beat(&self.setup, !self.consuming).await;
                    self.own_beats.sent(tokio::time::Instant::now());
                    Step::Go
                }
                _ = shutdown.entered(Phase::StopConsuming), if self.consuming => {
                    self.stop_consuming().await;
                    Step::Go
                }
                _ = shutdown.entered(Phase::CloseConnection) => self.close().await,
                _ = health.tick() => self.check_health().await,
            };
            if let Step::End(end) = step {
                return Ok(end);
            }
            if !self.consuming {
                shutdown.report_consuming_stopped();
                continue;
            }
            if let Some(mine) = self.membership.due(self.queues.len()) {
                self.subscriptions
                    .claim(&self.conn, &self.src.cfg, &self.queues, &mine)
                    .await?;
            }
        }
    }

    /// Takes everything lapin has buffered (cheap), then validates and
    /// batches a slice, and takes again: while the broker bursts a whole
    /// window, deliveries wait here in compact form rather than in lapin's
    /// queue of larger entries, which keeps its largest size for good.
    async fn take_deliveries(
        &mut self,
        first: (usize, lapin::Result<lapin::message::Delivery>),
    ) -> Step {
        let mut next = Some(first);
        loop {
            while let Some((i, result)) = next.take() {
                match result {
                    Ok(d) => {
                        if let Some(sub) = self.subscriptions.active.get(&i) {
                            if d.delivery_tag % TIMELINE_EVERY == 0 {
                                tracing::debug!(target: "csw::timeline", tag = d.delivery_tag, "delivery received");
                            }
                            self.taken.push_back(take(
                                d,
                                &sub.tracker,
                                &mut self.properties,
                                &self.received_total,
                            ));
                        }
                    }
                    Err(e) => {
                        // The rest stays unacked; the broker redelivers it.
                        self.taken.clear();
                        tracing::warn!(error = %e, queue = %self.queues[i], "consumer error");
                        return Step::End(SessionEnd::Lost);
                    }
                }
                next = self.subscriptions.streams.next().now_or_never().flatten();
            }
            self.process_slice();
            if self.taken.is_empty() {
                return Step::Go;
            }
            // Let imports and the scheduler task on this thread run.
            tokio::task::yield_now().await;
            next = self.subscriptions.streams.next().now_or_never().flatten();
        }
    }

    /// Validates and batches up to [`PROCESS_SLICE`] taken deliveries.
    fn process_slice(&mut self) {
        let n = self.taken.len().min(PROCESS_SLICE);
        for msg in self.taken.drain(..n) {
            process(self.src, msg);
        }
        // A burst grows the queue to much of the window; as it drains into
        // batches, give its room back, or it stays beside the batches the
        // burst fills (halving at a quarter full keeps the copying linear).
        if self.taken.capacity() > 4 * PROCESS_SLICE && self.taken.len() < self.taken.capacity() / 4
        {
            self.taken.shrink_to(self.taken.len() * 2);
        }
    }

    async fn stop_consuming(&mut self) {
        self.consuming = false;
        // No basic.cancel: on a single-active-consumer queue the broker
        // activates the next consumer at a cancel, while this replica still
        // imports what it took. Deliveries lapin buffered stay unacked
        // until the channels close, after the drain.
        self.subscriptions.stop_taking();
        if self.membership.partitioned() {
            self.membership.say_leaving(&self.setup).await;
            self.own_beats.sent(tokio::time::Instant::now());
        }
        self.src.shutdown.report_consuming_stopped();
        tracing::info!("stopped consuming; draining open batches");
    }

    async fn close(&mut self) -> Step {
        // Settled deliveries whose acks are still held back go out now,
        // then each channel closes: only then does the broker hand its
        // queue on, starting with what this replica held and did not ack.
        self.subscriptions.close_all(&self.queues).await;
        self.src.ready.store(false, Ordering::SeqCst);
        self.src.publisher.send_replace(None);
        close_quietly(&self.conn).await;
        Step::End(SessionEnd::Closed)
    }

    async fn check_health(&mut self) -> Step {
        if !self.conn.status().connected()
            || !self.publisher.is_open()
            || self
                .subscriptions
                .all()
                .any(|s| !s.channel.status().connected())
        {
            return Step::End(SessionEnd::Lost);
        }
        self.subscriptions.close_released(&self.queues).await;
        if self.membership.partitioned() {
            self.fence_when_stale();
        }
        Step::Go
    }

    /// Closes the fence while this replica's membership view is stale, so
    /// it takes nothing and posts no import, and opens it once fresh.
    fn fence_when_stale(&mut self) {
        let fresh = self.own_beats.fresh(tokio::time::Instant::now());
        if self.src.fence.set_open(fresh) {
            if fresh {
                tracing::info!(
                    "own heartbeat heard again: taking deliveries and posting imports again"
                );
            } else {
                tracing::warn!(
                    "own heartbeat not heard back within the membership expiry (paused or stalled): no deliveries taken and no imports posted until it is"
                );
            }
        }
    }
}

/// The queues this connection consumes, each on its own channel.
#[derive(Default)]
struct Subscriptions {
    streams: StreamMap<usize, lapin::Consumer>,
    active: HashMap<usize, Subscription>,
    /// Partitions handed over, consumed no more, their channel open until
    /// everything taken from them is settled.
    releasing: HashMap<usize, Subscription>,
}

impl Subscriptions {
    fn all(&self) -> impl Iterator<Item = &Subscription> {
        self.active.values().chain(self.releasing.values())
    }

    /// Stops taking deliveries from every queue. The consumers stay
    /// registered (each [`Subscription`] keeps its own handle, so no drop
    /// cancels one): what lapin buffered is left unacked for the broker to
    /// return when the channels close.
    fn stop_taking(&mut self) {
        self.streams = StreamMap::new();
    }

    /// Acks what is settled on every channel, then closes each channel.
    async fn close_all(&mut self, queues: &[String]) {
        let all: Vec<(usize, Subscription)> =
            self.active.drain().chain(self.releasing.drain()).collect();
        self.streams = StreamMap::new();
        for (i, sub) in all {
            sub.hand_back("shutting down").await;
            tracing::debug!(queue = %queues[i], "consumer channel closed");
        }
    }

    /// A released partition's channel closes once everything taken from it
    /// was imported, evented and acked; its settled stragglers are acked now
    /// rather than after the straggler delay, so the hand-over is not held up.
    async fn close_released(&mut self, queues: &[String]) {
        let mut done = Vec::new();
        for (i, sub) in &self.releasing {
            let _ = sub.tracker.flush().await;
            if sub.tracker.outstanding() == 0 {
                done.push(*i);
            }
        }
        for i in done {
            if let Some(sub) = self.releasing.remove(&i) {
                sub.hand_back("partition handed over").await;
                tracing::info!(queue = %queues[i], "released partition");
            }
        }
    }

    /// Consumes the queues in `mine` and releases the others.
    async fn claim(
        &mut self,
        conn: &Connection,
        cfg: &SourceConfig,
        queues: &[String],
        mine: &[usize],
    ) -> Result<(), AmqpError> {
        let partitioned = queues.len() > 1;
        for (i, queue) in queues.iter().enumerate() {
            let want = mine.contains(&i);
            if want && !self.active.contains_key(&i) {
                let sub = match self.releasing.remove(&i) {
                    Some(sub) => sub,
                    None => subscribe(conn, cfg, queue).await?,
                };
                self.streams.insert(i, sub.consumer.clone());
                self.active.insert(i, sub);
                if partitioned {
                    tracing::info!(%queue, "claimed partition");
                }
            } else if !want && let Some(sub) = self.active.remove(&i) {
                // Stop taking deliveries now, without a basic.cancel (the
                // broker would activate the next owner at once); the channel
                // closes once everything taken is settled and acked.
                self.streams.remove(&i);
                self.releasing.insert(i, sub);
            }
        }
        metrics::gauge!(metric::PARTITIONS_OWNED).set(self.active.len() as f64);
        Ok(())
    }
}

/// One consumed queue (the inbound queue, or one partition) on its own channel.
struct Subscription {
    channel: Channel,
    /// Kept until the channel is closed: dropping the last handle of a live
    /// lapin consumer sends a basic.cancel.
    consumer: lapin::Consumer,
    tracker: Arc<AckTracker>,
}

/// How long closing a consumer channel may take before it is given up on
/// (the connection's close then returns its deliveries just the same).
const CHANNEL_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Subscription {
    /// Gives the queue back to the broker: the settled deliveries are acked,
    /// then the channel closes (never a basic.cancel). A channel closes
    /// only after the broker handled every frame sent on it before, acks
    /// included; the broker then returns the unacked deliveries to the
    /// queue's head in delivery order, and only after that activates the
    /// next waiting consumer, which starts with them.
    async fn hand_back(self, reason: &str) {
        let _ = self.tracker.flush().await;
        if self.channel.status().connected() {
            let _ = tokio::time::timeout(
                CHANNEL_CLOSE_TIMEOUT,
                self.channel.close(200, reason.into()),
            )
            .await;
        }
        drop(self.consumer);
    }
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

/// Every this many delivery tags, a `csw::timeline` debug event: with the
/// multiple acks (same target) and the imports' info lines it shows how
/// deliveries, imports and settlements of a drain line up
/// (`RUST_LOG=info,csw::timeline=debug`; see docs/benchmarks.md).
const TIMELINE_EVERY: u64 = 2500;

/// How many taken deliveries are validated and batched before lapin's
/// buffer is drained again.
const PROCESS_SLICE: usize = 256;

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
