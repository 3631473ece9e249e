//! The `sentinel` key (an upstream key, top level or per database): the database's
//! primary is found through Redis Sentinel instead of a fixed `host`/`port`.
//!
//! ```yaml
//! sentinel:
//!   nodes: ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"]
//!   master: mymaster
//!   password: null      # the sentinels' own password (requirepass of sentinel.conf)
//!   username: null
//!   tls: null           # TLS to the sentinels: { ca_file, cert_file, key_file, server_name, insecure_skip_verify }
//! ```

use std::sync::Arc;

use super::error::Fail;
use super::fields::{parse_nodes, parse_secret, parse_string, parse_username, Map, NodeKind};
use super::types::SentinelConfig;
use super::yaml::{KeyPath, Node};

/// The keys of `sentinel`.
const SENTINEL_KEYS: &[&str] = &["nodes", "master", "password", "username", "tls"];

/// How the sentinels' `nodes` are named in messages.
const SENTINEL_NODES: NodeKind = NodeKind {
    one: "sentinel",
    all: "the sentinels",
    example: "10.0.0.1:26379",
};

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
    let nodes = parse_nodes(&map, path, &SENTINEL_NODES)?;
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
    let tls = match map.get("tls") {
        None => None,
        Some((p, n)) => super::tls::parse_upstream_tls(&p, n)?,
    };
    Ok(Some(Arc::new(SentinelConfig {
        nodes,
        master,
        username,
        password,
        tls,
    })))
}
