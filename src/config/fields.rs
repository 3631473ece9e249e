//! Typed, validated access to the YAML tree: [`Map`] (a mapping checked for unknown keys,
//! with "did you mean" suggestions, and duplicate keys), the value parsers for each kind
//! of setting (integers in range, durations in seconds, addresses, log levels, command
//! lists, secrets …), and [`Set`], a parsed value together with where it came from.
//! Every failure here is a [`Fail`] naming the key path.

use std::net::SocketAddr;
use std::time::Duration;

use super::error::{Fail, Origin};
use super::types::Secret;
use super::yaml::{KeyPath, Node};

/// A value set in the file or the environment, with its origin.
#[derive(Debug, Clone)]
pub(super) struct Set<T> {
    pub(super) value: T,
    pub(super) origin: Origin,
}

/// A mapping with string keys, checked for duplicates and unknown keys.
pub(super) struct Map<'a> {
    path: KeyPath,
    pub(super) entries: Vec<(String, &'a Node)>,
}

impl<'a> Map<'a> {
    /// `node` as a mapping at `path`; `allowed` lists the accepted keys (`None`: any).
    pub(super) fn new(
        node: &'a Node,
        path: &KeyPath,
        what: &str,
        allowed: Option<&[&str]>,
    ) -> Result<Map<'a>, Fail> {
        let Node::Map(raw) = node else {
            return Err(Fail::at(
                path,
                format!("expected {what}, found {}", node.describe(true)),
            ));
        };
        let mut entries: Vec<(String, &Node)> = Vec::with_capacity(raw.len());
        for (k, v) in raw {
            let Some(text) = k.key_text() else {
                return Err(Fail::at(path, "mapping keys must be plain names"));
            };
            let Node::Str(name) = k else {
                return Err(Fail::at(
                    &path.child(&text),
                    format!(
                        "key `{text}` must be a name (a string), not {}",
                        k.describe(false)
                    ),
                ));
            };
            let occurrence = entries.iter().filter(|(n, _)| n == name).count();
            if occurrence > 0 {
                let key = path.child(name);
                return Err(Fail::At {
                    locate: key.clone(),
                    key,
                    occurrence,
                    message: if path.0 == ["redis_databases"] {
                        format!(
                            "duplicate database name `{name}` (to give a database a second \
                             name, use another name with the same db)"
                        )
                    } else {
                        format!("duplicate key `{name}` (each key may appear only once)")
                    },
                });
            }
            if let Some(allowed) = allowed {
                if !allowed.contains(&name.as_str()) {
                    let mut message = format!("unknown key `{name}`");
                    if let Some(s) = suggest(name, allowed) {
                        message.push_str(&format!(" (did you mean `{s}`?)"));
                    }
                    return Err(Fail::at(&path.child(name), message));
                }
            }
            entries.push((name.clone(), v));
        }
        Ok(Map {
            path: path.clone(),
            entries,
        })
    }

    /// The value of `key`, if present and not null.
    pub(super) fn get(&self, key: &str) -> Option<(KeyPath, &'a Node)> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .filter(|(_, v)| **v != Node::Null)
            .map(|(k, v)| (self.path.child(k), *v))
    }

    /// Whether `key` is present (even if null).
    fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    pub(super) fn set<T>(
        &self,
        key: &str,
        parse: impl Fn(&KeyPath, &Node) -> Result<T, Fail>,
    ) -> Result<Option<Set<T>>, Fail> {
        match self.get(key) {
            None => Ok(None),
            Some((path, node)) => Ok(Some(Set {
                value: parse(&path, node)?,
                origin: Origin::Key(path),
            })),
        }
    }

    /// Either of two synonymous keys (an error if both are given).
    pub(super) fn set_either<T>(
        &self,
        key: &str,
        synonym: &str,
        parse: impl Fn(&KeyPath, &Node) -> Result<T, Fail>,
    ) -> Result<Option<Set<T>>, Fail> {
        if self.get(key).is_some() && self.get(synonym).is_some() {
            return Err(Fail::at(
                &self.path.child(synonym),
                format!("`{synonym}` and `{key}` are synonyms; give only one"),
            ));
        }
        match self.set(key, &parse)? {
            Some(v) => Ok(Some(v)),
            None => self.set(synonym, &parse),
        }
    }
}

