//! The deployment files under `deploy/` (issue 11, part 4), checked against the real
//! proxy: every metric the Grafana dashboard queries exists in a live `/metrics`
//! exposition, the Prometheus config scrapes port 9180, every YAML file parses with
//! the expected kinds, the Kubernetes readiness probe's `check` passes against a real
//! Redis with the ConfigMap's config, the compose app shares the proxy's network
//! namespace, and the systemd unit has the documented settings.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;
use support::{free_port, proxy_config, start_proxy, AsyncRawClient, BinaryProxy, RedisServer};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Every YAML document of a file.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}")))
        .collect()
}

/// `v[k1][k2]…` for mapping keys (strings) and sequence indexes (numbers as strings).
fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| match v {
        Value::Mapping(m) => m.get(*k),
        Value::Sequence(s) => k.parse::<usize>().ok().and_then(|i| s.get(i)),
        _ => None,
    })
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn seq_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

// ---------------------------------------------------------------------------------------
// Grafana dashboard vs. the live exposition
// ---------------------------------------------------------------------------------------

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    while let Some(p) = stack.pop() {
        if let Some(nested) = p["panels"].as_array() {
            stack.extend(nested);
        }
        out.push(p);
    }
    out
}

/// The identifiers starting with `redis_sidecar_` in a PromQL expression (names are
/// `[A-Za-z0-9_:]`; the prefix must start an identifier, not end one).
fn metric_names(expr: &str) -> BTreeSet<String> {
    const PREFIX: &str = "redis_sidecar_";
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find(PREFIX) {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let len = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        if !before.is_some_and(is_ident) {
            names.insert(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    names
}

/// Sample names in an OpenMetrics / Prometheus text exposition (not `# TYPE` names,
/// which lack the counters' `_total`).
fn exposed_names(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The queried names missing from the exposition.
fn missing(queried: &BTreeSet<String>, exposed: &BTreeSet<String>) -> Vec<String> {
    queried.difference(exposed).cloned().collect()
}

/// `GET /metrics` over plain HTTP/1.1; the body. Bounded by 5 s.
async fn get_metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read response");
        String::from_utf8_lossy(&raw).into_owned()
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("GET /metrics within 5 s");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of the sample line `series` (exact name and labels as exposed).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_only_metrics_the_proxy_exports() {
    let json = read("deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&json).expect("dashboard is JSON");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"),
        "DS_PROMETHEUS input"
    );

    let panels = all_panels(&dashboard);
    let mut ids = BTreeSet::new();
    let mut queried = BTreeSet::new();
    let mut graphs = 0;
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        if p["type"] == "row" {
            continue;
        }
        graphs += 1;
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "{title}: no redis_sidecar_ metric in {expr:?}"
            );
            queried.extend(names);
        }
    }
    assert!(graphs >= 10, "only {graphs} panels");
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        queried.extend(metric_names(v["definition"].as_str().unwrap_or_default()));
    }
    // What the dashboard is for (README, Prometheus metrics).
    for want in [
        "redis_sidecar_circuit_state",
        "redis_sidecar_commands_total",
        "redis_sidecar_command_latency_seconds",
        "redis_sidecar_clients_connected",
        "redis_sidecar_upstream_connections",
        "redis_sidecar_command_retries_total",
        "redis_sidecar_command_timeouts_total",
        "redis_sidecar_circuit_trips_total",
        "redis_sidecar_health_probe_latency_seconds",
    ] {
        assert!(queried.contains(want), "the dashboard does not show {want}");
    }

    // A live proxy: `main` on a real Redis, `temp` on a port where nothing listens
    // (so it fails, with a retry).
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let dead = free_port();
    for db in &mut config.databases {
        let is_temp = db.name() == "temp";
        let u = &mut db.upstream;
        u.connect_timeout = Duration::from_millis(300);
        u.command_timeout = Duration::from_millis(300);
        u.resilience.retry_attempts = 1;
        u.resilience.retry_base_delay = Duration::from_millis(10);
        u.resilience.retry_max_delay = Duration::from_millis(20);
        if is_temp {
            u.port = dead;
        }
    }
    let proxy = start_proxy(config).await;
    let metrics = proxy.metrics_addr().expect("metrics_listen is set");
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, b"$1\r\nv\r\n");
    let wrongtype = c.cmd(&[b"LPUSH", b"k", b"x"]).await;
    assert!(wrongtype.starts_with(b"-WRONGTYPE"), "{wrongtype:?}");
    assert_eq!(c.cmd(&[b"SELECT", b"9"]).await, b"+OK\r\n");
    let failed = c.cmd(&[b"GET", b"k"]).await;
    assert!(failed.starts_with(b"-UPSTREAM"), "{failed:?}");

    let body = get_metrics(metrics).await;
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    let exposed = exposed_names(&body);
    let not_there = missing(&queried, &exposed);
    assert!(
        not_there.is_empty(),
        "the dashboard queries metrics /metrics does not have: {not_there:?}\nexposed: {exposed:?}"
    );
    // The traffic shows where the dashboard looks.
    let ok = value(
        &body,
        r#"redis_sidecar_commands_total{db="main",command="all",outcome="succeeded"}"#,
    );
    assert_eq!(
        ok,
        Some(3.0),
        "SET, GET, LPUSH (WRONGTYPE is Redis's answer)"
    );
    let failed = value(
        &body,
        r#"redis_sidecar_commands_total{db="temp",command="all",outcome="failed"}"#,
    );
    assert_eq!(failed, Some(1.0));
    let retries = value(
        &body,
        r#"redis_sidecar_command_retries_total{db="temp",command="all"}"#,
    );
    assert_eq!(retries, Some(1.0), "retry_attempts: 1");
    // And the check itself catches a metric that does not exist.
    let bogus: BTreeSet<String> = metric_names("rate(redis_sidecar_bogus_total[5m])");
    assert_eq!(missing(&bogus, &exposed), ["redis_sidecar_bogus_total"]);
    proxy.shutdown().await;
}

