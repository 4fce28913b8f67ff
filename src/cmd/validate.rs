//! `validate FILE...` (docs/contract.md §12): the worker's own checks, offline.
//!
//! Each change is validated from its exact bytes with the same
//! [`parse_change`] the worker runs, so the `sha256-…` fallback id printed
//! here is the one the worker would use for the same bytes sent by `publish`
//! (which splits files with [`split_changes`] too).

use std::{borrow::Cow, io::Write, path::PathBuf};

use serde::Serialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::config::Settings;
use crate::domain::{MessageMeta, ValidationError, parse_change};

/// Returns the process exit code: 0 all valid, 1 any invalid, 2 usage or I/O error.
pub fn run(files: &[PathBuf], settings: &Settings, out: &mut dyn std::io::Write) -> i32 {
    if files.is_empty() {
        eprintln!("error: validate: no files given; usage: validate FILE...");
        return 2;
    }
    let mut io_error = false;
    let mut any_invalid = false;
    for path in files {
        let content = match std::fs::read(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                io_error = true;
                continue;
            }
        };
        let file = path.to_string_lossy();
        for (index, body) in split_changes(&content).into_iter().enumerate() {
            let result = parse_change(
                body,
                &MessageMeta::default(),
                &settings.limits,
                settings.cxone.default_validation_mode,
            );
            let line = match &result {
                Ok(change) => Line {
                    file: &file,
                    index,
                    change_id: &change.change_id,
                    valid: true,
                    errors: &[],
                    capacity_minutes: Some(change.capacity_minutes),
                },
                Err(rejection) => Line {
                    file: &file,
                    index,
                    change_id: &rejection.change_id,
                    valid: false,
                    errors: &rejection.errors,
                    capacity_minutes: None,
                },
            };
            any_invalid |= !line.valid;
            if let Err(e) = write_line(out, &line) {
                // Most likely a closed pipe (`validate ... | head`): nothing
                // more can be reported, so stop rather than spin.
                eprintln!("error: cannot write the report: {e}");
                return 2;
            }
        }
    }
    if let Err(e) = out.flush() {
        eprintln!("error: cannot write the report: {e}");
        return 2;
    }
    if io_error {
        2
    } else if any_invalid {
        1
    } else {
        0
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    file: &'a str,
    index: usize,
    change_id: &'a str,
    valid: bool,
    errors: &'a [ValidationError],
    capacity_minutes: Option<u64>,
}

fn write_line(out: &mut dyn Write, line: &Line<'_>) -> std::io::Result<()> {
    let mut buf = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    buf.push(b'\n');
    out.write_all(&buf)
}

/// The changes in a file, each as the exact bytes to validate or publish:
///
/// - the whole content (blanks trimmed) when it is one JSON value: an object
///   is one change; any other scalar is one (invalid) change;
/// - each element, as its raw bytes, when it is a JSON array;
/// - otherwise, when some line on its own is a JSON object, each non-blank
///   line (NDJSON), malformed lines included so they are reported;
/// - otherwise the whole content as one invalid change (a broken file that
///   is not NDJSON, such as a pretty-printed object with a syntax error, is
///   reported once rather than line by line). An empty file is one invalid
///   change too: it most likely is a mistake.
pub fn split_changes(content: &[u8]) -> Vec<&[u8]> {
    let whole = content.trim_ascii();
    if whole.is_empty() {
        return vec![whole];
    }
    if serde_json::from_slice::<IgnoredAny>(whole).is_ok() {
        if whole.first() == Some(&b'[') {
            if let Some(elements) = array_elements(whole) {
                return elements;
            }
        }
        return vec![whole];
    }
    let lines: Vec<&[u8]> = content
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|l| !l.is_empty())
        .collect();
    let is_ndjson = lines.len() > 1
        && lines
            .iter()
            .any(|l| l.first() == Some(&b'{') && serde_json::from_slice::<IgnoredAny>(l).is_ok());
    if is_ndjson { lines } else { vec![whole] }
}

/// The raw bytes of each element of a (syntactically valid) JSON array.
fn array_elements(array: &[u8]) -> Option<Vec<&[u8]>> {
    let text = utf8_stand_in(array);
    let elements: Vec<&RawValue> = serde_json::from_str(&text).ok()?;
    let base = text.as_ptr() as usize;
    elements
        .iter()
        .map(|element| {
            let start = element.get().as_ptr() as usize - base;
            array.get(start..start + element.get().len())
        })
        .collect()
}

/// The bytes as text of the same length: invalid UTF-8 (which a valid JSON
/// document can hold only inside strings, and which the change's own
/// validation reports) becomes `?`, so every element keeps its byte range.
fn utf8_stand_in(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(
            bytes
                .utf8_chunks()
                .flat_map(|chunk| {
                    let stand_in = std::iter::repeat_n('?', chunk.invalid().len());
                    chunk.valid().chars().chain(stand_in)
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<&str> {
        split_changes(s.as_bytes())
            .into_iter()
            .map(|b| std::str::from_utf8(b).unwrap())
            .collect()
    }

    #[test]
    fn single_object_is_one_change() {
        assert_eq!(split(" {\"a\": 1}\n"), vec!["{\"a\": 1}"]);
        assert_eq!(split("{\n  \"a\": 1\n}\n"), vec!["{\n  \"a\": 1\n}"]);
    }

    #[test]
    fn array_elements_keep_their_exact_bytes() {
        assert_eq!(
            split("[ {\"a\": 1} ,\n{\"b\":[1, 2]}, 3, \"x\" ]"),
            vec!["{\"a\": 1}", "{\"b\":[1, 2]}", "3", "\"x\""]
        );
        assert!(split("[]").is_empty());
    }

    #[test]
    fn array_elements_with_invalid_utf8_keep_their_exact_bytes() {
        let content = b"[{\"a\": \"\xff\"}, {\"b\": 2}]";
        assert_eq!(
            split_changes(content),
            vec![&b"{\"a\": \"\xff\"}"[..], &b"{\"b\": 2}"[..]]
        );
    }

    #[test]
    fn ndjson_lines_including_malformed_ones() {
        assert_eq!(
            split("{\"a\":1}\n\n{oops\r\n{\"b\":2}\n"),
            vec!["{\"a\":1}", "{oops", "{\"b\":2}"]
        );
    }

    #[test]
    fn broken_single_documents_are_one_change() {
        assert_eq!(split("{oops"), vec!["{oops"]);
        assert_eq!(split("{\n  \"a\": 1,\n}"), vec!["{\n  \"a\": 1,\n}"]);
        assert_eq!(split(""), vec![""]);
        assert_eq!(split("  \n "), vec![""]);
    }
}
