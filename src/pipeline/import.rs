//! The import stage: one task per batch. It waits at the calendar's ack
//! barrier, submits the batch, follows its job (poll or webhook), settles
//! the outcome (events, dead letters, acks), records the acks in the
//! barrier and frees the calendar in the scheduler.

use crate::telemetry::metrics as metric;
use std::{sync::Arc, time::Duration};

use sha2::{Digest, Sha256};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{
    batch::{Batch, ImportEnded, ImportStage, ParseSettings},
    events::{self, ErrorInfo, Timings},
    jobs::{JobEnd, JobRegistry, PollPolicy, follow},
    settle::{Abandoned, Outbound, SentEvent},
    source::Fence,
};
use crate::{
    amqp::{AckBarrier, AckBarriers, InboundMessage},
    cxone::{CxoneClient, JobStatus, Submitted},
};

/// Everything an import needs, shared by all of them.
pub struct ImportContext {
    pub client: CxoneClient,
    pub jobs: JobRegistry,
    pub outbound: Outbound,
    pub poll: PollPolicy,
    /// CloudEvents `source`: `/cxone-schedule-worker/{instance}`.
    pub source: String,
    /// Where an import reports that it ended (the scheduler task).
    pub ended: mpsc::UnboundedSender<ImportEnded>,
    /// How the source parsed the bodies (imports rebuild entries from them).
    pub parse: ParseSettings,
    /// Settled batches' acks per calendar, which the calendar's next import waits for.
    pub barriers: AckBarriers,
    /// Closed while this replica's membership view is stale: no import is posted then.
    pub fence: Fence,
}

/// The import stage: runs each batch the scheduler sends on its own task.
pub struct Importer {
    ctx: Arc<ImportContext>,
    tasks: TaskTracker,
}

impl Importer {
    /// Imports run on `tasks`, so shutdown can wait for them.
    pub fn new(ctx: ImportContext, tasks: TaskTracker) -> Importer {
        Importer {
            ctx: Arc::new(ctx),
            tasks,
        }
    }
}

impl ImportStage for Importer {
    fn start(&mut self, batch: Batch) {
        // Taken when the import starts (the calendar's previous import has
        // ended): acks that settle from now on are the next import's to wait for.
        let previous = self.ctx.barriers.take(&batch.calendar_id);
        let ctx = self.ctx.clone();
        self.tasks
            .spawn(async move { run(&ctx, batch, previous).await });
    }
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

impl Outcome {
    fn failed(
        job_id: Option<String>,
        code: &str,
        message: String,
        http_status: Option<u16>,
    ) -> Self {
        Outcome::Failed {
            job_id,
            error: ErrorInfo {
                code: code.to_owned(),
                message,
                http_status,
            },
        }
    }
}

/// What one import is about, worked out once from its batch.
struct Facts<'a> {
    batch_id: String,
    calendar_id: &'a str,
    change_ids: &'a [String],
    entry_count: usize,
    /// When its oldest delivery arrived.
    started: Instant,
    validation: Duration,
    capacity_minutes: u64,
    /// Only a well-formed W3C traceparent travels on (to CXone as an HTTP
    /// header, to the events as an AMQP header): a malformed one from a
    /// publisher must not fail the import (reqwest refuses header values with
    /// control characters) nor reach listeners.
    traceparent: Option<String>,
}

impl<'a> Facts<'a> {
    fn of(batch: &'a Batch, change_ids: &'a [String]) -> Facts<'a> {
        let changes = &batch.changes;
        Facts {
            batch_id: batch_id(&batch.calendar_id, change_ids),
            calendar_id: &batch.calendar_id,
            change_ids,
            entry_count: batch.entry_count,
            started: changes
                .iter()
                .map(|a| a.msg.received_at)
                .min()
                .unwrap_or_else(Instant::now),
            validation: Duration::from_micros(
                changes.iter().map(|a| u64::from(a.validation_us)).sum(),
            ),
            capacity_minutes: changes.iter().map(|a| u64::from(a.capacity_minutes)).sum(),
            traceparent: crate::telemetry::outgoing_traceparent(
                changes.first().and_then(|a| a.msg.traceparent()),
            ),
        }
    }

    fn tp(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }
}

