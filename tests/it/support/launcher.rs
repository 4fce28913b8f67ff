//! The one way tests start the worker binary as a child process (so it can
//! be signalled or killed), logging to a file kept after the run.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use cxone_schedule_worker::config::Settings;
use tokio::time::Instant;

use super::env_of;

/// The worker binary as a child process, logging to a file.
pub struct WorkerProc {
    pub child: Child,
    pub log: PathBuf,
}

impl WorkerProc {
    pub fn spawn(env: &[(String, String)], log: &Path, rust_log: &str) -> WorkerProc {
        Self::spawn_args(&["run"], env, log, rust_log)
    }

    /// `cxone-schedule-worker ARGS`; killed on drop if still running.
    pub fn spawn_args(
        args: &[&str],
        env: &[(String, String)],
        log: &Path,
        rust_log: &str,
    ) -> WorkerProc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("worker log file");
        let child = Command::new(env!("CARGO_BIN_EXE_cxone-schedule-worker"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("worker binary starts");
        WorkerProc {
            child,
            log: log.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no acks, nothing flushed.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "could not signal the worker");
    }

    /// Waits for the exit; `Err` after `timeout` (the process is then killed).
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err(format!(
                    "worker did not exit within {timeout:?}; log: {}",
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Peak resident memory (VmHWM) in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        if self.running() {
            self.kill9();
        }
    }
}

/// The environment of a worker subprocess for `settings`, plus `extra`.
pub fn worker_env(settings: &Settings, extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env = env_of(settings);
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push(((*k).to_owned(), v.clone()));
    }
    env
}

/// A log file for a worker process, under the target directory (kept after the run).
pub fn log_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}
