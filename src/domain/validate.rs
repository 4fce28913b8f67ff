//! Every rule of docs/contract.md §4, shared by the worker ([`parse_change`])
//! and the CXone simulator ([`validate_import`]).
//!
//! The body is read once into borrowed, lenient structs (`raw.rs`); the rules
//! then run in a fixed order so the first error (the dead-letter
//! `x-error-code`) is stable: message-level, top-level fields, each entry in
//! order, overlapping shifts, capacity. Owned output is built only for a
//! change that passed everything.

use sha2::{Digest, Sha256};

use super::limits::Limits;
use super::model::*;
use super::raw::{
    self, Doc, Item, Kind, List, RawBreak, RawEntry, RawOverride, RawTop, Root, Scalar, Shape,
    show_str,
};
use super::sweep;
use super::time::{self, EXPECTED_FORMAT, MICROS_PER_MINUTE};

/// AMQP properties validation depends on.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageMeta<'a> {
    pub content_type: Option<&'a str>,
    pub message_id: Option<&'a str>,
}

/// Longest `changeId`, `calendarId` and `agentId`, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// Bytes of one inbound message → a validated change, or every error found.
pub fn parse_change(
    body: &[u8],
    meta: &MessageMeta<'_>,
    limits: &Limits,
    default_mode: ValidationMode,
) -> Result<ValidChange, Rejection> {
    check_envelope(body, meta, limits)?;
    let doc = match read_doc(body, Shape::Change, limits.max_entries_per_change) {
        Ok(doc) => doc,
        Err(e) => return Err(reject(body, meta, None, None, Errors(vec![e]))),
    };
    let top = match &doc.root {
        Root::Object(top) => top,
        Root::NotObject(kind) => {
            let e = not_object(kind);
            return Err(reject(body, meta, None, None, Errors(vec![e])));
        }
    };

    let mut errs = Errors::default();
    let schema_ok = check_schema_version(&top.schema_version, &mut errs);
    let change_id = check_change_id(&top.change_id, &mut errs);
    let calendar_id = check_calendar_id(&top.calendar_id, "/calendarId", "calendarId", &mut errs);
    if !schema_ok {
        // Every other rule is a rule of schema version 1: checking a
        // different version against them would only produce noise.
        errs.0
            .retain(|e| e.code == ErrorCode::UnsupportedSchemaVersion);
        return Err(reject(body, meta, change_id, calendar_id, errs));
    }
    let fields = check_change_fields(top, default_mode, &mut errs);
    let outcome = check_entry_list(
        &doc,
        top,
        "/entries",
        "entries",
        Some(limits.max_entries_per_change),
        limits,
        &mut errs,
    );
    let capacity = outcome.as_ref().and_then(|o| o.capacity_minutes());
    check_capacity(fields.minimum, capacity, &mut errs);
    let (Some(calendar_id), Some(outcome), Some(capacity_minutes), true) =
        (calendar_id, outcome, capacity, errs.0.is_empty())
    else {
        if errs.0.is_empty() {
            // Unreachable by construction (a missing piece always records
            // an error); kept so a future rule bug rejects rather than panics.
            errs.push(
                ErrorCode::InvalidJson,
                String::new(),
                "the change could not be validated".to_owned(),
            );
        }
        return Err(reject(body, meta, change_id, calendar_id, errs));
    };
    let (entries, spans) = build_entries(&doc, &outcome);
    Ok(ValidChange {
        change_id: change_id
            .map(str::to_owned)
            .unwrap_or_else(|| fallback_id(body, meta)),
        calendar_id: calendar_id.to_owned(),
        validation_mode: fields.mode,
        conflict_resolution: fields.resolution.unwrap_or(ConflictResolution::AutoResolve),
        entries,
        spans,
        capacity_minutes,
        occurred_at: fields.occurred_at.map(str::to_owned),
        source: fields.source.map(str::to_owned),
    })
}

/// The message before its body: the size and the declared content type.
/// The body is not read at all when it is too large (bounded work) or
/// declared to be something other than JSON (reading it would be a guess).
fn check_envelope(body: &[u8], meta: &MessageMeta<'_>, limits: &Limits) -> Result<(), Rejection> {
    let mut errs = Errors::default();
    if body.len() > limits.max_message_bytes {
        errs.push(
            ErrorCode::MessageTooLarge,
            String::new(),
            format!(
                "message body is {} bytes; at most {} are accepted",
                body.len(),
                limits.max_message_bytes
            ),
        );
    }
    if let Some(ct) = meta.content_type {
        if !is_json_content_type(ct) {
            errs.push(
                ErrorCode::UnsupportedContentType,
                String::new(),
                format!(
                    "content type {} is not supported; expected application/json",
                    show_str(ct)
                ),
            );
        }
    }
    if errs.0.is_empty() {
        Ok(())
    } else {
        Err(reject(body, meta, None, None, errs))
    }
}

