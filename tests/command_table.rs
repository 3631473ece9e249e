//! The generated command table (`src/command/table.rs`): spot checks of the flags the
//! proxy relies on, structural invariants, and a freshness check against a real
//! `redis-server`.

mod support;

use std::collections::HashMap;

use redis_sidecar::command::table::{
    self, lookup, lookup_args, lookup_sub, CommandInfo, ADMIN, BLOCKING, BLOCK_ARG, COMMANDS,
    CONTAINER, COUNT, MOVABLE_KEYS, PUBSUB, SUBCOMMAND, TOP_LEVEL, TRANSACTION,
};
use support::{bulk_payload, parse_info, printable, RedisServer};

// Sanity of the generated sizes (checked at compile time).
const _: () = assert!(TOP_LEVEL > 200 && TOP_LEVEL < COUNT);

fn get(name: &str) -> &'static CommandInfo {
    lookup(name.as_bytes()).unwrap_or_else(|| panic!("{name} is not in the command table"))
}

fn sub(name: &str, sub: &str) -> &'static CommandInfo {
    lookup_sub(name.as_bytes(), sub.as_bytes())
        .unwrap_or_else(|| panic!("{name} is not in the command table"))
}

#[test]
fn read_only_commands() {
    for name in [
        "GET", "MGET", "HGETALL", "SCAN", "LRANGE", "ZRANGE", "EXISTS", "TTL", "XRANGE", "STRLEN",
        "EVAL_RO", "FCALL_RO",
    ] {
        let info = get(name);
        assert!(info.is_readonly(), "{name} should be read-only: {info:?}");
        assert!(!info.is_write(), "{name} should not be a write: {info:?}");
    }
}

#[test]
fn commands_that_are_not_read_only() {
    for name in [
        "SET", "INCR", "LPUSH", "RPUSH", "DEL", "EXPIRE", "EVAL", "EVALSHA", "EXEC", "FCALL",
        "FLUSHALL", "XADD", "PUBLISH",
    ] {
        let info = get(name);
        assert!(
            !info.is_readonly(),
            "{name} must not be retry-safe: {info:?}"
        );
    }
    for name in [
        "SET", "INCR", "LPUSH", "RPUSH", "DEL", "EXPIRE", "FLUSHALL", "XADD",
    ] {
        assert!(get(name).is_write(), "{name} should be a write");
    }
    // EVAL / FCALL: Redis flags them neither readonly nor write (the script decides), so
    // they are not retry-safe.
    assert!(!get("EVAL").is_write() && !get("EVAL").is_readonly());
}

#[test]
fn ping_is_known_but_not_read_only() {
    // Redis flags PING `fast` only: harmless, but by the "readonly only" rule not
    // retry-safe.
    let ping = get("PING");
    assert!(!ping.is_readonly() && !ping.is_write(), "{ping:?}");
}

#[test]
fn blocking_commands() {
    for name in [
        "BLPOP",
        "BRPOP",
        "BLMOVE",
        "BRPOPLPUSH",
        "BZPOPMIN",
        "BZPOPMAX",
        "BLMPOP",
        "BZMPOP",
        "WAIT",
    ] {
        assert!(get(name).has(BLOCKING), "{name} should be BLOCKING");
    }
    // XREAD / XREADGROUP block only with a BLOCK argument: the caller checks it.
    for name in ["XREAD", "XREADGROUP"] {
        let info = get(name);
        assert!(!info.has(BLOCKING), "{name} must not be BLOCKING: {info:?}");
        assert!(info.has(BLOCK_ARG), "{name} should be BLOCK_ARG: {info:?}");
    }
    assert!(get("XREAD").is_readonly());
    for name in ["GET", "SET", "LPOP", "XRANGE", "SUBSCRIBE"] {
        assert_eq!(get(name).flags & (BLOCKING | BLOCK_ARG), 0, "{name}");
    }
}

#[test]
fn pubsub_and_transactions() {
    for name in [
        "SUBSCRIBE",
        "PSUBSCRIBE",
        "SSUBSCRIBE",
        "UNSUBSCRIBE",
        "PUBLISH",
    ] {
        assert!(get(name).has(PUBSUB), "{name} should be PUBSUB");
    }
    for name in ["MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH"] {
        assert!(get(name).has(TRANSACTION), "{name} should be TRANSACTION");
    }
    assert!(!get("GET").has(TRANSACTION) && !get("GET").has(PUBSUB));
}

