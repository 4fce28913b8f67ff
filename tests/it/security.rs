//! Security (docs/security.md): secrets never reach the logs, the webhook
//! refuses unsigned, wrongly signed and oversized requests, and `amqps://` and
//! `https://` work through rustls with a private CA made in the test.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::support::*;
use cxone_schedule_worker::{
    amqp, app,
    config::{RetrySettings, Settings},
    cxone::{CxoneClient, webhook},
    http::{self, HttpState},
    pipeline::jobs::JobRegistry,
    pipeline::settle::Outbound,
    sim::{FaultsPatch, SimConfig},
    telemetry,
};
use lapin::{options::*, types::FieldTable};
use secrecy::ExposeSecret;
use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    time::Instant,
};

const WAIT: Duration = Duration::from_secs(60);

fn random(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(rand::random::<[u8; 12]>()))
}

/// A free port on 127.0.0.1 (bound, then released for the worker to take).
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A broker user with a random password, so that the AMQP password is a
/// real secret the log check can look for. Deleted on drop.
struct BrokerUser {
    name: String,
    password: String,
}

impl BrokerUser {
    fn new() -> BrokerUser {
        let name = random("csw-test");
        let password = random("amqp-pw");
        rabbitmqctl(&["add_user", &name, &password]);
        rabbitmqctl(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"]);
        BrokerUser { name, password }
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

/// The worker binary with `--log-format json` and `RUST_LOG=debug`, through
/// token refreshes (5 s tokens), revoked tokens (401s), a wrong client secret
/// (token endpoint 401s), signed webhooks and refused webhooks: no line of
/// its stderr holds the client secret, the webhook secret, the AMQP password
/// or any access token the simulator issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let client_secret = random("client-secret");
    let webhook_secret = random("webhook-secret");
    let user = BrokerUser::new();
    let http_addr = free_addr();
    let sim = sim(SimConfig {
        client_secret: client_secret.clone(),
        token_ttl_s: 5,
        job_base_ms: 50,
        webhook_url: Some(format!("http://{http_addr}/webhooks/cxone")),
        webhook_secret: Some(webhook_secret.clone()),
        ..fast_sim()
    })
    .await;
    let amqp_url = format!("amqp://{}:{}@127.0.0.1:5672/%2f", user.name, user.password);
    let settings = settings(
        "secrets",
        &sim.base_url(),
        &[("AMQP_URL", amqp_url.as_str())],
    );
    let publisher = Publisher::new(&settings).await;
    let collector = Collector::start(&settings).await;
    let mut env = worker_env(
        &settings,
        &[
            ("CSW__HTTP__LISTEN", http_addr.to_string()),
            ("CXONE_CLIENT_SECRET", client_secret.clone()),
            ("CXONE_WEBHOOK_SECRET", webhook_secret.clone()),
            ("AMQP_URL", amqp_url.clone()),
        ],
    );
    env.push(("CSW__TELEMETRY__LOG_FORMAT".into(), "json".into()));
    let log = log_path("secrets");
    let mut worker = WorkerProc::spawn_args(&["--log-format", "json", "run"], &env, &log, "debug");

    let http = reqwest::Client::new();
    let hook = format!("http://{http_addr}/webhooks/cxone");
    let mut ids = Vec::new();
    let started = Instant::now();
    let mut round = 0u32;
    // ~14 s of traffic: several 5 s token lifetimes.
    while started.elapsed() < Duration::from_secs(14) {
        for k in 0..10u32 {
            let id = format!("s{round}-{k}");
            let cal = format!("cal-{k}");
            let (s, e) = (at(15 + round % 10, k), at(15 + round % 10, k + 1));
            publisher
                .publish(&change(&id, &cal, &[("a1", &s, &e)]))
                .await;
            ids.push(id);
        }
        match round % 4 {
            // Revoked tokens: the API answers 401, the worker refreshes once.
            1 => sim.revoke_tokens(),
            // A wrong signature and a missing one are refused.
            2 => {
                let body = br#"{"eventType":"WFM_SCHEDULE_IMPORT_COMPLETED","jobId":"j","status":"COMPLETED"}"#;
                let r = http
                    .post(&hook)
                    .header(webhook::SIGNATURE_HEADER, webhook::sign(b"wrong", body))
                    .body(&body[..])
                    .send()
                    .await;
                if let Ok(r) = r {
                    assert_eq!(r.status(), 401);
                }
            }
            _ => {}
        }
        if round == 5 {
            // The CXone app's secret rotated under the worker: the token
            // endpoint refuses it for a while.
            sim.revoke_tokens();
            sim.set_faults(FaultsPatch {
                client_secret: Some(random("rotated")),
                ..FaultsPatch::default()
            })
            .unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            sim.set_faults(FaultsPatch {
                client_secret: Some(client_secret.clone()),
                ..FaultsPatch::default()
            })
            .unwrap();
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Changes in flight while the token endpoint refused the client fail
    // (a 401 from the token endpoint is permanent); the rest complete.
    let want: std::collections::HashSet<String> = ids.iter().cloned().collect();
    collector
        .events_until(WAIT, |events| {
            let done: std::collections::HashSet<&str> = events
                .iter()
                .filter(|e| {
                    e["type"] == "wfm.schedule.import.completed"
                        || e["type"] == "wfm.schedule.import.failed"
                })
                .flat_map(|e| e["data"]["changeIds"].as_array().into_iter().flatten())
                .filter_map(|v| v.as_str())
                .collect();
            want.iter().all(|id| done.contains(id.as_str()))
        })
        .await;
    let failed = collector.change_ids_in("schedule.import.failed");
    assert!(
        failed.len() < ids.len() / 4,
        "most changes completed: {} failed",
        failed.len()
    );
    let metrics = http
        .get(format!("http://{http_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(40)).await.unwrap();
    assert!(status.success(), "exit after SIGTERM: {status:?}");

    let stats = sim.stats();
    assert!(
        stats.token_requests >= 3,
        "tokens were refreshed: {stats:?}"
    );
    assert!(stats.responses401 >= 2, "401s happened: {stats:?}");
    assert!(
        metrics.contains(r#"csw_webhooks_total{result="matched"}"#),
        "signed webhooks reached the worker:\n{metrics}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() > 100,
        "debug logging was on: {} lines",
        lines.len()
    );
    for l in &lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not a JSON log line: {l}"
        );
    }
    let tokens = sim.issued_tokens();
    assert!(tokens.len() >= 3);
    let mut secrets: Vec<(&str, &str)> = vec![
        ("client secret", &client_secret),
        ("webhook secret", &webhook_secret),
        ("fleet secret", settings.fleet.secret.expose_secret()),
        ("AMQP password", &user.password),
    ];
    for t in &tokens {
        secrets.push(("access token", t));
    }
    for (what, secret) in secrets {
        if let Some(l) = lines.iter().find(|l| l.contains(secret)) {
            panic!("the {what} is in the log ({}):\n{l}", log.display());
        }
    }
    // Any bearer credential at all (a token of another shape).
    for l in &lines {
        let lower = l.to_ascii_lowercase();
        if let Some(i) = lower.find("bearer ") {
            let rest = &l[i + 7..];
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            assert!(word.len() < 16, "a bearer credential is in the log:\n{l}");
        }
    }
    publisher.close().await;
    collector.cleanup().await;
    sim.shutdown().await;
}

/// Serves the worker's HTTP routes with `secret`.
async fn http_routes(secret: Option<&str>, max_body: usize) -> SocketAddr {
    let cfg = Settings::defaults();
    let state = HttpState {
        broker_ready: Arc::default(),
        client: CxoneClient::new(&cfg.cxone, &RetrySettings::default()).unwrap(),
        jobs: JobRegistry::default(),
        webhook_secret: secret.map(|s| s.to_owned().into()),
        metrics: telemetry::metrics_handle(),
        // No broker here: relaying a notice for an unknown job gives up at once.
        relay: Outbound {
            publisher: tokio::sync::watch::channel(None).1,
            events_exchange: cfg.amqp.events_exchange.clone(),
            dead_letter_exchange: cfg.amqp.dead_letter_exchange.clone(),
            hard_stop: tokio_util::sync::CancellationToken::new(),
        },
        relay_exchange: "unused".into(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = http::router(state, max_body);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn webhook_refuses_bad_signatures_and_oversized_bodies() {
    let secret = random("hook");
    let max = 1024;
    let addr = http_routes(Some(&secret), max).await;
    let url = format!("http://{addr}/webhooks/cxone");
    let http = reqwest::Client::new();
    let body =
        br#"{"eventType":"WFM_SCHEDULE_IMPORT_COMPLETED","jobId":"j-1","status":"COMPLETED"}"#
            .to_vec();
    let good = webhook::sign(secret.as_bytes(), &body);
    let post = |sig: Option<String>, body: Vec<u8>| {
        let mut r = http.post(&url).body(body);
        if let Some(s) = sig {
            r = r.header(webhook::SIGNATURE_HEADER, s);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(None, body.clone()).await, 401, "missing signature");
    assert_eq!(
        post(Some(webhook::sign(b"not-the-secret", &body)), body.clone()).await,
        401,
        "wrong secret"
    );
    assert_eq!(
        post(Some(good.clone()), b"{}".to_vec()).await,
        401,
        "signature of another body"
    );
    assert_eq!(post(Some("sha256=zz".into()), body.clone()).await, 401);
    assert_eq!(
        post(Some(good[7..].to_owned()), body.clone()).await,
        401,
        "no sha256= prefix"
    );
    assert_eq!(post(Some(String::new()), body.clone()).await, 401);
    // Accepted; the job is not this replica's, so it is passed on (202).
    assert_eq!(
        post(Some(good.clone()), body.clone()).await,
        202,
        "valid signature"
    );

    // Over http.webhook_max_body_bytes: 413, signed or not, announced or chunked.
    let big = vec![b' '; max + 1];
    let big_sig = webhook::sign(secret.as_bytes(), &big);
    assert_eq!(post(Some(big_sig.clone()), big.clone()).await, 413);
    assert_eq!(post(None, big.clone()).await, 413);
    // Chunked, with no Content-Length to refuse up front: written by hand.
    let status = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut req = format!(
            "POST /webhooks/cxone HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n{}: {big_sig}\r\nConnection: close\r\n\r\n",
            webhook::SIGNATURE_HEADER
        )
        .into_bytes();
        for c in big.chunks(100) {
            req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            req.extend_from_slice(c);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        let _ = tcp.write_all(&req).await;
        let mut resp = Vec::new();
        let _ = tcp.read_to_end(&mut resp).await;
        String::from_utf8_lossy(&resp)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0)
    };
    assert_eq!(status, 413, "chunked body over the limit");
    // Exactly at the limit is read (and then judged on its content).
    let at_limit = vec![b' '; max];
    let sig = webhook::sign(secret.as_bytes(), &at_limit);
    assert_eq!(post(Some(sig), at_limit).await, 400);

    // Without a secret, the route does not exist.
    let open = http_routes(None, max).await;
    let r = http
        .post(format!("http://{open}/webhooks/cxone"))
        .header(webhook::SIGNATURE_HEADER, good)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A private CA and a server certificate for localhost and 127.0.0.1.
struct Pki {
    dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "csw test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Pki {
            dir,
            server: Arc::new(server),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// A TLS-terminating TCP proxy on 127.0.0.1 in front of `upstream`.
async fn tls_proxy(server: Arc<rustls::ServerConfig>, upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

fn env_map(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// The worker end to end over `amqps://` (a TLS proxy in front of the broker)
/// and `https://` (a TLS proxy in front of the simulator), trusting a private
/// CA through `amqp.ca_file` and `cxone.ca_file`; without the CA file, both
/// refuse the unknown issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_and_https_work_with_a_private_ca_and_fail_without_it() {
    let pki = Pki::new();
    let ca = pki.ca_file().display().to_string();
    let sim = sim(fast_sim()).await;
    let https = tls_proxy(pki.server.clone(), sim.addr()).await;
    let amqps = tls_proxy(pki.server.clone(), "127.0.0.1:5672".parse().unwrap()).await;
    let sim_url = format!("https://localhost:{}", https.port());
    let amqps_url = format!("amqps://guest:guest@localhost:{}/%2f", amqps.port());

    // Without the CA: the handshakes fail, with errors that say so.
    let untrusted = Settings::load_from(
        None,
        &env_map(&[
            ("AMQP_URL", amqps_url.clone()),
            ("CXONE_BASE_URL", sim_url.clone()),
            ("CXONE_AUTH_URL", sim_url.clone()),
        ]),
    )
    .unwrap();
    let err = amqp::connect(&untrusted.amqp, "no-ca")
        .await
        .expect_err("amqps without the CA fails");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    let client = CxoneClient::new(&untrusted.cxone, &RetrySettings::default()).unwrap();
    let err = client
        .check_token()
        .await
        .expect_err("https without the CA fails");
    assert!(
        format!("{err}").to_lowercase().contains("certificate"),
        "the error names the certificate problem: {err}"
    );

    // With it: the worker runs over both.
    let settings = settings(
        "tls",
        &sim_url,
        &[
            ("AMQP_URL", amqps_url.as_str()),
            ("CSW__AMQP__CA_FILE", ca.as_str()),
            ("CSW__CXONE__CA_FILE", ca.as_str()),
        ],
    );
    assert!(settings.amqp.url.starts_with("amqps://"));
    let conn = amqp::connect(&settings.amqp, "tls-check")
        .await
        .expect("amqps with the CA");
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(q.name().as_str().starts_with("amq.gen"));
    let _ = conn.close(200, "bye".into()).await;

    let mut tap_settings = settings.clone();
    tap_settings.amqp.url = amqp_url();
    let publisher = Publisher::new(&tap_settings).await;
    let collector = Collector::start(&tap_settings).await;
    let worker = app::start(settings.clone()).await.unwrap();
    publisher
        .publish(&change(
            "tls-1",
            "cal-tls",
            &[("a1", &at(15, 8), &at(15, 16))],
        ))
        .await;
    collector.wait_completed(&["tls-1".into()], WAIT).await;
    assert_eq!(sim.shifts("cal-tls").len(), 1);
    worker.shutdown();
    worker.wait().await.unwrap();
    publisher.close().await;
    collector.cleanup().await;
    sim.shutdown().await;
}

/// A CA file that is missing or holds no certificate stops start-up with
/// one line naming the key.
#[test]
fn ca_file_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    for key in ["CSW__AMQP__CA_FILE", "CSW__CXONE__CA_FILE"] {
        for path in [Path::new("/nonexistent/ca.pem"), junk.as_path()] {
            let err = Settings::load_from(None, &env_map(&[(key, path.display().to_string())]))
                .unwrap_err()
                .to_string();
            let name = key
                .trim_start_matches("CSW__")
                .replace("__", ".")
                .to_lowercase();
            assert!(err.contains(&name), "{err}");
        }
    }
}
