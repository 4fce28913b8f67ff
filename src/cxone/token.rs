//! The OAuth token cache: one token shared by every caller of a client.
//!
//! - Single flight: concurrent callers that need a token wait on one refresh
//!   (a `tokio::sync::Mutex` around the fetch, with a double check after it
//!   is acquired). If that refresh fails, the callers that were waiting for it
//!   get its error instead of each trying again in turn.
//! - Refresh ahead: a token is renewed `token_refresh_margin_s` before it
//!   expires, but the margin is bounded to a quarter of the token's lifetime
//!   so a short TTL (the simulator's 5 s) still gives a usable token. While
//!   the old token is still valid, only one caller refreshes; the others keep
//!   using the old one, and a failed early refresh is not an error.
//! - Invalidation: a 401 from the API invalidates exactly the token that was
//!   refused (a newer one is kept), and the caller refreshes once.
//!
//! Time is `tokio::time::Instant`, so tests can drive expiry with the paused clock.

use crate::telemetry::metrics as metric;
use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::{Mutex, RwLock};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;

use super::CxoneError;
use super::transport::{self, Response};
use crate::config::{CxoneSettings, GrantType};

const ENDPOINT: &str = "token";
/// When the server omits `expires_in`: short enough to be safe.
const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// A bearer token. Debug never shows the value.
pub struct AccessToken {
    value: SecretString,
    pub refresh_at: Instant,
    pub expires_at: Instant,
}

