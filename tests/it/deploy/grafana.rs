//! deploy/grafana/dashboard.json: importable, and every metric shown and known.

use cxone_schedule_worker::telemetry::metrics::CATALOGUE;

use super::*;

fn dashboard() -> Json {
    serde_json::from_str(&read("deploy/grafana/dashboard.json"))
        .unwrap_or_else(|e| panic!("deploy/grafana/dashboard.json: not JSON: {e}"))
}

fn dashboard_exprs(d: &Json) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<&Json> = d["panels"].as_array().into_iter().flatten().collect();
    while let Some(p) = stack.pop() {
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((title.clone(), e.to_owned()));
            }
        }
        stack.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

#[test]
fn dashboard_is_importable_and_queries_known_metrics() {
    let d = dashboard();
    let f = "deploy/grafana/dashboard.json";
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{f}: schemaVersion must be >= 36"
    );
    assert!(d["uid"].is_string(), "{f}: needs a stable uid");
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "{f}: needs a `datasource` template variable of type datasource, query prometheus"
    );
    let mut ids = BTreeSet::new();
    let mut stack: Vec<&Json> = d["panels"].as_array().into_iter().flatten().collect();
    assert!(!stack.is_empty(), "{f}: no panels");
    while let Some(p) = stack.pop() {
        let title = p["title"].as_str().unwrap_or("?");
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{f}: panel {title:?} has no id"));
        assert!(ids.insert(id), "{f}: panel id {id} used twice");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap_or(99), g["w"].as_u64().unwrap_or(99));
        assert!(x + w <= 24, "{f}: panel {title:?} is wider than the grid");
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{f}: panel {title:?} must use the ${{datasource}} variable"
            );
            for t in p["targets"].as_array().into_iter().flatten() {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{f}: a query of panel {title:?} must use the ${{datasource}} variable"
                );
            }
        }
        stack.extend(p["panels"].as_array().into_iter().flatten());
    }
    let exprs = dashboard_exprs(&d);
    let mut used = BTreeSet::new();
    for (title, e) in &exprs {
        let names = csw_names(e);
        let unknown = unknown_metrics(&names);
        assert!(
            unknown.is_empty(),
            "{f}: panel {title:?} queries unknown metrics {unknown:?}"
        );
        used.extend(names);
    }
    let used = used.iter().map(|n| base_metric(n)).collect::<BTreeSet<_>>();
    let missing: Vec<&str> = CATALOGUE
        .iter()
        .map(|m| m.name)
        .filter(|m| !used.contains(m))
        .collect();
    assert!(
        missing.is_empty(),
        "{f}: no panel shows these metrics: {missing:?}"
    );
}