/// The change's capacity against its `minimumCapacityMinutes`, when both are known.
fn check_capacity(minimum: Option<u64>, capacity: Option<u64>, errs: &mut Errors) {
    if let (Some(min), Some(cap)) = (minimum, capacity) {
        if cap < min {
            errs.push(
                ErrorCode::InsufficientCapacity,
                "/minimumCapacityMinutes".to_owned(),
                format!(
                    "the change's capacity is {cap} minutes, below minimumCapacityMinutes {min}"
                ),
            );
        }
    }
}

/// A change's optional top-level fields, checked.
struct ChangeFields<'a> {
    occurred_at: Option<&'a str>,
    source: Option<&'a str>,
    mode: ValidationMode,
    resolution: Option<ConflictResolution>,
    minimum: Option<u64>,
}

fn check_change_fields<'a>(
    top: &'a RawTop<'_>,
    default_mode: ValidationMode,
    errs: &mut Errors,
) -> ChangeFields<'a> {
    ChangeFields {
        occurred_at: check_occurred_at(&top.occurred_at, errs),
        source: check_optional_string(&top.source, || "/source".to_owned(), "source", errs),
        mode: check_mode(&top.validation_mode, "/validationMode", false, errs)
            .unwrap_or(default_mode),
        resolution: check_resolution(&top.conflict_resolution, "/conflictResolution", false, errs),
        minimum: check_minimum_capacity(&top.minimum_capacity_minutes, errs),
    }
}

/// An import request body (as the simulator receives it) → the payload and
/// its spans, or every error found; paths point into the payload.
///
/// The entry rules are those of [`parse_change`] (including overlapping
/// shifts); there is no capacity minimum and no entry-count limit, since a
/// batch legitimately combines many changes. Only `limits.max_shift_minutes`
/// applies; the HTTP layer bounds the body size.
pub fn validate_import(
    body: &[u8],
    limits: &Limits,
) -> Result<(ImportPayload, Vec<AgentInterval>), Vec<ValidationError>> {
    let doc = read_doc(body, Shape::Import, usize::MAX).map_err(|e| vec![e])?;
    let top = match &doc.root {
        Root::Object(top) => top,
        Root::NotObject(kind) => return Err(vec![not_object(kind)]),
    };
    let mut errs = Errors::default();
    let calendar_id = check_calendar_id(
        &top.calendar_id,
        "/targetCalendarId",
        "targetCalendarId",
        &mut errs,
    );
    let mode = check_mode(&top.validation_mode, "/validationMode", true, &mut errs);
    let resolution = check_resolution(
        &top.conflict_resolution,
        "/conflictResolution",
        true,
        &mut errs,
    );
    let outcome = check_entry_list(
        &doc,
        top,
        "/scheduleEntries",
        "scheduleEntries",
        None,
        limits,
        &mut errs,
    );
    match (errs.0.is_empty(), calendar_id, mode, resolution, outcome) {
        (true, Some(calendar_id), Some(mode), Some(resolution), Some(outcome)) => {
            let (entries, spans) = build_entries(&doc, &outcome);
            Ok((
                ImportPayload {
                    schedule_entries: entries,
                    validation_mode: mode,
                    conflict_resolution: resolution,
                    target_calendar_id: calendar_id.to_owned(),
                },
                spans,
            ))
        }
        _ => {
            if errs.0.is_empty() {
                errs.push(
                    ErrorCode::InvalidJson,
                    String::new(),
                    "the payload could not be validated".to_owned(),
                );
            }
            Err(errs.0)
        }
    }
}

/// `application/json`, ignoring case, parameters (`; charset=utf-8`) and
/// surrounding blanks. An empty property counts as absent: some clients send
/// `""` when no content type was set.
pub fn is_json_content_type(content_type: &str) -> bool {
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    content_type.trim().is_empty() || media_type.eq_ignore_ascii_case("application/json")
}

/// `changeId` when usable, else the AMQP `message_id`, else `sha256-<hex>` of the body.
fn fallback_id(body: &[u8], meta: &MessageMeta<'_>) -> String {
    match meta.message_id {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => format!("sha256-{}", hex::encode(Sha256::digest(body))),
    }
}

fn reject(
    body: &[u8],
    meta: &MessageMeta<'_>,
    change_id: Option<&str>,
    calendar_id: Option<&str>,
    errs: Errors,
) -> Rejection {
    Rejection {
        change_id: change_id
            .map(str::to_owned)
            .unwrap_or_else(|| fallback_id(body, meta)),
        calendar_id: calendar_id.map(str::to_owned),
        errors: errs.0,
    }
}

fn read_doc(body: &[u8], shape: Shape, max_entries: usize) -> Result<Doc<'_>, ValidationError> {
    // Checked up front because serde_json skips unknown string values
    // without checking their UTF-8; this also lets it parse from `&str`.
    let text = std::str::from_utf8(body).map_err(|e| ValidationError {
        code: ErrorCode::InvalidJson,
        path: String::new(),
        message: format!(
            "the body is not UTF-8 (invalid byte at offset {}); expected UTF-8 JSON",
            e.valid_up_to()
        ),
    })?;
    raw::parse_doc(text, shape, max_entries).map_err(|e| ValidationError {
        code: ErrorCode::InvalidJson,
        path: String::new(),
        message: format!("the body is not valid JSON: {e}"),
    })
}

