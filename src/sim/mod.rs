//! The CXone simulator (docs/contract.md §13): an axum server usable in process
//! by tests (bind port 0, read back the address) and standalone via `sim`.
//!
//! - `POST /oauth/token`: `client_credentials` (client id/secret in the form
//!   or as HTTP Basic) and `password` (the same client authentication, plus
//!   `username`/`password` = the access key, [`DEFAULT_ACCESS_KEY_ID`] /
//!   [`DEFAULT_ACCESS_KEY_SECRET`] unless changed at run time, as CXone
//!   back-end applications use). Tokens are random opaque strings carrying
//!   the granted scopes (requested ∩ known; all four when none is requested)
//!   and expire after `tokenTtlS`.
//! - `POST /api/v2/wfm/schedules/import`, `GET /api/v2/wfm/async-jobs/{id}`:
//!   Bearer auth and scopes, then the rate limit, then the 503 fault.
//! - Inspection without auth: `GET /sim/calendars/{id}/shifts`, `GET /sim/stats`,
//!   `POST /sim/reset`, `PUT /sim/faults` (partial update), `GET /sim/faults`.
//!
//! State is a handful of small mutex-guarded maps; no lock is held across an
//! await. Finished jobs and idempotency keys are forgotten after
//! `--retention-s`, expired tokens are purged, so memory stays bounded over
//! long benchmarks (the stored rosters are the only thing that grows, with the
//! data imported; `POST /sim/reset` clears them).

mod routes;
mod state;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde::{Deserialize, Deserializer, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cxone::JobStatus;
use crate::domain::ScheduleEntry;

use state::SimState;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrentCalendar {
    Allow,
    Reject,
}

/// The access key the password grant accepts (`username`/`password`) until
/// changed with `PUT /sim/faults` (`accessKeyId`, `accessKeySecret`). Not
/// flags: they would make `SimConfig` large enough to trip clippy's
/// `large_enum_variant` on the CLI's command enum, and tests set them at run
/// time anyway.
pub const DEFAULT_ACCESS_KEY_ID: &str = "sim-access-key";
pub const DEFAULT_ACCESS_KEY_SECRET: &str = "sim-access-secret";

/// Every flag of `sim`; all but `--listen` can be changed at run time with
/// `PUT /sim/faults` (camelCase names) or [`SimServer::set_faults`].
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
    /// Per client (token bucket, burst of one second's worth); 0 = off.
    #[arg(long, default_value_t = 0)]
    pub rate_limit_per_min: u32,
    #[arg(long, default_value_t = 200)]
    pub job_base_ms: u64,
    #[arg(long, default_value_t = 0.0)]
    pub job_per_entry_ms: f64,
    /// Added to every API response (token, import, job; not /sim/*).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of WFM API requests (import, job) answered 503.
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
    /// How long finished jobs and idempotency keys are remembered.
    #[arg(long = "retention-s", default_value_t = 600)]
    pub retention_s: u64,
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
            retention_s: 600,
        }
    }
}

/// `GET /sim/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimStats {
    pub token_requests: u64,
    pub import_requests: u64,
    /// `GET /api/v2/wfm/async-jobs/{id}` requests, whatever their answer.
    pub job_requests: u64,
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

/// The run-time settings: every flag but `--listen`. `GET /sim/faults`
/// shows them (secrets as `"***"`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Faults {
    pub client_id: String,
    #[serde(serialize_with = "redacted")]
    pub client_secret: String,
    pub access_key_id: String,
    #[serde(serialize_with = "redacted")]
    pub access_key_secret: String,
    pub token_ttl_s: u64,
    pub rate_limit_per_min: u32,
    pub job_base_ms: u64,
    pub job_per_entry_ms: f64,
    pub latency_ms: u64,
    pub fail_5xx_rate: f64,
    pub job_fail_rate: f64,
    pub concurrent_calendar: ConcurrentCalendar,
    pub webhook_url: Option<String>,
    #[serde(serialize_with = "redacted_opt")]
    pub webhook_secret: Option<String>,
    pub retention_s: u64,
}

fn redacted<S: serde::Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("***")
}

fn redacted_opt<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("***"),
        None => s.serialize_none(),
    }
}

impl From<&SimConfig> for Faults {
    fn from(c: &SimConfig) -> Self {
        Faults {
            client_id: c.client_id.clone(),
            client_secret: c.client_secret.clone(),
            access_key_id: DEFAULT_ACCESS_KEY_ID.into(),
            access_key_secret: DEFAULT_ACCESS_KEY_SECRET.into(),
            token_ttl_s: c.token_ttl_s,
            rate_limit_per_min: c.rate_limit_per_min,
            job_base_ms: c.job_base_ms,
            job_per_entry_ms: c.job_per_entry_ms,
            latency_ms: c.latency_ms,
            fail_5xx_rate: c.fail_5xx_rate,
            job_fail_rate: c.job_fail_rate,
            concurrent_calendar: c.concurrent_calendar,
            webhook_url: c.webhook_url.clone().filter(|s| !s.is_empty()),
            webhook_secret: c.webhook_secret.clone().filter(|s| !s.is_empty()),
            retention_s: c.retention_s,
        }
    }
}

