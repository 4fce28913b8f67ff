//! Every rule of docs/contract.md §4 on both sides of its boundary.

use serde_json::{Value, json};

use super::Limits;
use super::*;

fn limits() -> Limits {
    Limits::default()
}

fn parse_with(
    body: &[u8],
    meta: &MessageMeta<'_>,
    limits: &Limits,
) -> Result<ValidChange, Rejection> {
    parse_change(body, meta, limits, ValidationMode::Strict)
}

fn parse(v: &Value) -> Result<ValidChange, Rejection> {
    parse_with(
        &serde_json::to_vec(v).unwrap(),
        &MessageMeta::default(),
        &limits(),
    )
}

fn ok(v: &Value) -> ValidChange {
    match parse(v) {
        Ok(c) => c,
        Err(r) => panic!("expected valid, got {:#?}", r.errors),
    }
}

/// `(code, path)` of every error, in order.
fn errors(v: &Value) -> Vec<(ErrorCode, String)> {
    match parse(v) {
        Ok(c) => panic!("expected invalid, got capacity {}", c.capacity_minutes),
        Err(r) => r.errors.into_iter().map(|e| (e.code, e.path)).collect(),
    }
}

fn one(code: ErrorCode, path: &str) -> Vec<(ErrorCode, String)> {
    vec![(code, path.to_owned())]
}

fn message(v: &Value) -> String {
    parse(v).expect_err("invalid").errors[0].message.clone()
}

/// The contract's example change: an 8 h shift, a 30 min break, 1 h training.
fn sample() -> Value {
    json!({
        "schemaVersion": 1,
        "changeId": "chg-2024-01-15-0001",
        "calendarId": "cal-emea-1",
        "occurredAt": "2024-01-14T09:00:00Z",
        "source": "rostering-x",
        "validationMode": "STRICT",
        "conflictResolution": "AUTO_RESOLVE",
        "minimumCapacityMinutes": 360,
        "entries": [{
            "agentId": "agent-42",
            "startDateTime": "2024-01-15T08:00:00.000Z",
            "endDateTime": "2024-01-15T16:00:00.000Z",
            "breaks": [{ "startOffsetMinutes": 240, "durationMinutes": 30 }],
            "availabilityOverrides": [{
                "type": "UNAVAILABLE", "reason": "TRAINING",
                "start": "2024-01-15T10:00:00.000Z", "end": "2024-01-15T11:00:00.000Z"
            }]
        }]
    })
}

fn entry(agent: &str, start: &str, end: &str) -> Value {
    json!({ "agentId": agent, "startDateTime": start, "endDateTime": end })
}

fn change(entries: Vec<Value>) -> Value {
    json!({ "calendarId": "cal-1", "entries": entries })
}

fn shift_8h() -> Value {
    entry("a", "2024-01-15T08:00:00Z", "2024-01-15T16:00:00Z")
}

fn with(mut v: Value, pointer: &str, value: Value) -> Value {
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer}")) = value;
    v
}

fn without(mut v: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    v.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key)
        .unwrap();
    v
}

fn with_breaks(breaks: Value) -> Value {
    let mut v = change(vec![shift_8h()]);
    v["entries"][0]["breaks"] = breaks;
    v
}

fn with_overrides(overrides: Value) -> Value {
    let mut v = change(vec![shift_8h()]);
    v["entries"][0]["availabilityOverrides"] = overrides;
    v
}

// ------------------------------------------------------------------ happy path

#[test]
fn the_contract_example_is_valid_with_its_capacity() {
    let c = ok(&sample());
    assert_eq!(c.change_id, "chg-2024-01-15-0001");
    assert_eq!(c.calendar_id, "cal-emea-1");
    assert_eq!(c.validation_mode, ValidationMode::Strict);
    assert_eq!(c.conflict_resolution, ConflictResolution::AutoResolve);
    assert_eq!(c.capacity_minutes, 480 - 30 - 60);
    assert_eq!(c.occurred_at.as_deref(), Some("2024-01-14T09:00:00Z"));
    assert_eq!(c.source.as_deref(), Some("rostering-x"));
    assert_eq!(
        c.entries,
        vec![ScheduleEntry {
            agent_id: "agent-42".into(),
            start_date_time: "2024-01-15T08:00:00.000Z".into(),
            end_date_time: "2024-01-15T16:00:00.000Z".into(),
            breaks: vec![Break {
                start_offset_minutes: 240,
                duration_minutes: 30
            }],
            availability_overrides: vec![AvailabilityOverride {
                kind: OverrideType::Unavailable,
                reason: Some("TRAINING".into()),
                start: Some("2024-01-15T10:00:00.000Z".into()),
                end: Some("2024-01-15T11:00:00.000Z".into()),
            }],
        }]
    );
    assert_eq!(
        c.spans,
        vec![AgentInterval {
            agent_id: "agent-42".into(),
            start_ms: 1_705_305_600_000,
            end_ms: 1_705_334_400_000
        }]
    );
}

#[test]
fn date_times_pass_through_exactly_as_written() {
    let c = ok(&change(vec![entry(
        "a",
        "2024-01-15t10:00:00.5+02:00",
        "2024-01-15T16:00:00z",
    )]));
    assert_eq!(c.entries[0].start_date_time, "2024-01-15t10:00:00.5+02:00");
    assert_eq!(c.entries[0].end_date_time, "2024-01-15T16:00:00z");
    assert_eq!(c.spans[0].start_ms, 1_705_305_600_500);
}

#[test]
fn unknown_fields_are_ignored_and_dropped() {
    let mut v = sample();
    v["extra"] = json!({"deep": [[[[{"x": 1}]]]]});
    v["entries"][0]["color"] = json!("blue");
    v["entries"][0]["breaks"][0]["paid"] = json!(true);
    v["entries"][0]["availabilityOverrides"][0]["note"] = json!(null);
    let c = ok(&v);
    assert_eq!(c.entries, ok(&sample()).entries);
}

#[test]
fn defaults_apply_when_mode_and_resolution_are_absent() {
    let v = change(vec![shift_8h()]);
    let body = serde_json::to_vec(&v).unwrap();
    let c = parse_change(
        &body,
        &MessageMeta::default(),
        &limits(),
        ValidationMode::Lenient,
    )
    .unwrap();
    assert_eq!(c.validation_mode, ValidationMode::Lenient);
    assert_eq!(c.conflict_resolution, ConflictResolution::AutoResolve);
    let c = ok(&with(sample(), "/validationMode", json!("LENIENT")));
    assert_eq!(c.validation_mode, ValidationMode::Lenient);
}

