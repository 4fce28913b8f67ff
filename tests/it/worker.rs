//! The worker end to end: real RabbitMQ, in-process simulator, in-process worker.

use std::time::Duration;

use crate::support::*;
use cxone_schedule_worker::{app, sim::SimConfig};
use lapin::BasicProperties;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// Random changes over several calendars, including overlapping ones; the
/// simulator's final roster must equal AUTO_RESOLVE applied in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_across_many_calendars_matches_auto_resolve() {
    let app = spawn_app(fast_sim(), "roster", &[("CSW__BATCH__MAX_ENTRIES", "40")]).await;

    let mut rng = StdRng::seed_from_u64(7);
    let mut model = RosterModel::default();
    let mut ids = Vec::new();
    for i in 0..400 {
        let cal = format!("cal-{}", rng.random_range(0..12));
        let n = rng.random_range(1..4);
        let mut entries = Vec::new();
        for a in 0..n {
            // Distinct agents within a change, so the change itself is valid.
            let agent = format!("agent-{}", (rng.random_range(0..4) * 3 + a) % 12);
            let day = rng.random_range(15..18);
            let start = rng.random_range(0..16);
            let len = rng.random_range(1..9);
            entries.push((agent, at(day, start), at(day, start + len)));
        }
        let refs: Vec<(&str, &str, &str)> = entries
            .iter()
            .map(|(a, s, e)| (a.as_str(), s.as_str(), e.as_str()))
            .collect();
        let id = format!("chg-{i}");
        // Both shapes: entries the worker parses again, and entries it copies.
        let body = if i % 2 == 0 {
            change(&id, &cal, &refs)
        } else {
            change_in_order(&id, &cal, &refs)
        };
        app.publisher.publish(&body).await;
        model.apply(&cal, &refs);
        ids.push(id);
    }
    app.collector.wait_completed(&ids, WAIT).await;
    for cal in model.calendars() {
        assert_eq!(
            actual(&app.sim.shifts(&cal)),
            model.expected(&cal),
            "roster of {cal}"
        );
    }
    let stats = app.sim.stats();
    assert_eq!(stats.concurrent_calendar_violations, 0);
    assert!(app.collector.events_of("schedule.import.failed").is_empty());
    // Batching: far fewer imports than changes.
    assert!(stats.imports_accepted < 200, "{stats:?}");
    // Each batch's `submitted` reaches listeners before its terminal event,
    // although the worker waits for the two confirms together.
    let mut submitted = std::collections::HashSet::new();
    for e in &app.collector.events() {
        let batch = e["data"]["batchId"].as_str().unwrap_or_default().to_owned();
        match e["type"].as_str() {
            Some("wfm.schedule.import.submitted") => {
                submitted.insert(batch);
            }
            Some("wfm.schedule.import.completed") => {
                assert!(
                    submitted.contains(&batch),
                    "{batch} completed before it was submitted"
                )
            }
            _ => {}
        }
    }

    assert_eq!(app.finish().await, 0, "every delivery acked");
}

/// A change overlapping the open batch closes it: the calendar's imports
/// follow delivery order, and a later non-overlapping change joins the new batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_change_starts_the_next_batch_in_order() {
    let app = spawn_app(
        fast_sim(),
        "overlap",
        &[("CSW__BATCH__MAX_WAIT_MS", "1500")],
    )
    .await;

    app.publisher
        .publish(&change("c1", "cal-x", &[("a1", &at(15, 8), &at(15, 16))]))
        .await;
    app.publisher
        .publish(&change("c2", "cal-x", &[("a1", &at(15, 12), &at(15, 20))]))
        .await;
    app.publisher
        .publish(&change("c3", "cal-x", &[("a2", &at(15, 8), &at(15, 16))]))
        .await;
    app.collector
        .events_until(WAIT, |e| {
            e.iter()
                .filter(|e| e["type"] == "wfm.schedule.import.completed")
                .count()
                == 2
        })
        .await;
    let completed = app.collector.events_of("schedule.import.completed");
    assert_eq!(completed[0]["data"]["changeIds"], json!(["c1"]));
    assert_eq!(completed[1]["data"]["changeIds"], json!(["c2", "c3"]));
    assert_eq!(completed[1]["data"]["entryCount"], 2);
    assert_eq!(
        actual(&app.sim.shifts("cal-x")),
        vec![
            ("a1".into(), at(15, 12), at(15, 20)),
            ("a2".into(), at(15, 8), at(15, 16)),
        ]
    );
    app.finish().await;
}