impl Faults {
    /// What `sim` refuses to run with, said per flag.
    fn check(&self) -> Result<(), String> {
        let rate = |name: &str, v: f64| {
            if v.is_finite() && (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be a share between 0 and 1, got {v}"))
            }
        };
        rate("fail5xxRate (--fail-5xx-rate)", self.fail_5xx_rate)?;
        rate("jobFailRate (--job-fail-rate)", self.job_fail_rate)?;
        if !(self.job_per_entry_ms.is_finite() && self.job_per_entry_ms >= 0.0) {
            return Err(format!(
                "jobPerEntryMs (--job-per-entry-ms) must be a non-negative number, got {}",
                self.job_per_entry_ms
            ));
        }
        if self.token_ttl_s == 0 {
            return Err("tokenTtlS (--token-ttl-s) must be at least 1".into());
        }
        if self.client_id.is_empty() || self.client_secret.is_empty() {
            return Err(
                "clientId and clientSecret (--client-id, --client-secret) must not be empty".into(),
            );
        }
        if let Some(u) = &self.webhook_url {
            let ok = reqwest::Url::parse(u)
                .map(|u| matches!(u.scheme(), "http" | "https"))
                .unwrap_or(false);
            if !ok {
                return Err(format!(
                    "webhookUrl (--webhook-url) must be an http(s) URL, got {u:?}"
                ));
            }
        }
        Ok(())
    }

    fn apply(&mut self, p: FaultsPatch) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = p.$f { self.$f = v; } )* };
        }
        set!(
            client_id,
            client_secret,
            access_key_id,
            access_key_secret,
            token_ttl_s,
            rate_limit_per_min,
            job_base_ms,
            job_per_entry_ms,
            latency_ms,
            fail_5xx_rate,
            job_fail_rate,
            concurrent_calendar,
            retention_s
        );
        // Absent: unchanged; null or "": cleared.
        if let Some(v) = p.webhook_url {
            self.webhook_url = v.filter(|s| !s.is_empty());
        }
        if let Some(v) = p.webhook_secret {
            self.webhook_secret = v.filter(|s| !s.is_empty());
        }
    }
}

/// `PUT /sim/faults`: any subset of the flags, camelCase. Unknown names are
/// refused (400) so a typo does not silently leave a fault off.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultsPatch {
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub access_key_id: Option<String>,
    pub access_key_secret: Option<String>,
    pub token_ttl_s: Option<u64>,
    pub rate_limit_per_min: Option<u32>,
    pub job_base_ms: Option<u64>,
    pub job_per_entry_ms: Option<f64>,
    pub latency_ms: Option<u64>,
    #[serde(rename = "fail5xxRate")]
    pub fail_5xx_rate: Option<f64>,
    pub job_fail_rate: Option<f64>,
    pub concurrent_calendar: Option<ConcurrentCalendar>,
    #[serde(default, deserialize_with = "some")]
    pub webhook_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "some")]
    pub webhook_secret: Option<Option<String>>,
    pub retention_s: Option<u64>,
}

/// Tells "absent" (outer `None`) from `null` (`Some(None)`).
fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A running simulator. Dropping it does not stop it; call [`SimServer::shutdown`].
pub struct SimServer {
    addr: SocketAddr,
    state: Arc<SimState>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl SimServer {
    /// Binds `cfg.listen` (port 0 picks a free port) and serves in the background.
    pub async fn start(cfg: SimConfig) -> std::io::Result<SimServer> {
        let faults = Faults::from(&cfg);
        faults
            .check()
            .map_err(|m| std::io::Error::new(std::io::ErrorKind::InvalidInput, m))?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot listen on {} ({e}); pick another --listen address",
                        cfg.listen
                    ),
                )
            })?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let state = Arc::new(SimState::new(faults, shutdown.clone()));
        state::spawn_janitor(state.clone());
        let app = routes::router(state.clone());
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "CXone simulator stopped serving");
            }
        });
        Ok(SimServer {
            addr,
            state,
            shutdown,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: both `cxone.base_url` and `cxone.auth_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// The stored roster of a calendar, sorted by agent then start.
    pub fn shifts(&self, calendar_id: &str) -> Vec<ScheduleEntry> {
        self.state.shifts(calendar_id)
    }

    /// The current run-time settings.
    pub fn faults(&self) -> Faults {
        self.state.faults()
    }

    /// Changes run-time settings, as `PUT /sim/faults` does.
    pub fn set_faults(&self, patch: FaultsPatch) -> Result<(), String> {
        self.state.set_faults(patch)
    }

    /// Where job-end webhooks go (`None` turns them off), and the signing secret.
    pub fn set_webhook(&self, url: Option<String>, secret: Option<String>) -> Result<(), String> {
        self.set_faults(FaultsPatch {
            webhook_url: Some(url),
            webhook_secret: Some(secret),
            ..FaultsPatch::default()
        })
    }

    /// Forgets tokens, jobs, rosters, keys and counters (`POST /sim/reset`);
    /// jobs still running are abandoned. Run-time settings are kept.
    pub fn reset(&self) {
        self.state.reset()
    }

    /// The `traceparent` headers of the last API requests (at most 1000), oldest first.
    pub fn traceparents_seen(&self) -> Vec<String> {
        self.state.traceparents()
    }

    /// The last 1024 access tokens issued, oldest first: tests check that
    /// none of them reaches a log.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.issued_tokens()
    }

    /// Revokes every issued token (as an expiry or a key rotation would):
    /// the next API call with one is answered 401.
    pub fn revoke_tokens(&self) {
        self.state.revoke_tokens()
    }

    /// A job's current status, if the simulator still remembers it.
    pub fn job_status(&self, job_id: &str) -> Option<JobStatus> {
        self.state.job_status(job_id)
    }

    /// Stops serving: in-flight requests finish (up to 5 s), running jobs
    /// are abandoned.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// `cxone-schedule-worker sim`: serve until SIGINT/SIGTERM.
pub async fn run_standalone(cfg: SimConfig) -> std::io::Result<()> {
    let server = SimServer::start(cfg).await?;
    tracing::info!(
        addr = %server.addr(),
        base_url = %server.base_url(),
        "CXone simulator listening (use the base URL as cxone.base_url and cxone.auth_url)"
    );
    crate::shutdown::shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}