fn not_object(kind: &Kind) -> ValidationError {
    ValidationError {
        code: ErrorCode::InvalidJson,
        path: String::new(),
        message: format!(
            "the top-level JSON value is {}; expected an object",
            kind.described()
        ),
    }
}

/// Most errors reported for one change or payload. A legitimate change of
/// 1000 entries stays far below it; a hostile megabyte of `{}` breaks would
/// otherwise produce hundreds of thousands of errors (and a rejection event
/// of a hundred megabytes). Checking stops once it is reached.
pub const MAX_ERRORS: usize = 10_000;

#[derive(Default)]
struct Errors(Vec<ValidationError>);

impl Errors {
    fn push(&mut self, code: ErrorCode, path: String, message: String) {
        if self.0.len() < MAX_ERRORS {
            self.0.push(ValidationError {
                code,
                path,
                message,
            });
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_full(&self) -> bool {
        self.0.len() >= MAX_ERRORS
    }

    fn missing(&mut self, path: String, name: &str, expected: &str) {
        self.push(
            ErrorCode::MissingField,
            path,
            format!("{name} is missing; expected {expected}"),
        );
    }

    fn wrong_type(&mut self, path: String, name: &str, value: &Scalar<'_>, expected: &str) {
        let found = value.kind().map_or("absent", Kind::described);
        self.push(
            ErrorCode::InvalidField,
            path,
            format!("{name} is {found}; expected {expected}"),
        );
    }
}

// ---------------------------------------------------------------- top level

fn check_schema_version(v: &Scalar<'_>, errs: &mut Errors) -> bool {
    if v.is_unset() || v.as_integer() == Some(1) {
        return true;
    }
    errs.push(
        ErrorCode::UnsupportedSchemaVersion,
        "/schemaVersion".to_owned(),
        format!(
            "schemaVersion {} is not supported; expected the integer 1",
            v.shown()
        ),
    );
    false
}

fn check_change_id<'a>(v: &'a Scalar<'_>, errs: &mut Errors) -> Option<&'a str> {
    const EXPECTED: &str = "a non-empty string of at most 128 characters";
    let path = || "/changeId".to_owned();
    if v.is_unset() {
        return None;
    }
    let Some(s) = v.as_str() else {
        errs.wrong_type(path(), "changeId", v, EXPECTED);
        return None;
    };
    if s.is_empty() {
        errs.push(
            ErrorCode::InvalidField,
            path(),
            format!("changeId is empty; expected {EXPECTED}"),
        );
        return None;
    }
    let chars = s.chars().count();
    if chars > MAX_ID_CHARS {
        errs.push(
            ErrorCode::InvalidField,
            path(),
            format!("changeId is {chars} characters long; expected {EXPECTED}"),
        );
        return None;
    }
    Some(s)
}

fn check_calendar_id<'a>(
    v: &'a Scalar<'_>,
    path: &str,
    name: &str,
    errs: &mut Errors,
) -> Option<&'a str> {
    const EXPECTED: &str = "1-128 characters from A-Z a-z 0-9 . _ : -";
    if v.is_unset() {
        errs.missing(path.to_owned(), name, &format!("a string of {EXPECTED}"));
        return None;
    }
    let Some(s) = v.as_str() else {
        errs.wrong_type(path.to_owned(), name, v, &format!("a string of {EXPECTED}"));
        return None;
    };
    let bad = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')));
    let problem = if s.is_empty() {
        "is empty".to_owned()
    } else if let Some(c) = bad {
        format!("{} contains {c:?}", show_str(s))
    } else if s.len() > MAX_ID_CHARS {
        format!("is {} characters long", s.len())
    } else {
        return Some(s);
    };
    errs.push(
        ErrorCode::InvalidField,
        path.to_owned(),
        format!("{name} {problem}; expected {EXPECTED}"),
    );
    None
}

fn check_occurred_at<'a>(v: &'a Scalar<'_>, errs: &mut Errors) -> Option<&'a str> {
    if v.is_unset() {
        return None;
    }
    check_datetime(v, || "/occurredAt".to_owned(), "occurredAt", errs).map(|(s, _)| s)
}

fn check_optional_string<'a>(
    v: &'a Scalar<'_>,
    path: impl Fn() -> String,
    name: &str,
    errs: &mut Errors,
) -> Option<&'a str> {
    if v.is_unset() {
        return None;
    }
    let s = v.as_str();
    if s.is_none() {
        errs.wrong_type(path(), name, v, "a string");
    }
    s
}

fn check_mode(
    v: &Scalar<'_>,
    path: &str,
    required: bool,
    errs: &mut Errors,
) -> Option<ValidationMode> {
    check_keyword(
        v,
        path,
        required,
        errs,
        "validationMode",
        "\"STRICT\" or \"LENIENT\"",
        |s| match s {
            "STRICT" => Some(ValidationMode::Strict),
            "LENIENT" => Some(ValidationMode::Lenient),
            _ => None,
        },
    )
}

fn check_resolution(
    v: &Scalar<'_>,
    path: &str,
    required: bool,
    errs: &mut Errors,
) -> Option<ConflictResolution> {
    check_keyword(
        v,
        path,
        required,
        errs,
        "conflictResolution",
        "\"AUTO_RESOLVE\"",
        |s| (s == "AUTO_RESOLVE").then_some(ConflictResolution::AutoResolve),
    )
}

