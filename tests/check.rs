//! `redis-sidecar check` (issue 11): migration readiness of every configured
//! database, run as the binary against real Redis servers — ready ones, and each
//! kind of problem an operator meets, each reported with what to fix.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{databases_yaml, free_port, BinaryProxy, RedisServer};

/// Runs `redis-sidecar check` with `yaml` and extra args; (exit code, stdout, stderr).
fn check(yaml: &str, extra: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("redis-databases.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let out = Command::new(BinaryProxy::bin_path())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .args(extra)
        .env_remove("AUTOBOT_REDIS_HOST")
        .env_remove("AUTOBOT_REDIS_PORT")
        .env_remove("AUTOBOT_REDIS_PASSWORD")
        .output()
        .expect("run redis-sidecar check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The table row of database `name`.
fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{table}"))
}

#[test]
fn every_database_of_a_healthy_server_is_ready() {
    let redis = RedisServer::start();
    let yaml = databases_yaml("127.0.0.1", redis.port());
    let (code, out, err) = check(&yaml, &[]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for name in support::DATABASE_NAMES {
        let r = row(&out, name);
        assert!(r.contains(" ready "), "{r}");
        assert!(r.contains("7."), "version missing: {r}");
        assert!(r.contains("master"), "role missing: {r}");
        assert!(r.trim_end().ends_with("yes"), "write test: {r}");
    }
    assert!(out.contains("migration_ready: yes (11 databases)"), "{out}");
    // The write test left nothing behind.
    let (keys, _) = redis.cli(&["-n", "5", "--scan", "--pattern", "redis-sidecar:check:*"]);
    assert_eq!(keys.trim(), "", "test keys left behind");

    // JSON: the same verdict, with a measured latency per database.
    let (code, json, _) = check(&yaml, &["--json"]);
    assert_eq!(code, 0);
    assert!(
        json.starts_with("{\"migration_ready\":true,\"read_only\":false,\"databases\":["),
        "{json}"
    );
    assert_eq!(json.matches("\"ready\":true").count(), 11, "{json}");
    assert_eq!(json.matches("\"writable\":true").count(), 11, "{json}");
    let pings: Vec<f64> = json
        .split("\"ping_ms\":")
        .skip(1)
        .map(|s| {
            s.split(',')
                .next()
                .unwrap_or("")
                .parse()
                .expect("ping_ms number")
        })
        .collect();
    assert_eq!(pings.len(), 11);
    assert!(pings.iter().all(|&p| p > 0.0 && p < 1000.0), "{pings:?}");
}

#[test]
fn each_problem_is_named_with_what_to_fix() {
    let plain = RedisServer::start();
    let locked = RedisServer::start_with_args(&["--requirepass", "right"]);
    let renamed = RedisServer::start_with_args(&["--rename-command", "SCRIPT", ""]);
    let replica =
        RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &plain.port().to_string()]);
    let closed = free_port();
    let mut yaml = String::from("redis_databases:\n");
    yaml.push_str("  main: { db: 0 }\n");
    yaml.push_str("  knowledge: { db: 1, upstream_db: 20 }\n");
    yaml.push_str(&format!(
        "  prompts: {{ db: 2, port: {} }}\n",
        locked.port()
    ));
    yaml.push_str(&format!(
        "  agents: {{ db: 3, port: {}, password: wrong }}\n",
        locked.port()
    ));
    yaml.push_str(&format!("  cache: {{ db: 5, port: {closed} }}\n"));
    yaml.push_str(&format!("  tasks: {{ db: 7, port: {} }}\n", renamed.port()));
    yaml.push_str(&format!(
        "  backup: {{ db: 10, port: {} }}\n",
        replica.port()
    ));
    yaml.push_str(&format!(
        "host: 127.0.0.1\nport: {}\nconnect_timeout: 2\nupstream_databases: 32\n",
        plain.port()
    ));
    let started = std::time::Instant::now();
    let (code, out, err) = check(&yaml, &[]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the check must be bounded"
    );
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(row(&out, "main").contains(" ready "), "{out}");
    for failed in ["knowledge", "prompts", "agents", "cache", "tasks", "backup"] {
        assert!(row(&out, failed).contains(" FAIL "), "{failed}:\n{out}");
    }
    let problem = |db: &str, needle: &str| {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(db) && l.contains(needle)),
            "no problem line for {db} containing {needle:?}:\n{out}"
        );
    };
    problem("knowledge (db 1)", "upstream_db");
    problem("prompts (db 2)", "NOAUTH");
    problem("prompts (db 2)", "set password");
    problem("agents (db 3)", "WRONGPASS");
    problem("agents (db 3)", "fix password");
    problem("cache (db 5)", "check host/port");
    problem("tasks (db 7)", "SCRIPT");
    problem("tasks (db 7)", "rename");
    problem("backup (db 10)", "replica");
    assert!(out.contains("migration_ready: no, "), "{out}");

    // A replica passes with --read-only (nothing is written); the others still fail.
    let (code, out, _) = check(&yaml, &["--read-only"]);
    assert_eq!(code, 1);
    let backup = row(&out, "backup");
    assert!(
        backup.contains(" ready ") && backup.contains("slave") && backup.contains("skipped"),
        "{backup}"
    );
}

/// `PROXY CHECK`: the same report, live, in its place among the client's replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_check_reports_live_in_order() {
    let redis = RedisServer::start();
    let proxy = support::start_proxy(support::proxy_config(&redis)).await;
    let mut c = support::AsyncRawClient::connect(proxy.local_addr()).await;
    let mut pipeline = support::resp_cmd(&[b"PING"]);
    pipeline.extend(support::resp_cmd(&[b"PROXY", b"CHECK"]));
    pipeline.extend(support::resp_cmd(&[b"ECHO", b"after"]));
    c.send(&pipeline).await;
    let replies = c.read_replies(3).await;
    assert_eq!(replies[0], b"+PONG\r\n");
    let report = String::from_utf8_lossy(&support::bulk_payload(&replies[1])).into_owned();
    assert!(
        report.contains("migration_ready: yes (11 databases)"),
        "{report}"
    );
    assert!(row(&report, "main").contains(" ready "), "{report}");
    assert_eq!(replies[2], b"$5\r\nafter\r\n");

    let json = c.cmd(&[b"PROXY", b"CHECK", b"JSON", b"READONLY"]).await;
    let json = String::from_utf8_lossy(&support::bulk_payload(&json)).into_owned();
    assert!(
        json.starts_with("{\"migration_ready\":true,\"read_only\":true,"),
        "{json}"
    );
    assert_eq!(json.matches("\"writable\":null").count(), 11, "{json}");

    // A database that cannot be reached makes it say so.
    drop(redis);
    let report = c.cmd(&[b"PROXY", b"CHECK"]).await;
    let report = String::from_utf8_lossy(&support::bulk_payload(&report)).into_owned();
    assert!(report.contains("migration_ready: no, "), "{report}");
    assert!(report.contains("check host/port"), "{report}");
}
