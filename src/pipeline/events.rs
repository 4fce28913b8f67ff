//! The CloudEvents 1.0 (structured mode) the worker publishes (docs/contract.md §7).

use serde::Serialize;
use serde_json::Value;

use crate::domain::ValidationError;

pub const SUBMITTED: &str = "schedule.import.submitted";
pub const COMPLETED: &str = "schedule.import.completed";
pub const FAILED: &str = "schedule.import.failed";
pub const REJECTED: &str = "schedule.change.rejected";
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

#[derive(Serialize)]
struct CloudEvent<'a, D: Serialize> {
    specversion: &'static str,
    id: String,
    source: &'a str,
    #[serde(rename = "type")]
    kind: String,
    subject: Option<&'a str>,
    time: String,
    datacontenttype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    data: D,
}

/// Serialises one event. `source` is `/cxone-schedule-worker/{instance}`; the
/// id is deterministic (`{batchId or changeId}:{kind}`) so listeners can drop
/// duplicates after a redelivery.
pub fn encode<D: Serialize>(
    routing_key: &str,
    id_base: &str,
    source: &str,
    subject: Option<&str>,
    traceparent: Option<&str>,
    data: &D,
) -> Vec<u8> {
    let event = CloudEvent {
        specversion: "1.0",
        id: format!("{id_base}:{routing_key}"),
        source,
        kind: format!("wfm.{routing_key}"),
        subject,
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        datacontenttype: "application/json",
        traceparent,
        data,
    };
    serde_json::to_vec(&event).expect("events serialise")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Submitted<'a> {
    pub batch_id: &'a str,
    pub calendar_id: &'a str,
    pub job_id: &'a str,
    pub change_ids: &'a [String],
    pub entry_count: usize,
}

#[derive(Serialize, Clone, Copy, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    pub validation_ms: u64,
    pub request_ms: u64,
    pub polling_ms: u64,
    pub total_ms: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Completed<'a> {
    pub batch_id: &'a str,
    pub calendar_id: &'a str,
    pub job_id: &'a str,
    pub change_ids: &'a [String],
    pub entry_count: usize,
    pub capacity_minutes: u64,
    pub attempts: u32,
    pub timings: Timings,
}

#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
    pub http_status: Option<u16>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failed<'a> {
    pub batch_id: &'a str,
    pub calendar_id: &'a str,
    pub job_id: Option<&'a str>,
    pub change_ids: &'a [String],
    pub entry_count: usize,
    pub capacity_minutes: u64,
    pub attempts: u32,
    pub timings: Timings,
    pub error: &'a ErrorInfo,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejected<'a> {
    pub change_id: &'a str,
    pub calendar_id: Option<&'a str>,
    pub message_id: Option<&'a str>,
    pub errors: &'a [ValidationError],
}

/// Parses an event published by the worker (for tests and the demo).
pub fn decode(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}