/// What following the import measured, for its terminal event.
#[derive(Default)]
struct Progress {
    attempts: u32,
    request_ms: u64,
    polling_ms: u64,
    /// The `submitted` event, its confirm awaited at settlement.
    submitted_event: Option<SentEvent>,
}

/// Runs one batch to settlement, then frees its calendar in the scheduler.
async fn run(ctx: &ImportContext, batch: Batch, previous: Option<AckBarrier>) {
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
    let settled = tokio::select! {
        settled = import(ctx, &batch, &change_ids, previous).instrument(span) => settled,
        _ = ctx.outbound.hard_stop.cancelled() => {
            tracing::warn!(calendar_id, "shutdown grace period over: import abandoned unacked; the broker will redeliver its changes");
            false
        }
    };
    let deliveries = batch.changes.len() + batch.repeats.attached();
    let _ = ctx.ended.send(ImportEnded {
        calendar_id,
        change_ids,
        deliveries,
        settled,
    });
}

/// Imports and settles the batch; whether it was settled (event published,
/// deliveries acked or on their way, which the barrier then records) rather
/// than abandoned.
async fn import(
    ctx: &ImportContext,
    batch: &Batch,
    change_ids: &[String],
    previous: Option<AckBarrier>,
) -> bool {
    let facts = Facts::of(batch, change_ids);
    tracing::Span::current().record("batch_id", facts.batch_id.as_str());
    // The calendar's previous batch is acked, and its acks processed by the
    // broker, before this one reaches CXone (see `AckTracker::ack_through`);
    // in a steady drain it already is.
    if let Some(previous) = previous {
        previous.wait_processed().await;
    }
    // A replica that may have been counted out by the others (paused,
    // stalled) posts nothing until it hears itself again, or until its
    // deliveries' channels close (then the next check leaves them).
    ctx.fence.wait_open(|| channels_closed(batch)).await;
    // Deliveries whose channel closed come back from the broker, to this
    // worker or another, and are imported then: importing them now as
    // well could put this batch's changes on CXone after an older change
    // of the calendar whose acks died with the same channel (the older one
    // is imported again on its way back, and this batch, were it to come
    // back the same, would be replayed, not applied).
    if channels_closed(batch) {
        tracing::warn!(
            "the broker channel of this batch's deliveries closed before its import; left for the broker to redeliver"
        );
        metrics::counter!(metric::IMPORTS_TOTAL, "outcome" => "abandoned").increment(1);
        return false;
    }
    let mut progress = Progress::default();
    // Retries of the post stop once the deliveries' channels closed: the
    // broker hands them to the partition's next owner, which imports them.
    let submitted = tokio::select! {
        submitted = submit(ctx, batch, &facts, &mut progress) => submitted,
        _ = wait_channels_closed(batch) => {
            tracing::warn!("the broker channel of this batch's deliveries closed while it was being posted; left for the broker to redeliver");
            metrics::counter!(metric::IMPORTS_TOTAL, "outcome" => "abandoned").increment(1);
            return false;
        }
    };
    let outcome = match submitted {
        Ok(submitted) => follow_job(ctx, submitted, &facts, &mut progress).await,
        Err(failed) => failed,
    };
    match settle_outcome(ctx, batch, &facts, &outcome, progress).await {
        Ok(acked) => {
            ctx.barriers.record(facts.calendar_id, acked);
            true
        }
        Err(_) => false,
    }
}

/// Whether every delivery of the batch came on a channel that closed since
/// (and no redelivered copy on a live channel rides along).
fn channels_closed(batch: &Batch) -> bool {
    batch.repeats.attached() == 0 && batch.changes.iter().all(|a| !a.msg.acks.is_open())
}

