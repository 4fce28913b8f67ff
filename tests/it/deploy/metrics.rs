//! The metric names the code exports, the dashboard and alerts query, and the operations guide documents.

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
        .filter(|n| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).filter(|b| HISTOGRAMS.contains(b)))
                .unwrap_or(n);
            !KNOWN_METRICS.contains(&base)
        })
        .cloned()
        .collect()
}

pub(super) fn base_metric(n: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| n.strip_suffix(s).filter(|b| HISTOGRAMS.contains(b)))
        .unwrap_or(n)
}

#[test]
fn code_metrics_are_known_and_documented() {
    // Every metric the code registers is in KNOWN_METRICS (so dashboards and
    // docs can be kept complete) and in the operations guide's table.
    let mut in_code = BTreeSet::new();
    let mut dirs = vec![root().join("src")];
    while let Some(dir) = dirs.pop() {
        for e in fs::read_dir(&dir).expect("src").filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = fs::read_to_string(&p).expect("read src");
                for macro_ in ["counter!(", "gauge!(", "histogram!("] {
                    for part in text.split(macro_).skip(1) {
                        let part = part.trim_start();
                        if let Some(name) = part.strip_prefix('"').and_then(|r| r.split('"').next())
                            && name.starts_with("csw_")
                        {
                            in_code.insert(name.to_owned());
                        }
                    }
                }
            }
        }
    }
    let unknown = unknown_metrics(&in_code);
    assert!(
        unknown.is_empty(),
        "tests/deploy.rs: the code exports metrics missing from KNOWN_METRICS (add them, the dashboard and docs/operations.md): {unknown:?}"
    );
    let docs = read("docs/operations.md");
    let missing: Vec<&&str> = KNOWN_METRICS
        .iter()
        .filter(|m| !docs.contains(&format!("`{m}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md: the metrics table lacks {missing:?}"
    );
}
