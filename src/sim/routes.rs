//! The simulator's HTTP surface. Every refusal is a JSON
//! `{"error": "...", "message": "..."}` with the status a real API would
//! give; no input makes a handler panic.

// Handlers return `Result<_, Response>`: the error *is* the reply, built once
// per refused request; boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use base64::Engine;
use serde_json::json;

use super::state::{
    ALL_SCOPES, Admission, SCOPE_JOBS_READ, SCOPE_SCHEDULES_WRITE, SimState, body_hash, bump,
    scope_bit,
};
use super::{Faults, FaultsPatch};
use crate::domain::{Limits, validate_import};

/// Larger than any batch the worker sends; beyond it, 413.
const MAX_BODY: usize = 32 * 1024 * 1024;

type St = State<Arc<SimState>>;

pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/api/v2/wfm/schedules/import", post(import))
        .route("/api/v2/wfm/async-jobs/{job_id}", get(job))
        .route("/sim/calendars/{calendar_id}/shifts", get(shifts))
        .route("/sim/stats", get(stats))
        .route("/sim/reset", post(reset))
        .route("/sim/faults", put(set_faults).get(get_faults))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

fn error(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": error, "message": message.into()})),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/contract.md §13 for the simulator's routes",
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that HTTP method",
    )
}

/// The body, bounded; 413 beyond [`MAX_BODY`].
async fn read_body(body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body over {MAX_BODY} bytes; send smaller imports"),
        )
    })
}

async fn latency(st: &SimState) {
    let ms = st.fault(|f| f.latency_ms);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

// ---- OAuth ----

async fn token(State(st): St, headers: HeaderMap, body: Body) -> Response {
    latency(&st).await;
    bump(&st.counters.token_requests);
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let resp = token_inner(&st, &headers, &body);
    if resp.status() == StatusCode::UNAUTHORIZED {
        bump(&st.counters.responses401);
    }
    resp
}

fn token_inner(st: &SimState, headers: &HeaderMap, body: &[u8]) -> Response {
    let form: Vec<(String, String)> = match serde_urlencoded::from_bytes(body) {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("expected an application/x-www-form-urlencoded body: {e}"),
            );
        }
    };
    let f = st.faults();
    // Client authentication: HTTP Basic, or client_id/client_secret in the form.
    let (client_id, client_secret) = match basic_auth(headers) {
        Some(pair) => pair,
        None => (
            form_field(&form, "client_id")
                .unwrap_or_default()
                .to_owned(),
            form_field(&form, "client_secret")
                .unwrap_or_default()
                .to_owned(),
        ),
    };
    if client_id != f.client_id || client_secret != f.client_secret {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong client secret",
        );
    }
    let scopes = match check_grant(&form, &f).and_then(|()| requested_scopes(&form)) {
        Ok(scopes) => scopes,
        Err(refusal) => return refusal,
    };
    let granted: Vec<&str> = ALL_SCOPES
        .iter()
        .filter(|s| scope_bit(s).is_some_and(|b| scopes & b != 0))
        .copied()
        .collect();
    let ttl = f.token_ttl_s;
    let value = st.issue_token(&client_id, scopes, Duration::from_secs(ttl));
    let mut resp = Json(json!({
        "access_token": value,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": granted.join(" "),
    }))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn form_field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `grant_type`: client credentials, or a password grant with the access
/// key as username and password.
fn check_grant(form: &[(String, String)], f: &Faults) -> Result<(), Response> {
    match form_field(form, "grant_type") {
        Some("client_credentials") => Ok(()),
        Some("password") => {
            if form_field(form, "username") != Some(f.access_key_id.as_str())
                || form_field(form, "password") != Some(f.access_key_secret.as_str())
            {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "wrong access key id or access key secret (username/password)",
                ));
            }
            Ok(())
        }
        Some(other) => Err(error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("grant_type {other:?} is not supported; use client_credentials or password"),
        )),
        None => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type is missing",
        )),
    }
}

/// The scope bits asked for: every scope when none is named, the known
/// ones otherwise; naming only unknown scopes is refused.
fn requested_scopes(form: &[(String, String)]) -> Result<u8, Response> {
    let requested: Vec<&str> = form_field(form, "scope")
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    if requested.is_empty() {
        return Ok(0b1111);
    }
    let scopes = requested
        .iter()
        .fold(0u8, |bits, s| bits | scope_bit(s).unwrap_or(0));
    if scopes == 0 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            format!(
                "none of the requested scopes is known; known: {}",
                ALL_SCOPES.join(" ")
            ),
        ));
    }
    Ok(scopes)
}

fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

// ---- the WFM API ----

