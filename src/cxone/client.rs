//! PLACEHOLDER: the real client (token cache, retries) replaces this.

use crate::config::{CxoneSettings, RetrySettings};
use crate::domain::ImportPayload;

use super::{CxoneError, Job, Submitted};

#[derive(Clone)]
pub struct CxoneClient {}

impl CxoneClient {
    pub fn new(_cfg: &CxoneSettings, _retry: &RetrySettings) -> Result<Self, CxoneError> {
        Ok(CxoneClient {})
    }

    /// POSTs the import, retrying transient failures; returns the job to follow.
    pub async fn submit_import(
        &self,
        _payload: &ImportPayload,
        _idempotency_key: &str,
        _traceparent: Option<&str>,
    ) -> Result<Submitted, CxoneError> {
        unimplemented!()
    }

    /// GETs the job's state, retrying transient failures.
    pub async fn get_job(
        &self,
        _job_id: &str,
        _traceparent: Option<&str>,
    ) -> Result<Job, CxoneError> {
        unimplemented!()
    }

    /// Obtains (or reuses) a token: what `/readyz` asks.
    pub async fn check_token(&self) -> Result<(), CxoneError> {
        unimplemented!()
    }
}
