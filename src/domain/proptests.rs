//! Properties: validation never panics on any input, and the capacity of a
//! valid change is exactly the minutes not covered by breaks or UNAVAILABLE
//! windows (so never more than its total shift minutes).

use chrono::{DateTime, FixedOffset, SecondsFormat};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

use super::Limits;
use super::*;

const KEYS: &[&str] = &[
    "schemaVersion",
    "changeId",
    "calendarId",
    "occurredAt",
    "source",
    "validationMode",
    "conflictResolution",
    "minimumCapacityMinutes",
    "entries",
    "agentId",
    "startDateTime",
    "endDateTime",
    "breaks",
    "availabilityOverrides",
    "startOffsetMinutes",
    "durationMinutes",
    "type",
    "reason",
    "start",
    "end",
    "scheduleEntries",
    "targetCalendarId",
];

fn interesting_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("2024-01-15T08:00:00Z".to_owned()),
        Just("2024-01-15T16:00:00.5+02:00".to_owned()),
        Just("2024-02-30T08:00:00Z".to_owned()),
        Just("9999-12-31T23:59:59.999999999-23:59".to_owned()),
        Just("0000-01-01T00:00:00Z".to_owned()),
        Just("UNAVAILABLE".to_owned()),
        Just("AVAILABLE".to_owned()),
        Just("STRICT".to_owned()),
        Just("AUTO_RESOLVE".to_owned()),
        Just("cal-1".to_owned()),
        Just(String::new()),
        "[0-9:T.Z+-]{0,40}",
        ".{0,200}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-2000i64..3000).prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        Just(json!(1e300)),
        Just(json!(-0.0)),
        Just(json!(30.0)),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-zA-Z]{0,10}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        interesting_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..10)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// One generated entry: agent, start minute, length, offset, breaks and
/// override windows as minute ranges relative to the shift start.
#[derive(Clone, Debug)]
struct GenEntry {
    agent: usize,
    gap: i64,
    length: i64,
    offset_minutes: i32,
    breaks: Vec<(i64, i64)>,
    overrides: Vec<(usize, Option<(i64, i64)>)>,
}

/// Sorted, distinct cut points in [0, len] paired into disjoint (possibly
/// touching) ranges.
fn disjoint(len: i64, cuts: Vec<Index>) -> Vec<(i64, i64)> {
    let mut points: Vec<i64> = cuts
        .iter()
        .map(|i| i.index(len as usize + 1) as i64)
        .collect();
    points.sort_unstable();
    points.dedup();
    points.chunks_exact(2).map(|p| (p[0], p[1])).collect()
}

fn gen_entry() -> impl Strategy<Value = GenEntry> {
    (
        0usize..3,
        0i64..90,
        1i64..=1440,
        prop::sample::select(vec![0, 60, 120, -300, 330, 840, -720]),
        prop::collection::vec(any::<Index>(), 0..8),
        prop::collection::vec(any::<Index>(), 0..8),
        any::<bool>(),
        prop::collection::vec(any::<Index>(), 0..4),
        prop::collection::vec((any::<Index>(), any::<Index>()), 0..4),
    )
        .prop_map(
            |(agent, gap, length, offset_minutes, break_cuts, window_cuts, mixed, types, free)| {
                let breaks = disjoint(length, break_cuts);
                let overrides = if mixed {
                    // Different types only where windows are disjoint.
                    disjoint(length, window_cuts)
                        .into_iter()
                        .zip(types.iter().cycle())
                        .map(|(w, t)| (t.index(3), Some(w)))
                        .collect()
                } else {
                    // All UNAVAILABLE: free to overlap each other and breaks,
                    // and a window-less one covers the whole shift.
                    free.iter()
                        .map(|(a, b)| {
                            let (a, b) = (
                                a.index(length as usize + 1) as i64,
                                b.index(length as usize + 1) as i64,
                            );
                            let w = (a != b).then(|| (a.min(b), a.max(b)));
                            (0, w)
                        })
                        .collect()
                };
                GenEntry {
                    agent,
                    gap,
                    length,
                    offset_minutes,
                    breaks,
                    overrides,
                }
            },
        )
}

const BASE: i64 = 1_705_276_800; // 2024-01-15T00:00:00Z

