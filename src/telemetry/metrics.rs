//! Every metric the worker exports, named once with its kind, help text and
//! labels.
//!
//! Call sites record through these constants; [`describe`] gives each one
//! its `# HELP` line on `/metrics`, and the deployment checks (dashboard,
//! alerts, operations guide) read [`CATALOGUE`] instead of a copy of their own.

/// What a metric is, as Prometheus types it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    /// The word Prometheus writes after `# TYPE name`.
    pub fn prometheus_type(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One exported metric.
#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricKind,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

pub const CHANGES_RECEIVED_TOTAL: &str = "csw_changes_received_total";
pub const CHANGES_ACCEPTED_TOTAL: &str = "csw_changes_accepted_total";
pub const CHANGES_REJECTED_TOTAL: &str = "csw_changes_rejected_total";
pub const CHANGES_DUPLICATE_TOTAL: &str = "csw_changes_duplicate_total";
pub const CHANGES_REDELIVERED_SETTLED_TOTAL: &str = "csw_changes_redelivered_settled_total";
pub const CHANGES_IMPORTED_TOTAL: &str = "csw_changes_imported_total";
pub const CHANGES_JOINED_WAITING_TOTAL: &str = "csw_changes_joined_waiting_total";
pub const IMPORTS_TOTAL: &str = "csw_imports_total";
pub const IMPORTS_IN_FLIGHT: &str = "csw_imports_in_flight";
pub const STAGE_DURATION_SECONDS: &str = "csw_stage_duration_seconds";
pub const BATCH_ENTRIES: &str = "csw_batch_entries";
pub const BATCHES_CLOSED_TOTAL: &str = "csw_batches_closed_total";
pub const JOB_POLLS: &str = "csw_job_polls";
pub const EVENTS_PUBLISHED_TOTAL: &str = "csw_events_published_total";
pub const DEAD_LETTERED_TOTAL: &str = "csw_dead_lettered_total";
pub const BROKER_RECONNECTS_TOTAL: &str = "csw_broker_reconnects_total";
pub const BROKER_CONNECTED: &str = "csw_broker_connected";
pub const PARTITIONS_OWNED: &str = "csw_partitions_owned";
pub const ACKS_SENT_TOTAL: &str = "csw_acks_sent_total";
pub const ACK_PACE_CHANGES_TOTAL: &str = "csw_ack_pace_changes_total";
pub const WEBHOOKS_TOTAL: &str = "csw_webhooks_total";
pub const CONTROL_MESSAGES_REJECTED_TOTAL: &str = "csw_control_messages_rejected_total";
pub const CXONE_REQUESTS_TOTAL: &str = "csw_cxone_requests_total";
pub const CXONE_RATE_LIMITED_TOTAL: &str = "csw_cxone_rate_limited_total";
pub const CXONE_RETRIES_TOTAL: &str = "csw_cxone_retries_total";
pub const CXONE_REQUEST_DURATION_SECONDS: &str = "csw_cxone_request_duration_seconds";
pub const TOKEN_REFRESHES_TOTAL: &str = "csw_token_refreshes_total";

/// Every metric, in the order of the operations guide's table.
pub const CATALOGUE: &[MetricDef] = &[
    MetricDef {
        name: CHANGES_RECEIVED_TOTAL,
        kind: MetricKind::Counter,
        help: "Deliveries taken from the inbound queue(s).",
        labels: &[],
    },
    MetricDef {
        name: CHANGES_ACCEPTED_TOTAL,
        kind: MetricKind::Counter,
        help: "Changes that passed validation.",
        labels: &[],
    },
    MetricDef {
        name: CHANGES_REJECTED_TOTAL,
        kind: MetricKind::Counter,
        help: "Changes rejected by validation and dead-lettered, by first error code.",
        labels: &["code"],
    },
    MetricDef {
        name: CHANGES_DUPLICATE_TOTAL,
        kind: MetricKind::Counter,
        help: "Changes whose changeId arrived again while the first copy was open or in flight; settled with the first's outcome.",
        labels: &[],
    },
    MetricDef {
        name: CHANGES_REDELIVERED_SETTLED_TOTAL,
        kind: MetricKind::Counter,
        help: "Redelivered copies of changes already settled, acked without a new import.",
        labels: &[],
    },
    MetricDef {
        name: CHANGES_IMPORTED_TOTAL,
        kind: MetricKind::Counter,
        help: "Changes whose import completed in CXone.",
        labels: &[],
    },
    MetricDef {
        name: IMPORTS_TOTAL,
        kind: MetricKind::Counter,
        help: "Import batches finished, by outcome (completed, failed, abandoned).",
        labels: &["outcome"],
    },
    MetricDef {
        name: STAGE_DURATION_SECONDS,
        kind: MetricKind::Histogram,
        help: "Time per import stage (validation, request, polling, total).",
        labels: &["stage"],
    },
    MetricDef {
        name: BATCH_ENTRIES,
        kind: MetricKind::Histogram,
        help: "Schedule entries per import request.",
        labels: &[],
    },
    MetricDef {
        name: CHANGES_JOINED_WAITING_TOTAL,
        kind: MetricKind::Counter,
        help: "Changes that joined their calendar's closed batch while it waited for an import slot.",
        labels: &[],
    },
    MetricDef {
        name: BATCHES_CLOSED_TOTAL,
        kind: MetricKind::Counter,
        help: "Batches closed for import, by trigger (full, conflict, age, window, drain).",
        labels: &["trigger"],
    },
    MetricDef {
        name: IMPORTS_IN_FLIGHT,
        kind: MetricKind::Gauge,
        help: "Imports submitted to CXone and not finished.",
        labels: &[],
    },
    MetricDef {
        name: JOB_POLLS,
        kind: MetricKind::Histogram,
        help: "Job status polls per import (0 when the webhook came first).",
        labels: &[],
    },
    MetricDef {
        name: EVENTS_PUBLISHED_TOTAL,
        kind: MetricKind::Counter,
        help: "Result events confirmed by the broker, by routing key.",
        labels: &["type"],
    },
    MetricDef {
        name: DEAD_LETTERED_TOTAL,
        kind: MetricKind::Counter,
        help: "Changes copied to the dead-letter queue, by x-error-code.",
        labels: &["code"],
    },
    MetricDef {
        name: BROKER_RECONNECTS_TOTAL,
        kind: MetricKind::Counter,
        help: "Lost broker connections followed by a reconnect.",
        labels: &[],
    },
    MetricDef {
        name: BROKER_CONNECTED,
        kind: MetricKind::Gauge,
        help: "1 while connected to RabbitMQ, 0 while reconnecting.",
        labels: &[],
    },
    MetricDef {
        name: ACKS_SENT_TOTAL,
        kind: MetricKind::Counter,
        help: "Ack frames sent to the broker, by kind (multiple, single).",
        labels: &["kind"],
    },
    MetricDef {
        name: ACK_PACE_CHANGES_TOTAL,
        kind: MetricKind::Counter,
        help: "Switches between chunked and whole acks of long settled runs, by the pace switched to.",
        labels: &["to"],
    },
    MetricDef {
        name: PARTITIONS_OWNED,
        kind: MetricKind::Gauge,
        help: "Partition queues this replica consumes.",
        labels: &[],
    },
    MetricDef {
        name: WEBHOOKS_TOTAL,
        kind: MetricKind::Counter,
        help: "CXone webhook calls, by result.",
        labels: &["result"],
    },
    MetricDef {
        name: CONTROL_MESSAGES_REJECTED_TOTAL,
        kind: MetricKind::Counter,
        help: "Control-plane messages ignored as unauthenticated, stale or replayed, by kind (heartbeat, webhook_relay) and reason.",
        labels: &["kind", "reason"],
    },
    MetricDef {
        name: CXONE_REQUESTS_TOTAL,
        kind: MetricKind::Counter,
        help: "HTTP requests to CXone, by endpoint and status (HTTP status, timeout or error).",
        labels: &["endpoint", "status"],
    },
    MetricDef {
        name: CXONE_RATE_LIMITED_TOTAL,
        kind: MetricKind::Counter,
        help: "429 responses from CXone.",
        labels: &[],
    },
    MetricDef {
        name: CXONE_RETRIES_TOTAL,
        kind: MetricKind::Counter,
        help: "Retried transient CXone failures, by endpoint.",
        labels: &["endpoint"],
    },
    MetricDef {
        name: TOKEN_REFRESHES_TOTAL,
        kind: MetricKind::Counter,
        help: "OAuth2 access tokens fetched.",
        labels: &[],
    },
    MetricDef {
        name: CXONE_REQUEST_DURATION_SECONDS,
        kind: MetricKind::Histogram,
        help: "CXone request latency, by endpoint.",
        labels: &["endpoint"],
    },
];

/// The catalogue entry of `name`, if it is one of ours.
pub fn find(name: &str) -> Option<&'static MetricDef> {
    CATALOGUE.iter().find(|m| m.name == name)
}

/// Registers every metric's help text with the installed recorder, so that
/// `/metrics` carries a `# HELP` line for each series.
pub fn describe() {
    for m in CATALOGUE {
        match m.kind {
            MetricKind::Counter => ::metrics::describe_counter!(m.name, m.help),
            MetricKind::Gauge => ::metrics::describe_gauge!(m.name, m.help),
            MetricKind::Histogram => ::metrics::describe_histogram!(m.name, m.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_helped() {
        let mut seen = HashSet::new();
        for m in CATALOGUE {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(
                m.name.starts_with("csw_"),
                "{} lacks the csw_ prefix",
                m.name
            );
            assert!(
                !m.help.is_empty() && !m.help.contains('\n'),
                "{}: help must be one line",
                m.name
            );
            if m.kind == MetricKind::Counter {
                assert!(
                    m.name.ends_with("_total"),
                    "counter {} ends in _total",
                    m.name
                );
            }
        }
    }
}
