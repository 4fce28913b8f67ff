//! Wire types: the CXone import payload and the validated change.

use serde::{Deserialize, Serialize};

/// `validationMode`: passed on to CXone; the worker's own checks are the same in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ValidationMode {
    Strict,
    Lenient,
}

impl ValidationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationMode::Strict => "STRICT",
            ValidationMode::Lenient => "LENIENT",
        }
    }
}

/// `conflictResolution`: only `AUTO_RESOLVE` exists today.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConflictResolution {
    AutoResolve,
}

impl ConflictResolution {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictResolution::AutoResolve => "AUTO_RESOLVE",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OverrideType {
    Unavailable,
    Available,
    Partial,
}

/// One shift as CXone receives it. Date-times are passed on exactly as the
/// publisher wrote them (already checked to be RFC 3339 with an offset).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleEntry {
    pub agent_id: String,
    pub start_date_time: String,
    pub end_date_time: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub breaks: Vec<Break>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub availability_overrides: Vec<AvailabilityOverride>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Break {
    pub start_offset_minutes: i64,
    pub duration_minutes: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AvailabilityOverride {
    #[serde(rename = "type")]
    pub kind: OverrideType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

/// `POST /api/v2/wfm/schedules/import` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportPayload {
    pub schedule_entries: Vec<ScheduleEntry>,
    pub validation_mode: ValidationMode,
    pub conflict_resolution: ConflictResolution,
    pub target_calendar_id: String,
}

/// An entry's agent and instants, in milliseconds since the Unix epoch (UTC),
/// for overlap checks in the batcher and AUTO_RESOLVE in the simulator.
/// `spans[i]` belongs to `entries[i]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInterval {
    pub agent_id: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

impl AgentInterval {
    /// Half-open intervals: touching spans do not overlap.
    pub fn overlaps(&self, other: &AgentInterval) -> bool {
        self.agent_id == other.agent_id
            && self.start_ms < other.end_ms
            && other.start_ms < self.end_ms
    }
}

/// A change that passed every check of docs/contract.md §4.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidChange {
    /// `changeId`, else the AMQP `message_id`, else `sha256-<hex of body>`.
    pub change_id: String,
    pub calendar_id: String,
    pub validation_mode: ValidationMode,
    pub conflict_resolution: ConflictResolution,
    pub entries: Vec<ScheduleEntry>,
    pub spans: Vec<AgentInterval>,
    /// Whole minutes, rounded down (docs/contract.md §4, "Capacity").
    pub capacity_minutes: u64,
    pub occurred_at: Option<String>,
    pub source: Option<String>,
}

/// Every error code of docs/contract.md §4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    MessageTooLarge,
    UnsupportedContentType,
    InvalidJson,
    UnsupportedSchemaVersion,
    MissingField,
    InvalidField,
    TooManyEntries,
    InvalidDatetime,
    EndNotAfterStart,
    ShiftTooLong,
    BreakOutsideShift,
    OverlappingBreaks,
    InvalidOverrideType,
    OverrideOutsideShift,
    ConflictingOverrides,
    OverlappingShifts,
    InsufficientCapacity,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::UnsupportedContentType => "UNSUPPORTED_CONTENT_TYPE",
            ErrorCode::InvalidJson => "INVALID_JSON",
            ErrorCode::UnsupportedSchemaVersion => "UNSUPPORTED_SCHEMA_VERSION",
            ErrorCode::MissingField => "MISSING_FIELD",
            ErrorCode::InvalidField => "INVALID_FIELD",
            ErrorCode::TooManyEntries => "TOO_MANY_ENTRIES",
            ErrorCode::InvalidDatetime => "INVALID_DATETIME",
            ErrorCode::EndNotAfterStart => "END_NOT_AFTER_START",
            ErrorCode::ShiftTooLong => "SHIFT_TOO_LONG",
            ErrorCode::BreakOutsideShift => "BREAK_OUTSIDE_SHIFT",
            ErrorCode::OverlappingBreaks => "OVERLAPPING_BREAKS",
            ErrorCode::InvalidOverrideType => "INVALID_OVERRIDE_TYPE",
            ErrorCode::OverrideOutsideShift => "OVERRIDE_OUTSIDE_SHIFT",
            ErrorCode::ConflictingOverrides => "CONFLICTING_OVERRIDES",
            ErrorCode::OverlappingShifts => "OVERLAPPING_SHIFTS",
            ErrorCode::InsufficientCapacity => "INSUFFICIENT_CAPACITY",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem, `{code, path, message}`; `path` is a JSON Pointer into the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationError {
    pub code: ErrorCode,
    pub path: String,
    pub message: String,
}

/// A change that failed: every error found, and what could be learned of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// Same fallback as [`ValidChange::change_id`]; always present.
    pub change_id: String,
    /// `None` when the calendar id is missing or invalid.
    pub calendar_id: Option<String>,
    pub errors: Vec<ValidationError>,
}

impl Rejection {
    /// The first error's code: what the dead-letter copy's `x-error-code` says.
    pub fn primary_code(&self) -> ErrorCode {
        self.errors
            .first()
            .map(|e| e.code)
            .unwrap_or(ErrorCode::InvalidJson)
    }

    /// One line for `x-error-message` and logs.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                s.push_str("; ");
            }
            if i == 5 {
                s.push_str(&format!("and {} more", self.errors.len() - 5));
                break;
            }
            s.push_str(&format!("{} at {}: {}", e.code, e.path, e.message));
        }
        s
    }
}
