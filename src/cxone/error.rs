use std::time::Duration;

/// What went wrong talking to CXone, classified for retries.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CxoneError {
    /// Worth retrying: connect/timeout, 409 calendar busy, 429, 500, 502, 503, 504.
    #[error("CXone {endpoint}: transient failure{}: {message}", status_suffix(*.status))]
    Transient {
        endpoint: &'static str,
        status: Option<u16>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Not worth retrying: other 4xx, malformed responses, bad configuration.
    #[error("CXone {endpoint}: request refused{}: {message}", status_suffix(*.status))]
    Permanent {
        endpoint: &'static str,
        status: Option<u16>,
        message: String,
        /// The server's error body, if any (never contains our secrets).
        body: Option<String>,
    },
    /// Transient failures went on past `retry.max_elapsed_s`.
    #[error(
        "CXone {endpoint}: gave up after {attempts} attempts in {elapsed:?}; last error: {last}"
    )]
    RetriesExhausted {
        endpoint: &'static str,
        attempts: u32,
        elapsed: Duration,
        last: Box<CxoneError>,
    },
}

fn status_suffix(status: Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

impl CxoneError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CxoneError::Transient { .. })
    }

    /// How long the server asked us to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CxoneError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            CxoneError::Transient { status, .. } | CxoneError::Permanent { status, .. } => *status,
            CxoneError::RetriesExhausted { last, .. } => last.http_status(),
        }
    }

    /// The `error.code` of a `schedule.import.failed` event.
    pub fn code(&self) -> &'static str {
        match self {
            CxoneError::RetriesExhausted { .. } => "RETRIES_EXHAUSTED",
            CxoneError::Transient { .. } => "CXONE_UNAVAILABLE",
            // Whatever the token endpoint said (400 invalid_grant, 401
            // invalid_client, ...), the problem is our credentials.
            CxoneError::Permanent {
                endpoint: "token",
                status: Some(_),
                ..
            } => "CXONE_UNAUTHORIZED",
            CxoneError::Permanent {
                status: Some(400), ..
            } => "CXONE_VALIDATION_FAILED",
            CxoneError::Permanent {
                status: Some(401), ..
            } => "CXONE_UNAUTHORIZED",
            CxoneError::Permanent {
                status: Some(403), ..
            } => "CXONE_FORBIDDEN",
            CxoneError::Permanent { .. } => "CXONE_REJECTED",
        }
    }
}