/// When the worker holds a full prefetch window and no import is running,
/// nothing more can arrive: it sends its open batches at once (the same
/// batches the timer would send) instead of idling until `max_wait_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_with_nothing_in_flight_sends_without_waiting() {
    let app = spawn_app(
        fast_sim(),
        "window",
        &[
            ("CSW__AMQP__PREFETCH", "6"),
            // Ten minutes: far beyond the test's deadline, so only the
            // window trigger can send these batches in time.
            ("CSW__BATCH__MAX_WAIT_MS", "600000"),
        ],
    )
    .await;

    // Two rounds of six changes, two per calendar: each round fills the
    // window exactly.
    let mut ids = Vec::new();
    for round in 0..2 {
        for i in 0..6 {
            let id = format!("w{round}-{i}");
            let cal = format!("cal-{}", i % 3);
            let agent = format!("a{round}-{i}");
            app.publisher
                .publish(&change(&id, &cal, &[(&agent, &at(15, 8), &at(15, 16))]))
                .await;
            ids.push(id);
        }
    }
    app.collector.wait_completed(&ids, WAIT).await;
    let completed = app.collector.events_of("schedule.import.completed");
    assert_eq!(completed.len(), 6, "one batch per calendar per window");
    for e in &completed {
        let changes = e["data"]["changeIds"].as_array().unwrap();
        assert_eq!(changes.len(), 2, "both of a calendar's changes: {e}");
    }
    for c in 0..3 {
        assert_eq!(app.sim.shifts(&format!("cal-{c}")).len(), 4);
    }
    assert_eq!(app.finish().await, 0, "nothing left unacked");
}

/// A batch closed by age while it waits for an import slot still takes a
/// later change of its calendar that fits: one import instead of two, and
/// the roster is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waiting_for_a_slot_takes_later_changes() {
    // One slot, held for a second and a half by calendar A's import.
    let app = spawn_app(
        SimConfig {
            job_base_ms: 1500,
            ..fast_sim()
        },
        "latejoin",
        &[
            ("CSW__IMPORTS__MAX_CONCURRENT", "1"),
            // Every batch closes by age almost at once.
            ("CSW__BATCH__MAX_WAIT_MS", "1"),
        ],
    )
    .await;

    app.publisher
        .publish(&change("a1", "cal-a", &[("a", &at(15, 8), &at(15, 16))]))
        .await;
    app.collector
        .events_until(WAIT, |e| {
            e.iter()
                .any(|e| e["type"] == "wfm.schedule.import.submitted")
        })
        .await;
    // cal-b's first batch closes by age a millisecond after b1 arrives and
    // waits for the slot. b2 goes once b1 has left the queue, so it reaches
    // the closed batch (were it ever to come within that millisecond, it
    // would join the open batch instead: the same outcome).
    app.publisher
        .publish(&change("b1", "cal-b", &[("b1", &at(15, 8), &at(15, 16))]))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while app.inbound_ready().await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "b1 never delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.publisher
        .publish(&change("b2", "cal-b", &[("b2", &at(15, 8), &at(15, 16))]))
        .await;
    let ids: Vec<String> = ["a1", "b1", "b2"].map(String::from).to_vec();
    app.collector.wait_completed(&ids, WAIT).await;
    let completed = app.collector.events_of("schedule.import.completed");
    assert_eq!(completed.len(), 2, "{completed:?}");
    let b = completed
        .iter()
        .find(|e| e["data"]["calendarId"] == "cal-b")
        .expect("cal-b completed");
    assert_eq!(b["data"]["changeIds"], json!(["b1", "b2"]));
    assert_eq!(app.sim.stats().imports_accepted, 2);
    assert_eq!(app.sim.shifts("cal-b").len(), 2);
    assert_eq!(app.finish().await, 0, "nothing left unacked");
}

