//! One import: submit the batch, follow its job, settle its deliveries.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::{sync::mpsc, time::Instant};
use tracing::Instrument;

use super::{
    batch::{Batch, Input, ParseSettings},
    events::{self, ErrorInfo, Timings},
    jobs::{JobEnd, JobRegistry, PollPolicy, follow},
    settle::Outbound,
};
use crate::{
    amqp::{AckBarrier, InboundMessage},
    cxone::{CxoneClient, JobStatus},
};

/// Everything an import needs, shared by all of them.
pub struct ImportContext {
    pub client: CxoneClient,
    pub jobs: JobRegistry,
    pub outbound: Outbound,
    pub poll: PollPolicy,
    /// CloudEvents `source`: `/cxone-schedule-worker/{instance}`.
    pub source: String,
    pub coordinator: mpsc::UnboundedSender<Input>,
    /// How the consumer parsed the bodies (imports rebuild entries from them).
    pub parse: ParseSettings,
}

/// The batch id: a deterministic hash of the calendar id and the sorted change
/// ids, so a redelivered batch gets the same `Idempotency-Key`.
pub fn batch_id(calendar_id: &str, change_ids: &[String]) -> String {
    let mut sorted: Vec<&str> = change_ids.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut h = Sha256::new();
    h.update(calendar_id.as_bytes());
    for id in sorted {
        h.update([0u8]);
        h.update(id.as_bytes());
    }
    format!("batch-{}", &hex::encode(h.finalize())[..32])
}

enum Outcome {
    Completed {
        job_id: String,
    },
    Failed {
        job_id: Option<String>,
        error: ErrorInfo,
    },
}

/// Runs one batch to settlement, then frees its calendar in the coordinator.
pub async fn run(ctx: &ImportContext, mut batch: Batch) {
    let change_ids = batch.change_ids();
    let calendar_id = batch.calendar_id.clone();
    let span = tracing::info_span!(
        "import",
        calendar_id,
        batch_id = tracing::field::Empty,
        job_id = tracing::field::Empty,
        changes = change_ids.len(),
        entries = batch.entry_count
    );
    crate::telemetry::adopt_parent(
        &span,
        batch.changes.first().and_then(|a| a.msg.traceparent()),
    );
    let acked = tokio::select! {
        acked = import(ctx, &mut batch, &change_ids).instrument(span) => acked,
        _ = ctx.outbound.hard_stop.cancelled() => {
            tracing::warn!(calendar_id, "shutdown grace period over: import abandoned unacked; the broker will redeliver its changes");
            None
        }
    };
    let deliveries = batch.changes.len() + batch.repeats.attached();
    let _ = ctx.coordinator.send(Input::Finished {
        calendar_id,
        change_ids,
        deliveries,
        acked,
    });
}

