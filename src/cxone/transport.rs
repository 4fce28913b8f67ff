//! One HTTP exchange with CXone: send, time, count, and classify the outcome.
//! No retries here; [`super::client`] decides what to do with the result.

use crate::telemetry::metrics as metric;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::{StatusCode, header::HeaderMap};

use super::CxoneError;
use super::retry::parse_retry_after;

/// Server error bodies are kept for diagnosis, but bounded: a proxy's HTML
/// error page should not bloat events and dead-letter headers.
pub const MAX_ERROR_BODY: usize = 2048;

/// A response that arrived, whatever its status.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// `Retry-After` as a duration from now, if present and parseable.
    pub fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    }
}

/// Sends one request. Transport failures become errors (connect and timeout
/// are transient); every HTTP status is returned for the caller to classify.
pub async fn send(
    endpoint: &'static str,
    req: reqwest::RequestBuilder,
) -> Result<Response, CxoneError> {
    let started = tokio::time::Instant::now();
    let result = async {
        let resp = req.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        Ok::<_, reqwest::Error>(Response {
            status,
            headers,
            body,
        })
    }
    .await;
    metrics::histogram!(metric::CXONE_REQUEST_DURATION_SECONDS, "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(r) => {
            metrics::counter!(
                metric::CXONE_REQUESTS_TOTAL,
                "endpoint" => endpoint,
                "status" => status_label(r.status),
            )
            .increment(1);
            if r.status == StatusCode::TOO_MANY_REQUESTS {
                metrics::counter!(metric::CXONE_RATE_LIMITED_TOTAL).increment(1);
            }
            Ok(r)
        }
        Err(e) => {
            let label = if e.is_timeout() { "timeout" } else { "error" };
            metrics::counter!(
                metric::CXONE_REQUESTS_TOTAL,
                "endpoint" => endpoint,
                "status" => label,
            )
            .increment(1);
            Err(transport_error(endpoint, &e))
        }
    }
}

/// Static labels for the common statuses keep the metrics path allocation-free.
fn status_label(s: StatusCode) -> &'static str {
    match s.as_u16() {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        409 => "409",
        422 => "422",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

fn transport_error(endpoint: &'static str, e: &reqwest::Error) -> CxoneError {
    // The URL is not secret (tokens travel in headers), and it tells the
    // operator which host was unreachable.
    let detail = error_chain(e);
    if e.is_builder() {
        return CxoneError::Permanent {
            endpoint,
            status: None,
            message: format!(
                "cannot build the request ({detail}); check cxone.base_url / cxone.auth_url"
            ),
            body: None,
        };
    }
    let message = if e.is_timeout() {
        format!(
            "timed out ({detail}); CXone is slow or unreachable, raise cxone.request_timeout_ms if it persists"
        )
    } else if e.is_connect() {
        format!("cannot connect ({detail}); check cxone.base_url / cxone.auth_url and the network")
    } else {
        format!("request failed ({detail})")
    };
    CxoneError::Transient {
        endpoint,
        status: None,
        message,
        retry_after: None,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

/// Whether docs/contract.md §6.4 calls this status transient.
pub fn is_transient_status(s: StatusCode) -> bool {
    matches!(s.as_u16(), 409 | 429 | 500 | 502 | 503 | 504)
}

/// A non-success status as an error: transient or permanent, with the
/// server's (truncated, scrubbed) body kept.
pub fn status_error(
    endpoint: &'static str,
    resp: &Response,
    what: &str,
    secrets: &[&str],
) -> CxoneError {
    let status = resp.status.as_u16();
    let body = body_excerpt(&resp.body, secrets);
    if is_transient_status(resp.status) {
        let hint = match status {
            409 => "the calendar is busy with another import; will retry",
            429 => "rate limited; will retry after the server's Retry-After",
            _ => "CXone is unavailable; will retry",
        };
        CxoneError::Transient {
            endpoint,
            status: Some(status),
            message: if body.is_empty() {
                hint.to_owned()
            } else {
                format!("{hint}; server said: {body}")
            },
            retry_after: resp.retry_after(),
        }
    } else {
        CxoneError::Permanent {
            endpoint,
            status: Some(status),
            message: if body.is_empty() {
                what.to_owned()
            } else {
                format!("{what}; server said: {body}")
            },
            body: (!body.is_empty()).then_some(body),
        }
    }
}

/// A response that should have been JSON of a known shape, and was not.
pub fn malformed(
    endpoint: &'static str,
    resp: &Response,
    err: &dyn std::fmt::Display,
) -> CxoneError {
    let body = body_excerpt(&resp.body, &[]);
    CxoneError::Permanent {
        endpoint,
        status: Some(resp.status.as_u16()),
        message: format!(
            "malformed response ({err}); the CXone API may have changed, check cxone.base_url points at the WFM API"
        ),
        body: (!body.is_empty()).then_some(body),
    }
}

/// The body as text, at most [`MAX_ERROR_BODY`] bytes (cut on a character
/// boundary), with any of our secrets replaced by `***` in case a server or
/// proxy echoes the request back.
pub fn body_excerpt(body: &[u8], secrets: &[&str]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut text = text.trim().to_owned();
    for s in secrets {
        if s.len() >= 4 && text.contains(s) {
            text = text.replace(s, "***");
        }
    }
    if text.len() > MAX_ERROR_BODY {
        let mut cut = MAX_ERROR_BODY;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("…(truncated)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_truncates_on_char_boundary_and_scrubs() {
        let long = "é".repeat(3000);
        let e = body_excerpt(long.as_bytes(), &[]);
        assert!(e.len() <= MAX_ERROR_BODY + "…(truncated)".len());
        assert!(e.ends_with("(truncated)"));
        let e = body_excerpt(b"{\"echo\":\"client_secret=hunter22\"}", &["hunter22"]);
        assert!(!e.contains("hunter22"), "{e}");
    }

    #[test]
    fn transient_statuses_follow_the_contract() {
        for s in [409, 429, 500, 502, 503, 504] {
            assert!(is_transient_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 405, 413, 422, 501] {
            assert!(
                !is_transient_status(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }
}
