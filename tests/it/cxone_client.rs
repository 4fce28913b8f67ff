//! The CXone client against wiremock, on tokio's paused clock.
//!
//! Why the paused clock works here: wiremock serves from its own thread and
//! runtime (real time), and the client under test is built with a reqwest
//! client that arms no timers (no request/connect/pool-idle timeouts). So
//! while a request waits on the socket the test runtime has no timer to
//! auto-advance to and really waits for I/O; the only timers are the
//! client's own retry and pacing sleeps, which paused time fast-forwards
//! exactly. Elapsed time is then measured with `tokio::time::Instant`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use cxone_schedule_worker::{
    config::{CxoneSettings, GrantType, RetrySettings, Settings},
    cxone::{CxoneClient, CxoneError, JobStatus},
    domain::{ConflictResolution, ImportPayload, ScheduleEntry, ValidationMode},
};
use secrecy::SecretString;
use tokio::time::Instant;
use wiremock::{
    Mock, MockServer, Request, Respond, ResponseTemplate,
    matchers::{body_string_contains, header, method, path},
};

const SECRET: &str = "client-secret-hunter2";

fn settings(server: &MockServer) -> CxoneSettings {
    let mut c = Settings::defaults().cxone;
    c.base_url = server.uri();
    c.auth_url = server.uri();
    c.client_id = "my-client".into();
    c.client_secret = SecretString::from(SECRET);
    c
}

fn client_with(cfg: &CxoneSettings, retry: &RetrySettings) -> CxoneClient {
    // No timers in the HTTP client: see the module comment.
    let http = reqwest::Client::builder()
        .pool_idle_timeout(None)
        .build()
        .unwrap();
    CxoneClient::with_http_client(cfg, retry, http).unwrap()
}

fn client(server: &MockServer) -> CxoneClient {
    client_with(&settings(server), &RetrySettings::default())
}

/// Issues tok-1, tok-2, ... with the given lifetime, counting requests.
#[derive(Clone)]
struct Tokens {
    issued: Arc<AtomicUsize>,
    ttl: u64,
}

impl Tokens {
    fn new(ttl: u64) -> Self {
        Tokens {
            issued: Arc::new(AtomicUsize::new(0)),
            ttl,
        }
    }
    fn count(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

impl Respond for Tokens {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": format!("tok-{n}"),
            "expires_in": self.ttl,
            "token_type": "Bearer",
        }))
    }
}

async fn mount_tokens(server: &MockServer, ttl: u64) -> Tokens {
    let t = Tokens::new(ttl);
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(t.clone())
        .mount(server)
        .await;
    t
}

fn job_ok(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(serde_json::json!({"jobId": id, "status": "COMPLETED"}))
}

async fn mount_job(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/api/v2/wfm/async-jobs/j-1"))
        .respond_with(job_ok("j-1"))
        .mount(server)
        .await;
}

fn payload() -> ImportPayload {
    ImportPayload {
        schedule_entries: vec![ScheduleEntry {
            agent_id: "agent-42".into(),
            start_date_time: "2024-01-15T08:00:00.000Z".into(),
            end_date_time: "2024-01-15T16:00:00.000Z".into(),
            breaks: vec![],
            availability_overrides: vec![],
        }],
        validation_mode: ValidationMode::Strict,
        conflict_resolution: ConflictResolution::AutoResolve,
        target_calendar_id: "cal-1".into(),
    }
}

fn accepted() -> ResponseTemplate {
    ResponseTemplate::new(202).set_body_json(serde_json::json!({"jobId": "j-1"}))
}

/// The import endpoint answers `first` `times` times, then 202.
async fn mount_import_after(server: &MockServer, first: ResponseTemplate, times: u64) {
    Mock::given(method("POST"))
        .and(path("/api/v2/wfm/schedules/import"))
        .respond_with(first)
        .up_to_n_times(times)
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v2/wfm/schedules/import"))
        .respond_with(accepted())
        .with_priority(2)
        .mount(server)
        .await;
}

async fn import_requests(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == "/api/v2/wfm/schedules/import")
        .collect()
}

