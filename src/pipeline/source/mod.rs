//! The broker side of the worker: one connection at a time, rebuilt after a
//! loss, feeding deliveries into the pipeline.

mod intake;
pub mod partitions;
mod session;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    batch::{Batcher, ParseSettings},
    jobs::JobRegistry,
    settle::Outbound,
};
use crate::{
    amqp::{self, AmqpError, Publisher},
    config::AmqpSettings,
};
use session::{SessionEnd, session};

/// What the connection manager needs to know.
pub struct SourceConfig {
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

/// Runs connections until `control.close`; reconnects with backoff after a
/// loss. Returns an error only for problems reconnecting cannot fix (a
/// topology that conflicts with what is on the broker).
pub async fn run(
    cfg: SourceConfig,
    publisher: watch::Sender<Option<Publisher>>,
    coordinator: Batcher,
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

/// Each partition queue's share of `amqp.prefetch`.
fn per_queue_prefetch(prefetch: u16, partitions: u16) -> u16 {
    (prefetch / partitions.max(1)).max(1)
}

/// The most deliveries the broker lets this worker hold at once: every
/// queue's prefetch, when it consumes every partition.
pub fn window(prefetch: u16, partitions: u16) -> usize {
    usize::from(per_queue_prefetch(prefetch, partitions)) * usize::from(partitions.max(1))
}
