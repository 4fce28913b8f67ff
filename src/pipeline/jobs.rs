//! Job tracker: following an import job to its end, by polling or by webhook,
//! whichever comes first.

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
    let mut polls = 0u32;
    let end = loop {
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
            _ = tokio::time::sleep(delay) => {
                polls += 1;
                match client.get_job(job_id, traceparent).await {
                    Ok(job) if job.status.is_terminal() => break JobEnd::Finished(job),
                    Ok(_) => {}
                    Err(e) => break JobEnd::Error(e),
                }
                delay = (delay * 2).min(policy.max);
            }
            _ = tokio::time::sleep_until(deadline) => break JobEnd::TimedOut,
        }
    };
    registry.forget(job_id);
    metrics::histogram!("csw_job_polls").record(polls as f64);
    end
}
