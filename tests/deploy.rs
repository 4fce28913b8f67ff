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
use serde_yaml::Value as Yaml;

/// Environment variables the worker or its libraries read that are not settings.
const EXTERNAL_ENV: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "RUST_LOG",
    "OTEL_SERVICE_NAME",
];

/// Every metric the worker exports (histograms also as `_bucket`, `_sum`, `_count`).
const KNOWN_METRICS: &[&str] = &[
    "csw_changes_received_total",
    "csw_changes_accepted_total",
    "csw_changes_rejected_total",
    "csw_changes_duplicate_total",
    "csw_changes_redelivered_settled_total",
    "csw_changes_imported_total",
    "csw_imports_total",
    "csw_stage_duration_seconds",
    "csw_batch_entries",
    "csw_imports_in_flight",
    "csw_job_polls",
    "csw_events_published_total",
    "csw_dead_lettered_total",
    "csw_broker_reconnects_total",
    "csw_broker_connected",
    "csw_partitions_owned",
    "csw_acks_sent_total",
    "csw_ack_pace_changes_total",
    "csw_batches_closed_total",
    "csw_changes_joined_waiting_total",
    "csw_webhooks_total",
    "csw_cxone_requests_total",
    "csw_cxone_rate_limited_total",
    "csw_cxone_retries_total",
    "csw_token_refreshes_total",
    "csw_cxone_request_duration_seconds",
];

const HISTOGRAMS: &[&str] = &[
    "csw_stage_duration_seconds",
    "csw_batch_entries",
    "csw_job_polls",
    "csw_cxone_request_duration_seconds",
];

// ---------------------------------------------------------------- helpers

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
    for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
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

// ---------------------------------------------------------------- compose

fn compose() -> Yaml {
    yaml_one("docker-compose.yml")
}

fn service<'a>(c: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &c["services"][name];
    assert!(
        s.is_mapping(),
        "docker-compose.yml: no service `{name}` under services"
    );
    s
}

/// A service's `environment`, as a mapping or a `KEY=VALUE` list.
fn compose_env(c: &Yaml, name: &str) -> HashMap<String, String> {
    let env = &service(c, name)["environment"];
    let mut out = HashMap::new();
    match env {
        Yaml::Null => {}
        Yaml::Mapping(m) => {
            for (k, v) in m {
                let k = str_of(k, "docker-compose.yml environment key").to_owned();
                out.insert(k, scalar(v).unwrap_or_default());
            }
        }
        Yaml::Sequence(items) => {
            for item in items {
                let item = str_of(item, "docker-compose.yml environment entry");
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                out.insert(k.to_owned(), v.to_owned());
            }
        }
        other => panic!(
            "docker-compose.yml: services.{name}.environment is neither a mapping nor a list: {other:?}"
        ),
    }
    out
}

