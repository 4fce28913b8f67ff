//! The latency phase: changes published at a steady rate into a drained
//! queue, each timed from its publish to its `completed` event.

use std::{collections::HashMap, path::Path, time::Duration};

use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use lapin::{
    Channel,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

use crate::{
    args::Order,
    changes::{change_props, changes},
    error::BenchError,
    events::Kind,
    numbers::{ms, percentile},
    topology::Topology,
};

pub struct Latency {
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
    /// Changes that failed or were rejected instead of completing.
    pub failures: usize,
}

type Change = (String, String, Vec<u8>);

/// Publishes `n` changes at `rate` per second and measures each one's
/// publish → `completed` event time.
pub async fn measure(
    topology: &mut Topology,
    n: usize,
    calendars: usize,
    rate: f64,
    timeout_s: u64,
    log: &Path,
) -> Result<Latency, BenchError> {
    let bodies = changes("l", n, calendars, Order::Interleaved, topology.sorted_keys);
    let index: HashMap<String, usize> = bodies
        .iter()
        .enumerate()
        .map(|(i, (id, _, _))| (id.clone(), i))
        .collect();
    let ch = topology.conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let exchange = topology.settings.amqp.inbound_exchange.clone();
    let (sent_tx, sent_rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let publisher = tokio::spawn(publish_steadily(ch, exchange, bodies, rate, sent_tx));
    let mut timing = Timing {
        index,
        sent: sent_rx,
        published: vec![None; n],
        latencies: Vec::with_capacity(n),
        early: Vec::new(),
        failures: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    if !timing.collect(topology, n, deadline).await {
        publisher.abort();
        return Err(BenchError::Timeout {
            phase: "latency",
            secs: timeout_s,
            done: timing.latencies.len(),
            want: n,
            log: log.to_owned(),
        });
    }
    timing.finish();
    refused(publisher).await?;
    let Timing {
        mut latencies,
        failures,
        ..
    } = timing;
    latencies.sort_unstable();
    Ok(Latency {
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied(),
        failures,
    })
}

/// Publishes one change per tick of `rate`, telling `sent` when each went;
/// returns how many the broker refused.
async fn publish_steadily(
    ch: Channel,
    exchange: String,
    bodies: Vec<Change>,
    rate: f64,
    sent: mpsc::UnboundedSender<(usize, Instant)>,
) -> Result<usize, lapin::Error> {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = FuturesUnordered::new();
    let mut refused = 0usize;
    for (i, (id, cal, body)) in bodies.iter().enumerate() {
        ticker.tick().await;
        let _ = sent.send((i, Instant::now()));
        let confirm = ch
            .basic_publish(
                exchange.as_str().into(),
                cal.as_str().into(),
                BasicPublishOptions::default(),
                body,
                change_props(id),
            )
            .await?;
        pending.push(confirm);
        // Collect confirms as they come without holding up the pace.
        while let Some(Some(c)) = pending.next().now_or_never() {
            if !c?.is_ack() {
                refused += 1;
            }
        }
    }
    while let Some(c) = pending.next().await {
        if !c?.is_ack() {
            refused += 1;
        }
    }
    let _ = ch.close(200, "done".into()).await;
    Ok(refused)
}

/// Fails when the publisher failed or the broker refused any change.
async fn refused(publisher: JoinHandle<Result<usize, lapin::Error>>) -> Result<(), BenchError> {
    match publisher.await {
        Ok(Ok(0)) | Err(_) => Ok(()),
        Ok(Ok(refused)) => Err(BenchError::Refused(refused)),
        Ok(Err(e)) => Err(e.into()),
    }
}

/// Publish times and the latencies measured so far.
struct Timing {
    /// changeId → its index among the published changes.
    index: HashMap<String, usize>,
    sent: mpsc::UnboundedReceiver<(usize, Instant)>,
    published: Vec<Option<Instant>>,
    latencies: Vec<u64>,
    /// Completions seen before their publish time arrived from the publisher.
    early: Vec<(usize, Instant)>,
    failures: usize,
}

impl Timing {
    /// Reads events until all `n` changes have an answer; false at the deadline.
    async fn collect(&mut self, topology: &mut Topology, n: usize, deadline: Instant) -> bool {
        while self.latencies.len() + self.failures < n {
            let seen = match tokio::time::timeout_at(deadline, topology.events.recv()).await {
                Ok(Some(seen)) => seen,
                _ => return false,
            };
            self.note_published();
            match seen.kind {
                Kind::Completed => {
                    for id in &seen.change_ids {
                        if let Some(&i) = self.index.get(id) {
                            match self.published[i] {
                                Some(p) => self.latencies.push(ms(seen.at - p)),
                                None => self.early.push((i, seen.at)),
                            }
                        }
                    }
                }
                Kind::Failed => self.failures += seen.change_ids.len().max(1),
                Kind::Rejected => self.failures += 1,
                Kind::Other => {}
            }
        }
        true
    }

    fn note_published(&mut self) {
        while let Ok((i, at)) = self.sent.try_recv() {
            self.published[i] = Some(at);
        }
    }

    /// Times the completions that arrived before their publish time did.
    fn finish(&mut self) {
        self.note_published();
        for (i, at) in std::mem::take(&mut self.early) {
            if let Some(p) = self.published[i] {
                self.latencies.push(ms(at.saturating_duration_since(p)));
            }
        }
    }
}
