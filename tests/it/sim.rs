//! The simulator driven by the real `CxoneClient` (and by raw HTTP where the
//! client would hide what is being checked). Real time, short job durations;
//! conditions are awaited with deadlines, never with fixed sleeps.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use cxone_schedule_worker::{
    config::{CxoneSettings, GrantType, RetrySettings, Settings},
    cxone::{CxoneClient, CxoneError, Job, JobStatus},
    domain::{
        ConflictResolution, ImportPayload, Limits, ScheduleEntry, ValidationMode, validate_import,
    },
    sim::{ConcurrentCalendar, FaultsPatch, SimConfig, SimServer, SimStats},
};
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::Sha256;

fn sim_config() -> SimConfig {
    SimConfig {
        job_base_ms: 40,
        ..SimConfig::default()
    }
}

async fn start(cfg: SimConfig) -> SimServer {
    SimServer::start(cfg).await.expect("simulator starts")
}

fn settings(sim: &SimServer) -> CxoneSettings {
    let mut c = Settings::defaults().cxone;
    c.base_url = sim.base_url();
    c.auth_url = sim.base_url();
    c
}

fn fast_retry() -> RetrySettings {
    RetrySettings {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(500),
        max_elapsed: Duration::from_secs(30),
    }
}

fn client_with(cfg: &CxoneSettings) -> CxoneClient {
    CxoneClient::new(cfg, &fast_retry()).unwrap()
}

fn client(sim: &SimServer) -> CxoneClient {
    client_with(&settings(sim))
}

fn entry(agent: &str, start: &str, end: &str) -> ScheduleEntry {
    ScheduleEntry {
        agent_id: agent.into(),
        start_date_time: start.into(),
        end_date_time: end.into(),
        breaks: vec![],
        availability_overrides: vec![],
    }
}

fn payload(calendar: &str, entries: Vec<ScheduleEntry>) -> ImportPayload {
    ImportPayload {
        schedule_entries: entries,
        validation_mode: ValidationMode::Strict,
        conflict_resolution: ConflictResolution::AutoResolve,
        target_calendar_id: calendar.into(),
    }
}

fn one(calendar: &str) -> ImportPayload {
    payload(
        calendar,
        vec![entry("a", "2024-01-15T08:00:00Z", "2024-01-15T16:00:00Z")],
    )
}

/// Waits for `cond` with a deadline.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the job until it is finished (what the worker's tracker does).
async fn finish(c: &CxoneClient, job_id: &str) -> Job {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job = c.get_job(job_id, None).await.unwrap();
        if job.status.is_terminal() {
            return job;
        }
        assert!(Instant::now() < deadline, "job {job_id} never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn raw_token(sim: &SimServer, scope: Option<&str>) -> reqwest::Response {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", "sim-client"),
        ("client_secret", "sim-secret"),
    ];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    reqwest::Client::new()
        .post(format!("{}/oauth/token", sim.base_url()))
        .form(&form)
        .send()
        .await
        .unwrap()
}

