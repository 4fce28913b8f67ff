//! The raw ceiling: the most this broker gives one bare consumer, to
//! measure the worker's drain against.

use std::time::Duration;

use cxone_schedule_worker::amqp;
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use tokio::time::Instant;

use crate::{
    broker, changes::publish_confirmed, error::BenchError, numbers::round3, proc_stats::CpuSample,
    topology::Topology,
};

/// The raw ceiling's message size and consumer shape.
pub const RAW_MESSAGE_BYTES: usize = 1024;
pub const RAW_PREFETCH: u16 = 1000;
pub const RAW_ACK_EVERY: u64 = 100;

pub struct Raw {
    /// From the first delivery to the last.
    pub seconds: f64,
    pub rate: f64,
    /// From `basic.consume` to the first delivery.
    pub first_delivery: Duration,
    pub wal_rolled: bool,
    /// CPU time the hypervisor gave to others over the drain.
    pub stolen_seconds: Option<f64>,
    /// CPU time the local broker used over the drain.
    pub broker_seconds: Option<f64>,
}

/// Pre-fills a queue of the inbound queue's type with `n` 1 KB messages and
/// drains it with a bare consumer: the most this broker gives one consumer.
/// The clock starts at the first delivery, as the worker's starts when it has
/// its first change ([`crate::worker::first_received`]).
pub async fn raw_ceiling(topology: &Topology, n: usize, timeout_s: u64) -> Result<Raw, BenchError> {
    let wal_rolled = prefill(topology, n).await?;
    broker::wait_quiet("raw ceiling").await;
    // Its own connection, like a worker's.
    let conn = amqp::connect(&topology.settings.amqp, "cxone-schedule-worker bench raw").await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(RAW_PREFETCH, BasicQosOptions::default())
        .await?;
    let started = Instant::now();
    let before = CpuSample::take(None).await;
    let first = drain(&ch, &topology.raw_queue, n, started, timeout_s)
        .await?
        .unwrap_or(started);
    let seconds = first.elapsed().as_secs_f64();
    let after = CpuSample::take(None).await;
    let used = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| round3(b - a));
    let _ = conn.close(200, "raw done".into()).await;
    Ok(Raw {
        seconds,
        rate: n as f64 / seconds,
        first_delivery: first - started,
        wal_rolled,
        stolen_seconds: used(before.stolen, after.stolen),
        broker_seconds: used(before.broker, after.broker),
    })
}

/// Declares the raw queue and fills it with `n` persistent 1 KB messages;
/// returns whether the broker's log was rolled over first.
async fn prefill(topology: &Topology, n: usize) -> Result<bool, BenchError> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(topology.settings.amqp.queue_type.as_str())),
    );
    topology
        .ch
        .queue_declare(
            topology.raw_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let body = vec![b'x'; RAW_MESSAGE_BYTES];
    let props = BasicProperties::default().with_delivery_mode(2);
    let wal_rolled = topology.before_prefill().await;
    publish_confirmed(
        &topology.ch,
        (0..n).map(|_| {
            (
                "",
                topology.raw_queue.as_str(),
                body.as_slice(),
                props.clone(),
            )
        }),
    )
    .await?;
    Ok(wal_rolled)
}

/// Consumes `n` messages with one `multiple` ack per [`RAW_ACK_EVERY`];
/// returns when the first arrived.
async fn drain(
    ch: &Channel,
    queue: &str,
    n: usize,
    started: Instant,
    timeout_s: u64,
) -> Result<Option<Instant>, BenchError> {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let deadline = started + Duration::from_secs(timeout_s);
    let mut got = 0usize;
    let mut first = None;
    while got < n {
        let d = match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => return Err(e.into()),
            _ => {
                return Err(BenchError::Usage(format!(
                    "the raw consumer received only {got} of {n} messages within {timeout_s} s"
                )));
            }
        };
        got += 1;
        first.get_or_insert_with(Instant::now);
        if got as u64 % RAW_ACK_EVERY == 0 || got == n {
            ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
    }
    Ok(first)
}