#[test]
fn container_subcommands() {
    let set = sub("CONFIG", "SET");
    assert_eq!(set.name, "config|set");
    assert!(set.has(ADMIN) && set.has(SUBCOMMAND) && !set.is_readonly());
    assert!(sub("CONFIG", "GET").has(ADMIN));
    assert!(sub("CLIENT", "LIST").has(ADMIN));
    for (c, s) in [
        ("OBJECT", "ENCODING"),
        ("XINFO", "STREAM"),
        ("MEMORY", "USAGE"),
    ] {
        let info = sub(c, s);
        assert!(info.is_readonly(), "{c} {s} should be read-only: {info:?}");
    }
    assert!(!sub("SCRIPT", "LOAD").is_readonly());
    assert!(sub("FUNCTION", "LOAD").is_write());
    // OBJECT ENCODING key: argument 2.
    let enc = sub("OBJECT", "ENCODING");
    assert_eq!((enc.first_key, enc.last_key, enc.step), (2, 2, 1));

    // An unknown subcommand gives the container, which is neither read-only nor a write:
    // treated as a write by the retry rule.
    let config = sub("CONFIG", "NOSUCHTHING");
    assert_eq!(config.name, "config");
    assert!(config.has(CONTAINER) && !config.is_readonly());
    // A non-container command ignores the "subcommand" (its first argument).
    assert_eq!(sub("GET", "KEY").name, "get");
    assert!(lookup_sub(b"NOSUCHCOMMAND", b"GET").is_none());
    // Subcommands are not top-level names.
    assert!(lookup(b"CONFIG|GET").is_none());
}

#[test]
fn lookup_args_is_case_insensitive() {
    assert_eq!(lookup_args(b"get", None).map(|c| c.name), Some("get"));
    assert_eq!(lookup_args(b"GeT", Some(b"k")).map(|c| c.name), Some("get"));
    assert_eq!(
        lookup_args(b"config", Some(b"set")).map(|c| c.name),
        Some("config|set")
    );
    assert_eq!(
        lookup_args(b"Client", Some(b"List")).map(|c| c.name),
        Some("client|list")
    );
    assert_eq!(lookup_args(b"config", None).map(|c| c.name), Some("config"));
    let long_sub = [b'a'; 100];
    assert_eq!(
        lookup_args(b"config", Some(&long_sub)).map(|c| c.name),
        Some("config")
    );
    assert!(lookup_args(&[b'G'; 33], None).is_none());
    assert!(lookup_args(b"", None).is_none());
    assert!(lookup_args(b"nosuchcommand", None).is_none());
    // `lookup` wants upper case.
    assert!(lookup(b"get").is_none());
}

#[test]
fn unknown_names() {
    assert!(lookup(b"NOSUCHCOMMAND").is_none());
    assert!(lookup(b"").is_none());
    assert!(lookup(b"GETX").is_none());
    assert!(lookup(b"PROXY").is_none());
}

#[test]
fn key_positions() {
    let g = get("GET");
    assert_eq!((g.first_key, g.last_key, g.step, g.arity), (1, 1, 1, 2));
    let m = get("MSET");
    assert_eq!((m.first_key, m.last_key, m.step, m.arity), (1, -1, 2, -3));
    let m = get("MGET");
    assert_eq!((m.first_key, m.last_key, m.step), (1, -1, 1));
    assert!(get("EVAL").has(MOVABLE_KEYS));
    let p = get("PING");
    assert_eq!((p.first_key, p.last_key, p.step), (0, 0, 0));
}

