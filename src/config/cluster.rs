//! The `cluster` key (an upstream key, top level or per database): the database
//! lives on a Redis Cluster, whose nodes are learnt from seed nodes instead of a
//! fixed `host`/`port`. A cluster has only db 0, so databases sharing one keep
//! apart with `key_prefix` (checked in `resolve`).
//!
//! ```yaml
//! cluster:
//!   nodes: ["10.0.0.1:7000", "10.0.0.2:7000"]   # seed nodes, at least one
//!   read_from: primary                           # or replica
//! ```

use std::sync::Arc;

use super::error::Fail;
use super::fields::{parse_nodes, parse_string, Map, NodeKind};
use super::types::{ClusterConfig, ReadFrom};
use super::yaml::{KeyPath, Node};

/// The keys of `cluster`.
const CLUSTER_KEYS: &[&str] = &["nodes", "read_from"];

/// How the cluster's seed `nodes` are named in messages.
const CLUSTER_NODES: NodeKind = NodeKind {
    one: "cluster node",
    all: "the cluster's seed nodes",
    example: "10.0.0.1:7000",
};

/// `cluster: { nodes, read_from }` (`null`: not a cluster).
pub(super) fn parse_cluster(
    path: &KeyPath,
    node: &Node,
) -> Result<Option<Arc<ClusterConfig>>, Fail> {
    let map = Map::new(
        node,
        path,
        "a mapping like { nodes: [\"10.0.0.1:7000\"], read_from: primary }",
        Some(CLUSTER_KEYS),
    )?;
    let nodes = parse_nodes(&map, path, &CLUSTER_NODES)?;
    let read_from = match map.get("read_from") {
        None => ReadFrom::default(),
        Some((p, n)) => {
            let text = parse_string(&p, n)?;
            match text.trim().to_ascii_lowercase().as_str() {
                "primary" => ReadFrom::Primary,
                "replica" => ReadFrom::Replica,
                _ => {
                    return Err(Fail::at(
                        &p,
                        format!("unknown read_from {text:?}: expected primary or replica"),
                    ))
                }
            }
        }
    };
    Ok(Some(Arc::new(ClusterConfig { nodes, read_from })))
}
