//! What types alone cannot say: URL schemes, names, positive sizes and
//! times, maxima above minima, credentials, CA files, the log filter.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::{AmqpSettings, ConfigError, CxoneSettings, GrantType, Settings};

impl Settings {
    /// Checks what types alone cannot say, in a fixed order so that the
    /// first problem reported is stable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.amqp.validate()?;
        if self.amqp.partitions > 1 && self.fleet.secret().is_none() {
            return Err(ConfigError::invalid(
                "fleet.secret",
                "required when amqp.partitions > 1: the replicas authenticate their membership \
                 heartbeats with it; set the same random value on every replica \
                 (env CSW_FLEET_SECRET or CSW__FLEET__SECRET)",
            ));
        }
        if self.worker.threads > MAX_THREADS {
            return Err(ConfigError::invalid(
                "worker.threads",
                format!("expected 0 (one per CPU core) to {MAX_THREADS}"),
            ));
        }
        self.validate_batching()?;
        self.validate_limits()?;
        self.cxone.validate()?;
        check_ca_file("amqp.ca_file", &self.amqp.ca_file)?;
        check_ca_file("cxone.ca_file", &self.cxone.ca_file)?;
        positive_duration("cxone.request_timeout_ms", self.cxone.request_timeout)?;
        positive_duration("cxone.connect_timeout_ms", self.cxone.connect_timeout)?;
        positive(
            "http.webhook_max_body_bytes",
            self.http.webhook_max_body_bytes as u64,
        )?;
        if tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level).is_err() {
            return Err(ConfigError::invalid(
                "telemetry.log_level",
                "expected a tracing filter such as \"info\" or \"cxone_schedule_worker=debug\"",
            ));
        }
        Ok(())
    }

    /// `batch`, `imports` and `retry`: sizes and times that must be positive
    /// and maxima that must not be below their minima.
    fn validate_batching(&self) -> Result<(), ConfigError> {
        positive("batch.max_entries", self.batch.max_entries as u64)?;
        positive_duration("batch.max_wait_ms", self.batch.max_wait)?;
        positive("imports.max_concurrent", self.imports.max_concurrent as u64)?;
        positive_duration("imports.poll_initial_ms", self.imports.poll_initial)?;
        if self.imports.poll_max < self.imports.poll_initial {
            return Err(ConfigError::invalid(
                "imports.poll_max_ms",
                "expected at least imports.poll_initial_ms",
            ));
        }
        positive_duration("imports.job_timeout_s", self.imports.job_timeout)?;
        positive_duration("retry.base_ms", self.retry.base)?;
        if self.retry.cap < self.retry.base {
            return Err(ConfigError::invalid(
                "retry.cap_ms",
                "expected at least retry.base_ms",
            ));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        positive(
            "limits.max_message_bytes",
            self.limits.max_message_bytes as u64,
        )?;
        positive(
            "limits.max_entries_per_change",
            self.limits.max_entries_per_change as u64,
        )?;
        positive(
            "limits.max_shift_minutes",
            self.limits.max_shift_minutes.max(0) as u64,
        )
    }
}

impl AmqpSettings {
    /// The URL's scheme, the names' lengths and the reconnect backoff.
    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            return Err(ConfigError::invalid(
                "amqp.url",
                "expected an amqp:// or amqps:// URL (env AMQP_URL or CSW__AMQP__URL)",
            ));
        }
        for (key, v) in [
            ("amqp.inbound_exchange", &self.inbound_exchange),
            ("amqp.inbound_queue", &self.inbound_queue),
            ("amqp.dead_letter_exchange", &self.dead_letter_exchange),
            ("amqp.dead_letter_queue", &self.dead_letter_queue),
            ("amqp.events_exchange", &self.events_exchange),
            ("amqp.unrouted_events_queue", &self.unrouted_events_queue),
            (
                "amqp.control_exchange_prefix",
                &self.control_exchange_prefix,
            ),
        ] {
            if v.is_empty() || v.len() > 255 {
                return Err(ConfigError::invalid(
                    key,
                    "expected a name of 1 to 255 bytes",
                ));
            }
        }
        positive("amqp.partitions", self.partitions as u64)?;
        positive_duration("amqp.reconnect_initial_ms", self.reconnect_initial)?;
        if self.reconnect_max < self.reconnect_initial {
            return Err(ConfigError::invalid(
                "amqp.reconnect_max_ms",
                "expected at least amqp.reconnect_initial_ms",
            ));
        }
        Ok(())
    }
}

impl CxoneSettings {
    /// The URLs and the credentials the grant type needs.
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("cxone.base_url", &self.base_url),
            ("cxone.auth_url", &self.auth_url),
        ] {
            if !(v.starts_with("http://") || v.starts_with("https://"))
                || reqwest::Url::parse(v).is_err()
            {
                return Err(ConfigError::invalid(
                    key,
                    format!("expected an http:// or https:// URL, got {v:?}"),
                ));
            }
        }
        if self.client_id.is_empty() {
            return Err(ConfigError::invalid(
                "cxone.client_id",
                "missing; set CXONE_CLIENT_ID or CSW__CXONE__CLIENT_ID",
            ));
        }
        if self.client_secret.expose_secret().is_empty() {
            return Err(ConfigError::invalid(
                "cxone.client_secret",
                "missing; set CXONE_CLIENT_SECRET or CSW__CXONE__CLIENT_SECRET",
            ));
        }
        if self.grant_type == GrantType::Password
            && (self.access_key_id.is_empty() || self.access_key_secret.expose_secret().is_empty())
        {
            return Err(ConfigError::invalid(
                "cxone.access_key_id",
                "grant_type = \"password\" needs cxone.access_key_id and cxone.access_key_secret",
            ));
        }
        Ok(())
    }
}

/// An empty path means "none"; otherwise the file must hold at least one
/// PEM certificate.
fn check_ca_file(key: &str, path: &str) -> Result<(), ConfigError> {
    if path.is_empty() {
        return Ok(());
    }
    crate::tls::load_ca_file(path)
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(key, e.to_string()))
}

/// Most runtime threads `worker.threads` may ask for: far more than the
/// work (a consumer, imports waiting on HTTP) can use, and a typo guard.
const MAX_THREADS: u16 = 256;

fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::invalid(key, "expected a positive number"));
    }
    Ok(())
}

fn positive_duration(key: &str, v: Duration) -> Result<(), ConfigError> {
    if v.is_zero() {
        return Err(ConfigError::invalid(key, "expected a positive number"));
    }
    Ok(())
}
