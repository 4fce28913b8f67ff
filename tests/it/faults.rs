//! Fault injection (docs/reliability.md): the real broker, the in-process
//! simulator and the worker as a separate process, a few thousand changes
//! over many calendars, and the exact verdict of `support::scenario::verdict`.
//!
//! The scenarios of this file run one at a time (a shared lock): each one
//! loads the machine's two cores, and timing-sensitive faults (kill -9 every
//! few seconds, SIGTERM deadlines) must not compete with another scenario.
//! The broker restart lives in `tests/fault_broker_restart.rs`, alone.

use std::time::Duration;

use crate::support::*;
use cxone_schedule_worker::sim::{FaultsPatch, SimConfig};
use rand::Rng;
use tokio::time::Instant;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// kill -9 every 2.5–3.5 s, restarting the worker each time: nothing lost,
/// the roster exact, redelivery re-imports counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_every_few_seconds_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let Scenario {
        sim,
        settings,
        collector,
        publisher,
    } = Scenario::start("kill9", &[]).await;
    let plan = workload(1, 2500, 80, 40);
    let env = worker_env(&settings, &[]);
    let log = log_path("kill9");
    // Imports at info: a wrong roster can then be traced batch by batch.
    let rust_log = "warn,cxone_schedule_worker::pipeline::import=info";
    let mut worker = WorkerProc::spawn(&env, &log, rust_log);
    publisher.publish_all(&plan).await;

    let mut kills = 0u32;
    let mut rng = rand::rng();
    loop {
        let until = Instant::now() + Duration::from_millis(rng.random_range(2500..3500));
        let mut settled = false;
        while Instant::now() < until {
            settled = all_settled(&plan, &collector.seen.lock().unwrap(), false);
            if settled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if settled || kills >= 10 {
            break;
        }
        worker.kill9();
        kills += 1;
        worker = WorkerProc::spawn(&env, &log, rust_log);
    }
    let report = stop_and_judge(worker, &collector, &plan, &settings, &sim).await;
    assert!(kills >= 3, "the run lasted for several kills: {kills}");
    println!(
        "FAULT kill9: kills={kills} {report:?} sim={:?} elapsed={:?}",
        sim.stats(),
        started.elapsed()
    );
    finish_test(publisher, collector, sim).await;
}

/// A double fault: the worker's broker connection is closed under load,
/// and while it recovers (reconnected, taking the redelivered changes,
/// some of whose imports had already settled) it is killed with SIGKILL.
/// Three times over, then a clean run: nothing lost, the roster exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_loss_then_kill9_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let Scenario {
        sim,
        settings,
        collector,
        publisher,
    } = Scenario::start("dblfault", &[]).await;
    let plan = workload(4, 2000, 60, 40);
    let valid = plan.iter().filter(|c| c.rejection.is_none()).count();
    let env = worker_env(&settings, &[]);
    let log = log_path("dblfault");
    let rust_log = "warn,cxone_schedule_worker::pipeline::import=info";
    let mut worker = WorkerProc::spawn(&env, &log, rust_log);
    publisher.publish_all(&plan).await;

    let mut rng = rand::rng();
    let mut faults = 0;
    for round in 0..3 {
        let before = completed_count(&collector.seen.lock().unwrap());
        if before >= valid {
            break;
        }
        collector
            .wait_until(
                Duration::from_secs(60),
                |s| completed_count(s) >= (before + valid / 10).min(valid),
                |s| format!("round {round}: completed {}", completed_count(s)),
            )
            .await;
        if all_settled(&plan, &collector.seen.lock().unwrap(), false) {
            break;
        }
        let closed = close_connections_named(&settings.worker.instance_id).await;
        assert!(
            closed >= 1,
            "round {round}: the worker's connection was closed"
        );
        // The second fault lands while the worker recovers: reconnecting,
        // subscribing again or taking the redeliveries (a fault's timing,
        // not a wait for a condition).
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
        assert!(worker.running(), "worker died: {}", worker.log_tail(20));
        worker.kill9();
        faults += 1;
        worker = WorkerProc::spawn(&env, &log, rust_log);
    }
    let report = stop_and_judge(worker, &collector, &plan, &settings, &sim).await;
    assert!(
        faults >= 2,
        "the run lasted for several double faults: {faults}"
    );
    println!(
        "FAULT connection-loss-then-kill9: faults={faults} {report:?} sim={:?} elapsed={:?}",
        sim.stats(),
        started.elapsed()
    );
    finish_test(publisher, collector, sim).await;
}