fn compose_command(c: &Yaml, name: &str) -> Vec<String> {
    match &service(c, name)["command"] {
        Yaml::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Yaml::Sequence(items) => items
            .iter()
            .map(|i| {
                scalar(i).unwrap_or_else(|| {
                    panic!("docker-compose.yml: services.{name}.command has a non-scalar item")
                })
            })
            .collect(),
        other => panic!("docker-compose.yml: services.{name}.command missing or odd: {other:?}"),
    }
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

fn url(s: &str, what: &str) -> reqwest::Url {
    reqwest::Url::parse(s).unwrap_or_else(|e| panic!("{what}: {s:?} is not a URL: {e}"))
}

#[test]
fn compose_env_names_are_settings_aliases_or_known_externals() {
    let c = compose();
    let keys = default_keys();
    let services = c["services"]
        .as_mapping()
        .expect("docker-compose.yml: no services mapping");
    let mut problems = Vec::new();
    for (name, _) in services {
        let name = str_of(name, "docker-compose.yml service name");
        for var in compose_env(&c, name).keys() {
            if name == "jaeger" {
                continue; // Jaeger's own settings
            }
            if let Some(p) = env_name_problem(var, &keys) {
                problems.push(format!("services.{name}: {p}"));
            }
        }
    }
    assert!(problems.is_empty(), "docker-compose.yml: {problems:#?}");
}

#[test]
fn compose_settings_load_for_every_worker_role() {
    let c = compose();
    for name in ["worker", "cxone-sim", "publisher"] {
        let env = compose_env(&c, name);
        if let Err(e) = Settings::load_from(None, &env) {
            panic!("docker-compose.yml: services.{name}: its environment does not load: {e}");
        }
    }
}

#[test]
fn compose_wires_simulator_worker_broker_and_publisher() {
    let c = compose();
    let worker_env = compose_env(&c, "worker");
    let worker = Settings::load_from(None, &worker_env).expect("worker settings load");
    let sim_args = compose_command(&c, "cxone-sim");
    assert_eq!(
        sim_args.first().map(String::as_str),
        Some("sim"),
        "docker-compose.yml: services.cxone-sim.command must start with the `sim` subcommand"
    );
    assert_eq!(
        compose_command(&c, "worker").first().map(String::as_str),
        Some("run"),
        "docker-compose.yml: services.worker.command must be `run`"
    );

    // The worker reaches the simulator by service name and its --listen port.
    let listen: SocketAddr = flag(&sim_args, "--listen", "docker-compose.yml cxone-sim")
        .parse()
        .expect("docker-compose.yml: cxone-sim --listen is not HOST:PORT");
    assert!(
        listen.ip().is_unspecified(),
        "docker-compose.yml: cxone-sim --listen {listen} must bind 0.0.0.0 to be reachable from other containers"
    );
    for var in ["CXONE_BASE_URL", "CXONE_AUTH_URL"] {
        let v = worker_env
            .get(var)
            .unwrap_or_else(|| panic!("docker-compose.yml: services.worker has no {var}"));
        let u = url(v, &format!("docker-compose.yml worker {var}"));
        assert_eq!(
            u.host_str(),
            Some("cxone-sim"),
            "docker-compose.yml: worker {var} {v} must name the `cxone-sim` service"
        );
        assert_eq!(
            u.port_or_known_default(),
            Some(listen.port()),
            "docker-compose.yml: worker {var} {v} must use the sim's --listen port {}",
            listen.port()
        );
    }
    assert_eq!(
        worker.cxone.base_url, worker_env["CXONE_BASE_URL"],
        "docker-compose.yml: CXONE_BASE_URL does not reach cxone.base_url"
    );

    // Webhooks: the sim calls the worker's webhook route, signed with the worker's secret.
    let hook = flag(&sim_args, "--webhook-url", "docker-compose.yml cxone-sim");
    let hook = url(&hook, "docker-compose.yml cxone-sim --webhook-url");
    assert_eq!(
        hook.host_str(),
        Some("worker"),
        "docker-compose.yml: cxone-sim --webhook-url must name the `worker` service"
    );
    assert_eq!(
        hook.port_or_known_default(),
        Some(listen_port(&worker)),
        "docker-compose.yml: cxone-sim --webhook-url port must be the worker's http.listen port"
    );
    assert_eq!(
        hook.path(),
        "/webhooks/cxone",
        "docker-compose.yml: cxone-sim --webhook-url must point at /webhooks/cxone"
    );
    let sim_secret = flag(
        &sim_args,
        "--webhook-secret",
        "docker-compose.yml cxone-sim",
    );
    let worker_secret = worker_env.get("CXONE_WEBHOOK_SECRET").unwrap_or_else(|| {
        panic!("docker-compose.yml: services.worker has no CXONE_WEBHOOK_SECRET")
    });
    assert!(
        !sim_secret.is_empty(),
        "docker-compose.yml: cxone-sim --webhook-secret is empty"
    );
    assert_eq!(
        &sim_secret, worker_secret,
        "docker-compose.yml: cxone-sim --webhook-secret differs from the worker's CXONE_WEBHOOK_SECRET"
    );
    assert_eq!(
        worker.cxone.webhook_secret(),
        Some(sim_secret.as_str()),
        "docker-compose.yml: the worker's loaded cxone.webhook_secret is not the sim's"
    );

    // The broker: reached by service name, healthy before the worker starts.
    let amqp = url(&worker.amqp.url, "docker-compose.yml worker AMQP_URL");
    assert_eq!(
        amqp.host_str(),
        Some("rabbitmq"),
        "docker-compose.yml: worker AMQP_URL must name the `rabbitmq` service"
    );
    let rabbit = service(&c, "rabbitmq");
    assert!(
        !rabbit["healthcheck"]["test"].is_null(),
        "docker-compose.yml: rabbitmq needs a healthcheck (the worker waits for service_healthy)"
    );
    assert_eq!(
        rabbit["healthcheck"]["test"].as_sequence().map(|s| s
            .iter()
            .filter_map(scalar)
            .collect::<Vec<_>>()
            .join(" ")),
        Some("CMD rabbitmq-diagnostics -q ping".to_owned()),
        "docker-compose.yml: rabbitmq healthcheck must be `rabbitmq-diagnostics -q ping`"
    );
    let w = service(&c, "worker");
    assert_eq!(
        w["depends_on"]["rabbitmq"]["condition"].as_str(),
        Some("service_healthy"),
        "docker-compose.yml: worker must depend on rabbitmq being service_healthy"
    );
    assert!(
        !w["depends_on"]["cxone-sim"].is_null(),
        "docker-compose.yml: worker must depend on cxone-sim"
    );
    let ports: Vec<String> = seq_of(&w["ports"], "docker-compose.yml worker ports")
        .iter()
        .filter_map(scalar)
        .collect();
    assert!(
        ports
            .iter()
            .any(|p| p.ends_with(&format!(":{}", listen_port(&worker)))),
        "docker-compose.yml: worker ports {ports:?} do not publish http.listen port {}",
        listen_port(&worker)
    );
    let plugins = rabbit["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .find(|v| v.contains("/etc/rabbitmq/enabled_plugins"))
        .expect("docker-compose.yml: rabbitmq must mount deploy/rabbitmq/enabled_plugins");
    let host_path = plugins.split(':').next().unwrap_or_default();
    let plugins_file = read(host_path.trim_start_matches("./"));
    assert!(
        plugins_file.contains("rabbitmq_consistent_hash_exchange")
            && plugins_file.contains("rabbitmq_management")
            && plugins_file.trim_end().ends_with("]."),
        "{host_path}: must be an Erlang list `[...].` enabling rabbitmq_management and rabbitmq_consistent_hash_exchange"
    );

    // The grace period lets the worker finish in-flight imports.
    if let Some(grace) = w["stop_grace_period"].as_str() {
        let secs: u64 = grace
            .strip_suffix('s')
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                panic!("docker-compose.yml: worker stop_grace_period {grace:?} is not like `45s`")
            });
        assert!(
            secs > worker.shutdown.timeout.as_secs(),
            "docker-compose.yml: worker stop_grace_period {secs}s must exceed shutdown.timeout_s ({})",
            worker.shutdown.timeout.as_secs()
        );
    }

    // Tracing is opt-in: empty endpoint unless the caller sets it; Jaeger only in the profile.
    assert_eq!(
        worker_env
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(String::as_str),
        Some("${OTEL_EXPORTER_OTLP_ENDPOINT:-}"),
        "docker-compose.yml: worker OTEL_EXPORTER_OTLP_ENDPOINT must be ${{OTEL_EXPORTER_OTLP_ENDPOINT:-}}"
    );
    let jaeger = service(&c, "jaeger");
    assert!(
        seq_of(&jaeger["profiles"], "docker-compose.yml jaeger profiles")
            .iter()
            .any(|p| p.as_str() == Some("tracing")),
        "docker-compose.yml: jaeger must be in the `tracing` profile"
    );

    // The publisher is one-shot and sends a roster that the image carries.
    let p = service(&c, "publisher");
    assert_eq!(
        p["restart"].as_str(),
        Some("no"),
        "docker-compose.yml: publisher must have restart: \"no\" (it is one-shot)"
    );
    let args = compose_command(&c, "publisher");
    assert_eq!(
        args.first().map(String::as_str),
        Some("publish"),
        "docker-compose.yml: publisher command must be `publish FILE`"
    );
    let dockerfile = read("deploy/Dockerfile");
    for file in &args[1..] {
        let rel = file.strip_prefix("/samples/").unwrap_or_else(|| {
            panic!("docker-compose.yml: publisher file {file} is not under /samples/")
        });
        assert!(
            root().join("samples").join(rel).is_file(),
            "docker-compose.yml: publisher sends {file} but samples/{rel} does not exist"
        );
        assert!(
            dockerfile.contains("COPY samples/ /samples/"),
            "deploy/Dockerfile: must COPY samples/ /samples/ for the compose publisher"
        );
    }
    for name in ["cxone-sim", "worker", "publisher"] {
        let s = service(&c, name);
        assert_eq!(
            s["build"]["dockerfile"].as_str(),
            Some("deploy/Dockerfile"),
            "docker-compose.yml: services.{name} must build from deploy/Dockerfile"
        );
        assert_eq!(
            s["build"]["context"].as_str(),
            Some("."),
            "docker-compose.yml: services.{name} build context must be the repository root"
        );
    }
}