/// A string field holding one of a few keywords: missing (when required),
/// of the wrong JSON type, or an unknown keyword are errors.
fn check_keyword<T>(
    v: &Scalar<'_>,
    path: &str,
    required: bool,
    errs: &mut Errors,
    field: &str,
    expected: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    if v.is_unset() {
        if required {
            errs.missing(path.to_owned(), field, expected);
        }
        return None;
    }
    match v.as_str() {
        Some(s) => {
            let parsed = parse(s);
            if parsed.is_none() {
                errs.push(
                    ErrorCode::InvalidField,
                    path.to_owned(),
                    format!("{field} {} is not known; expected {expected}", show_str(s)),
                );
            }
            parsed
        }
        None => {
            errs.wrong_type(path.to_owned(), field, v, expected);
            None
        }
    }
}

fn check_minimum_capacity(v: &Scalar<'_>, errs: &mut Errors) -> Option<u64> {
    if v.is_unset() {
        return None;
    }
    let n = v.as_integer().and_then(|n| u64::try_from(n).ok());
    if n.is_none() {
        errs.push(
            ErrorCode::InvalidField,
            "/minimumCapacityMinutes".to_owned(),
            format!(
                "minimumCapacityMinutes {} is not allowed; expected a non-negative integer",
                v.shown()
            ),
        );
    }
    n
}

/// A required or optional date-time string: its text and instant (µs).
fn check_datetime<'a>(
    v: &'a Scalar<'_>,
    path: impl Fn() -> String,
    name: &str,
    errs: &mut Errors,
) -> Option<(&'a str, i64)> {
    let expected = "an RFC 3339 date-time string";
    if v.is_unset() {
        errs.missing(path(), name, expected);
        return None;
    }
    let Some(s) = v.as_str() else {
        errs.wrong_type(path(), name, v, expected);
        return None;
    };
    match time::parse_rfc3339_micros(s) {
        Ok(us) => Some((s, us)),
        Err(e) => {
            errs.push(
                ErrorCode::InvalidDatetime,
                path(),
                format!(
                    "{name} {} is not an RFC 3339 date-time: {e}; expected {EXPECTED_FORMAT}",
                    show_str(s)
                ),
            );
            None
        }
    }
}

// ------------------------------------------------------------------ entries

/// What the rules learned about one entry, for the cross-entry checks.
#[derive(Clone, Copy, Debug)]
struct EntryFacts<'a> {
    agent: Option<&'a str>,
    /// Start and end instants (µs) when both are valid and end > start.
    shift: Option<(i64, i64)>,
    /// Every rule of the entry passed.
    ok: bool,
    /// Shift length minus the union of breaks and UNAVAILABLE windows (µs).
    capacity_us: i64,
}

struct EntriesOutcome<'a> {
    facts: Vec<EntryFacts<'a>>,
    /// Indexes into the entry arena, in payload order.
    stored: std::ops::Range<usize>,
}

impl EntriesOutcome<'_> {
    /// Summed exactly, rounded down once; `None` if any entry is invalid.
    fn capacity_minutes(&self) -> Option<u64> {
        let mut total: u128 = 0;
        for f in &self.facts {
            if !f.ok {
                return None;
            }
            total += u128::try_from(f.capacity_us).ok()?;
        }
        u64::try_from(total / MICROS_PER_MINUTE as u128).ok()
    }
}

/// The entry list (`entries` or `scheduleEntries`): presence, shape, count,
/// then every entry, then overlapping shifts. `None` when the entries could
/// not all be checked.
fn check_entry_list<'d>(
    doc: &'d Doc<'d>,
    top: &RawTop<'_>,
    prefix: &str,
    name: &str,
    max_entries: Option<usize>,
    limits: &Limits,
    errs: &mut Errors,
) -> Option<EntriesOutcome<'d>> {
    let expected = "a non-empty array of entry objects";
    let (stored, total) = match &top.entries {
        List::Absent | List::Wrong(Kind::Null) => {
            errs.missing(prefix.to_owned(), name, expected);
            return None;
        }
        List::Wrong(kind) => {
            errs.push(
                ErrorCode::InvalidField,
                prefix.to_owned(),
                format!("{name} is {}; expected {expected}", kind.described()),
            );
            return None;
        }
        List::Items { stored, total } => (stored.clone(), *total),
    };
    if total == 0 {
        errs.push(
            ErrorCode::InvalidField,
            prefix.to_owned(),
            format!("{name} is empty; expected at least one entry"),
        );
        return None;
    }
    if let Some(max) = max_entries {
        if total > max {
            // Not checked one by one: bounded work on hostile input.
            errs.push(
                ErrorCode::TooManyEntries,
                prefix.to_owned(),
                format!("{name} has {total} entries; at most {max} are accepted"),
            );
            return None;
        }
    }

    let entries = doc.arenas.entries.get(stored.clone()).unwrap_or_default();
    let mut scratch = Scratch::default();
    let mut facts: Vec<EntryFacts<'d>> = Vec::with_capacity(entries.len());
    for (i, item) in entries.iter().enumerate() {
        if errs.is_full() {
            // Nothing more can be reported; the change is rejected anyway.
            return None;
        }
        facts.push(check_entry(
            doc,
            prefix,
            i,
            item,
            limits,
            &mut scratch,
            errs,
        ));
    }
    check_shift_overlaps(entries, &facts, prefix, errs);
    Some(EntriesOutcome { facts, stored })
}

