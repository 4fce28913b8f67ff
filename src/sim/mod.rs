//! The CXone simulator (CONTRACT section 6): an axum server usable in process
//! by tests (bind port 0, read back the address) and standalone via `sim`.
//! PLACEHOLDER: only the interface is here so far.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::domain::ScheduleEntry;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrentCalendar {
    Allow,
    Reject,
}

/// Every flag of `sim`; the fault flags can be changed at run time with `PUT /sim/faults`.
#[derive(Clone, Debug, clap::Args)]
pub struct SimConfig {
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    #[arg(long, default_value = "sim-client")]
    pub client_id: String,
    #[arg(long, default_value = "sim-secret")]
    pub client_secret: String,
    #[arg(long = "token-ttl-s", default_value_t = 3600)]
    pub token_ttl_s: u64,
    #[arg(long, default_value_t = 0)]
    pub rate_limit_per_min: u32,
    #[arg(long, default_value_t = 200)]
    pub job_base_ms: u64,
    #[arg(long, default_value_t = 0.0)]
    pub job_per_entry_ms: f64,
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    #[arg(long = "fail-5xx-rate", default_value_t = 0.0)]
    pub fail_5xx_rate: f64,
    #[arg(long, default_value_t = 0.0)]
    pub job_fail_rate: f64,
    #[arg(long, value_enum, default_value = "reject")]
    pub concurrent_calendar: ConcurrentCalendar,
    #[arg(long)]
    pub webhook_url: Option<String>,
    #[arg(long)]
    pub webhook_secret: Option<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            client_id: "sim-client".into(),
            client_secret: "sim-secret".into(),
            token_ttl_s: 3600,
            rate_limit_per_min: 0,
            job_base_ms: 200,
            job_per_entry_ms: 0.0,
            latency_ms: 0,
            fail_5xx_rate: 0.0,
            job_fail_rate: 0.0,
            concurrent_calendar: ConcurrentCalendar::Reject,
            webhook_url: None,
            webhook_secret: None,
        }
    }
}

/// `GET /sim/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimStats {
    pub token_requests: u64,
    pub import_requests: u64,
    pub imports_accepted: u64,
    pub responses401: u64,
    pub responses409: u64,
    pub responses429: u64,
    pub responses5xx: u64,
    pub jobs_completed: u64,
    pub jobs_failed: u64,
    pub concurrent_calendar_violations: u64,
    pub idempotent_replays: u64,
}

/// A running simulator. Dropping it does not stop it; call [`SimServer::shutdown`].
pub struct SimServer {
    addr: SocketAddr,
}

impl SimServer {
    pub async fn start(_cfg: SimConfig) -> std::io::Result<SimServer> {
        unimplemented!()
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:PORT`: both `cxone.base_url` and `cxone.auth_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn stats(&self) -> SimStats {
        unimplemented!()
    }
    /// The stored roster of a calendar, sorted by agent then start.
    pub fn shifts(&self, _calendar_id: &str) -> Vec<ScheduleEntry> {
        unimplemented!()
    }
    pub async fn shutdown(self) {}
}

/// `cxone-schedule-worker sim`: serve until SIGINT/SIGTERM.
pub async fn run_standalone(cfg: SimConfig) -> anyhow::Result<()> {
    let server = SimServer::start(cfg).await?;
    tracing::info!(addr = %server.addr(), "CXone simulator listening");
    crate::app::shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}
