//! The benchmark end to end with tiny numbers against the real broker: it
//! runs, stops its worker cleanly and prints the documented JSON fields.
//! Timings are not checked: speed is what the benchmark measures, not a test.

use std::{path::Path, process::Command};

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_csw-bench");

/// The benchmark runs the worker binary built beside it, which only a build
/// of the worker's own package makes: a plain `cargo test` at the workspace
/// root does (the root package is a default member), `cargo test -p
/// csw-bench` alone does not.
fn assert_worker_built() {
    let worker = Path::new(BENCH).with_file_name(format!(
        "cxone-schedule-worker{}",
        std::env::consts::EXE_SUFFIX
    ));
    assert!(
        worker.is_file(),
        "the worker binary {} is missing: run `cargo test` at the workspace root, \
         or `cargo build -p cxone-schedule-worker` before `cargo test -p csw-bench`",
        worker.display()
    );
}

fn run_bench(args: &[&str]) -> Value {
    assert_worker_built();
    let out = Command::new(BENCH)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({}); is RabbitMQ running at AMQP_URL? stderr:\n{stderr}\nstdout:\n{stdout}",
        out.status
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("bench printed no JSON ({e}):\n{stdout}\nstderr:\n{stderr}"))
}

fn number(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in {v:#}"))
}

#[test]
fn throughput_bench_reports_every_figure() {
    let v = run_bench(&[
        "--changes",
        "500",
        "--quick",
        "--calendars",
        "10",
        "--latency-seconds",
        "1",
    ]);
    assert_eq!(v["scenario"], "throughput");
    assert_eq!(v["changes"], 500);
    assert_eq!(v["queueType"], "quorum");
    assert!(number(&v, "/raw/perSecond") > 0.0);
    assert!(number(&v, "/worker/perSecond") > 0.0);
    assert!(number(&v, "/ratio") > 0.0);
    // Both drains are timed from their first delivery; the consumer's start
    // is reported beside them.
    assert!(number(&v, "/raw/firstDeliveryMs") >= 0.0);
    assert!(number(&v, "/worker/firstDeliveryMs") >= 0.0);
    assert!(number(&v, "/worker/perSecondFromReady") > 0.0);
    assert!(number(&v, "/worker/perSecondFromReady") <= number(&v, "/worker/perSecond"));
    assert!(v["raw"]["walRolledBeforePrefill"].is_boolean(), "{v:#}");
    assert!(v["worker"]["walRolledBeforePrefill"].is_boolean(), "{v:#}");
    assert!(number(&v, "/rss/peakMbDuringDrain") > 0.0);
    assert!(v["rss"]["how"].as_str().unwrap().contains("VmHWM"));
    assert!(
        v["cpuDuringDrain"]["workerSeconds"].is_number(),
        "the worker's CPU time over the drain: {v:#}"
    );
    assert!(
        v["cpuDuringDrain"]["benchSeconds"].is_number(),
        "the simulator's and tap's CPU time over the drain: {v:#}"
    );
    // The broker's CPU over each drain, both or neither (no local broker).
    assert_eq!(
        v["raw"]["brokerCpuSeconds"].is_number(),
        v["cpuDuringDrain"]["brokerSeconds"].is_number(),
        "{v:#}"
    );
    // Linux has /proc/stat: how much CPU a noisy neighbour took is reported.
    assert!(number(&v, "/raw/machineStolenSeconds") >= 0.0);
    assert!(number(&v, "/cpuDuringDrain/machineStolenSeconds") >= 0.0);
    assert_eq!(v["worker"]["threads"], 1, "the benchmark's default");
    assert!(number(&v, "/cxone/importRequests") >= 1.0);
    assert!(v["cxone"]["jobRequests"].is_u64());
    assert!(number(&v, "/cxone/requestsPerChange") > 0.0);
    assert!(number(&v, "/latency/p50Ms") >= 0.0);
    assert!(number(&v, "/latency/p99Ms") >= number(&v, "/latency/p50Ms"));
    assert_eq!(v["latency"]["ratePerSecond"], 1000.0);
    assert_eq!(
        v["workerExit"]["code"], 0,
        "the worker stops cleanly on SIGTERM"
    );
    for t in [
        "drainRatioAtLeast0.8",
        "peakRssAtMost64Mb",
        "requestsPerChangeAtMost1Per400",
        "p99AtMostMaxWaitPlus150Ms",
    ] {
        assert!(v["targets"][t].is_boolean(), "target {t} missing: {v:#}");
    }
}
