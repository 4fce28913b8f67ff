//! The one event collector: result events (through a durable queue of its
//! own bound to every event) and dead letters, each acked after it is
//! recorded, reconnecting when the broker goes away. A redelivered message
//! is recorded twice; the verdict dedupes.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use cxone_schedule_worker::{amqp, config::Settings};
use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties, options::*, types::FieldTable};
use serde_json::Value;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use super::broker::{amqp_url, broker, header};

/// A dead letter as the collector saw it.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    pub code: Option<String>,
    pub body_len: usize,
    pub body: Vec<u8>,
    pub headers: FieldTable,
}

/// Everything collected so far, in arrival order.
#[derive(Default)]
pub struct Seen {
    pub events: Vec<Value>,
    /// The AMQP headers of each of `events`.
    pub event_headers: Vec<FieldTable>,
    pub dead: Vec<DeadLetter>,
    pub reconnects: u32,
}

pub struct Collector {
    pub seen: Arc<Mutex<Seen>>,
    arrived: Arc<Notify>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    settings: Settings,
    events_queue: String,
}

impl Collector {
    /// Declares the topology and the collector's queue before returning, so
    /// nothing published afterwards is missed.
    pub async fn start(settings: &Settings) -> Collector {
        let events_queue = format!("{}.collect", settings.amqp.events_exchange);
        let conn = broker().await;
        declare(&conn, settings, &events_queue)
            .await
            .expect("collector topology");
        let _ = conn.close(200, "bye".into()).await;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let arrived = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn(collect(
            settings.clone(),
            events_queue.clone(),
            seen.clone(),
            arrived.clone(),
            stop.clone(),
        ));
        Collector {
            seen,
            arrived,
            stop,
            task,
            settings: settings.clone(),
            events_queue,
        }
    }