/// CXone misbehaves in every way at once: 20% 503s, a 429 storm with
/// Retry-After, 5 s tokens, 2 s latency spikes, 5% FAILED jobs. Every change
/// ends completed, or failed and dead-lettered; none is lost or retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cxone_faults_end_every_change_completed_or_failed() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let sim = sim(SimConfig {
        job_base_ms: 50,
        fail_5xx_rate: 0.2,
        job_fail_rate: 0.05,
        token_ttl_s: 5,
        ..fast_sim()
    })
    .await;
    let settings = settings(
        "cxfaults",
        &sim.base_url(),
        &[("CSW__BATCH__MAX_ENTRIES", "100")],
    );
    let collector = Collector::start(&settings).await;
    let publisher = Publisher::new(&settings).await;
    let plan = workload(2, 2000, 60, 40);
    let env = worker_env(&settings, &[]);
    let log = log_path("cxfaults");
    let mut worker = WorkerProc::spawn(&env, &log, "warn");
    publisher.publish_all(&plan).await;

    // A 429 storm (Retry-After from the sim's token bucket), then a latency spike.
    let phase = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
    phase(2000).await;
    sim.set_faults(FaultsPatch {
        rate_limit_per_min: Some(60),
        ..FaultsPatch::default()
    })
    .unwrap();
    phase(5000).await;
    sim.set_faults(FaultsPatch {
        rate_limit_per_min: Some(0),
        latency_ms: Some(2000),
        ..FaultsPatch::default()
    })
    .unwrap();
    phase(4000).await;
    sim.set_faults(FaultsPatch {
        latency_ms: Some(0),
        ..FaultsPatch::default()
    })
    .unwrap();
    assert!(worker.running(), "worker crashed: {}", worker.log_tail(20));

    wait_settled_and_drained(
        &collector,
        &plan,
        &settings.amqp.inbound_queue,
        true,
        SETTLE,
    )
    .await;
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(40)).await.unwrap();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    let report = verdict(&plan, &collector.seen.lock().unwrap(), &sim, true);
    let stats = sim.stats();
    assert!(stats.responses5xx > 0, "503s were injected: {stats:?}");
    assert!(stats.responses429 > 0, "429s were injected: {stats:?}");
    assert!(
        stats.token_requests >= 2,
        "5 s tokens were refreshed: {stats:?}"
    );
    assert!(report.failed > 0, "5% FAILED jobs failed some changes");
    assert_eq!(
        stats.concurrent_calendar_violations, 0,
        "one import per calendar at a time"
    );
    println!(
        "FAULT cxone: {report:?} sim={stats:?} elapsed={:?}",
        started.elapsed()
    );
    finish_test(publisher, collector, sim).await;
}

/// SIGTERM under load, twice: each time the worker exits 0 within
/// `shutdown.timeout_s`; once more while an import cannot finish in time
/// (it stays unacked). A restarted worker completes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_in_time_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let timeout_s = 6u64;
    let Scenario {
        sim,
        settings,
        collector,
        publisher,
    } = Scenario::start("sigterm-load", &[("CSW__SHUTDOWN__TIMEOUT_S", "6")]).await;
    let plan = workload(3, 2000, 50, 40);
    let env = worker_env(&settings, &[]);
    let log = log_path("sigterm-load");
    publisher.publish_all(&plan).await;

    let mut exits = Vec::new();
    for round in 0..3 {
        let mut worker = WorkerProc::spawn(&env, &log, "info");
        let before = completed_count(&collector.seen.lock().unwrap());
        collector
            .wait_until(
                Duration::from_secs(60),
                |s| completed_count(s) >= before + 150,
                |s| format!("round {round}: completed {}", completed_count(s)),
            )
            .await;
        if round == 2 {
            // Imports that cannot finish within the grace period.
            sim.set_faults(FaultsPatch {
                job_base_ms: Some(timeout_s * 1000 + 4000),
                ..FaultsPatch::default()
            })
            .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let t = Instant::now();
        worker.sigterm();
        let status = worker
            .wait_exit(Duration::from_secs(timeout_s + 20))
            .await
            .unwrap();
        let took = t.elapsed();
        assert!(status.success(), "round {round}: exit status {status:?}");
        assert!(
            took <= Duration::from_secs(timeout_s) + Duration::from_millis(1500),
            "round {round}: exit took {took:?}, over shutdown.timeout_s = {timeout_s}; log {}",
            log.display()
        );
        exits.push(took);
    }
    sim.set_faults(FaultsPatch {
        job_base_ms: Some(50),
        ..FaultsPatch::default()
    })
    .unwrap();
    let mut worker = WorkerProc::spawn(&env, &log, "info");
    wait_settled_and_drained(
        &collector,
        &plan,
        &settings.amqp.inbound_queue,
        false,
        SETTLE,
    )
    .await;
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(40)).await.unwrap();
    assert!(status.success());
    let report = verdict(&plan, &collector.seen.lock().unwrap(), &sim, false);
    println!(
        "FAULT sigterm: exits={exits:?} {report:?} sim={:?} elapsed={:?}",
        sim.stats(),
        started.elapsed()
    );
    finish_test(publisher, collector, sim).await;
}

