//! deny_commands: per-database refusal with -NOPERM, the default list, and config.

mod support;

use redis_sidecar::config::{Config, DEFAULT_DENY_COMMANDS};
use support::{proxy_config, start_proxy, AsyncRawClient, RedisServer};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_commands_get_noperm_and_never_reach_redis() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    // cache (db 5) also refuses FLUSHALL and CONFIG SET; main keeps the defaults.
    config.databases[5].upstream.deny_commands =
        vec!["flushall".into(), "config|set".into(), "shutdown".into()];
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;

    // Default list on db 0: SHUTDOWN would stop the shared server.
    let r = text(&c.cmd(&[b"SHUTDOWN", b"NOSAVE"]).await);
    assert!(r.starts_with("-NOPERM 'shutdown' is denied"), "{r}");
    assert!(r.contains("database 'main' (db 0)"), "{r}");
    // Redis is still up and db 0 still allows FLUSHALL's neighbour FLUSHDB and CONFIG SET.
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(
        c.cmd(&[b"CONFIG", b"SET", b"maxmemory-samples", b"5"])
            .await,
        b"+OK\r\n"
    );

    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    let r = text(&c.cmd(&[b"flushall"]).await);
    assert!(r.starts_with("-NOPERM 'flushall' is denied"), "{r}");
    assert!(r.contains("'cache' (db 5)"), "{r}");
    let r = text(
        &c.cmd(&[b"config", b"set", b"maxmemory-samples", b"5"])
            .await,
    );
    assert!(r.starts_with("-NOPERM 'config set' is denied"), "{r}");
    // Other CONFIG subcommands are not affected.
    assert!(c
        .cmd(&[b"CONFIG", b"GET", b"maxmemory-samples"])
        .await
        .starts_with(b"*2"));
    // Inline commands are checked too, and a pipeline keeps its order.
    c.send(b"FLUSHALL\r\nPING\r\n").await;
    assert!(text(&c.read_reply().await).starts_with("-NOPERM"));
    assert_eq!(c.read_reply().await, b"+PONG\r\n");

    // FLUSHALL never ran: the key in db 0 is still there.
    assert_eq!(c.cmd(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, b"$1\r\nv\r\n");
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    let stats = text(&direct.cmd(&[b"INFO", b"commandstats"]).await);
    assert!(!stats.contains("cmdstat_flushall:"), "{stats}");
    assert!(!stats.contains("cmdstat_shutdown:"), "{stats}");
    proxy.shutdown().await;
}

#[test]
fn deny_commands_in_yaml_top_level_and_per_database() {
    let yaml = r#"
redis_databases:
  main: { db: 0 }
  cache: { db: 5, deny_commands: [FLUSHALL, "CONFIG|SET"] }
  temp: { db: 9, deny_commands: [] }
deny_commands: [shutdown, debug]
"#;
    let c = Config::from_yaml_str(yaml, None).expect("valid");
    let d = |i: usize| c.databases[i].upstream.deny_commands.clone();
    assert_eq!(d(0), vec!["shutdown", "debug"]);
    assert_eq!(d(1), vec!["flushall", "config|set"]);
    assert!(d(2).is_empty());
    let plain = Config::from_yaml_str("redis_databases: { main: { db: 0 } }", None).expect("valid");
    assert_eq!(
        plain.databases[0].upstream.deny_commands,
        DEFAULT_DENY_COMMANDS
    );
    let bad = Config::from_yaml_str(
        "redis_databases: { main: { db: 0, deny_commands: [\"flush all\"] } }",
        None,
    )
    .expect_err("a name with a space is not a command");
    assert!(bad.to_string().contains("deny_commands"), "{bad}");
    let bad = Config::from_yaml_str(
        "redis_databases: { main: { db: 0, deny_commands: FLUSHALL } }",
        None,
    )
    .expect_err("must be a list");
    assert!(bad.to_string().contains("list"), "{bad}");
}

