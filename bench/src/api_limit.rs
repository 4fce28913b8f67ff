//! The api-bound scenario's lower limit: the fastest any worker could drain
//! it, from the simulator's own numbers.

use serde_json::{Value, json};

use crate::numbers::round3;

/// The simulator's shape in the api-bound scenario: slow jobs and a rate limit.
pub const JOB_BASE_MS: u64 = 300;
pub const JOB_PER_ENTRY_MS: f64 = 0.2;
pub const RATE_PER_MIN: u32 = 300;

/// The fastest any worker could drain the api-bound scenario, from the
/// simulator's own numbers.
pub struct Limit {
    pub seconds: f64,
    /// The report's `formula`.
    pub explain: Value,
}

pub fn api_limit(
    n: usize,
    calendars: usize,
    max_entries: usize,
    concurrent: usize,
    base_ms: u64,
    per_entry_ms: f64,
    per_min: u32,
) -> Limit {
    // A change is never split and a batch holds one calendar, so the fewest
    // imports are ceil(entries of the calendar / max_entries) per calendar.
    let mut batches = Vec::new();
    for c in 0..calendars {
        let mut entries = n / calendars + usize::from(c < n % calendars);
        while entries > 0 {
            let b = entries.min(max_entries);
            batches.push(b);
            entries -= b;
        }
    }
    let b = batches.len();
    let job_s = |e: usize| (base_ms as f64 + per_entry_ms * e as f64) / 1000.0;
    let per_s = f64::from(per_min) / 60.0;
    let burst = per_s.ceil().max(1.0);
    // Rate: each import costs at least its POST (completion comes by webhook,
    // which costs no request; the token endpoint is not rate limited). The
    // bucket starts with `burst` tokens and refills at per_s, so the b-th
    // POST is admitted no sooner than (b - burst) / per_s; its job then runs.
    let shortest = batches
        .iter()
        .copied()
        .map(job_s)
        .fold(f64::INFINITY, f64::min);
    let shortest = if shortest.is_finite() { shortest } else { 0.0 };
    let rate_bound = ((b as f64 - burst).max(0.0)) / per_s + shortest;
    // Concurrency: jobs run at most `concurrent` at once (and one per calendar).
    let total_job: f64 = batches.iter().copied().map(job_s).sum();
    let rounds = b.div_ceil(concurrent.max(1));
    let longest = batches.iter().copied().map(job_s).fold(0.0, f64::max);
    let conc_bound = (total_job / concurrent.max(1) as f64)
        .max(longest)
        .max(rounds as f64 * shortest);
    let seconds = rate_bound.max(conc_bound);
    Limit {
        seconds,
        explain: json!({
            "batches": b,
            "batchesWhy": format!("ceil({} entries per calendar / batch.max_entries {max_entries}) per calendar, summed over {calendars} calendars (a change is never split)", n / calendars),
            "jobSecondsPerBatch": round3(job_s(max_entries.min(n / calendars.max(1)).max(1))),
            "jobWhy": format!("jobBaseMs {base_ms} + jobPerEntryMs {per_entry_ms} x entries"),
            "rateBoundSeconds": round3(rate_bound),
            "rateBoundWhy": format!("(batches {b} - burst {burst}) / ({per_min}/60 per s) + the last job: one POST per batch is the fewest requests (webhook completion needs none, tokens are not rate limited); the bucket starts full with one second's worth"),
            "concurrencyBoundSeconds": round3(conc_bound),
            "concurrencyWhy": format!("max(total job time / imports.max_concurrent {concurrent}, longest job, ceil(batches {b} / {concurrent}) x shortest job)"),
            "limit": "max(rateBound, concurrencyBound)",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_limit_for_the_documented_scenario() {
        // 40 calendars x 500 one-entry changes, max 500 entries: 40 batches of
        // 500; job 300 + 0.2 x 500 = 400 ms; 300/min = 5/s with a burst of 5.
        let l = api_limit(20_000, 40, 500, 3, 300, 0.2, 300);
        // rate: (40 - 5) / 5 + 0.4 = 7.4 s; concurrency: ceil(40/3) x 0.4 = 5.6 s.
        assert!((l.seconds - 7.4).abs() < 1e-9, "{}", l.seconds);
    }
}