/// The allowed key closest to `name`, if it is a plausible typo.
pub(super) fn suggest<'a>(name: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(name, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(super) fn type_error(path: &KeyPath, expected: &str, node: &Node) -> Fail {
    Fail::at(
        path,
        format!("expected {expected}, found {}", node.describe(true)),
    )
}

fn parse_uint(path: &KeyPath, node: &Node, min: u64, max: u64) -> Result<u64, Fail> {
    let Node::Int(i) = node else {
        return Err(type_error(path, "an integer", node));
    };
    match u64::try_from(*i) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        Ok(v) if v > max && max < u64::from(u32::MAX) => Err(Fail::at(
            path,
            format!("must be between {min} and {max}, got {i}"),
        )),
        Ok(v) if v > max => Err(Fail::at(
            path,
            format!("too large (at most {max}), got {i}"),
        )),
        _ => Err(Fail::at(path, format!("must be at least {min}, got {i}"))),
    }
}

pub(super) fn parse_u32(min: u32) -> impl Fn(&KeyPath, &Node) -> Result<u32, Fail> {
    parse_u32_in(min, u32::MAX)
}

/// An integer in `min..=max`.
pub(super) fn parse_u32_in(min: u32, max: u32) -> impl Fn(&KeyPath, &Node) -> Result<u32, Fail> {
    move |path, node| {
        let v = parse_uint(path, node, min.into(), max.into())?;
        u32::try_from(v).map_err(|_| Fail::at(path, "value too large"))
    }
}

pub(super) fn parse_usize(path: &KeyPath, node: &Node) -> Result<usize, Fail> {
    let v = parse_uint(path, node, 1, u64::MAX)?;
    usize::try_from(v).map_err(|_| Fail::at(path, "value too large"))
}

/// A size in bytes: an integer, or Redis's form with a unit (`64mb`, `1gb`, `512kb`;
/// `k`/`m`/`g` are powers of 1000, `kb`/`mb`/`gb` powers of 1024). Zero is allowed.
pub(super) fn parse_size(path: &KeyPath, node: &Node) -> Result<usize, Fail> {
    let (digits, unit) = match node {
        Node::Int(i) => {
            let v = u64::try_from(*i)
                .map_err(|_| Fail::at(path, format!("must be zero or more, got {i}")))?;
            return usize::try_from(v).map_err(|_| Fail::at(path, "value too large"));
        }
        Node::Str(s) => {
            let t = s.trim();
            let at = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            (&t[..at], t[at..].trim().to_ascii_lowercase())
        }
        _ => {
            return Err(type_error(
                path,
                "a size in bytes (e.g. 1048576 or 64mb)",
                node,
            ))
        }
    };
    let bad = || {
        Fail::at(
            path,
            format!(
                "expected a size in bytes (e.g. 1048576 or 64mb), found {}",
                node.describe(true)
            ),
        )
    };
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(scale)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| Fail::at(path, "value too large"))
}

pub(super) fn parse_port(path: &KeyPath, node: &Node) -> Result<u16, Fail> {
    let v = parse_uint(path, node, 1, u16::MAX.into())?;
    u16::try_from(v).map_err(|_| Fail::at(path, "value too large"))
}

pub(super) fn parse_bool(path: &KeyPath, node: &Node) -> Result<bool, Fail> {
    match node {
        Node::Bool(b) => Ok(*b),
        _ => Err(type_error(path, "true or false", node)),
    }
}

pub(super) fn parse_string(path: &KeyPath, node: &Node) -> Result<String, Fail> {
    match node {
        Node::Str(s) => Ok(s.clone()),
        _ => Err(type_error(path, "a string", node)),
    }
}

/// A list of command names (`[FLUSHALL, "config|set"]`), stored lower-case.
pub(super) fn parse_command_list(path: &KeyPath, node: &Node) -> Result<Vec<String>, Fail> {
    let Node::Seq(items) = node else {
        return Err(type_error(path, "a list of command names", node));
    };
    items
        .iter()
        .map(|item| {
            let name = parse_string(path, item)?.trim().to_ascii_lowercase();
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '|' | '-' | '_'));
            if ok {
                Ok(name)
            } else {
                Err(Fail::at(
                    path,
                    format!("{name:?} is not a command name (e.g. FLUSHALL or \"config|set\")"),
                ))
            }
        })
        .collect()
}

