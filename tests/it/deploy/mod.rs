//! The deployment files checked against the code: docker-compose.yml,
//! deploy/k8s/*, deploy/prometheus/alerts.yaml, deploy/grafana/dashboard.json,
//! deploy/Dockerfile, .dockerignore, samples/roster.ndjson and
//! docs/operations.md. Needs neither a broker nor Docker.
//!
//! What it guards: every environment variable names a real setting (or a
//! known alias or external variable), the settings the files produce load and
//! validate, ports, probes, secrets, queue names and grace periods agree with
//! the defaults, every metric the dashboard and alerts query exists, and the
//! sample roster is what the demo expects.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use chrono::{DateTime, FixedOffset};
use cxone_schedule_worker::{
    amqp::partition_queue_name,
    config::{DEFAULT_TOML, ENV_ALIASES, Settings},
    domain::{MessageMeta, parse_change},
};
use serde::Deserialize;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

/// Environment variables the worker or its libraries read that are not settings.
const EXTERNAL_ENV: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "RUST_LOG",
    "OTEL_SERVICE_NAME",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: cannot read: {e}"))
}

/// Every YAML document of a file, with `<<` merge keys applied; empty documents skipped.
fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = read(rel);
    let mut docs = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let mut doc =
            Yaml::deserialize(de).unwrap_or_else(|e| panic!("{rel}: document {i}: not YAML: {e}"));
        doc.apply_merge()
            .unwrap_or_else(|e| panic!("{rel}: document {i}: bad merge key: {e}"));
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    docs
}

fn yaml_one(rel: &str) -> Yaml {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: expected exactly one YAML document");
    docs.remove(0)
}

/// A scalar as a string (numbers and booleans too); None for null, mappings and sequences.
fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn str_of<'a>(v: &'a Yaml, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn seq_of<'a>(v: &'a Yaml, what: &str) -> &'a [Yaml] {
    v.as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what}: expected a list, got {v:?}"))
}

/// `[section]` headers and `key =` lines of `DEFAULT_TOML` → "section.key" → raw value.
fn default_keys() -> BTreeMap<String, String> {
    toml_keys(DEFAULT_TOML, "config/default.toml")
}

/// A hand-made reader for the flat TOML the worker uses (sections of `key = value`).
fn toml_keys(text: &str, what: &str) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    let mut section = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{what}: line {}: not `key = value`: {line}", n + 1));
        assert!(
            !section.is_empty(),
            "{what}: line {}: key outside a [section]",
            n + 1
        );
        keys.insert(
            format!("{section}.{}", key.trim()),
            value.trim().trim_matches('"').to_owned(),
        );
    }
    keys
}

fn defaults() -> Settings {
    Settings::defaults()
}

fn listen_port(s: &Settings) -> u16 {
    s.http.listen.port()
}

/// Checks one environment variable name; returns a complaint or None.
fn env_name_problem(name: &str, keys: &BTreeMap<String, String>) -> Option<String> {
    if let Some(rest) = name.strip_prefix("CSW__") {
        let parts: Vec<&str> = rest.split("__").collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Some(format!("{name} is not of the form CSW__SECTION__KEY"));
        }
        let key = format!("{}.{}", parts[0], parts[1]).to_lowercase();
        if !keys.contains_key(&key) {
            return Some(format!(
                "{name} sets `{key}`, which is not a key of config/default.toml"
            ));
        }
        return None;
    }
    if ENV_ALIASES.iter().any(|(alias, _)| *alias == name) || EXTERNAL_ENV.contains(&name) {
        return None;
    }
    Some(format!(
        "{name} is neither CSW__SECTION__KEY, an alias of config::ENV_ALIASES, nor one of {EXTERNAL_ENV:?}"
    ))
}

fn flag(args: &[String], flag: &str, what: &str) -> String {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{what}: no {flag} in {args:?}"));
    args.get(i + 1)
        .unwrap_or_else(|| panic!("{what}: {flag} has no value"))
        .clone()
}

mod compose;
mod dockerfile;
mod grafana;
mod k8s;
mod metrics;
mod prometheus;
mod samples;

use metrics::{base_metric, csw_names, unknown_metrics};