// ---------------------------------------------------------------- kubernetes

struct K8s {
    /// (file, document)
    docs: Vec<(String, Yaml)>,
}

impl K8s {
    fn load() -> K8s {
        let dir = root().join("deploy/k8s");
        let mut files: Vec<String> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("deploy/k8s: cannot list: {e}"))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
            .collect();
        files.sort();
        let mut docs = Vec::new();
        for f in files {
            for d in yaml_docs(&format!("deploy/k8s/{f}")) {
                assert!(
                    d["kind"].is_string(),
                    "deploy/k8s/{f}: a document without `kind`"
                );
                docs.push((f.clone(), d));
            }
        }
        K8s { docs }
    }

    fn all(&self, kind: &str) -> Vec<(&str, &Yaml)> {
        self.docs
            .iter()
            .filter(|(_, d)| d["kind"].as_str() == Some(kind))
            .map(|(f, d)| (f.as_str(), d))
            .collect()
    }

    fn one(&self, kind: &str) -> (&str, &Yaml) {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "deploy/k8s: expected exactly one {kind}");
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> Option<(&str, &Yaml)> {
        self.all(kind)
            .into_iter()
            .find(|(_, d)| d["metadata"]["name"].as_str() == Some(name))
    }

    fn container(&self) -> (&str, &Yaml) {
        let (f, d) = self.one("Deployment");
        let cs = seq_of(
            &d["spec"]["template"]["spec"]["containers"],
            "deploy/k8s Deployment containers",
        );
        assert_eq!(cs.len(), 1, "{f}: expected one container");
        (f, &cs[0])
    }

    /// The container's environment, with Secret references resolved from secret.yaml.
    fn container_env(&self) -> HashMap<String, String> {
        let (f, c) = self.container();
        assert!(
            c["envFrom"].is_null(),
            "{f}: use explicit env with secretKeyRef, not envFrom (every name is checked)"
        );
        let mut env = HashMap::new();
        for e in c["env"].as_sequence().into_iter().flatten() {
            let name = str_of(&e["name"], "env name").to_owned();
            let value = if let Some(v) = scalar(&e["value"]) {
                v
            } else if e["valueFrom"]["secretKeyRef"].is_mapping() {
                let r = &e["valueFrom"]["secretKeyRef"];
                let secret = str_of(&r["name"], "secretKeyRef name");
                let key = str_of(&r["key"], "secretKeyRef key");
                self.secret_value(secret, key).unwrap_or_else(|| {
                    panic!("{f}: env {name} references Secret {secret} key {key}, which secret.yaml does not define")
                })
            } else if !e["valueFrom"]["fieldRef"].is_null() {
                "from-field-ref".to_owned()
            } else if e["value"].is_null() && e["valueFrom"].is_null() {
                String::new()
            } else {
                panic!("{f}: env {name}: unsupported value source {e:?}")
            };
            env.insert(name, value);
        }
        env
    }

    fn secret_value(&self, secret: &str, key: &str) -> Option<String> {
        let (_, s) = self.named("Secret", secret)?;
        scalar(&s["stringData"][key])
    }

    /// Settings as the Deployment produces them: defaults, the ConfigMap's file, then the env.
    fn settings(&self) -> Settings {
        let (path, toml) = self.config_file();
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("worker.toml");
        fs::write(&file, toml).expect("write temp config");
        Settings::load_from(Some(&file), &self.container_env()).unwrap_or_else(|e| {
            panic!(
                "deploy/k8s: the ConfigMap's {path} with the Deployment's env does not load: {e}"
            )
        })
    }

    /// The `--config` path of the container and the ConfigMap text mounted there.
    fn config_file(&self) -> (String, String) {
        let (f, c) = self.container();
        let args: Vec<String> = seq_of(&c["args"], "deploy/k8s container args")
            .iter()
            .filter_map(scalar)
            .collect();
        assert_eq!(
            args.first().map(String::as_str),
            Some("run"),
            "{f}: container args must start with `run`"
        );
        let path = flag(&args, "--config", f);
        let mounts = seq_of(&c["volumeMounts"], "deploy/k8s volumeMounts");
        let (_, pod) = self.one("Deployment");
        let volumes = seq_of(
            &pod["spec"]["template"]["spec"]["volumes"],
            "deploy/k8s volumes",
        );
        for m in mounts {
            let mount_path = str_of(&m["mountPath"], "mountPath");
            let (key, covers) = match m["subPath"].as_str() {
                Some(sub) => (sub.to_owned(), mount_path == path),
                None => (
                    Path::new(&path)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    Path::new(&path).parent() == Some(Path::new(mount_path)),
                ),
            };
            if !covers {
                continue;
            }
            let vol_name = str_of(&m["name"], "volumeMount name");
            let vol = volumes
                .iter()
                .find(|v| v["name"].as_str() == Some(vol_name))
                .unwrap_or_else(|| panic!("{f}: volumeMount {vol_name} has no volume"));
            let cm_name = str_of(
                &vol["configMap"]["name"],
                &format!("{f}: volume {vol_name} configMap name"),
            );
            let (cf, cm) = self
                .named("ConfigMap", cm_name)
                .unwrap_or_else(|| panic!("{f}: ConfigMap {cm_name} is not in deploy/k8s"));
            let text = scalar(&cm["data"][key.as_str()])
                .unwrap_or_else(|| panic!("{cf}: ConfigMap {cm_name} has no key {key}"));
            return (path, text);
        }
        panic!("{f}: nothing is mounted at --config {path}")
    }
}

