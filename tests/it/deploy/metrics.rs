//! The metric names the code exports, the dashboard and alerts query, and the operations guide documents.

use cxone_schedule_worker::telemetry::metrics::{self, MetricKind};

use super::*;

/// Every `csw_…` identifier in a text.
pub(super) fn csw_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("csw_") {
        let start = i + pos;
        let prev_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if prev_ok {
            names.insert(text[start..end].to_owned());
        }
        i = end.max(start + 4);
    }
    names
}

pub(super) fn unknown_metrics(names: &BTreeSet<String>) -> Vec<String> {
    names
        .iter()
        .filter(|n| metrics::find(base_metric(n)).is_none())
        .cloned()
        .collect()
}

fn is_histogram(name: &str) -> bool {
    metrics::find(name).is_some_and(|m| m.kind == MetricKind::Histogram)
}

/// The metric a series belongs to: a histogram's `_bucket`, `_sum` and
/// `_count` series belong to the histogram.
pub(super) fn base_metric(n: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| n.strip_suffix(s).filter(|b| is_histogram(b)))
        .unwrap_or(n)
}

#[test]
fn code_metrics_are_known_and_documented() {
    // Every metric name the code mentions is in the catalogue
    // (telemetry::metrics), which dashboards, alerts and docs are checked
    // against, and every catalogued metric is in the operations guide's table.
    let catalogue = Path::new("src/telemetry/metrics.rs");
    let mut in_code = BTreeSet::new();
    let mut dirs = vec![root().join("src")];
    while let Some(dir) = dirs.pop() {
        for e in fs::read_dir(&dir).expect("src").filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with(catalogue) {
                let text = fs::read_to_string(&p).expect("read src");
                in_code.extend(csw_names(&text).into_iter().filter(|n| n.len() > 4));
            }
        }
    }
    let unknown = unknown_metrics(&in_code);
    assert!(
        unknown.is_empty(),
        "src/telemetry/metrics.rs: the code exports metrics missing from the catalogue (add them, the dashboard and docs/operations.md): {unknown:?}"
    );
    let docs = read("docs/operations.md");
    let missing: Vec<&str> = metrics::CATALOGUE
        .iter()
        .map(|m| m.name)
        .filter(|m| !docs.contains(&format!("`{m}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md: the metrics table lacks {missing:?}"
    );
}
