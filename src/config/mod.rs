//! Typed settings, loaded in layers and validated once at start-up.
//!
//! Layers, later wins: the bundled `config/default.toml` (compiled in, so the
//! binary runs from any directory), an optional `--config FILE`, `CSW__SECTION__KEY`
//! environment variables, and the short aliases of docs/contract.md §14
//! (`AMQP_URL`, `CXONE_BASE_URL`, ...). Anything wrong stops start-up with one
//! [`ConfigError`] line that names the key and says what is expected.

use std::{fmt, net::SocketAddr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::{Limits, ValidationMode};
use crate::redact::redact_url;

mod load;
mod validate;

/// The defaults, compiled in. `config/default.toml` is the documentation too.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Short environment aliases and the key each one sets.
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("AMQP_URL", "amqp.url"),
    ("CXONE_BASE_URL", "cxone.base_url"),
    ("CXONE_AUTH_URL", "cxone.auth_url"),
    ("CXONE_CLIENT_ID", "cxone.client_id"),
    ("CXONE_CLIENT_SECRET", "cxone.client_secret"),
    ("CXONE_WEBHOOK_SECRET", "cxone.webhook_secret"),
    ("CSW_FLEET_SECRET", "fleet.secret"),
];

/// A setting that is missing or malformed. Displayed as one line naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {message}")]
    File { path: String, message: String },
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("configuration: {0}")]
    Load(String),
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub batch: BatchSettings,
    pub imports: ImportSettings,
    pub retry: RetrySettings,
    pub limits: Limits,
    pub cxone: CxoneSettings,
    pub http: HttpSettings,
    pub shutdown: ShutdownSettings,
    pub worker: WorkerSettings,
    pub telemetry: TelemetrySettings,
    pub fleet: FleetSettings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Quorum,
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

#[derive(Clone, Deserialize)]
pub struct AmqpSettings {
    /// May hold a password: never print it, use [`redact_url`].
    pub url: String,
    pub inbound_exchange: String,
    pub inbound_queue: String,
    pub queue_type: QueueType,
    pub delivery_limit: u32,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub events_exchange: String,
    pub unrouted_events_queue: String,
    pub unrouted_max_length: u32,
    pub prefetch: u16,
    /// Most deliveries one `multiple` ack covers when the ack pace finds
    /// the broker quick enough for chunks; 0 = every settled front whole,
    /// never probed. Its default is in `config/default.toml`.
    pub ack_chunk: u32,
    pub partitions: u16,
    #[serde(rename = "reconnect_initial_ms", deserialize_with = "millis")]
    pub reconnect_initial: Duration,
    #[serde(rename = "reconnect_max_ms", deserialize_with = "millis")]
    pub reconnect_max: Duration,
    /// PEM file of extra CA certificates trusted for `amqps://` (a private
    /// CA); empty = the platform's trust store only.
    #[serde(default)]
    pub ca_file: String,
    /// Names the exchanges replicas talk to each other on (membership,
    /// webhook relay), apart from the data exchanges.
    pub control_exchange_prefix: String,
}