#[test]
fn k8s_kustomization_lists_every_manifest() {
    let k = yaml_one("deploy/k8s/kustomization.yaml");
    let listed: BTreeSet<String> =
        seq_of(&k["resources"], "deploy/k8s/kustomization.yaml resources")
            .iter()
            .filter_map(scalar)
            .collect();
    let on_disk: BTreeSet<String> = fs::read_dir(root().join("deploy/k8s"))
        .expect("deploy/k8s")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, on_disk,
        "deploy/k8s/kustomization.yaml: resources must list exactly the manifests in deploy/k8s"
    );
}

#[test]
fn k8s_env_names_and_config_keys_exist() {
    let k = K8s::load();
    let keys = default_keys();
    let problems: Vec<String> = k
        .container_env()
        .keys()
        .filter_map(|n| env_name_problem(n, &keys))
        .collect();
    assert!(
        problems.is_empty(),
        "deploy/k8s/deployment.yaml: {problems:#?}"
    );
    let (path, toml) = k.config_file();
    let unknown: Vec<String> = toml_keys(&toml, "deploy/k8s/configmap.yaml worker.toml")
        .into_keys()
        .filter(|key| !keys.contains_key(key))
        .collect();
    assert!(
        unknown.is_empty(),
        "deploy/k8s/configmap.yaml: {path} sets keys that config/default.toml does not have (they would be ignored): {unknown:?}"
    );
    // Loads and validates with the Secret's placeholders in place.
    let s = k.settings();
    assert!(
        s.cxone.webhook_secret().is_some(),
        "deploy/k8s: CXONE_WEBHOOK_SECRET does not reach cxone.webhook_secret"
    );
}

