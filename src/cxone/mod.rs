//! Everything CXone-specific lives here, behind a narrow interface:
//! [`CxoneClient::submit_import`], [`CxoneClient::get_job`] and
//! [`CxoneClient::check_token`]. The real CXone API may differ from the
//! tutorial's endpoints; adapting to it must touch this module only.

mod client;
mod error;
pub mod import_body;
mod pacing;
pub mod retry;
mod token;
mod transport;
pub mod webhook;

pub use client::CxoneClient;
pub use error::CxoneError;
pub use transport::MAX_ERROR_BODY;

use serde::Deserialize;

/// An import job's state as CXone reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed)
    }
}

/// `GET /api/v2/wfm/async-jobs/{jobId}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub job_id: String,
    pub status: JobStatus,
    /// The job's `errors` as CXone sent them (empty when none).
    pub errors: Vec<serde_json::Value>,
}

/// An accepted import: the job to follow, and the HTTP attempts it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub job_id: String,
    pub attempts: u32,
}