#[test]
fn metric_names_are_whole_identifiers() {
    let names = metric_names(
        r#"sum by (db) (rate(redis_sidecar_commands_total{outcome=~"failed"}[$__rate_interval])) / x_redis_sidecar_no + redis_sidecar_circuit_state"#,
    );
    let want: BTreeSet<String> = [
        "redis_sidecar_commands_total",
        "redis_sidecar_circuit_state",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, want);
}

// ---------------------------------------------------------------------------------------
// YAML files
// ---------------------------------------------------------------------------------------

#[test]
fn prometheus_config_scrapes_the_metrics_port() {
    let docs = yaml_docs("deploy/prometheus.yml");
    assert_eq!(docs.len(), 1);
    let jobs = seq_at(&docs[0], &["scrape_configs"]);
    let job = jobs
        .iter()
        .find(|j| {
            seq_at(j, &["static_configs"]).iter().any(|s| {
                seq_at(s, &["targets"])
                    .iter()
                    .any(|t| t.as_str().is_some_and(|t| t.ends_with(":9180")))
            })
        })
        .expect("a scrape_configs entry targeting port 9180");
    assert!(str_at(job, &["job_name"]).is_some_and(|n| !n.is_empty()));
    assert_eq!(
        str_at(job, &["metrics_path"]).unwrap_or("/metrics"),
        "/metrics"
    );
}

/// Every `.yaml`/`.yml` below `dir`.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read deploy/").flatten() {
        let path = entry.path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// The kinds (`kind:`) of a Kubernetes manifest, in order.
fn kinds(docs: &[Value]) -> Vec<&str> {
    docs.iter().filter_map(|d| str_at(d, &["kind"])).collect()
}

#[test]
fn every_deploy_yaml_parses_with_the_expected_kinds() {
    let root = repo_file("deploy");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    let mut seen = BTreeMap::new();
    for f in &files {
        let rel = f
            .strip_prefix(repo_file(""))
            .expect("under the repo")
            .to_string_lossy()
            .into_owned();
        let docs = yaml_docs(&rel);
        assert!(!docs.is_empty(), "{rel}: empty");
        if rel.contains("kubernetes") {
            for d in &docs {
                assert!(str_at(d, &["apiVersion"]).is_some(), "{rel}: apiVersion");
                assert!(str_at(d, &["metadata", "name"]).is_some(), "{rel}: name");
            }
        }
        seen.insert(rel, docs);
    }
    let expect: [(&str, &[&str]); 2] = [
        ("deploy/kubernetes/pod.yaml", &["ConfigMap", "Pod"]),
        ("deploy/kubernetes/pod-native-sidecar.yaml", &["Pod"]),
    ];
    for (rel, want) in expect {
        let docs = seen.get(rel).unwrap_or_else(|| panic!("{rel} missing"));
        assert_eq!(kinds(docs), want, "{rel}");
    }
    assert!(seen.contains_key("deploy/prometheus.yml"));
}