/// A denied command inside MULTI aborts the transaction at EXEC, as Redis does for
/// a command refused while queueing (an ACL `-NOPERM`): nothing of it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_command_in_multi_aborts_the_transaction() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.databases[0].upstream.deny_commands = vec!["flushall".into()];
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let pipeline: Vec<u8> = [
        &[&b"MULTI"[..]][..],
        &[b"SET", b"a", b"1"],
        &[b"FLUSHALL"],
        &[b"EXEC"],
        &[b"GET", b"a"],
    ]
    .iter()
    .flat_map(|args| support::resp_cmd(args))
    .collect();
    c.send(&pipeline).await;
    let replies: Vec<String> = c.read_replies(5).await.iter().map(|r| text(r)).collect();
    assert_eq!(replies[0], "+OK\r\n");
    assert_eq!(replies[1], "+QUEUED\r\n");
    assert!(
        replies[2].starts_with("-NOPERM 'flushall' is denied"),
        "{replies:?}"
    );
    // Redis's own text for a transaction with a refused command.
    assert_eq!(
        replies[3],
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(replies[4], "$-1\r\n");
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&[b"EXISTS", b"a"]).await, b":0\r\n");
    // The next transaction runs normally (and DISCARD after a refusal just discards).
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"FLUSHALL"]).await.get(..7), Some(&b"-NOPERM"[..]));
    assert_eq!(c.cmd(&[b"DISCARD"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"a", b"2"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*1\r\n+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"a"]).await, b"$1\r\n2\r\n");
    proxy.shutdown().await;
}

/// `redis-sidecar acl` prints the `ACL SETUSER` line that mirrors the deny list.
/// Applied to a real Redis, with the proxy connecting as that user, a denied
/// command reached through a script (which the proxy cannot see) is refused by
/// Redis itself, and the data survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_subcommand_makes_redis_enforce_the_deny_list() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redis-databases.yaml");
    std::fs::write(
        &path,
        format!(
            "redis_databases:\n  main: {{ db: 0 }}\n  cache: {{ db: 5 }}\nhost: 127.0.0.1\nport: {}\nusername: sidecar\npassword: \"acl-pw\"\ndeny_commands: [shutdown, flushall, flushdb, \"config|set\", proxy]\n",
            redis.port()
        ),
    )
    .unwrap();
    let path_s = path.to_str().unwrap();
    // Without --with-password the configured password is never printed.
    let (out, notes, status) = support::run_binary(
        &["acl", "--config", path_s],
        &[],
        std::time::Duration::from_secs(10),
    );
    assert!(status.success(), "{out}{notes}");
    assert!(!out.contains("acl-pw"), "{out}");
    assert_eq!(
        out,
        "ACL SETUSER sidecar reset on ><password> ~* &* +@all -config|set -flushall -flushdb -shutdown\n"
    );
    assert!(notes.contains("replace <password>"), "{notes}");
    let (out, _, status) = support::run_binary(
        &["acl", "--config", path_s, "--with-password"],
        &[],
        std::time::Duration::from_secs(10),
    );
    assert!(status.success());
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words[..5], ["ACL", "SETUSER", "sidecar", "reset", "on"]);
    assert_eq!(words[5], ">acl-pw");
    let (applied, st) = support::redis_cli(redis.port(), &words);
    assert!(st.success() && applied.trim() == "OK", "{applied}");

    let config = Config::load(&path).expect("load");
    let mut config = config;
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.metrics_listen = None;
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"SET", b"precious", b"data"]).await, b"+OK\r\n");
    // The proxy refuses the command itself …
    let r = text(&c.cmd(&[b"FLUSHALL"]).await);
    assert!(r.starts_with("-NOPERM 'flushall' is denied"), "{r}");
    // … and Redis refuses it from a script, which the proxy cannot see into.
    let r = text(
        &c.cmd(&[b"EVAL", b"return redis.call('flushall')", b"0"])
            .await,
    );
    assert!(
        r.starts_with("-ERR The user executing the script can't run this command"),
        "{r}"
    );
    let r = text(
        &c.cmd(&[b"EVAL", b"return redis.call('flushdb')", b"0"])
            .await,
    );
    assert!(r.contains("can't run this command"), "{r}");
    assert_eq!(c.cmd(&[b"GET", b"precious"]).await, b"$4\r\ndata\r\n");
    let (log, _) = support::redis_cli(redis.port(), &["ACL", "LOG", "1"]);
    assert!(log.contains("flushdb") && log.contains("sidecar"), "{log}");
    proxy.shutdown().await;
}
