//! Idempotent declaration of the topology of docs/contract.md §2.

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use super::AmqpError;
use crate::config::{AmqpSettings, QueueType};

const MISMATCH_HINT: &str = "; an existing exchange or queue with this name has other settings \
     (type, durability or arguments): delete it or change the name in the configuration";

/// The queue for partition `i` (0-based) when `amqp.partitions` > 1.
pub fn partition_queue_name(settings: &AmqpSettings, i: u16) -> String {
    format!("{}.p{:03}", settings.inbound_queue, i)
}

/// The consistent-hash exchange that spreads calendars over partitions.
pub fn partition_exchange_name(settings: &AmqpSettings) -> String {
    format!("{}.partitions", settings.inbound_exchange)
}

/// The fanout exchange replicas announce themselves on (partitioned mode),
/// under the control prefix so no data binding can reach it.
pub fn members_exchange_name(settings: &AmqpSettings) -> String {
    format!("{}.members", settings.control_exchange_prefix)
}

/// The fanout exchange on which a replica passes on a CXone webhook for a job
/// it does not follow, so the replica that does can finish the import promptly.
pub fn webhook_relay_exchange_name(settings: &AmqpSettings) -> String {
    format!("{}.webhook-relay", settings.control_exchange_prefix)
}

/// Declares every exchange, queue and binding the worker relies on. Safe to
/// run from any number of processes at once: declarations are idempotent.
/// Returns the queues to consume from.
pub async fn declare_topology(ch: &Channel, s: &AmqpSettings) -> Result<Vec<String>, AmqpError> {
    declare_dead_letters(ch, s).await?;
    declare_unrouted_events(ch, s).await?;
    declare_events(ch, s).await?;
    declare_control(ch, s).await?;
    declare_inbound(ch, s).await
}

/// The dead-letter exchange and the queue that keeps what it receives.
async fn declare_dead_letters(ch: &Channel, s: &AmqpSettings) -> Result<(), AmqpError> {
    exchange(
        ch,
        &s.dead_letter_exchange,
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await?;
    queue(ch, &s.dead_letter_queue, dlq_args(s)).await?;
    bind(ch, &s.dead_letter_queue, &s.dead_letter_exchange, "").await
}

/// Events no listener has bound for go to the unrouted queue (capped, oldest
/// dropped) instead of vanishing, so `mandatory` publishes never bounce.
async fn declare_unrouted_events(ch: &Channel, s: &AmqpSettings) -> Result<(), AmqpError> {
    let unrouted = &s.unrouted_events_queue;
    exchange(ch, unrouted, ExchangeKind::Fanout, FieldTable::default()).await?;
    let mut unrouted_args = FieldTable::default();
    unrouted_args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(s.unrouted_max_length as i64),
    );
    unrouted_args.insert("x-overflow".into(), long_string("drop-head"));
    queue(ch, unrouted, unrouted_args).await?;
    bind(ch, unrouted, unrouted, "").await
}

/// The events exchange (its alternate is the unrouted exchange).
async fn declare_events(ch: &Channel, s: &AmqpSettings) -> Result<(), AmqpError> {
    let mut events_args = FieldTable::default();
    events_args.insert(
        "alternate-exchange".into(),
        long_string(&s.unrouted_events_queue),
    );
    exchange(ch, &s.events_exchange, ExchangeKind::Topic, events_args).await
}

/// The control exchanges, under `amqp.control_exchange_prefix`: the webhook
/// relay always, the members exchange when there are partitions to share.
async fn declare_control(ch: &Channel, s: &AmqpSettings) -> Result<(), AmqpError> {
    let mut names = vec![webhook_relay_exchange_name(s)];
    if s.partitions > 1 {
        names.push(members_exchange_name(s));
    }
    for name in names {
        exchange(ch, &name, ExchangeKind::Fanout, FieldTable::default()).await?;
    }
    Ok(())
}