fn stamp(minute: i64, offset_minutes: i32) -> String {
    let tz = FixedOffset::east_opt(offset_minutes * 60).unwrap();
    DateTime::from_timestamp(BASE + minute * 60, 0)
        .unwrap()
        .with_timezone(&tz)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A valid change by construction, and its capacity by brute force.
fn build(entries: &[GenEntry]) -> (Value, u64, u64) {
    let mut cursors = [0i64; 3];
    let mut json_entries = Vec::new();
    let (mut capacity, mut total) = (0u64, 0u64);
    for e in entries {
        let start = cursors[e.agent] + e.gap;
        let end = start + e.length;
        cursors[e.agent] = end;
        let mut covered = vec![false; e.length as usize];
        for &(a, b) in &e.breaks {
            covered[a as usize..b as usize].fill(true);
        }
        let types = ["UNAVAILABLE", "AVAILABLE", "PARTIAL"];
        let overrides: Vec<Value> = e
            .overrides
            .iter()
            .map(|&(t, w)| {
                let (a, b) = w.unwrap_or((0, e.length));
                if t == 0 {
                    covered[a as usize..b as usize].fill(true);
                }
                match w {
                    Some((a, b)) => json!({
                        "type": types[t],
                        "start": stamp(start + a, e.offset_minutes),
                        "end": stamp(start + b, e.offset_minutes)
                    }),
                    None => json!({ "type": types[t] }),
                }
            })
            .collect();
        capacity += covered.iter().filter(|c| !**c).count() as u64;
        total += e.length as u64;
        json_entries.push(json!({
            "agentId": format!("agent-{}", e.agent),
            "startDateTime": stamp(start, e.offset_minutes),
            "endDateTime": stamp(end, e.offset_minutes),
            "breaks": e.breaks.iter().map(|&(a, b)| json!({ "startOffsetMinutes": a, "durationMinutes": b - a })).collect::<Vec<_>>(),
            "availabilityOverrides": overrides,
        }));
    }
    let change = json!({ "calendarId": "cal-1", "entries": json_entries });
    (change, capacity, total)
}

fn valid_change() -> impl Strategy<Value = (Value, u64, u64)> {
    prop::collection::vec(gen_entry(), 1..12).prop_map(|entries| build(&entries))
}

/// Every JSON Pointer into `v`, so mutations can reach any depth.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{k}");
                pointers(child, p.clone(), out);
                out.push(p);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                pointers(child, p.clone(), out);
                out.push(p);
            }
        }
        _ => {}
    }
}

fn check_no_panic(body: &[u8]) {
    let limits = Limits::default();
    for meta in [
        MessageMeta::default(),
        MessageMeta {
            content_type: Some("application/json; charset=utf-8"),
            message_id: Some("m"),
        },
    ] {
        if let Ok(c) = parse_change(body, &meta, &limits, ValidationMode::Strict) {
            let total_us: i64 = c
                .entries
                .iter()
                .map(|e| {
                    let s = DateTime::parse_from_rfc3339(&e.start_date_time).unwrap();
                    let en = DateTime::parse_from_rfc3339(&e.end_date_time).unwrap();
                    en.timestamp_micros() - s.timestamp_micros()
                })
                .sum();
            assert!(c.capacity_minutes <= (total_us / 60_000_000) as u64);
            assert_eq!(c.spans.len(), c.entries.len());
        }
    }
    let _ = validate_import(body, &limits);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_json(v in arb_json()) {
        check_no_panic(&serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_no_panic(&bytes);
    }

    #[test]
    fn never_panics_on_mutated_changes(
        (change, _, _) in valid_change(),
        at in any::<Index>(),
        replacement in arb_json(),
    ) {
        let mut change = change;
        let mut all = Vec::new();
        pointers(&change, String::new(), &mut all);
        if !all.is_empty() {
            let p = &all[at.index(all.len())];
            if let Some(slot) = change.pointer_mut(p) {
                *slot = replacement;
            }
        }
        check_no_panic(&serde_json::to_vec(&change).unwrap());
        let mut import = json!({
            "targetCalendarId": "cal-1", "validationMode": "STRICT", "conflictResolution": "AUTO_RESOLVE"
        });
        import["scheduleEntries"] = change.get("entries").cloned().unwrap_or(Value::Null);
        check_no_panic(&serde_json::to_vec(&import).unwrap());
    }

    #[test]
    fn never_panics_on_corrupted_bytes(
        (change, _, _) in valid_change(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..6),
    ) {
        let mut body = serde_json::to_vec(&change).unwrap();
        for (at, byte) in edits {
            let i = at.index(body.len());
            body[i] = byte;
        }
        check_no_panic(&body);
    }

    #[test]
    fn capacity_of_valid_changes_is_exact_and_bounded((change, capacity, total) in valid_change()) {
        let body = serde_json::to_vec(&change).unwrap();
        let c = match parse_change(&body, &MessageMeta::default(), &Limits::default(), ValidationMode::Strict) {
            Ok(c) => c,
            Err(r) => panic!("generated change rejected: {:#?}\n{change:#}", r.errors),
        };
        prop_assert_eq!(c.capacity_minutes, capacity);
        prop_assert!(c.capacity_minutes <= total);
        // The simulator accepts what the worker accepts.
        let import = json!({
            "targetCalendarId": "cal-1", "validationMode": "STRICT",
            "conflictResolution": "AUTO_RESOLVE", "scheduleEntries": c.entries,
        });
        prop_assert!(validate_import(&serde_json::to_vec(&import).unwrap(), &Limits::default()).is_ok());
    }
}
