//! The simulator's state and rules, free of HTTP: tokens, the rate limiter,
//! jobs and their lifecycle, AUTO_RESOLVE, idempotency keys, counters.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ConcurrentCalendar, Faults, FaultsPatch, SimStats};
use crate::cxone::{JobStatus, webhook};
use crate::domain::{AgentInterval, ScheduleEntry};

pub const SCOPE_SCHEDULES_WRITE: &str = "wfm:schedules:write";
pub const SCOPE_AGENTS_READ: &str = "wfm:agents:read";
pub const SCOPE_AVAILABILITY_WRITE: &str = "wfm:availability:write";
pub const SCOPE_JOBS_READ: &str = "wfm:async-jobs:read";
pub const ALL_SCOPES: [&str; 4] = [
    SCOPE_SCHEDULES_WRITE,
    SCOPE_AGENTS_READ,
    SCOPE_AVAILABILITY_WRITE,
    SCOPE_JOBS_READ,
];

/// How many issued tokens [`SimState::issued_tokens`] remembers.
pub const ISSUED_KEPT: usize = 1024;

/// Scopes as a bit set, in [`ALL_SCOPES`] order.
pub fn scope_bit(scope: &str) -> Option<u8> {
    ALL_SCOPES.iter().position(|s| *s == scope).map(|i| 1 << i)
}

#[derive(Default)]
pub struct Counters {
    pub token_requests: AtomicU64,
    pub import_requests: AtomicU64,
    pub job_requests: AtomicU64,
    pub imports_accepted: AtomicU64,
    pub responses401: AtomicU64,
    pub responses409: AtomicU64,
    pub responses429: AtomicU64,
    pub responses5xx: AtomicU64,
    pub jobs_completed: AtomicU64,
    pub jobs_failed: AtomicU64,
    pub concurrent_calendar_violations: AtomicU64,
    pub idempotent_replays: AtomicU64,
}

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub struct TokenInfo {
    pub client_id: String,
    pub scopes: u8,
    pub expires_at: Instant,
}

struct JobRec {
    status: JobStatus,
    errors: Vec<serde_json::Value>,
    finished_at: Option<Instant>,
}

struct Stored {
    entry: ScheduleEntry,
    start_ms: i64,
    end_ms: i64,
}

#[derive(Default)]
struct Calendar {
    /// Imports QUEUED or RUNNING on this calendar.
    active: u32,
    /// Per agent (sorted), shifts sorted by start instant.
    roster: BTreeMap<String, Vec<Stored>>,
}

struct IdemRec {
    body_hash: [u8; 32],
    job_id: String,
    at: Instant,
}