/// The same changeId twice while the first is open: imported once, both acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_change_id_is_imported_once() {
    let app = spawn_app(fast_sim(), "dupe", &[("CSW__BATCH__MAX_WAIT_MS", "1500")]).await;

    let body = change("same", "cal-d", &[("a1", &at(15, 8), &at(15, 16))]);
    app.publisher.publish(&body).await;
    app.publisher.publish(&body).await;
    app.publisher
        .publish(&change(
            "other",
            "cal-d",
            &[("a2", &at(15, 8), &at(15, 16))],
        ))
        .await;
    app.collector
        .events_until(WAIT, |e| {
            e.iter()
                .any(|e| e["type"] == "wfm.schedule.import.completed")
        })
        .await;
    let completed = app.collector.events_of("schedule.import.completed");
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0]["data"]["changeIds"], json!(["same", "other"]));
    assert_eq!(app.sim.stats().imports_accepted, 1);
    assert_eq!(app.finish().await, 0, "both deliveries acked");
}

/// Every rejection that can reach the worker: event, dead-letter copy with
/// headers, ack; good changes around them keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_dead_lettered_and_acked() {
    let app = spawn_app(
        fast_sim(),
        "reject",
        &[("CSW__LIMITS__MAX_MESSAGE_BYTES", "4096")],
    )
    .await;
    let json_props = || BasicProperties::default().with_content_type("application/json".into());

    app.publisher
        .publish(&change(
            "good-1",
            "cal-r",
            &[("a1", &at(15, 8), &at(15, 16))],
        ))
        .await;
    app.publisher
        .publish_raw(
            "cal-r",
            b"this is not json",
            json_props().with_message_id("m-notjson".into()),
        )
        .await;
    let good2 = change("good-2", "cal-r", &[("a2", &at(15, 8), &at(15, 16))]);
    app.publisher
        .publish_raw(
            "cal-r",
            &good2,
            BasicProperties::default().with_content_type("text/plain".into()),
        )
        .await;
    app.publisher
        .publish_raw("cal-r", &vec![b' '; 5000], json_props())
        .await;
    app.publisher
        .publish(&change(
            "backwards",
            "cal-r",
            &[("a3", &at(15, 16), &at(15, 8))],
        ))
        .await;
    app.publisher
        .publish_raw(
            "cal-r",
            br#"{"schemaVersion":2,"calendarId":"cal-r","entries":[]}"#,
            json_props(),
        )
        .await;
    app.publisher
        .publish_raw("cal-r", b"[1,2,3]", json_props())
        .await;
    // No content type at all means JSON.
    app.publisher
        .publish_raw(
            "cal-r",
            &change("good-3", "cal-r", &[("a4", &at(15, 8), &at(15, 16))]),
            BasicProperties::default(),
        )
        .await;

    app.collector
        .events_until(WAIT, |e| {
            e.iter()
                .filter(|e| e["type"] == "wfm.schedule.change.rejected")
                .count()
                == 6
                && e.iter()
                    .any(|e| e["type"] == "wfm.schedule.import.completed")
        })
        .await;
    let mut codes: Vec<String> = app
        .collector
        .events_of("schedule.change.rejected")
        .iter()
        .map(|e| e["data"]["errors"][0]["code"].as_str().unwrap().to_owned())
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "END_NOT_AFTER_START",
            "INVALID_JSON",
            "INVALID_JSON",
            "MESSAGE_TOO_LARGE",
            "UNSUPPORTED_CONTENT_TYPE",
            "UNSUPPORTED_SCHEMA_VERSION",
        ]
    );
    let notjson = app
        .collector
        .events_of("schedule.change.rejected")
        .into_iter()
        .find(|e| e["data"]["messageId"] == "m-notjson")
        .expect("rejection carries the message id");
    assert_eq!(
        notjson["data"]["changeId"], "m-notjson",
        "changeId falls back to message_id"
    );
    assert_eq!(notjson["data"]["calendarId"], serde_json::Value::Null);

    app.collector.dead_letters(6, WAIT).await;
    let mut dead_codes: Vec<String> = app
        .collector
        .dead()
        .iter()
        .map(|d| header(&d.headers, "x-error-code").expect("x-error-code"))
        .collect();
    dead_codes.sort();
    assert_eq!(dead_codes, codes);
    assert!(
        app.collector
            .dead()
            .iter()
            .all(|d| header(&d.headers, "x-error-message").is_some())
    );
    assert!(
        app.collector
            .dead()
            .iter()
            .any(|d| d.body == b"this is not json")
    );

    app.collector
        .wait_completed(&["good-1".into(), "good-3".into()], WAIT)
        .await;
    let mut done = app.collector.change_ids_in("schedule.import.completed");
    done.sort();
    assert_eq!(done, ["good-1", "good-3"]);
    assert_eq!(app.finish().await, 0);
}