#[test]
fn k8s_secrets_are_placeholders() {
    let k = K8s::load();
    let secrets = k.all("Secret");
    assert!(!secrets.is_empty(), "deploy/k8s: no Secret");
    for (f, s) in secrets {
        let name = s["metadata"]["name"].as_str().unwrap_or("?");
        assert!(
            s["data"].is_null(),
            "{f}: Secret {name}: use stringData with CHANGE-ME placeholders, not data"
        );
        for (key, value) in s["stringData"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{f}: Secret {name} has no stringData"))
        {
            let value = scalar(value).unwrap_or_default();
            assert!(
                value.contains("CHANGE-ME"),
                "{f}: Secret {name} key {key:?} must be a CHANGE-ME placeholder, got a real-looking value"
            );
        }
    }
    let (f, _) = k.container();
    let env = k.container_env();
    for var in ["AMQP_URL", "CXONE_CLIENT_SECRET", "CXONE_WEBHOOK_SECRET"] {
        assert!(
            env.get(var).is_some_and(|v| v.contains("CHANGE-ME")),
            "{f}: env {var} must come from the Secret"
        );
    }
}

#[test]
fn k8s_deployment_ports_probes_and_hardening() {
    let k = K8s::load();
    let s = k.settings();
    let port = listen_port(&s);
    assert_eq!(
        port,
        listen_port(&defaults()),
        "deploy/k8s/configmap.yaml: http.listen port differs from the default"
    );
    let (f, d) = k.one("Deployment");
    let pod = &d["spec"]["template"];
    let (_, c) = k.container();

    let ports = seq_of(&c["ports"], "container ports");
    let http = ports
        .iter()
        .find(|p| p["name"].as_str() == Some("http"))
        .unwrap_or_else(|| panic!("{f}: no container port named http"));
    assert_eq!(
        http["containerPort"].as_u64(),
        Some(u64::from(port)),
        "{f}: containerPort http must be the http.listen port {port}"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(
            get["path"].as_str(),
            Some(path),
            "{f}: {probe} must GET {path}"
        );
        let probe_port = scalar(&get["port"]).unwrap_or_default();
        assert!(
            probe_port == "http" || probe_port == port.to_string(),
            "{f}: {probe} port {probe_port:?} must be `http` or {port}"
        );
    }
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(
        ann["prometheus.io/scrape"].as_str(),
        Some("true"),
        "{f}: missing prometheus.io/scrape: \"true\""
    );
    assert_eq!(
        ann["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str()),
        "{f}: prometheus.io/port must be the http.listen port {port}"
    );
    assert_eq!(
        ann["prometheus.io/path"].as_str(),
        Some("/metrics"),
        "{f}: prometheus.io/path must be /metrics"
    );

    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    for (what, timeout) in [
        ("the default", defaults().shutdown.timeout.as_secs()),
        ("the ConfigMap's", s.shutdown.timeout.as_secs()),
    ] {
        assert!(
            grace > timeout,
            "{f}: terminationGracePeriodSeconds {grace} must exceed {what} shutdown.timeout_s {timeout}"
        );
    }

    let psc = &pod["spec"]["securityContext"];
    let csc = &c["securityContext"];
    assert!(
        psc["runAsNonRoot"].as_bool() == Some(true) || csc["runAsNonRoot"].as_bool() == Some(true),
        "{f}: runAsNonRoot must be true"
    );
    let uid = csc["runAsUser"]
        .as_u64()
        .or(psc["runAsUser"].as_u64())
        .unwrap_or(0);
    assert!(uid != 0, "{f}: runAsUser must be a non-root uid");
    assert_eq!(
        csc["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{f}: readOnlyRootFilesystem must be true"
    );
    assert_eq!(
        csc["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{f}: allowPrivilegeEscalation must be false"
    );
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                scalar(&c["resources"][kind][res]).is_some(),
                "{f}: resources.{kind}.{res} is missing"
            );
        }
    }

    // Selectors of the Service and the PDB pick the pods.
    let labels = pod["metadata"]["labels"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{f}: pod template has no labels"));
    let selects = |sel: &Yaml, what: &str| {
        let sel = sel
            .as_mapping()
            .unwrap_or_else(|| panic!("{what}: no selector"));
        assert!(!sel.is_empty(), "{what}: empty selector");
        for (k, v) in sel {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{what}: selector {k:?}={v:?} does not match the pod labels of {f}"
            );
        }
    };
    selects(
        &d["spec"]["selector"]["matchLabels"],
        "deploy/k8s/deployment.yaml",
    );
    let (sf, svc) = k.one("Service");
    selects(&svc["spec"]["selector"], sf);
    let svc_ports = seq_of(&svc["spec"]["ports"], "Service ports");
    assert!(
        svc_ports
            .iter()
            .any(|p| p["port"].as_u64() == Some(u64::from(port))
                && (p["targetPort"].as_str() == Some("http")
                    || p["targetPort"].as_u64() == Some(u64::from(port)))),
        "{sf}: Service must expose {port} with targetPort http"
    );
    assert_eq!(
        svc["spec"]["type"].as_str().unwrap_or("ClusterIP"),
        "ClusterIP",
        "{sf}: Service must be ClusterIP"
    );
    let (pf, pdb) = k.one("PodDisruptionBudget");
    selects(&pdb["spec"]["selector"]["matchLabels"], pf);
    assert!(
        !pdb["spec"]["maxUnavailable"].is_null() || !pdb["spec"]["minAvailable"].is_null(),
        "{pf}: needs maxUnavailable or minAvailable"
    );
}

/// `^<escaped inbound_queue>\.p[0-9]{3}$`: the KEDA regex for the partition queues.
fn partition_regex(inbound_queue: &str) -> String {
    let mut escaped = String::new();
    for ch in inbound_queue.chars() {
        if ".^$*+?()[]{}|\\-".contains(ch) {
            escaped.push('\\');
        }
        escaped.push(ch);
    }
    format!("^{escaped}\\.p[0-9]{{3}}$")
}

#[test]
fn k8s_keda_scales_on_the_worker_inbound_queues() {
    let k = K8s::load();
    let s = k.settings();
    let (f, so) = k.one("ScaledObject");
    let (_, dep) = k.one("Deployment");
    assert_eq!(
        so["spec"]["scaleTargetRef"]["name"], dep["metadata"]["name"],
        "{f}: scaleTargetRef must name the Deployment"
    );
    let min = so["spec"]["minReplicaCount"].as_u64().unwrap_or(0);
    let max = so["spec"]["maxReplicaCount"]
        .as_u64()
        .unwrap_or_else(|| panic!("{f}: maxReplicaCount missing"));
    assert!(
        min >= 1 && min <= max,
        "{f}: need 1 <= minReplicaCount ({min}) <= maxReplicaCount ({max})"
    );
    let partitions = u64::from(s.amqp.partitions);
    let replicas = dep["spec"]["replicas"].as_u64().unwrap_or(1);
    if replicas > 1 || max > 1 {
        assert!(
            partitions >= max && partitions >= replicas,
            "deploy/k8s: {replicas} replicas (KEDA max {max}) need amqp.partitions >= that (is {partitions}): \
             a replica beyond the partition count has no queue to own, and with partitions = 1 several replicas break per-calendar ordering"
        );
    }

    let triggers = seq_of(&so["spec"]["triggers"], "ScaledObject triggers");
    let t = triggers
        .iter()
        .find(|t| t["type"].as_str() == Some("rabbitmq"))
        .unwrap_or_else(|| panic!("{f}: no rabbitmq trigger"));
    let m = &t["metadata"];
    assert_eq!(
        m["mode"].as_str(),
        Some("QueueLength"),
        "{f}: mode must be QueueLength"
    );
    let value: f64 = m["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{f}: value must be a quoted number"));
    assert!(value > 0.0, "{f}: value must be positive");
    let queue = str_of(&m["queueName"], "trigger queueName");
    let inbound = &defaults().amqp.inbound_queue;
    assert_eq!(
        &s.amqp.inbound_queue, inbound,
        "deploy/k8s/configmap.yaml: overrides amqp.inbound_queue; keep the KEDA trigger in step"
    );
    if partitions <= 1 {
        assert_eq!(
            queue, inbound,
            "{f}: queueName must be amqp.inbound_queue {inbound:?}"
        );
    } else {
        assert_eq!(
            m["useRegex"].as_str(),
            Some("true"),
            "{f}: with amqp.partitions > 1 the trigger must sum the partition queues (useRegex)"
        );
        assert_eq!(
            m["operation"].as_str(),
            Some("sum"),
            "{f}: operation must be sum"
        );
        assert_eq!(
            m["protocol"].as_str(),
            Some("http"),
            "{f}: KEDA only applies useRegex over the management API (protocol http)"
        );
        assert_eq!(
            queue,
            partition_regex(inbound),
            "{f}: queueName must match exactly the partition queues of {inbound:?}"
        );
        // The regex's shape must match how the code names partition queues.
        for i in 0..s.amqp.partitions {
            let name = partition_queue_name(&s.amqp, i);
            let suffix = name
                .strip_prefix(inbound.as_str())
                .and_then(|r| r.strip_prefix(".p"))
                .unwrap_or_else(|| panic!("partition queue {name} is not {inbound}.pNNN"));
            assert!(
                suffix.len() == 3 && suffix.bytes().all(|b| b.is_ascii_digit()),
                "partition queue {name} does not match {f}'s {queue}"
            );
        }
    }

    // The trigger's credentials come from a TriggerAuthentication over a Secret.
    let auth_name = str_of(
        &t["authenticationRef"]["name"],
        &format!("{f}: authenticationRef"),
    );
    let (af, auth) = k
        .named("TriggerAuthentication", auth_name)
        .unwrap_or_else(|| panic!("{f}: TriggerAuthentication {auth_name} is not in deploy/k8s"));
    let refs = seq_of(&auth["spec"]["secretTargetRef"], "secretTargetRef");
    assert!(
        refs.iter().any(|r| r["parameter"].as_str() == Some("host")),
        "{af}: must provide the `host` parameter"
    );
    for r in refs {
        let secret = str_of(&r["name"], "secretTargetRef name");
        let key = str_of(&r["key"], "secretTargetRef key");
        let v = k.secret_value(secret, key).unwrap_or_else(|| {
            panic!("{af}: Secret {secret} key {key} is not defined in secret.yaml")
        });
        if r["parameter"].as_str() == Some("host") {
            let scheme = v.split("://").next().unwrap_or_default();
            let want: &[&str] = if m["protocol"].as_str() == Some("http") {
                &["http", "https"]
            } else {
                &["amqp", "amqps"]
            };
            assert!(
                want.contains(&scheme),
                "{af}: host from Secret {secret}/{key} must be a {want:?} URL for the trigger's protocol"
            );
        }
    }
}

