//! samples/roster.ndjson: what the demo expects.

use super::*;

fn instant(v: &Json) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(v.as_str()?).ok()
}

/// docs/contract.md §4, enough of it to say whether a sample change is valid.
fn contract_errors(c: &Json) -> Vec<String> {
    let mut errs = Vec::new();
    if c.get("schemaVersion").is_some_and(|v| v != 1) {
        errs.push("UNSUPPORTED_SCHEMA_VERSION".to_owned());
    }
    match c["calendarId"].as_str() {
        None => errs.push("MISSING_FIELD calendarId".to_owned()),
        Some(id)
            if id.is_empty()
                || id.len() > 128
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)) =>
        {
            errs.push("INVALID_FIELD calendarId".to_owned())
        }
        _ => {}
    }
    if c.get("occurredAt").is_some() && instant(&c["occurredAt"]).is_none() {
        errs.push("INVALID_DATETIME occurredAt".to_owned());
    }
    let Some(entries) = c["entries"].as_array().filter(|e| !e.is_empty()) else {
        errs.push("MISSING_FIELD entries".to_owned());
        return errs;
    };
    let mut capacity = 0i64;
    let mut spans: Vec<(String, DateTime<FixedOffset>, DateTime<FixedOffset>)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let agent = e["agentId"].as_str().unwrap_or_default();
        if agent.is_empty() {
            errs.push(format!("MISSING_FIELD /entries/{i}/agentId"));
        }
        let (Some(start), Some(end)) = (instant(&e["startDateTime"]), instant(&e["endDateTime"]))
        else {
            errs.push(format!("INVALID_DATETIME /entries/{i}"));
            continue;
        };
        if end <= start {
            errs.push(format!("END_NOT_AFTER_START /entries/{i}"));
            continue;
        }
        let len = (end - start).num_minutes();
        if len > 1440 {
            errs.push(format!("SHIFT_TOO_LONG /entries/{i}"));
        }
        let mut breaks = Vec::new();
        for b in e["breaks"].as_array().into_iter().flatten() {
            let (Some(off), Some(dur)) = (
                b["startOffsetMinutes"].as_i64(),
                b["durationMinutes"].as_i64(),
            ) else {
                errs.push(format!("MISSING_FIELD /entries/{i}/breaks"));
                continue;
            };
            if dur < 1 {
                errs.push(format!("INVALID_FIELD /entries/{i}/breaks"));
            }
            if off < 0 || off + dur > len {
                errs.push(format!("BREAK_OUTSIDE_SHIFT /entries/{i}"));
            }
            breaks.push((off, off + dur));
        }
        breaks.sort();
        if breaks.windows(2).any(|w| w[1].0 < w[0].1) {
            errs.push(format!("OVERLAPPING_BREAKS /entries/{i}"));
        }
        let mut windows: Vec<(&str, i64, i64)> = Vec::new();
        for o in e["availabilityOverrides"].as_array().into_iter().flatten() {
            let kind = o["type"].as_str().unwrap_or_default();
            if !matches!(kind, "UNAVAILABLE" | "AVAILABLE" | "PARTIAL") {
                errs.push(format!("INVALID_OVERRIDE_TYPE /entries/{i}"));
                continue;
            }
            let (os, oe) = match (o.get("start"), o.get("end")) {
                (None, None) => (start, end),
                _ => match (instant(&o["start"]), instant(&o["end"])) {
                    (Some(s), Some(e)) => (s, e),
                    _ => {
                        errs.push(format!(
                            "INVALID_DATETIME /entries/{i}/availabilityOverrides"
                        ));
                        continue;
                    }
                },
            };
            if oe <= os {
                errs.push(format!(
                    "END_NOT_AFTER_START /entries/{i}/availabilityOverrides"
                ));
                continue;
            }
            if os < start || oe > end {
                errs.push(format!("OVERRIDE_OUTSIDE_SHIFT /entries/{i}"));
            }
            windows.push((kind, (os - start).num_minutes(), (oe - start).num_minutes()));
        }
        for (a, w) in windows.iter().enumerate() {
            for v in &windows[a + 1..] {
                if w.0 != v.0 && w.1 < v.2 && v.1 < w.2 {
                    errs.push(format!("CONFLICTING_OVERRIDES /entries/{i}"));
                }
            }
        }
        // Capacity: shift minus breaks minus UNAVAILABLE minutes outside breaks.
        let unavailable = (0..len)
            .filter(|m| {
                windows
                    .iter()
                    .any(|w| w.0 == "UNAVAILABLE" && w.1 <= *m && *m < w.2)
                    && !breaks.iter().any(|b| b.0 <= *m && *m < b.1)
            })
            .count() as i64;
        capacity += len - breaks.iter().map(|b| b.1 - b.0).sum::<i64>() - unavailable;
        if spans
            .iter()
            .any(|(a, s, e)| a == agent && *s < end && start < *e)
        {
            errs.push(format!("OVERLAPPING_SHIFTS /entries/{i}"));
        }
        spans.push((agent.to_owned(), start, end));
    }
    if let Some(min) = c["minimumCapacityMinutes"].as_i64()
        && capacity < min
    {
        errs.push(format!("INSUFFICIENT_CAPACITY {capacity} < {min}"));
    }
    errs
}

#[test]
fn sample_roster_is_a_week_of_valid_changes_plus_a_few_invalid_ones() {
    let f = "samples/roster.ndjson";
    let text = read(f);
    let settings = defaults();
    let mut ids = BTreeSet::new();
    let mut invalid = 0;
    let mut valid = 0;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() >= 200,
        "{f}: {} lines, expected at least 200",
        lines.len()
    );
    for (n, line) in lines.iter().enumerate() {
        let n = n + 1;
        let c: Json =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{f}: line {n}: not JSON: {e}"));
        assert!(c.is_object(), "{f}: line {n}: not a JSON object");
        let id = c["changeId"]
            .as_str()
            .unwrap_or_else(|| panic!("{f}: line {n}: no changeId"));
        assert!(
            ids.insert(id.to_owned()),
            "{f}: line {n}: changeId {id} repeated"
        );
        let errs = contract_errors(&c);
        if id.starts_with("demo-invalid-") {
            invalid += 1;
            assert!(
                !errs.is_empty(),
                "{f}: line {n}: {id} is meant to be rejected but breaks no rule of docs/contract.md §4"
            );
        } else {
            valid += 1;
            assert!(
                errs.is_empty(),
                "{f}: line {n}: {id} breaks docs/contract.md §4: {errs:?}"
            );
            let meta = MessageMeta {
                content_type: Some("application/json"),
                message_id: Some(id),
            };
            if let Err(r) = parse_change(
                line.as_bytes(),
                &meta,
                &settings.limits,
                settings.cxone.default_validation_mode,
            ) {
                panic!("{f}: line {n}: {id} is rejected by the worker: {r:?}");
            }
            assert_eq!(
                c["source"], "demo-rostering",
                "{f}: line {n}: source must be demo-rostering"
            );
        }
    }
    assert!(
        (5..=8).contains(&invalid),
        "{f}: {invalid} demo-invalid- changes, expected about 6"
    );
    assert!(valid >= 200, "{f}: only {valid} valid changes");
}
