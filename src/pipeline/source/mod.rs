//! The source stage: the broker side of the worker. One connection at a
//! time, rebuilt after a loss, feeding deliveries into the pipeline.
//!
//! - [`session`]: one connection's life: topology, subscriptions, health.
//! - [`intake`]: takes deliveries, validates them, hands valid changes to
//!   the batcher and rejected ones to settlement.
//! - [`partitions`]: which partitions this replica consumes.
//! - [`fence`]: no taking, no importing while the membership view is stale.
//! - [`relay`]: webhook notices other replicas pass on.

mod fanout;
mod fence;
mod intake;
pub mod partitions;
mod relay;
mod session;

use crate::telemetry::metrics as metric;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tokio_util::task::TaskTracker;

use super::{
    batch::{Batcher, ParseSettings},
    jobs::JobRegistry,
    settle::Outbound,
};
use crate::{
    amqp::{self, AmqpError, Publisher},
    config::AmqpSettings,
    shutdown::{Phase, Shutdown},
};
pub use fence::Fence;
use session::{SessionEnd, session};

/// What the connection manager needs to know.
pub struct SourceConfig {
    pub amqp: AmqpSettings,
    pub prefetch: u16,
    /// `batch.max_wait_ms`: how the ack tracker judges how fast the broker refills the window (its pace of acks).
    pub batch_max_wait: Duration,
    /// How bodies are parsed (imports parse them again the same way).
    pub parse: ParseSettings,
    pub connection_name: String,
    /// CloudEvents `source` for rejection events.
    pub source: String,
    /// Jobs this replica follows: webhook notices relayed by other replicas land here.
    pub jobs: JobRegistry,
    /// `fleet.secret` and `cxone.webhook_secret`: what authenticates heartbeats and relayed notices.
    pub control: partitions::ControlKeys,
}

/// The source stage and what it feeds.
pub struct Source {
    pub cfg: SourceConfig,
    /// Where each connection's publisher is announced (`None` while down).
    pub publisher: watch::Sender<Option<Publisher>>,
    pub batcher: Batcher,
    pub outbound: Outbound,
    /// Rejections settle on these tasks, so shutdown waits for them.
    pub tasks: TaskTracker,
    pub shutdown: Shutdown,
    /// Broker connection and channels are up: what `/readyz` reports.
    pub ready: Arc<AtomicBool>,
    /// Closed while the membership view is stale; imports wait at it.
    pub fence: Fence,
}

impl Source {
    /// Runs connections until the shutdown closes the connection; reconnects
    /// with backoff after a loss. Returns an error only for problems
    /// reconnecting cannot fix (a topology that conflicts with what is on
    /// the broker).
    pub async fn run(self) -> Result<(), AmqpError> {
        let shutdown = &self.shutdown;
        let mut attempt = 0u32;
        loop {
            if shutdown.has_entered(Phase::CloseConnection) {
                break;
            }
            let started = Instant::now();
            match session(&self).await {
                Ok(SessionEnd::Closed) => break,
                Ok(SessionEnd::Lost) => {
                    tracing::warn!(
                        "broker connection lost; reconnecting (unacked deliveries will be redelivered)"
                    );
                }
                Err(e) if !e.is_transient() => {
                    self.ready.store(false, Ordering::SeqCst);
                    self.publisher.send_replace(None);
                    shutdown.report_consuming_stopped();
                    return Err(e);
                }
                Err(e) => tracing::warn!(error = %e, "broker unavailable; retrying"),
            }
            self.ready.store(false, Ordering::SeqCst);
            metrics::gauge!(metric::BROKER_CONNECTED).set(0.0);
            self.publisher.send_replace(None);
            metrics::counter!(metric::BROKER_RECONNECTS_TOTAL).increment(1);
            if started.elapsed() > Duration::from_secs(30) {
                attempt = 0;
            }
            let delay = amqp::reconnect_delay(
                attempt,
                self.cfg.amqp.reconnect_initial,
                self.cfg.amqp.reconnect_max,
            );
            attempt = attempt.saturating_add(1);
            // Not connected means not consuming: a shutdown that starts now must
            // not wait for a consumer to stop.
            if shutdown.has_entered(Phase::StopConsuming) {
                shutdown.report_consuming_stopped();
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.entered(Phase::StopConsuming), if !shutdown.has_stopped_consuming() => {
                    shutdown.report_consuming_stopped();
                }
                _ = shutdown.entered(Phase::CloseConnection) => break,
            }
        }
        shutdown.report_consuming_stopped();
        Ok(())
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
