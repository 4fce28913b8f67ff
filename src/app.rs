//! Wires the stages together and runs the shutdown's phases in order
//! ([`crate::shutdown`]): stop consuming → close every open batch → let
//! in-flight imports finish and settle within `shutdown.timeout_s` →
//! whatever is unfinished stays unacked → close the connection (the broker
//! requeues the unacked) → exit 0 (docs/contract.md §9.4).

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
use tokio_util::task::TaskTracker;

use crate::{
    amqp::{AckBarriers, AmqpError},
    config::Settings,
    cxone::{CxoneClient, CxoneError},
    http::{self, HttpState},
    pipeline::{
        batch::{self, Batcher, ParseSettings, Scheduler},
        import::{ImportContext, Importer},
        jobs::{JobRegistry, PollPolicy},
        settle::Outbound,
        source::{self, Fence, Source, SourceConfig, partitions::ControlKeys},
    },
    shutdown::{Phase, Shutdown},
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
    shutdown: Shutdown,
    join: JoinHandle<Result<(), AppError>>,
}

impl AppHandle {
    /// Begins a graceful shutdown (what SIGTERM does).
    pub fn shutdown(&self) {
        self.shutdown.request();
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
        crate::shutdown::shutdown_signal().await;
        tracing::info!("shutdown requested");
        stop.request();
    });
    handle.wait().await
}

/// Starts the worker in the background.
pub async fn start(settings: Settings) -> Result<AppHandle, AppError> {
    // First: the recorder must be installed before any metric is registered.
    let metrics = telemetry::metrics_handle();
    let client = CxoneClient::new(&settings.cxone, &settings.retry)?;
    let (listener, http_addr) = bind(&settings).await?;
    let instance_id = settings.instance_id();
    let event_source = format!("/cxone-schedule-worker/{instance_id}");
    let shutdown = Shutdown::default();
    let ready = Arc::new(AtomicBool::new(false));
    let fence = Fence::default();
    // Imports and rejections run here, so the drain can wait for them.
    let tasks = TaskTracker::new();
    let jobs = JobRegistry::default();
    let (publisher_tx, publisher_rx) = watch::channel(None);
    let outbound = outbound(&settings, publisher_rx, &shutdown);
    // One value for both parses of a body: the source's and the import's.
    let parse = ParseSettings::of(&settings);
    let (batcher, scheduler) = start_batching(
        &settings,
        ImportParts {
            client: client.clone(),
            jobs: jobs.clone(),
            outbound: outbound.clone(),
            source: event_source.clone(),
            parse: parse.clone(),
            fence: fence.clone(),
        },
        tasks.clone(),
        shutdown.clone(),
    );
    let http_state = HttpState {
        broker_ready: ready.clone(),
        client,
        jobs: jobs.clone(),
        relay: outbound.clone(),
        relay_exchange: crate::amqp::webhook_relay_exchange_name(&settings.amqp),
        webhook_secret: settings.cxone.webhook_secret().map(|s| s.to_owned().into()),
        metrics,
    };
    let router = http::router(http_state, settings.http.webhook_max_body_bytes);
    let http = serve_http(listener, router, shutdown.clone());
    let source = tokio::spawn(
        Source {
            cfg: SourceConfig {
                amqp: settings.amqp.clone(),
                prefetch: settings.effective_prefetch(),
                batch_max_wait: settings.batch.max_wait,
                parse,
                connection_name: instance_id.clone(),
                source: event_source,
                jobs,
                control: ControlKeys {
                    fleet_secret: settings.fleet.secret.clone(),
                    webhook_secret: settings.cxone.webhook_secret().map(|s| s.to_owned().into()),
                },
            },
            publisher: publisher_tx,
            batcher,
            outbound,
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
            ready,
            fence,
        }
        .run(),
    );
    let stages = Stages {
        source,
        scheduler,
        tasks,
        http,
        grace: settings.shutdown.timeout,
    };
    let join = tokio::spawn(supervise(shutdown.clone(), stages));
    Ok(AppHandle {
        http_addr,
        instance_id,
        shutdown,
        join,
    })
}

async fn bind(settings: &Settings) -> Result<(TcpListener, SocketAddr), AppError> {
    let addr = settings.http.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| AppError::Listen { addr, source })?;
    Ok((listener, local))
}