// ---------------------------------------------------------------- metrics

/// Every `csw_…` identifier in a text.
fn csw_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("csw_") {
        let start = i + pos;
        let prev_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if prev_ok {
            names.insert(text[start..end].to_owned());
        }
        i = end.max(start + 4);
    }
    names
}

fn unknown_metrics(names: &BTreeSet<String>) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).filter(|b| HISTOGRAMS.contains(b)))
                .unwrap_or(n);
            !KNOWN_METRICS.contains(&base)
        })
        .cloned()
        .collect()
}

fn dashboard() -> Json {
    serde_json::from_str(&read("deploy/grafana/dashboard.json"))
        .unwrap_or_else(|e| panic!("deploy/grafana/dashboard.json: not JSON: {e}"))
}

fn dashboard_exprs(d: &Json) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<&Json> = d["panels"].as_array().into_iter().flatten().collect();
    while let Some(p) = stack.pop() {
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((title.clone(), e.to_owned()));
            }
        }
        stack.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

#[test]
fn dashboard_is_importable_and_queries_known_metrics() {
    let d = dashboard();
    let f = "deploy/grafana/dashboard.json";
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{f}: schemaVersion must be >= 36"
    );
    assert!(d["uid"].is_string(), "{f}: needs a stable uid");
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "{f}: needs a `datasource` template variable of type datasource, query prometheus"
    );
    let mut ids = BTreeSet::new();
    let mut stack: Vec<&Json> = d["panels"].as_array().into_iter().flatten().collect();
    assert!(!stack.is_empty(), "{f}: no panels");
    while let Some(p) = stack.pop() {
        let title = p["title"].as_str().unwrap_or("?");
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{f}: panel {title:?} has no id"));
        assert!(ids.insert(id), "{f}: panel id {id} used twice");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap_or(99), g["w"].as_u64().unwrap_or(99));
        assert!(x + w <= 24, "{f}: panel {title:?} is wider than the grid");
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{f}: panel {title:?} must use the ${{datasource}} variable"
            );
            for t in p["targets"].as_array().into_iter().flatten() {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{f}: a query of panel {title:?} must use the ${{datasource}} variable"
                );
            }
        }
        stack.extend(p["panels"].as_array().into_iter().flatten());
    }
    let exprs = dashboard_exprs(&d);
    let mut used = BTreeSet::new();
    for (title, e) in &exprs {
        let names = csw_names(e);
        let unknown = unknown_metrics(&names);
        assert!(
            unknown.is_empty(),
            "{f}: panel {title:?} queries unknown metrics {unknown:?}"
        );
        used.extend(names);
    }
    let used = used.iter().map(|n| base_metric(n)).collect::<BTreeSet<_>>();
    let missing: Vec<&&str> = KNOWN_METRICS
        .iter()
        .filter(|m| !used.contains(**m))
        .collect();
    assert!(
        missing.is_empty(),
        "{f}: no panel shows these metrics: {missing:?}"
    );
}