/// Resolves once [`channels_closed`] holds (looked at every 100 ms).
async fn wait_channels_closed(batch: &Batch) {
    while !channels_closed(batch) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Builds the body and posts it; the accepted job, or the failure to report.
async fn submit(
    ctx: &ImportContext,
    batch: &Batch,
    facts: &Facts<'_>,
    progress: &mut Progress,
) -> Result<Submitted, Outcome> {
    let body = batch.import_body(&ctx.parse);
    let request_started = Instant::now();
    let submitted = match body {
        Ok(body) => Ok(ctx
            .client
            .submit_import_body(
                body.into(),
                facts.calendar_id,
                facts.entry_count,
                &facts.batch_id,
                facts.tp(),
            )
            .await),
        Err(message) => Err(message),
    };
    progress.request_ms = ms(request_started.elapsed());
    metrics::histogram!(metric::STAGE_DURATION_SECONDS, "stage" => "request")
        .record(request_started.elapsed().as_secs_f64());
    match submitted {
        Ok(Ok(sub)) => Ok(sub),
        Err(message) => {
            tracing::error!(%message, "import body not built");
            Err(Outcome::failed(None, "INTERNAL_ERROR", message, None))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "import request failed");
            Err(Outcome::failed(
                None,
                e.code(),
                e.to_string(),
                e.http_status(),
            ))
        }
    }
}

/// Announces the submitted job, then follows it to its end.
async fn follow_job(
    ctx: &ImportContext,
    sub: Submitted,
    facts: &Facts<'_>,
    progress: &mut Progress,
) -> Outcome {
    progress.attempts = sub.attempts;
    tracing::Span::current().record("job_id", sub.job_id.as_str());
    let event = events::encode(
        events::SUBMITTED,
        &facts.batch_id,
        &ctx.source,
        Some(facts.calendar_id),
        facts.tp(),
        &events::Submitted {
            batch_id: &facts.batch_id,
            calendar_id: facts.calendar_id,
            job_id: &sub.job_id,
            change_ids: facts.change_ids,
            entry_count: facts.entry_count,
        },
    );
    // Its confirm is awaited at settlement, with the terminal
    // event's: the job is followed meanwhile.
    progress.submitted_event = Some(
        ctx.outbound
            .send_event(events::SUBMITTED, event, facts.tp())
            .await,
    );
    let poll_started = Instant::now();
    let end = follow(&ctx.client, &ctx.jobs, &sub.job_id, &ctx.poll, facts.tp()).await;
    progress.polling_ms = ms(poll_started.elapsed());
    metrics::histogram!(metric::STAGE_DURATION_SECONDS, "stage" => "polling")
        .record(poll_started.elapsed().as_secs_f64());
    job_outcome(end, sub.job_id, &ctx.poll)
}

fn job_outcome(end: JobEnd, job_id: String, poll: &PollPolicy) -> Outcome {
    match end {
        JobEnd::Finished(job) if job.status == JobStatus::Completed => {
            Outcome::Completed { job_id }
        }
        JobEnd::Finished(job) => Outcome::failed(
            Some(job_id),
            "JOB_FAILED",
            if job.errors.is_empty() {
                "CXone reported the import job FAILED".into()
            } else {
                format!(
                    "CXone reported the import job FAILED: {}",
                    serde_json::Value::Array(job.errors)
                )
            },
            None,
        ),
        JobEnd::TimedOut => Outcome::failed(
            Some(job_id),
            "JOB_TIMEOUT",
            format!(
                "the import job did not finish within imports.job_timeout_s ({} s)",
                poll.timeout.as_secs()
            ),
            None,
        ),
        JobEnd::Error(e) => Outcome::failed(
            Some(job_id),
            e.code(),
            format!("following the import job failed: {e}"),
            e.http_status(),
        ),
    }
}