impl AccessToken {
    pub fn bearer(&self) -> &str {
        self.value.expose_secret()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("value", &"***")
            .field("refresh_at", &self.refresh_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What the token request sends.
struct Credentials {
    grant: GrantType,
    client_id: String,
    client_secret: SecretString,
    access_key_id: String,
    access_key_secret: SecretString,
    scope: String,
}

pub struct TokenCache {
    http: reqwest::Client,
    url: String,
    creds: Credentials,
    margin: Duration,
    current: RwLock<Option<Arc<AccessToken>>>,
    refresh: tokio::sync::Mutex<()>,
    /// Fetches finished (success or failure); lets waiters tell whether the
    /// fetch they waited for just failed.
    fetches: AtomicU64,
    last_error: Mutex<Option<CxoneError>>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("url", &self.url)
            .field("grant", &self.creds.grant)
            .field("client_id", &self.creds.client_id)
            .field("scope", &self.creds.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    token_type: Option<String>,
}

impl TokenCache {
    pub fn new(http: reqwest::Client, cfg: &CxoneSettings) -> Self {
        TokenCache {
            http,
            url: format!("{}/oauth/token", cfg.auth_url.trim_end_matches('/')),
            creds: Credentials {
                grant: cfg.grant_type,
                client_id: cfg.client_id.clone(),
                client_secret: cfg.client_secret.clone(),
                access_key_id: cfg.access_key_id.clone(),
                access_key_secret: cfg.access_key_secret.clone(),
                scope: cfg.scope.clone(),
            },
            margin: cfg.token_refresh_margin,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// A token to use now: the cached one, or a fresh one (single flight).
    pub async fn get(&self) -> Result<Arc<AccessToken>, CxoneError> {
        let cached = self.current.read().clone();
        if let Some(t) = cached {
            let now = Instant::now();
            if now < t.refresh_at {
                return Ok(t);
            }
            if now < t.expires_at {
                // Early refresh: whoever gets the lock does it; nobody waits.
                let Ok(_guard) = self.refresh.try_lock() else {
                    return Ok(t);
                };
                if let Some(fresh) = self.fresh_cached() {
                    return Ok(fresh);
                }
                return match self.fetch_and_store().await {
                    Ok(n) => Ok(n),
                    Err(e) => {
                        tracing::warn!(error = %e, "early token refresh failed; the current token is still valid");
                        Ok(t)
                    }
                };
            }
        }
        let seen = self.fetches.load(Ordering::Acquire);
        let _guard = self.refresh.lock().await;
        if let Some(fresh) = self.fresh_cached() {
            return Ok(fresh);
        }
        if self.fetches.load(Ordering::Acquire) != seen {
            // The refresh we queued behind just failed: share its outcome
            // rather than hammering a failing token endpoint once per caller.
            if let Some(e) = self.last_error.lock().clone() {
                return Err(e);
            }
        }
        self.fetch_and_store().await
    }

    fn fresh_cached(&self) -> Option<Arc<AccessToken>> {
        self.current
            .read()
            .as_ref()
            .filter(|t| Instant::now() < t.refresh_at)
            .cloned()
    }

    /// Drops `refused` if it is still the cached token (a newer one is kept,
    /// so N concurrent 401s cause one refresh, not N).
    pub fn invalidate(&self, refused: &Arc<AccessToken>) {
        let mut cur = self.current.write();
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, refused)) {
            *cur = None;
        }
    }

    /// Caller holds `self.refresh`.
    async fn fetch_and_store(&self) -> Result<Arc<AccessToken>, CxoneError> {
        let result = self.fetch().await.map(Arc::new);
        match &result {
            Ok(t) => {
                *self.current.write() = Some(t.clone());
                *self.last_error.lock() = None;
            }
            Err(e) => *self.last_error.lock() = Some(e.clone()),
        }
        self.fetches.fetch_add(1, Ordering::Release);
        result
    }

    /// One token request.
    ///
    /// - `client_credentials`: form `grant_type, client_id, client_secret,
    ///   scope` (docs/contract.md §6.1).
    /// - `password` (CXone back-end applications): form `grant_type=password,
    ///   username` = access key id, `password` = access key secret, `scope`;
    ///   the application's client id and secret go in HTTP Basic auth, as
    ///   RFC 6749 section 2.3.1 recommends and CXone's back-end app docs show.
    async fn fetch(&self) -> Result<AccessToken, CxoneError> {
        let c = &self.creds;
        let requested_at = Instant::now();
        let req = self.http.post(&self.url);
        let req = match c.grant {
            GrantType::ClientCredentials => req.form(&[
                ("grant_type", "client_credentials"),
                ("client_id", c.client_id.as_str()),
                ("client_secret", c.client_secret.expose_secret()),
                ("scope", c.scope.as_str()),
            ]),
            GrantType::Password => req
                .basic_auth(&c.client_id, Some(c.client_secret.expose_secret()))
                .form(&[
                    ("grant_type", "password"),
                    ("username", c.access_key_id.as_str()),
                    ("password", c.access_key_secret.expose_secret()),
                    ("scope", c.scope.as_str()),
                ]),
        };
        metrics::counter!(metric::TOKEN_REFRESHES_TOTAL).increment(1);
        let resp = transport::send(ENDPOINT, req).await?;
        if !resp.status.is_success() {
            return Err(self.refused(&resp));
        }
        let parsed: TokenResponse = serde_json::from_slice(&resp.body)
            .map_err(|e| transport::malformed(ENDPOINT, &resp, &e))?;
        if parsed.access_token.is_empty() {
            return Err(transport::malformed(ENDPOINT, &resp, &"empty access_token"));
        }
        if let Some(tt) = &parsed.token_type
            && !tt.eq_ignore_ascii_case("bearer")
        {
            tracing::warn!(token_type = %tt, "token endpoint returned a non-Bearer token type; using it as Bearer");
        }
        let ttl = parsed
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TTL)
            .max(Duration::from_secs(1));
        let margin = self.margin.min(ttl / 4);
        // Timed from before the request, so network latency never makes us
        // believe a token lives longer than it does.
        let expires_at = requested_at + ttl;
        tracing::debug!(ttl_s = ttl.as_secs(), "obtained a CXone access token");
        Ok(AccessToken {
            value: SecretString::from(parsed.access_token),
            refresh_at: expires_at - margin,
            expires_at,
        })
    }

    fn refused(&self, resp: &Response) -> CxoneError {
        let secrets = [
            self.creds.client_secret.expose_secret(),
            self.creds.access_key_secret.expose_secret(),
        ];
        let what = match (resp.status.as_u16(), self.creds.grant) {
            (400 | 401, GrantType::ClientCredentials) => {
                "token request refused; check cxone.client_id, cxone.client_secret and cxone.scope"
            }
            (400 | 401, GrantType::Password) => {
                "token request refused; check cxone.client_id, cxone.client_secret, cxone.access_key_id, cxone.access_key_secret and cxone.scope"
            }
            (404, _) => "token endpoint not found; check cxone.auth_url",
            _ => "token request refused",
        };
        transport::status_error(ENDPOINT, resp, what, &secrets)
    }
}
