//! Shutdown: what starts it and the phases it runs through.
//!
//! In order (docs/contract.md §9.4): stop consuming → close every open batch
//! and let in-flight imports finish and settle within `shutdown.timeout_s`
//! → past that, abandon what is unfinished (it stays unacked) → close the
//! broker connection (the broker requeues the unacked) → stop the HTTP
//! server. The app's supervisor enters each phase; each part of the worker
//! waits for the phase that concerns it.

use std::sync::Arc;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// A phase of the shutdown, in the order the supervisor enters them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Stop taking deliveries (what SIGTERM starts).
    StopConsuming,
    /// Close every open batch and import what is left.
    DrainBatches,
    /// The grace period is over: stop waiting for the broker; what is
    /// unfinished stays unacked.
    AbandonImports,
    /// Close the broker connection, after flushing held-back acks.
    CloseConnection,
    /// Stop the HTTP server.
    StopHttp,
}

/// The shutdown's state, shared by everything that stops with it.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<Phases>);

#[derive(Default)]
struct Phases {
    stop_consuming: CancellationToken,
    drain_batches: CancellationToken,
    abandon_imports: CancellationToken,
    close_connection: CancellationToken,
    stop_http: CancellationToken,
    /// Not a phase: the source reports that it no longer consumes.
    consuming_stopped: CancellationToken,
}

impl Shutdown {
    /// Begins a graceful shutdown (what SIGTERM does).
    pub fn request(&self) {
        self.enter(Phase::StopConsuming);
    }

    pub fn enter(&self, phase: Phase) {
        self.token(phase).cancel();
    }

    pub fn has_entered(&self, phase: Phase) -> bool {
        self.token(phase).is_cancelled()
    }

    /// Resolves once `phase` is entered.
    pub fn entered(&self, phase: Phase) -> WaitForCancellationFuture<'_> {
        self.token(phase).cancelled()
    }

    /// A token cancelled when `phase` is entered, for code that keeps one.
    pub fn token_for(&self, phase: Phase) -> CancellationToken {
        self.token(phase).clone()
    }

    /// The source no longer takes deliveries.
    pub fn report_consuming_stopped(&self) {
        self.0.consuming_stopped.cancel();
    }

    pub fn has_stopped_consuming(&self) -> bool {
        self.0.consuming_stopped.is_cancelled()
    }

    /// Resolves once the source reported that it no longer consumes.
    pub fn consuming_stopped(&self) -> WaitForCancellationFuture<'_> {
        self.0.consuming_stopped.cancelled()
    }

    fn token(&self, phase: Phase) -> &CancellationToken {
        let p = &self.0;
        match phase {
            Phase::StopConsuming => &p.stop_consuming,
            Phase::DrainBatches => &p.drain_batches,
            Phase::AbandonImports => &p.abandon_imports,
            Phase::CloseConnection => &p.close_connection,
            Phase::StopHttp => &p.stop_http,
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
