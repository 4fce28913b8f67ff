//! The scheduler's batching core without a broker: per calendar, changes
//! join the open batch while [`BatchRules::accepts`] says so (same mode, room
//! up to `batch.max_entries`, no overlapping entry for an agent), otherwise
//! the batch closes and a new one opens, exactly as the scheduler does.
//!
//! `cargo bench --bench batching`

use std::{collections::HashMap, hint::black_box};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use cxone_schedule_worker::{
    domain::{Limits, MessageMeta, ValidChange, ValidationMode, parse_change},
    pipeline::batch::BatchRules,
};
use serde_json::json;

/// `n` valid changes of `entries` entries each, interleaved over `calendars`,
/// agents and days chosen so that a calendar's changes never overlap (the
/// common case) unless `overlap_every` > 0 makes every such change repeat
/// the previous change's shift (forcing the batch to close).
fn changes(n: usize, calendars: usize, entries: usize, overlap_every: usize) -> Vec<ValidChange> {
    let limits = Limits {
        max_message_bytes: 1 << 20,
        max_entries_per_change: 1000,
        max_shift_minutes: 1440,
    };
    (0..n)
        .map(|i| {
            let cal = i % calendars;
            let k = if overlap_every > 0 && i % overlap_every == 0 && i >= calendars {
                i / calendars - 1
            } else {
                i / calendars
            };
            let list: Vec<_> = (0..entries)
                .map(|e| {
                    let slot = k * entries + e;
                    let day = 1 + (slot / 50) % 28;
                    let month = 1 + (slot / (50 * 28)) % 12;
                    let year = 2024 + slot / (50 * 28 * 12);
                    json!({
                        "agentId": format!("agent-{:03}", slot % 50),
                        "startDateTime": format!("{year}-{month:02}-{day:02}T08:00:00Z"),
                        "endDateTime": format!("{year}-{month:02}-{day:02}T16:00:00Z"),
                    })
                })
                .collect();
            let body = serde_json::to_vec(&json!({
                "schemaVersion": 1,
                "changeId": format!("chg-{i}"),
                "calendarId": format!("cal-{cal:03}"),
                "entries": list,
            }))
            .unwrap();
            let meta = MessageMeta {
                content_type: Some("application/json"),
                message_id: None,
            };
            parse_change(&body, &meta, &limits, ValidationMode::Strict).expect("valid change")
        })
        .collect()
}

/// Batches every change as the scheduler does; returns the batches closed.
fn batch_all(changes: Vec<ValidChange>, max_entries: usize) -> usize {
    let mut open: HashMap<String, (BatchRules, Vec<ValidChange>)> = HashMap::new();
    let mut closed = 0usize;
    for mut change in changes {
        let full = match open.get(&change.calendar_id) {
            Some((rules, _)) => !rules.accepts(&change, max_entries),
            None => false,
        };
        if full {
            open.remove(&change.calendar_id);
            closed += 1;
        }
        let (rules, members) = open
            .entry(change.calendar_id.clone())
            .or_insert_with(|| (BatchRules::new(&change), Vec::new()));
        rules.add(&mut change);
        let at_max = rules.entry_count() >= max_entries;
        members.push(change);
        if at_max {
            let id = members[0].calendar_id.clone();
            open.remove(&id);
            closed += 1;
        }
    }
    closed + open.len()
}

fn batching(c: &mut Criterion) {
    let mut group = c.benchmark_group("batching");
    let n = 20_000;
    for (name, calendars, entries, overlap_every) in [
        ("1-entry/100-calendars", 100, 1, 0),
        ("1-entry/100-calendars/overlap-1-in-50", 100, 1, 50),
        ("10-entries/40-calendars", 40, 10, 0),
    ] {
        let input = changes(n, calendars, entries, overlap_every);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("changes", name), &input, |b, input| {
            b.iter_batched(
                || input.clone(),
                |v| black_box(batch_all(v, 500)),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, batching);
criterion_main!(benches);