/// Where settlement and the webhook relay publish.
fn outbound(
    settings: &Settings,
    publisher: watch::Receiver<Option<crate::amqp::Publisher>>,
    shutdown: &Shutdown,
) -> Outbound {
    Outbound {
        publisher,
        events_exchange: settings.amqp.events_exchange.clone(),
        dead_letter_exchange: settings.amqp.dead_letter_exchange.clone(),
        hard_stop: shutdown.token_for(Phase::AbandonImports),
    }
}

/// Serves health, metrics and the webhook until the shutdown stops HTTP.
fn serve_http(listener: TcpListener, router: axum::Router, shutdown: Shutdown) -> JoinHandle<()> {
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.entered(Phase::StopHttp).await })
            .await;
    })
}

/// What an import needs besides the scheduler's channel and the barriers.
struct ImportParts {
    client: CxoneClient,
    jobs: JobRegistry,
    outbound: Outbound,
    source: String,
    parse: ParseSettings,
    fence: Fence,
}

/// Wires batch → import: the scheduler hands batches to the importer, the
/// importer reports ended imports back on a channel. Returns the source's
/// way in and the scheduler task.
fn start_batching(
    settings: &Settings,
    parts: ImportParts,
    tasks: TaskTracker,
    shutdown: Shutdown,
) -> (Batcher, JoinHandle<()>) {
    let (ended_tx, ended_rx) = mpsc::unbounded_channel();
    let barriers = AckBarriers::default();
    let importer = Importer::new(
        ImportContext {
            client: parts.client,
            jobs: parts.jobs,
            outbound: parts.outbound,
            poll: PollPolicy {
                initial: settings.imports.poll_initial,
                max: settings.imports.poll_max,
                timeout: settings.imports.job_timeout,
            },
            source: parts.source,
            ended: ended_tx,
            parse: parts.parse,
            barriers: barriers.clone(),
            fence: parts.fence,
        },
        tasks,
    );
    let scheduler = Scheduler::new(
        batch::Limits {
            max_entries: settings.batch.max_entries,
            max_wait: settings.batch.max_wait,
            max_concurrent: settings.imports.max_concurrent,
            window: source::window(settings.effective_prefetch(), settings.amqp.partitions),
        },
        importer,
        barriers,
    );
    let (batcher, run) = scheduler.start(ended_rx, shutdown);
    (batcher, tokio::spawn(run))
}

/// The running stages, as shutdown waits for them.
struct Stages {
    source: JoinHandle<Result<(), AmqpError>>,
    scheduler: JoinHandle<()>,
    /// Imports and rejections being settled.
    tasks: TaskTracker,
    http: JoinHandle<()>,
    /// `shutdown.timeout_s`: how long the drain may take.
    grace: Duration,
}

/// Waits for a shutdown request (or the source to fail), then runs the
/// shutdown's phases in order.
async fn supervise(shutdown: Shutdown, stages: Stages) -> Result<(), AppError> {
    let Stages {
        mut source,
        scheduler,
        tasks,
        http,
        grace,
    } = stages;
    let early = tokio::select! {
        _ = shutdown.entered(Phase::StopConsuming) => None,
        r = &mut source => Some(r),
    };
    // Stop taking deliveries, then drain what was taken.
    shutdown.enter(Phase::StopConsuming);
    let deadline = tokio::time::Instant::now() + grace;
    let _ = tokio::time::timeout_at(deadline, shutdown.consuming_stopped()).await;
    shutdown.enter(Phase::DrainBatches);
    let drained = tokio::time::timeout_at(deadline, async {
        let _ = scheduler.await;
        tasks.close();
        tasks.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_s = grace.as_secs(),
            "shutdown grace period over; unfinished changes stay unacked and will be redelivered"
        );
        shutdown.enter(Phase::AbandonImports);
        // The drain above was cut off before it closed the tracker, and
        // `wait` never resolves on an open tracker.
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    }
    shutdown.enter(Phase::CloseConnection);
    let result = match early {
        Some(r) => r,
        None => source.await,
    };
    shutdown.enter(Phase::StopHttp);
    let _ = http.await;
    tracing::info!("worker stopped");
    match result {
        Ok(r) => r.map_err(AppError::from),
        Err(e) => panic!("connection manager panicked: {e}"),
    }
}

/// The async runtime `worker.threads` asks for. One thread: everything runs on it, with no hand-offs between threads
/// (and one malloc arena); more: a work-stealing pool.
pub fn runtime(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(usize::from(n));
            }
            b
        }
    };
    builder.enable_all().build()
}
