//! Health, readiness, metrics and the CXone webhook, on `http.listen`.

use crate::telemetry::metrics as metric;
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
use lapin::types::{AMQPValue, FieldTable};
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::{
    amqp::persistent,
    cxone::{
        CxoneClient,
        webhook::{self, WebhookEvent},
    },
    pipeline::{jobs::JobRegistry, settle::Outbound},
};

#[derive(Clone)]
pub struct HttpState {
    /// Broker connection and channels up.
    pub broker_ready: Arc<AtomicBool>,
    pub client: CxoneClient,
    pub jobs: JobRegistry,
    pub webhook_secret: Option<SecretString>,
    pub metrics: PrometheusHandle,
    /// Where to pass on a webhook for a job another replica follows.
    pub relay: Outbound,
    pub relay_exchange: String,
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
    let signature = headers
        .get(webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    if !webhook::verify(secret.expose_secret().as_bytes(), &body, signature) {
        metrics::counter!(metric::WEBHOOKS_TOTAL, "result" => "bad_signature").increment(1);
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or invalid X-CXone-Signature (expected sha256=<hex HMAC-SHA256 of the body>)",
        );
    }
    let Ok(notice) = serde_json::from_slice::<WebhookEvent>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {eventType, jobId, status}",
        );
    };
    if notice.event_type != webhook::EVENT_IMPORT_COMPLETED || !notice.status.is_terminal() {
        return (
            StatusCode::ACCEPTED,
            Json(json!({"accepted": true, "used": false})),
        );
    }
    if s.jobs.notify(&notice.job_id, notice.status) {
        metrics::counter!(metric::WEBHOOKS_TOTAL, "result" => "matched").increment(1);
        return (
            StatusCode::OK,
            Json(json!({"accepted": true, "used": true})),
        );
    }
    // Another replica may follow this job: pass the notice on over the broker,
    // with CXone's signature so the receiver can check it came from CXone.
    // Best effort: polling remains the fallback, so a broker hiccup is no error.
    let properties = persistent("application/json").with_headers(relay_headers(signature));
    let relayed = tokio::time::timeout(
        Duration::from_secs(2),
        s.relay.publish(&s.relay_exchange, "", &body, properties),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let result = if relayed { "relayed_out" } else { "unmatched" };
    metrics::counter!(metric::WEBHOOKS_TOTAL, "result" => result).increment(1);
    (
        StatusCode::ACCEPTED,
        Json(json!({"accepted": true, "used": false, "relayed": relayed})),
    )
}

/// The verified signature, carried under its HTTP header's name.
fn relay_headers(signature: Option<&str>) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(signature) = signature {
        headers.insert(
            webhook::SIGNATURE_HEADER.into(),
            AMQPValue::LongString(signature.into()),
        );
    }
    headers
}

fn error(status: StatusCode, message: &str) -> (StatusCode, Json<serde_json::Value>) {
    (
        status,
        Json(json!({"error": status.canonical_reason(), "message": message})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_notices_carry_the_signature_under_its_header_name() {
        let headers = relay_headers(Some("sha256=ab"));
        match headers.inner().get(webhook::SIGNATURE_HEADER) {
            Some(AMQPValue::LongString(s)) => assert_eq!(s.as_bytes(), b"sha256=ab"),
            other => panic!("no signature header: {other:?}"),
        }
        assert!(relay_headers(None).inner().is_empty());
    }
}
