//! CPU time and peak memory of processes, from Linux's `/proc`. The files
//! are read on tokio's blocking pool, so sampling never stalls the runtime
//! that runs the simulator and the event tap.

use serde_json::{Value, json};

use crate::numbers::round3;

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux architecture Rust targets.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// CPU times at one moment, in seconds; `None` where they cannot be read.
pub struct CpuSample {
    pub worker: Option<f64>,
    /// The local broker (`beam.smp`); `None` when it does not run here.
    pub broker: Option<f64>,
    /// This process: the simulator, the event tap and the raw consumer.
    pub bench: Option<f64>,
    /// CPU time the hypervisor gave to other guests (all CPUs).
    pub stolen: Option<f64>,
}

impl CpuSample {
    /// Samples every figure at once; the worker's only when `worker_pid` is given.
    pub async fn take(worker_pid: Option<u32>) -> CpuSample {
        let sample = move || CpuSample {
            worker: worker_pid.and_then(proc_cpu_seconds),
            broker: broker_cpu_seconds(),
            bench: proc_cpu_seconds(std::process::id()),
            stolen: machine_stolen_seconds(),
        };
        tokio::task::spawn_blocking(sample)
            .await
            .unwrap_or(CpuSample {
                worker: None,
                broker: None,
                bench: None,
                stolen: None,
            })
    }

    /// The report's `cpuDuringDrain`: what each used from `before` to this sample.
    pub fn since(&self, before: &CpuSample) -> Value {
        let used = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| round3(b - a));
        json!({
            "workerSeconds": used(before.worker, self.worker),
            "brokerSeconds": used(before.broker, self.broker),
            "benchSeconds": used(before.bench, self.bench),
            "machineStolenSeconds": used(before.stolen, self.stolen),
            "how": "user + system CPU time from /readyz to the last completion event, from /proc/<pid>/stat; the broker is the local beam.smp process, null when there is none; bench is this process: the simulator and the event tap; machineStolenSeconds is the CPU time the hypervisor gave to other guests meanwhile (steal in /proc/stat, all CPUs): a noisy neighbour shows there",
        })
    }
}

/// CPU time of the local broker (the `beam.smp` process), if it runs here.
pub async fn broker_cpu_seconds_now() -> Option<f64> {
    tokio::task::spawn_blocking(broker_cpu_seconds)
        .await
        .ok()
        .flatten()
}

/// A process's peak resident set so far, in kB (`VmHWM` in `/proc/<pid>/status`).
pub async fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
        .await
        .ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU time of a process, from `/proc/<pid>/stat`.
fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    // utime and stime, in clock ticks.
    let stat = proc_stat(pid)?;
    Some((stat_field(&stat, 14)? + stat_field(&stat, 15)?) as f64 / CLOCK_TICKS_PER_SECOND)
}

/// `/proc/<pid>/stat` after the parenthesised command name (which may hold
/// spaces): the line from its 3rd field on.
fn proc_stat(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.to_owned())
}

/// Field `n` of a [`proc_stat`] line, numbered as in proc(5) (from 1, the
/// process id).
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    stat.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// CPU time stolen from this virtual machine so far, in seconds (all
/// CPUs): the `steal` column of `/proc/stat`'s `cpu` line, which counts
/// clock ticks. Runs that differ by a noisy neighbour differ here.
fn machine_stolen_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq steal ...
    let steal: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(steal as f64 / CLOCK_TICKS_PER_SECOND)
}

/// CPU time of the local broker (the `beam.smp` process), if it runs here.
fn broker_cpu_seconds() -> Option<f64> {
    // `rabbitmqctl` (which the benchmark runs to roll the broker's log)
    // is a `beam.smp` too, for a moment: the broker is the oldest one.
    let pid = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == "beam.smp").then_some(pid)
        })
        .min_by_key(|&pid| proc_start_ticks(pid).unwrap_or(u64::MAX))?;
    proc_cpu_seconds(pid)
}

/// When a process started, in clock ticks after boot (`starttime`, the
/// 22nd field of `/proc/<pid>/stat`).
fn proc_start_ticks(pid: u32) -> Option<u64> {
    stat_field(&proc_stat(pid)?, 22)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_started_after_init() {
        let me = proc_start_ticks(std::process::id()).expect("this process's start");
        let init = proc_start_ticks(1).expect("init's start");
        assert!(init <= me, "init at {init}, this process at {me}");
    }
}