#[tokio::test(start_paused = true)]
async fn token_is_reused_across_calls() {
    let server = MockServer::start().await;
    let tokens = mount_tokens(&server, 3600).await;
    mount_job(&server).await;
    let c = client(&server);
    for _ in 0..5 {
        let job = c.get_job("j-1", None).await.unwrap();
        assert_eq!(job.status, JobStatus::Completed);
    }
    c.check_token().await.unwrap();
    assert_eq!(tokens.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_callers_share_one_token_request() {
    let server = MockServer::start().await;
    let tokens = Tokens::new(3600);
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        // Real-time delay on wiremock's side widens the race window.
        .respond_with(SlowTokens(tokens.clone()))
        .mount(&server)
        .await;
    mount_job(&server).await;
    let c = client(&server);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get_job("j-1", None).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(tokens.count(), 1);
}

struct SlowTokens(Tokens);
impl Respond for SlowTokens {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        self.0.respond(r).set_delay(Duration::from_millis(100))
    }
}

#[tokio::test(start_paused = true)]
async fn token_is_refreshed_ahead_of_expiry() {
    let server = MockServer::start().await;
    // 20 s lifetime: the 60 s margin is bounded to a quarter, so the
    // token is renewed from 15 s on.
    let tokens = mount_tokens(&server, 20).await;
    mount_job(&server).await;
    let c = client(&server);
    c.get_job("j-1", None).await.unwrap();
    tokio::time::advance(Duration::from_secs(14)).await;
    c.get_job("j-1", None).await.unwrap();
    assert_eq!(tokens.count(), 1, "still fresh at 14 s");
    tokio::time::advance(Duration::from_secs(2)).await;
    c.get_job("j-1", None).await.unwrap();
    assert_eq!(tokens.count(), 2, "renewed at 16 s");
    let reqs = server.received_requests().await.unwrap();
    let last = reqs.last().unwrap();
    assert_eq!(
        last.headers.get("authorization").unwrap(),
        "Bearer tok-2",
        "the renewed token is used"
    );
    // Well past expiry too.
    tokio::time::advance(Duration::from_secs(3600)).await;
    c.check_token().await.unwrap();
    assert_eq!(tokens.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn short_ttl_still_gives_a_usable_token() {
    let server = MockServer::start().await;
    let tokens = mount_tokens(&server, 5).await;
    mount_job(&server).await;
    let c = client(&server);
    c.get_job("j-1", None).await.unwrap();
    c.get_job("j-1", None).await.unwrap();
    assert_eq!(tokens.count(), 1, "a 5 s token is not refreshed at once");
}

#[tokio::test(start_paused = true)]
async fn unauthorized_refreshes_once_and_retries() {
    let server = MockServer::start().await;
    let tokens = mount_tokens(&server, 3600).await;
    Mock::given(method("GET"))
        .and(path("/api/v2/wfm/async-jobs/j-1"))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/wfm/async-jobs/j-1"))
        .and(header("authorization", "Bearer tok-2"))
        .respond_with(job_ok("j-1"))
        .mount(&server)
        .await;
    let c = client(&server);
    let job = c.get_job("j-1", None).await.unwrap();
    assert_eq!(job.job_id, "j-1");
    assert_eq!(tokens.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_second_unauthorized_is_permanent() {
    let server = MockServer::start().await;
    let tokens = mount_tokens(&server, 3600).await;
    Mock::given(method("POST"))
        .and(path("/api/v2/wfm/schedules/import"))
        .respond_with(ResponseTemplate::new(401))
        .expect(2)
        .mount(&server)
        .await;
    let err = client(&server)
        .submit_import(&payload(), "k", None)
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(401));
    assert_eq!(err.code(), "CXONE_UNAUTHORIZED");
    assert!(!err.is_transient());
    assert_eq!(tokens.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn rate_limited_waits_at_least_retry_after_seconds() {
    let server = MockServer::start().await;
    mount_tokens(&server, 3600).await;
    mount_import_after(
        &server,
        ResponseTemplate::new(429).insert_header("Retry-After", "2"),
        1,
    )
    .await;
    let c = client(&server);
    let start = Instant::now();
    let s = c.submit_import(&payload(), "k", None).await.unwrap();
    let took = start.elapsed();
    assert_eq!(s.job_id, "j-1");
    assert_eq!(s.attempts, 2);
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(
        took < Duration::from_secs(3),
        "floor, not floor + backoff: {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_http_date_is_honoured() {
    let server = MockServer::start().await;
    mount_tokens(&server, 3600).await;
    let when = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(6));
    mount_import_after(
        &server,
        ResponseTemplate::new(503).insert_header("Retry-After", when.as_str()),
        1,
    )
    .await;
    let start = Instant::now();
    let s = client(&server)
        .submit_import(&payload(), "k", None)
        .await
        .unwrap();
    // HTTP dates have whole seconds: 6 s ahead is at least 5 s ahead.
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(s.attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_429_holds_off_every_caller_of_the_client() {
    let server = MockServer::start().await;
    mount_tokens(&server, 3600).await;
    mount_import_after(
        &server,
        ResponseTemplate::new(429).insert_header("Retry-After", "3"),
        1,
    )
    .await;
    mount_job(&server).await;
    let c = client(&server);
    let start = Instant::now();
    let importer = {
        let c = c.clone();
        tokio::spawn(async move { c.submit_import(&payload(), "k", None).await })
    };
    // Wait (with a deadline) until the 429 has been seen, then poll a job:
    // that unrelated call must also wait for the hold. The deadline is in
    // real time and the wait only yields: the clock is paused, and a sleep
    // here would let it jump ahead while the request is on a real socket
    // (on a loaded machine, past a paused-time deadline before the 429).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.rate_limited_until().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no 429 seen within 10 s"
        );
        tokio::task::yield_now().await;
    }
    c.get_job("j-1", None).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    importer.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn service_unavailable_then_success() {
    let server = MockServer::start().await;
    mount_tokens(&server, 3600).await;
    mount_import_after(&server, ResponseTemplate::new(503), 1).await;
    let s = client(&server)
        .submit_import(&payload(), "k", None)
        .await
        .unwrap();
    assert_eq!(s.attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn calendar_busy_409_is_retried() {
    let server = MockServer::start().await;
    mount_tokens(&server, 3600).await;
    mount_import_after(&server, ResponseTemplate::new(409), 2).await;
    let s = client(&server)
        .submit_import(&payload(), "k", None)
        .await
        .unwrap();
    assert_eq!(s.attempts, 3);
}

#[tokio::test(start_paused = true)]
async fn bad_request_is_never_retried_and_keeps_the_body() {
    let server = MockServer::start().await;
    mount_tokens(&server, 3600).await;
    Mock::given(method("POST"))
        .and(path("/api/v2/wfm/schedules/import"))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(serde_json::json!({"errors": [{"code": "BAD_AGENT"}]})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server)
        .submit_import(&payload(), "k", None)
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(400));
    assert_eq!(err.code(), "CXONE_VALIDATION_FAILED");
    match &err {
        CxoneError::Permanent { body: Some(b), .. } => assert!(b.contains("BAD_AGENT"), "{b}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn forbidden_and_unknown_job_are_permanent() {
    let server = MockServer::start().await;
    mount_tokens(&server, 3600).await;
    Mock::given(method("POST"))
        .and(path("/api/v2/wfm/schedules/import"))
        .respond_with(ResponseTemplate::new(403))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    let err = c.submit_import(&payload(), "k", None).await.unwrap_err();
    assert_eq!(err.code(), "CXONE_FORBIDDEN");
    assert!(err.to_string().contains("wfm:schedules:write"), "{err}");
    let err = c.get_job("nope", None).await.unwrap_err();
    assert_eq!(err.http_status(), Some(404));
    assert!(!err.is_transient());
}

#[tokio::test(start_paused = true)]
async fn the_same_body_and_headers_are_resent_on_every_retry() {
    let server = MockServer::start().await;
    mount_tokens(&server, 3600).await;
    mount_import_after(&server, ResponseTemplate::new(502), 3).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let s = client(&server)
        .submit_import(&payload(), "batch-123", Some(tp))
        .await
        .unwrap();
    assert_eq!(s.attempts, 4);
    let reqs = import_requests(&server).await;
    assert_eq!(reqs.len(), 4);
    let expected = serde_json::to_vec(&payload()).unwrap();
    for r in &reqs {
        assert_eq!(r.body, expected);
        assert_eq!(r.headers.get("idempotency-key").unwrap(), "batch-123");
        assert_eq!(r.headers.get("traceparent").unwrap(), tp);
        assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
        assert_eq!(r.headers.get("authorization").unwrap(), "Bearer tok-1");
    }
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_the_retry_budget() {
    let server = MockServer::start().await;
    mount_tokens(&server, 3600).await;
    Mock::given(method("POST"))
        .and(path("/api/v2/wfm/schedules/import"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let retry = RetrySettings {
        base: Duration::from_millis(200),
        cap: Duration::from_millis(2_000),
        max_elapsed: Duration::from_secs(10),
    };
    let c = client_with(&settings(&server), &retry);
    let start = Instant::now();
    let err = c.submit_import(&payload(), "k", None).await.unwrap_err();
    assert!(
        start.elapsed() <= Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(err.code(), "RETRIES_EXHAUSTED");
    assert_eq!(err.http_status(), Some(503));
    match err {
        CxoneError::RetriesExhausted { attempts, .. } => assert!(attempts >= 3, "{attempts}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_budget_fails_at_once() {
    let server = MockServer::start().await;
    mount_tokens(&server, 3600).await;
    Mock::given(method("POST"))
        .and(path("/api/v2/wfm/schedules/import"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "3600"))
        .expect(1)
        .mount(&server)
        .await;
    let start = Instant::now();
    let err = client(&server)
        .submit_import(&payload(), "k", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "RETRIES_EXHAUSTED");
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn malformed_responses_are_permanent() {
    let server = MockServer::start().await;
    mount_tokens(&server, 3600).await;
    Mock::given(method("POST"))
        .and(path("/api/v2/wfm/schedules/import"))
        .respond_with(ResponseTemplate::new(202).set_body_string("<html>ok</html>"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"status": "EXPLODED"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    let err = c.submit_import(&payload(), "k", None).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("malformed"), "{err}");
    let err = c.get_job("j-9", None).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn job_states_and_errors_are_read() {
    let server = MockServer::start().await;
    mount_tokens(&server, 3600).await;
    Mock::given(method("GET"))
        .and(path("/api/v2/wfm/async-jobs/j-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "jobId": "j-2", "status": "FAILED", "errors": [{"code": "X"}]
        })))
        .mount(&server)
        .await;
    let job = client(&server).get_job("j-2", None).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.errors.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn client_credentials_form_is_sent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string_contains("grant_type=client_credentials"))
        .and(body_string_contains("client_id=my-client"))
        .and(body_string_contains("client_secret=client-secret-hunter2"))
        .and(body_string_contains("scope=wfm%3Aschedules%3Awrite"))
        .respond_with(Tokens::new(3600))
        .expect(1)
        .mount(&server)
        .await;
    client(&server).check_token().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn password_grant_sends_access_key_and_basic_client_auth() {
    let server = MockServer::start().await;
    // base64("my-client:client-secret-hunter2")
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("my-client:{SECRET}")
        )
    );
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("authorization", basic.as_str()))
        .and(body_string_contains("grant_type=password"))
        .and(body_string_contains("username=AK-1"))
        .and(body_string_contains("password=ak-secret"))
        .respond_with(Tokens::new(3600))
        .expect(1)
        .mount(&server)
        .await;
    let mut cfg = settings(&server);
    cfg.grant_type = GrantType::Password;
    cfg.access_key_id = "AK-1".into();
    cfg.access_key_secret = SecretString::from("ak-secret");
    client_with(&cfg, &RetrySettings::default())
        .check_token()
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn token_endpoint_failures() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(
            // A server that echoes the secret back must not leak it.
            ResponseTemplate::new(401).set_body_json(serde_json::json!({
                "error": "invalid_client", "echo": SECRET
            })),
        )
        .mount(&server)
        .await;
    let c = client(&server);
    let err = c.check_token().await.unwrap_err();
    assert_eq!(err.code(), "CXONE_UNAUTHORIZED");
    assert!(!err.is_transient());
    let text = format!("{err} {err:?}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(
        text.contains("cxone.client_secret"),
        "says what to check: {text}"
    );
    let err = c.submit_import(&payload(), "k", None).await.unwrap_err();
    assert_eq!(err.code(), "CXONE_UNAUTHORIZED", "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_transient_token_failure_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    let tokens = mount_tokens(&server, 3600).await;
    Mock::given(method("POST"))
        .and(path("/api/v2/wfm/schedules/import"))
        .respond_with(accepted())
        .mount(&server)
        .await;
    let s = client(&server)
        .submit_import(&payload(), "k", None)
        .await
        .unwrap();
    assert_eq!(s.attempts, 1, "API attempts, not token attempts");
    assert_eq!(tokens.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn connection_refused_is_transient() {
    // A port nobody listens on: bind, read the port, drop.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = Settings::defaults().cxone;
    cfg.base_url = format!("http://127.0.0.1:{port}");
    cfg.auth_url = cfg.base_url.clone();
    let retry = RetrySettings {
        base: Duration::from_millis(100),
        cap: Duration::from_millis(1000),
        max_elapsed: Duration::from_secs(3),
    };
    let err = client_with(&cfg, &retry).check_token().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn debug_output_has_no_secrets() {
    let server = MockServer::start().await;
    mount_tokens(&server, 3600).await;
    let c = client(&server);
    c.check_token().await.unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains(SECRET), "{dbg}");
    assert!(!dbg.contains("tok-1"), "{dbg}");
    assert!(dbg.contains("my-client"), "{dbg}");
}

#[test]
fn new_rejects_a_bad_url_with_the_key_name() {
    let mut cfg = Settings::defaults().cxone;
    cfg.base_url = "ftp://x".into();
    let err = CxoneClient::new(&cfg, &RetrySettings::default()).unwrap_err();
    assert!(err.to_string().contains("cxone.base_url"), "{err}");
}