impl fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &redact_url(&self.url))
            .field("inbound_exchange", &self.inbound_exchange)
            .field("inbound_queue", &self.inbound_queue)
            .field("queue_type", &self.queue_type)
            .field("delivery_limit", &self.delivery_limit)
            .field("dead_letter_exchange", &self.dead_letter_exchange)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("events_exchange", &self.events_exchange)
            .field("unrouted_events_queue", &self.unrouted_events_queue)
            .field("unrouted_max_length", &self.unrouted_max_length)
            .field("prefetch", &self.prefetch)
            .field("ack_chunk", &self.ack_chunk)
            .field("partitions", &self.partitions)
            .field("ca_file", &self.ca_file)
            .field("control_exchange_prefix", &self.control_exchange_prefix)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct BatchSettings {
    pub max_entries: usize,
    #[serde(rename = "max_wait_ms", deserialize_with = "millis")]
    pub max_wait: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ImportSettings {
    pub max_concurrent: usize,
    #[serde(rename = "poll_initial_ms", deserialize_with = "millis")]
    pub poll_initial: Duration,
    #[serde(rename = "poll_max_ms", deserialize_with = "millis")]
    pub poll_max: Duration,
    #[serde(rename = "job_timeout_s", deserialize_with = "secs")]
    pub job_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RetrySettings {
    #[serde(rename = "base_ms", deserialize_with = "millis")]
    pub base: Duration,
    #[serde(rename = "cap_ms", deserialize_with = "millis")]
    pub cap: Duration,
    #[serde(rename = "max_elapsed_s", deserialize_with = "secs")]
    pub max_elapsed: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            base: Duration::from_millis(200),
            cap: Duration::from_millis(30_000),
            max_elapsed: Duration::from_secs(600),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    ClientCredentials,
    Password,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CxoneSettings {
    pub base_url: String,
    pub auth_url: String,
    pub grant_type: GrantType,
    pub client_id: String,
    pub client_secret: SecretString,
    pub access_key_id: String,
    pub access_key_secret: SecretString,
    pub scope: String,
    pub default_validation_mode: ValidationMode,
    pub webhook_secret: SecretString,
    #[serde(rename = "request_timeout_ms", deserialize_with = "millis")]
    pub request_timeout: Duration,
    #[serde(rename = "connect_timeout_ms", deserialize_with = "millis")]
    pub connect_timeout: Duration,
    #[serde(rename = "token_refresh_margin_s", deserialize_with = "secs")]
    pub token_refresh_margin: Duration,
    /// Client-side request budget (token bucket, burst of one second's
    /// worth); 0 = off. Set it to a rate limit CXone has announced, so the
    /// worker paces itself instead of collecting 429s.
    #[serde(default)]
    pub max_requests_per_min: u32,
    /// PEM file of extra CA certificates trusted for `https://` CXone URLs
    /// (a private CA or TLS-inspecting proxy); empty = the platform's trust
    /// store only.
    #[serde(default)]
    pub ca_file: String,
}

impl CxoneSettings {
    /// The webhook secret, if one is configured (an empty string means none).
    pub fn webhook_secret(&self) -> Option<&str> {
        let s = self.webhook_secret.expose_secret();
        (!s.is_empty()).then_some(s)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub webhook_max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ShutdownSettings {
    #[serde(rename = "timeout_s", deserialize_with = "secs")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub instance_id: String,
    /// Threads of the async runtime; 0 means one per CPU core, 1 runs
    /// everything on the main thread.
    pub threads: u16,
}

/// The replicas' shared key for the control plane.
#[derive(Debug, Clone, Deserialize)]
pub struct FleetSettings {
    /// Authenticates membership heartbeats (HMAC-SHA256); required when
    /// `amqp.partitions` > 1. `SecretString` keeps it out of Debug.
    pub secret: SecretString,
}

impl FleetSettings {
    /// The fleet secret, if one is configured (an empty string means none).
    pub fn secret(&self) -> Option<&str> {
        let s = self.secret.expose_secret();
        (!s.is_empty()).then_some(s)
    }
}

/// Also the values of the binary's `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_level: String,
    pub service_name: String,
}

impl Settings {
    /// The prefetch to apply: configured, or derived so that every import slot
    /// can be fed a full batch while the next one fills.
    pub fn effective_prefetch(&self) -> u16 {
        if self.amqp.prefetch > 0 {
            return self.amqp.prefetch;
        }
        let derived = self.batch.max_entries * (self.imports.max_concurrent + 1);
        derived.clamp(1, 10_000) as u16
    }

    /// `worker.instance_id`, or host name and process id.
    pub fn instance_id(&self) -> String {
        if !self.worker.instance_id.is_empty() {
            return self.worker.instance_id.clone();
        }
        format!(
            "{}-{}",
            gethostname::gethostname().to_string_lossy(),
            std::process::id()
        )
    }
}

/// A `…_ms` key: a whole number of milliseconds.
fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

/// A `…_s` key: a whole number of seconds.
fn secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::Path};

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_match_contract() {
        let s = Settings::defaults();
        assert_eq!(s.amqp.inbound_exchange, "wfm.schedule.changes");
        assert_eq!(s.amqp.queue_type, QueueType::Quorum);
        assert_eq!(s.amqp.delivery_limit, 10);
        assert_eq!(s.batch.max_entries, 500);
        assert_eq!(s.batch.max_wait, Duration::from_millis(1000));
        assert_eq!(s.imports.max_concurrent, 3);
        assert_eq!(s.retry.max_elapsed, Duration::from_secs(600));
        assert_eq!(s.limits.max_message_bytes, 1 << 20);
        assert_eq!(s.cxone.default_validation_mode, ValidationMode::Strict);
        assert_eq!(s.http.listen.port(), 8080);
        assert_eq!(s.effective_prefetch(), 2000);
        assert_eq!(s.worker.threads, 0, "one per CPU core");
        assert!(s.cxone.webhook_secret().is_none());
    }

    #[test]
    fn env_overrides_and_aliases_apply_in_order() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("CSW__BATCH__MAX_ENTRIES", "200"),
                ("CSW__AMQP__URL", "amqp://a/%2f"),
                ("AMQP_URL", "amqp://b/%2f"),
                ("CXONE_CLIENT_SECRET", "s3cr3t"),
                ("CSW__AMQP__QUEUE_TYPE", "classic"),
            ]),
        )
        .unwrap();
        assert_eq!(s.batch.max_entries, 200);
        assert_eq!(s.amqp.url, "amqp://b/%2f", "alias wins over CSW__");
        assert_eq!(s.cxone.client_secret.expose_secret(), "s3cr3t");
        assert_eq!(s.amqp.queue_type, QueueType::Classic);
    }

    #[test]
    fn file_layer_sits_between_defaults_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[batch]\nmax_entries = 7\nmax_wait_ms = 5\n").unwrap();
        let s =
            Settings::load_from(Some(&path), &env(&[("CSW__BATCH__MAX_WAIT_MS", "9")])).unwrap();
        assert_eq!(s.batch.max_entries, 7);
        assert_eq!(s.batch.max_wait, Duration::from_millis(9));
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("CSW__BATCH__MAX_ENTRIES", "lots", "batch.max_entries"),
            ("CSW__BATCH__MAX_ENTRIES", "0", "batch.max_entries"),
            ("CSW__AMQP__QUEUE_TYPE", "stream", "queue_type"),
            ("AMQP_URL", "http://x", "amqp.url"),
            ("CXONE_BASE_URL", "nope", "cxone.base_url"),
            ("CXONE_CLIENT_SECRET", "", "cxone.client_secret"),
            ("CSW__HTTP__LISTEN", "everywhere", "http.listen"),
            ("CSW__WORKER__THREADS", "1000", "worker.threads"),
            ("CSW__WORKER__THREADS", "-1", "worker.threads"),
            (
                "CSW__CXONE__DEFAULT_VALIDATION_MODE",
                "SLOPPY",
                "default_validation_mode",
            ),
        ];
        for (k, v, key) in cases {
            let err = Settings::load_from(None, &env(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{k}={v}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn missing_config_file_is_clear() {
        let err = Settings::load_from(Some(Path::new("/nonexistent.toml")), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent.toml"), "{err}");
    }

    #[test]
    fn ca_files_must_exist_and_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let good = dir.path().join("good.pem");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for key in ["CSW__AMQP__CA_FILE", "CSW__CXONE__CA_FILE"] {
            let name = key
                .trim_start_matches("CSW__")
                .replace("__", ".")
                .to_lowercase();
            for path in [
                "/nonexistent/ca.pem".to_owned(),
                empty.display().to_string(),
                bad.display().to_string(),
            ] {
                let err = Settings::load_from(None, &env(&[(key, &path)]))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(&name), "{key}={path}: {err}");
                assert!(!err.contains('\n'), "one line: {err}");
            }
            let s = Settings::load_from(None, &env(&[(key, &good.display().to_string())]));
            assert!(s.is_ok(), "{key}: {:?}", s.err());
        }
        let d = Settings::defaults();
        assert!(d.amqp.ca_file.is_empty() && d.cxone.ca_file.is_empty());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("CXONE_CLIENT_SECRET", "hunter2-client"),
                ("CXONE_WEBHOOK_SECRET", "hunter2-hook"),
                ("AMQP_URL", "amqp://u:hunter2-amqp@h/%2f"),
                ("CSW_FLEET_SECRET", "hunter2-fleet"),
            ]),
        )
        .unwrap();
        assert_eq!(s.fleet.secret(), Some("hunter2-fleet"));
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn partitions_need_a_fleet_secret() {
        let err = Settings::load_from(None, &env(&[("CSW__AMQP__PARTITIONS", "4")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`fleet.secret`") && err.contains("CSW_FLEET_SECRET"),
            "{err}"
        );
        let s = Settings::load_from(
            None,
            &env(&[
                ("CSW__AMQP__PARTITIONS", "4"),
                ("CSW__FLEET__SECRET", "s3cret"),
            ]),
        )
        .unwrap();
        assert_eq!(s.amqp.partitions, 4);
        assert_eq!(
            crate::amqp::members_exchange_name(&s.amqp),
            "wfm.schedule.control.members"
        );
        assert_eq!(
            crate::amqp::webhook_relay_exchange_name(&s.amqp),
            "wfm.schedule.control.webhook-relay"
        );
    }
}
