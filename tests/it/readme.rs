//! The README stays true: every setting is documented in its configuration table.

use cxone_schedule_worker::config::{DEFAULT_TOML, ENV_ALIASES};

#[test]
fn every_setting_is_in_the_readme_table() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md is readable");
    let mut section = String::new();
    let mut missing = Vec::new();
    for line in DEFAULT_TOML.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, _)) = line.split_once(" = ")
            && !line.starts_with('#')
        {
            let dotted = format!("`{section}.{key}`");
            let env = format!("CSW__{}__{}", section.to_uppercase(), key.to_uppercase());
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| {dotted}")));
            match row {
                Some(row)
                    if row.contains(&env)
                        || ENV_ALIASES
                            .iter()
                            .any(|(a, k)| *k == format!("{section}.{key}") && row.contains(a)) => {}
                _ => missing.push(dotted),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README configuration table lacks rows (with env names) for {missing:?}"
    );
}