/// What a hostile message must come to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Rejected(&'static str),
    Completed,
}

struct Hostile {
    name: &'static str,
    body: Vec<u8>,
    props: lapin::BasicProperties,
    expect: Expect,
}

fn json_props(id: &str) -> lapin::BasicProperties {
    lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(id.into())
        .with_delivery_mode(2)
}

/// A valid one-entry change on calendar `hostile`.
fn good(id: &str, agent: &str) -> Vec<u8> {
    // Each valid change alone in its calendar, so it is the first (and only)
    // change of its batch: its own headers are the ones the import uses.
    crate::support::change(
        id,
        &format!("hostile-{id}"),
        &[(
            agent,
            &crate::support::at(15, 8),
            &crate::support::at(15, 16),
        )],
    )
}

fn corpus() -> Vec<Hostile> {
    use lapin::types::{AMQPValue, FieldTable};
    let mut v = Vec::new();
    let mut add = |name, body: Vec<u8>, props, expect| {
        v.push(Hostile {
            name,
            body,
            props,
            expect,
        })
    };
    let valid = good("h-valid", "agent-0");
    add(
        "truncated",
        valid[..valid.len() / 2].to_vec(),
        json_props("h-truncated"),
        Expect::Rejected("INVALID_JSON"),
    );
    add(
        "empty body",
        Vec::new(),
        json_props("h-empty"),
        Expect::Rejected("INVALID_JSON"),
    );
    add(
        "top-level null",
        b"null".to_vec(),
        json_props("h-null"),
        Expect::Rejected("INVALID_JSON"),
    );
    let mut over = br#"{"calendarId":"hostile","pad":""#.to_vec();
    over.resize(4 * 1024 * 1024 + 1 - 2, b'x');
    over.extend_from_slice(br#""}"#);
    add(
        "one byte over max_message_bytes",
        over,
        json_props("h-over-limit"),
        Expect::Rejected("MESSAGE_TOO_LARGE"),
    );
    for i in 0..3 {
        let mut ten = br#"{"calendarId":"hostile","pad":""#.to_vec();
        ten.resize(10 * 1024 * 1024, b'y');
        ten.extend_from_slice(br#""}"#);
        add(
            "10 MB body",
            ten,
            json_props(&format!("h-10mb-{i}")),
            Expect::Rejected("MESSAGE_TOO_LARGE"),
        );
    }
    let depth = 500_000;
    add(
        "deeply nested top level (unbalanced)",
        "[".repeat(depth * 2).into_bytes(),
        json_props("h-deep-top"),
        Expect::Rejected("INVALID_JSON"),
    );
    add(
        "deeply nested inside a known field",
        format!(
            r#"{{"calendarId":"hostile","entries":[{{"agentId":{}{}}}]}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
        .into_bytes(),
        json_props("h-deep-known"),
        Expect::Rejected("INVALID_FIELD"),
    );
    add(
        "deeply nested inside an unknown field",
        format!(
            r#"{{"calendarId":"hostile","x":{}1{},"entries":[]}}"#,
            "{\"a\":".repeat(depth / 2),
            "}".repeat(depth / 2)
        )
        .into_bytes(),
        json_props("h-deep-unknown"),
        Expect::Rejected("INVALID_FIELD"),
    );
    add(
        "invalid UTF-8",
        b"{\"calendarId\":\"hostile\xff\xfe\",\"entries\":[]}".to_vec(),
        json_props("h-utf8"),
        Expect::Rejected("INVALID_JSON"),
    );
    add(
        "lone surrogate escape",
        br#"{"calendarId":"hostile","entries":[{"agentId":"\ud800"}]}"#.to_vec(),
        json_props("h-surrogate"),
        Expect::Rejected("INVALID_JSON"),
    );
    let mut many = br#"{"calendarId":"hostile","entries":["#.to_vec();
    for i in 0..100_000 {
        if i > 0 {
            many.push(b',');
        }
        many.extend_from_slice(b"{}");
    }
    many.extend_from_slice(b"]}");
    add(
        "100,000 entries",
        many,
        json_props("h-100k"),
        Expect::Rejected("TOO_MANY_ENTRIES"),
    );
    add(
        "wrong types everywhere",
        br#"{"schemaVersion":1,"changeId":5,"calendarId":["x"],"occurredAt":7,"source":{},
            "validationMode":1,"conflictResolution":{},"minimumCapacityMinutes":"x","entries":{}}"#
            .to_vec(),
        json_props("h-types"),
        Expect::Rejected("INVALID_FIELD"),
    );
    add(
        "wrong types in an entry",
        br#"{"calendarId":"hostile","entries":[{"agentId":1,"startDateTime":2,"endDateTime":null,
            "breaks":"x","availabilityOverrides":5}]}"#
            .to_vec(),
        json_props("h-entry-types"),
        Expect::Rejected("INVALID_FIELD"),
    );
    add(
        "schemaVersion as a string",
        br#"{"schemaVersion":"1","calendarId":"hostile","entries":[]}"#.to_vec(),
        json_props("h-schema"),
        Expect::Rejected("UNSUPPORTED_SCHEMA_VERSION"),
    );
    add(
        "huge number",
        br#"{"calendarId":"hostile","minimumCapacityMinutes":1e999,"entries":[]}"#.to_vec(),
        json_props("h-bignum"),
        Expect::Rejected("INVALID_JSON"),
    );
    add(
        "control characters in agentId",
        br#"{"calendarId":"hostile","entries":[{"agentId":"a\u0000b","startDateTime":"2024-01-15T08:00:00Z","endDateTime":"2024-01-15T09:00:00Z"}]}"#
            .to_vec(),
        json_props("h-ctl"),
        Expect::Rejected("INVALID_FIELD"),
    );
    add(
        "XML content type",
        good("h-xml", "agent-1"),
        json_props("h-xml").with_content_type("application/xml".into()),
        Expect::Rejected("UNSUPPORTED_CONTENT_TYPE"),
    );
    add(
        "odd but valid content type",
        good("h-charset", "agent-2"),
        json_props("h-charset").with_content_type("Application/JSON; charset=UTF-8".into()),
        Expect::Completed,
    );
    add(
        "no properties at all, valid body",
        good("h-noprops", "agent-3"),
        lapin::BasicProperties::default(),
        Expect::Completed,
    );
    add(
        "no properties at all, invalid body",
        b"{not json".to_vec(),
        lapin::BasicProperties::default(),
        Expect::Rejected("INVALID_JSON"),
    );
    // Headers: every AMQP type, garbage trace context, and a table close to
    // the broker's frame size, on a valid change and on an invalid one.
    let mut odd = FieldTable::default();
    odd.insert(
        "traceparent".into(),
        AMQPValue::LongString("\u{0}garbage\u{7f}".into()),
    );
    // (Values RabbitMQ 3.10 itself refuses with INTERNAL_ERROR, such as a
    // NaN double, a byte array or a field array, never reach a worker.)
    odd.insert("x-float".into(), AMQPValue::Double(-0.0));
    odd.insert("x-void".into(), AMQPValue::Void);
    odd.insert("x-int".into(), AMQPValue::LongLongInt(i64::MIN));
    odd.insert("x-ts".into(), AMQPValue::Timestamp(1_700_000_000));
    odd.insert(
        "message_id".into(),
        AMQPValue::LongString("not-the-property".into()),
    );
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::Boolean(true));
    odd.insert("x-table".into(), AMQPValue::FieldTable(nested));
    add(
        "odd header types",
        good("h-odd-headers", "agent-4"),
        json_props("h-odd-headers").with_headers(odd.clone()),
        Expect::Completed,
    );
    add(
        "odd header types, invalid body",
        b"[]".to_vec(),
        json_props("h-odd-headers-bad").with_headers(odd),
        Expect::Rejected("INVALID_JSON"),
    );
    let mut big = FieldTable::default();
    big.insert(
        "x-junk".into(),
        AMQPValue::LongString("j".repeat(124_800).into()),
    );
    big.insert(
        "traceparent".into(),
        AMQPValue::LongString("00-".repeat(2000).into()),
    );
    add(
        "oversized headers, valid body",
        good("h-big-headers", "agent-5"),
        json_props("h-big-headers").with_headers(big.clone()),
        Expect::Completed,
    );
    add(
        "oversized headers, invalid body",
        format!(
            r#"{{"calendarId":"hostile","entries":[{}{{}}]}}"#,
            "{},".repeat(199)
        )
        .into_bytes(),
        json_props("h-big-headers-bad").with_headers(big),
        Expect::Rejected("MISSING_FIELD"),
    );
    add(
        "maximal message id, no changeId",
        br#"{"calendarId":"hostile","entries":"nope"}"#.to_vec(),
        json_props(&"m".repeat(255)),
        Expect::Rejected("INVALID_FIELD"),
    );
    v
}

