//! Integration tests for `redis_sidecar::config`, through the public API only (and,
//! for the start database, end to end through the proxy and a real Redis).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use redis_sidecar::config::{Config, ConfigError, DatabaseConfig, Limits, ResilienceConfig};

/// An environment with no variables set.
fn no_env(_: &str) -> Option<String> {
    None
}

/// An environment holding exactly `vars`.
fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn shipped_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/redis-databases.yaml")
}

fn parse(yaml: &str) -> Config {
    match Config::from_yaml_str_with_env(yaml, Some(Path::new("test.yaml")), &no_env) {
        Ok(c) => c,
        Err(e) => panic!("config should load, got: {e}"),
    }
}

fn parse_env(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    Config::from_yaml_str_with_env(yaml, Some(Path::new("test.yaml")), env)
}

fn db<'a>(config: &'a Config, name: &str) -> &'a DatabaseConfig {
    config
        .databases
        .iter()
        .find(|d| d.names.iter().any(|n| n == name))
        .unwrap_or_else(|| panic!("no database named {name}"))
}

/// Writes `yaml` to a file, loads it, and returns the error, its message and the file.
fn load_err(yaml: &str) -> (ConfigError, String, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("redis-databases.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let err = match Config::load_with_env(&path, &no_env) {
        Ok(c) => panic!("config should be rejected, got {c:?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    (err, msg, path, dir)
}

/// Asserts the error for `yaml` names the file, `key` and `line`, and mentions `words`.
fn assert_error(yaml: &str, key: &str, line: usize, words: &str) {
    let (err, msg, path, _dir) = load_err(yaml);
    assert!(
        msg.contains(&path.display().to_string()),
        "message should name the file: {msg}"
    );
    assert!(msg.contains(key), "message should name `{key}`: {msg}");
    assert!(
        msg.contains(&format!("line {line}")),
        "message should give line {line}: {msg}"
    );
    assert!(
        msg.contains(words),
        "message should mention `{words}`: {msg}"
    );
    assert_eq!(err.key(), Some(key), "key of {msg}");
    assert_eq!(err.line(), Some(line), "line of {msg}");
}

const MINIMAL: &str = "redis_databases:\n  main: { db: 0 }\n";

const SEED: &str = r#"redis_databases:
  main:      { db: 0,  description: "Main application data" }
  knowledge: { db: 1,  description: "Knowledge base and documents" }
  # prompts 2, agents 3, metrics 4, cache 5, sessions 6, tasks 7, logs 8, temp 9, backup 10
host: localhost
port: 6379
password: null
timeout: 5            # seconds -> connect_timeout and command_timeout default
retry_attempts: 3
retry_delay: 1
max_connections: 20   # -> pool_size default
health_check_interval: 30
log_commands: false
log_level: INFO
"#;

// ---- the shipped file and the seed format ------------------------------------------

#[test]
fn shipped_file_has_the_eleven_autobot_databases() {
    let path = shipped_path();
    let config = Config::load_with_env(&path, &no_env).expect("shipped config loads");
    let expected = [
        "main",
        "knowledge",
        "prompts",
        "agents",
        "metrics",
        "cache",
        "sessions",
        "tasks",
        "logs",
        "temp",
        "backup",
    ];
    assert_eq!(config.databases.len(), 11);
    for (i, (d, name)) in config.databases.iter().zip(expected).enumerate() {
        assert_eq!(d.index, i as u32);
        assert_eq!(d.names, vec![name.to_string()]);
        assert_eq!(d.upstream.db, i as u32, "upstream db of {name}");
        assert!(!d.description.is_empty(), "{name} has a description");
    }
    assert_eq!(db(&config, "main").description, "Main application data");
    assert_eq!(
        db(&config, "knowledge").description,
        "Knowledge base and documents"
    );
    assert_eq!(config.source.as_deref(), Some(path.as_path()));
}

#[test]
fn shipped_file_defaults() {
    let config = Config::load_with_env(&shipped_path(), &no_env).expect("shipped config loads");
    assert_eq!(
        config.listen,
        "127.0.0.1:6380".parse::<SocketAddr>().unwrap()
    );
    assert!(config.client_password.is_none());
    assert_eq!(config.log_level, "info");
    assert_eq!(config.log_format, "text");
    assert!(!config.log_commands);
    assert_eq!(config.max_clients, 10_000);
    assert_eq!(config.shutdown_timeout, Duration::from_secs(10));
    let limits = Limits::default();
    assert_eq!(config.limits.max_bulk_len, limits.max_bulk_len);
    assert_eq!(config.limits.max_args, limits.max_args);
    assert_eq!(config.limits.max_inline_len, limits.max_inline_len);
    for d in &config.databases {
        let u = &d.upstream;
        assert_eq!(u.address(), "localhost:6379");
        assert!(u.username.is_none());
        assert!(u.password.is_none());
        assert_eq!(u.pool_size, 20);
        assert_eq!(u.mux_connections, 1);
        assert_eq!(u.connect_timeout, Duration::from_secs(5));
        assert_eq!(u.command_timeout, Duration::from_secs(5));
        let r = &u.resilience;
        assert_eq!(r.retry_attempts, 3);
        // The seed's `retry_delay: 1` sets the base delay.
        assert_eq!(r.retry_base_delay, Duration::from_secs(1));
        assert_eq!(r.retry_max_delay, Duration::from_secs(10));
        assert_eq!(r.failure_threshold, 5);
        assert_eq!(r.recovery_timeout, Duration::from_secs(60));
        assert_eq!(r.success_threshold, 2);
        assert_eq!(r.health_check_interval, Duration::from_secs(30));
    }
}

/// Uncommenting every documented extension in the shipped file (their defaults) must
/// give a valid config with the same result.
#[test]
fn shipped_file_documented_extensions_are_valid_defaults() {
    let text = std::fs::read_to_string(shipped_path()).expect("read shipped config");
    let marker = "# --- Sidecar extensions";
    let at = text
        .find(marker)
        .expect("shipped file has an extensions section");
    let (head, tail) = text.split_at(at);
    let mut uncommented = String::new();
    let mut count = 0;
    for line in tail.lines() {
        let rest = line.strip_prefix("# ").unwrap_or("");
        let key = rest.trim_start().split(':').next().unwrap_or("");
        let is_key = !key.is_empty()
            && rest.contains(':')
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        if is_key {
            uncommented.push_str(rest);
            count += 1;
        } else {
            uncommented.push_str(line);
        }
        uncommented.push('\n');
    }
    assert!(
        count >= 15,
        "expected the extensions to be documented, found {count}"
    );
    // `retry_base_delay` is a synonym of the seed's `retry_delay`; keep only one.
    let head: String = head
        .lines()
        .filter(|l| !l.starts_with("retry_delay:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let full = parse(&format!("{head}{uncommented}"));
    let defaults = Config::load_with_env(&shipped_path(), &no_env).expect("shipped loads");
    let mut expected = defaults.render_masked();
    expected = expected.replace("retry_base_delay: 1\n", "retry_base_delay: 0.5\n");
    let got = full.render_masked().replace("test.yaml", "");
    assert_eq!(
        got.lines().skip(1).collect::<Vec<_>>(),
        expected.lines().skip(1).collect::<Vec<_>>()
    );
}

#[test]
fn seed_file_is_accepted_as_is() {
    let config = parse(SEED);
    assert_eq!(config.databases.len(), 2);
    assert_eq!(config.databases[1].name(), "knowledge");
    assert_eq!(config.log_level, "info");
    let u = &config.databases[0].upstream;
    assert_eq!(u.pool_size, 20);
    assert_eq!(u.resilience.retry_base_delay, Duration::from_secs(1));
}

#[test]
fn minimal_file_gets_builtin_defaults() {
    let config = parse(MINIMAL);
    let u = &config.databases[0].upstream;
    assert_eq!(u.address(), "localhost:6379");
    assert_eq!(u.pool_size, 20);
    assert_eq!(u.connect_timeout, Duration::from_secs(5));
    assert_eq!(u.resilience, ResilienceConfig::default());
    assert_eq!(
        u.resilience.retry_base_delay,
        Duration::from_millis(500),
        "default base delay"
    );
    assert_eq!(
        config.listen,
        "127.0.0.1:6380".parse::<SocketAddr>().unwrap()
    );
}

// ---- extensions ----------------------------------------------------------------------

#[test]
fn top_level_extensions_are_applied() {
    let config = parse(
        r#"
redis_databases:
  main: { db: 0 }
listen: "0.0.0.0:7000"
client_password: letmein
username: sidecar
max_clients: 50
shutdown_timeout: 2.5
log_format: JSON
log_level: WARNING
log_commands: true
mux_connections: 4
pool_size: 8
limits: { max_bulk_len: 1024, max_args: 16, max_inline_len: 256 }
retry_attempts: 0
retry_base_delay: 0.1
retry_max_delay: 2
failure_threshold: 7
recovery_timeout: 15
success_threshold: 3
health_check_interval: 0.5
"#,
    );
    assert_eq!(config.listen, "0.0.0.0:7000".parse::<SocketAddr>().unwrap());
    assert_eq!(
        config.client_password.as_ref().map(|s| s.0.as_str()),
        Some("letmein")
    );
    assert_eq!(config.max_clients, 50);
    assert_eq!(config.shutdown_timeout, Duration::from_millis(2500));
    assert_eq!(config.log_format, "json");
    assert_eq!(config.log_level, "warn");
    assert!(config.log_commands);
    assert_eq!(config.limits.max_bulk_len, 1024);
    assert_eq!(config.limits.max_args, 16);
    assert_eq!(config.limits.max_inline_len, 256);
    let u = &config.databases[0].upstream;
    assert_eq!(u.username.as_deref(), Some("sidecar"));
    assert_eq!(u.mux_connections, 4);
    assert_eq!(u.pool_size, 8);
    assert_eq!(
        u.resilience,
        ResilienceConfig {
            retry_attempts: 0,
            retry_base_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(2),
            failure_threshold: 7,
            recovery_timeout: Duration::from_secs(15),
            success_threshold: 3,
            health_check_interval: Duration::from_millis(500),
        }
    );
}

#[test]
fn timeouts_follow_the_most_specific_setting() {
    let config = parse(
        r#"
redis_databases:
  main: { db: 0 }
  cache: { db: 5, timeout: 7 }
  logs: { db: 8, timeout: 7, command_timeout: 0.25 }
timeout: 2
connect_timeout: 1
"#,
    );
    let main = &db(&config, "main").upstream;
    assert_eq!(main.connect_timeout, Duration::from_secs(1));
    assert_eq!(main.command_timeout, Duration::from_secs(2));
    let cache = &db(&config, "cache").upstream;
    assert_eq!(cache.connect_timeout, Duration::from_secs(7));
    assert_eq!(cache.command_timeout, Duration::from_secs(7));
    let logs = &db(&config, "logs").upstream;
    assert_eq!(logs.connect_timeout, Duration::from_secs(7));
    assert_eq!(logs.command_timeout, Duration::from_millis(250));
}

#[test]
fn a_database_can_live_on_another_server() {
    let config = parse(
        r#"
redis_databases:
  main: { db: 0 }
  metrics:
    db: 4
    host: metrics-redis
    port: 6390
    username: metrics
    password: metrics-secret
    upstream_db: 0
    max_connections: 3
    mux_connections: 1
    connect_timeout: 0.5
    retry_attempts: 9
    failure_threshold: 2
host: main-redis
port: 6400
password: main-secret
"#,
    );
    let main = &db(&config, "main").upstream;
    assert_eq!(main.address(), "main-redis:6400");
    assert_eq!(
        main.password.as_ref().map(|s| s.0.as_str()),
        Some("main-secret")
    );
    assert_eq!(main.pool_size, 20);
    assert_eq!(main.resilience.retry_attempts, 3);

    let metrics = db(&config, "metrics");
    assert_eq!(metrics.index, 4);
    let m = &metrics.upstream;
    assert_eq!(m.address(), "metrics-redis:6390");
    assert_eq!(m.db, 0);
    assert_eq!(m.username.as_deref(), Some("metrics"));
    assert_eq!(
        m.password.as_ref().map(|s| s.0.as_str()),
        Some("metrics-secret")
    );
    assert_eq!(m.pool_size, 3);
    assert_eq!(m.mux_connections, 1);
    assert_eq!(m.connect_timeout, Duration::from_millis(500));
    assert_eq!(m.command_timeout, Duration::from_secs(5));
    assert_eq!(m.resilience.retry_attempts, 9);
    assert_eq!(m.resilience.failure_threshold, 2);
    assert_eq!(m.resilience.success_threshold, 2);
}

#[test]
fn explicit_null_password_drops_the_inherited_one() {
    let config = parse(
        r#"
redis_databases:
  main: { db: 0 }
  temp: { db: 9, host: scratch, password: null }
password: top-secret
"#,
    );
    assert!(db(&config, "main").upstream.password.is_some());
    assert!(db(&config, "temp").upstream.password.is_none());
}

#[test]
fn upstream_databases_raises_the_upstream_db_limit() {
    let yaml =
        "redis_databases:\n  big: { db: 20 }\nupstream_databases: 32\ndefault_database: big\n";
    let config = parse(yaml);
    assert_eq!(config.databases[0].upstream.db, 20);
    // Client indexes above 15 are fine when mapped to a small upstream db.
    let config =
        parse("redis_databases:\n  big: { db: 500, upstream_db: 3 }\ndefault_database: 500\n");
    assert_eq!(config.databases[0].index, 500);
    assert_eq!(config.databases[0].upstream.db, 3);
}

#[test]
fn aliases_become_one_database_with_several_names() {
    let config = parse(
        r#"
redis_databases:
  main: { db: 0 }
  cache: { db: 5, description: "General cache" }
  kv: { db: 5, host: cache-redis }
  memo: { db: 5 }
"#,
    );
    assert_eq!(config.databases.len(), 2);
    let cache = db(&config, "kv");
    assert_eq!(cache.names, vec!["cache", "kv", "memo"]);
    assert_eq!(cache.name(), "cache");
    assert_eq!(cache.description, "General cache");
    assert_eq!(cache.upstream.host, "cache-redis");
    assert_eq!(cache.upstream.db, 5);
}

#[test]
fn databases_are_sorted_by_index_and_names_keep_document_order() {
    let config = parse(
        r#"
redis_databases:
  zeta: { db: 3 }
  alpha: { db: 1 }
  beta: { db: 3 }
  omega: { db: 0 }
"#,
    );
    let indexes: Vec<u32> = config.databases.iter().map(|d| d.index).collect();
    assert_eq!(indexes, vec![0, 1, 3]);
    assert_eq!(config.databases[2].names, vec!["zeta", "beta"]);
}

// ---- environment overrides -----------------------------------------------------------

#[test]
fn env_overrides_host_port_and_password() {
    let yaml = r#"
redis_databases:
  main: { db: 0 }
  cache: { db: 5 }
  metrics: { db: 4, host: metrics-redis, port: 7000, password: own }
host: localhost
port: 6379
password: from-file
"#;
    let env = env_of(&[
        ("AUTOBOT_REDIS_HOST", "redis.internal"),
        ("AUTOBOT_REDIS_PORT", "6380"),
        ("AUTOBOT_REDIS_PASSWORD", "from-env"),
    ]);
    let config = parse_env(yaml, &env).expect("loads");
    for name in ["main", "cache"] {
        let u = &db(&config, name).upstream;
        assert_eq!(u.address(), "redis.internal:6380", "{name}");
        assert_eq!(u.password.as_ref().map(|s| s.0.as_str()), Some("from-env"));
    }
    let m = &db(&config, "metrics").upstream;
    assert_eq!(m.address(), "metrics-redis:7000");
    assert_eq!(m.password.as_ref().map(|s| s.0.as_str()), Some("own"));
}

#[test]
fn empty_env_password_means_no_password() {
    let yaml = "redis_databases:\n  main: { db: 0 }\npassword: from-file\n";
    let env = env_of(&[("AUTOBOT_REDIS_PASSWORD", "")]);
    let config = parse_env(yaml, &env).expect("loads");
    assert!(config.databases[0].upstream.password.is_none());
    // Without the variable the file's password stays.
    let config = parse_env(yaml, &no_env).expect("loads");
    assert!(config.databases[0].upstream.password.is_some());
}

#[test]
fn env_overrides_listen_and_client_password() {
    let yaml = "redis_databases:\n  main: { db: 0 }\nlisten: \"127.0.0.1:6380\"\nclient_password: file-pw\n";
    let env = env_of(&[
        ("REDIS_SIDECAR_LISTEN", "0.0.0.0:6390"),
        ("REDIS_SIDECAR_CLIENT_PASSWORD", "env-pw"),
    ]);
    let config = parse_env(yaml, &env).expect("loads");
    assert_eq!(config.listen, "0.0.0.0:6390".parse::<SocketAddr>().unwrap());
    assert_eq!(
        config.client_password.as_ref().map(|s| s.0.as_str()),
        Some("env-pw")
    );
    let env = env_of(&[("REDIS_SIDECAR_CLIENT_PASSWORD", "")]);
    let config = parse_env(yaml, &env).expect("loads");
    assert!(config.client_password.is_none());
}

#[test]
fn bad_env_values_are_errors_naming_the_variable() {
    for (var, value) in [
        ("AUTOBOT_REDIS_PORT", "sixty"),
        ("AUTOBOT_REDIS_PORT", "0"),
        ("AUTOBOT_REDIS_PORT", "70000"),
        ("AUTOBOT_REDIS_HOST", ""),
        ("REDIS_SIDECAR_LISTEN", "localhost"),
    ] {
        let env = env_of(&[(var, value)]);
        let err = parse_env(MINIMAL, &env).expect_err("bad env value is rejected");
        let msg = err.to_string();
        assert!(msg.contains(var), "{var}={value:?}: {msg}");
        assert!(matches!(err, ConfigError::Env { .. }), "{msg}");
        assert_eq!(err.key(), Some(var));
    }
}

// ---- errors ----------------------------------------------------------------------------

#[test]
fn unreadable_file_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing.yaml");
    let err = Config::load_with_env(&path, &no_env).expect_err("missing file");
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn bad_yaml_names_file_and_line() {
    let (err, msg, path, _dir) = load_err("redis_databases:\n  main: { db: 0\nport: [\n");
    assert!(matches!(err, ConfigError::Yaml { .. }), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(err.line().is_some(), "{msg}");
    assert!(msg.contains("line"), "{msg}");
}

#[test]
fn wrongly_typed_value_names_key_and_line() {
    assert_error(
        "redis_databases:\n  main: { db: 0 }\n  cache: { db: \"five\" }\n",
        "redis_databases.cache.db",
        3,
        "expected an integer",
    );
    // Block style: the line is that of the key itself.
    assert_error(
        "redis_databases:\n  main: { db: 0 }\n  cache:\n    description: x\n    db: five\n",
        "redis_databases.cache.db",
        5,
        "\"five\"",
    );
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nlog_commands: yes please\n",
        "log_commands",
        3,
        "true or false",
    );
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nport: \"6379\"\n",
        "port",
        3,
        "expected an integer",
    );
}

#[test]
fn unknown_keys_are_errors() {
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nhots: localhost\n",
        "hots",
        3,
        "did you mean `host`",
    );
    assert_error(
        "redis_databases:\n  main:\n    db: 0\n    descripton: typo\n",
        "redis_databases.main.descripton",
        4,
        "unknown key",
    );
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nlimits:\n  max_argz: 5\n",
        "limits.max_argz",
        4,
        "unknown key",
    );
    // Top-level-only keys are not accepted in a database entry.
    assert_error(
        "redis_databases:\n  main: { db: 0, listen: \"0.0.0.0:1\" }\n",
        "redis_databases.main.listen",
        2,
        "unknown key",
    );
}

#[test]
fn db_out_of_range_is_an_error() {
    assert_error(
        "redis_databases:\n  main: { db: 0 }\n  big: { db: 10000 }\n",
        "redis_databases.big.db",
        3,
        "9999",
    );
    assert_error(
        "redis_databases:\n  main: { db: -1 }\n",
        "redis_databases.main.db",
        2,
        "at least 0",
    );
    // The upstream db must exist on the server (16 databases by default).
    assert_error(
        "redis_databases:\n  main: { db: 0 }\n  big: { db: 16 }\n",
        "redis_databases.big.db",
        3,
        "upstream_databases (16)",
    );
    assert_error(
        "redis_databases:\n  main: { db: 0, upstream_db: 40 }\nupstream_databases: 32\n",
        "redis_databases.main.upstream_db",
        2,
        "upstream_databases (32)",
    );
}

#[test]
fn duplicate_names_and_keys_are_errors() {
    assert_error(
        "redis_databases:\n  main: { db: 0 }\n  cache: { db: 5 }\n  main: { db: 1 }\n",
        "redis_databases.main",
        4,
        "duplicate database name `main`",
    );
    assert_error(
        "host: a\nredis_databases:\n  main: { db: 0 }\nhost: b\n",
        "host",
        4,
        "duplicate key",
    );
    assert_error(
        "redis_databases:\n  main: { db: 0, db: 1 }\n",
        "redis_databases.main.db",
        2,
        "duplicate key",
    );
}

#[test]
fn missing_or_empty_database_list_is_an_error() {
    assert_error(
        "redis_databases: {}\nhost: localhost\n",
        "redis_databases",
        1,
        "no databases",
    );
    assert_error(
        "host: localhost\nredis_databases:\n",
        "redis_databases",
        2,
        "at least one database",
    );
    let (err, msg, path, _dir) = load_err("host: localhost\n");
    assert!(msg.contains("redis_databases"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(err.key(), Some("redis_databases"));
    let (_, msg, _, _dir) = load_err("");
    assert!(msg.contains("empty"), "{msg}");
}

#[test]
fn missing_db_is_an_error() {
    assert_error(
        "redis_databases:\n  main: { db: 0 }\n  cache: { description: x }\n",
        "redis_databases.cache.db",
        3,
        "missing required key `db`",
    );
}

#[test]
fn bad_listen_address_is_an_error() {
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nlisten: \"localhost\"\n",
        "listen",
        3,
        "invalid listen address",
    );
}

#[test]
fn zero_pool_size_and_mux_connections_are_errors() {
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nmax_connections: 0\n",
        "max_connections",
        3,
        "at least 1",
    );
    assert_error(
        "redis_databases:\n  main: { db: 0, pool_size: 0 }\n",
        "redis_databases.main.pool_size",
        2,
        "at least 1",
    );
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nmux_connections: 0\n",
        "mux_connections",
        3,
        "at least 1",
    );
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nmax_clients: 0\n",
        "max_clients",
        3,
        "at least 1",
    );
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nfailure_threshold: 0\n",
        "failure_threshold",
        3,
        "at least 1",
    );
}

