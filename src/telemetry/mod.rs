//! Logs, traces, and the metrics registry with its catalogue ([`metrics`]).
//!
//! Logs go to stderr as text or JSON. When `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, spans are also exported over OTLP/HTTP, and the W3C `traceparent` of
//! an inbound message becomes the parent of the worker's spans, so one trace
//! runs from the publisher through the worker and CXone to the event listener.
//! Without an exporter the inbound `traceparent` is carried on unchanged.

pub mod metrics;

use std::{collections::HashMap, sync::OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{LogFormat, TelemetrySettings};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "cannot build the OTLP exporter for OTEL_EXPORTER_OTLP_ENDPOINT: {0}; check the URL (e.g. http://jaeger:4318)"
    )]
    Exporter(String),
}

/// Keeps the trace exporter alive; flushes pending spans on drop.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Colour codes only for a person at a terminal: a log file, a pipe or
/// journald would keep them as escape bytes that grep and log shippers
/// trip over. `NO_COLOR` (any non-empty value, no-color.org) turns them off
/// at a terminal too.
fn colour_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

static OTEL_ACTIVE: OnceLock<bool> = OnceLock::new();

/// Installs logging (and tracing export when configured). Once per process;
/// later calls only return a guard.
pub fn init(settings: &TelemetrySettings) -> Result<TelemetryGuard, TelemetryError> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log_level))
    };
    let fmt = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(colour_stderr())
            .boxed(),
    };
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let mut provider = None;
    let otel_layer = match endpoint {
        Some(_) => {
            // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and the other
            // standard OTEL_* variables) itself.
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let processor =
                opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                    exporter,
                    opentelemetry_sdk::runtime::Tokio,
                )
                .build();
            let service = std::env::var("OTEL_SERVICE_NAME")
                .unwrap_or_else(|_| settings.service_name.clone());
            let p = SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_resource(Resource::builder().with_service_name(service).build())
                .build();
            let tracer = p.tracer("cxone-schedule-worker");
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            provider = Some(p);
            Some(tracing_opentelemetry::layer().with_tracer(tracer))
        }
        None => None,
    };
    let installed = tracing_subscriber::registry()
        .with(filter())
        .with(fmt)
        .with(otel_layer)
        .try_init()
        .is_ok();
    if installed {
        let _ = OTEL_ACTIVE.set(provider.is_some());
    }
    Ok(TelemetryGuard { provider })
}

fn otel_active() -> bool {
    OTEL_ACTIVE.get().copied().unwrap_or(false)
}

struct Carrier<'a>(&'a mut HashMap<String, String>);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// Makes `traceparent` (from an inbound message) the parent of `span`.
pub fn adopt_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if !otel_active() {
        return;
    }
    if let Some(tp) = traceparent {
        let mut map = HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
        let cx = TraceContextPropagator::new().extract(&Carrier(&mut map));
        let _ = span.set_parent(cx);
    }
}

/// The `traceparent` to send on (CXone requests, events): the current span's
/// context when traces are exported, else the inbound value unchanged.
pub fn outgoing_traceparent(inbound: Option<&str>) -> Option<String> {
    if otel_active() {
        let cx = tracing::Span::current().context();
        let mut map = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut Carrier(&mut map));
        if let Some(tp) = map.remove("traceparent") {
            return Some(tp);
        }
    }
    inbound
        .filter(|tp| valid_traceparent(tp))
        .map(str::to_owned)
}

/// `00-<32 hex>-<16 hex>-<2 hex>`: anything else is not passed on.
pub fn valid_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    parts.len() == 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, p)| p.len() == *len && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The process-wide Prometheus registry behind `/metrics`. Installed on first
/// use; several workers in one process (tests, `demo`) share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("seconds".into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(metrics::BATCH_ENTRIES.into()),
                        &[1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(metrics::JOB_POLLS.into()),
                        &[0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0],
                    )
                })
                .expect("static bucket lists are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program's):
            // then our handle renders nothing, which is acceptable.
            if ::metrics::set_global_recorder(recorder).is_ok() {
                metrics::describe();
            }
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_passes_through_only_when_well_formed() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(outgoing_traceparent(Some(tp)).as_deref(), Some(tp));
        assert_eq!(outgoing_traceparent(Some("garbage\r\nx: y")), None);
        assert_eq!(outgoing_traceparent(None), None);
    }
}