/// Publishes the outcome's event, dead-letters a failed batch's deliveries,
/// then acks them all (repeats of a changeId included).
async fn settle_outcome(
    ctx: &ImportContext,
    batch: &Batch,
    facts: &Facts<'_>,
    outcome: &Outcome,
    progress: Progress,
) -> Result<AckBarrier, Abandoned> {
    let total = facts.started.elapsed();
    metrics::histogram!(metric::STAGE_DURATION_SECONDS, "stage" => "total")
        .record(total.as_secs_f64());
    metrics::histogram!(metric::STAGE_DURATION_SECONDS, "stage" => "validation")
        .record(facts.validation.as_secs_f64());
    let timings = Timings {
        validation_ms: ms(facts.validation),
        request_ms: progress.request_ms,
        polling_ms: progress.polling_ms,
        total_ms: ms(total),
    };
    let duplicates = batch.repeats.take_duplicates();
    let messages: Vec<&InboundMessage> = batch
        .changes
        .iter()
        .map(|a| &a.msg)
        .chain(duplicates.iter())
        .collect();
    let (routing_key, event) = outcome_event(ctx, facts, outcome, progress.attempts, timings);
    let dead_letter = match outcome {
        Outcome::Completed { .. } => None,
        Outcome::Failed { error, .. } => Some((error.code.as_str(), error.message.as_str())),
    };
    let settled = ctx
        .outbound
        .settle(
            progress.submitted_event,
            routing_key,
            event,
            facts.tp(),
            dead_letter,
            &messages,
        )
        .await;
    report(outcome, &settled, facts.change_ids.len(), timings);
    settled
}

/// The terminal event: `completed` or `failed`.
fn outcome_event(
    ctx: &ImportContext,
    facts: &Facts<'_>,
    outcome: &Outcome,
    attempts: u32,
    timings: Timings,
) -> (&'static str, Vec<u8>) {
    match outcome {
        Outcome::Completed { job_id } => encode_event(
            ctx,
            facts,
            events::COMPLETED,
            &events::Completed {
                batch_id: &facts.batch_id,
                calendar_id: facts.calendar_id,
                job_id,
                change_ids: facts.change_ids,
                entry_count: facts.entry_count,
                capacity_minutes: facts.capacity_minutes,
                attempts,
                timings,
            },
        ),
        Outcome::Failed { job_id, error } => encode_event(
            ctx,
            facts,
            events::FAILED,
            &events::Failed {
                batch_id: &facts.batch_id,
                calendar_id: facts.calendar_id,
                job_id: job_id.as_deref(),
                change_ids: facts.change_ids,
                entry_count: facts.entry_count,
                capacity_minutes: facts.capacity_minutes,
                attempts,
                timings,
                error,
            },
        ),
    }
}

fn encode_event<D: serde::Serialize>(
    ctx: &ImportContext,
    facts: &Facts<'_>,
    routing_key: &'static str,
    data: &D,
) -> (&'static str, Vec<u8>) {
    let event = events::encode(
        routing_key,
        &facts.batch_id,
        &ctx.source,
        Some(facts.calendar_id),
        facts.tp(),
        data,
    );
    (routing_key, event)
}

/// Counts and logs how the import ended.
fn report(
    outcome: &Outcome,
    settled: &Result<AckBarrier, Abandoned>,
    changes: usize,
    timings: Timings,
) {
    let label = match (outcome, settled) {
        (_, Err(_)) => "abandoned",
        (Outcome::Completed { .. }, _) => "completed",
        (Outcome::Failed { .. }, _) => "failed",
    };
    metrics::counter!(metric::IMPORTS_TOTAL, "outcome" => label).increment(1);
    match (outcome, settled) {
        (_, Err(e)) => tracing::warn!(error = %e, "batch left unacked"),
        (Outcome::Completed { .. }, Ok(_)) => {
            metrics::counter!(metric::CHANGES_IMPORTED_TOTAL).increment(changes as u64);
            tracing::info!(total_ms = timings.total_ms, "import completed");
        }
        (Outcome::Failed { error, .. }, Ok(_)) => {
            tracing::warn!(code = %error.code, message = %error.message, "import failed; changes dead-lettered")
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}
