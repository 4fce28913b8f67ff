//! PLACEHOLDER implementation (to be replaced by the full rules of CONTRACT section 3).
//! It accepts well-formed changes and computes spans, so other modules can be
//! built against the final signatures.

use chrono::DateTime;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::*;
use crate::config::Limits;

/// AMQP properties validation depends on.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageMeta<'a> {
    pub content_type: Option<&'a str>,
    pub message_id: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    change_id: Option<String>,
    calendar_id: String,
    validation_mode: Option<ValidationMode>,
    entries: Vec<ScheduleEntry>,
}

/// Bytes of one inbound message → a validated change, or every error found.
pub fn parse_change(
    body: &[u8],
    meta: &MessageMeta<'_>,
    _limits: &Limits,
    default_mode: ValidationMode,
) -> Result<ValidChange, Rejection> {
    let fallback_id = || {
        meta.message_id
            .map(str::to_owned)
            .unwrap_or_else(|| format!("sha256-{}", hex::encode(Sha256::digest(body))))
    };
    let raw: Raw = serde_json::from_slice(body).map_err(|e| Rejection {
        change_id: fallback_id(),
        calendar_id: None,
        errors: vec![ValidationError {
            code: ErrorCode::InvalidJson,
            path: String::new(),
            message: e.to_string(),
        }],
    })?;
    let spans = spans(&raw.entries);
    Ok(ValidChange {
        change_id: raw.change_id.unwrap_or_else(fallback_id),
        calendar_id: raw.calendar_id,
        validation_mode: raw.validation_mode.unwrap_or(default_mode),
        conflict_resolution: ConflictResolution::AutoResolve,
        entries: raw.entries,
        spans,
        capacity_minutes: 0,
        occurred_at: None,
        source: None,
    })
}

/// An import request body (as the simulator receives it) → the payload and
/// its spans, or every error found; paths point into the payload.
pub fn validate_import(
    body: &[u8],
    _limits: &Limits,
) -> Result<(ImportPayload, Vec<Span>), Vec<ValidationError>> {
    let payload: ImportPayload = serde_json::from_slice(body).map_err(|e| {
        vec![ValidationError {
            code: ErrorCode::InvalidJson,
            path: String::new(),
            message: e.to_string(),
        }]
    })?;
    let spans = spans(&payload.schedule_entries);
    Ok((payload, spans))
}

fn spans(entries: &[ScheduleEntry]) -> Vec<Span> {
    entries
        .iter()
        .map(|e| Span {
            agent_id: e.agent_id.clone(),
            start_ms: DateTime::parse_from_rfc3339(&e.start_date_time)
                .map(|d| d.timestamp_millis())
                .unwrap_or(0),
            end_ms: DateTime::parse_from_rfc3339(&e.end_date_time)
                .map(|d| d.timestamp_millis())
                .unwrap_or(0),
        })
        .collect()
}