/// Buffers reused across entries so checking one costs no allocation.
#[derive(Default)]
struct Scratch {
    /// Breaks as minute offsets, for the overlap sweep.
    breaks: Vec<sweep::Interval<()>>,
    /// Overrides with a window, for the conflict sweep.
    overrides: Vec<sweep::Typed>,
    /// Breaks and UNAVAILABLE windows in µs, for capacity.
    unavailable: Vec<(i64, i64)>,
}

fn entry_path(prefix: &str, i: usize, field: &str) -> String {
    format!("{prefix}/{i}{field}")
}

fn item_path(prefix: &str, i: usize, list: &str, j: usize, field: &str) -> String {
    format!("{prefix}/{i}/{list}/{j}{field}")
}

fn check_entry<'d>(
    doc: &'d Doc<'d>,
    prefix: &str,
    i: usize,
    item: &'d Item<RawEntry<'d>>,
    limits: &Limits,
    scratch: &mut Scratch,
    errs: &mut Errors,
) -> EntryFacts<'d> {
    let mut facts = EntryFacts {
        agent: None,
        shift: None,
        ok: false,
        capacity_us: 0,
    };
    let e = match item {
        Item::Obj(e) => e,
        Item::Wrong(kind) => {
            errs.push(
                ErrorCode::InvalidField,
                entry_path(prefix, i, ""),
                format!("entry {i} is {}; expected an object", kind.described()),
            );
            return facts;
        }
    };
    let errors_before = errs.len();

    facts.agent = check_agent_id(&e.agent_id, prefix, i, errs);
    let start = check_datetime(
        &e.start,
        || entry_path(prefix, i, "/startDateTime"),
        "startDateTime",
        errs,
    );
    let end = check_datetime(
        &e.end,
        || entry_path(prefix, i, "/endDateTime"),
        "endDateTime",
        errs,
    );
    if let (Some((start_text, s)), Some((end_text, en))) = (start, end) {
        if en <= s {
            errs.push(
                ErrorCode::EndNotAfterStart,
                entry_path(prefix, i, "/endDateTime"),
                format!("endDateTime {end_text} is not after startDateTime {start_text}"),
            );
        } else {
            let length = i128::from(en) - i128::from(s);
            let max = i128::from(limits.max_shift_minutes) * i128::from(MICROS_PER_MINUTE);
            if length > max {
                errs.push(
                    ErrorCode::ShiftTooLong,
                    entry_path(prefix, i, ""),
                    format!(
                        "the shift from {start_text} to {end_text} lasts {} minutes; at most {} are allowed",
                        minutes_text(length),
                        limits.max_shift_minutes
                    ),
                );
            }
            facts.shift = Some((s, en));
        }
    }

    scratch.breaks.clear();
    scratch.overrides.clear();
    scratch.unavailable.clear();
    check_breaks(doc, e, prefix, i, facts.shift, scratch, errs);
    check_overrides(doc, e, prefix, i, facts.shift, scratch, errs);

    facts.ok = errs.len() == errors_before;
    if let (true, Some((s, en))) = (facts.ok, facts.shift) {
        let covered = sweep::union_length(&mut scratch.unavailable, s, en);
        facts.capacity_us = (en - s).saturating_sub(covered).max(0);
    }
    facts
}

fn check_agent_id<'a>(
    v: &'a Scalar<'_>,
    prefix: &str,
    i: usize,
    errs: &mut Errors,
) -> Option<&'a str> {
    const EXPECTED: &str =
        "a non-empty string of at most 128 characters without control characters";
    let path = || entry_path(prefix, i, "/agentId");
    if v.is_unset() {
        errs.missing(path(), "agentId", EXPECTED);
        return None;
    }
    let Some(s) = v.as_str() else {
        errs.wrong_type(path(), "agentId", v, EXPECTED);
        return None;
    };
    // The ASCII fast path matters: this runs for every entry.
    let (chars, control) = if s.is_ascii() {
        (s.len(), s.bytes().any(|b| b.is_ascii_control()))
    } else {
        (s.chars().count(), s.chars().any(char::is_control))
    };
    let problem = if s.is_empty() {
        "agentId is empty".to_owned()
    } else if chars > MAX_ID_CHARS {
        format!("agentId is {chars} characters long")
    } else if control {
        format!("agentId {} contains a control character", show_str(s))
    } else {
        return Some(s);
    };
    errs.push(
        ErrorCode::InvalidField,
        path(),
        format!("{problem}; expected {EXPECTED}"),
    );
    None
}

