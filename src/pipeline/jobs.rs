//! Job tracker: following an import job to its end, by polling or by webhook,
//! whichever comes first.

use crate::telemetry::metrics as metric;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::oneshot, time::Instant};

use crate::cxone::{CxoneClient, CxoneError, Job, JobStatus};

/// Webhook notices not yet claimed are kept this long, so a webhook that beats
/// the submit response (a fast job) is not lost.
const UNCLAIMED_TTL: Duration = Duration::from_secs(300);
const UNCLAIMED_MAX: usize = 10_000;

enum Slot {
    Waiting(oneshot::Sender<JobStatus>),
    Arrived(JobStatus, Instant),
}

/// Jobs this process is following, by job id. Webhook and relay feed it.
#[derive(Clone, Default)]
pub struct JobRegistry {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl JobRegistry {
    /// Starts following a job; the receiver fires when a notice arrives.
    pub fn register(&self, job_id: &str) -> oneshot::Receiver<JobStatus> {
        let (tx, rx) = oneshot::channel();
        let mut slots = self.slots.lock().expect("job registry lock");
        match slots.remove(job_id) {
            Some(Slot::Arrived(status, _)) => {
                let _ = tx.send(status);
            }
            _ => {
                slots.insert(job_id.to_owned(), Slot::Waiting(tx));
            }
        }
        rx
    }

    pub fn forget(&self, job_id: &str) {
        let mut slots = self.slots.lock().expect("job registry lock");
        if let Some(Slot::Waiting(_)) = slots.get(job_id) {
            slots.remove(job_id);
        }
    }

    /// A terminal notice (webhook or relay). Returns true when this process
    /// was following the job.
    pub fn notify(&self, job_id: &str, status: JobStatus) -> bool {
        let mut slots = self.slots.lock().expect("job registry lock");
        match slots.remove(job_id) {
            Some(Slot::Waiting(tx)) => tx.send(status).is_ok(),
            _ => {
                if slots.len() >= UNCLAIMED_MAX {
                    let now = Instant::now();
                    slots.retain(|_, s| match s {
                        Slot::Arrived(_, at) => now.duration_since(*at) < UNCLAIMED_TTL,
                        Slot::Waiting(_) => true,
                    });
                }
                if slots.len() < UNCLAIMED_MAX {
                    slots.insert(job_id.to_owned(), Slot::Arrived(status, Instant::now()));
                }
                false
            }
        }
    }
}

/// How a followed job ended.
pub enum JobEnd {
    Finished(Job),
    TimedOut,
    Error(CxoneError),
}

pub struct PollPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub timeout: Duration,
}

/// Polls (first after `initial`, doubling to `max`) until the job ends, a
/// webhook says it ended, or `timeout` passes.
///
/// A poll is raced against the webhook: a poll still waiting for the rate
/// limiter's go-ahead when the webhook arrives is dropped unsent, so with
/// webhooks working a rate-limited worker spends its requests on imports.
pub async fn follow(
    client: &CxoneClient,
    registry: &JobRegistry,
    job_id: &str,
    policy: &PollPolicy,
    traceparent: Option<&str>,
) -> JobEnd {
    let mut notice = Some(registry.register(job_id));
    let deadline = Instant::now() + policy.timeout;
    let mut delay = policy.initial;
    let mut next_poll = Instant::now() + delay;
    let mut polls = 0u32;
    let mut poll = std::pin::pin!(None::<PollFuture<'_>>);
    let end = loop {
        let polling = poll.is_some();
        tokio::select! {
            status = async { notice.as_mut().expect("guarded").await }, if notice.is_some() => {
                match status {
                    // COMPLETED needs nothing more; FAILED is worth one GET for its errors.
                    Ok(JobStatus::Completed) => break JobEnd::Finished(Job {
                        job_id: job_id.to_owned(), status: JobStatus::Completed, errors: Vec::new(),
                    }),
                    Ok(_) => match client.get_job(job_id, traceparent).await {
                        Ok(job) if job.status.is_terminal() => break JobEnd::Finished(job),
                        _ => break JobEnd::Finished(Job {
                            job_id: job_id.to_owned(), status: JobStatus::Failed, errors: Vec::new(),
                        }),
                    },
                    // The registry dropped us (cannot happen while we hold the slot); keep polling.
                    Err(_) => notice = None,
                }
            }
            result = async { poll.as_mut().as_pin_mut().expect("guarded").await }, if polling => {
                poll.set(None);
                match result {
                    Ok(job) if job.status.is_terminal() => break JobEnd::Finished(job),
                    Ok(_) => {}
                    Err(e) => break JobEnd::Error(e),
                }
                delay = (delay * 2).min(policy.max);
                next_poll = Instant::now() + delay;
            }
            _ = tokio::time::sleep_until(next_poll), if !polling => {
                polls += 1;
                poll.set(Some(Box::pin(client.get_job(job_id, traceparent))));
            }
            _ = tokio::time::sleep_until(deadline) => break JobEnd::TimedOut,
        }
    };
    registry.forget(job_id);
    metrics::histogram!(metric::JOB_POLLS).record(polls as f64);
    end
}

type PollFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Job, CxoneError>> + Send + 'a>>;