#[test]
fn zero_or_negative_timeouts_are_errors() {
    for key in [
        "timeout",
        "connect_timeout",
        "command_timeout",
        "shutdown_timeout",
        "recovery_timeout",
        "health_check_interval",
    ] {
        for value in ["0", "-1", "-0.5"] {
            assert_error(
                &format!("redis_databases:\n  main: {{ db: 0 }}\n{key}: {value}\n"),
                key,
                3,
                "more than zero",
            );
        }
    }
    assert_error(
        "redis_databases:\n  main: { db: 0 }\n  cache:\n    db: 5\n    command_timeout: 0\n",
        "redis_databases.cache.command_timeout",
        5,
        "more than zero",
    );
    assert_error(
        "redis_databases:\n  main: { db: 0 }\ntimeout: soon\n",
        "timeout",
        3,
        "seconds",
    );
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nretry_base_delay: -1\n",
        "retry_base_delay",
        3,
        "zero or more",
    );
}

#[test]
fn retry_max_delay_below_base_delay_is_an_error() {
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nretry_base_delay: 2\nretry_max_delay: 1\n",
        "retry_max_delay",
        4,
        "must not be less than retry_base_delay",
    );
    // Against the default base delay (0.5 s).
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nretry_max_delay: 0.1\n",
        "retry_max_delay",
        3,
        "must not be less than retry_base_delay",
    );
    // A database raising its base delay above the top-level max is blamed.
    assert_error(
        "retry_max_delay: 1\nredis_databases:\n  main: { db: 0 }\n  slow: { db: 1, retry_delay: 5 }\n",
        "redis_databases.slow.retry_delay",
        4,
        "must not be less than retry_base_delay",
    );
}