#[test]
fn null_optional_fields_count_as_absent() {
    let mut v = change(vec![shift_8h()]);
    for k in [
        "changeId",
        "occurredAt",
        "source",
        "validationMode",
        "conflictResolution",
        "minimumCapacityMinutes",
        "schemaVersion",
    ] {
        v[k] = Value::Null;
    }
    v["entries"][0]["breaks"] = Value::Null;
    v["entries"][0]["availabilityOverrides"] =
        json!([{ "type": "AVAILABLE", "reason": null, "start": null, "end": null }]);
    ok(&v);
    assert_eq!(
        errors(&with(v, "/calendarId", Value::Null)),
        one(ErrorCode::MissingField, "/calendarId")
    );
}

#[test]
fn escaped_keys_and_strings_are_decoded() {
    let body = br#"{"calendar\u0049d":"cal-1","entries":[{"agentId":"a\u00e9","startDateTime":"2024-01-15T08:00:00Z","endDateTime":"2024-01-15T09:00:00Z"}]}"#;
    let c = parse_with(body, &MessageMeta::default(), &limits()).unwrap();
    assert_eq!(c.entries[0].agent_id, "aé");
}

#[test]
fn a_repeated_key_takes_the_last_value() {
    let body = br#"{"calendarId":"bad/id","calendarId":"cal-1","entries":[1],"entries":[{"agentId":"a","startDateTime":"2024-01-15T08:00:00Z","endDateTime":"2024-01-15T09:00:00Z"}]}"#;
    let c = parse_with(body, &MessageMeta::default(), &limits()).unwrap();
    assert_eq!(c.calendar_id, "cal-1");
    assert_eq!(c.entries.len(), 1);
}

// ------------------------------------------------------------- message level

#[test]
fn message_too_large_is_not_parsed() {
    let small = Limits {
        max_message_bytes: 10,
        ..limits()
    };
    let r = parse_with(b"{not json at all", &MessageMeta::default(), &small).unwrap_err();
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].code, ErrorCode::MessageTooLarge);
    assert_eq!(r.errors[0].path, "");
    // Exactly at the limit is fine.
    let exact = Limits {
        max_message_bytes: 2,
        ..limits()
    };
    let r = parse_with(b"{}", &MessageMeta::default(), &exact).unwrap_err();
    assert!(
        r.errors
            .iter()
            .all(|e| e.code != ErrorCode::MessageTooLarge)
    );
}

#[test]
fn content_types() {
    let body = serde_json::to_vec(&sample()).unwrap();
    for ct in [
        None,
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("Application/JSON;charset=UTF-8"),
        Some(" application/json "),
        Some(""),
    ] {
        let meta = MessageMeta {
            content_type: ct,
            message_id: None,
        };
        assert!(parse_with(&body, &meta, &limits()).is_ok(), "{ct:?}");
    }
    for ct in [
        "text/plain",
        "application/xml",
        "application/json-patch+json",
        "application/jsonx",
        "json",
    ] {
        let meta = MessageMeta {
            content_type: Some(ct),
            message_id: Some("m-1"),
        };
        let r = parse_with(&body, &meta, &limits()).unwrap_err();
        assert_eq!(r.errors.len(), 1, "{ct}");
        assert_eq!(r.errors[0].code, ErrorCode::UnsupportedContentType);
        assert_eq!(r.change_id, "m-1");
    }
}

#[test]
fn invalid_json() {
    for body in [
        &b""[..],
        b"{",
        b"{\"calendarId\": \"c\"} trailing",
        b"[1, 2]",
        b"42",
        b"\"a string\"",
        b"null",
        b"\xff\xfe{}",
        b"{\"x\": \"\xc3\x28\"}",
        b"{\"calendarId\": \"\\ud800\"}",
    ] {
        let r = parse_with(body, &MessageMeta::default(), &limits()).unwrap_err();
        assert_eq!(r.errors.len(), 1, "{body:?}");
        assert_eq!(r.errors[0].code, ErrorCode::InvalidJson, "{body:?}");
        assert_eq!(r.errors[0].path, "");
        assert_eq!(r.calendar_id, None);
    }
    let r = parse_with(b"[]", &MessageMeta::default(), &limits()).unwrap_err();
    assert_eq!(
        r.errors[0].message,
        "the top-level JSON value is an array; expected an object"
    );
}