fn base_metric(n: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| n.strip_suffix(s).filter(|b| HISTOGRAMS.contains(b)))
        .unwrap_or(n)
}

#[test]
fn alerts_are_complete_and_query_known_metrics() {
    let f = "deploy/prometheus/alerts.yaml";
    let a = yaml_one(f);
    let d = defaults();
    let mut exprs = Vec::new();
    let mut names = BTreeSet::new();
    for g in seq_of(&a["groups"], "alerts groups") {
        for r in seq_of(&g["rules"], "alerts rules") {
            let name = str_of(&r["alert"], &format!("{f}: rule without `alert`")).to_owned();
            assert!(names.insert(name.clone()), "{f}: alert {name} twice");
            let expr = str_of(&r["expr"], &format!("{f}: {name} expr")).to_owned();
            let severity = r["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("critical" | "warning" | "info")),
                "{f}: {name}: labels.severity must be critical, warning or info"
            );
            for ann in ["summary", "description"] {
                assert!(
                    r["annotations"][ann]
                        .as_str()
                        .is_some_and(|s| s.trim().len() > 10),
                    "{f}: {name}: annotations.{ann} must say what happened and what to do"
                );
            }
            let unknown = unknown_metrics(&csw_names(&expr));
            assert!(
                unknown.is_empty(),
                "{f}: {name} queries unknown metrics {unknown:?}"
            );
            // Queue names in selectors must be the worker's.
            for q in expr.split("queue=\"").skip(1) {
                let q = q.split('"').next().unwrap_or_default();
                assert!(
                    [
                        &d.amqp.dead_letter_queue,
                        &d.amqp.inbound_queue,
                        &d.amqp.unrouted_events_queue
                    ]
                    .iter()
                    .any(|n| n.as_str() == q),
                    "{f}: {name} selects queue {q:?}, which is not a default queue name"
                );
            }
            exprs.push(expr);
        }
    }
    let all = exprs.join("\n");
    for needle in [
        "csw_dead_lettered_total",
        &format!(
            "rabbitmq_queue_messages_ready{{queue=\"{}\"}}",
            d.amqp.dead_letter_queue
        ),
        "csw_imports_total{outcome=\"failed\"}",
        "csw_cxone_rate_limited_total",
        "csw_broker_connected == 0",
        "up{",
        "csw_imports_in_flight",
    ] {
        assert!(all.contains(needle), "{f}: no alert uses {needle}");
    }
}

#[test]
fn code_metrics_are_known_and_documented() {
    // Every metric the code registers is in KNOWN_METRICS (so dashboards and
    // docs can be kept complete) and in the operations guide's table.
    let mut in_code = BTreeSet::new();
    let mut dirs = vec![root().join("src")];
    while let Some(dir) = dirs.pop() {
        for e in fs::read_dir(&dir).expect("src").filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = fs::read_to_string(&p).expect("read src");
                for macro_ in ["counter!(", "gauge!(", "histogram!("] {
                    for part in text.split(macro_).skip(1) {
                        let part = part.trim_start();
                        if let Some(name) = part.strip_prefix('"').and_then(|r| r.split('"').next())
                            && name.starts_with("csw_")
                        {
                            in_code.insert(name.to_owned());
                        }
                    }
                }
            }
        }
    }
    let unknown = unknown_metrics(&in_code);
    assert!(
        unknown.is_empty(),
        "tests/deploy.rs: the code exports metrics missing from KNOWN_METRICS (add them, the dashboard and docs/operations.md): {unknown:?}"
    );
    let docs = read("docs/operations.md");
    let missing: Vec<&&str> = KNOWN_METRICS
        .iter()
        .filter(|m| !docs.contains(&format!("`{m}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md: the metrics table lacks {missing:?}"
    );
}

// ---------------------------------------------------------------- image

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

// ---------------------------------------------------------------- samples

fn instant(v: &Json) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(v.as_str()?).ok()
}