impl IdemRec {
    /// A request repeating this record's key: the same body replays its
    /// job, another body is a reused key (422).
    fn admission(&self, hash: &[u8; 32]) -> Admission {
        if self.body_hash == *hash {
            Admission::Replayed(self.job_id.clone())
        } else {
            Admission::KeyReused
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
    per_min: u32,
}

/// The outcome of an import attempt past authentication and validation.
pub enum Admission {
    Accepted(String),
    Replayed(String),
    KeyReused,
    CalendarBusy,
}

pub struct SimState {
    faults: RwLock<Faults>,
    pub counters: Counters,
    tokens: Mutex<HashMap<String, TokenInfo>>,
    jobs: Mutex<HashMap<String, JobRec>>,
    calendars: Mutex<HashMap<String, Calendar>>,
    /// Keyed by (client id, Idempotency-Key). Its lock also serialises the
    /// accept path, so a key can never start two jobs.
    idempotency: Mutex<HashMap<(String, String), IdemRec>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// The last [`ISSUED_KEPT`] access tokens issued, for tests that check
    /// no token reaches a log (`SimServer::issued_tokens`).
    issued: Mutex<std::collections::VecDeque<String>>,
    shutdown: CancellationToken,
    /// Cancelled by reset: jobs of an earlier epoch stop without touching
    /// the fresh state.
    epoch: Mutex<CancellationToken>,
    webhook_http: reqwest::Client,
    /// The last `traceparent` headers of API requests, newest last (bounded),
    /// so tests can see trace context arrive.
    traceparents: Mutex<std::collections::VecDeque<String>>,
}

/// How many `traceparent` headers the simulator remembers.
const TRACEPARENTS_KEPT: usize = 1000;

impl SimState {
    pub fn new(faults: Faults, shutdown: CancellationToken) -> Self {
        let webhook_http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .unwrap_or_default();
        SimState {
            traceparents: Mutex::new(std::collections::VecDeque::new()),
            faults: RwLock::new(faults),
            counters: Counters::default(),
            tokens: Mutex::default(),
            jobs: Mutex::default(),
            calendars: Mutex::default(),
            idempotency: Mutex::default(),
            buckets: Mutex::default(),
            issued: Mutex::default(),
            epoch: Mutex::new(shutdown.child_token()),
            shutdown,
            webhook_http,
        }
    }

    pub fn faults(&self) -> Faults {
        self.faults.read().clone()
    }

    /// One value of the settings without cloning them all (hot paths).
    pub fn fault<T>(&self, f: impl FnOnce(&Faults) -> T) -> T {
        f(&self.faults.read())
    }

    pub fn set_faults(&self, patch: FaultsPatch) -> Result<(), String> {
        let mut f = self.faults.write();
        let mut next = f.clone();
        next.apply(patch);
        next.check()?;
        *f = next;
        Ok(())
    }

    pub fn stats(&self) -> SimStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SimStats {
            token_requests: g(&c.token_requests),
            import_requests: g(&c.import_requests),
            job_requests: g(&c.job_requests),
            imports_accepted: g(&c.imports_accepted),
            responses401: g(&c.responses401),
            responses409: g(&c.responses409),
            responses429: g(&c.responses429),
            responses5xx: g(&c.responses5xx),
            jobs_completed: g(&c.jobs_completed),
            jobs_failed: g(&c.jobs_failed),
            concurrent_calendar_violations: g(&c.concurrent_calendar_violations),
            idempotent_replays: g(&c.idempotent_replays),
        }
    }

    pub fn reset(&self) {
        {
            let mut epoch = self.epoch.lock();
            epoch.cancel();
            *epoch = self.shutdown.child_token();
        }
        self.tokens.lock().clear();
        self.jobs.lock().clear();
        self.calendars.lock().clear();
        self.idempotency.lock().clear();
        self.buckets.lock().clear();
        let c = &self.counters;
        for a in [
            &c.token_requests,
            &c.import_requests,
            &c.job_requests,
            &c.imports_accepted,
            &c.responses401,
            &c.responses409,
            &c.responses429,
            &c.responses5xx,
            &c.jobs_completed,
            &c.jobs_failed,
            &c.concurrent_calendar_violations,
            &c.idempotent_replays,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }

    // ---- tokens ----

    pub fn issue_token(&self, client_id: &str, scopes: u8, ttl: Duration) -> String {
        let value = hex::encode(rand::random::<[u8; 24]>());
        {
            let mut issued = self.issued.lock();
            if issued.len() >= ISSUED_KEPT {
                issued.pop_front();
            }
            issued.push_back(value.clone());
        }
        self.tokens.lock().insert(
            value.clone(),
            TokenInfo {
                client_id: client_id.to_owned(),
                scopes,
                expires_at: Instant::now() + ttl,
            },
        );
        value
    }

    /// The most recently issued access tokens, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.issued.lock().iter().cloned().collect()
    }

    /// Forgets every issued token: the next API call with one gets 401.
    pub fn revoke_tokens(&self) {
        self.tokens.lock().clear();
    }

    /// The token's client and scopes, or why it is refused.
    pub fn check_token(&self, value: &str) -> Result<(String, u8), &'static str> {
        let mut tokens = self.tokens.lock();
        match tokens.get(value) {
            None => Err("unknown access token; request a new one"),
            Some(t) if t.expires_at <= Instant::now() => {
                tokens.remove(value);
                Err("the access token has expired; request a new one")
            }
            Some(t) => Ok((t.client_id.clone(), t.scopes)),
        }
    }

    // ---- rate limit ----