    /// What was seen so far; hold the guard briefly, the collector waits on it.
    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    /// Waits until `done` holds over what was seen; fails after `timeout`
    /// with `describe`'s account of what is missing.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&Seen) -> bool,
        describe: impl Fn(&Seen) -> String,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let seen = self.seen();
                if done(&seen) {
                    return;
                }
                if Instant::now() > deadline {
                    panic!("timed out after {timeout:?}: {}", describe(&seen));
                }
            }
            // A short cap as well: the deadline is checked even when nothing arrives.
            let _ = tokio::time::timeout(Duration::from_millis(100), arrived).await;
        }
    }

    /// Waits until `done` holds over the events seen, or fails after `timeout`.
    pub async fn events_until(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) {
        self.wait_until(
            timeout,
            |s| done(&s.events),
            |s| {
                format!(
                    "waiting for events; seen {}: {}",
                    s.events.len(),
                    summarize(&s.events)
                )
            },
        )
        .await;
    }

    /// Waits until there are at least `n` dead letters.
    pub async fn dead_letters(&self, n: usize, timeout: Duration) {
        self.wait_until(
            timeout,
            |s| s.dead.len() >= n,
            |s| format!("waiting for {n} dead letters; got {}", s.dead.len()),
        )
        .await;
    }

    /// Waits until every id is in a `completed` event.
    pub async fn wait_completed(&self, ids: &[String], timeout: Duration) {
        let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let done = |events: &[Value]| {
            let seen: HashSet<&str> = events
                .iter()
                .filter(|e| e["type"] == "wfm.schedule.import.completed")
                .flat_map(|e| e["data"]["changeIds"].as_array().into_iter().flatten())
                .filter_map(Value::as_str)
                .collect();
            want.iter().all(|id| seen.contains(id))
        };
        self.events_until(timeout, done).await;
    }

    /// The events seen so far, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.seen().events.clone()
    }

    /// The AMQP headers of the events seen, in order.
    pub fn event_headers(&self) -> Vec<FieldTable> {
        self.seen().event_headers.clone()
    }

    /// The dead letters seen so far, in arrival order.
    pub fn dead(&self) -> Vec<DeadLetter> {
        self.seen().dead.clone()
    }

    /// Events of type `wfm.{kind}`.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        let t = format!("wfm.{kind}");
        self.seen()
            .events
            .iter()
            .filter(|e| e["type"] == t.as_str())
            .cloned()
            .collect()
    }

    /// Change ids in terminal events of a kind.
    pub fn change_ids_in(&self, kind: &str) -> Vec<String> {
        self.events_of(kind)
            .iter()
            .flat_map(|e| {
                e["data"]["changeIds"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// Stops collecting and deletes everything the test declared.
    pub async fn cleanup(self) {
        self.stop.cancel();
        let _ = self.task.await;
        let conn = broker().await;
        let ch = conn.create_channel().await.unwrap();
        // Everything the worker declares (the webhook relay exchange
        // included, which a list of our own once missed), then the
        // collector's queue.
        amqp::delete_topology(&ch, &self.settings.amqp).await;
        let _ = ch
            .queue_delete(
                self.events_queue.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
        let _ = conn.close(200, "bye".into()).await;
    }
}

async fn declare(conn: &Connection, settings: &Settings, queue: &str) -> Result<(), String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    amqp::declare_topology(&ch, &settings.amqp)
        .await
        .map_err(|e| e.to_string())?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    ch.queue_bind(
        queue.into(),
        settings.amqp.events_exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let _ = ch.close(200, "ok".into()).await;
    Ok(())
}

/// Connects, consumes, and records until stopped, reconnecting after a
/// pause whenever the connection is lost.
async fn collect(
    settings: Settings,
    events_queue: String,
    seen: Arc<Mutex<Seen>>,
    arrived: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut first = true;
    while !stop.is_cancelled() {
        if !first {
            seen.lock().unwrap().reconnects += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.cancelled() => return,
            }
        }
        first = false;
        let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
        else {
            continue;
        };
        if declare(&conn, &settings, &events_queue).await.is_err() {
            continue;
        }
        let Ok(ch) = conn.create_channel().await else {
            continue;
        };
        if ch.basic_qos(500, BasicQosOptions::default()).await.is_err() {
            continue;
        }
        let consume = |queue: String, tag: &'static str| {
            let ch = ch.clone();
            async move {
                ch.basic_consume(
                    queue.as_str().into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            }
        };
        let (Ok(mut events), Ok(mut dead)) = (
            consume(events_queue.clone(), "collect-events").await,
            consume(settings.amqp.dead_letter_queue.clone(), "collect-dead").await,
        ) else {
            continue;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = conn.close(200, "bye".into()).await;
                    return;
                }
                d = events.next() => match d {
                    Some(Ok(d)) => {
                        let v: Value = serde_json::from_slice(&d.data).expect("events are JSON");
                        {
                            let mut seen = seen.lock().unwrap();
                            seen.events.push(v);
                            seen.event_headers
                                .push(d.properties.headers().clone().unwrap_or_default());
                        }
                        arrived.notify_waiters();
                        let _ = d.ack(BasicAckOptions::default()).await;
                    }
                    _ => break,
                },
                d = dead.next() => match d {
                    Some(Ok(d)) => {
                        let headers = d.properties.headers().clone().unwrap_or_default();
                        let dl = DeadLetter {
                            message_id: d.properties.message_id().as_ref().map(|s| s.to_string()),
                            code: header(&headers, "x-error-code"),
                            body_len: d.data.len(),
                            body: d.data.clone(),
                            headers,
                        };
                        seen.lock().unwrap().dead.push(dl);
                        arrived.notify_waiters();
                        let _ = d.ack(BasicAckOptions::default()).await;
                    }
                    _ => break,
                },
            }
        }
    }
}

/// Event counts by type, for a timeout's message.
fn summarize(events: &[Value]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        *counts
            .entry(e["type"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    format!("{counts:?}")
}