/// CONTRACT section 3, enough of it to say whether a sample change is valid.
fn contract_errors(c: &Json) -> Vec<String> {
    let mut errs = Vec::new();
    if c.get("schemaVersion").is_some_and(|v| v != 1) {
        errs.push("UNSUPPORTED_SCHEMA_VERSION".to_owned());
    }
    match c["calendarId"].as_str() {
        None => errs.push("MISSING_FIELD calendarId".to_owned()),
        Some(id)
            if id.is_empty()
                || id.len() > 128
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)) =>
        {
            errs.push("INVALID_FIELD calendarId".to_owned())
        }
        _ => {}
    }
    if c.get("occurredAt").is_some() && instant(&c["occurredAt"]).is_none() {
        errs.push("INVALID_DATETIME occurredAt".to_owned());
    }
    let Some(entries) = c["entries"].as_array().filter(|e| !e.is_empty()) else {
        errs.push("MISSING_FIELD entries".to_owned());
        return errs;
    };
    let mut capacity = 0i64;
    let mut spans: Vec<(String, DateTime<FixedOffset>, DateTime<FixedOffset>)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let agent = e["agentId"].as_str().unwrap_or_default();
        if agent.is_empty() {
            errs.push(format!("MISSING_FIELD /entries/{i}/agentId"));
        }
        let (Some(start), Some(end)) = (instant(&e["startDateTime"]), instant(&e["endDateTime"]))
        else {
            errs.push(format!("INVALID_DATETIME /entries/{i}"));
            continue;
        };
        if end <= start {
            errs.push(format!("END_NOT_AFTER_START /entries/{i}"));
            continue;
        }
        let len = (end - start).num_minutes();
        if len > 1440 {
            errs.push(format!("SHIFT_TOO_LONG /entries/{i}"));
        }
        let mut breaks = Vec::new();
        for b in e["breaks"].as_array().into_iter().flatten() {
            let (Some(off), Some(dur)) = (
                b["startOffsetMinutes"].as_i64(),
                b["durationMinutes"].as_i64(),
            ) else {
                errs.push(format!("MISSING_FIELD /entries/{i}/breaks"));
                continue;
            };
            if dur < 1 {
                errs.push(format!("INVALID_FIELD /entries/{i}/breaks"));
            }
            if off < 0 || off + dur > len {
                errs.push(format!("BREAK_OUTSIDE_SHIFT /entries/{i}"));
            }
            breaks.push((off, off + dur));
        }
        breaks.sort();
        if breaks.windows(2).any(|w| w[1].0 < w[0].1) {
            errs.push(format!("OVERLAPPING_BREAKS /entries/{i}"));
        }
        let mut windows: Vec<(&str, i64, i64)> = Vec::new();
        for o in e["availabilityOverrides"].as_array().into_iter().flatten() {
            let kind = o["type"].as_str().unwrap_or_default();
            if !matches!(kind, "UNAVAILABLE" | "AVAILABLE" | "PARTIAL") {
                errs.push(format!("INVALID_OVERRIDE_TYPE /entries/{i}"));
                continue;
            }
            let (os, oe) = match (o.get("start"), o.get("end")) {
                (None, None) => (start, end),
                _ => match (instant(&o["start"]), instant(&o["end"])) {
                    (Some(s), Some(e)) => (s, e),
                    _ => {
                        errs.push(format!(
                            "INVALID_DATETIME /entries/{i}/availabilityOverrides"
                        ));
                        continue;
                    }
                },
            };
            if oe <= os {
                errs.push(format!(
                    "END_NOT_AFTER_START /entries/{i}/availabilityOverrides"
                ));
                continue;
            }
            if os < start || oe > end {
                errs.push(format!("OVERRIDE_OUTSIDE_SHIFT /entries/{i}"));
            }
            windows.push((kind, (os - start).num_minutes(), (oe - start).num_minutes()));
        }
        for (a, w) in windows.iter().enumerate() {
            for v in &windows[a + 1..] {
                if w.0 != v.0 && w.1 < v.2 && v.1 < w.2 {
                    errs.push(format!("CONFLICTING_OVERRIDES /entries/{i}"));
                }
            }
        }
        // Capacity: shift minus breaks minus UNAVAILABLE minutes outside breaks.
        let unavailable = (0..len)
            .filter(|m| {
                windows
                    .iter()
                    .any(|w| w.0 == "UNAVAILABLE" && w.1 <= *m && *m < w.2)
                    && !breaks.iter().any(|b| b.0 <= *m && *m < b.1)
            })
            .count() as i64;
        capacity += len - breaks.iter().map(|b| b.1 - b.0).sum::<i64>() - unavailable;
        if spans
            .iter()
            .any(|(a, s, e)| a == agent && *s < end && start < *e)
        {
            errs.push(format!("OVERLAPPING_SHIFTS /entries/{i}"));
        }
        spans.push((agent.to_owned(), start, end));
    }
    if let Some(min) = c["minimumCapacityMinutes"].as_i64()
        && capacity < min
    {
        errs.push(format!("INSUFFICIENT_CAPACITY {capacity} < {min}"));
    }
    errs
}

#[test]
fn sample_roster_is_a_week_of_valid_changes_plus_a_few_invalid_ones() {
    let f = "samples/roster.ndjson";
    let text = read(f);
    let settings = defaults();
    let mut ids = BTreeSet::new();
    let mut invalid = 0;
    let mut valid = 0;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() >= 200,
        "{f}: {} lines, expected at least 200",
        lines.len()
    );
    for (n, line) in lines.iter().enumerate() {
        let n = n + 1;
        let c: Json =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{f}: line {n}: not JSON: {e}"));
        assert!(c.is_object(), "{f}: line {n}: not a JSON object");
        let id = c["changeId"]
            .as_str()
            .unwrap_or_else(|| panic!("{f}: line {n}: no changeId"));
        assert!(
            ids.insert(id.to_owned()),
            "{f}: line {n}: changeId {id} repeated"
        );
        let errs = contract_errors(&c);
        if id.starts_with("demo-invalid-") {
            invalid += 1;
            assert!(
                !errs.is_empty(),
                "{f}: line {n}: {id} is meant to be rejected but breaks no rule of CONTRACT section 3"
            );
        } else {
            valid += 1;
            assert!(
                errs.is_empty(),
                "{f}: line {n}: {id} breaks CONTRACT section 3: {errs:?}"
            );
            let meta = MessageMeta {
                content_type: Some("application/json"),
                message_id: Some(id),
            };
            if let Err(r) = parse_change(
                line.as_bytes(),
                &meta,
                &settings.limits,
                settings.cxone.default_validation_mode,
            ) {
                panic!("{f}: line {n}: {id} is rejected by the worker: {r:?}");
            }
            assert_eq!(
                c["source"], "demo-rostering",
                "{f}: line {n}: source must be demo-rostering"
            );
        }
    }
    assert!(
        (5..=8).contains(&invalid),
        "{f}: {invalid} demo-invalid- changes, expected about 6"
    );
    assert!(valid >= 200, "{f}: only {valid} valid changes");
}
