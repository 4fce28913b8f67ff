//! The CXone WFM API client: token cache, pacing, retries, classification.

use crate::telemetry::metrics as metric;
use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use reqwest::StatusCode;
use serde::Deserialize;
use tokio::time::Instant;
use tracing::Instrument;

use super::pacing::{Pacer, Priority};
use super::retry::{RetryPolicy, retry_delay, within_budget};
use super::token::{AccessToken, TokenCache};
use super::transport::{self, Response};
use super::{CxoneError, Job, JobStatus, Submitted};
use crate::config::{CxoneSettings, RetrySettings};
use crate::domain::ImportPayload;

const IMPORT: &str = "import";
const JOB: &str = "job";

/// Talks to CXone. Cheap to clone (one `Arc`); share one per process so every
/// caller shares the token, the connection pool and the rate-limit pacing.
#[derive(Clone)]
pub struct CxoneClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    tokens: TokenCache,
    policy: RetryPolicy,
    pacer: Pacer,
}

impl fmt::Debug for CxoneClient {
    /// Settings that help diagnose, never a secret or a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CxoneClient")
            .field("base_url", &self.inner.base_url)
            .field("tokens", &self.inner.tokens)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

/// What one attempt came to.
enum Attempt<T> {
    Done(T),
    /// The API refused the token: refresh it and try again (once per call).
    Unauthorized(Arc<AccessToken>),
    Failed(CxoneError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImportAccepted {
    job_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobBody {
    #[serde(default)]
    job_id: Option<String>,
    status: JobStatus,
    #[serde(default)]
    errors: Option<Vec<serde_json::Value>>,
}

impl CxoneClient {
    /// A client with a reqwest connection pool (rustls) built from the
    /// settings: `cxone.request_timeout_ms` bounds each HTTP exchange,
    /// `cxone.connect_timeout_ms` each connect; `https://` trusts the
    /// platform's store plus the certificates of `cxone.ca_file` when set.
    pub fn new(cfg: &CxoneSettings, retry: &RetrySettings) -> Result<Self, CxoneError> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("cxone-schedule-worker/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(90));
        // 0 (only reachable when settings are built in code) means "no
        // timeout"; config validation requires positive values.
        if !cfg.request_timeout.is_zero() {
            b = b.timeout(cfg.request_timeout);
        }
        if !cfg.connect_timeout.is_zero() {
            b = b.connect_timeout(cfg.connect_timeout);
        }
        b = crate::tls::add_ca_file(b, &cfg.ca_file).map_err(|e| CxoneError::Permanent {
            endpoint: "client",
            status: None,
            message: format!("cxone.ca_file: {e}"),
            body: None,
        })?;
        let http = b.build().map_err(|e| CxoneError::Permanent {
            endpoint: "client",
            status: None,
            message: format!("cannot build the HTTP client: {e}"),
            body: None,
        })?;
        Self::with_http_client(cfg, retry, http)
    }

    /// Like [`CxoneClient::new`] with a caller-built `reqwest::Client` (its
    /// timeouts, proxy and TLS settings win). Tests use it to run on tokio's
    /// paused clock with a client that arms no timers.
    pub fn with_http_client(
        cfg: &CxoneSettings,
        retry: &RetrySettings,
        http: reqwest::Client,
    ) -> Result<Self, CxoneError> {
        for (key, url) in [
            ("cxone.base_url", &cfg.base_url),
            ("cxone.auth_url", &cfg.auth_url),
        ] {
            let ok = reqwest::Url::parse(url)
                .map(|u| matches!(u.scheme(), "http" | "https"))
                .unwrap_or(false);
            if !ok {
                return Err(CxoneError::Permanent {
                    endpoint: "client",
                    status: None,
                    message: format!(
                        "{key} = {url:?} is not an http(s) URL; set it to the CXone API address"
                    ),
                    body: None,
                });
            }
        }
        Ok(CxoneClient {
            inner: Arc::new(Inner {
                tokens: TokenCache::new(http.clone(), cfg),
                http,
                base_url: cfg.base_url.trim_end_matches('/').to_owned(),
                policy: RetryPolicy::from_settings(retry),
                pacer: Pacer::new(cfg.max_requests_per_min),
            }),
        })
    }

    /// POSTs the import, retrying transient failures; returns the job to follow.
    ///
    /// The body is serialised once and the same bytes are re-sent on every
    /// attempt, with the same `Idempotency-Key`, so a retry after a lost
    /// response cannot create a second job.
    pub async fn submit_import(
        &self,
        payload: &ImportPayload,
        idempotency_key: &str,
        traceparent: Option<&str>,
    ) -> Result<Submitted, CxoneError> {
        let body: Bytes = serde_json::to_vec(payload)
            .map_err(|e| CxoneError::Permanent {
                endpoint: IMPORT,
                status: None,
                message: format!("cannot serialise the import payload: {e}"),
                body: None,
            })?
            .into();
        self.submit_import_body(
            body,
            &payload.target_calendar_id,
            payload.schedule_entries.len(),
            idempotency_key,
            traceparent,
        )
        .await
    }

    /// Like [`CxoneClient::submit_import`] with the payload already
    /// serialised (the worker builds it as changes join a batch).
    pub async fn submit_import_body(
        &self,
        body: Bytes,
        calendar_id: &str,
        entries: usize,
        idempotency_key: &str,
        traceparent: Option<&str>,
    ) -> Result<Submitted, CxoneError> {
        let span = tracing::info_span!(
            "cxone.submit_import",
            calendar_id,
            entries,
            idempotency_key,
            job_id = tracing::field::Empty,
            attempts = tracing::field::Empty,
        );
        async {
            let url = format!("{}/api/v2/wfm/schedules/import", self.inner.base_url);
            let (accepted, attempts) = self
                .execute(
                    IMPORT,
                    |token| {
                        let mut req = self
                            .inner
                            .http
                            .post(&url)
                            .bearer_auth(token)
                            .header(reqwest::header::CONTENT_TYPE, "application/json")
                            .header("Idempotency-Key", idempotency_key)
                            // Bytes clones share the buffer: same bytes, no re-serialising.
                            .body(body.clone());
                        if let Some(tp) = traceparent {
                            req = req.header("traceparent", tp);
                        }
                        req
                    },
                    |resp| {
                        if resp.status == StatusCode::ACCEPTED || resp.status.is_success() {
                            let a: ImportAccepted = serde_json::from_slice(&resp.body)
                                .map_err(|e| transport::malformed(IMPORT, resp, &e))?;
                            if a.job_id.is_empty() {
                                return Err(transport::malformed(IMPORT, resp, &"empty jobId"));
                            }
                            return Ok(a.job_id);
                        }
                        Err(refused(IMPORT, resp, None))
                    },
                )
                .await?;
            let span = tracing::Span::current();
            span.record("job_id", accepted.as_str());
            span.record("attempts", attempts);
            tracing::debug!("import accepted");
            Ok(Submitted {
                job_id: accepted,
                attempts,
            })
        }
        .instrument(span)
        .await
    }

    /// GETs the job's state, retrying transient failures.
    pub async fn get_job(
        &self,
        job_id: &str,
        traceparent: Option<&str>,
    ) -> Result<Job, CxoneError> {
        let span = tracing::debug_span!("cxone.get_job", job_id, status = tracing::field::Empty);
        async {
            let url = format!(
                "{}/api/v2/wfm/async-jobs/{}",
                self.inner.base_url,
                encode_path_segment(job_id)
            );
            let (job, _) = self
                .execute(
                    JOB,
                    |token| {
                        let mut req = self.inner.http.get(&url).bearer_auth(token);
                        if let Some(tp) = traceparent {
                            req = req.header("traceparent", tp);
                        }
                        req
                    },
                    |resp| {
                        if resp.status.is_success() {
                            let b: JobBody = serde_json::from_slice(&resp.body)
                                .map_err(|e| transport::malformed(JOB, resp, &e))?;
                            return Ok(Job {
                                job_id: b.job_id.unwrap_or_else(|| job_id.to_owned()),
                                status: b.status,
                                errors: b.errors.unwrap_or_default(),
                            });
                        }
                        Err(refused(JOB, resp, Some(job_id)))
                    },
                )
                .await?;
            tracing::Span::current().record("status", tracing::field::debug(job.status));
            Ok(job)
        }
        .instrument(span)
        .await
    }

    /// Obtains (or reuses) a token: what `/readyz` asks. One attempt, no
    /// retries: readiness should answer promptly and be asked again.
    pub async fn check_token(&self) -> Result<(), CxoneError> {
        self.inner.tokens.get().await.map(|_| ())
    }

    /// Until when every request of this client is held off after a 429 with
    /// `Retry-After` (`None` when no hold is in force).
    pub fn rate_limited_until(&self) -> Option<Instant> {
        self.inner.pacer.held_until()
    }

    /// The retry loop shared by every endpoint: token, pacing, one HTTP
    /// attempt, classification; transient failures are retried with full
    /// jitter floored by `Retry-After`, within `retry.max_elapsed_s`.
    /// Returns the parsed value and the number of HTTP attempts.
    async fn execute<T>(
        &self,
        endpoint: &'static str,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
        parse: impl Fn(&Response) -> Result<T, CxoneError>,
    ) -> Result<(T, u32), CxoneError> {
        let inner = &*self.inner;
        let started = Instant::now();
        let mut backoff = inner.policy.backoff();
        let mut attempts: u32 = 0;
        let mut reauthenticated = false;
        loop {
            let step = self.attempt(endpoint, &build, &parse, &mut attempts).await;
            let err = match step {
                Attempt::Done(v) => return Ok((v, attempts)),
                Attempt::Unauthorized(token) if !reauthenticated => {
                    // The token was revoked or expired early: one refresh,
                    // one immediate retry; a second 401 is permanent.
                    reauthenticated = true;
                    inner.tokens.invalidate(&token);
                    tracing::info!(
                        endpoint,
                        "CXone refused the access token; refreshing it once"
                    );
                    continue;
                }
                Attempt::Unauthorized(_) => {
                    return Err(CxoneError::Permanent {
                        endpoint,
                        status: Some(401),
                        message: "CXone refused a freshly obtained access token; check that the application's credentials are allowed to use the WFM API".into(),
                        body: None,
                    });
                }
                Attempt::Failed(e) if e.is_transient() => e,
                Attempt::Failed(e) => return Err(e),
            };
            let ceiling = backoff.next().unwrap_or(inner.policy.cap);
            let delay = retry_delay(ceiling, err.retry_after());
            let elapsed = started.elapsed();
            if !within_budget(elapsed, delay, inner.policy.max_elapsed) {
                tracing::warn!(endpoint, attempts, error = %err, "giving up on CXone: retry budget spent");
                return Err(CxoneError::RetriesExhausted {
                    endpoint,
                    attempts,
                    elapsed,
                    last: Box::new(err),
                });
            }
            metrics::counter!(metric::CXONE_RETRIES_TOTAL, "endpoint" => endpoint).increment(1);
            tracing::warn!(
                endpoint,
                attempts,
                delay_ms = delay.as_millis() as u64,
                error = %err,
                "transient CXone failure; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One try: a token, a place in the pace, one HTTP exchange (counted in
    /// `attempts`), and what it came to. A 429's `Retry-After` holds every
    /// request of this client off.
    async fn attempt<T>(
        &self,
        endpoint: &'static str,
        build: &impl Fn(&str) -> reqwest::RequestBuilder,
        parse: &impl Fn(&Response) -> Result<T, CxoneError>,
        attempts: &mut u32,
    ) -> Attempt<T> {
        let inner = &*self.inner;
        let token = match inner.tokens.get().await {
            Ok(token) => token,
            Err(e) => return Attempt::Failed(e),
        };
        // Polls give way to submissions under a known rate limit.
        let priority = if endpoint == JOB {
            Priority::Poll
        } else {
            Priority::Submit
        };
        inner.pacer.admit(priority).await;
        *attempts += 1;
        let resp = match transport::send(endpoint, build(token.bearer())).await {
            Ok(resp) => resp,
            Err(e) => return Attempt::Failed(e),
        };
        if resp.status == StatusCode::UNAUTHORIZED {
            return Attempt::Unauthorized(token);
        }
        if resp.status == StatusCode::TOO_MANY_REQUESTS
            && let Some(ra) = resp.retry_after()
        {
            inner.pacer.hold_off(ra);
        }
        match parse(&resp) {
            Ok(v) => Attempt::Done(v),
            Err(e) => Attempt::Failed(e),
        }
    }
}

/// A non-2xx answer other than 401, with a message that says what to check.
fn refused(endpoint: &'static str, resp: &Response, job_id: Option<&str>) -> CxoneError {
    let what = match (endpoint, resp.status.as_u16()) {
        (IMPORT, 400) => "CXone rejected the import as invalid".to_owned(),
        (IMPORT, 403) => {
            "the token lacks scope wfm:schedules:write; add it to cxone.scope and to the application's permissions".to_owned()
        }
        (JOB, 403) => {
            "the token lacks scope wfm:async-jobs:read; add it to cxone.scope and to the application's permissions".to_owned()
        }
        (JOB, 404) => format!(
            "CXone does not know job {}; it may have expired",
            job_id.unwrap_or("?")
        ),
        (_, 404) => "endpoint not found; check cxone.base_url".to_owned(),
        (IMPORT, 422) => {
            "CXone refused the request (the Idempotency-Key was already used with another body)"
                .to_owned()
        }
        (_, s) => format!("CXone refused the request with HTTP {s}"),
    };
    transport::status_error(endpoint, resp, &what, &[])
}

/// Job ids come from the server; keep them from escaping the path segment.
fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