#[test]
fn synonyms_at_the_same_level_are_an_error() {
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nretry_delay: 1\nretry_base_delay: 1\n",
        "retry_delay",
        3,
        "give only one",
    );
    assert_error(
        "redis_databases:\n  main: { db: 0, max_connections: 5, pool_size: 5 }\n",
        "redis_databases.main.pool_size",
        2,
        "give only one",
    );
}

#[test]
fn conflicting_alias_overrides_are_an_error() {
    assert_error(
        "redis_databases:\n  cache: { db: 5, host: a }\n  kv: { db: 5, host: b }\n",
        "redis_databases.kv.host",
        3,
        "redis_databases.cache.host",
    );
    assert_error(
        "redis_databases:\n  cache: { db: 5, upstream_db: 1 }\n  kv: { db: 5, upstream_db: 2 }\n",
        "redis_databases.kv.upstream_db",
        3,
        "aliases",
    );
}

#[test]
fn bad_log_settings_are_errors() {
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nlog_level: LOUD\n",
        "log_level",
        3,
        "unknown log level",
    );
    assert_error(
        "redis_databases:\n  main: { db: 0 }\nlog_format: xml\n",
        "log_format",
        3,
        "text or json",
    );
}

#[test]
fn errors_without_a_file_still_name_key_and_line() {
    let err =
        Config::from_yaml_str_with_env("redis_databases:\n  main: { db: x }\n", None, &no_env)
            .expect_err("rejected");
    let msg = err.to_string();
    assert!(msg.contains("redis_databases.main.db"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
}

// ---- secrets -----------------------------------------------------------------------------

#[test]
fn render_masked_never_shows_passwords() {
    let yaml = r#"
redis_databases:
  main: { db: 0 }
  metrics: { db: 4, host: other, password: per-db-s3cret }
password: top-s3cret
client_password: client-s3cret
"#;
    let env = env_of(&[("AUTOBOT_REDIS_PASSWORD", "env-s3cret")]);
    let config = parse_env(yaml, &env).expect("loads");
    let text = config.render_masked();
    let debug = format!("{config:?}");
    for secret in ["per-db-s3cret", "top-s3cret", "client-s3cret", "env-s3cret"] {
        assert!(
            !text.contains(secret),
            "render_masked leaks {secret}:\n{text}"
        );
        assert!(!debug.contains(secret), "Debug leaks {secret}:\n{debug}");
    }
    // Passwords are present but masked; the rest of the config is shown.
    assert_eq!(text.matches("password: \"***\"").count(), 3, "{text}");
    assert!(text.contains("host: other"), "{text}");
    assert!(text.contains("names: [metrics]"), "{text}");
    assert!(text.contains("listen: 127.0.0.1:6380"), "{text}");
}

#[test]
fn errors_never_show_passwords() {
    // A wrongly typed password is reported without its content.
    let yaml = "redis_databases:\n  main: { db: 0 }\npassword: { nested: hunter2-secret }\n";
    let err = parse_env(yaml, &no_env).expect_err("rejected");
    assert!(err.to_string().contains("password"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    // Conflicting alias passwords name the keys, not the values.
    let yaml =
        "redis_databases:\n  a: { db: 1, password: pw-one }\n  b: { db: 1, password: pw-two }\n";
    let err = parse_env(yaml, &no_env).expect_err("rejected");
    let msg = format!("{err} {err:?}");
    assert!(msg.contains("redis_databases.b.password"), "{msg}");
    assert!(!msg.contains("pw-one") && !msg.contains("pw-two"), "{msg}");
}

#[test]
fn for_upstream_still_builds_the_autobot_layout() {
    let config = Config::for_upstream("redis.test", 7001);
    assert_eq!(config.databases.len(), 11);
    assert_eq!(config.databases[10].name(), "backup");
    assert_eq!(config.databases[3].upstream.address(), "redis.test:7001");
    assert_eq!(config.log_format, "text");
    assert_eq!(
        config.databases[0].upstream.resilience,
        ResilienceConfig::default()
    );
}

#[test]
fn auth_passthrough_is_off_by_default_and_excludes_a_client_password() {
    assert!(!parse("redis_databases: { main: { db: 0 } }\n").auth_passthrough);
    let on = parse("auth_passthrough: true\nredis_databases: { main: { db: 0 } }\n");
    assert!(on.auth_passthrough);
    assert!(on.render_masked().contains("auth_passthrough: true"));
    assert_error(
        "client_password: pw\nauth_passthrough: true\nredis_databases: { main: { db: 0 } }\n",
        "auth_passthrough",
        2,
        "client_password",
    );
}

// ---- the start database (`default_database`) ------------------------------------------

/// Databases 1, 3 and 5; no db 0.
const NO_DB_0: &str =
    "redis_databases:\n  knowledge: { db: 1 }\n  agents: { db: 3 }\n  cache: { db: 5 }\n";

#[test]
fn default_database_naming_no_configured_database_is_an_error() {
    let configured = "knowledge (db 1), agents (db 3), cache (db 5)";
    for (value, words) in [
        ("7", "db 7 is not a configured database"),
        ("0", "db 0 is not a configured database"),
        ("-1", "db -1 is not a configured database"),
        (
            "cahce",
            "no configured database is named \"cahce\" (did you mean `cache`?)",
        ),
        ("\"12\"", "no configured database is named \"12\""),
    ] {
        let yaml = format!("{NO_DB_0}default_database: {value}\n");
        assert_error(&yaml, "default_database", 5, words);
        assert_error(&yaml, "default_database", 5, configured);
    }
    assert_error(
        &format!("{NO_DB_0}default_database: [3]\n"),
        "default_database",
        5,
        "expected a database index or name, found a list",
    );
    assert_error(
        &format!("{NO_DB_0}default_database: true\n"),
        "default_database",
        5,
        "expected a database index or name",
    );
    // Before the databases, too: the line is that of the key.
    assert_error(
        &format!("default_database: 9\n{NO_DB_0}"),
        "default_database",
        1,
        "db 9 is not a configured database",
    );
}

#[test]
fn no_db_0_without_default_database_is_an_error() {
    for yaml in [
        NO_DB_0.to_string(),
        format!("{NO_DB_0}default_database: null\n"),
        format!("# the layout\n\n{NO_DB_0}"),
    ] {
        let line = yaml
            .lines()
            .position(|l| l.starts_with("redis_databases"))
            .unwrap()
            + 1;
        assert_error(&yaml, "default_database", line, "no database has db 0");
        assert_error(
            &yaml,
            "default_database",
            line,
            "set `default_database` to the index or name of the database they should start on",
        );
        assert_error(
            &yaml,
            "default_database",
            line,
            "knowledge (db 1), agents (db 3), cache (db 5)",
        );
    }
}

#[test]
fn default_database_is_db_0_unless_set_by_index_or_name() {
    assert_eq!(parse(SEED).default_database, 0);
    assert_eq!(parse(MINIMAL).default_database, 0);
    assert_eq!(Config::for_upstream("localhost", 6379).default_database, 0);
    let shipped = Config::load_with_env(&shipped_path(), &no_env).expect("shipped loads");
    assert_eq!(shipped.default_database, 0);
    for value in ["3", "agents", "\"3\""] {
        let config = parse(&format!("{NO_DB_0}default_database: {value}\n"));
        assert_eq!(config.default_database, 3, "default_database: {value}");
        assert!(
            config.render_masked().contains("\ndefault_database: 3\n"),
            "{}",
            config.render_masked()
        );
    }
    // With db 0 present, another start database may still be chosen; an alias
    // names its database.
    let config = parse(
        "redis_databases:\n  main: { db: 0 }\n  cache: { db: 5 }\n  kv: { db: 5 }\ndefault_database: kv\n",
    );
    assert_eq!(config.default_database, 5);
    let config = parse("redis_databases:\n  main: { db: 0 }\ndefault_database: 0\n");
    assert_eq!(config.default_database, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_new_client_starts_on_the_default_database() {
    use support::{start_proxy, AsyncRawClient, RedisServer};
    let redis = RedisServer::start();
    let yaml = format!(
        "{NO_DB_0}default_database: 3\nhost: 127.0.0.1\nport: {}\nlisten: \"127.0.0.1:0\"\nmetrics_listen: null\n",
        redis.port()
    );
    let proxy = start_proxy(parse(&yaml)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"SET", b"start-db:k", b"v"]).await, b"+OK\r\n");

    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    for (db, want) in [
        (&b"3"[..], &b"$1\r\nv\r\n"[..]),
        (b"1", b"$-1\r\n"),
        (b"0", b"$-1\r\n"),
    ] {
        assert_eq!(direct.cmd(&[b"SELECT", db]).await, b"+OK\r\n");
        assert_eq!(
            support::printable(&direct.cmd(&[b"GET", b"start-db:k"]).await),
            support::printable(want),
            "upstream db {}",
            String::from_utf8_lossy(db)
        );
    }
    // db 0 is not configured: SELECT 0 is refused and the client stays on db 3.
    let r = c.cmd(&[b"SELECT", b"0"]).await;
    assert!(r.starts_with(b"-ERR"), "{}", support::printable(&r));
    assert_eq!(c.cmd(&[b"GET", b"start-db:k"]).await, b"$1\r\nv\r\n");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn reset_returns_a_client_to_the_default_database() {
    use support::{start_proxy, AsyncRawClient, RedisServer};
    let redis = RedisServer::start();
    let yaml = format!(
        "{NO_DB_0}default_database: agents\nhost: 127.0.0.1\nport: {}\nlisten: \"127.0.0.1:0\"\nmetrics_listen: null\n",
        redis.port()
    );
    let proxy = start_proxy(parse(&yaml)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"RESET"]).await, b"+RESET\r\n");
    assert_eq!(c.cmd(&[b"SET", b"reset-db:k", b"v"]).await, b"+OK\r\n");
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&[b"SELECT", b"3"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"reset-db:k"]).await, b"$1\r\nv\r\n");
    proxy.shutdown().await;
}

// ---- `cluster` (Redis Cluster upstream) ---------------------------------------------

/// The eleven AutoBot databases, each with `key_prefix: "<name>:"` when `prefixed`.
fn autobot_databases(prefixed: bool) -> String {
    let mut yaml = "redis_databases:\n".to_string();
    for (i, name) in redis_sidecar::config::AUTOBOT_DATABASES.iter().enumerate() {
        let prefix = if prefixed {
            format!(", key_prefix: \"{name}:\"")
        } else {
            String::new()
        };
        yaml.push_str(&format!("  {name}: {{ db: {i}{prefix} }}\n"));
    }
    yaml
}

#[test]
fn cluster_at_the_top_level_is_every_databases_upstream() {
    use redis_sidecar::config::ReadFrom;
    let config = parse(&format!(
        "{}cluster:\n  nodes: [\"127.0.0.1:7000\", \"[::1]:7001\"]\n",
        autobot_databases(true)
    ));
    assert_eq!(config.databases.len(), 11);
    for d in &config.databases {
        let c = d.upstream.cluster.as_ref().expect("on the cluster");
        assert_eq!(
            c.nodes,
            vec![("127.0.0.1".to_string(), 7000), ("::1".to_string(), 7001)]
        );
        assert_eq!(c.read_from, ReadFrom::Primary, "the default");
        // A cluster has only db 0: the index is not the upstream db.
        assert_eq!(d.upstream.db, 0, "{}", d.name());
        assert!(d.upstream.sentinel.is_none());
    }
    assert_eq!(
        db(&config, "backup").upstream.address(),
        "cluster 127.0.0.1:7000,::1:7001"
    );
    let report = config.render_masked();
    assert!(
        report.contains(
            "  - index: 10\n    names: [backup]\n    description: \"\"\n    cluster:\n      \
             nodes: [127.0.0.1:7000, ::1:7001]\n      read_from: primary\n    upstream_db: 0\n"
        ),
        "{report}"
    );
    assert!(!report.contains("    host:"), "{report}");

    // The more specific level wins as a whole: a database with its own host, its
    // own sentinel, or `cluster: null` and a host leaves the top-level cluster.
    let config = parse(
        "redis_databases:\n  main: { db: 0, key_prefix: \"m:\" }\n  cache:\n    db: 1\n    host: h\n    port: 7100\n  \
         temp:\n    db: 2\n    sentinel: { nodes: [\"s:26379\"], master: m }\n  \
         logs:\n    db: 3\n    cluster: null\n    host: l\n\
         cluster: { nodes: [\"c:7000\"] }\n",
    );
    assert!(db(&config, "main").upstream.cluster.is_some());
    let cache = &db(&config, "cache").upstream;
    assert!(cache.cluster.is_none());
    assert_eq!((cache.address().as_str(), cache.db), ("h:7100", 1));
    let temp = &db(&config, "temp").upstream;
    assert!(temp.cluster.is_none());
    assert_eq!(temp.sentinel.as_ref().map(|s| s.master.as_str()), Some("m"));
    let logs = &db(&config, "logs").upstream;
    assert!(logs.cluster.is_none());
    assert_eq!((logs.address().as_str(), logs.db), ("l:6379", 3));
}

#[test]
fn cluster_per_database_with_read_from_replica() {
    use redis_sidecar::config::ReadFrom;
    // A database's own cluster wins over a top-level host and a top-level sentinel.
    for top in [
        "host: h\nport: 7100\n",
        "sentinel: { nodes: [\"s:1\"], master: m }\n",
    ] {
        let config = parse(&format!(
            "redis_databases:\n  main: {{ db: 0 }}\n  cache:\n    db: 5\n    cluster:\n      \
             nodes: [\"10.0.0.1:7000\"]\n      read_from: replica\n{top}"
        ));
        let cache = &db(&config, "cache").upstream;
        let c = cache.cluster.as_ref().expect("cache is on the cluster");
        assert_eq!(c.nodes, vec![("10.0.0.1".to_string(), 7000)]);
        assert_eq!(c.read_from, ReadFrom::Replica);
        assert_eq!(cache.db, 0);
        assert!(cache.sentinel.is_none(), "{top}");
        let main = &db(&config, "main").upstream;
        assert!(main.cluster.is_none(), "{top}");
        assert!(
            config
                .render_masked()
                .contains("    cluster:\n      nodes: [10.0.0.1:7000]\n      read_from: replica\n"),
            "{}",
            config.render_masked()
        );
    }
    // `read_from: primary` spelled out; an explicit `upstream_db: 0` under a
    // top-level cluster is accepted.
    let config = parse(
        "redis_databases:\n  main: { db: 0, upstream_db: 0 }\ncluster: { nodes: [\"c:7000\"], read_from: primary }\n",
    );
    let c = db(&config, "main")
        .upstream
        .cluster
        .clone()
        .expect("cluster");
    assert_eq!(c.read_from, ReadFrom::Primary);
}

#[test]
fn bad_cluster_config_is_refused_with_file_key_and_line() {
    let cases: &[(&str, &str, usize, &str)] = &[
        (
            "redis_databases:\n  main:\n    db: 0\n    host: x\n    cluster: { nodes: [\"a:1\"] }\n",
            "redis_databases.main.host",
            4,
            "`host` cannot be set together with `cluster` (redis_databases.main.cluster): a \
             cluster's nodes are learnt from its seed `nodes`, not given by host/port; remove one",
        ),
        (
            "redis_databases:\n  main: { db: 0 }\nport: 7000\ncluster: { nodes: [\"a:1\"] }\n",
            "port",
            3,
            "`port` cannot be set together with `cluster` (cluster)",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    cluster: { nodes: [\"a:1\"] }\n    sentinel: { nodes: [\"s:1\"], master: m }\n",
            "redis_databases.main.sentinel",
            5,
            "`sentinel` cannot be set together with `cluster` (redis_databases.main.cluster): \
             the upstream is either a cluster or found through sentinels; remove one",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    upstream_db: 0\n    cluster: { nodes: [\"a:1\"] }\n",
            "redis_databases.main.upstream_db",
            4,
            "`upstream_db` cannot be set together with `cluster` (redis_databases.main.cluster): \
             a cluster has only db 0; use key_prefix to keep databases apart",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    upstream_db: 3\ncluster: { nodes: [\"a:1\"] }\n",
            "redis_databases.main.upstream_db",
            4,
            "upstream db 3 under the top-level `cluster` (cluster): a cluster has only db 0; \
             use key_prefix to keep databases apart",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    port: 7000\ncluster: { nodes: [\"a:1\"] }\n",
            "redis_databases.main.port",
            4,
            "this database sets `port` but not `host`, under the top-level `cluster` (cluster): \
             a database leaving the cluster must give its own host",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    cluster: null\ncluster: { nodes: [\"a:1\"] }\n",
            "redis_databases.main.cluster",
            4,
            "this database sets `cluster: null` but not `host`, under the top-level `cluster` \
             (cluster): a database leaving the cluster must give its own host",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    cluster: { read_from: replica }\n",
            "redis_databases.main.cluster",
            4,
            "missing `nodes`: list the cluster's seed nodes as host:port, e.g. nodes: \
             [\"10.0.0.1:7000\"]",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    cluster:\n      nodes: []\n",
            "redis_databases.main.cluster.nodes",
            5,
            "must list at least one cluster node (host:port)",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    cluster:\n      nodes: \"a:1\"\n",
            "redis_databases.main.cluster.nodes",
            5,
            "expected a list of host:port, found",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    cluster:\n      nodes: [localhost]\n",
            "redis_databases.main.cluster.nodes",
            5,
            "\"localhost\" is not a cluster node address: no port (expected host:port, e.g. \
             \"10.0.0.1:7000\")",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    cluster:\n      nodes: [\"[]:7000\"]\n",
            "redis_databases.main.cluster.nodes",
            5,
            "\"[]:7000\" is not a cluster node address: no host",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    cluster:\n      nodes: [\"a:1\", \"b:70000\"]\n",
            "redis_databases.main.cluster.nodes",
            5,
            "\"b:70000\" is not a cluster node address: the port must be 1-65535",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    cluster:\n      nodes: [\"a:1\"]\n      read_form: replica\n",
            "redis_databases.main.cluster.read_form",
            6,
            "unknown key `read_form` (did you mean `read_from`?)",
        ),
        (
            "redis_databases:\n  main:\n    db: 0\n    cluster:\n      nodes: [\"a:1\"]\n      read_from: nearest\n",
            "redis_databases.main.cluster.read_from",
            6,
            "unknown read_from \"nearest\": expected primary or replica",
        ),
        (
            "redis_databases:\n  main: { db: 0 }\ncluster: \"a:1\"\n",
            "cluster",
            3,
            "expected a mapping like { nodes: [\"10.0.0.1:7000\"], read_from: primary }, found",
        ),
        (
            "redis_databases:\n  main: { db: 0 }\nclustr: { nodes: [\"a:1\"] }\n",
            "clustr",
            3,
            "unknown key `clustr` (did you mean `cluster`?)",
        ),
    ];
    for (yaml, key, line, words) in cases {
        assert_error(yaml, key, *line, words);
    }
}

#[test]
fn env_host_or_port_with_a_top_level_cluster_is_refused() {
    let yaml = "redis_databases:\n  main: { db: 0 }\ncluster: { nodes: [\"a:1\"] }\n";
    for (var, value) in [
        ("AUTOBOT_REDIS_HOST", "10.0.0.9"),
        ("AUTOBOT_REDIS_PORT", "7000"),
    ] {
        let err = parse_env(yaml, &env_of(&[(var, value)])).expect_err(var);
        let key = if var.ends_with("HOST") {
            "host"
        } else {
            "port"
        };
        assert_eq!(
            err.to_string(),
            format!(
                "environment variable {var}: `{key}` cannot be set together with `cluster` \
                 (cluster): a cluster's nodes are learnt from its seed `nodes`, not given by \
                 host/port; remove one"
            )
        );
        assert_eq!(err.key(), Some(var));
    }
    // The password is the cluster nodes' AUTH, as for any upstream.
    let config = parse_env(yaml, &env_of(&[("AUTOBOT_REDIS_PASSWORD", "pw")])).expect("loads");
    assert!(config.databases[0].upstream.password.is_some());
}

#[test]
fn databases_on_one_cluster_need_distinct_key_prefixes() {
    let cluster = "cluster: { nodes: [\"127.0.0.1:7000\", \"127.0.0.1:7001\"] }\n";
    // Eleven databases on one cluster's only db, unprefixed: refused (on a
    // standalone server they would be on dbs 0..10).
    assert_error(
        &format!("{}{cluster}", autobot_databases(false)),
        "redis_databases.knowledge.db",
        3,
        "`main` (no key_prefix) and `knowledge` (no key_prefix) share cluster \
         127.0.0.1:7000,127.0.0.1:7001 (a cluster has only db 0) and their keys would mix: \
         give each a key_prefix, none the start of another",
    );
    assert_eq!(
        parse(&autobot_databases(false)).databases[10].upstream.db,
        10,
        "standalone: one upstream db each"
    );
    // One unprefixed next to prefixed ones, or one prefix starting another: refused.
    assert_error(
        &format!(
            "{}  extra: {{ db: 11 }}\n{cluster}",
            autobot_databases(true)
        ),
        "redis_databases.extra.db",
        13,
        "`main` (key_prefix \"main:\") and `extra` (no key_prefix) share cluster",
    );
    assert_error(
        &format!(
            "{}  extra:\n    db: 11\n    key_prefix: \"main:x:\"\n{cluster}",
            autobot_databases(true)
        ),
        "redis_databases.extra.key_prefix",
        15,
        "`main` (key_prefix \"main:\") and `extra` (key_prefix \"main:x:\") share cluster",
    );
    // A database on the cluster by its own key meets the top-level one when a seed
    // node is in common.
    assert_error(
        &format!(
            "redis_databases:\n  main: {{ db: 0 }}\n  cache:\n    db: 1\n    cluster: {{ nodes: [\"127.0.0.1:7001\"], read_from: replica }}\n{cluster}"
        ),
        "redis_databases.cache.db",
        4,
        "`main` (no key_prefix) and `cache` (no key_prefix) share cluster 127.0.0.1:7001 \
         (a cluster has only db 0)",
    );
    // Eleven distinct prefixes; one unprefixed database alone on a cluster; two
    // clusters with no seed in common; a standalone database next to a cluster one.
    let config = parse(&format!("{}{cluster}", autobot_databases(true)));
    assert!(config
        .databases
        .iter()
        .all(|d| d.upstream.cluster.is_some()));
    parse(&format!("redis_databases:\n  main: {{ db: 0 }}\n{cluster}"));
    parse(&format!(
        "redis_databases:\n  main: {{ db: 0 }}\n  cache:\n    db: 1\n    cluster: {{ nodes: [\"127.0.0.1:7100\"] }}\n{cluster}"
    ));
    parse(&format!(
        "redis_databases:\n  main: {{ db: 0 }}\n  cache:\n    db: 1\n    host: 127.0.0.1\n    port: 7000\n    upstream_db: 0\n{cluster}"
    ));
}

// ---- the Unix socket listener ---------------------------------------------------------

#[test]
fn unixsocket_and_its_permissions_are_read_as_redis_writes_them() {
    let c = parse(&format!(
        "{MINIMAL}unixsocket: /run/sidecar/redis.sock\nunixsocketperm: 770\n"
    ));
    assert_eq!(
        c.unixsocket.as_deref(),
        Some(Path::new("/run/sidecar/redis.sock"))
    );
    assert_eq!(c.unixsocketperm, Some(0o770));
    let c = parse(&format!(
        "{MINIMAL}unixsocket: s.sock\nunixsocketperm: \"0700\"\n"
    ));
    assert_eq!(c.unixsocketperm, Some(0o700));
    // Off by default; with it, the TCP listener may be off.
    let c = parse(MINIMAL);
    assert_eq!((c.unixsocket, c.unixsocketperm), (None, None));
    let c = parse(&format!("{MINIMAL}listen: null\nunixsocket: s.sock\n"));
    assert!(!c.plain_listener);
}

#[test]
fn bad_unixsocket_settings_are_refused_with_key_and_line() {
    assert_error(
        &format!("{MINIMAL}unixsocket: /tmp/s.sock\nunixsocketperm: 800\n"),
        "unixsocketperm",
        4,
        "octal digits up to 777",
    );
    assert_error(
        &format!("{MINIMAL}unixsocketperm: 1777\n"),
        "unixsocketperm",
        3,
        "octal digits up to 777",
    );
    assert_error(
        &format!("{MINIMAL}unixsocket: \"\"\n"),
        "unixsocket",
        3,
        "must not be empty",
    );
    let long = format!("/tmp/{}.sock", "x".repeat(110));
    assert_error(
        &format!("{MINIMAL}unixsocket: {long}\n"),
        "unixsocket",
        3,
        "at most 107 bytes",
    );
    assert_error(
        &format!("{MINIMAL}listen: null\n"),
        "listen",
        3,
        "neither client_tls nor unixsocket",
    );
}