/// Authentication, scope, rate limit and the 503 fault, in that order.
/// Returns the client id, or the response that ends the request.
// The error is the finished HTTP refusal, handed straight back by handlers.
#[allow(clippy::result_large_err)]
fn gate(st: &SimState, headers: &HeaderMap, scope: &str) -> Result<String, Response> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let Some(bearer) = bearer.map(str::trim).filter(|b| !b.is_empty()) else {
        bump(&st.counters.responses401);
        return Err(unauthorized(
            "missing Bearer token; get one from POST /oauth/token",
        ));
    };
    let (client_id, scopes) = match st.check_token(bearer) {
        Ok(t) => t,
        Err(why) => {
            bump(&st.counters.responses401);
            return Err(unauthorized(why));
        }
    };
    if scope_bit(scope).is_none_or(|b| scopes & b == 0) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("the token lacks scope {scope}; request it in the token's scope"),
        ));
    }
    if let Err(secs) = st.rate_limit(&client_id) {
        bump(&st.counters.responses429);
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "rate limit of {} requests per minute exceeded; retry after {secs} s",
                st.fault(|f| f.rate_limit_per_min)
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Err(r);
    }
    let rate = st.fault(|f| f.fail_5xx_rate);
    if rate > 0.0 && rand::random::<f64>() < rate {
        bump(&st.counters.responses5xx);
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "simulated outage (fail5xxRate); retry later",
        ));
    }
    Ok(client_id)
}

fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, "invalid_token", message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    r
}

fn record_traceparent(st: &SimState, headers: &HeaderMap) {
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        st.saw_traceparent(tp);
    }
}

fn accepted(job_id: &str) -> Response {
    (StatusCode::ACCEPTED, Json(json!({"jobId": job_id}))).into_response()
}

async fn import(State(st): St, headers: HeaderMap, body: Body) -> Response {
    latency(&st).await;
    bump(&st.counters.import_requests);
    record_traceparent(&st, &headers);
    let client_id = match gate(&st, &headers, SCOPE_SCHEDULES_WRITE) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty());
    let hash = body_hash(&body);
    // A key seen before settles the request without re-validating.
    if let Some(k) = key
        && let Some(a) = st.idempotent_lookup(&client_id, k, &hash)
    {
        return settle(&st, a);
    }
    let (payload, spans) = match validate_import(&body, &Limits::default()) {
        Ok(v) => v,
        Err(errors) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "error": "validation_failed",
                    "message": format!("the import has {} validation error(s); nothing was imported", errors.len()),
                    "errors": errors,
                })),
            )
                .into_response();
        }
    };
    let a = st.admit_import(
        &client_id,
        key,
        hash,
        &payload.target_calendar_id,
        payload.schedule_entries,
        spans,
    );
    settle(&st, a)
}

fn settle(st: &SimState, a: Admission) -> Response {
    match a {
        Admission::Accepted(id) => accepted(&id),
        Admission::Replayed(id) => {
            bump(&st.counters.idempotent_replays);
            accepted(&id)
        }
        Admission::KeyReused => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different body; use a new key for a new import",
        ),
        Admission::CalendarBusy => {
            bump(&st.counters.responses409);
            error(
                StatusCode::CONFLICT,
                "calendar_busy",
                "an import for this calendar is already queued or running; retry when it has finished",
            )
        }
    }
}

async fn job(
    State(st): St,
    headers: HeaderMap,
    job_id: Result<Path<String>, PathRejection>,
) -> Response {
    latency(&st).await;
    bump(&st.counters.job_requests);
    record_traceparent(&st, &headers);
    if let Err(r) = gate(&st, &headers, SCOPE_JOBS_READ) {
        return r;
    }
    let Ok(Path(job_id)) = job_id else {
        return bad_path();
    };
    match st.job(&job_id) {
        Some((status, errors)) => {
            let mut body = json!({"jobId": job_id, "status": status});
            if !errors.is_empty() {
                body["errors"] = json!(errors);
            }
            Json(body).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            "job_not_found",
            format!("no job {job_id:?}; finished jobs are forgotten after retentionS"),
        ),
    }
}

// ---- inspection ----

async fn shifts(State(st): St, calendar_id: Result<Path<String>, PathRejection>) -> Response {
    match calendar_id {
        Ok(Path(id)) => Json(st.shifts(&id)).into_response(),
        Err(_) => bad_path(),
    }
}

fn bad_path() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_path",
        "the id in the path is not valid percent-encoded UTF-8",
    )
}

async fn stats(State(st): St) -> Response {
    Json(st.stats()).into_response()
}

async fn reset(State(st): St) -> Response {
    st.reset();
    StatusCode::NO_CONTENT.into_response()
}

async fn get_faults(State(st): St) -> Response {
    Json(st.faults()).into_response()
}

async fn set_faults(State(st): St, body: Body) -> Response {
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let patch: FaultsPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_faults",
                format!("expected a JSON object of sim flags in camelCase: {e}"),
            );
        }
    };
    match st.set_faults(patch) {
        Ok(()) => Json(st.faults()).into_response(),
        Err(m) => error(StatusCode::BAD_REQUEST, "invalid_faults", m),
    }
}
