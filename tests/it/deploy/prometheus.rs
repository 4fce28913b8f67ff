//! deploy/prometheus/alerts.yaml: complete rules that query known metrics and queues.

use super::*;

#[test]
fn alerts_are_complete_and_query_known_metrics() {
    let f = "deploy/prometheus/alerts.yaml";
    let a = yaml_one(f);
    let d = defaults();
    let mut exprs = Vec::new();
    let mut names = BTreeSet::new();
    for g in seq_of(&a["groups"], "alerts groups") {
        for r in seq_of(&g["rules"], "alerts rules") {
            let name = str_of(&r["alert"], &format!("{f}: rule without `alert`")).to_owned();
            assert!(names.insert(name.clone()), "{f}: alert {name} twice");
            let expr = str_of(&r["expr"], &format!("{f}: {name} expr")).to_owned();
            let severity = r["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("critical" | "warning" | "info")),
                "{f}: {name}: labels.severity must be critical, warning or info"
            );
            for ann in ["summary", "description"] {
                assert!(
                    r["annotations"][ann]
                        .as_str()
                        .is_some_and(|s| s.trim().len() > 10),
                    "{f}: {name}: annotations.{ann} must say what happened and what to do"
                );
            }
            let unknown = unknown_metrics(&csw_names(&expr));
            assert!(
                unknown.is_empty(),
                "{f}: {name} queries unknown metrics {unknown:?}"
            );
            // Queue names in selectors must be the worker's.
            for q in expr.split("queue=\"").skip(1) {
                let q = q.split('"').next().unwrap_or_default();
                assert!(
                    [
                        &d.amqp.dead_letter_queue,
                        &d.amqp.inbound_queue,
                        &d.amqp.unrouted_events_queue
                    ]
                    .iter()
                    .any(|n| n.as_str() == q),
                    "{f}: {name} selects queue {q:?}, which is not a default queue name"
                );
            }
            exprs.push(expr);
        }
    }
    let all = exprs.join("\n");
    for needle in [
        "csw_dead_lettered_total",
        &format!(
            "rabbitmq_queue_messages_ready{{queue=\"{}\"}}",
            d.amqp.dead_letter_queue
        ),
        "csw_imports_total{outcome=\"failed\"}",
        "csw_cxone_rate_limited_total",
        "csw_broker_connected == 0",
        "up{",
        "csw_imports_in_flight",
    ] {
        assert!(all.contains(needle), "{f}: no alert uses {needle}");
    }
}
