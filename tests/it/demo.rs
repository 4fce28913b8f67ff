//! `demo` as a newcomer runs it: exit 0 and a summary that adds up.

use std::process::Command;

#[test]
fn demo_imports_the_sample_roster_and_summarises() {
    let out = Command::new(env!("CARGO_BIN_EXE_cxone-schedule-worker"))
        .args([
            "demo",
            "--rate",
            "0",
            "--job-ms",
            "20",
            "--timeout-s",
            "120",
        ])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({:?}); is RabbitMQ running at AMQP_URL? stdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stdout.contains("changes published      246"), "{stdout}");
    assert!(stdout.contains("accepted and imported  240"), "{stdout}");
    assert!(stdout.contains("rejected               6"), "{stdout}");
    for code in [
        "BREAK_OUTSIDE_SHIFT",
        "END_NOT_AFTER_START",
        "INSUFFICIENT_CAPACITY",
        "INVALID_OVERRIDE_TYPE",
        "MISSING_FIELD",
        "OVERLAPPING_SHIFTS",
    ] {
        assert!(
            stdout.contains(code),
            "{code} missing from the summary:\n{stdout}"
        );
    }
    assert!(stdout.contains("publish → completed    p50"), "{stdout}");
    assert!(stdout.contains("shifts in the roster   240"), "{stdout}");
}
