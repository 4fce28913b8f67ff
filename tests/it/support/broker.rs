//! The test broker: connecting (or saying how to start one), queue state,
//! forced connection closes through the management API, and `rabbitmqctl`.

use std::{process::Command, time::Duration};

use lapin::{
    Connection, ConnectionProperties,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};
use serde_json::Value;
use tokio::time::Instant;

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Connects to the test broker, or fails saying how to start one.
pub async fn broker() -> Connection {
    let url = amqp_url();
    match Connection::connect(&url, ConnectionProperties::default()).await {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot reach RabbitMQ at {url}: {e}\n\
             start one with `rabbitmq-server -detached` (install it with \
             `apt-get install -y rabbitmq-server`), or point AMQP_URL at a broker"
        ),
    }
}

/// (ready, consumers) of a queue; unacked messages are not counted as ready.
pub async fn queue_state(queue: &str) -> (u32, u32) {
    let conn = broker().await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "bye".into()).await;
    (q.message_count(), q.consumer_count())
}

/// Waits until `(ready, consumers)` of `queue` satisfies `pred`; fails after
/// `timeout` naming `what` it waited for.
pub async fn wait_for_queue(
    queue: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn((u32, u32)) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let state = queue_state(queue).await;
        if pred(state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; {queue} (ready, consumers) = {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the inbound queue has a consumer (the worker subscribed).
pub async fn wait_for_consumer(queue: &str, timeout: Duration) {
    wait_for_queue(queue, "a worker to subscribe", timeout, |(_, consumers)| {
        consumers >= 1
    })
    .await;
}

/// Closes every broker connection named `name` through the management API,
/// waiting up to 30 s for the API to list one (it refreshes its view every
/// few seconds). Returns how many it closed.
pub async fn close_connections_named(name: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let http = reqwest::Client::new();
    let api = "http://127.0.0.1:15672/api/connections";
    loop {
        let list: Value = match http
            .get(api)
            .basic_auth("guest", Some("guest"))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "RabbitMQ management API unreachable at {api}: {e}; enable it with \
                     `rabbitmq-plugins enable rabbitmq_management`"
                );
                Value::Null
            }
        };
        let mut closed = 0;
        for c in list.as_array().into_iter().flatten() {
            if c["client_properties"]["connection_name"] == name {
                let mut url = reqwest::Url::parse(api).unwrap();
                url.path_segments_mut()
                    .unwrap()
                    .push(c["name"].as_str().unwrap());
                let r = http
                    .delete(url)
                    .basic_auth("guest", Some("guest"))
                    .header("X-Reason", "test: forced close")
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    closed += 1;
                }
            }
        }
        if closed > 0 || Instant::now() > deadline {
            return closed;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `rabbitmqctl ARGS` (as root, like CI), failing with how to fix it.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run rabbitmqctl {args:?}: {e}; fault tests need the broker's CLI on PATH \
                 and to run as a user allowed to use it (root in CI)"
            )
        });
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Messages in a queue, ready plus unacknowledged, asked of the queue itself
/// (exact, unlike the management API's sampled statistics).
pub fn queue_depth(queue: &str) -> u64 {
    let out = rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ]);
    for line in out.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() == 3 && cols[0] == queue {
            return cols[1].parse::<u64>().unwrap_or(u64::MAX)
                + cols[2].parse::<u64>().unwrap_or(u64::MAX);
        }
    }
    panic!("queue {queue} not listed by rabbitmqctl list_queues: {out}");
}

/// A string header's value.
pub fn header(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A header value of `AMQPValue::LongString`.
pub fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}
