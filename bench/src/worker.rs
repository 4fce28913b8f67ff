//! The worker under measurement: the `cxone-schedule-worker` binary built
//! beside this one, run as a child process on the run's topology, with the
//! readings taken from it (readiness, metrics, peak RSS, exit).

use cxone_schedule_worker::telemetry::metrics as metric;
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use cxone_schedule_worker::{config::Settings, sim::SimServer};
use serde_json::{Value, json};
use tokio::{process::Child, time::Instant};

use crate::{error::BenchError, proc_stats, topology::Topology};

/// The worker binary's name in the target directory.
const WORKER_BINARY: &str = "cxone-schedule-worker";

/// The worker binary of the same build as this one: beside this executable
/// in the target directory (`target/release/` or `target/debug/`).
pub fn locate_binary() -> Result<PathBuf, BenchError> {
    let me = std::env::current_exe()?;
    let dir = me.parent().unwrap_or(Path::new("."));
    let path = dir.join(format!("{WORKER_BINARY}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        return Ok(path);
    }
    let build = if cfg!(debug_assertions) {
        "cargo build --workspace"
    } else {
        "cargo build --release --workspace"
    };
    Err(BenchError::WorkerMissing { path, build })
}

/// The worker child process and where to reach it.
pub struct Worker {
    child: Option<Child>,
    pub pid: u32,
    /// Its `http.listen` port: `/readyz`, `/metrics` and the simulator's webhook.
    pub port: u16,
    /// Its stdout and stderr.
    pub log: PathBuf,
    started: Instant,
}

impl Worker {
    /// Starts `exe run` on the run's topology, with the simulator's webhook
    /// pointed at it and `extra` settings (`CSW__…` variables) on top.
    pub async fn spawn(
        exe: &Path,
        topology: &Topology,
        sim: &SimServer,
        extra: &[(&str, String)],
    ) -> Result<Worker, BenchError> {
        let port = free_port().await?;
        let secret = format!("bench-{:016x}", rand::random::<u64>());
        sim.set_webhook(
            Some(format!("http://127.0.0.1:{port}/webhooks/cxone")),
            Some(secret.clone()),
        )
        .map_err(BenchError::Webhook)?;
        let mut env = child_env(&topology.settings, port, sim, secret);
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let log = std::env::temp_dir().join(format!("{}.worker.log", topology.prefix));
        let log_file = tokio::fs::File::create(&log).await?.into_std().await;
        let child = command(exe)
            .arg("run")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BenchError::Spawn {
                exe: exe.to_owned(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        Ok(Worker {
            child: Some(child),
            pid,
            port,
            log,
            started: Instant::now(),
        })
    }

    /// Waits for `/readyz`; returns how long the worker took to get there.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<Duration, BenchError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let deadline = self.started + within;
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(self.started.elapsed());
            }
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() > deadline {
                return Err(BenchError::NotReady(within.as_secs(), self.log.clone()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A counter family from the worker's `/metrics`, by the value of its
    /// one label: acks sent by kind (single acks cost a quorum queue a Raft
    /// command each), batches closed by trigger (closed by age means the
    /// drain's rounds outlasted `batch.max_wait_ms`).
    pub async fn counters(&self, family: &str, label: &str) -> serde_json::Map<String, Value> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let text = match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let prefix = format!("{family}{{{label}=\"");
        let mut out = serde_json::Map::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(&prefix)
                && let Some((value_of_label, count)) = rest.split_once("\"} ")
                && let Ok(v) = count.trim().parse::<f64>()
            {
                out.insert(value_of_label.to_owned(), json!(v as u64));
            }
        }
        out
    }

    /// The child's peak resident set so far, in kB (`VmHWM`).
    pub async fn peak_rss_kb(&self) -> Option<u64> {
        self.child.as_ref()?;
        proc_stats::peak_rss_kb(self.pid).await
    }

    /// SIGTERM (graceful shutdown), then waits for the exit; what it exited with.
    pub async fn stop(&mut self) -> Value {
        let Some(mut child) = self.child.take() else {
            return Value::Null;
        };
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
            Ok(Ok(status)) => json!({"signal": "SIGTERM", "code": status.code()}),
            _ => {
                let _ = child.kill().await;
                json!({"signal": "SIGKILL after 60 s", "code": null})
            }
        }
    }
}

/// The command that starts the worker. A profiler can wrap the child, e.g.
/// CSW_BENCH_WORKER_WRAPPER="heaptrack -o /tmp/worker": the wrapper runs
/// with the worker's command line after its own words.
fn command(exe: &Path) -> tokio::process::Command {
    let wrapper = std::env::var("CSW_BENCH_WORKER_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut c = tokio::process::Command::new(program);
            c.args(words).arg(exe);
            c
        }
        None => tokio::process::Command::new(exe),
    }
}

/// The worker's configuration: the run's topology and worker settings, and
/// the simulator as its CXone.
fn child_env(s: &Settings, port: u16, sim: &SimServer, secret: String) -> Vec<(String, String)> {
    let a = &s.amqp;
    [
        ("AMQP_URL", a.url.clone()),
        ("CSW__AMQP__INBOUND_EXCHANGE", a.inbound_exchange.clone()),
        ("CSW__AMQP__INBOUND_QUEUE", a.inbound_queue.clone()),
        ("CSW__AMQP__QUEUE_TYPE", a.queue_type.as_str().into()),
        (
            "CSW__AMQP__DEAD_LETTER_EXCHANGE",
            a.dead_letter_exchange.clone(),
        ),
        ("CSW__AMQP__DEAD_LETTER_QUEUE", a.dead_letter_queue.clone()),
        ("CSW__AMQP__EVENTS_EXCHANGE", a.events_exchange.clone()),
        (
            "CSW__AMQP__UNROUTED_EVENTS_QUEUE",
            a.unrouted_events_queue.clone(),
        ),
        ("CSW__AMQP__PARTITIONS", "1".into()),
        ("CSW__WORKER__INSTANCE_ID", s.worker.instance_id.clone()),
        ("CSW__WORKER__THREADS", s.worker.threads.to_string()),
        ("CSW__AMQP__ACK_CHUNK", a.ack_chunk.to_string()),
        ("CSW__HTTP__LISTEN", format!("127.0.0.1:{port}")),
        ("CXONE_BASE_URL", sim.base_url()),
        ("CXONE_AUTH_URL", sim.base_url()),
        ("CXONE_CLIENT_ID", "sim-client".into()),
        ("CXONE_CLIENT_SECRET", "sim-secret".into()),
        ("CXONE_WEBHOOK_SECRET", secret),
        ("CSW__CXONE__GRANT_TYPE", "client_credentials".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn free_port() -> Result<u16, BenchError> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

/// When the worker, at `port`, had its first change in hand: the start of
/// its drain, as the raw consumer's clock starts at its first delivery. A new
/// consumer's first delivery comes late on a quorum queue, the later the
/// larger its prefetch, because the queue checks a whole window out before
/// it sends any of it. That is the broker starting, once per consumer, not
/// the rate the worker drains at; it is reported beside the drain. Polls
/// `csw_changes_received_total`; the time is when the last poll that still
/// saw 0 was sent.
pub async fn first_received(port: u16, within: Duration) -> Option<Instant> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    let mut before = Instant::now();
    while Instant::now() < deadline {
        let asked = Instant::now();
        let text = client.get(&url).send().await.ok()?.text().await.ok()?;
        let received = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(metric::CHANGES_RECEIVED_TOTAL)?
                    .strip_prefix(' ')
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if received > 0.0 {
            return Some(before);
        }
        before = asked;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}