async fn bearer(sim: &SimServer) -> String {
    let v: Value = raw_token(sim, None).await.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn import_completes_and_auto_resolve_replaces_overlaps_only() {
    let sim = start(sim_config()).await;
    let c = client(&sim);
    let first = payload(
        "cal-1",
        vec![
            entry("a", "2024-01-15T08:00:00Z", "2024-01-15T16:00:00Z"),
            entry("a", "2024-01-16T08:00:00Z", "2024-01-16T16:00:00Z"),
            entry("b", "2024-01-15T08:00:00Z", "2024-01-15T16:00:00Z"),
        ],
    );
    let s = c.submit_import(&first, "k1", None).await.unwrap();
    assert_eq!(s.attempts, 1);
    let job = finish(&c, &s.job_id).await;
    assert_eq!(job.status, JobStatus::Completed);
    let second = payload(
        "cal-1",
        vec![
            // Overlaps a's first shift (10:00Z-16:00Z once offsets are normalised).
            entry(
                "a",
                "2024-01-15T12:00:00+02:00",
                "2024-01-15T18:00:00+02:00",
            ),
            // Touches a's second shift: both stay.
            entry("a", "2024-01-16T16:00:00Z", "2024-01-16T20:00:00Z"),
        ],
    );
    let s = c.submit_import(&second, "k2", None).await.unwrap();
    assert_eq!(finish(&c, &s.job_id).await.status, JobStatus::Completed);

    let shifts = sim.shifts("cal-1");
    let got: Vec<(&str, &str)> = shifts
        .iter()
        .map(|e| (e.agent_id.as_str(), e.start_date_time.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("a", "2024-01-15T12:00:00+02:00"),
            ("a", "2024-01-16T08:00:00Z"),
            ("a", "2024-01-16T16:00:00Z"),
            ("b", "2024-01-15T08:00:00Z"),
        ]
    );
    // The inspection route says the same.
    let http: Vec<ScheduleEntry> =
        reqwest::get(format!("{}/sim/calendars/cal-1/shifts", sim.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(http, shifts);
    assert!(sim.shifts("other").is_empty());
    let st = sim.stats();
    assert_eq!(st.imports_accepted, 2);
    assert_eq!(st.jobs_completed, 2);
    assert_eq!(st.token_requests, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_imports_get_400_with_errors() {
    let sim = start(sim_config()).await;
    let token = bearer(&sim).await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/v2/wfm/schedules/import", sim.base_url()))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"].as_array().is_some_and(|e| !e.is_empty()), "{v}");
    assert!(v["message"].is_string());

    // Through the client: the sim answers as the shared validator decides.
    let bad = payload(
        "cal-1",
        vec![entry("a", "2024-01-15T16:00:00Z", "2024-01-15T08:00:00Z")],
    );
    let verdict = validate_import(&serde_json::to_vec(&bad).unwrap(), &Limits::default());
    let result = client(&sim).submit_import(&bad, "k", None).await;
    match (verdict, result) {
        (Err(_), Err(e)) => {
            assert_eq!(e.http_status(), Some(400));
            assert_eq!(e.code(), "CXONE_VALIDATION_FAILED");
            assert!(
                matches!(e, CxoneError::Permanent { body: Some(ref b), .. } if b.contains("errors"))
            );
        }
        (Ok(_), Ok(_)) => {}
        (v, r) => panic!("sim and validator disagree: {:?} vs {r:?}", v.is_ok()),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_credentials_get_401() {
    let sim = start(sim_config()).await;
    let mut cfg = settings(&sim);
    cfg.client_secret = SecretString::from("wrong-secret-value");
    let c = client_with(&cfg);
    let err = c.check_token().await.unwrap_err();
    assert_eq!(err.http_status(), Some(401));
    assert_eq!(err.code(), "CXONE_UNAUTHORIZED");
    assert!(!err.to_string().contains("wrong-secret-value"));
    let err = c.submit_import(&one("cal-1"), "k", None).await.unwrap_err();
    assert_eq!(err.code(), "CXONE_UNAUTHORIZED");
    assert!(sim.stats().responses401 >= 2);
    assert_eq!(sim.stats().imports_accepted, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn password_grant_works_with_the_access_key() {
    let sim = start(sim_config()).await;
    let mut cfg = settings(&sim);
    cfg.grant_type = GrantType::Password;
    cfg.access_key_id = "sim-access-key".into();
    cfg.access_key_secret = SecretString::from("sim-access-secret");
    let c = client_with(&cfg);
    c.check_token().await.unwrap();
    let s = c.submit_import(&one("cal-1"), "k", None).await.unwrap();
    assert_eq!(finish(&c, &s.job_id).await.status, JobStatus::Completed);

    cfg.access_key_secret = SecretString::from("not-the-key");
    let err = client_with(&cfg).check_token().await.unwrap_err();
    assert_eq!(err.http_status(), Some(400));
    assert_eq!(err.code(), "CXONE_UNAUTHORIZED");
    sim.shutdown().await;
}

#[tokio::test]
async fn missing_scopes_get_403() {
    let sim = start(sim_config()).await;
    let mut cfg = settings(&sim);
    cfg.scope = "wfm:async-jobs:read".into();
    let err = client_with(&cfg)
        .submit_import(&one("cal-1"), "k", None)
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(403));
    assert_eq!(err.code(), "CXONE_FORBIDDEN");

    let writer = {
        let mut cfg = settings(&sim);
        cfg.scope = "wfm:schedules:write".into();
        client_with(&cfg)
    };
    let s = writer
        .submit_import(&one("cal-1"), "k", None)
        .await
        .unwrap();
    let err = writer.get_job(&s.job_id, None).await.unwrap_err();
    assert_eq!(err.http_status(), Some(403));
    assert!(err.to_string().contains("wfm:async-jobs:read"), "{err}");

    // The granted scope is reported back, unknown ones dropped.
    let v: Value = raw_token(&sim, Some("wfm:agents:read bogus"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["scope"], "wfm:agents:read");
    assert_eq!(raw_token(&sim, Some("bogus")).await.status(), 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_busy_calendar_gets_409_and_the_client_retries_until_free() {
    let sim = start(SimConfig {
        job_base_ms: 600,
        ..sim_config()
    })
    .await;
    let c = client(&sim);
    let first = c.submit_import(&one("cal-1"), "k1", None).await.unwrap();
    let other = payload(
        "cal-1",
        vec![entry("b", "2024-01-15T08:00:00Z", "2024-01-15T16:00:00Z")],
    );
    // Another calendar is not blocked.
    let elsewhere = c.submit_import(&one("cal-2"), "k3", None).await.unwrap();
    assert_eq!(elsewhere.attempts, 1);
    let second = c.submit_import(&other, "k2", None).await.unwrap();
    assert!(second.attempts >= 2, "{second:?}");
    let st = sim.stats();
    assert!(st.responses409 >= 1);
    assert!(st.concurrent_calendar_violations >= 1);
    // The first job had finished before the second was accepted.
    assert_eq!(sim.job_status(&first.job_id), Some(JobStatus::Completed));
    assert_eq!(
        finish(&c, &second.job_id).await.status,
        JobStatus::Completed
    );
    assert_eq!(sim.shifts("cal-1").len(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn allow_mode_accepts_concurrent_imports_but_counts_them() {
    let sim = start(SimConfig {
        job_base_ms: 600,
        concurrent_calendar: ConcurrentCalendar::Allow,
        ..sim_config()
    })
    .await;
    let c = client(&sim);
    c.submit_import(&one("cal-1"), "k1", None).await.unwrap();
    let s = c
        .submit_import(
            &payload(
                "cal-1",
                vec![entry("b", "2024-01-15T08:00:00Z", "2024-01-15T16:00:00Z")],
            ),
            "k2",
            None,
        )
        .await
        .unwrap();
    assert_eq!(s.attempts, 1);
    let st = sim.stats();
    assert_eq!(st.responses409, 0);
    assert_eq!(st.concurrent_calendar_violations, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn idempotency_keys_replay_or_refuse() {
    let sim = start(sim_config()).await;
    let c = client(&sim);
    let p = one("cal-1");
    let a = c.submit_import(&p, "batch-1", None).await.unwrap();
    finish(&c, &a.job_id).await;
    let b = c.submit_import(&p, "batch-1", None).await.unwrap();
    assert_eq!(a.job_id, b.job_id, "same key, same body: the first job");
    let err = c
        .submit_import(&one("cal-2"), "batch-1", None)
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(422));
    assert!(!err.is_transient());
    let st = sim.stats();
    assert_eq!(st.idempotent_replays, 1);
    assert_eq!(st.imports_accepted, 1);
    assert_eq!(st.jobs_completed, 1);
    assert_eq!(sim.shifts("cal-1").len(), 1);
    assert!(sim.shifts("cal-2").is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_an_honest_retry_after() {
    // 6 per minute: one request, then the next is admitted in 10 s.
    let sim = start(SimConfig {
        rate_limit_per_min: 6,
        ..sim_config()
    })
    .await;
    let token = bearer(&sim).await;
    let http = reqwest::Client::new();
    let get = || {
        http.get(format!("{}/api/v2/wfm/async-jobs/nope", sim.base_url()))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 404, "admitted, unknown job");
    let r = get().await.unwrap();
    assert_eq!(r.status(), 429);
    let ra: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((9..=10).contains(&ra), "Retry-After {ra}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "rate_limited");
    assert_eq!(sim.stats().responses429, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_client_waits_out_the_rate_limit() {
    // 60 per minute: one per second.
    let sim = start(SimConfig {
        rate_limit_per_min: 60,
        ..sim_config()
    })
    .await;
    let c = client(&sim);
    let started = Instant::now();
    let s = c.submit_import(&one("cal-1"), "k", None).await.unwrap();
    let job = c.get_job(&s.job_id, None).await.unwrap();
    assert_eq!(job.job_id, s.job_id);
    assert!(sim.stats().responses429 >= 1);
    // Retry-After: 1 was honoured, not hammered.
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(sim.stats().responses429 <= 2, "{:?}", sim.stats());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_503_fault_then_success() {
    let sim = start(SimConfig {
        fail_5xx_rate: 1.0,
        ..sim_config()
    })
    .await;
    let c = client(&sim);
    let task = tokio::spawn({
        let c = c.clone();
        async move { c.submit_import(&one("cal-1"), "k", None).await }
    });
    eventually("a 503", || async { sim.stats().responses5xx >= 1 }).await;
    sim.set_faults(FaultsPatch {
        fail_5xx_rate: Some(0.0),
        ..FaultsPatch::default()
    })
    .unwrap();
    let s = task.await.unwrap().unwrap();
    assert!(s.attempts >= 2);
    assert_eq!(sim.stats().imports_accepted, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn failed_jobs_change_nothing() {
    let sim = start(SimConfig {
        job_fail_rate: 1.0,
        ..sim_config()
    })
    .await;
    let c = client(&sim);
    let s = c.submit_import(&one("cal-1"), "k", None).await.unwrap();
    let job = finish(&c, &s.job_id).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert!(!job.errors.is_empty());
    assert!(sim.shifts("cal-1").is_empty());
    assert_eq!(sim.stats().jobs_failed, 1);
    // The calendar is free again.
    sim.set_faults(FaultsPatch {
        job_fail_rate: Some(0.0),
        ..FaultsPatch::default()
    })
    .unwrap();
    let s = c.submit_import(&one("cal-1"), "k2", None).await.unwrap();
    assert_eq!(s.attempts, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn tokens_expire_after_a_short_ttl() {
    let sim = start(SimConfig {
        token_ttl_s: 1,
        ..sim_config()
    })
    .await;
    let token = bearer(&sim).await;
    let url = format!("{}/api/v2/wfm/async-jobs/x", sim.base_url());
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    eventually("the token to expire", || async {
        http.get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status()
            == 401
    })
    .await;
    // The client renews ahead of expiry and never notices.
    let c = client(&sim);
    let s = c.submit_import(&one("cal-1"), "k", None).await.unwrap();
    let before = sim.stats().token_requests;
    eventually("a token refresh", || async {
        c.get_job(&s.job_id, None).await.is_ok() && sim.stats().token_requests > before
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_once() {
    let sim = start(sim_config()).await;
    let c = client(&sim);
    c.check_token().await.unwrap();
    sim.reset(); // forgets every token
    let s = c.submit_import(&one("cal-1"), "k", None).await.unwrap();
    assert_eq!(s.attempts, 2, "401, then a fresh token");
    let st = sim.stats();
    assert_eq!(st.responses401, 1);
    assert_eq!(st.token_requests, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn webhooks_are_signed() {
    use axum::{Router, body::Bytes, http::HeaderMap, routing::post};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(HeaderMap, Bytes)>();
    let app = Router::new().route(
        "/hook",
        post(move |h: HeaderMap, b: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((h, b));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sim = start(sim_config()).await;
    // Set at run time over HTTP, as a test that starts the worker later would.
    let r = reqwest::Client::new()
        .put(format!("{}/sim/faults", sim.base_url()))
        .json(&json!({"webhookUrl": hook, "webhookSecret": "hook-secret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let c = client(&sim);
    let s = c.submit_import(&one("cal-1"), "k", None).await.unwrap();
    let (headers, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("webhook within 10 s")
        .unwrap();
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["eventType"], "WFM_SCHEDULE_IMPORT_COMPLETED");
    assert_eq!(event["jobId"], s.job_id.as_str());
    assert_eq!(event["status"], "COMPLETED");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"hook-secret").unwrap();
    mac.update(&body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(headers["x-cxone-signature"].to_str().unwrap(), expected);
    assert!(cxone_schedule_worker::cxone::webhook::verify(
        b"hook-secret",
        &body,
        Some(&expected)
    ));
    // A dead receiver does not hold the simulator up.
    sim.set_webhook(Some("http://127.0.0.1:9/hook".into()), None)
        .unwrap();
    let s = c.submit_import(&one("cal-2"), "k2", None).await.unwrap();
    assert_eq!(finish(&c, &s.job_id).await.status, JobStatus::Completed);
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors_not_panics() {
    let sim = start(sim_config()).await;
    let base = sim.base_url();
    let http = reqwest::Client::new();
    let token = bearer(&sim).await;
    let check = |r: reqwest::Response, status: u16| async move {
        assert_eq!(r.status(), status);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
    };
    // Unknown job, no token, garbage token, wrong method, unknown path.
    check(
        http.get(format!("{base}/api/v2/wfm/async-jobs/nope"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    check(
        http.get(format!("{base}/api/v2/wfm/async-jobs/nope"))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    check(
        http.post(format!("{base}/api/v2/wfm/schedules/import"))
            .bearer_auth("garbage")
            .body("{}")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    check(
        http.get(format!("{base}/api/v2/wfm/schedules/import"))
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    check(
        http.get(format!("{base}/nowhere")).send().await.unwrap(),
        404,
    )
    .await;
    // Token endpoint: wrong secret, unknown grant, not a form.
    check(
        http.post(format!("{base}/oauth/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "sim-client"),
                ("client_secret", "nope"),
            ])
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    check(
        http.post(format!("{base}/oauth/token"))
            .form(&[
                ("grant_type", "magic"),
                ("client_id", "sim-client"),
                ("client_secret", "sim-secret"),
            ])
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    check(
        http.post(format!("{base}/oauth/token"))
            .basic_auth("sim-client", Some("sim-secret"))
            .body("%%%=&&")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    // Faults: unknown flag, bad value, not JSON.
    for body in [r#"{"latencyMS": 5}"#, r#"{"fail5xxRate": 2}"#, "nope", "[]"] {
        check(
            http.put(format!("{base}/sim/faults"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
    }
    // Still serving.
    assert_eq!(
        http.get(format!("{base}/sim/stats"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn inspection_routes() {
    let sim = start(sim_config()).await;
    let base = sim.base_url();
    let http = reqwest::Client::new();
    let c = client(&sim);
    let s = c.submit_import(&one("cal-1"), "k", None).await.unwrap();
    finish(&c, &s.job_id).await;

    let v: Value = http
        .get(format!("{base}/sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for key in [
        "tokenRequests",
        "importRequests",
        "importsAccepted",
        "responses401",
        "responses409",
        "responses429",
        "responses5xx",
        "jobsCompleted",
        "jobsFailed",
        "concurrentCalendarViolations",
        "idempotentReplays",
    ] {
        assert!(v[key].is_u64(), "{key} in {v}");
    }
    let stats: SimStats = serde_json::from_value(v).unwrap();
    assert_eq!(stats, sim.stats());

    // Partial update: only the named flags change; secrets are not shown.
    let v: Value = http
        .put(format!("{base}/sim/faults"))
        .json(&json!({"latencyMs": 5, "concurrentCalendar": "allow", "webhookSecret": "x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["latencyMs"], 5);
    assert_eq!(v["concurrentCalendar"], "allow");
    assert_eq!(v["jobBaseMs"], 40);
    assert_eq!(v["clientSecret"], "***");
    assert_eq!(v["webhookSecret"], "***");
    let f = sim.faults();
    assert_eq!(f.latency_ms, 5);
    assert_eq!(f.concurrent_calendar, ConcurrentCalendar::Allow);
    // null clears.
    http.put(format!("{base}/sim/faults"))
        .json(&json!({"webhookSecret": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(sim.faults().webhook_secret, None);

    let r = http.post(format!("{base}/sim/reset")).send().await.unwrap();
    assert!(r.status().is_success());
    assert_eq!(sim.stats(), SimStats::default());
    assert!(sim.shifts("cal-1").is_empty());
    assert_eq!(sim.faults().latency_ms, 5, "reset keeps the settings");
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_settings_are_refused_at_start() {
    let err = SimServer::start(SimConfig {
        fail_5xx_rate: 1.5,
        ..SimConfig::default()
    })
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("--fail-5xx-rate"), "{err}");
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let sim = start(sim_config()).await;
    let addr = sim.addr();
    sim.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
