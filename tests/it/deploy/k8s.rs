//! deploy/k8s: the kustomization, environment names, secrets, the Deployment's ports, probes and hardening, and the KEDA scaler.

use super::*;

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
    for var in [
        "AMQP_URL",
        "CXONE_CLIENT_SECRET",
        "CXONE_WEBHOOK_SECRET",
        "CSW_FLEET_SECRET",
    ] {
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
