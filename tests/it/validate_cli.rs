//! `validate FILE...` through the real binary (docs/contract.md §12).

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Runs `validate` with the defaults: settings from the environment are
/// removed so a developer's shell cannot change the outcome.
fn validate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cxone-schedule-worker"));
    cmd.arg("validate").args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("CSW__") || k.starts_with("CXONE_") || k == "AMQP_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run the binary")
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn codes(line: &Value) -> Vec<(&str, &str)> {
    line["errors"]
        .as_array()
        .expect("errors array")
        .iter()
        .map(|e| (e["code"].as_str().unwrap(), e["path"].as_str().unwrap()))
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256-{}", hex::encode(Sha256::digest(bytes)))
}

#[test]
fn a_single_valid_change() {
    let file = fixture("single.json");
    let out = validate(&[&file], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    // One compact line with the fields in the documented order.
    assert_eq!(
        stdout,
        format!(
            "{{\"file\":{},\"index\":0,\"changeId\":\"chg-2024-01-15-0001\",\"valid\":true,\"errors\":[],\"capacityMinutes\":390}}\n",
            serde_json::to_string(&file).unwrap()
        )
    );
}

#[test]
fn an_array_validates_each_element_from_its_own_bytes() {
    let file = fixture("array.json");
    let out = validate(&[&file], &[]);
    assert_eq!(out.status.code(), Some(1));
    let got = lines(&out);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0]["changeId"], "arr-0");
    assert_eq!(got[0]["valid"], true);
    assert_eq!(got[0]["capacityMinutes"], 465);

    assert_eq!(got[1]["index"], 1);
    assert_eq!(got[1]["changeId"], "arr-1");
    assert_eq!(got[1]["valid"], false);
    assert_eq!(got[1]["capacityMinutes"], Value::Null);
    assert_eq!(
        codes(&got[1]),
        vec![("END_NOT_AFTER_START", "/entries/0/endDateTime")]
    );
    assert_eq!(
        got[1]["errors"][0]["message"],
        "endDateTime 2024-01-15T08:00:00Z is not after startDateTime 2024-01-15T08:00:00Z"
    );

    // No changeId: the fallback hashes the element's exact bytes in the file.
    let element = r#"{"calendarId":"cal-1","entries":[{"agentId":"b","startDateTime":"2024-01-15T10:00:00+02:00","endDateTime":"2024-01-15T09:30:00Z"}]}"#;
    assert!(std::fs::read_to_string(&file).unwrap().contains(element));
    assert_eq!(got[2]["index"], 2);
    assert_eq!(got[2]["changeId"], sha(element.as_bytes()));
    assert_eq!(got[2]["valid"], true);
    assert_eq!(got[2]["capacityMinutes"], 90);
    for (i, l) in got.iter().enumerate() {
        assert_eq!(l["file"], file.as_str());
        assert_eq!(l["index"], i);
    }
}

#[test]
fn ndjson_reports_a_malformed_line_at_its_index() {
    let file = fixture("changes.ndjson");
    let out = validate(&[&file], &[]);
    assert_eq!(out.status.code(), Some(1));
    let got = lines(&out);
    assert_eq!(got.len(), 3, "the blank line is not a change");
    assert_eq!(
        (
            got[0]["index"].clone(),
            got[0]["changeId"].clone(),
            got[0]["valid"].clone()
        ),
        (json!(0), json!("nd-0"), json!(true))
    );
    assert_eq!(got[0]["capacityMinutes"], 240);
    assert_eq!(got[1]["index"], 1);
    assert_eq!(got[1]["valid"], false);
    assert_eq!(codes(&got[1]), vec![("INVALID_JSON", "")]);
    assert_eq!(
        got[1]["changeId"],
        sha(br#"{"changeId":"nd-1","calendarId":"cal-1","entries":["#)
    );
    assert_eq!(
        (
            got[2]["index"].clone(),
            got[2]["changeId"].clone(),
            got[2]["valid"].clone()
        ),
        (json!(2), json!("nd-2"), json!(true))
    );
    assert_eq!(got[2]["capacityMinutes"], 0);
}

#[test]
fn a_file_that_is_not_json_is_one_invalid_change() {
    let file = fixture("broken.txt");
    let out = validate(&[&file], &[]);
    assert_eq!(out.status.code(), Some(1));
    let got = lines(&out);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["index"], 0);
    assert_eq!(codes(&got[0]), vec![("INVALID_JSON", "")]);
    assert_eq!(got[0]["changeId"], sha(b"this is not json"));
}

#[test]
fn a_missing_file_is_exit_2_and_the_others_are_still_checked() {
    let missing = fixture("does-not-exist.json");
    let single = fixture("single.json");
    let broken = fixture("broken.txt");
    let out = validate(&[&missing, &single, &broken], &[]);
    assert_eq!(out.status.code(), Some(2), "2 wins over 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing), "{stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    let got = lines(&out);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["file"], single.as_str());
    assert_eq!(got[1]["file"], broken.as_str());
}

#[test]
fn several_files_in_order_and_all_valid_is_exit_0() {
    let single = fixture("single.json");
    let out = validate(&[&single, &single], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(lines(&out).len(), 2);
}

#[test]
fn no_files_is_a_usage_error() {
    assert_eq!(validate(&[], &[]).status.code(), Some(2));
}

#[test]
fn limits_come_from_the_settings() {
    let single = fixture("single.json");
    let out = validate(&[&single], &[("CSW__LIMITS__MAX_SHIFT_MINUTES", "60")]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        codes(&lines(&out)[0]),
        vec![("SHIFT_TOO_LONG", "/entries/0")]
    );
}