/// A job that ends FAILED: failed event, dead-letter copies, acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_job_dead_letters_its_changes() {
    let app = spawn_app(
        SimConfig {
            job_fail_rate: 1.0,
            ..fast_sim()
        },
        "jobfail",
        &[],
    )
    .await;
    app.publisher
        .publish(&change("f1", "cal-f", &[("a1", &at(15, 8), &at(15, 16))]))
        .await;
    app.publisher
        .publish(&change("f2", "cal-f", &[("a2", &at(15, 8), &at(15, 16))]))
        .await;
    app.collector
        .events_until(WAIT, |e| {
            e.iter().any(|e| e["type"] == "wfm.schedule.import.failed")
        })
        .await;
    let failed = app.collector.events_of("schedule.import.failed");
    assert_eq!(failed[0]["data"]["error"]["code"], "JOB_FAILED");
    assert!(failed[0]["data"]["jobId"].is_string());
    app.collector.dead_letters(2, WAIT).await;
    assert!(
        app.collector
            .dead()
            .iter()
            .all(|d| header(&d.headers, "x-error-code").as_deref() == Some("JOB_FAILED"))
    );
    assert!(app.sim.shifts("cal-f").is_empty());
    assert_eq!(app.finish().await, 0);
}

/// CXone rate-limits hard: the worker backs off and still imports everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_storm_still_imports_everything() {
    let app = spawn_app(
        SimConfig {
            rate_limit_per_min: 120,
            ..fast_sim()
        },
        "ratelimit",
        &[("CSW__IMPORTS__MAX_CONCURRENT", "6")],
    )
    .await;
    let mut model = RosterModel::default();
    for i in 0..30 {
        let cal = format!("cal-{}", i % 10);
        let (s, e) = (at(15, i % 20), at(15, i % 20 + 2));
        app.publisher
            .publish(&change(&format!("r{i}"), &cal, &[("a1", &s, &e)]))
            .await;
        model.apply(&cal, &[("a1", &s, &e)]);
    }
    let ids: Vec<String> = (0..30).map(|i| format!("r{i}")).collect();
    app.collector
        .wait_completed(&ids, Duration::from_secs(120))
        .await;
    assert!(app.collector.events_of("schedule.import.failed").is_empty());
    for cal in model.calendars() {
        assert_eq!(
            actual(&app.sim.shifts(&cal)),
            model.expected(&cal),
            "roster of {cal}"
        );
    }
    app.finish().await;
}

