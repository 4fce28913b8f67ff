//! The changes the benchmark publishes, and confirmed publishing.

use futures_util::{StreamExt, stream::FuturesUnordered};
use lapin::{BasicProperties, Channel, options::BasicPublishOptions};

use cxone_schedule_worker::domain;

use crate::{args::Order, error::BenchError};

/// `n` valid changes of one entry each: (changeId, calendarId, body). Change
/// k of a calendar is agent k mod 50, on day k / 50, 08:00–16:00 UTC, so no
/// two of a calendar overlap and batches fill up to `batch.max_entries`.
pub fn changes(
    tag: &str,
    n: usize,
    calendars: usize,
    order: Order,
    sorted_keys: bool,
) -> Vec<(String, String, Vec<u8>)> {
    let run = rand::random::<u32>();
    let per_cal = n.div_ceil(calendars);
    (0..n)
        .map(|i| {
            let (cal, k) = match order {
                Order::Interleaved => (i % calendars, i / calendars),
                Order::CalendarMajor => (i / per_cal, i % per_cal),
            };
            let id = format!("bench-{tag}-{run:08x}-{i}");
            let calendar = format!("bench-cal-{cal:03}");
            let day = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).expect("a date")
                + chrono::Days::new((k / 50) as u64);
            // Fields in the contract's order, compact, as a publisher
            // serialising its own types writes them (not sorted, as a
            // `serde_json::Value` would).
            let body = BenchChange {
                schema_version: 1,
                change_id: &id,
                calendar_id: &calendar,
                occurred_at: "2024-01-01T00:00:00Z",
                source: "bench",
                entries: [domain::ScheduleEntry {
                    agent_id: format!("agent-{:03}", k % 50),
                    start_date_time: format!("{day}T08:00:00Z"),
                    end_date_time: format!("{day}T16:00:00Z"),
                    breaks: vec![domain::Break {
                        start_offset_minutes: 240,
                        duration_minutes: 30,
                    }],
                    availability_overrides: Vec::new(),
                }],
            };
            let body = if sorted_keys {
                serde_json::to_vec(&serde_json::to_value(&body).expect("JSON")).expect("JSON")
            } else {
                serde_json::to_vec(&body).expect("JSON")
            };
            (id, calendar, body)
        })
        .collect()
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct BenchChange<'a> {
    schema_version: u32,
    change_id: &'a str,
    calendar_id: &'a str,
    occurred_at: &'a str,
    source: &'a str,
    entries: [domain::ScheduleEntry; 1],
}

/// A change's properties: JSON, persistent, its changeId as the message id.
pub fn change_props(id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(id.into())
}

/// Publishes with up to 2,000 confirms outstanding; fails if any is refused.
pub async fn publish_confirmed<'a>(
    ch: &Channel,
    messages: impl Iterator<Item = (&'a str, &'a str, &'a [u8], BasicProperties)>,
) -> Result<(), BenchError> {
    let mut pending = FuturesUnordered::new();
    let mut refused = 0usize;
    for (exchange, key, body, props) in messages {
        let c = ch
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?;
        pending.push(c);
        while pending.len() >= 2000 {
            if let Some(c) = pending.next().await
                && !c?.is_ack()
            {
                refused += 1;
            }
        }
    }
    while let Some(c) = pending.next().await {
        if !c?.is_ack() {
            refused += 1;
        }
    }
    if refused > 0 {
        return Err(BenchError::Refused(refused));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn changes_never_overlap_within_a_calendar() {
        let c = changes("t", 1000, 10, Order::Interleaved, false);
        let mut seen = std::collections::HashSet::new();
        for (_, cal, body) in &c {
            let v: Value = serde_json::from_slice(body).unwrap();
            let e = &v["entries"][0];
            assert!(seen.insert((
                cal.clone(),
                e["agentId"].as_str().unwrap().to_owned(),
                e["startDateTime"].as_str().unwrap().to_owned()
            )));
        }
    }
}