/// `key_prefix`: a non-empty string without `{` (a prefix with a hash tag
/// would change which part of every key Redis Cluster hashes).
pub(super) fn parse_key_prefix(path: &KeyPath, node: &Node) -> Result<String, Fail> {
    let prefix = parse_string(path, node)?;
    if prefix.is_empty() {
        return Err(Fail::at(path, "key_prefix must not be empty"));
    }
    if prefix.contains('{') {
        return Err(Fail::at(
            path,
            format!(
                "key_prefix {prefix:?} must not contain `{{`: it would change the hash tag \
                 (the slot) of every key"
            ),
        ));
    }
    Ok(prefix)
}

/// What a list of `host:port` nodes names, for its messages (`sentinel`, `cluster`).
pub(super) struct NodeKind {
    /// One node, as in "is not a sentinel address" ("sentinel").
    pub(super) one: &'static str,
    /// All of them, as in "list the sentinels as host:port" ("the sentinels").
    pub(super) all: &'static str,
    /// An example address (`10.0.0.1:26379`).
    pub(super) example: &'static str,
}

/// The required `nodes` of `map` (at `path`): a non-empty list of `host:port`.
pub(super) fn parse_nodes(
    map: &Map<'_>,
    path: &KeyPath,
    kind: &NodeKind,
) -> Result<Vec<(String, u16)>, Fail> {
    let NodeKind { one, all, example } = kind;
    let Some((nodes_path, nodes_node)) = map.get("nodes") else {
        return Err(Fail::at(
            path,
            format!("missing `nodes`: list {all} as host:port, e.g. nodes: [\"{example}\"]"),
        ));
    };
    let Node::Seq(items) = nodes_node else {
        return Err(type_error(&nodes_path, "a list of host:port", nodes_node));
    };
    if items.is_empty() {
        return Err(Fail::at(
            &nodes_path,
            format!("must list at least one {one} (host:port)"),
        ));
    }
    items
        .iter()
        .map(|n| parse_node(&nodes_path, n, kind))
        .collect()
}

/// `host:port` (IPv6 as `[::1]:26379`) of one node.
fn parse_node(path: &KeyPath, node: &Node, kind: &NodeKind) -> Result<(String, u16), Fail> {
    let text = parse_string(path, node)?;
    let text = text.trim();
    let bad = |why: &str| {
        Fail::at(
            path,
            format!(
                "{text:?} is not a {} address: {why} (expected host:port, e.g. \"{}\")",
                kind.one, kind.example
            ),
        )
    };
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad("no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host.to_string(), p)),
        _ => Err(bad("the port must be 1-65535")),
    }
}

pub(super) fn parse_host(path: &KeyPath, node: &Node) -> Result<String, Fail> {
    let host = parse_string(path, node)?;
    let host = host.trim();
    if host.is_empty() {
        return Err(Fail::at(path, "host must not be empty"));
    }
    Ok(host.to_string())
}

/// A user name: a string (or integer); `""` means none.
pub(super) fn parse_username(path: &KeyPath, node: &Node) -> Result<Option<String>, Fail> {
    match node {
        Node::Str(s) if s.is_empty() => Ok(None),
        Node::Str(s) => Ok(Some(s.clone())),
        Node::Int(i) => Ok(Some(i.to_string())),
        _ => Err(type_error(path, "a string", node)),
    }
}

/// A password: a string (or integer); `""` means none. Never echoes the value.
pub(super) fn parse_secret(path: &KeyPath, node: &Node) -> Result<Option<Secret>, Fail> {
    match node {
        Node::Str(s) if s.is_empty() => Ok(None),
        Node::Str(s) => Ok(Some(Secret(s.clone()))),
        Node::Int(i) => Ok(Some(Secret(i.to_string()))),
        _ => Err(Fail::at(
            path,
            format!("expected a string, found {}", node.describe(false)),
        )),
    }
}