/// With a webhook secret, a signed webhook completes the job: polling is set
/// so slow here that only the webhook can finish the import in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_completes_imports_before_polling() {
    let app = spawn_app(
        fast_sim(),
        "webhook",
        &[
            ("CXONE_WEBHOOK_SECRET", "whsec-test"),
            ("CSW__IMPORTS__POLL_INITIAL_MS", "600000"),
            ("CSW__IMPORTS__POLL_MAX_MS", "600000"),
        ],
    )
    .await;
    app.sim
        .set_webhook(
            Some(format!("http://{}/webhooks/cxone", app.worker.http_addr)),
            Some("whsec-test".into()),
        )
        .expect("webhook app.settings are valid");
    app.publisher
        .publish(&change("w1", "cal-w", &[("a1", &at(15, 8), &at(15, 16))]))
        .await;
    app.collector
        .events_until(WAIT, |e| {
            e.iter()
                .any(|e| e["type"] == "wfm.schedule.import.completed")
        })
        .await;
    assert_eq!(app.sim.shifts("cal-w").len(), 1);

    // Unsigned or wrongly signed webhooks are refused.
    let url = format!("http://{}/webhooks/cxone", app.worker.http_addr);
    let http = reqwest::Client::new();
    let body = r#"{"eventType":"WFM_SCHEDULE_IMPORT_COMPLETED","jobId":"x","status":"COMPLETED"}"#;
    let r = http.post(&url).body(body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(&url)
        .header("X-CXone-Signature", "sha256=00ff")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(&url)
        .header(
            "X-CXone-Signature",
            cxone_schedule_worker::cxone::webhook::sign(b"whsec-test", body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    // A job this replica does not follow: accepted and relayed to the others.
    assert_eq!(r.status(), 202);
    let reply: serde_json::Value = r.json().await.unwrap();
    assert_eq!(reply["relayed"], true);

    app.finish().await;
}

/// Without a webhook secret the route does not exist; health and readiness answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_answer() {
    let app = spawn_app(fast_sim(), "http", &[]).await;
    let base = format!("http://{}", app.worker.http_addr);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {}",
            r.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = http
        .post(format!("{base}/webhooks/cxone"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.publisher
        .publish(&change("m1", "cal-m", &[("a1", &at(15, 8), &at(15, 16))]))
        .await;
    app.publisher
        .publish_raw("cal-m", b"{", BasicProperties::default())
        .await;
    app.collector
        .events_until(WAIT, |e| {
            e.iter()
                .any(|e| e["type"] == "wfm.schedule.import.completed")
                && e.iter()
                    .any(|e| e["type"] == "wfm.schedule.change.rejected")
        })
        .await;
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "csw_changes_received_total",
        "csw_changes_rejected_total{code=\"INVALID_JSON\"}",
        "csw_changes_imported_total",
        "csw_imports_total{outcome=\"completed\"}",
        "csw_stage_duration_seconds_bucket{stage=\"validation\"",
        "csw_stage_duration_seconds_bucket{stage=\"request\"",
        "csw_stage_duration_seconds_bucket{stage=\"polling\"",
        "csw_stage_duration_seconds_bucket{stage=\"total\"",
        "csw_batch_entries_bucket",
        "csw_cxone_requests_total{",
        "csw_imports_in_flight",
        "csw_token_refreshes_total",
        "csw_broker_connected",
        "csw_events_published_total{type=\"schedule.import.completed\"}",
        "csw_dead_lettered_total{code=\"INVALID_JSON\"}",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    app.finish().await;
}

/// A webhook that reaches a replica not following the job is relayed over the
/// broker to the one that does, which completes promptly (its polling is set
/// too slow to matter here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_for_another_replica_is_relayed_to_the_owner() {
    let sim = sim(fast_sim()).await;
    let owner_settings = settings(
        "relay",
        &sim.base_url(),
        &[
            ("CXONE_WEBHOOK_SECRET", "whsec-relay"),
            ("CSW__IMPORTS__POLL_INITIAL_MS", "600000"),
            ("CSW__IMPORTS__POLL_MAX_MS", "600000"),
        ],
    );
    let publisher = Publisher::new(&owner_settings).await;
    let collector = Collector::start(&owner_settings).await;
    // The other replica shares the events side but consumes another queue, so
    // it never owns an import.
    let mut other_settings = owner_settings.clone();
    other_settings.amqp.inbound_queue = format!("{}.other", owner_settings.amqp.inbound_queue);
    other_settings.worker.instance_id = format!("{}-other", owner_settings.worker.instance_id);
    let owner = app::start(owner_settings.clone()).await.unwrap();
    let other = app::start(other_settings.clone()).await.unwrap();
    sim.set_webhook(
        Some(format!("http://{}/webhooks/cxone", other.http_addr)),
        Some("whsec-relay".into()),
    )
    .unwrap();
    publisher
        .publish(&change("rl1", "cal-rl", &[("a1", &at(15, 8), &at(15, 16))]))
        .await;
    collector.wait_completed(&["rl1".to_owned()], WAIT).await;
    let completed = collector.events_of("schedule.import.completed");
    assert_eq!(
        completed[0]["source"],
        format!("/cxone-schedule-worker/{}", owner.instance_id),
        "the owner completed it"
    );
    for w in [owner, other] {
        w.shutdown();
        w.wait().await.unwrap();
    }
    let ch = publisher.channel().await;
    let _ = ch
        .queue_delete(
            other_settings.amqp.inbound_queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await;
    publisher.close().await;
    collector.cleanup().await;
    sim.shutdown().await;
}

/// W3C trace context travels: the inbound `traceparent` header reaches the
/// CXone requests and every event of the change (header and CloudEvents
/// attribute), so one trace runs from the publisher to the HR listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_travels_from_inbound_to_cxone_and_events() {
    let app = spawn_app(fast_sim(), "trace", &[]).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "traceparent".into(),
        lapin::types::AMQPValue::LongString(tp.into()),
    );
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(headers.clone());
    app.publisher
        .publish_raw(
            "cal-t",
            &change("tp1", "cal-t", &[("a1", &at(15, 8), &at(15, 16))]),
            props.clone(),
        )
        .await;
    app.publisher.publish_raw("cal-t", b"not json", props).await;
    app.collector
        .events_until(WAIT, |e| {
            e.iter()
                .any(|e| e["type"] == "wfm.schedule.import.completed")
                && e.iter()
                    .any(|e| e["type"] == "wfm.schedule.change.rejected")
        })
        .await;
    for e in &app.collector.events() {
        assert_eq!(e["traceparent"], tp, "event {}", e["type"]);
    }
    let headers = app.collector.event_headers();
    assert!(!headers.is_empty());
    assert!(
        headers
            .iter()
            .all(|h| header(h, "traceparent").as_deref() == Some(tp))
    );
    let seen = app.sim.traceparents_seen();
    assert!(!seen.is_empty() && seen.iter().all(|s| s == tp), "{seen:?}");
    app.finish().await;
}

/// Every validation code reaches the worker's rejection path with that code:
/// a rejected event (first error) and a dead-letter copy with `x-error-code`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_code_is_rejected_with_that_code() {
    let app = spawn_app(
        fast_sim(),
        "codes",
        &[("CSW__LIMITS__MAX_ENTRIES_PER_CHANGE", "3")],
    )
    .await;
    let shift = |agent: &str| json!({"agentId": agent, "startDateTime": "2024-01-15T08:00:00Z", "endDateTime": "2024-01-15T16:00:00Z"});
    let with = |mut entry: serde_json::Value, key: &str, value: serde_json::Value| {
        entry[key] = value;
        entry
    };
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("MISSING_FIELD", json!({"entries": [shift("a")]})),
        (
            "INVALID_FIELD",
            json!({"calendarId": "bad id!", "entries": [shift("a")]}),
        ),
        (
            "TOO_MANY_ENTRIES",
            json!({"calendarId": "c", "entries": [shift("a"), shift("b"), shift("c"), shift("d")]}),
        ),
        (
            "INVALID_DATETIME",
            json!({"calendarId": "c", "entries": [with(shift("a"), "startDateTime", json!("2024-01-15T08:00:00"))]}),
        ),
        (
            "SHIFT_TOO_LONG",
            json!({"calendarId": "c", "entries": [with(shift("a"), "endDateTime", json!("2024-01-16T08:01:00Z"))]}),
        ),
        (
            "BREAK_OUTSIDE_SHIFT",
            json!({"calendarId": "c", "entries": [with(shift("a"), "breaks", json!([{"startOffsetMinutes": 470, "durationMinutes": 30}]))]}),
        ),
        (
            "OVERLAPPING_BREAKS",
            json!({"calendarId": "c", "entries": [with(shift("a"), "breaks", json!([
            {"startOffsetMinutes": 60, "durationMinutes": 30}, {"startOffsetMinutes": 80, "durationMinutes": 30}]))]}),
        ),
        (
            "INVALID_OVERRIDE_TYPE",
            json!({"calendarId": "c", "entries": [with(shift("a"), "availabilityOverrides", json!([{"type": "SICK"}]))]}),
        ),
        (
            "OVERRIDE_OUTSIDE_SHIFT",
            json!({"calendarId": "c", "entries": [with(shift("a"), "availabilityOverrides", json!([
            {"type": "UNAVAILABLE", "start": "2024-01-15T07:00:00Z", "end": "2024-01-15T09:00:00Z"}]))]}),
        ),
        (
            "CONFLICTING_OVERRIDES",
            json!({"calendarId": "c", "entries": [with(shift("a"), "availabilityOverrides", json!([
            {"type": "UNAVAILABLE", "start": "2024-01-15T10:00:00Z", "end": "2024-01-15T11:00:00Z"},
            {"type": "AVAILABLE", "start": "2024-01-15T10:30:00Z", "end": "2024-01-15T11:30:00Z"}]))]}),
        ),
        (
            "OVERLAPPING_SHIFTS",
            json!({"calendarId": "c", "entries": [shift("a"), with(shift("a"), "startDateTime", json!("2024-01-15T12:00:00+02:00"))]}),
        ),
        (
            "INSUFFICIENT_CAPACITY",
            json!({"calendarId": "c", "minimumCapacityMinutes": 600, "entries": [shift("a")]}),
        ),
    ];
    for (code, mut body) in cases.clone() {
        body["changeId"] = json!(format!("code-{code}"));
        app.publisher
            .publish_raw(
                "c",
                &serde_json::to_vec(&body).unwrap(),
                BasicProperties::default()
                    .with_content_type("application/json; charset=utf-8".into()),
            )
            .await;
    }
    app.collector
        .events_until(WAIT, |e| {
            e.iter()
                .filter(|e| e["type"] == "wfm.schedule.change.rejected")
                .count()
                == cases.len()
        })
        .await;
    for (code, _) in &cases {
        let event = app
            .collector
            .events_of("schedule.change.rejected")
            .into_iter()
            .find(|e| e["data"]["changeId"] == format!("code-{code}"))
            .unwrap_or_else(|| panic!("no rejection for {code}"));
        assert_eq!(event["data"]["errors"][0]["code"], *code, "{event}");
    }
    app.collector.dead_letters(cases.len(), WAIT).await;
    let mut dead: Vec<String> = app
        .collector
        .dead()
        .iter()
        .map(|d| header(&d.headers, "x-error-code").unwrap())
        .collect();
    let mut want: Vec<String> = cases.iter().map(|(c, _)| (*c).to_owned()).collect();
    dead.sort();
    want.sort();
    assert_eq!(dead, want);
    assert_eq!(
        app.sim.stats().import_requests,
        0,
        "nothing invalid reaches CXone"
    );
    assert_eq!(app.finish().await, 0);
}

