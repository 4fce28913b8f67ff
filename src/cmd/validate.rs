//! `validate FILE...` (CONTRACT section 7). PLACEHOLDER.

use std::path::PathBuf;

use crate::config::Settings;

/// Returns the process exit code: 0 all valid, 1 any invalid, 2 usage or I/O error.
pub fn run(_files: &[PathBuf], _settings: &Settings, _out: &mut dyn std::io::Write) -> i32 {
    2
}