#[test]
fn table_invariants() {
    assert_eq!(COMMANDS.len(), COUNT);
    assert!(table::REDIS_VERSION.split('.').count() >= 2);
    let mut seen = HashMap::new();
    for (i, c) in COMMANDS.iter().enumerate() {
        assert_eq!(usize::from(c.index), i, "{c:?}");
        assert_eq!(c.name, c.name.to_ascii_lowercase(), "{c:?}");
        assert!(!c.name.is_empty() && c.name.len() <= 64, "{c:?}");
        assert!(seen.insert(c.name, i).is_none(), "duplicate {}", c.name);
        assert!(!(c.is_readonly() && c.is_write()), "{c:?}");
        assert!(c.arity != 0, "{c:?}");
        let upper = c.name.to_ascii_uppercase();
        if i < TOP_LEVEL {
            assert!(!c.name.contains('|') && !c.has(SUBCOMMAND), "{c:?}");
            assert_eq!(lookup(upper.as_bytes()), Some(c));
            assert_eq!(lookup_args(c.name.as_bytes(), None), Some(c));
        } else {
            let (parent, s) = c.name.split_once('|').expect("subcommand name");
            assert!(c.has(SUBCOMMAND) && !c.has(CONTAINER), "{c:?}");
            assert!(get(&parent.to_ascii_uppercase()).has(CONTAINER), "{c:?}");
            let (up, us) = upper.split_once('|').unwrap();
            assert_eq!(lookup_sub(up.as_bytes(), us.as_bytes()), Some(c));
            assert_eq!(lookup_args(parent.as_bytes(), Some(s.as_bytes())), Some(c));
        }
    }
    // Top-level names sorted, subcommands sorted.
    assert!(COMMANDS[..TOP_LEVEL]
        .windows(2)
        .all(|w| w[0].name < w[1].name));
    assert!(COMMANDS[TOP_LEVEL..]
        .windows(2)
        .all(|w| w[0].name < w[1].name));
    // Every container has at least one subcommand.
    for c in COMMANDS[..TOP_LEVEL].iter().filter(|c| c.has(CONTAINER)) {
        let prefix = format!("{}|", c.name);
        assert!(
            COMMANDS[TOP_LEVEL..]
                .iter()
                .any(|s| s.name.starts_with(&prefix)),
            "{c:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Freshness: compare with what a real redis-server reports
// ---------------------------------------------------------------------------------------

/// A RESP2 value (only what `COMMAND` replies use).
#[derive(Debug, Clone)]
enum Value {
    Str(Vec<u8>),
    Int(i64),
    Array(Vec<Value>),
    Nil,
}

impl Value {
    fn str(&self) -> String {
        match self {
            Value::Str(s) => String::from_utf8_lossy(s).into_owned(),
            Value::Int(n) => n.to_string(),
            other => panic!("expected a string, got {other:?}"),
        }
    }
    fn int(&self) -> i64 {
        match self {
            Value::Int(n) => *n,
            other => panic!("expected an integer, got {other:?}"),
        }
    }
    fn array(&self) -> &[Value] {
        match self {
            Value::Array(a) => a,
            Value::Nil => &[],
            other => panic!("expected an array, got {other:?}"),
        }
    }
}

/// Parses one RESP2 frame from `buf[*pos..]`.
fn parse(buf: &[u8], pos: &mut usize) -> Value {
    let rest = &buf[*pos..];
    let nl = rest
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or_else(|| panic!("truncated reply at {pos}"));
    let line = &rest[1..nl];
    let line_str = std::str::from_utf8(line).expect("utf-8 header");
    *pos += nl + 2;
    match rest[0] {
        b'+' => Value::Str(line.to_vec()),
        b'-' => panic!("error reply: {line_str}"),
        b':' => Value::Int(line_str.parse().expect("integer")),
        b'$' => {
            let n: i64 = line_str.parse().expect("bulk length");
            if n < 0 {
                return Value::Nil;
            }
            let n = n as usize;
            let v = buf[*pos..*pos + n].to_vec();
            *pos += n + 2;
            Value::Str(v)
        }
        b'*' => {
            let n: i64 = line_str.parse().expect("array length");
            if n < 0 {
                return Value::Nil;
            }
            Value::Array((0..n).map(|_| parse(buf, pos)).collect())
        }
        other => panic!("unexpected RESP2 type byte {:?}", other as char),
    }
}

/// What the running Redis says about one command.
struct Reported {
    name: String,
    arity: i64,
    readonly: bool,
    write: bool,
    keys: (i64, i64, i64),
}

fn reported(entry: &Value) -> Reported {
    let e = entry.array();
    let flags: Vec<String> = e[2].array().iter().map(Value::str).collect();
    Reported {
        name: e[0].str().to_ascii_lowercase(),
        arity: e[1].int(),
        readonly: flags.iter().any(|f| f == "readonly"),
        write: flags.iter().any(|f| f == "write"),
        keys: (e[3].int(), e[4].int(), e[5].int()),
    }
}

fn major(version: &str) -> &str {
    version.split('.').next().unwrap_or("")
}

#[test]
fn table_matches_running_redis() {
    let redis = RedisServer::start();
    let mut client = redis.client();
    let info = bulk_payload(&client.cmd(&[b"INFO", b"server"]));
    let info = parse_info(&String::from_utf8_lossy(&info));
    let version = info
        .get("redis_version")
        .expect("redis_version in INFO")
        .clone();
    let raw = client.cmd(&[b"COMMAND"]);
    let mut pos = 0;
    let reply = parse(&raw, &mut pos);
    assert_eq!(pos, raw.len(), "trailing bytes: {}", printable(&raw[pos..]));

    let same_version = version == table::REDIS_VERSION;
    let same_major = major(&version) == major(table::REDIS_VERSION);

    let mut top_total = 0usize;
    let mut top_missing = Vec::new();
    let mut sub_missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut exact_diff = Vec::new();
    let mut reported_names = Vec::new();
    for entry in reply.array() {
        top_total += 1;
        let mut items = vec![(reported(entry), None)];
        if let Some(subs) = entry.array().get(9) {
            let parent = items[0].0.name.clone();
            for s in subs.array() {
                items.push((reported(s), Some(parent.clone())));
            }
        }
        for (r, parent) in items {
            reported_names.push(r.name.clone());
            let found = match &parent {
                None => lookup(r.name.to_ascii_uppercase().as_bytes()),
                Some(p) => {
                    let s = r.name.split_once('|').map(|(_, s)| s).unwrap_or(&r.name);
                    lookup_sub(
                        p.to_ascii_uppercase().as_bytes(),
                        s.to_ascii_uppercase().as_bytes(),
                    )
                    .filter(|c| c.name == r.name)
                }
            };
            let Some(info) = found else {
                if parent.is_none() {
                    top_missing.push(r.name);
                } else {
                    sub_missing.push(r.name);
                }
                continue;
            };
            if info.is_readonly() != r.readonly || info.is_write() != r.write {
                mismatched.push(format!(
                    "{}: redis readonly={} write={}, table readonly={} write={}",
                    r.name,
                    r.readonly,
                    r.write,
                    info.is_readonly(),
                    info.is_write()
                ));
            }
            let table_keys = (
                i64::from(info.first_key),
                i64::from(info.last_key),
                i64::from(info.step),
            );
            if i64::from(info.arity) != r.arity || table_keys != r.keys {
                exact_diff.push(format!(
                    "{}: redis arity {} keys {:?}, table arity {} keys {:?}",
                    r.name, r.arity, r.keys, info.arity, table_keys
                ));
            }
        }
    }

    let regenerate = format!(
        "the table was generated from Redis {}, the running server is {version}; \
         regenerate with `python3 scripts/gen_command_table.py`",
        table::REDIS_VERSION
    );
    assert!(
        mismatched.is_empty(),
        "readonly/write flags differ ({regenerate}):\n{}",
        mismatched.join("\n")
    );
    if same_major {
        assert!(
            top_missing.is_empty() && sub_missing.is_empty(),
            "commands Redis {version} reports are missing from the table ({regenerate}): \
             {top_missing:?} {sub_missing:?}"
        );
    } else {
        let common = top_total - top_missing.len();
        assert!(
            common * 100 >= top_total * 95,
            "only {common} of the {top_total} commands Redis {version} reports are in the \
             table ({regenerate}); missing: {top_missing:?}"
        );
    }
    if same_version {
        // Generated from this very version: the table must be exactly what Redis says.
        assert!(
            exact_diff.is_empty(),
            "arity/key positions differ:\n{}",
            exact_diff.join("\n")
        );
        assert_eq!(top_total, TOP_LEVEL, "number of top-level commands");
        assert_eq!(
            reported_names.len(),
            COUNT,
            "number of commands + subcommands"
        );
        reported_names.sort();
        let mut ours: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        ours.sort_unstable();
        assert_eq!(reported_names, ours);
    }
}