#[test]
fn deep_nesting_never_overflows_the_stack() {
    let depth = 200_000;
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let unbalanced = "[".repeat(depth);
    let in_unknown = format!(r#"{{"calendarId":"c","x":{deep},"entries":[]}}"#);
    let in_known = format!(r#"{{"calendarId":{deep},"entries":[{{"agentId":{deep}}}]}}"#);
    let limits = Limits {
        max_message_bytes: usize::MAX,
        ..limits()
    };
    for body in [
        deep.as_str(),
        unbalanced.as_str(),
        in_unknown.as_str(),
        in_known.as_str(),
    ] {
        assert!(parse_with(body.as_bytes(), &MessageMeta::default(), &limits).is_err());
    }
    let r = parse_with(in_known.as_bytes(), &MessageMeta::default(), &limits).unwrap_err();
    assert_eq!(r.errors[0].code, ErrorCode::InvalidField);
}

// ------------------------------------------------------------ schema version

#[test]
fn schema_version() {
    ok(&with(sample(), "/schemaVersion", json!(1)));
    ok(&with(sample(), "/schemaVersion", json!(1.0)));
    ok(&without(sample(), "/schemaVersion"));
    for v in [
        json!("1"),
        json!(2),
        json!(0),
        json!(1.5),
        json!(true),
        json!([1]),
    ] {
        assert_eq!(
            errors(&with(sample(), "/schemaVersion", v.clone())),
            one(ErrorCode::UnsupportedSchemaVersion, "/schemaVersion"),
            "{v}"
        );
    }
}

#[test]
fn an_unsupported_schema_version_reports_nothing_else_but_keeps_ids() {
    let v = json!({ "schemaVersion": 2, "changeId": "c-9", "calendarId": "cal-2", "entries": "whatever" });
    let r = parse(&v).unwrap_err();
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.change_id, "c-9");
    assert_eq!(r.calendar_id.as_deref(), Some("cal-2"));
}

// ------------------------------------------------------------------- changeId

#[test]
fn change_id_fallbacks() {
    let v = change(vec![shift_8h()]);
    let body = serde_json::to_vec(&v).unwrap();
    let meta = MessageMeta {
        content_type: None,
        message_id: Some("msg-7"),
    };
    assert_eq!(
        parse_with(&body, &meta, &limits()).unwrap().change_id,
        "msg-7"
    );

    let empty_msg_id = MessageMeta {
        content_type: None,
        message_id: Some(""),
    };
    let c = parse_with(&body, &empty_msg_id, &limits()).unwrap();
    use sha2::Digest;
    let expected = format!("sha256-{}", hex::encode(sha2::Sha256::digest(&body)));
    assert_eq!(c.change_id, expected);
    assert_eq!(
        parse_with(&body, &MessageMeta::default(), &limits())
            .unwrap()
            .change_id,
        expected
    );

    // Also on rejections, and for bodies that are not even JSON.
    let r = parse_with(b"nope", &MessageMeta::default(), &limits()).unwrap_err();
    assert_eq!(
        r.change_id,
        format!("sha256-{}", hex::encode(sha2::Sha256::digest(b"nope")))
    );
    let r = parse_with(b"nope", &meta, &limits()).unwrap_err();
    assert_eq!(r.change_id, "msg-7");
}

#[test]
fn change_id_rules() {
    let id128 = "x".repeat(128);
    assert_eq!(
        ok(&with(sample(), "/changeId", json!(id128))).change_id,
        id128
    );
    let id128_multibyte = "é".repeat(128);
    ok(&with(sample(), "/changeId", json!(id128_multibyte)));
    for bad in [
        json!(""),
        json!("x".repeat(129)),
        json!(42),
        json!({"a": 1}),
    ] {
        let v = with(sample(), "/changeId", bad.clone());
        let body = serde_json::to_vec(&v).unwrap();
        let meta = MessageMeta {
            content_type: None,
            message_id: Some("m"),
        };
        let r = parse_with(&body, &meta, &limits()).unwrap_err();
        assert_eq!(
            r.errors
                .iter()
                .map(|e| (e.code, e.path.as_str()))
                .collect::<Vec<_>>(),
            vec![(ErrorCode::InvalidField, "/changeId")],
            "{bad}"
        );
        assert_eq!(r.change_id, "m", "an invalid changeId is not used");
        assert_eq!(r.calendar_id.as_deref(), Some("cal-emea-1"));
    }
}

// ----------------------------------------------------------------- calendarId

#[test]
fn calendar_id_rules() {
    ok(&with(sample(), "/calendarId", json!("A-z.0_9:x")));
    ok(&with(sample(), "/calendarId", json!("c".repeat(128))));
    assert_eq!(
        errors(&without(sample(), "/calendarId")),
        one(ErrorCode::MissingField, "/calendarId")
    );
    for bad in [
        json!(""),
        json!("c".repeat(129)),
        json!("cal/1"),
        json!("cal 1"),
        json!("cålendar"),
        json!(7),
    ] {
        let r = parse(&with(sample(), "/calendarId", bad.clone())).unwrap_err();
        assert_eq!(r.errors.len(), 1, "{bad}");
        assert_eq!(
            (r.errors[0].code, r.errors[0].path.as_str()),
            (ErrorCode::InvalidField, "/calendarId")
        );
        assert_eq!(r.calendar_id, None);
    }
}

// -------------------------------------------------------------- mode and such

#[test]
fn validation_mode_and_conflict_resolution() {
    for bad in [json!("strict"), json!("FAST"), json!(1)] {
        assert_eq!(
            errors(&with(sample(), "/validationMode", bad)),
            one(ErrorCode::InvalidField, "/validationMode")
        );
    }
    for bad in [json!("MANUAL"), json!("auto_resolve"), json!(false)] {
        assert_eq!(
            errors(&with(sample(), "/conflictResolution", bad)),
            one(ErrorCode::InvalidField, "/conflictResolution")
        );
    }
}

#[test]
fn occurred_at_is_a_date_time() {
    assert_eq!(
        errors(&with(sample(), "/occurredAt", json!("2024-01-14 09:00:00"))),
        one(ErrorCode::InvalidDatetime, "/occurredAt")
    );
    assert_eq!(
        errors(&with(sample(), "/occurredAt", json!(12))),
        one(ErrorCode::InvalidField, "/occurredAt")
    );
    assert_eq!(
        errors(&with(sample(), "/source", json!(12))),
        one(ErrorCode::InvalidField, "/source")
    );
}

#[test]
fn minimum_capacity() {
    // Capacity of the sample is 390.
    ok(&with(sample(), "/minimumCapacityMinutes", json!(390)));
    ok(&with(sample(), "/minimumCapacityMinutes", json!(0)));
    assert_eq!(
        errors(&with(sample(), "/minimumCapacityMinutes", json!(391))),
        one(ErrorCode::InsufficientCapacity, "/minimumCapacityMinutes")
    );
    assert_eq!(
        message(&with(sample(), "/minimumCapacityMinutes", json!(391))),
        "the change's capacity is 390 minutes, below minimumCapacityMinutes 391"
    );
    for bad in [json!(-1), json!(1.5), json!("360"), json!(1e300)] {
        assert_eq!(
            errors(&with(sample(), "/minimumCapacityMinutes", bad.clone())),
            one(ErrorCode::InvalidField, "/minimumCapacityMinutes"),
            "{bad}"
        );
    }
}

#[test]
fn insufficient_capacity_is_skipped_when_an_entry_is_invalid() {
    let v = with(sample(), "/minimumCapacityMinutes", json!(100_000));
    let v = with(v, "/entries/0/agentId", json!(""));
    assert_eq!(
        errors(&v),
        one(ErrorCode::InvalidField, "/entries/0/agentId")
    );
}

// -------------------------------------------------------------------- entries

#[test]
fn entries_list() {
    assert_eq!(
        errors(&without(sample(), "/entries")),
        one(ErrorCode::MissingField, "/entries")
    );
    assert_eq!(
        errors(&with(sample(), "/entries", Value::Null)),
        one(ErrorCode::MissingField, "/entries")
    );
    assert_eq!(
        errors(&with(sample(), "/entries", json!([]))),
        one(ErrorCode::InvalidField, "/entries")
    );
    assert_eq!(
        errors(&with(sample(), "/entries", json!({}))),
        one(ErrorCode::InvalidField, "/entries")
    );
    assert_eq!(
        errors(&with(sample(), "/entries", json!([7]))),
        one(ErrorCode::InvalidField, "/entries/0")
    );
}

#[test]
fn too_many_entries_skips_entry_checks_but_not_top_level_ones() {
    let small = Limits {
        max_entries_per_change: 2,
        ..limits()
    };
    let junk = json!({ "agentId": "" });
    let v = json!({ "calendarId": "bad calendar", "entries": [junk, junk, junk] });
    let r = parse_with(
        &serde_json::to_vec(&v).unwrap(),
        &MessageMeta::default(),
        &small,
    )
    .unwrap_err();
    let got: Vec<_> = r.errors.iter().map(|e| (e.code, e.path.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (ErrorCode::InvalidField, "/calendarId"),
            (ErrorCode::TooManyEntries, "/entries")
        ]
    );
    assert_eq!(
        r.errors[1].message,
        "entries has 3 entries; at most 2 are accepted"
    );
    // Exactly at the limit is checked normally.
    let v = change(vec![
        shift_8h(),
        entry("b", "2024-01-15T08:00:00Z", "2024-01-15T16:00:00Z"),
    ]);
    assert!(
        parse_with(
            &serde_json::to_vec(&v).unwrap(),
            &MessageMeta::default(),
            &small
        )
        .is_ok()
    );
}

#[test]
fn entry_required_fields() {
    let e = json!({});
    assert_eq!(
        errors(&change(vec![e])),
        vec![
            (ErrorCode::MissingField, "/entries/0/agentId".into()),
            (ErrorCode::MissingField, "/entries/0/startDateTime".into()),
            (ErrorCode::MissingField, "/entries/0/endDateTime".into()),
        ]
    );
}

#[test]
fn agent_id_rules() {
    ok(&change(vec![entry(
        &"a".repeat(128),
        "2024-01-15T08:00:00Z",
        "2024-01-15T09:00:00Z",
    )]));
    ok(&change(vec![entry(
        "agent é 42",
        "2024-01-15T08:00:00Z",
        "2024-01-15T09:00:00Z",
    )]));
    for bad in [
        json!(""),
        json!("a".repeat(129)),
        json!("a\u{0007}b"),
        json!("tab\there"),
        json!("a\u{85}"),
        json!(42),
    ] {
        let v = with(change(vec![shift_8h()]), "/entries/0/agentId", bad.clone());
        assert_eq!(
            errors(&v),
            one(ErrorCode::InvalidField, "/entries/0/agentId"),
            "{bad}"
        );
    }
}

#[test]
fn date_time_rules() {
    let cases = [
        ("2024-01-15T08:00:00", "no UTC offset"),
        ("2024-02-30T08:00:00Z", "day 30 does not exist in 2024-02"),
        ("2024-13-01T08:00:00Z", "month 13 does not exist"),
        ("2024-01-15T24:00:00Z", "hour 24 is out of range"),
        ("2024-01-15 08:00:00Z", "does not have the form"),
        ("15/01/2024 08:00", "does not have the form"),
    ];
    for (s, why) in cases {
        let v = with(
            change(vec![shift_8h()]),
            "/entries/0/startDateTime",
            json!(s),
        );
        let r = parse(&v).unwrap_err();
        assert_eq!(r.errors.len(), 1, "{s}");
        assert_eq!(r.errors[0].code, ErrorCode::InvalidDatetime);
        assert_eq!(r.errors[0].path, "/entries/0/startDateTime");
        assert!(
            r.errors[0].message.contains(why),
            "{s}: {}",
            r.errors[0].message
        );
        assert!(
            r.errors[0].message.contains("expected YYYY-MM-DDTHH:MM:SS"),
            "{}",
            r.errors[0].message
        );
    }
    let v = with(
        change(vec![shift_8h()]),
        "/entries/0/endDateTime",
        json!(1705305600),
    );
    assert_eq!(
        errors(&v),
        one(ErrorCode::InvalidField, "/entries/0/endDateTime")
    );
}

#[test]
fn end_not_after_start() {
    let v = change(vec![entry(
        "a",
        "2024-01-15T08:00:00Z",
        "2024-01-15T08:00:00Z",
    )]);
    assert_eq!(
        errors(&v),
        one(ErrorCode::EndNotAfterStart, "/entries/0/endDateTime")
    );
    assert_eq!(
        message(&v),
        "endDateTime 2024-01-15T08:00:00Z is not after startDateTime 2024-01-15T08:00:00Z"
    );
    let v = change(vec![entry(
        "a",
        "2024-01-15T08:00:00Z",
        "2024-01-15T07:59:59Z",
    )]);
    assert_eq!(
        errors(&v),
        one(ErrorCode::EndNotAfterStart, "/entries/0/endDateTime")
    );
    // Offsets normalised: 09:00+02:00 is 07:00Z, before 08:00Z.
    let v = change(vec![entry(
        "a",
        "2024-01-15T08:00:00Z",
        "2024-01-15T09:00:00+02:00",
    )]);
    assert_eq!(
        errors(&v),
        one(ErrorCode::EndNotAfterStart, "/entries/0/endDateTime")
    );
    ok(&change(vec![entry(
        "a",
        "2024-01-15T08:00:00Z",
        "2024-01-15T08:00:01Z",
    )]));
}

#[test]
fn fractional_seconds() {
    let v = change(vec![entry(
        "a",
        "2024-01-15T08:00:00.500Z",
        "2024-01-15T08:00:00.250Z",
    )]);
    assert_eq!(
        errors(&v),
        one(ErrorCode::EndNotAfterStart, "/entries/0/endDateTime")
    );
    let c = ok(&change(vec![entry(
        "a",
        "2024-01-15T08:00:00.000001Z",
        "2024-01-15T08:00:00.000002Z",
    )]));
    assert_eq!(c.capacity_minutes, 0);
    // 30.5 minutes twice: summed exactly, then rounded down once → 61, not 60.
    let c = ok(&change(vec![
        entry("a", "2024-01-15T08:00:00Z", "2024-01-15T08:30:30Z"),
        entry("b", "2024-01-15T08:00:00.5Z", "2024-01-15T08:30:30.5Z"),
    ]));
    assert_eq!(c.capacity_minutes, 61);
    assert_eq!(c.spans[1].start_ms % 1000, 500);
}

#[test]
fn shift_length_boundaries() {
    ok(&change(vec![entry(
        "a",
        "2024-01-15T00:00:00Z",
        "2024-01-16T00:00:00Z",
    )]));
    assert_eq!(
        ok(&change(vec![entry(
            "a",
            "2024-01-15T00:00:00Z",
            "2024-01-16T00:00:00Z"
        )]))
        .capacity_minutes,
        1440
    );
    for end in ["2024-01-16T00:01:00Z", "2024-01-16T00:00:00.001Z"] {
        let v = change(vec![entry("a", "2024-01-15T00:00:00Z", end)]);
        assert_eq!(
            errors(&v),
            one(ErrorCode::ShiftTooLong, "/entries/0"),
            "{end}"
        );
    }
    let v = change(vec![entry(
        "a",
        "2024-01-15T00:00:00Z",
        "2024-01-16T00:01:00Z",
    )]);
    assert_eq!(
        message(&v),
        "the shift from 2024-01-15T00:00:00Z to 2024-01-16T00:01:00Z lasts 1441 minutes; at most 1440 are allowed"
    );
    let tight = Limits {
        max_shift_minutes: 60,
        ..limits()
    };
    let v = change(vec![entry(
        "a",
        "2024-01-15T00:00:00Z",
        "2024-01-15T01:00:01Z",
    )]);
    assert!(
        parse_with(
            &serde_json::to_vec(&v).unwrap(),
            &MessageMeta::default(),
            &tight
        )
        .is_err()
    );
}

#[test]
fn dst_changes_inside_a_shift_use_instants() {
    // Europe/Berlin springs forward on 2024-03-31: 00:00+01:00 → 12:00+02:00 is 11 h.
    let c = ok(&change(vec![entry(
        "a",
        "2024-03-31T00:00:00+01:00",
        "2024-03-31T12:00:00+02:00",
    )]));
    assert_eq!(c.capacity_minutes, 660);
    // Midnight to midnight across spring-forward is 23 h: allowed.
    ok(&change(vec![entry(
        "a",
        "2024-03-31T00:00:00+01:00",
        "2024-04-01T00:00:00+02:00",
    )]));
    // Midnight to midnight across fall-back is 25 h: too long.
    let v = change(vec![entry(
        "a",
        "2024-10-27T00:00:00+02:00",
        "2024-10-28T00:00:00+01:00",
    )]);
    assert_eq!(errors(&v), one(ErrorCode::ShiftTooLong, "/entries/0"));
    // A break at wall-clock 05:00 local after the change is offset 240 min from 00:00+01:00.
    let mut v = change(vec![entry(
        "a",
        "2024-03-31T00:00:00+01:00",
        "2024-03-31T05:00:00+02:00",
    )]);
    v["entries"][0]["breaks"] = json!([{ "startOffsetMinutes": 230, "durationMinutes": 10 }]);
    assert_eq!(ok(&v).capacity_minutes, 230);
    v["entries"][0]["breaks"] = json!([{ "startOffsetMinutes": 230, "durationMinutes": 11 }]);
    assert_eq!(
        errors(&v),
        one(ErrorCode::BreakOutsideShift, "/entries/0/breaks/0")
    );
}

// --------------------------------------------------------------------- breaks

#[test]
fn break_at_the_shift_end_is_inside_and_one_minute_later_is_not() {
    assert_eq!(
        ok(&with_breaks(
            json!([{ "startOffsetMinutes": 450, "durationMinutes": 30 }])
        ))
        .capacity_minutes,
        450
    );
    let v = with_breaks(json!([{ "startOffsetMinutes": 451, "durationMinutes": 30 }]));
    assert_eq!(
        errors(&v),
        one(ErrorCode::BreakOutsideShift, "/entries/0/breaks/0")
    );
    assert!(
        message(&v).contains("past the shift's end at 480 minutes"),
        "{}",
        message(&v)
    );
    ok(&with_breaks(
        json!([{ "startOffsetMinutes": 0, "durationMinutes": 480 }]),
    ));
}

#[test]
fn negative_break_offset_is_outside() {
    let v = with_breaks(json!([{ "startOffsetMinutes": -1, "durationMinutes": 30 }]));
    assert_eq!(
        errors(&v),
        one(ErrorCode::BreakOutsideShift, "/entries/0/breaks/0")
    );
}

#[test]
fn break_minute_fields() {
    ok(&with_breaks(
        json!([{ "startOffsetMinutes": 60.0, "durationMinutes": 3e1 }]),
    ));
    ok(&with_breaks(
        json!([{ "startOffsetMinutes": 0, "durationMinutes": 1 }]),
    ));
    let cases = [
        (
            json!({ "startOffsetMinutes": 60 }),
            ErrorCode::MissingField,
            "/durationMinutes",
        ),
        (
            json!({ "durationMinutes": 30 }),
            ErrorCode::MissingField,
            "/startOffsetMinutes",
        ),
        (
            json!({ "startOffsetMinutes": 60, "durationMinutes": 0 }),
            ErrorCode::InvalidField,
            "/durationMinutes",
        ),
        (
            json!({ "startOffsetMinutes": 60, "durationMinutes": -5 }),
            ErrorCode::InvalidField,
            "/durationMinutes",
        ),
        (
            json!({ "startOffsetMinutes": 60, "durationMinutes": "30" }),
            ErrorCode::InvalidField,
            "/durationMinutes",
        ),
        (
            json!({ "startOffsetMinutes": 60, "durationMinutes": 30.5 }),
            ErrorCode::InvalidField,
            "/durationMinutes",
        ),
        (
            json!({ "startOffsetMinutes": 60, "durationMinutes": 1e300 }),
            ErrorCode::InvalidField,
            "/durationMinutes",
        ),
        (
            json!({ "startOffsetMinutes": "60", "durationMinutes": 30 }),
            ErrorCode::InvalidField,
            "/startOffsetMinutes",
        ),
        (
            json!({ "startOffsetMinutes": null, "durationMinutes": 30 }),
            ErrorCode::MissingField,
            "/startOffsetMinutes",
        ),
    ];
    for (b, code, field) in cases {
        let v = with_breaks(json!([b.clone()]));
        assert_eq!(
            errors(&v),
            one(code, &format!("/entries/0/breaks/0{field}")),
            "{b}"
        );
    }
    assert_eq!(
        errors(&with_breaks(json!([5]))),
        one(ErrorCode::InvalidField, "/entries/0/breaks/0")
    );
    assert_eq!(
        errors(&with_breaks(json!({}))),
        one(ErrorCode::InvalidField, "/entries/0/breaks")
    );
}

#[test]
fn huge_break_numbers_are_errors_not_panics() {
    for (off, dur) in [
        (json!(i64::MAX), json!(i64::MAX)),
        (json!(i64::MIN), json!(i64::MAX)),
        (json!(0), json!(i64::MAX)),
        (json!(u64::MAX), json!(1)),
        (json!(-9.3e18), json!(1)),
        (json!(1e300), json!(1e300)),
    ] {
        let v = with_breaks(json!([
            { "startOffsetMinutes": off, "durationMinutes": dur },
            { "startOffsetMinutes": off, "durationMinutes": dur }
        ]));
        assert!(parse(&v).is_err());
    }
}

#[test]
fn overlapping_breaks() {
    // Touching is fine.
    ok(&with_breaks(json!([
        { "startOffsetMinutes": 120, "durationMinutes": 15 },
        { "startOffsetMinutes": 135, "durationMinutes": 15 }
    ])));
    let v = with_breaks(json!([
        { "startOffsetMinutes": 240, "durationMinutes": 30 },
        { "startOffsetMinutes": 100, "durationMinutes": 20 },
        { "startOffsetMinutes": 269, "durationMinutes": 10 }
    ]));
    assert_eq!(
        errors(&v),
        one(ErrorCode::OverlappingBreaks, "/entries/0/breaks/2")
    );
    assert_eq!(
        message(&v),
        "break 2 (minutes 269-279) overlaps break 0 (minutes 240-270) of the same entry"
    );
    // The earlier-listed break sorted later is still reported at the later index.
    let v = with_breaks(json!([
        { "startOffsetMinutes": 250, "durationMinutes": 30 },
        { "startOffsetMinutes": 240, "durationMinutes": 30 }
    ]));
    assert_eq!(
        errors(&v),
        one(ErrorCode::OverlappingBreaks, "/entries/0/breaks/1")
    );
}

#[test]
fn break_checks_that_need_the_shift_are_skipped_without_it() {
    let mut v = change(vec![
        json!({ "agentId": "a", "startDateTime": "2024-01-15T08:00:00Z" }),
    ]);
    v["entries"][0]["breaks"] = json!([{ "startOffsetMinutes": 100000, "durationMinutes": 30 }]);
    assert_eq!(
        errors(&v),
        one(ErrorCode::MissingField, "/entries/0/endDateTime")
    );
    v["entries"][0]["endDateTime"] = json!("yesterday");
    assert_eq!(
        errors(&v),
        one(ErrorCode::InvalidDatetime, "/entries/0/endDateTime")
    );
    v["entries"][0]["endDateTime"] = json!("2024-01-15T07:00:00Z");
    assert_eq!(
        errors(&v),
        one(ErrorCode::EndNotAfterStart, "/entries/0/endDateTime")
    );
    // A negative offset needs no shift to be wrong.
    v["entries"][0]["breaks"] = json!([{ "startOffsetMinutes": -5, "durationMinutes": 30 }]);
    assert_eq!(errors(&v).len(), 2);
}

// ------------------------------------------------------------------ overrides

fn window(kind: &str, start: &str, end: &str) -> Value {
    json!({ "type": kind, "start": format!("2024-01-15T{start}Z"), "end": format!("2024-01-15T{end}Z") })
}

#[test]
fn override_type() {
    assert_eq!(
        errors(&with_overrides(json!([{ "type": "SICK" }]))),
        one(
            ErrorCode::InvalidOverrideType,
            "/entries/0/availabilityOverrides/0/type"
        )
    );
    assert_eq!(
        errors(&with_overrides(json!([{ "type": "unavailable" }]))),
        one(
            ErrorCode::InvalidOverrideType,
            "/entries/0/availabilityOverrides/0/type"
        )
    );
    assert_eq!(
        errors(&with_overrides(json!([{ "reason": "x" }]))),
        one(
            ErrorCode::MissingField,
            "/entries/0/availabilityOverrides/0/type"
        )
    );
    assert_eq!(
        errors(&with_overrides(json!([{ "type": 3 }]))),
        one(
            ErrorCode::InvalidField,
            "/entries/0/availabilityOverrides/0/type"
        )
    );
    assert_eq!(
        errors(&with_overrides(json!([{ "type": "PARTIAL", "reason": 3 }]))),
        one(
            ErrorCode::InvalidField,
            "/entries/0/availabilityOverrides/0/reason"
        )
    );
    assert_eq!(
        errors(&with_overrides(json!(["UNAVAILABLE"]))),
        one(
            ErrorCode::InvalidField,
            "/entries/0/availabilityOverrides/0"
        )
    );
}

#[test]
fn override_window_needs_both_ends_or_neither() {
    assert_eq!(
        errors(&with_overrides(
            json!([{ "type": "UNAVAILABLE", "start": "2024-01-15T09:00:00Z" }])
        )),
        one(
            ErrorCode::MissingField,
            "/entries/0/availabilityOverrides/0/end"
        )
    );
    assert_eq!(
        errors(&with_overrides(
            json!([{ "type": "UNAVAILABLE", "end": "2024-01-15T09:00:00" }])
        )),
        vec![
            (
                ErrorCode::InvalidDatetime,
                "/entries/0/availabilityOverrides/0/end".into()
            ),
            (
                ErrorCode::MissingField,
                "/entries/0/availabilityOverrides/0/start".into()
            ),
        ]
    );
    // Neither: the whole shift.
    assert_eq!(
        ok(&with_overrides(json!([{ "type": "UNAVAILABLE" }]))).capacity_minutes,
        0
    );
    assert_eq!(
        ok(&with_overrides(json!([{ "type": "AVAILABLE" }]))).capacity_minutes,
        480
    );
}

#[test]
fn override_end_not_after_start() {
    let v = with_overrides(json!([window("UNAVAILABLE", "10:00:00", "10:00:00")]));
    assert_eq!(
        errors(&v),
        one(
            ErrorCode::EndNotAfterStart,
            "/entries/0/availabilityOverrides/0/end"
        )
    );
}

#[test]
fn override_outside_shift() {
    ok(&with_overrides(json!([window(
        "UNAVAILABLE",
        "08:00:00",
        "16:00:00"
    )])));
    for (s, e) in [
        ("07:59:59", "09:00:00"),
        ("15:00:00", "16:00:00.001"),
        ("17:00:00", "18:00:00"),
    ] {
        let v = with_overrides(json!([window("UNAVAILABLE", s, e)]));
        assert_eq!(
            errors(&v),
            one(
                ErrorCode::OverrideOutsideShift,
                "/entries/0/availabilityOverrides/0"
            ),
            "{s}"
        );
    }
    // Offsets normalised: 10:00+02:00 is 08:00Z, the shift's start.
    let v = with_overrides(
        json!([{ "type": "PARTIAL", "start": "2024-01-15T10:00:00+02:00", "end": "2024-01-15T11:00:00+02:00" }]),
    );
    ok(&v);
}

#[test]
fn conflicting_overrides() {
    // Touching windows of different types are fine; overlapping same types too.
    ok(&with_overrides(json!([
        window("UNAVAILABLE", "09:00:00", "10:00:00"),
        window("AVAILABLE", "10:00:00", "11:00:00"),
        window("AVAILABLE", "10:30:00", "12:00:00"),
    ])));
    let v = with_overrides(json!([
        window("UNAVAILABLE", "09:00:00", "10:00:00"),
        window("PARTIAL", "12:00:00", "13:00:00"),
        window("AVAILABLE", "09:59:00", "11:00:00"),
    ]));
    assert_eq!(
        errors(&v),
        one(
            ErrorCode::ConflictingOverrides,
            "/entries/0/availabilityOverrides/2"
        )
    );
    assert!(
        message(&v).contains("overlaps override 0 (UNAVAILABLE"),
        "{}",
        message(&v)
    );
    // A whole-shift override conflicts with any window of another type.
    let v = with_overrides(
        json!([{ "type": "AVAILABLE" }, window("UNAVAILABLE", "09:00:00", "10:00:00")]),
    );
    assert_eq!(
        errors(&v),
        one(
            ErrorCode::ConflictingOverrides,
            "/entries/0/availabilityOverrides/1"
        )
    );
}

#[test]
fn capacity_is_the_union_of_breaks_and_unavailable_windows() {
    let mut v = change(vec![shift_8h()]);
    v["entries"][0]["breaks"] = json!([{ "startOffsetMinutes": 60, "durationMinutes": 30 }]); // 09:00-09:30
    v["entries"][0]["availabilityOverrides"] = json!([
        window("UNAVAILABLE", "09:15:00", "10:00:00"), // 15 min inside the break
        window("UNAVAILABLE", "09:45:00", "10:30:00"), // overlaps the previous one
        window("PARTIAL", "12:00:00", "13:00:00"),     // subtracts nothing
    ]);
    // Covered: 09:00-10:30 = 90 minutes.
    assert_eq!(ok(&v).capacity_minutes, 480 - 90);
    // Summed over entries.
    let mut v2 = v.clone();
    v2["entries"].as_array_mut().unwrap().push(entry(
        "b",
        "2024-01-15T08:00:00Z",
        "2024-01-15T09:00:00Z",
    ));
    assert_eq!(ok(&v2).capacity_minutes, 390 + 60);
}

// --------------------------------------------------------------------- shifts

#[test]
fn overlapping_shifts() {
    // Touching shifts of one agent are fine; another agent may overlap.
    ok(&change(vec![
        entry("a", "2024-01-15T08:00:00Z", "2024-01-15T16:00:00Z"),
        entry("a", "2024-01-15T16:00:00Z", "2024-01-15T20:00:00Z"),
        entry("b", "2024-01-15T08:00:00Z", "2024-01-15T16:00:00Z"),
    ]));
    let v = change(vec![
        entry("a", "2024-01-15T16:00:00Z", "2024-01-15T20:00:00Z"),
        entry("b", "2024-01-15T08:00:00Z", "2024-01-15T16:00:00Z"),
        entry("a", "2024-01-15T08:00:00Z", "2024-01-15T16:00:01Z"),
    ]);
    assert_eq!(errors(&v), one(ErrorCode::OverlappingShifts, "/entries/2"));
    assert!(
        message(&v)
            .starts_with("entry 2 (2024-01-15T08:00:00Z to 2024-01-15T16:00:01Z) overlaps entry 0"),
        "{}",
        message(&v)
    );
}

#[test]
fn offsets_that_hide_an_overlap() {
    // 17:00+02:00 is 15:00Z, inside 08:00Z-16:00Z.
    let v = change(vec![
        shift_8h(),
        entry(
            "a",
            "2024-01-15T17:00:00+02:00",
            "2024-01-15T20:00:00+02:00",
        ),
    ]);
    assert_eq!(errors(&v), one(ErrorCode::OverlappingShifts, "/entries/1"));
    // 18:00+02:00 is 16:00Z: touching.
    ok(&change(vec![
        shift_8h(),
        entry(
            "a",
            "2024-01-15T18:00:00+02:00",
            "2024-01-15T20:00:00+02:00",
        ),
    ]));
    // 11:00-05:00 is 16:00Z: touching; 10:59-05:00 overlaps.
    ok(&change(vec![
        shift_8h(),
        entry(
            "a",
            "2024-01-15T11:00:00-05:00",
            "2024-01-15T12:00:00-05:00",
        ),
    ]));
    let v = change(vec![
        shift_8h(),
        entry(
            "a",
            "2024-01-15T10:59:00-05:00",
            "2024-01-15T12:00:00-05:00",
        ),
    ]);
    assert_eq!(errors(&v), one(ErrorCode::OverlappingShifts, "/entries/1"));
}

#[test]
fn many_overlaps_are_reported_once_each_in_path_order() {
    let entries: Vec<Value> = (0..50)
        .rev()
        .map(|i| {
            entry(
                "a",
                &format!("2024-01-15T{:02}:00:00Z", i % 10),
                "2024-01-15T23:00:00Z",
            )
        })
        .collect();
    let errs = errors(&change(entries));
    assert_eq!(errs.len(), 49);
    let paths: Vec<_> = errs.iter().map(|(_, p)| p.clone()).collect();
    let mut sorted = paths.clone();
    sorted.sort_by_key(|p| p.trim_start_matches("/entries/").parse::<usize>().unwrap());
    assert_eq!(paths, sorted);
}

// ---------------------------------------------------------- several together

#[test]
fn every_error_is_reported_together_in_a_stable_order() {
    let v = json!({
        "calendarId": "bad calendar",
        "validationMode": "SOMETIMES",
        "entries": [
            { "agentId": "", "startDateTime": "2024-01-15T08:00:00Z", "endDateTime": "2024-01-15T16:00:00Z",
              "breaks": [{ "startOffsetMinutes": 470, "durationMinutes": 30 }],
              "availabilityOverrides": [{ "type": "VACATION" }] },
            { "agentId": "b", "startDateTime": "2024-01-15T08:00:00", "endDateTime": "2024-01-16T09:00:00Z" },
            { "agentId": "c", "startDateTime": "2024-01-15T08:00:00Z", "endDateTime": "2024-01-16T09:00:00Z" },
        ]
    });
    assert_eq!(
        errors(&v),
        vec![
            (ErrorCode::InvalidField, "/calendarId".into()),
            (ErrorCode::InvalidField, "/validationMode".into()),
            (ErrorCode::InvalidField, "/entries/0/agentId".into()),
            (ErrorCode::BreakOutsideShift, "/entries/0/breaks/0".into()),
            (
                ErrorCode::InvalidOverrideType,
                "/entries/0/availabilityOverrides/0/type".into()
            ),
            (
                ErrorCode::InvalidDatetime,
                "/entries/1/startDateTime".into()
            ),
            (ErrorCode::ShiftTooLong, "/entries/2".into()),
        ]
    );
    let r = parse(&v).unwrap_err();
    assert_eq!(r.primary_code(), ErrorCode::InvalidField);
    assert!(r.change_id.starts_with("sha256-"));
}

#[test]
fn messages_quote_hostile_values_briefly() {
    let v = with(
        sample(),
        "/calendarId",
        json!(format!("{}\n", "x".repeat(10_000))),
    );
    let m = message(&v);
    assert!(m.len() < 300, "{m}");
    assert!(!m.contains('\n'));
}

// --------------------------------------------------------------------- import

fn import_body() -> Value {
    json!({
        "targetCalendarId": "cal-1",
        "validationMode": "LENIENT",
        "conflictResolution": "AUTO_RESOLVE",
        "scheduleEntries": [sample()["entries"][0].clone(), entry("b", "2024-01-15T08:00:00+01:00", "2024-01-15T09:00:00+01:00")]
    })
}

fn import(v: &Value) -> Result<(ImportPayload, Vec<AgentInterval>), Vec<ValidationError>> {
    validate_import(&serde_json::to_vec(v).unwrap(), &limits())
}

fn import_errors(v: &Value) -> Vec<(ErrorCode, String)> {
    import(v)
        .unwrap_err()
        .into_iter()
        .map(|e| (e.code, e.path))
        .collect()
}

#[test]
fn import_payload_round_trips() {
    let (payload, spans) = import(&import_body()).unwrap();
    assert_eq!(payload.target_calendar_id, "cal-1");
    assert_eq!(payload.validation_mode, ValidationMode::Lenient);
    assert_eq!(
        payload.schedule_entries,
        ok(&sample())
            .entries
            .into_iter()
            .chain([ScheduleEntry {
                agent_id: "b".into(),
                start_date_time: "2024-01-15T08:00:00+01:00".into(),
                end_date_time: "2024-01-15T09:00:00+01:00".into(),
                breaks: vec![],
                availability_overrides: vec![],
            }])
            .collect::<Vec<_>>()
    );
    assert_eq!(spans[1].start_ms, 1_705_302_000_000);
    // What the worker sends is what the simulator accepts.
    let body = serde_json::to_vec(&payload).unwrap();
    assert_eq!(validate_import(&body, &limits()).unwrap().0, payload);
}

#[test]
fn import_payload_fields() {
    assert_eq!(
        import_errors(&json!({})),
        vec![
            (ErrorCode::MissingField, "/targetCalendarId".into()),
            (ErrorCode::MissingField, "/validationMode".into()),
            (ErrorCode::MissingField, "/conflictResolution".into()),
            (ErrorCode::MissingField, "/scheduleEntries".into()),
        ]
    );
    let v = json!({ "targetCalendarId": 1, "validationMode": "X", "conflictResolution": [], "scheduleEntries": [], "entries": [] });
    assert_eq!(
        import_errors(&v),
        vec![
            (ErrorCode::InvalidField, "/targetCalendarId".into()),
            (ErrorCode::InvalidField, "/validationMode".into()),
            (ErrorCode::InvalidField, "/conflictResolution".into()),
            (ErrorCode::InvalidField, "/scheduleEntries".into()),
        ]
    );
    assert_eq!(import_errors(&json!([])), one(ErrorCode::InvalidJson, ""));
}

#[test]
fn import_entry_errors_point_into_the_payload() {
    let mut v = import_body();
    v["scheduleEntries"][1]["breaks"] =
        json!([{ "startOffsetMinutes": 0, "durationMinutes": "5" }]);
    v["scheduleEntries"].as_array_mut().unwrap().push(entry(
        "agent-42",
        "2024-01-15T15:00:00Z",
        "2024-01-15T17:00:00Z",
    ));
    assert_eq!(
        import_errors(&v),
        vec![
            (
                ErrorCode::InvalidField,
                "/scheduleEntries/1/breaks/0/durationMinutes".into()
            ),
            (ErrorCode::OverlappingShifts, "/scheduleEntries/2".into()),
        ]
    );
}

#[test]
fn import_has_no_entry_limit_and_no_capacity_minimum() {
    let small = Limits {
        max_entries_per_change: 1,
        ..limits()
    };
    let mut v = import_body();
    v["minimumCapacityMinutes"] = json!(1_000_000);
    assert!(validate_import(&serde_json::to_vec(&v).unwrap(), &small).is_ok());
}

#[test]
fn hostile_input_gets_a_bounded_error_list() {
    let breaks = vec!["{}"; 200_000].join(",");
    let body = format!(
        r#"{{"calendarId":"c","entries":[{{"agentId":"a","startDateTime":"2024-01-15T08:00:00Z","endDateTime":"2024-01-15T16:00:00Z","breaks":[{breaks}]}}]}}"#
    );
    let r = parse_with(body.as_bytes(), &MessageMeta::default(), &limits()).unwrap_err();
    assert_eq!(r.errors.len(), MAX_ERRORS);
    assert_eq!(r.errors[0].path, "/entries/0/breaks/0/startOffsetMinutes");
}