/// Where the batch's deliveries end when it was settled (event published,
/// deliveries acked or on their way); `None` when it was abandoned.
async fn import(
    ctx: &ImportContext,
    batch: &mut Batch,
    change_ids: &[String],
) -> Option<AckBarrier> {
    let batch_id = batch_id(&batch.calendar_id, change_ids);
    let calendar_id = batch.calendar_id.as_str();
    tracing::Span::current().record("batch_id", batch_id.as_str());
    let started = batch
        .changes
        .iter()
        .map(|a| a.msg.received_at)
        .min()
        .unwrap_or_else(Instant::now);
    let validation = Duration::from_micros(
        batch
            .changes
            .iter()
            .map(|a| u64::from(a.validation_us))
            .sum(),
    );
    let capacity: u64 = batch
        .changes
        .iter()
        .map(|a| u64::from(a.capacity_minutes))
        .sum();
    // Only a well-formed W3C traceparent travels on (to CXone as an HTTP
    // header, to the events as an AMQP header): a malformed one from a
    // publisher must not fail the import (reqwest refuses header values with
    // control characters) nor reach listeners.
    let traceparent = crate::telemetry::outgoing_traceparent(
        batch.changes.first().and_then(|a| a.msg.traceparent()),
    );
    let tp = traceparent.as_deref();
    let entry_count = batch.entry_count;

    // The calendar's previous batch is acked before this one reaches CXone
    // (see `AckTracker::ack_through`); in a steady drain it already is.
    if let Some(previous) = batch.previous.take() {
        previous.ensure().await;
    }
    // Deliveries whose channel closed come back from the broker, to this
    // worker or another, and are imported then: importing them now as
    // well could put this batch's changes on CXone after an older change
    // of the calendar whose acks died with the same channel (the older one
    // is imported again on its way back, and this batch, were it to come
    // back the same, would be replayed, not applied).
    if batch.repeats.attached() == 0 && batch.changes.iter().all(|a| !a.msg.acks.is_open()) {
        tracing::warn!(
            "the broker channel of this batch's deliveries closed before its import; left for the broker to redeliver"
        );
        metrics::counter!("csw_imports_total", "outcome" => "abandoned").increment(1);
        return None;
    }
    let body = batch.import_body(&ctx.parse);
    let request_started = Instant::now();
    let submitted = match body {
        Ok(body) => Ok(ctx
            .client
            .submit_import_body(body.into(), calendar_id, entry_count, &batch_id, tp)
            .await),
        Err(message) => Err(message),
    };
    let request_ms = ms(request_started.elapsed());
    metrics::histogram!("csw_stage_duration_seconds", "stage" => "request")
        .record(request_started.elapsed().as_secs_f64());
    let mut attempts = 0;
    let mut polling_ms = 0;
    let mut submitted_event = None;
    let outcome = match submitted {
        Err(message) => {
            tracing::error!(%message, "import body not built");
            Outcome::Failed {
                job_id: None,
                error: ErrorInfo {
                    code: "INTERNAL_ERROR".into(),
                    message,
                    http_status: None,
                },
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "import request failed");
            Outcome::Failed {
                job_id: None,
                error: ErrorInfo {
                    code: e.code().to_owned(),
                    message: e.to_string(),
                    http_status: e.http_status(),
                },
            }
        }
        Ok(Ok(sub)) => {
            attempts = sub.attempts;
            tracing::Span::current().record("job_id", sub.job_id.as_str());
            let event = events::encode(
                events::SUBMITTED,
                &batch_id,
                &ctx.source,
                Some(calendar_id),
                tp,
                &events::Submitted {
                    batch_id: &batch_id,
                    calendar_id,
                    job_id: &sub.job_id,
                    change_ids,
                    entry_count,
                },
            );
            // Its confirm is awaited at settlement, with the terminal
            // event's: the job is followed meanwhile.
            submitted_event = Some(ctx.outbound.send_event(events::SUBMITTED, event, tp).await);
            let poll_started = Instant::now();
            let end = follow(&ctx.client, &ctx.jobs, &sub.job_id, &ctx.poll, tp).await;
            polling_ms = ms(poll_started.elapsed());
            metrics::histogram!("csw_stage_duration_seconds", "stage" => "polling")
                .record(poll_started.elapsed().as_secs_f64());
            if matches!(&end, JobEnd::Finished(job) if job.status == JobStatus::Completed) {
                Outcome::Completed { job_id: sub.job_id }
            } else {
                let job_id = Some(sub.job_id);
                match end {
                    JobEnd::Finished(job) => Outcome::Failed {
                        job_id,
                        error: ErrorInfo {
                            code: "JOB_FAILED".into(),
                            message: if job.errors.is_empty() {
                                "CXone reported the import job FAILED".into()
                            } else {
                                format!(
                                    "CXone reported the import job FAILED: {}",
                                    serde_json::Value::Array(job.errors)
                                )
                            },
                            http_status: None,
                        },
                    },
                    JobEnd::TimedOut => Outcome::Failed {
                        job_id,
                        error: ErrorInfo {
                            code: "JOB_TIMEOUT".into(),
                            message: format!(
                                "the import job did not finish within imports.job_timeout_s ({} s)",
                                ctx.poll.timeout.as_secs()
                            ),
                            http_status: None,
                        },
                    },
                    JobEnd::Error(e) => Outcome::Failed {
                        job_id,
                        error: ErrorInfo {
                            code: e.code().to_owned(),
                            message: format!("following the import job failed: {e}"),
                            http_status: e.http_status(),
                        },
                    },
                }
            }
        }
    };

    let total = started.elapsed();
    metrics::histogram!("csw_stage_duration_seconds", "stage" => "total")
        .record(total.as_secs_f64());
    metrics::histogram!("csw_stage_duration_seconds", "stage" => "validation")
        .record(validation.as_secs_f64());
    let timings = Timings {
        validation_ms: ms(validation),
        request_ms,
        polling_ms,
        total_ms: ms(total),
    };
    let duplicates = batch.repeats.take_duplicates();
    let messages: Vec<&InboundMessage> = batch
        .changes
        .iter()
        .map(|a| &a.msg)
        .chain(duplicates.iter())
        .collect();
    let settled = match &outcome {
        Outcome::Completed { job_id } => {
            let event = events::encode(
                events::COMPLETED,
                &batch_id,
                &ctx.source,
                Some(calendar_id),
                tp,
                &events::Completed {
                    batch_id: &batch_id,
                    calendar_id,
                    job_id,
                    change_ids,
                    entry_count,
                    capacity_minutes: capacity,
                    attempts,
                    timings,
                },
            );
            ctx.outbound
                .settle(
                    submitted_event,
                    events::COMPLETED,
                    event,
                    tp,
                    None,
                    &messages,
                )
                .await
        }
        Outcome::Failed { job_id, error } => {
            let event = events::encode(
                events::FAILED,
                &batch_id,
                &ctx.source,
                Some(calendar_id),
                tp,
                &events::Failed {
                    batch_id: &batch_id,
                    calendar_id,
                    job_id: job_id.as_deref(),
                    change_ids,
                    entry_count,
                    capacity_minutes: capacity,
                    attempts,
                    timings,
                    error,
                },
            );
            ctx.outbound
                .settle(
                    submitted_event,
                    events::FAILED,
                    event,
                    tp,
                    Some((&error.code, &error.message)),
                    &messages,
                )
                .await
        }
    };
    let label = match (&outcome, &settled) {
        (_, Err(_)) => "abandoned",
        (Outcome::Completed { .. }, _) => "completed",
        (Outcome::Failed { .. }, _) => "failed",
    };
    metrics::counter!("csw_imports_total", "outcome" => label).increment(1);
    match (&outcome, &settled) {
        (_, Err(e)) => tracing::warn!(error = %e, "batch left unacked"),
        (Outcome::Completed { .. }, Ok(_)) => {
            metrics::counter!("csw_changes_imported_total").increment(change_ids.len() as u64);
            tracing::info!(total_ms = timings.total_ms, "import completed");
        }
        (Outcome::Failed { error, .. }, Ok(_)) => {
            tracing::warn!(code = %error.code, message = %error.message, "import failed; changes dead-lettered")
        }
    }
    settled.ok()
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}
