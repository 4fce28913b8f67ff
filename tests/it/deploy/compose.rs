//! docker-compose.yml: every service's environment names real settings that load, and the services are wired to each other.

use super::*;

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
