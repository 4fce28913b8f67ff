//! Wires the pieces together and owns shutdown.
//!
//! Shutdown order (CONTRACT section 4): stop consuming → close every open
//! batch → let in-flight imports finish and settle within
//! `shutdown.timeout_s` → whatever is unfinished stays unacked → close the
//! connection (the broker requeues the unacked) → exit 0.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    amqp::AmqpError,
    config::Settings,
    cxone::{CxoneClient, CxoneError},
    http::{self, HttpState},
    pipeline::{
        consumer::{self, ConsumerConfig, Control},
        coordinator::{self, Coordinator},
        import::{self, ImportContext},
        jobs::{JobRegistry, PollPolicy},
        settle::Outbound,
    },
    telemetry,
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(
        "cannot listen on http.listen {addr}: {source}; choose a free address (CSW__HTTP__LISTEN)"
    )]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cxone(#[from] CxoneError),
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

/// A running worker.
pub struct AppHandle {
    pub http_addr: SocketAddr,
    pub instance_id: String,
    shutdown: CancellationToken,
    join: JoinHandle<Result<(), AppError>>,
}

impl AppHandle {
    /// Begins a graceful shutdown (what SIGTERM does).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for the worker to stop; `Ok` after a graceful shutdown.
    pub async fn wait(self) -> Result<(), AppError> {
        match self.join.await {
            Ok(r) => r,
            Err(e) => panic!("worker supervisor panicked: {e}"),
        }
    }
}

/// `cxone-schedule-worker run`: until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> Result<(), AppError> {
    let handle = start(settings).await?;
    tracing::info!(http = %handle.http_addr, instance = %handle.instance_id, "worker started");
    let stop = handle.shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        stop.cancel();
    });
    handle.wait().await
}

/// Starts the worker in the background.
pub async fn start(settings: Settings) -> Result<AppHandle, AppError> {
    let metrics = telemetry::metrics_handle();
    let client = CxoneClient::new(&settings.cxone, &settings.retry)?;
    let listener = TcpListener::bind(settings.http.listen)
        .await
        .map_err(|source| AppError::Listen {
            addr: settings.http.listen,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| AppError::Listen {
        addr: settings.http.listen,
        source,
    })?;
    let instance_id = settings.instance_id();
    let source = format!("/cxone-schedule-worker/{instance_id}");

    let shutdown = CancellationToken::new();
    let control = Control {
        stop_consuming: CancellationToken::new(),
        consumer_stopped: CancellationToken::new(),
        close: CancellationToken::new(),
        ready: Arc::new(AtomicBool::new(false)),
    };
    let drain = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let jobs = JobRegistry::default();
    let (publisher_tx, publisher_rx) = watch::channel(None);
    let (coord_tx, coord_rx) = mpsc::unbounded_channel();

    let outbound = Outbound {
        publisher: publisher_rx,
        events_exchange: settings.amqp.events_exchange.clone(),
        dead_letter_exchange: settings.amqp.dead_letter_exchange.clone(),
        hard_stop: hard_stop.clone(),
    };
    // One value for both parses of a body: the consumer's and the import's.
    let parse = coordinator::ParseSettings {
        limits: settings.limits,
        default_mode: settings.cxone.default_validation_mode,
    };
    let ctx = Arc::new(ImportContext {
        client: client.clone(),
        jobs: jobs.clone(),
        outbound: outbound.clone(),
        poll: PollPolicy {
            initial: settings.imports.poll_initial,
            max: settings.imports.poll_max,
            timeout: settings.imports.job_timeout,
        },
        source: source.clone(),
        coordinator: coord_tx.clone(),
        parse: parse.clone(),
    });
    let import_tasks = tasks.clone();
    let coordinator = Coordinator::new(
        coordinator::Limits {
            max_entries: settings.batch.max_entries,
            max_wait: settings.batch.max_wait,
            max_concurrent: settings.imports.max_concurrent,
            window: consumer::window(settings.effective_prefetch(), settings.amqp.partitions),
        },
        move |batch| {
            let ctx = ctx.clone();
            import_tasks.spawn(async move { import::run(&ctx, batch).await });
        },
    );
    let (intake, coordinator_run) = coordinator.start(coord_rx, drain.clone());
    let coordinator_task = tokio::spawn(coordinator_run);

    let http_state = HttpState {
        broker_ready: control.ready.clone(),
        client,
        jobs: jobs.clone(),
        relay: outbound.clone(),
        relay_exchange: crate::amqp::webhook_relay_exchange_name(&settings.amqp),
        webhook_secret: settings.cxone.webhook_secret().map(|s| s.to_owned().into()),
        metrics,
    };
    let http_stop = CancellationToken::new();
    let app = http::router(http_state, settings.http.webhook_max_body_bytes);
    let http_task = {
        let stop = http_stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        })
    };

    let consumer_cfg = ConsumerConfig {
        amqp: settings.amqp.clone(),
        prefetch: settings.effective_prefetch(),
        batch_max_wait: settings.batch.max_wait,
        parse,
        connection_name: instance_id.clone(),
        source,
        jobs,
    };
    let stop_consuming = control.stop_consuming.clone();
    let consumer_stopped = control.consumer_stopped.clone();
    let close = control.close.clone();
    let consumer_task = tokio::spawn(consumer::run(
        consumer_cfg,
        publisher_tx,
        intake,
        outbound,
        tasks.clone(),
        control,
    ));

    let grace = settings.shutdown.timeout;
    let supervisor_shutdown = shutdown.clone();
    let join = tokio::spawn(async move {
        let mut consumer_task = consumer_task;
        let early = tokio::select! {
            _ = supervisor_shutdown.cancelled() => None,
            r = &mut consumer_task => Some(r),
        };
        // Stop taking deliveries, then drain what was taken.
        stop_consuming.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        let _ = tokio::time::timeout_at(deadline, consumer_stopped.cancelled()).await;
        drain.cancel();
        let drained = tokio::time::timeout_at(deadline, async {
            let _ = coordinator_task.await;
            tasks.close();
            tasks.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "shutdown grace period over; unfinished changes stay unacked and will be redelivered"
            );
            hard_stop.cancel();
            // The drain above was cut off before it closed the tracker, and
            // `wait` never resolves on an open tracker: without this the
            // exit always took 5 s more than shutdown.timeout_s.
            tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
        }
        close.cancel();
        let result = match early {
            Some(r) => r,
            None => consumer_task.await,
        };
        http_stop.cancel();
        let _ = http_task.await;
        tracing::info!("worker stopped");
        match result {
            Ok(r) => r.map_err(AppError::from),
            Err(e) => panic!("connection manager panicked: {e}"),
        }
    });

    Ok(AppHandle {
        http_addr,
        instance_id,
        shutdown,
        join,
    })
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