/// The container named `name` among `spec.containers` and `spec.initContainers`.
fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    seq_at(pod, &["spec", "containers"])
        .iter()
        .chain(seq_at(pod, &["spec", "initContainers"]))
        .find(|c| str_at(c, &["name"]) == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn strings(v: &[Value]) -> Vec<&str> {
    v.iter().filter_map(Value::as_str).collect()
}

/// The sidecar container of a pod: image, config, probes, security.
fn check_sidecar(pod: &Value, configmap: &str) {
    let c = container(pod, "redis-sidecar");
    assert_eq!(str_at(c, &["image"]), Some("redis-sidecar:latest"));
    let env = seq_at(c, &["env"]);
    assert!(
        env.iter()
            .any(|e| str_at(e, &["name"]) == Some("AUTOBOT_REDIS_HOST")
                && str_at(e, &["value"]).is_some_and(|v| !v.is_empty())),
        "AUTOBOT_REDIS_HOST"
    );
    let ready = strings(seq_at(c, &["readinessProbe", "exec", "command"]));
    assert_eq!(
        ready,
        [
            "redis-sidecar",
            "check",
            "--config",
            "/etc/redis-sidecar/redis-databases.yaml",
            "--read-only"
        ]
    );
    let live = strings(seq_at(c, &["livenessProbe", "exec", "command"])).join(" ");
    assert!(
        live.contains("redis-cli") && live.contains("6380"),
        "{live}"
    );
    assert_eq!(
        at(c, &["securityContext", "runAsNonRoot"]).and_then(Value::as_bool),
        Some(true)
    );
    assert_eq!(
        at(c, &["securityContext", "readOnlyRootFilesystem"]).and_then(Value::as_bool),
        Some(true)
    );
    assert!(at(c, &["resources", "limits", "memory"]).is_some());
    let mount = seq_at(c, &["volumeMounts"])
        .iter()
        .find(|m| str_at(m, &["mountPath"]) == Some("/etc/redis-sidecar"))
        .expect("config mounted at /etc/redis-sidecar");
    let volume = str_at(mount, &["name"]).expect("mount name");
    let from = seq_at(pod, &["spec", "volumes"])
        .iter()
        .find(|v| str_at(v, &["name"]) == Some(volume))
        .and_then(|v| str_at(v, &["configMap", "name"]));
    assert_eq!(from, Some(configmap));
}

#[test]
fn kubernetes_pods_run_the_proxy_as_a_sidecar_with_probes() {
    let docs = yaml_docs("deploy/kubernetes/pod.yaml");
    let configmap = str_at(&docs[0], &["metadata", "name"]).expect("ConfigMap name");
    let pod = &docs[1];
    check_sidecar(pod, configmap);
    assert!(str_at(container(pod, "app"), &["image"]).is_some());
    let native = &yaml_docs("deploy/kubernetes/pod-native-sidecar.yaml")[0];
    check_sidecar(native, configmap);
    let init = seq_at(native, &["spec", "initContainers"]);
    assert!(
        init.iter()
            .any(|c| str_at(c, &["name"]) == Some("redis-sidecar")
                && str_at(c, &["restartPolicy"]) == Some("Always")),
        "native sidecar: an init container with restartPolicy: Always"
    );
}

/// The ConfigMap's config is valid, exposes /metrics beyond loopback, and the pod's
/// readiness probe (`check --read-only`) passes with it against a real Redis (the
/// environment override as the pod sets it) and fails without one.
#[test]
fn configmap_config_loads_and_the_readiness_check_passes() {
    let docs = yaml_docs("deploy/kubernetes/pod.yaml");
    let yaml = str_at(&docs[0], &["data", "redis-databases.yaml"]).expect("config in ConfigMap");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("redis-databases.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let config = redis_sidecar::config::Config::load_with_env(&path, &|_| None)
        .unwrap_or_else(|e| panic!("the ConfigMap's config: {e}"));
    assert_eq!(
        config.metrics_listen,
        Some(SocketAddr::from(([0, 0, 0, 0], 9180)))
    );
    assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 6380)));
    assert_eq!(config.databases.len(), 11);

    let probe = |port: u16| {
        Command::new(BinaryProxy::bin_path())
            .args(["check", "--config"])
            .arg(&path)
            .arg("--read-only")
            .env("AUTOBOT_REDIS_HOST", "127.0.0.1")
            .env("AUTOBOT_REDIS_PORT", port.to_string())
            .env_remove("AUTOBOT_REDIS_PASSWORD")
            .output()
            .expect("run redis-sidecar check")
    };
    let redis = RedisServer::start();
    let out = probe(redis.port());
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = probe(free_port());
    assert_eq!(out.status.code(), Some(1), "no Redis: not ready");
}

#[test]
fn compose_runs_the_example_app_in_the_proxy_network_namespace() {
    let docs = yaml_docs("docker-compose.yml");
    let compose = &docs[0];
    let services = at(compose, &["services"])
        .and_then(Value::as_mapping)
        .expect("services");
    for name in ["redis", "redis-sidecar", "app"] {
        assert!(services.contains_key(name), "service {name}");
    }
    let app = &services["app"];
    assert_eq!(
        str_at(app, &["network_mode"]),
        Some("service:redis-sidecar")
    );
    assert!(str_at(app, &["image"]).is_some_and(|i| i.starts_with("python:3")));
    let mounts = strings(seq_at(app, &["volumes"]));
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./deploy/example-app:")),
        "{mounts:?}"
    );
    let script = read("deploy/example-app/app.py");
    assert!(
        script.contains(r#"redis.Redis(host="127.0.0.1", port=6380, db=5)"#),
        "plain redis-py on the proxy's port"
    );
    // The commit reaches the image as a build argument.
    assert!(at(&services["redis-sidecar"], &["build", "args", "GIT_COMMIT"]).is_some());
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("ARG GIT_COMMIT"));
    assert!(dockerfile.contains("ENV REDIS_SIDECAR_GIT_COMMIT=${GIT_COMMIT}"));
}

#[test]
fn systemd_unit_has_the_documented_settings() {
    let unit = read("deploy/redis-sidecar.service");
    let settings: BTreeSet<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for want in [
        "Type=simple",
        "ExecStart=/usr/local/bin/redis-sidecar --config /etc/redis-sidecar/redis-databases.yaml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "LimitNOFILE=65536",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(settings.contains(want), "{want} missing");
    }
}