/// A list of sub-objects (`breaks`, `availabilityOverrides`): its stored
/// items with their index in the list, or nothing when absent or malformed.
fn sub_items<'d, T>(
    list: &List,
    arena: &'d [Item<T>],
    prefix: &str,
    i: usize,
    name: &str,
    errs: &mut Errors,
) -> &'d [Item<T>] {
    match list {
        List::Absent | List::Wrong(Kind::Null) => &[],
        List::Wrong(kind) => {
            errs.push(
                ErrorCode::InvalidField,
                entry_path(prefix, i, &format!("/{name}")),
                format!(
                    "{name} is {}; expected an array of objects",
                    kind.described()
                ),
            );
            &[]
        }
        List::Items { stored, .. } => arena.get(stored.clone()).unwrap_or_default(),
    }
}

/// Where a break or an override sits, for its error paths.
#[derive(Clone, Copy)]
struct At<'p> {
    prefix: &'p str,
    /// The entry's index.
    i: usize,
    list: &'static str,
    /// The item's index in its list.
    j: usize,
}

impl At<'_> {
    fn path(&self, field: &str) -> String {
        item_path(self.prefix, self.i, self.list, self.j, field)
    }
}

fn check_breaks(
    doc: &Doc<'_>,
    e: &RawEntry<'_>,
    prefix: &str,
    i: usize,
    shift: Option<(i64, i64)>,
    scratch: &mut Scratch,
    errs: &mut Errors,
) {
    let items = sub_items(&e.breaks, &doc.arenas.breaks, prefix, i, "breaks", errs);
    for (j, item) in items.iter().enumerate() {
        if errs.is_full() {
            return;
        }
        let at = At {
            prefix,
            i,
            list: "breaks",
            j,
        };
        match item {
            Item::Obj(b) => check_break(b, at, shift, scratch, errs),
            Item::Wrong(kind) => errs.push(
                ErrorCode::InvalidField,
                at.path(""),
                format!("break {j} is {}; expected an object", kind.described()),
            ),
        }
    }
    for (later, earlier) in sweep::overlaps(&mut scratch.breaks) {
        let (Some(a), Some(b)) = (minute_range(items, later), minute_range(items, earlier)) else {
            continue;
        };
        errs.push(
            ErrorCode::OverlappingBreaks,
            item_path(prefix, i, "breaks", later, ""),
            format!(
                "break {later} (minutes {}-{}) overlaps break {earlier} (minutes {}-{}) of the same entry",
                a.0, a.1, b.0, b.1
            ),
        );
    }
}

/// One break: its minutes, its place in the shift; a break with both
/// minutes joins the overlap sweep, one inside the shift the capacity.
fn check_break(
    b: &RawBreak<'_>,
    at: At<'_>,
    shift: Option<(i64, i64)>,
    scratch: &mut Scratch,
    errs: &mut Errors,
) {
    let j = at.j;
    let offset = check_minutes(
        &b.start_offset_minutes,
        || at.path("/startOffsetMinutes"),
        "startOffsetMinutes",
        errs,
    );
    let duration = check_minutes(
        &b.duration_minutes,
        || at.path("/durationMinutes"),
        "durationMinutes",
        errs,
    )
    .filter(|&d| {
        if d < 1 {
            errs.push(
                ErrorCode::InvalidField,
                at.path("/durationMinutes"),
                format!("durationMinutes {d} is too small; expected an integer of at least 1"),
            );
        }
        d >= 1
    });
    if let Some(off) = offset.filter(|&off| off < 0) {
        errs.push(
            ErrorCode::BreakOutsideShift,
            at.path(""),
            format!(
                "break {j} starts {} minutes before the shift; expected startOffsetMinutes of at least 0",
                i128::from(off).unsigned_abs()
            ),
        );
    }
    let (Some(off), Some(dur)) = (offset, duration) else {
        return;
    };
    let end_minute = i128::from(off) + i128::from(dur);
    if let (Some((s, en)), true) = (shift, off >= 0) {
        let end_us = i128::from(s) + end_minute * i128::from(MICROS_PER_MINUTE);
        if end_us > i128::from(en) {
            errs.push(
                ErrorCode::BreakOutsideShift,
                at.path(""),
                format!(
                    "break {j} ends {end_minute} minutes after the shift starts (offset {off} + duration {dur}), past the shift's end at {} minutes",
                    minutes_text(i128::from(en) - i128::from(s))
                ),
            );
        } else {
            // Inside the shift, so the µs values fit in i64.
            let start_us = i128::from(s) + i128::from(off) * i128::from(MICROS_PER_MINUTE);
            if let (Ok(a), Ok(b)) = (i64::try_from(start_us), i64::try_from(end_us)) {
                scratch.unavailable.push((a, b));
            }
        }
    }
    scratch.breaks.push(sweep::Interval {
        key: (),
        start: off,
        end: off.saturating_add(dur),
        index: j,
    });
}

