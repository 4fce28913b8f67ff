//! `demo`: the simulator in process, the worker against it and the broker at
//! `AMQP_URL`, the bundled sample roster published, a progress bar, a summary.
//!
//! The demo declares its own uniquely named exchanges and queues and deletes
//! them at the end, so it never touches a real deployment's topology.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::{
    Channel, Connection,
    options::{
        BasicConsumeOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::FieldTable,
};
use serde_json::Value;
use tokio::time::Instant;

use crate::{
    amqp, app,
    cmd::{publish::publish_all, validate::split_changes},
    config::{AmqpSettings, Settings},
    sim::{SimConfig, SimServer},
};

/// The bundled sample roster: a week for 48 agents in 4 calendars, with a few invalid changes.
pub const SAMPLE_ROSTER: &[u8] = include_bytes!("../../samples/roster.ndjson");

#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Changes published per second (0: as fast as the broker confirms).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long each simulated CXone import job runs, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub job_ms: u64,
    /// Give up waiting for the results after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the simulator could not start: {0}")]
    Sim(std::io::Error),
    #[error(transparent)]
    App(#[from] app::AppError),
    #[error(transparent)]
    Amqp(#[from] amqp::AmqpError),
    #[error("broker error: {0}; is RabbitMQ running at AMQP_URL?")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Publish(#[from] super::publish::PublishError),
    #[error("cannot point the simulator's webhook at the worker: {0}")]
    Webhook(String),
    #[error("timed out after {0} s with {1} of {2} changes settled; see the worker's log above")]
    Timeout(u64, usize, usize),
}

/// What the demo saw.
#[derive(Default, Debug)]
pub struct Summary {
    pub published: usize,
    pub completed_changes: usize,
    pub failed_changes: usize,
    pub imports_completed: usize,
    pub imports_failed: usize,
    pub rejected: BTreeMap<String, usize>,
    pub latencies_ms: Vec<u64>,
    pub roster_shifts: usize,
}

impl Summary {
    fn percentile(&self, p: f64) -> Option<u64> {
        if self.latencies_ms.is_empty() {
            return None;
        }
        let mut v = self.latencies_ms.clone();
        v.sort_unstable();
        let idx = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        Some(v[idx])
    }

    /// Counts one event of the worker; returns how many changes it settled.
    fn record(
        &mut self,
        v: &Value,
        published_at: &HashMap<String, Instant>,
        now: Instant,
    ) -> usize {
        let ids = || {
            v["data"]["changeIds"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        match v["type"].as_str().unwrap_or("") {
            "wfm.schedule.import.completed" => {
                let ids = ids();
                self.imports_completed += 1;
                self.completed_changes += ids.len();
                let settled = ids.len();
                for id in ids {
                    if let Some(at) = published_at.get(&id) {
                        self.latencies_ms
                            .push(now.duration_since(*at).as_millis() as u64);
                    }
                }
                settled
            }
            "wfm.schedule.import.failed" => {
                let ids = ids();
                self.imports_failed += 1;
                self.failed_changes += ids.len();
                ids.len()
            }
            "wfm.schedule.change.rejected" => {
                let code = v["data"]["errors"][0]["code"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned();
                *self.rejected.entry(code).or_default() += 1;
                1
            }
            _ => 0,
        }
    }

    pub fn print(&self) {
        let rejected: usize = self.rejected.values().sum();
        println!();
        println!("cxone-schedule-worker demo: summary");
        println!("  changes published      {}", self.published);
        println!(
            "  accepted and imported  {} (in {} imports)",
            self.completed_changes, self.imports_completed
        );
        if self.failed_changes > 0 {
            println!(
                "  accepted but failed    {} (in {} imports; dead-lettered)",
                self.failed_changes, self.imports_failed
            );
        }
        println!("  rejected               {rejected}");
        for (code, n) in &self.rejected {
            println!("    {code:<28} {n}");
        }
        match (self.percentile(0.5), self.percentile(0.95)) {
            (Some(p50), Some(p95)) => {
                println!("  publish → completed    p50 {p50} ms, p95 {p95} ms")
            }
            _ => println!("  publish → completed    no completed changes"),
        }
        println!("  shifts in the roster   {}", self.roster_shifts);
    }
}

pub async fn run(args: DemoArgs, settings: Settings) -> Result<(), DemoError> {
    let summary = run_demo(&args, settings, true).await?;
    summary.print();
    Ok(())
}

/// Runs the demo and returns its summary (the CLI prints it; tests read it).
pub async fn run_demo(
    args: &DemoArgs,
    mut settings: Settings,
    progress: bool,
) -> Result<Summary, DemoError> {
    let secret = format!("demo-{:016x}", rand::random::<u64>());
    let sim = SimServer::start(SimConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        job_base_ms: args.job_ms,
        ..SimConfig::default()
    })
    .await
    .map_err(DemoError::Sim)?;
    let prefix = format!(
        "csw-demo-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    );
    point_at_simulator(&mut settings, &sim, &prefix, &secret);

    let conn = amqp::connect(&settings.amqp, "cxone-schedule-worker demo").await?;
    let ch = conn.create_channel().await?;
    amqp::declare_topology(&ch, &settings.amqp).await?;
    let tap_queue = format!("{prefix}.tap");
    let mut events = tap(&ch, &settings.amqp, &tap_queue).await?;

    let worker = app::start(settings.clone()).await?;
    sim.set_webhook(
        Some(format!("http://{}/webhooks/cxone", worker.http_addr)),
        Some(secret),
    )
    .map_err(DemoError::Webhook)?;

    let changes = split_changes(SAMPLE_ROSTER);
    let total = changes.len();
    let bar = progress_bar(total, progress);
    let bodies: Vec<Vec<u8>> = changes.iter().map(|c| c.to_vec()).collect();
    let (publish_task, mut sent) = spawn_publisher(
        &conn,
        settings.amqp.inbound_exchange.clone(),
        bodies,
        args.rate,
    )
    .await?;

    let mut summary = Summary {
        published: total,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    if let Err(settled) = tally(&mut events, &mut sent, &bar, &mut summary, deadline).await {
        worker.shutdown();
        let _ = worker.wait().await;
        return Err(DemoError::Timeout(args.timeout_s, settled, total));
    }
    bar.finish();
    if let Ok(Err(e)) = publish_task.await {
        return Err(e.into());
    }
    summary.roster_shifts = ["cal-emea-1", "cal-emea-2", "cal-amer-1", "cal-apac-1"]
        .iter()
        .map(|c| sim.shifts(c).len())
        .sum();

    worker.shutdown();
    worker.wait().await?;
    cleanup(&conn, &settings.amqp, &tap_queue).await;
    sim.shutdown().await;
    Ok(summary)
}

/// Counts the worker's events until every published change has settled;
/// at the deadline, or when the tap ends, how many had (`Err`).
async fn tally(
    events: &mut lapin::Consumer,
    sent: &mut Sent,
    bar: &ProgressBar,
    summary: &mut Summary,
    deadline: Instant,
) -> Result<(), usize> {
    let mut published_at: HashMap<String, Instant> = HashMap::new();
    let mut settled = 0usize;
    while settled < summary.published {
        let event = tokio::time::timeout_at(deadline, events.next()).await;
        while let Ok((id, at)) = sent.try_recv() {
            if let Some(id) = id {
                published_at.insert(id, at);
            }
        }
        let Ok(Some(Ok(delivery))) = event else {
            return Err(settled);
        };
        let Ok(v) = serde_json::from_slice::<Value>(&delivery.data) else {
            continue;
        };
        settled += summary.record(&v, &published_at, Instant::now());
        bar.set_position(settled as u64);
        bar.set_message(format!(
            "({} imports, {} rejected)",
            summary.imports_completed,
            summary.rejected.values().sum::<usize>()
        ));
    }
    Ok(())
}

/// The demo's own topology names, the in-process simulator as CXone, and
/// a local HTTP port of the system's choosing.
fn point_at_simulator(settings: &mut Settings, sim: &SimServer, prefix: &str, secret: &str) {
    rename_topology(&mut settings.amqp, prefix);
    settings.cxone.base_url = sim.base_url();
    settings.cxone.auth_url = sim.base_url();
    settings.cxone.client_id = "sim-client".into();
    settings.cxone.client_secret = "sim-secret".to_owned().into();
    settings.cxone.webhook_secret = secret.to_owned().into();
    settings.http.listen = ([127, 0, 0, 1], 0).into();
    settings.worker.instance_id = prefix.to_owned();
}

fn progress_bar(total: usize, visible: bool) -> ProgressBar {
    let bar = if visible {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} changes settled {msg}")
            .expect("static template"),
    );
    bar
}

/// When each change left: its `changeId` (if it has one) and the instant.
type Sent = tokio::sync::mpsc::UnboundedReceiver<(Option<String>, Instant)>;

type PublishTask = tokio::task::JoinHandle<Result<(), super::publish::PublishError>>;

/// Publishing runs beside the event loop and reports when each change left.
async fn spawn_publisher(
    conn: &Connection,
    exchange: String,
    bodies: Vec<Vec<u8>>,
    rate: f64,
) -> Result<(PublishTask, Sent), DemoError> {
    let publish_ch = conn.create_channel().await?;
    publish_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (sent_tx, sent) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let hidden = ProgressBar::hidden();
        let mut ticker =
            (rate > 0.0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / rate)));
        for body in bodies {
            if let Some(t) = ticker.as_mut() {
                t.tick().await;
            }
            let _ = sent_tx.send((change_id(&body), Instant::now()));
            publish_all(&publish_ch, &exchange, &[&body], 0.0, &hidden).await?;
        }
        Ok::<(), super::publish::PublishError>(())
    });
    Ok((task, sent))
}

fn change_id(change: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(change)
        .ok()?
        .get("changeId")?
        .as_str()
        .map(str::to_owned)
}

pub fn rename_topology(a: &mut AmqpSettings, prefix: &str) {
    a.inbound_exchange = format!("{prefix}.changes");
    a.inbound_queue = format!("{prefix}.changes");
    a.dead_letter_exchange = format!("{prefix}.changes.dlx");
    a.dead_letter_queue = format!("{prefix}.changes.dead");
    a.events_exchange = format!("{prefix}.events");
    a.unrouted_events_queue = format!("{prefix}.events.unrouted");
}

pub async fn tap(
    ch: &Channel,
    a: &AmqpSettings,
    queue: &str,
) -> Result<lapin::Consumer, lapin::Error> {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        a.events_exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.basic_consume(
        queue.into(),
        "demo-tap".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

async fn cleanup(conn: &Connection, a: &AmqpSettings, tap_queue: &str) {
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    let _ = ch
        .queue_delete(tap_queue.into(), QueueDeleteOptions::default())
        .await;
    amqp::delete_topology(&ch, a).await;
    let _ = conn.close(200, "demo done".into()).await;
}