/// The inbound exchange and the queues behind it: one queue, or one per
/// partition when `amqp.partitions` > 1. Returns the queues to consume from.
async fn declare_inbound(ch: &Channel, s: &AmqpSettings) -> Result<Vec<String>, AmqpError> {
    exchange(
        ch,
        &s.inbound_exchange,
        ExchangeKind::Topic,
        FieldTable::default(),
    )
    .await?;
    if s.partitions <= 1 {
        queue(ch, &s.inbound_queue, inbound_args(s, false)).await?;
        bind(ch, &s.inbound_queue, &s.inbound_exchange, "#").await?;
        return Ok(vec![s.inbound_queue.clone()]);
    }
    declare_partitions(ch, s).await
}

/// Partitioned mode: the consistent-hash exchange bound to the inbound
/// one, and a single-active-consumer queue per partition. Returns the
/// partition queues.
async fn declare_partitions(ch: &Channel, s: &AmqpSettings) -> Result<Vec<String>, AmqpError> {
    let hash = partition_exchange_name(s);
    exchange(
        ch,
        &hash,
        ExchangeKind::Custom("x-consistent-hash".into()),
        FieldTable::default(),
    )
    .await
    .map_err(|e| match e {
        AmqpError::Topology { what, source, .. } => AmqpError::Topology {
            what,
            hint: "; amqp.partitions > 1 needs the consistent-hash exchange plugin: run \
                   `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` on the broker",
            source,
        },
        other => other,
    })?;
    ch.exchange_bind(
        ShortString::from(hash.as_str()),
        ShortString::from(s.inbound_exchange.as_str()),
        "#".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|source| AmqpError::Topology {
        what: format!("binding exchange {hash:?} to {:?}", s.inbound_exchange),
        hint: "",
        source,
    })?;
    let mut names = Vec::with_capacity(s.partitions as usize);
    for i in 0..s.partitions {
        let name = partition_queue_name(s, i);
        queue(ch, &name, inbound_args(s, true)).await?;
        // The binding key of a consistent-hash binding is the partition's weight.
        bind(ch, &name, &hash, "1").await?;
        names.push(name);
    }
    Ok(names)
}

fn inbound_args(s: &AmqpSettings, single_active: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string(s.queue_type.as_str()));
    args.insert(
        "x-dead-letter-exchange".into(),
        long_string(&s.dead_letter_exchange),
    );
    if s.queue_type == QueueType::Quorum {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(s.delivery_limit as i64),
        );
    }
    if single_active {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    args
}

fn dlq_args(s: &AmqpSettings) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string(s.queue_type.as_str()));
    args
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Declares a durable exchange.
async fn exchange(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    args: FieldTable,
) -> Result<(), AmqpError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(ShortString::from(name), kind, options, args)
        .await
        .map_err(|source| AmqpError::Topology {
            what: format!("exchange {name:?}"),
            hint: MISMATCH_HINT,
            source,
        })
}

/// Declares a durable queue.
async fn queue(ch: &Channel, name: &str, args: FieldTable) -> Result<(), AmqpError> {
    ch.queue_declare(
        ShortString::from(name),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .map(|_| ())
    .map_err(|source| AmqpError::Topology {
        what: format!("queue {name:?}"),
        hint: MISMATCH_HINT,
        source,
    })
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), AmqpError> {
    ch.queue_bind(
        ShortString::from(queue),
        ShortString::from(exchange),
        ShortString::from(key),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|source| AmqpError::Topology {
        what: format!("binding queue {queue:?} to exchange {exchange:?}"),
        hint: "",
        source,
    })
}

/// Deletes everything [`declare_topology`] declares (for the demo, the
/// benchmark and tests, which run on their own uniquely named topology).
/// Best effort: what is already gone is skipped.
pub async fn delete_topology(ch: &Channel, s: &AmqpSettings) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let mut queues = vec![
        s.inbound_queue.clone(),
        s.dead_letter_queue.clone(),
        s.unrouted_events_queue.clone(),
    ];
    queues.extend((0..s.partitions.max(1)).map(|i| partition_queue_name(s, i)));
    for q in queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for e in [
        s.inbound_exchange.clone(),
        s.dead_letter_exchange.clone(),
        s.events_exchange.clone(),
        s.unrouted_events_queue.clone(),
        webhook_relay_exchange_name(s),
        members_exchange_name(s),
        partition_exchange_name(s),
    ] {
        let _ = ch
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}