/// The id a change's events carry: the body's changeId, the message id, or
/// `sha256-<hex>` of the body (docs/contract.md §4).
fn expected_change_id(h: &Hostile) -> String {
    use sha2::Digest;
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&h.body)
        && let Some(id) = v.get("changeId").and_then(|v| v.as_str())
    {
        return id.to_owned();
    }
    match h.props.message_id() {
        Some(id) => id.to_string(),
        None => format!("sha256-{}", hex::encode(sha2::Sha256::digest(&h.body))),
    }
}

/// Every hostile message is rejected with its code (event and dead-letter
/// copy, body intact) or, when valid, imported; the worker never crashes and
/// its memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_rejected_without_crashing_or_bloating() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let sim = sim(fast_sim()).await;
    let settings = settings(
        "hostile",
        &sim.base_url(),
        &[("CSW__LIMITS__MAX_MESSAGE_BYTES", "4194304")],
    );
    let collector = Collector::start(&settings).await;
    let publisher = Publisher::new(&settings).await;
    let env = worker_env(
        &settings,
        &[("CSW__LIMITS__MAX_MESSAGE_BYTES", "4194304".into())],
    );
    let log = log_path("hostile");
    let mut worker = WorkerProc::spawn(&env, &log, "warn");
    wait_for_consumer(&settings.amqp.inbound_queue, Duration::from_secs(30)).await;
    let pid = worker.pid();
    let baseline = worker.peak_rss_kib().unwrap_or(0);

    let corpus = corpus();
    for h in &corpus {
        publisher
            .publish_raw("hostile", &h.body, h.props.clone())
            .await;
    }
    let ids: Vec<String> = corpus.iter().map(expected_change_id).collect();
    let settled = |s: &Seen| {
        let o = outcomes(s);
        corpus.iter().zip(&ids).all(|(h, id)| match h.expect {
            Expect::Completed => o.completed_jobs.contains_key(id),
            Expect::Rejected(_) => o.rejected.contains_key(id),
        }) && s.dead.len()
            >= corpus
                .iter()
                .filter(|h| h.expect != Expect::Completed)
                .count()
    };
    collector
        .wait_until(SETTLE, settled, |s| {
            let o = outcomes(s);
            let missing: Vec<&str> = corpus
                .iter()
                .zip(&ids)
                .filter(|(_, id)| {
                    !o.completed_jobs.contains_key(*id) && !o.rejected.contains_key(*id)
                })
                .map(|(h, _)| h.name)
                .collect();
            format!(
                "no outcome yet for {missing:?}; dead letters {}; worker log {}",
                s.dead.len(),
                log.display()
            )
        })
        .await;
    assert!(
        worker.running(),
        "the worker crashed: {}",
        worker.log_tail(30)
    );
    assert_eq!(worker.pid(), pid);
    let peak = worker.peak_rss_kib().unwrap_or(0);

    {
        let seen = collector.seen.lock().unwrap();
        let o = outcomes(&seen);
        for (h, id) in corpus.iter().zip(&ids) {
            match h.expect {
                Expect::Completed => assert!(!o.rejected.contains_key(id), "{}: rejected", h.name),
                Expect::Rejected(code) => {
                    assert_eq!(o.rejected[id], code, "{}: rejection code", h.name);
                    let dl: Vec<&DeadLetter> = seen
                        .dead
                        .iter()
                        .filter(|d| {
                            d.message_id.as_deref()
                                == h.props.message_id().as_ref().map(|m| m.as_str())
                        })
                        .collect();
                    assert_eq!(dl.len(), 1, "{}: one dead-letter copy", h.name);
                    assert_eq!(
                        dl[0].code.as_deref(),
                        Some(code),
                        "{}: x-error-code",
                        h.name
                    );
                    assert_eq!(
                        dl[0].body_len,
                        h.body.len(),
                        "{}: body kept as received",
                        h.name
                    );
                }
            }
        }
    }
    wait_settled_and_drained(&collector, &[], &settings.amqp.inbound_queue, false, SETTLE).await;
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(40)).await.unwrap();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    // 13 MB of hostile bodies went through; the worker holds each only while
    // it rejects it (plus its dead-letter copy).
    assert!(
        peak < 256 * 1024,
        "peak RSS {peak} KiB (baseline {baseline} KiB) is not bounded"
    );
    println!(
        "FAULT hostile: messages={} peak_rss_kib={peak} baseline_rss_kib={baseline} elapsed={:?}",
        corpus.len(),
        started.elapsed()
    );
    finish_test(publisher, collector, sim).await;
}
