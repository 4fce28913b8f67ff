//! `parse_change` from bytes over realistic 500-entry changes (one break and
//! one override each). Target: at least 1,000,000 entries per second on one core.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cxone_schedule_worker::domain::{
    Limits, MessageMeta, ValidationMode, parse_change, validate_import,
};

const ENTRIES: usize = 500;

/// 500 agents, one shift each, spread over the day with offsets as real
/// rostering systems write them.
fn change_body() -> Vec<u8> {
    let entries: Vec<serde_json::Value> = (0..ENTRIES)
        .map(|i| {
            let hour = 6 + i % 8;
            serde_json::json!({
                "agentId": format!("agent-{i:05}"),
                "startDateTime": format!("2024-01-15T{hour:02}:00:00.000+01:00"),
                "endDateTime": format!("2024-01-15T{:02}:00:00.000+01:00", hour + 8),
                "breaks": [{ "startOffsetMinutes": 240, "durationMinutes": 30 }],
                "availabilityOverrides": [{
                    "type": "UNAVAILABLE",
                    "reason": "TRAINING",
                    "start": format!("2024-01-15T{:02}:00:00.000+01:00", hour + 1),
                    "end": format!("2024-01-15T{:02}:30:00.000+01:00", hour + 1)
                }]
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 1,
        "changeId": "chg-bench-0001",
        "calendarId": "cal-emea-1",
        "occurredAt": "2024-01-14T09:00:00Z",
        "source": "rostering-x",
        "validationMode": "STRICT",
        "conflictResolution": "AUTO_RESOLVE",
        "minimumCapacityMinutes": 360,
        "entries": entries
    }))
    .expect("serialisable")
}

fn bench(c: &mut Criterion) {
    let body = change_body();
    let limits = Limits::default();
    let meta = MessageMeta {
        content_type: Some("application/json"),
        message_id: Some("msg-1"),
    };
    let change = parse_change(&body, &meta, &limits, ValidationMode::Strict).expect("valid");
    assert_eq!(change.entries.len(), ENTRIES);

    let mut group = c.benchmark_group("validation");
    group.throughput(Throughput::Elements(ENTRIES as u64));
    // The floor: serde_json only checking the syntax of the same bytes.
    group.bench_function("json_syntax_only/500_entries", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&body)))
    });
    group.bench_function("parse_change/500_entries", |b| {
        b.iter(|| parse_change(black_box(&body), &meta, &limits, ValidationMode::Strict))
    });

    let import = serde_json::to_vec(&serde_json::json!({
        "scheduleEntries": change.entries,
        "validationMode": "STRICT",
        "conflictResolution": "AUTO_RESOLVE",
        "targetCalendarId": "cal-emea-1"
    }))
    .expect("serialisable");
    group.bench_function("validate_import/500_entries", |b| {
        b.iter(|| validate_import(black_box(&import), &limits))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
