//! What the binary writes to stderr when it is not a terminal.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// A log file, a pipe or journald gets plain text: colour codes there are
/// escape bytes that break grep and log shippers.
#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cxone-schedule-worker"))
        .args(["--log-format", "text", "sim", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("CXone simulator listening") => break line,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("no 'CXone simulator listening' log line within 30 s: {e}");
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !line.contains('\u{1b}'),
        "colour codes in a piped log line: {line:?}"
    );
    assert!(
        line.contains("INFO"),
        "the level is still written: {line:?}"
    );
}
