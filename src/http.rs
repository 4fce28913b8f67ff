//! Health, readiness, metrics and the CXone webhook, on `http.listen`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post},
};
use hmac::{Hmac, Mac};
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use crate::{cxone::CxoneClient, cxone::JobStatus, pipeline::jobs::JobRegistry};

#[derive(Clone)]
pub struct HttpState {
    /// Broker connection and channels up.
    pub broker_ready: Arc<AtomicBool>,
    pub client: CxoneClient,
    pub jobs: JobRegistry,
    pub webhook_secret: Option<SecretString>,
    pub metrics: PrometheusHandle,
}

pub fn router(state: HttpState, webhook_max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/webhooks/cxone",
            post(webhook).layer(DefaultBodyLimit::max(webhook_max_body)),
        )
        .with_state(Arc::new(state))
}

async fn readyz(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    if !s.broker_ready.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "broker connection down"})),
        );
    }
    match tokio::time::timeout(Duration::from_secs(5), s.client.check_token()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"ready": true}))),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": format!("no CXone token: {e}")})),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "CXone token request timed out"})),
        ),
    }
}

async fn metrics(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WebhookBody {
    event_type: String,
    job_id: String,
    status: JobStatus,
}

async fn webhook(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    // Without a secret the webhook cannot be trusted, so it does not exist.
    let Some(secret) = &s.webhook_secret else {
        return error(
            StatusCode::NOT_FOUND,
            "webhook disabled: set cxone.webhook_secret",
        );
    };
    if !signature_ok(secret, &headers, &body) {
        metrics::counter!("csw_webhooks_total", "result" => "bad_signature").increment(1);
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or invalid X-CXone-Signature (expected sha256=<hex HMAC-SHA256 of the body>)",
        );
    }
    let Ok(notice) = serde_json::from_slice::<WebhookBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {eventType, jobId, status}",
        );
    };
    if notice.event_type != "WFM_SCHEDULE_IMPORT_COMPLETED" || !notice.status.is_terminal() {
        return (
            StatusCode::ACCEPTED,
            Json(json!({"accepted": true, "used": false})),
        );
    }
    let ours = s.jobs.notify(&notice.job_id, notice.status);
    metrics::counter!("csw_webhooks_total", "result" => if ours { "matched" } else { "unmatched" })
        .increment(1);
    (
        StatusCode::OK,
        Json(json!({"accepted": true, "used": ours})),
    )
}

fn error(status: StatusCode, message: &str) -> (StatusCode, Json<serde_json::Value>) {
    (
        status,
        Json(json!({"error": status.canonical_reason(), "message": message})),
    )
}

/// Constant-time check of `X-CXone-Signature: sha256=<hex>`.
fn signature_ok(secret: &SecretString, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(value) = headers
        .get("x-cxone-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(hex_sig) = value.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// `sha256=<hex>` for a body: what CXone (and the simulator) send.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
