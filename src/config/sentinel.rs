//! The `sentinel` key (an upstream key, top level or per database): the database's
//! primary is found through Redis Sentinel instead of a fixed `host`/`port`.
//!
//! ```yaml
//! sentinel:
//!   nodes: ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"]
//!   master: mymaster
//!   password: null      # the sentinels' own password (requirepass of sentinel.conf)
//!   username: null
//! ```

use std::sync::Arc;

use super::error::Fail;
use super::fields::{parse_secret, parse_string, parse_username, type_error, Map};
use super::types::SentinelConfig;
use super::yaml::{KeyPath, Node};

/// The keys of `sentinel`.
const SENTINEL_KEYS: &[&str] = &["nodes", "master", "password", "username"];

/// `host:port` (IPv6 as `[::1]:26379`) of one sentinel.
fn parse_node(path: &KeyPath, node: &Node) -> Result<(String, u16), Fail> {
    let text = parse_string(path, node)?;
    let text = text.trim();
    let bad = |why: &str| {
        Fail::at(
            path,
            format!("{text:?} is not a sentinel address: {why} (expected host:port, e.g. \"10.0.0.1:26379\")"),
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

/// `sentinel: { nodes, master, password, username }` (`null`: not through sentinels).
pub(super) fn parse_sentinel(
    path: &KeyPath,
    node: &Node,
) -> Result<Option<Arc<SentinelConfig>>, Fail> {
    let map = Map::new(
        node,
        path,
        "a mapping like { nodes: [\"10.0.0.1:26379\"], master: mymaster }",
        Some(SENTINEL_KEYS),
    )?;
    let Some((nodes_path, nodes_node)) = map.get("nodes") else {
        return Err(Fail::at(
            path,
            "missing `nodes`: list the sentinels as host:port, e.g. nodes: [\"10.0.0.1:26379\"]",
        ));
    };
    let Node::Seq(items) = nodes_node else {
        return Err(type_error(&nodes_path, "a list of host:port", nodes_node));
    };
    if items.is_empty() {
        return Err(Fail::at(
            &nodes_path,
            "must list at least one sentinel (host:port)",
        ));
    }
    let nodes = items
        .iter()
        .map(|n| parse_node(&nodes_path, n))
        .collect::<Result<Vec<_>, _>>()?;
    let Some((master_path, master_node)) = map.get("master") else {
        return Err(Fail::at(
            path,
            "missing `master`: the name the sentinels monitor the primary under (sentinel monitor <master> …)",
        ));
    };
    let master = parse_string(&master_path, master_node)?.trim().to_string();
    if master.is_empty() || master.contains(char::is_whitespace) {
        return Err(Fail::at(
            &master_path,
            "must be a master name without spaces (as in `sentinel monitor <master> …`)",
        ));
    }
    let password = match map.get("password") {
        None => None,
        Some((p, n)) => parse_secret(&p, n)?,
    };
    let username = match map.get("username") {
        None => None,
        Some((p, n)) => parse_username(&p, n)?,
    };
    Ok(Some(Arc::new(SentinelConfig {
        nodes,
        master,
        username,
        password,
    })))
}
