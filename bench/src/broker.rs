//! The broker under measurement, where it runs on this machine: its
//! quorum-queue log rolled over before a pre-fill, a wait for it to go
//! quiet before a phase, and its version for the report.

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tokio::time::Instant;

use crate::{numbers::ms, proc_stats::broker_cpu_seconds_now};

/// Rolls the local broker's quorum-queue write-ahead log over with
/// `rabbitmqctl`, so that a pre-fill after it is written to the new log and
/// the drain after that reads its messages from memory, every run alike.
/// Only for a broker on this machine; false (with a note) when it fails.
pub async fn roll_wal() -> bool {
    if broker_cpu_seconds_now().await.is_none() {
        return false;
    }
    let run = tokio::process::Command::new("rabbitmqctl")
        .args(["eval", "ra_log_wal:force_roll_over(ra_log_wal)."])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok(out)) if out.status.success() && out.stdout.starts_with(b"ok") => true,
        Ok(Ok(out)) => {
            eprintln!(
                "bench: rabbitmqctl could not roll the broker's log over ({}); measuring without it (--no-wal-roll to skip the attempt)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Ok(Err(e)) => {
            eprintln!(
                "bench: cannot run rabbitmqctl ({e}); the broker's log is not rolled over before pre-fills"
            );
            false
        }
        Err(_) => {
            eprintln!(
                "bench: rabbitmqctl did not answer within 60 s; the broker's log is not rolled over"
            );
            false
        }
    }
}

/// Waits (up to 20 s) until the local broker uses under a tenth of a core
/// over a quarter second: what it still does after a pre-fill (writing its
/// log to segments, say) or a drain must not be counted against the phase
/// after it.
/// Returns at once when the broker is not local.
pub async fn wait_quiet(phase: &str) {
    const WINDOW: Duration = Duration::from_millis(250);
    let started = Instant::now();
    let Some(mut before) = broker_cpu_seconds_now().await else {
        return;
    };
    loop {
        tokio::time::sleep(WINDOW).await;
        let Some(now) = broker_cpu_seconds_now().await else {
            return;
        };
        let busy = (now - before) / WINDOW.as_secs_f64();
        before = now;
        if busy < 0.1 || started.elapsed() > Duration::from_secs(20) {
            eprintln!(
                "bench: {phase}: broker quiet after {} ms (last {:.0} % of a core)",
                ms(started.elapsed()),
                busy * 100.0
            );
            return;
        }
    }
}

/// The broker's version, from the management API on the AMQP host (port
/// 15672, the URL's credentials); `None` when that is not reachable.
pub async fn version(amqp_url: &str) -> Option<String> {
    let url = reqwest::Url::parse(amqp_url).ok()?;
    let host = url.host_str()?;
    let user = if url.username().is_empty() {
        "guest"
    } else {
        url.username()
    };
    let pass = url.password().unwrap_or("guest");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let v: Value = http
        .get(format!("http://{host}:15672/api/overview"))
        .basic_auth(user, Some(pass))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["rabbitmq_version"].as_str().map(str::to_owned)
}