/// A content header cannot be split across frames, so the worker's
/// connection must take frames as large as publishers may use: a change
/// whose headers nearly fill RabbitMQ's default 128 KiB frame still
/// arrives, and the connection stays up. (Proposing smaller frames to save
/// lapin's buffers made such a delivery close the connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_takes_headers_as_large_as_the_broker_accepts() {
    use cxone_schedule_worker::amqp;
    use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString};

    let publisher = broker().await;
    let ch = publisher.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            unique("big-headers").as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "x-large".into(),
        AMQPValue::LongString(LongString::from("x".repeat(100_000))),
    );
    ch.basic_publish(
        "".into(),
        q.name().clone(),
        BasicPublishOptions::default(),
        b"{}",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let s = settings("big-headers", "http://127.0.0.1:9", &[]);
    let conn = amqp::connect(&s.amqp, "big-headers").await.unwrap();
    let wch = conn.create_channel().await.unwrap();
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        wch.basic_get(q.name().clone(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("the delivery arrives")
    .expect("basic.get succeeds")
    .expect("the message is there");
    let header = got
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-large").cloned());
    assert!(
        matches!(&header, Some(AMQPValue::LongString(v)) if v.as_bytes().len() == 100_000),
        "the 100 KB header arrived whole"
    );
    assert!(conn.status().connected(), "the connection is still up");
    ch.queue_delete(q.name().clone(), Default::default())
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
    let _ = publisher.close(200, "done".into()).await;
}