/// A user name or password, where an explicit `null` means "none" (not "inherit").
pub(super) fn set_nullable<T>(
    map: &Map<'_>,
    key: &str,
    parse: impl Fn(&KeyPath, &Node) -> Result<Option<T>, Fail>,
) -> Result<Option<Set<Option<T>>>, Fail> {
    if !map.has(key) {
        return Ok(None);
    }
    match map.get(key) {
        None => Ok(Some(Set {
            value: None,
            origin: Origin::Key(map.path.child(key)),
        })),
        Some((path, node)) => Ok(Some(Set {
            value: parse(&path, node)?,
            origin: Origin::Key(path),
        })),
    }
}

fn parse_duration(path: &KeyPath, node: &Node, allow_zero: bool) -> Result<Duration, Fail> {
    let secs = match node {
        Node::Int(i) => *i as f64,
        Node::Float(f) => *f,
        _ => return Err(type_error(path, "a number of seconds", node)),
    };
    if !secs.is_finite() {
        return Err(Fail::at(path, "must be a finite number of seconds"));
    }
    if secs < 0.0 || (secs == 0.0 && !allow_zero) {
        let need = if allow_zero {
            "zero or more"
        } else {
            "more than zero"
        };
        return Err(Fail::at(
            path,
            format!("must be {need} seconds, got {secs}"),
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| Fail::at(path, "too many seconds"))
}

pub(super) fn positive_secs(path: &KeyPath, node: &Node) -> Result<Duration, Fail> {
    parse_duration(path, node, false)
}

pub(super) fn nonnegative_secs(path: &KeyPath, node: &Node) -> Result<Duration, Fail> {
    parse_duration(path, node, true)
}

pub(super) fn parse_listen(path: &KeyPath, node: &Node) -> Result<SocketAddr, Fail> {
    let text = parse_string(path, node)?;
    text.trim().parse().map_err(|_| {
        Fail::at(
            path,
            format!("invalid listen address {text:?}: expected IP:port, e.g. \"127.0.0.1:6380\""),
        )
    })
}

/// `unixsocket`: a path that fits a Unix socket address (107 bytes on Linux).
pub(super) fn parse_socket_path(path: &KeyPath, node: &Node) -> Result<std::path::PathBuf, Fail> {
    let text = parse_string(path, node)?;
    if text.trim().is_empty() {
        return Err(Fail::at(path, "must not be empty (the socket file's path)"));
    }
    if text.len() > 107 {
        return Err(Fail::at(
            path,
            format!(
                "{} bytes: a Unix socket path is at most 107 bytes",
                text.len()
            ),
        ));
    }
    Ok(std::path::PathBuf::from(text))
}

/// `unixsocketperm`: octal digits, as Redis writes them (`700`, or the string
/// `"0700"`), at most `777`.
pub(super) fn parse_socket_perm(path: &KeyPath, node: &Node) -> Result<u32, Fail> {
    let text = match node {
        Node::Int(i) => i.to_string(),
        Node::Str(s) => s.trim().trim_start_matches("0o").to_string(),
        _ => return Err(type_error(path, "octal permissions, e.g. 700", node)),
    };
    match u32::from_str_radix(&text, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(Fail::at(
            path,
            format!("invalid permissions {text:?}: expected octal digits up to 777, e.g. 700"),
        )),
    }
}

pub(super) fn parse_log_level(path: &KeyPath, node: &Node) -> Result<String, Fail> {
    let text = parse_string(path, node)?;
    let level = match text.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "critical" | "fatal" => "error",
        "off" | "none" => "off",
        _ => {
            return Err(Fail::at(
                path,
                format!(
                    "unknown log level {text:?}: expected trace, debug, info, warn, error or off"
                ),
            ))
        }
    };
    Ok(level.to_string())
}

pub(super) fn parse_log_format(path: &KeyPath, node: &Node) -> Result<String, Fail> {
    let text = parse_string(path, node)?;
    match text.trim().to_ascii_lowercase().as_str() {
        "text" => Ok("text".into()),
        "json" => Ok("json".into()),
        _ => Err(Fail::at(
            path,
            format!("unknown log format {text:?}: expected text or json"),
        )),
    }
}
