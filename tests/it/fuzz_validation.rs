//! Property tests over the change parser and validator (docs/contract.md §4):
//!
//! - arbitrary bytes and properties never panic, and a rejection always
//!   explains itself;
//! - structured mutations of valid changes (a field replaced by a value of any
//!   JSON type, removed, an entry duplicated or emptied) never panic, are
//!   deterministic, and every error's `path` points into the document;
//! - every generated valid change is accepted, with the capacity an
//!   independent minute-by-minute computation gives;
//! - whatever the worker accepts, the simulator's import validation accepts
//!   too (the worker never sends CXone a payload CXone would refuse).

use cxone_schedule_worker::domain::{
    ErrorCode, ImportPayload, Limits, MessageMeta, Rejection, ValidChange, ValidationMode,
    parse_change, validate_import,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn parse(body: &[u8], meta: &MessageMeta<'_>) -> Result<ValidChange, Rejection> {
    parse_change(body, meta, &Limits::default(), ValidationMode::Strict)
}

/// A valid entry: shift `[start, start+len)` minutes from 2024-01-15T00:00Z,
/// breaks and overrides inside it.
#[derive(Clone, Debug)]
struct GenEntry {
    agent: usize,
    start: i64,
    len: i64,
    /// (offset, duration), non-overlapping, inside the shift.
    breaks: Vec<(i64, i64)>,
    /// (type, offset, duration) windows inside the shift, one type per entry
    /// so they never conflict.
    overrides: Vec<(i64, i64)>,
    override_type: &'static str,
    /// Offset used for this entry's date-times ("Z" or "+02:00").
    plus_two: bool,
}

fn stamp(minutes: i64, plus_two: bool) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2024-01-15T00:00:00Z").unwrap();
    let t = base + chrono::Duration::minutes(minutes);
    if plus_two {
        let off = chrono::FixedOffset::east_opt(2 * 3600).unwrap();
        t.with_timezone(&off)
            .format("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    } else {
        t.with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }
}

fn gen_entry() -> impl Strategy<Value = GenEntry> {
    (
        0usize..4,
        0i64..(3 * 1440),
        30i64..=1440,
        prop::collection::vec((0i64..1440, 1i64..90), 0..4),
        prop::collection::vec((0i64..1440, 1i64..240), 0..3),
        prop::sample::select(vec!["UNAVAILABLE", "AVAILABLE", "PARTIAL"]),
        any::<bool>(),
    )
        .prop_map(
            |(agent, start, len, raw_breaks, raw_over, kind, plus_two)| {
                // Keep breaks inside the shift and disjoint from each other.
                let mut breaks: Vec<(i64, i64)> = Vec::new();
                for (off, dur) in raw_breaks {
                    let off = off % len;
                    let dur = dur.min(len - off).max(1);
                    if off + dur <= len
                        && breaks.iter().all(|&(o, d)| off + dur <= o || o + d <= off)
                    {
                        breaks.push((off, dur));
                    }
                }
                let overrides = raw_over
                    .into_iter()
                    .map(|(off, dur)| {
                        let off = off % len;
                        (off, dur.min(len - off).max(1))
                    })
                    .filter(|(off, dur)| off + dur <= len)
                    .collect();
                GenEntry {
                    agent,
                    start,
                    len,
                    breaks,
                    overrides,
                    override_type: kind,
                    plus_two,
                }
            },
        )
}

/// Valid changes: entries of one agent never overlap.
fn gen_change() -> impl Strategy<Value = Vec<GenEntry>> {
    prop::collection::vec(gen_entry(), 1..6).prop_map(|entries| {
        let mut kept: Vec<GenEntry> = Vec::new();
        for e in entries {
            let clash = kept.iter().any(|k| {
                k.agent == e.agent && k.start < e.start + e.len && e.start < k.start + k.len
            });
            if !clash {
                kept.push(e);
            }
        }
        kept
    })
}

fn to_json(entries: &[GenEntry]) -> Value {
    json!({
        "schemaVersion": 1,
        "changeId": "chg-prop",
        "calendarId": "cal-prop",
        "occurredAt": "2024-01-14T09:00:00Z",
        "validationMode": "LENIENT",
        "entries": entries.iter().map(|e| json!({
            "agentId": format!("agent-{}", e.agent),
            "startDateTime": stamp(e.start, e.plus_two),
            "endDateTime": stamp(e.start + e.len, !e.plus_two),
            "breaks": e.breaks.iter().map(|(o, d)| json!({
                "startOffsetMinutes": o, "durationMinutes": d,
            })).collect::<Vec<_>>(),
            "availabilityOverrides": e.overrides.iter().map(|(o, d)| json!({
                "type": e.override_type,
                "start": stamp(e.start + o, e.plus_two),
                "end": stamp(e.start + o + d, e.plus_two),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Capacity by counting minutes: in the shift, not in a break, not in an
/// UNAVAILABLE window.
fn capacity(entries: &[GenEntry]) -> u64 {
    entries
        .iter()
        .map(|e| {
            (0..e.len)
                .filter(|m| !e.breaks.iter().any(|&(o, d)| (o..o + d).contains(m)))
                .filter(|m| {
                    e.override_type != "UNAVAILABLE"
                        || !e.overrides.iter().any(|&(o, d)| (o..o + d).contains(m))
                })
                .count() as u64
        })
        .sum()
}

/// Interesting JSON values of every type.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![0i64, -1, 1, 1439, 1440, 1441, i64::MAX, i64::MIN])
            .prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        Just(json!(1.5)),
        ".{0,12}".prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "STRICT",
            "LENIENT",
            "AUTO_RESOLVE",
            "UNAVAILABLE",
            "AVAILABLE",
            "PARTIAL",
            "2024-01-15T08:00:00Z",
            "2024-01-15T08:00:00",
            "2024-02-30T08:00:00Z",
            "2024-01-15T08:00:00.123456789+02:00",
            "2024-01-15T25:00:00Z",
            "cal with spaces",
            "a\u{0}b",
            "é",
        ])
        .prop_map(Value::from),
        Just(Value::from("x".repeat(129))),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every JSON pointer into `v` (objects and arrays, the root excluded).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Replace(usize, Value),
    Remove(usize),
    DuplicateEntry(usize),
    Insert(usize, String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        2 => any::<usize>().prop_map(Mutation::Remove),
        1 => any::<usize>().prop_map(Mutation::DuplicateEntry),
        1 => (any::<usize>(), prop::sample::select(vec![
            "schemaVersion", "changeId", "calendarId", "occurredAt", "validationMode",
            "conflictResolution", "minimumCapacityMinutes", "entries", "agentId",
            "startDateTime", "endDateTime", "breaks", "availabilityOverrides",
            "startOffsetMinutes", "durationMinutes", "type", "start", "end", "reason",
        ]).prop_map(str::to_owned), any_json())
            .prop_map(|(i, k, v)| Mutation::Insert(i, k, v)),
    ]
}

fn apply(doc: &mut Value, m: &Mutation) {
    let mut ps = Vec::new();
    pointers(doc, String::new(), &mut ps);
    match m {
        Mutation::Replace(i, v) => {
            if ps.is_empty() {
                return;
            }
            if let Some(slot) = doc.pointer_mut(&ps[i % ps.len()]) {
                *slot = v.clone();
            }
        }
        Mutation::Remove(i) => {
            if ps.is_empty() {
                return;
            }
            let p = &ps[i % ps.len()];
            let (parent, last) = p.rsplit_once('/').unwrap();
            match doc.pointer_mut(parent) {
                Some(Value::Object(o)) => {
                    o.remove(&last.replace("~1", "/").replace("~0", "~"));
                }
                Some(Value::Array(a)) => {
                    if let Ok(idx) = last.parse::<usize>()
                        && idx < a.len()
                    {
                        a.remove(idx);
                    }
                }
                _ => {}
            }
        }
        Mutation::DuplicateEntry(i) => {
            if let Some(Value::Array(a)) = doc.pointer_mut("/entries")
                && !a.is_empty()
            {
                let e = a[i % a.len()].clone();
                a.push(e);
            }
        }
        Mutation::Insert(i, key, v) => {
            // Into the root or any object of the document.
            let mut objects = vec![String::new()];
            objects.extend(
                ps.iter()
                    .filter(|p| doc.pointer(p).is_some_and(Value::is_object))
                    .cloned(),
            );
            let at = &objects[i % objects.len()];
            if let Some(Value::Object(o)) = doc.pointer_mut(at) {
                o.insert(key.clone(), v.clone());
            }
        }
    }
}

/// `path` is "" or points into `doc`, or (for a missing field) at a key of
/// an object that is in `doc`.
fn path_is_in(doc: &Value, path: &str) -> bool {
    if path.is_empty() || doc.pointer(path).is_some() {
        return true;
    }
    match path.rsplit_once('/') {
        Some((parent, _)) => parent.is_empty() || doc.pointer(parent).is_some_and(Value::is_object),
        None => false,
    }
}

/// The payload the worker would send for one accepted change.
fn payload_of(c: &ValidChange) -> Vec<u8> {
    serde_json::to_vec(&ImportPayload {
        schedule_entries: c.entries.clone(),
        validation_mode: c.validation_mode,
        conflict_resolution: c.conflict_resolution,
        target_calendar_id: c.calendar_id.clone(),
    })
    .unwrap()
}

fn check_accepted_by_sim(c: &ValidChange) -> Result<(), TestCaseError> {
    let body = payload_of(c);
    match validate_import(&body, &Limits::default()) {
        Ok((payload, spans)) => {
            prop_assert_eq!(payload.schedule_entries.len(), c.entries.len());
            prop_assert_eq!(&spans, &c.spans);
            Ok(())
        }
        Err(errors) => Err(TestCaseError::fail(format!(
            "the worker accepted a change the simulator refuses: {errors:?}\n{}",
            String::from_utf8_lossy(&body)
        ))),
    }
}

fn check_rejection(doc: &Value, r: &Rejection) -> Result<(), TestCaseError> {
    prop_assert!(!r.errors.is_empty(), "a rejection lists its errors");
    for e in &r.errors {
        prop_assert!(!e.message.is_empty(), "{:?} has a message", e.code);
        prop_assert!(
            path_is_in(doc, &e.path),
            "{:?} path {:?} does not point into the change",
            e.code,
            e.path
        );
    }
    prop_assert_eq!(r.primary_code(), r.errors[0].code);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, .. ProptestConfig::default() })]

    /// Bytes of any kind, under any content type and message id: no panic,
    /// and a rejection says why.
    #[test]
    fn arbitrary_bytes_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..512),
        ct in prop::option::of(prop::sample::select(vec![
            "application/json", "application/json; charset=utf-8", "text/plain", "", ";;", "APPLICATION/JSON",
        ])),
        mid in prop::option::of(".{0,40}"),
    ) {
        let meta = MessageMeta { content_type: ct, message_id: mid.as_deref() };
        match parse(&body, &meta) {
            Ok(c) => {
                prop_assert!(!c.entries.is_empty());
                check_accepted_by_sim(&c)?;
            }
            Err(r) => {
                prop_assert!(!r.errors.is_empty());
                prop_assert!(!r.change_id.is_empty(), "a rejection always has a change id");
            }
        }
    }

    /// JSON-ish text near the grammar: truncations and splices of a valid
    /// change never panic.
    #[test]
    fn truncated_and_spliced_changes_never_panic(
        entries in gen_change(),
        cut in any::<prop::sample::Index>(),
        splice in ".{0,8}",
    ) {
        let text = serde_json::to_string(&to_json(&entries)).unwrap();
        let mut at = cut.index(text.len() + 1);
        while !text.is_char_boundary(at) { at -= 1; }
        for body in [text[..at].to_owned(), format!("{}{splice}{}", &text[..at], &text[at..])] {
            if let Ok(c) = parse(body.as_bytes(), &MessageMeta::default()) {
                check_accepted_by_sim(&c)?;
            }
        }
    }

    /// Generated valid changes are accepted, with the independently computed
    /// capacity, and the simulator accepts their import payload.
    #[test]
    fn generated_valid_changes_are_accepted_with_exact_capacity(entries in gen_change()) {
        let doc = to_json(&entries);
        let body = serde_json::to_vec(&doc).unwrap();
        let c = match parse(&body, &MessageMeta::default()) {
            Ok(c) => c,
            Err(r) => return Err(TestCaseError::fail(format!("rejected: {:?}\n{doc}", r.errors))),
        };
        prop_assert_eq!(c.entries.len(), entries.len());
        prop_assert_eq!(c.capacity_minutes, capacity(&entries));
        prop_assert_eq!(c.change_id.as_str(), "chg-prop");
        for s in &c.spans {
            prop_assert!(s.end_ms > s.start_ms);
        }
        check_accepted_by_sim(&c)?;
    }

    /// Structured mutations of a valid change: never a panic, always the same
    /// answer for the same bytes, every error path inside the document, and
    /// whatever is still accepted is accepted by the simulator too.
    #[test]
    fn mutated_valid_changes_are_judged_consistently(
        entries in gen_change(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let mut doc = to_json(&entries);
        for m in &mutations {
            apply(&mut doc, m);
        }
        let body = serde_json::to_vec(&doc).unwrap();
        let meta = MessageMeta { content_type: Some("application/json"), message_id: Some("m-1") };
        let first = parse(&body, &meta);
        let again = parse(&body, &meta);
        match (&first, &again) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(&a.errors, &b.errors),
            _ => return Err(TestCaseError::fail("two parses of the same bytes disagree")),
        }
        match first {
            Ok(c) => {
                prop_assert!(c.capacity_minutes <= c.spans.iter().map(|s| ((s.end_ms - s.start_ms) / 60_000) as u64).sum::<u64>());
                check_accepted_by_sim(&c)?;
            }
            Err(r) => {
                check_rejection(&doc, &r)?;
                if r.errors.iter().any(|e| e.code == ErrorCode::UnsupportedSchemaVersion) {
                    prop_assert!(r.errors.iter().all(|e| e.code == ErrorCode::UnsupportedSchemaVersion));
                }
            }
        }
    }
}