fn minute_range(items: &[Item<RawBreak<'_>>], j: usize) -> Option<(i64, i128)> {
    match items.get(j)? {
        Item::Obj(b) => {
            let off = b.start_offset_minutes.as_integer()?;
            let dur = b.duration_minutes.as_integer()?;
            Some((off, i128::from(off) + i128::from(dur)))
        }
        Item::Wrong(_) => None,
    }
}

/// A break's minute field: present and an integer.
fn check_minutes(
    v: &Scalar<'_>,
    path: impl Fn() -> String,
    name: &str,
    errs: &mut Errors,
) -> Option<i64> {
    if v.is_unset() {
        errs.missing(path(), name, "an integer number of minutes");
        return None;
    }
    let n = v.as_integer();
    if n.is_none() {
        errs.push(
            ErrorCode::InvalidField,
            path(),
            format!(
                "{name} {} is not an integer; expected an integer number of minutes",
                v.shown()
            ),
        );
    }
    n
}

fn check_overrides(
    doc: &Doc<'_>,
    e: &RawEntry<'_>,
    prefix: &str,
    i: usize,
    shift: Option<(i64, i64)>,
    scratch: &mut Scratch,
    errs: &mut Errors,
) {
    const LIST: &str = "availabilityOverrides";
    let items = sub_items(&e.overrides, &doc.arenas.overrides, prefix, i, LIST, errs);
    for (j, item) in items.iter().enumerate() {
        if errs.is_full() {
            return;
        }
        let at = At {
            prefix,
            i,
            list: LIST,
            j,
        };
        match item {
            Item::Obj(o) => check_override(o, at, shift, scratch, errs),
            Item::Wrong(kind) => errs.push(
                ErrorCode::InvalidField,
                at.path(""),
                format!("override {j} is {}; expected an object", kind.described()),
            ),
        }
    }
    for (later, earlier) in sweep::conflicts(&mut scratch.overrides) {
        errs.push(
            ErrorCode::ConflictingOverrides,
            item_path(prefix, i, LIST, later, ""),
            format!(
                "override {later} ({}) overlaps override {earlier} ({}) of a different type; overrides of different types must not overlap",
                override_text(items, later),
                override_text(items, earlier)
            ),
        );
    }
}

/// One override: its type, reason and window; one with both joins the
/// conflict sweep, an UNAVAILABLE one the capacity too.
fn check_override(
    o: &RawOverride<'_>,
    at: At<'_>,
    shift: Option<(i64, i64)>,
    scratch: &mut Scratch,
    errs: &mut Errors,
) {
    let kind = check_override_type(&o.kind, || at.path("/type"), errs);
    check_optional_string(&o.reason, || at.path("/reason"), "reason", errs);
    let window = match (o.start.is_unset(), o.end.is_unset()) {
        (true, true) => shift,
        (false, true) | (true, false) => {
            check_half_window(o, at, errs);
            None
        }
        (false, false) => check_window(o, at, shift, errs),
    };
    if let (Some(kind), Some((s, en))) = (kind, window) {
        scratch.overrides.push(sweep::Typed {
            kind: kind as usize,
            start: s,
            end: en,
            index: at.j,
        });
        if kind == OverrideType::Unavailable {
            scratch.unavailable.push((s, en));
        }
    }
}

/// An override with `start` or `end` but not both: the one given is
/// checked, the other reported missing.
fn check_half_window(o: &RawOverride<'_>, at: At<'_>, errs: &mut Errors) {
    let j = at.j;
    let (given, missing) = if o.end.is_unset() {
        ("start", "end")
    } else {
        ("end", "start")
    };
    let given_value = if o.end.is_unset() { &o.start } else { &o.end };
    check_datetime(given_value, || at.path(&format!("/{given}")), given, errs);
    errs.push(
        ErrorCode::MissingField,
        at.path(&format!("/{missing}")),
        format!(
            "override {j} has {given} but no {missing}; expected both (a window) or neither (the whole shift)"
        ),
    );
}

/// An override's `start` and `end`: valid, in order and inside the shift.
/// The window is returned when both are valid and in order.
fn check_window(
    o: &RawOverride<'_>,
    at: At<'_>,
    shift: Option<(i64, i64)>,
    errs: &mut Errors,
) -> Option<(i64, i64)> {
    let j = at.j;
    let start = check_datetime(&o.start, || at.path("/start"), "start", errs);
    let end = check_datetime(&o.end, || at.path("/end"), "end", errs);
    let ((start_text, s), (end_text, en)) = (start?, end?);
    if en <= s {
        errs.push(
            ErrorCode::EndNotAfterStart,
            at.path("/end"),
            format!("end {end_text} is not after start {start_text}"),
        );
        return None;
    }
    if let Some((ss, se)) = shift {
        if s < ss || en > se {
            errs.push(
                ErrorCode::OverrideOutsideShift,
                at.path(""),
                format!(
                    "override {j} ({start_text} to {end_text}) is not inside its entry's shift; expected a window within startDateTime and endDateTime"
                ),
            );
        }
    }
    Some((s, en))
}

fn override_text(items: &[Item<RawOverride<'_>>], j: usize) -> String {
    match items.get(j) {
        Some(Item::Obj(o)) => {
            let kind = o.kind.as_str().unwrap_or("?");
            match (o.start.as_str(), o.end.as_str()) {
                (Some(s), Some(e)) => format!("{kind} {s} to {e}"),
                _ => format!("{kind}, whole shift"),
            }
        }
        _ => String::new(),
    }
}

fn check_override_type(
    v: &Scalar<'_>,
    path: impl Fn() -> String,
    errs: &mut Errors,
) -> Option<OverrideType> {
    const EXPECTED: &str = "\"UNAVAILABLE\", \"AVAILABLE\" or \"PARTIAL\"";
    if v.is_unset() {
        errs.missing(path(), "type", EXPECTED);
        return None;
    }
    match v.as_str() {
        Some("UNAVAILABLE") => Some(OverrideType::Unavailable),
        Some("AVAILABLE") => Some(OverrideType::Available),
        Some("PARTIAL") => Some(OverrideType::Partial),
        Some(s) => {
            errs.push(
                ErrorCode::InvalidOverrideType,
                path(),
                format!(
                    "override type {} is not known; expected {EXPECTED}",
                    show_str(s)
                ),
            );
            None
        }
        None => {
            errs.wrong_type(path(), "type", v, EXPECTED);
            None
        }
    }
}

fn check_shift_overlaps(
    entries: &[Item<RawEntry<'_>>],
    facts: &[EntryFacts<'_>],
    prefix: &str,
    errs: &mut Errors,
) {
    let mut spans: Vec<sweep::Interval<&str>> = facts
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let (start, end) = f.shift?;
            Some(sweep::Interval {
                key: f.agent?,
                start,
                end,
                index: i,
            })
        })
        .collect();
    for (later, earlier) in sweep::overlaps(&mut spans) {
        let agent = facts.get(later).and_then(|f| f.agent).unwrap_or_default();
        errs.push(
            ErrorCode::OverlappingShifts,
            entry_path(prefix, later, ""),
            format!(
                "entry {later} ({}) overlaps entry {earlier} ({}) for the same agent {}; an agent's shifts must not overlap",
                shift_text(entries, later),
                shift_text(entries, earlier),
                show_str(agent)
            ),
        );
    }
}

fn shift_text(entries: &[Item<RawEntry<'_>>], i: usize) -> String {
    match entries.get(i) {
        Some(Item::Obj(e)) => format!(
            "{} to {}",
            e.start.as_str().unwrap_or("?"),
            e.end.as_str().unwrap_or("?")
        ),
        _ => String::new(),
    }
}

/// Minutes of a µs length, with a fraction only when there is one.
fn minutes_text(us: i128) -> String {
    let per = i128::from(MICROS_PER_MINUTE);
    if us % per == 0 {
        (us / per).to_string()
    } else {
        #[allow(clippy::cast_precision_loss)]
        let m = us as f64 / per as f64;
        format!("{m:.3}")
    }
}

// ------------------------------------------------------------------- output

/// The owned entries as CXone will receive them, and their spans. Called
/// only when every rule passed, so every field read here is present and valid.
fn build_entries(
    doc: &Doc<'_>,
    outcome: &EntriesOutcome<'_>,
) -> (Vec<ScheduleEntry>, Vec<AgentInterval>) {
    let raw_entries = doc
        .arenas
        .entries
        .get(outcome.stored.clone())
        .unwrap_or_default();
    let mut entries = Vec::with_capacity(raw_entries.len());
    let mut spans = Vec::with_capacity(raw_entries.len());
    for (item, facts) in raw_entries.iter().zip(&outcome.facts) {
        let (Item::Obj(e), Some((start_us, end_us))) = (item, facts.shift) else {
            continue;
        };
        let agent_id = e.agent_id.as_str().unwrap_or_default().to_owned();
        let breaks = list_items(&e.breaks, &doc.arenas.breaks)
            .iter()
            .filter_map(|b| match b {
                Item::Obj(b) => Some(Break {
                    start_offset_minutes: b.start_offset_minutes.as_integer()?,
                    duration_minutes: b.duration_minutes.as_integer()?,
                }),
                Item::Wrong(_) => None,
            })
            .collect();
        let availability_overrides = list_items(&e.overrides, &doc.arenas.overrides)
            .iter()
            .filter_map(|o| match o {
                Item::Obj(o) => Some(AvailabilityOverride {
                    kind: match o.kind.as_str()? {
                        "UNAVAILABLE" => OverrideType::Unavailable,
                        "AVAILABLE" => OverrideType::Available,
                        _ => OverrideType::Partial,
                    },
                    reason: o.reason.as_str().map(str::to_owned),
                    start: o.start.as_str().map(str::to_owned),
                    end: o.end.as_str().map(str::to_owned),
                }),
                Item::Wrong(_) => None,
            })
            .collect();
        spans.push(AgentInterval {
            agent_id: agent_id.clone(),
            start_ms: start_us.div_euclid(1000),
            end_ms: end_us.div_euclid(1000),
        });
        entries.push(ScheduleEntry {
            agent_id,
            start_date_time: e.start.as_str().unwrap_or_default().to_owned(),
            end_date_time: e.end.as_str().unwrap_or_default().to_owned(),
            breaks,
            availability_overrides,
        });
    }
    (entries, spans)
}

fn list_items<'d, T>(list: &List, arena: &'d [Item<T>]) -> &'d [Item<T>] {
    match list {
        List::Items { stored, .. } => arena.get(stored.clone()).unwrap_or_default(),
        _ => &[],
    }
}
