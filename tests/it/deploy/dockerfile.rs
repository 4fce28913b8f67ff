//! deploy/Dockerfile and .dockerignore.

use super::*;

#[test]
fn dockerfile_is_multi_stage_non_root_and_complete() {
    let f = "deploy/Dockerfile";
    let text = read(f);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.to_ascii_uppercase().starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(
        froms.len() >= 2,
        "{f}: needs a builder and a runtime FROM stage"
    );
    let last = &lines[*froms.last().expect("a FROM")..];
    let instr = |name: &str| -> Vec<&str> {
        last.iter()
            .filter(|l| l.to_ascii_uppercase().starts_with(&format!("{name} ")))
            .map(|l| l[name.len()..].trim())
            .collect()
    };
    let user = instr("USER");
    let user = user
        .last()
        .unwrap_or_else(|| panic!("{f}: the runtime stage has no USER"));
    let user_name = user.split(':').next().unwrap_or_default();
    assert!(
        user_name != "root" && user_name != "0",
        "{f}: the runtime stage runs as {user}; use a non-root user"
    );
    let port = listen_port(&defaults()).to_string();
    assert!(
        instr("EXPOSE")
            .iter()
            .any(|e| e.split_whitespace().any(|p| p == port)),
        "{f}: EXPOSE must include the http.listen port {port}"
    );
    assert!(
        instr("ENTRYPOINT")
            .iter()
            .any(|e| e.contains("\"cxone-schedule-worker\"")),
        "{f}: ENTRYPOINT must be [\"cxone-schedule-worker\"]"
    );
    assert!(
        instr("COPY").iter().any(
            |c| c.starts_with("--from=") && c.ends_with("/usr/local/bin/cxone-schedule-worker")
        ),
        "{f}: the runtime stage must copy the binary to /usr/local/bin/cxone-schedule-worker"
    );
    assert!(
        instr("COPY").contains(&"config/ /etc/cxone-schedule-worker/"),
        "{f}: must COPY config/ /etc/cxone-schedule-worker/"
    );
    assert!(
        text.contains("--locked"),
        "{f}: cargo build must use --locked"
    );

    // The dependency-caching step must create a stand-in for every target
    // Cargo.toml declares, or `cargo build` fails on the missing file.
    let manifest = read("Cargo.toml");
    let mut section = "";
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let value = |key: &str| {
            line.strip_prefix(key)
                .map(str::trim_start)
                .and_then(|r| r.strip_prefix('='))
                .map(|r| r.trim().trim_matches('"').to_owned())
        };
        let target = match section {
            "[lib]" | "[[bin]]" => value("path"),
            "[[bench]]" => value("name").map(|n| format!("benches/{n}.rs")),
            "[[test]]" | "[[example]]" => None,
            _ => None,
        };
        if let Some(t) = target {
            assert!(
                text.contains(&format!("> {t}")) || text.contains(&format!("touch {t}")),
                "{f}: the dependency-caching step must create a stand-in {t} (declared in Cargo.toml)"
            );
        }
    }

    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        ignored.iter().any(|l| l.trim_end_matches('/') == "target"),
        ".dockerignore: must exclude target/"
    );
    for needed in [
        "src",
        "config",
        "samples",
        "benches",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        assert!(
            !ignored
                .iter()
                .any(|l| l.trim_end_matches('/').trim_start_matches('/') == needed),
            ".dockerignore: excludes {needed}, which the image build needs"
        );
    }
}