    /// Takes a request from the client's bucket, or says how many whole
    /// seconds until one would be admitted (the honest `Retry-After`).
    pub fn rate_limit(&self, client_id: &str) -> Result<(), u64> {
        let per_min = self.faults.read().rate_limit_per_min;
        if per_min == 0 {
            return Ok(());
        }
        let per_sec = f64::from(per_min) / 60.0;
        let capacity = per_sec.ceil().max(1.0);
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let b = buckets
            .entry(client_id.to_owned())
            .or_insert_with(|| Bucket {
                tokens: capacity,
                last: now,
                per_min,
            });
        if b.per_min != per_min {
            // The limit changed at run time: start afresh under the new one.
            *b = Bucket {
                tokens: capacity,
                last: now,
                per_min,
            };
        }
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * per_sec).min(capacity);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / per_sec;
            Err((wait.ceil() as u64).max(1))
        }
    }

    // ---- imports ----

    /// Looks the key up: `Some` when it settles the request (replay or 422).
    /// `hash` is the request body's [`body_hash`].
    pub fn idempotent_lookup(
        &self,
        client_id: &str,
        key: &str,
        hash: &[u8; 32],
    ) -> Option<Admission> {
        let map = self.idempotency.lock();
        let rec = map.get(&(client_id.to_owned(), key.to_owned()))?;
        Some(rec.admission(hash))
    }

    /// Accepts a validated import: 409 rules, job creation, key recording,
    /// and the job's lifecycle task.
    pub fn admit_import(
        self: &Arc<Self>,
        client_id: &str,
        key: Option<&str>,
        hash: [u8; 32],
        calendar_id: &str,
        entries: Vec<ScheduleEntry>,
        spans: Vec<AgentInterval>,
    ) -> Admission {
        let faults = self.faults();
        // Held across the whole accept so a key cannot start two jobs.
        let mut idem = self.idempotency.lock();
        if let Some(k) = key
            && let Some(rec) = idem.get(&(client_id.to_owned(), k.to_owned()))
        {
            return rec.admission(&hash);
        }
        {
            let mut cals = self.calendars.lock();
            let cal = cals.entry(calendar_id.to_owned()).or_default();
            if cal.active > 0 {
                bump(&self.counters.concurrent_calendar_violations);
                if faults.concurrent_calendar == ConcurrentCalendar::Reject {
                    return Admission::CalendarBusy;
                }
            }
            cal.active += 1;
        }
        let job_id = format!("job-{}", hex::encode(rand::random::<[u8; 8]>()));
        self.jobs.lock().insert(
            job_id.clone(),
            JobRec {
                status: JobStatus::Queued,
                errors: Vec::new(),
                finished_at: None,
            },
        );
        if let Some(k) = key {
            idem.insert(
                (client_id.to_owned(), k.to_owned()),
                IdemRec {
                    body_hash: hash,
                    job_id: job_id.clone(),
                    at: Instant::now(),
                },
            );
        }
        drop(idem);
        bump(&self.counters.imports_accepted);
        let duration = Duration::from_millis(faults.job_base_ms)
            + Duration::from_secs_f64(faults.job_per_entry_ms * entries.len() as f64 / 1000.0);
        let epoch = self.epoch.lock().clone();
        let state = self.clone();
        let job = job_id.clone();
        let calendar = calendar_id.to_owned();
        tokio::spawn(async move {
            state
                .run_job(epoch, job, calendar, entries, spans, duration)
                .await;
        });
        Admission::Accepted(job_id)
    }

    /// QUEUED for the first quarter of the job's time, RUNNING for the
    /// rest, then COMPLETED (roster updated) or FAILED (nothing changes).
    async fn run_job(
        self: Arc<Self>,
        epoch: CancellationToken,
        job_id: String,
        calendar_id: String,
        entries: Vec<ScheduleEntry>,
        spans: Vec<AgentInterval>,
        duration: Duration,
    ) {
        let queued = duration / 4;
        tokio::select! {
            _ = epoch.cancelled() => return,
            _ = tokio::time::sleep(queued) => {}
        }
        self.set_job(&job_id, JobStatus::Running, Vec::new());
        tokio::select! {
            _ = epoch.cancelled() => return,
            _ = tokio::time::sleep(duration - queued) => {}
        }
        let faults = self.faults();
        let failed = faults.job_fail_rate > 0.0 && rand::random::<f64>() < faults.job_fail_rate;
        {
            // Checked under the calendars lock that reset also takes, so a
            // reset between the sleep and here cannot be overwritten.
            let mut cals = self.calendars.lock();
            if epoch.is_cancelled() {
                return;
            }
            let cal = cals.entry(calendar_id).or_default();
            cal.active = cal.active.saturating_sub(1);
            if !failed {
                auto_resolve(cal, entries, spans);
            }
        }
        let (status, errors) = if failed {
            bump(&self.counters.jobs_failed);
            (
                JobStatus::Failed,
                vec![serde_json::json!({
                    "code": "IMPORT_FAILED",
                    "message": "simulated job failure (jobFailRate); nothing was changed",
                })],
            )
        } else {
            bump(&self.counters.jobs_completed);
            (JobStatus::Completed, Vec::new())
        };
        self.set_job(&job_id, status, errors);
        if let Some(url) = faults.webhook_url {
            self.send_webhook(url, faults.webhook_secret, job_id, status);
        }
    }

    fn set_job(&self, job_id: &str, status: JobStatus, errors: Vec<serde_json::Value>) {
        if let Some(j) = self.jobs.lock().get_mut(job_id) {
            j.status = status;
            j.errors = errors;
            if status.is_terminal() {
                j.finished_at = Some(Instant::now());
            }
        }
    }

    /// Best effort, in the background, with a short timeout: a slow or dead
    /// receiver never holds up the simulator.
    fn send_webhook(&self, url: String, secret: Option<String>, job_id: String, status: JobStatus) {
        let event = webhook::WebhookEvent {
            event_type: webhook::EVENT_IMPORT_COMPLETED.to_owned(),
            job_id,
            status,
        };
        let Ok(body) = serde_json::to_vec(&event) else {
            return;
        };
        let mut req = self
            .webhook_http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(s) = &secret {
            req = req.header(
                webhook::SIGNATURE_HEADER,
                webhook::sign(s.as_bytes(), &body),
            );
        }
        let req = req.body(body);
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = req.send() => match r {
                    Ok(resp) if resp.status().is_success() => {}
                    Ok(resp) => tracing::debug!(%url, status = %resp.status(), "webhook receiver refused the event"),
                    Err(e) => tracing::debug!(%url, error = %e, "webhook delivery failed"),
                },
            }
        });
    }

    pub fn job(&self, job_id: &str) -> Option<(JobStatus, Vec<serde_json::Value>)> {
        self.jobs
            .lock()
            .get(job_id)
            .map(|j| (j.status, j.errors.clone()))
    }

    /// Remembers a request's `traceparent` (bounded).
    pub fn saw_traceparent(&self, traceparent: &str) {
        let mut seen = self.traceparents.lock();
        if seen.len() == TRACEPARENTS_KEPT {
            seen.pop_front();
        }
        seen.push_back(traceparent.to_owned());
    }

    pub fn traceparents(&self) -> Vec<String> {
        self.traceparents.lock().iter().cloned().collect()
    }

    pub fn job_status(&self, job_id: &str) -> Option<JobStatus> {
        self.jobs.lock().get(job_id).map(|j| j.status)
    }

    pub fn shifts(&self, calendar_id: &str) -> Vec<ScheduleEntry> {
        self.calendars
            .lock()
            .get(calendar_id)
            .map(|c| {
                c.roster
                    .values()
                    .flat_map(|v| v.iter().map(|s| s.entry.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets finished jobs and idempotency keys older than the retention,
    /// expired tokens, and full (idle) rate-limit buckets.
    fn sweep(&self) {
        let now = Instant::now();
        let retention = Duration::from_secs(self.faults.read().retention_s);
        let old = |t: Instant| now.saturating_duration_since(t) >= retention;
        self.jobs
            .lock()
            .retain(|_, j| !j.finished_at.is_some_and(old));
        self.idempotency.lock().retain(|_, r| !old(r.at));
        self.tokens.lock().retain(|_, t| t.expires_at > now);
        self.buckets.lock().retain(|_, b| {
            // Idle for a minute means full again: dropping it changes nothing.
            now.saturating_duration_since(b.last) < Duration::from_secs(60)
        });
    }
}

/// What an idempotency key is recorded with: the hash of its request body,
/// taken once per request.
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// AUTO_RESOLVE, entry by entry in payload order: drop the agent's stored
/// shifts that overlap the entry (half-open: touching ones stay), store it.
fn auto_resolve(cal: &mut Calendar, entries: Vec<ScheduleEntry>, spans: Vec<AgentInterval>) {
    for (entry, span) in entries.into_iter().zip(spans) {
        let list = cal.roster.entry(span.agent_id).or_default();
        list.retain(|s| !(s.start_ms < span.end_ms && span.start_ms < s.end_ms));
        let at = list.partition_point(|s| s.start_ms <= span.start_ms);
        list.insert(
            at,
            Stored {
                entry,
                start_ms: span.start_ms,
                end_ms: span.end_ms,
            },
        );
    }
}

pub fn spawn_janitor(state: Arc<SimState>) {
    let stop = state.shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => state.sweep(),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(agent: &str, start: &str, end: &str) -> (ScheduleEntry, AgentInterval) {
        let ms = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis()
        };
        (
            ScheduleEntry {
                agent_id: agent.into(),
                start_date_time: start.into(),
                end_date_time: end.into(),
                breaks: vec![],
                availability_overrides: vec![],
            },
            AgentInterval {
                agent_id: agent.into(),
                start_ms: ms(start),
                end_ms: ms(end),
            },
        )
    }

    fn apply(cal: &mut Calendar, items: Vec<(ScheduleEntry, AgentInterval)>) {
        let (e, s) = items.into_iter().unzip();
        auto_resolve(cal, e, s);
    }

    #[test]
    fn auto_resolve_replaces_overlaps_keeps_touching_and_others() {
        let mut cal = Calendar::default();
        apply(
            &mut cal,
            vec![
                entry("a", "2024-01-15T08:00:00Z", "2024-01-15T16:00:00Z"),
                entry("a", "2024-01-16T08:00:00Z", "2024-01-16T16:00:00Z"),
                entry("b", "2024-01-15T08:00:00Z", "2024-01-15T16:00:00Z"),
            ],
        );
        apply(
            &mut cal,
            vec![
                // overlaps a's first shift (offsets normalised: 10:00Z)
                entry(
                    "a",
                    "2024-01-15T12:00:00+02:00",
                    "2024-01-15T18:00:00+02:00",
                ),
                // touches a's second shift at its end: both stay
                entry("a", "2024-01-16T16:00:00Z", "2024-01-16T20:00:00Z"),
            ],
        );
        let a: Vec<_> = cal.roster["a"]
            .iter()
            .map(|s| s.entry.start_date_time.as_str())
            .collect();
        assert_eq!(
            a,
            [
                "2024-01-15T12:00:00+02:00",
                "2024-01-16T08:00:00Z",
                "2024-01-16T16:00:00Z"
            ]
        );
        assert_eq!(cal.roster["b"].len(), 1);
    }

    #[test]
    fn entries_apply_in_payload_order() {
        let mut cal = Calendar::default();
        apply(
            &mut cal,
            vec![
                entry("a", "2024-01-15T08:00:00Z", "2024-01-15T16:00:00Z"),
                entry("a", "2024-01-15T10:00:00Z", "2024-01-15T12:00:00Z"),
            ],
        );
        assert_eq!(cal.roster["a"].len(), 1, "the later entry wins");
        assert_eq!(
            cal.roster["a"][0].entry.start_date_time,
            "2024-01-15T10:00:00Z"
        );
    }

    #[test]
    fn scopes_map_to_bits() {
        assert_eq!(scope_bit(SCOPE_SCHEDULES_WRITE), Some(1));
        assert_eq!(scope_bit(SCOPE_JOBS_READ), Some(8));
        assert_eq!(scope_bit("admin"), None);
    }
}
