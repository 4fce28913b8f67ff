//! `/metrics` in Prometheus text format: every `csw_` series belongs to a
//! metric of the catalogue (`telemetry::metrics`) and carries its `# HELP`
//! and `# TYPE` lines, as `promtool check metrics` requires.

use std::{collections::HashMap, process::Stdio, time::Duration};

use cxone_schedule_worker::telemetry::metrics::{CATALOGUE, MetricKind, find};
use tokio::io::AsyncWriteExt;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// The metric a series belongs to: a histogram's `_bucket`, `_sum` and
/// `_count` series belong to the histogram.
fn metric_of(series: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| {
            series
                .strip_suffix(s)
                .filter(|b| find(b).is_some_and(|m| m.kind == MetricKind::Histogram))
        })
        .unwrap_or(series)
}

/// Problems of the `csw_` part of a Prometheus text exposition.
fn exposition_problems(text: &str) -> Vec<String> {
    let mut help: HashMap<&str, &str> = HashMap::new();
    let mut kind: HashMap<&str, &str> = HashMap::new();
    let mut problems = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help.insert(name, text);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').unwrap_or((rest, ""));
            kind.insert(name, t);
        } else if line.starts_with("csw_") {
            let series = line.split(['{', ' ']).next().unwrap_or(line);
            let metric = metric_of(series);
            let Some(def) = find(metric) else {
                problems.push(format!("{series}: not in the catalogue"));
                continue;
            };
            match help.get(metric) {
                None => problems.push(format!("{series}: no # HELP line before it")),
                Some(h) if *h != def.help => {
                    problems.push(format!("{metric}: # HELP {h:?}, catalogue {:?}", def.help))
                }
                Some(_) => {}
            }
            match kind.get(metric) {
                None => problems.push(format!("{series}: no # TYPE line before it")),
                Some(t) if *t != def.kind.prometheus_type() => problems.push(format!(
                    "{metric}: # TYPE {t}, catalogue {}",
                    def.kind.prometheus_type()
                )),
                Some(_) => {}
            }
        }
    }
    problems
}

/// `promtool check metrics` on `text`, when promtool is installed.
async fn promtool_problems(text: &str) -> Option<String> {
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    (!out.status.success()).then(|| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_csw_series_has_help_and_type() {
    let app = spawn_app(fast_sim(), "promtext", &[]).await;
    // An import and a rejection, so counters, gauges and histograms all have series.
    app.publisher
        .publish(&change("pm1", "cal-pm", &[("a1", &at(15, 8), &at(15, 16))]))
        .await;
    app.publisher
        .publish_raw("cal-pm", b"not json", Default::default())
        .await;
    app.collector.wait_completed(&["pm1".into()], WAIT).await;
    app.collector
        .events_until(WAIT, |e| {
            e.iter()
                .any(|e| e["type"] == "wfm.schedule.change.rejected")
        })
        .await;
    let text = reqwest::get(format!("http://{}/metrics", app.worker.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for kind in [
        MetricKind::Counter,
        MetricKind::Gauge,
        MetricKind::Histogram,
    ] {
        assert!(
            CATALOGUE
                .iter()
                .filter(|m| m.kind == kind)
                .any(|m| text.contains(&format!("# TYPE {} ", m.name))),
            "no {kind:?} exported:\n{text}"
        );
    }
    let problems = exposition_problems(&text);
    assert!(problems.is_empty(), "{problems:#?}\n{text}");
    if let Some(problems) = promtool_problems(&text).await {
        panic!("promtool check metrics:\n{problems}\n{text}");
    }
    app.finish().await;
}
