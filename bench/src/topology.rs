//! The run's own topology on the broker: uniquely named exchanges and
//! queues, a connection to feed them, and a tap on the worker's events.

use std::{path::Path, time::Duration};

use cxone_schedule_worker::{
    amqp,
    cmd::demo::{rename_topology, tap},
    config::Settings,
};
use lapin::{
    Channel, Connection,
    options::{ConfirmSelectOptions, QueueDeleteOptions},
};
use tokio::{sync::mpsc, time::Instant};

use crate::{
    broker,
    changes::{change_props, publish_confirmed},
    error::BenchError,
    events::{Seen, Tally, tap_loop},
};

/// The run's topology and the broker connection that feeds and taps it.
pub struct Topology {
    /// The settings with this run's topology names, handed to the worker child.
    pub settings: Settings,
    pub prefix: String,
    pub conn: Connection,
    /// A confirming channel for pre-fills.
    pub ch: Channel,
    tap_queue: String,
    /// The raw ceiling's queue.
    pub raw_queue: String,
    pub events: mpsc::UnboundedReceiver<Seen>,
    /// Roll the local broker's log over before each pre-fill (`--no-wal-roll`).
    pub roll_wal: bool,
    /// `--sorted-keys`.
    pub sorted_keys: bool,
}

impl Topology {
    /// Declares the run's topology (`csw-bench-{what}-…`) and starts the tap.
    pub async fn open(mut settings: Settings, what: &str) -> Result<Topology, BenchError> {
        let prefix = format!(
            "csw-bench-{what}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        );
        rename_topology(&mut settings.amqp, &prefix);
        settings.worker.instance_id = prefix.clone();
        let conn = amqp::connect(&settings.amqp, "cxone-schedule-worker bench").await?;
        let ch = conn.create_channel().await?;
        amqp::declare_topology(&ch, &settings.amqp).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let tap_queue = format!("{prefix}.tap");
        let tap_ch = conn.create_channel().await?;
        let consumer = tap(&tap_ch, &settings.amqp, &tap_queue).await?;
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(tap_loop(consumer, tx));
        Ok(Topology {
            roll_wal: false,
            sorted_keys: false,
            raw_queue: format!("{prefix}.raw"),
            settings,
            prefix,
            conn,
            ch,
            tap_queue,
            events,
        })
    }

    /// Rolls the local broker's quorum-queue log over (see `--no-wal-roll`);
    /// returns whether it did.
    pub async fn before_prefill(&self) -> bool {
        if !self.roll_wal || self.settings.amqp.queue_type.as_str() != "quorum" {
            return false;
        }
        broker::roll_wal().await
    }

    /// Publishes the changes to the inbound exchange, confirmed, before the worker runs.
    pub async fn prefill_changes(
        &self,
        bodies: &[(String, String, Vec<u8>)],
    ) -> Result<(), BenchError> {
        let exchange = self.settings.amqp.inbound_exchange.clone();
        publish_confirmed(
            &self.ch,
            bodies.iter().map(|(id, cal, body)| {
                (
                    exchange.as_str(),
                    cal.as_str(),
                    body.as_slice(),
                    change_props(id),
                )
            }),
        )
        .await
    }

    /// Reads events until `want` changes are in `completed` events (counting
    /// failures and rejections too, so a broken run ends instead of hanging).
    pub async fn wait_completed(
        &mut self,
        tally: &mut Tally,
        want: usize,
        phase: &'static str,
        timeout_s: u64,
        log: &Path,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(timeout_s);
        while tally.settled() < want {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(seen)) => tally.add(&seen),
                _ => {
                    return Err(BenchError::Timeout {
                        phase,
                        secs: timeout_s,
                        done: tally.completed,
                        want,
                        log: log.to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Deletes everything the run declared and closes its connection.
    pub async fn cleanup(self) {
        let Ok(ch) = self.conn.create_channel().await else {
            return;
        };
        let a = &self.settings.amqp;
        for q in [&self.tap_queue, &self.raw_queue] {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        amqp::delete_topology(&ch, a).await;
        let _ = self.conn.close(200, "bench done".into()).await;
    }
}
