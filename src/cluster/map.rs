//! The cluster's slot map: which shard (a primary and its replicas) serves each of
//! the 16384 hash slots, learnt from `CLUSTER SHARDS` (Redis 7) or, on servers
//! without it, `CLUSTER SLOTS`.
//!
//! Node addresses: the node's `endpoint` (what Redis prefers clients to use, as set
//! by `cluster-preferred-endpoint-type`); when that is `?` or empty, its `ip`; when
//! that is missing too, the host of the node asked (what Redis documents for an
//! unknown endpoint). With `tls`, the `tls-port` when the node gives one.
//!
//! The map is canonical: shards ordered by their lowest slot, replicas by node id,
//! so two maps of the same cluster compare equal whichever reply they came from
//! (`CLUSTER SLOTS` gives no health: its nodes are [`Health::Online`]). Shards
//! without slots, and shards without a primary, are left out; their slots (and any
//! slot no shard claims) map to `None`.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::slot::{key_slot, SLOTS};
use crate::config::UpstreamConfig;
use crate::protocol::request::encode_command;
use crate::protocol::value::{decode, Value};
use crate::transport::Stream;
use crate::upstream::frames::Frames;
use crate::upstream::UpstreamError;

/// What Redis says of a node's health (`CLUSTER SHARDS`'s `health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// `online`: serving.
    Online,
    /// `failed`: the cluster considers it down.
    Failed,
    /// `loading`: still loading its data (a replica after a full sync).
    Loading,
}

/// One cluster node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node id (40 hex characters).
    pub id: String,
    /// `host:port` to connect to.
    pub addr: String,
    /// Its health.
    pub health: Health,
}

/// A primary and its replicas, and the slots they serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// The primary (writes go here).
    pub primary: Node,
    /// Its replicas, ordered by node id.
    pub replicas: Vec<Node>,
    /// The slot ranges it serves, inclusive, in order.
    pub ranges: Vec<(u16, u16)>,
}

/// Slot -> shard, for all 16384 slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    shards: Vec<Shard>,
    /// Index into `shards`, per slot; `None`: no shard serves it.
    slots: Vec<Option<u16>>,
}

/// Why a slot map could not be learnt.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// No connection to the node (or its setup failed).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The node answered with an error (e.g. cluster support disabled).
    #[error("{addr} answered {command}: {reply}")]
    Refused {
        /// The node asked.
        addr: String,
        /// The command.
        command: &'static str,
        /// Its error reply.
        reply: String,
    },
    /// The reply was not shaped as documented.
    #[error("unexpected reply to {command}: {why}")]
    Malformed {
        /// The command.
        command: &'static str,
        /// What was wrong.
        why: String,
    },
    /// The connection broke or was too slow.
    #[error("asking {addr} for the slot map: {why}")]
    Io {
        /// The node asked.
        addr: String,
        /// What happened.
        why: String,
    },
}

/// Which command a map is learnt from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `CLUSTER SHARDS` (Redis 7 and later).
    Shards,
    /// `CLUSTER SLOTS` (older servers).
    Slots,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Shards => "CLUSTER SHARDS",
            Source::Slots => "CLUSTER SLOTS",
        }
    }
}

/// A shard being assembled from a reply.
struct Draft {
    primary: Option<Node>,
    replicas: Vec<Node>,
    ranges: Vec<(u16, u16)>,
}

fn malformed(source: Source, why: impl Into<String>) -> MapError {
    MapError::Malformed {
        command: source.name(),
        why: why.into(),
    }
}

fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(Some(items)) => Some(items),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => other.text().and_then(|t| t.parse().ok()),
    }
}

fn slot_of(v: &Value) -> Option<u16> {
    int(v)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&s| usize::from(s) < SLOTS)
}

/// The fields of a flat `[name, value, name, value …]` array.
fn fields(v: &Value) -> Option<HashMap<String, &Value>> {
    let items = items(v)?;
    Some(
        items
            .chunks_exact(2)
            .filter_map(|kv| Some((kv[0].text()?.to_ascii_lowercase(), &kv[1])))
            .collect(),
    )
}

/// The address to use: the endpoint unless unknown (`?`, empty, nil), then `ip`,
/// then `fallback_host` (the node asked).
fn address(endpoint: Option<String>, ip: Option<String>, fallback_host: &str, port: u16) -> String {
    let known = |h: &Option<String>| {
        h.as_deref()
            .filter(|h| !h.is_empty() && *h != "?")
            .map(str::to_string)
    };
    let host = known(&endpoint)
        .or_else(|| known(&ip))
        .unwrap_or_else(|| fallback_host.to_string());
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl SlotMap {
    /// The map a `CLUSTER SHARDS` reply describes (RESP2). `seed_host`: the host of
    /// the node asked; `tls`: prefer the nodes' `tls-port`.
    pub fn from_shards(reply: &Value, seed_host: &str, tls: bool) -> Result<SlotMap, MapError> {
        let src = Source::Shards;
        let shards = items(reply).ok_or_else(|| malformed(src, "not an array"))?;
        let mut drafts = Vec::with_capacity(shards.len());
        for shard in shards {
            let f = fields(shard).ok_or_else(|| malformed(src, "a shard is not an array"))?;
            let bounds = f
                .get("slots")
                .and_then(|v| items(v))
                .ok_or_else(|| malformed(src, "a shard without slots"))?;
            let mut ranges = Vec::new();
            for pair in bounds.chunks(2) {
                match pair {
                    [a, b] => match (slot_of(a), slot_of(b)) {
                        (Some(a), Some(b)) if a <= b => ranges.push((a, b)),
                        _ => return Err(malformed(src, "a bad slot range")),
                    },
                    _ => return Err(malformed(src, "an odd number of slot bounds")),
                }
            }
            let nodes = f
                .get("nodes")
                .and_then(|v| items(v))
                .ok_or_else(|| malformed(src, "a shard without nodes"))?;
            let mut draft = Draft {
                primary: None,
                replicas: Vec::new(),
                ranges,
            };
            for node in nodes {
                let n = fields(node).ok_or_else(|| malformed(src, "a node is not an array"))?;
                let text = |k: &str| n.get(k).and_then(|v| v.text());
                let port = |k: &str| {
                    n.get(k)
                        .and_then(|v| int(v))
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|&p| p != 0)
                };
                let port = if tls {
                    port("tls-port").or_else(|| port("port"))
                } else {
                    port("port").or_else(|| port("tls-port"))
                }
                .ok_or_else(|| malformed(src, "a node without a port"))?;
                let health = match text("health").as_deref() {
                    Some("failed") => Health::Failed,
                    Some("loading") => Health::Loading,
                    _ => Health::Online,
                };
                let node = Node {
                    id: text("id").unwrap_or_default(),
                    addr: address(text("endpoint"), text("ip"), seed_host, port),
                    health,
                };
                match text("role").as_deref() {
                    // Two primaries in one shard (a failover being recorded): the
                    // healthy one wins.
                    Some("master") => match &draft.primary {
                        Some(p) if p.health == Health::Online || node.health != Health::Online => {
                            draft.replicas.push(node)
                        }
                        _ => {
                            if let Some(old) = draft.primary.replace(node) {
                                draft.replicas.push(old);
                            }
                        }
                    },
                    _ => draft.replicas.push(node),
                }
            }
            drafts.push(draft);
        }
        Ok(SlotMap::build(drafts))
    }

    /// The map a `CLUSTER SLOTS` reply describes (RESP2): `[start, end, primary,
    /// replica …]` per range, a node as `[endpoint, port, id, {metadata}]`.
    pub fn from_slots(reply: &Value, seed_host: &str) -> Result<SlotMap, MapError> {
        let src = Source::Slots;
        let ranges = items(reply).ok_or_else(|| malformed(src, "not an array"))?;
        let mut drafts: Vec<Draft> = Vec::new();
        let mut by_primary: HashMap<String, usize> = HashMap::new();
        for range in ranges {
            let r = items(range).ok_or_else(|| malformed(src, "a range is not an array"))?;
            let (Some(start), Some(end)) =
                (r.first().and_then(slot_of), r.get(1).and_then(slot_of))
            else {
                return Err(malformed(src, "a bad slot range"));
            };
            if start > end || r.len() < 3 {
                return Err(malformed(src, "a bad slot range"));
            }
            let mut nodes = Vec::with_capacity(r.len() - 2);
            for node in &r[2..] {
                let n = items(node).ok_or_else(|| malformed(src, "a node is not an array"))?;
                let endpoint = n.first().and_then(|v| v.text());
                let port = n
                    .get(1)
                    .and_then(int)
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| malformed(src, "a node without a port"))?;
                let id = n.get(2).and_then(|v| v.text()).unwrap_or_default();
                let meta = n.get(3).and_then(fields).unwrap_or_default();
                let ip = meta.get("ip").and_then(|v| v.text());
                nodes.push(Node {
                    id,
                    addr: address(endpoint, ip, seed_host, port),
                    health: Health::Online,
                });
            }
            let mut nodes = nodes.into_iter();
            let Some(primary) = nodes.next() else {
                return Err(malformed(src, "a range without nodes"));
            };
            let key = if primary.id.is_empty() {
                primary.addr.clone()
            } else {
                primary.id.clone()
            };
            let at = *by_primary.entry(key).or_insert_with(|| {
                drafts.push(Draft {
                    primary: Some(primary),
                    replicas: Vec::new(),
                    ranges: Vec::new(),
                });
                drafts.len() - 1
            });
            let draft = &mut drafts[at];
            draft.ranges.push((start, end));
            for replica in nodes {
                if !draft
                    .replicas
                    .iter()
                    .any(|r| r.id == replica.id && r.addr == replica.addr)
                {
                    draft.replicas.push(replica);
                }
            }
        }
        Ok(SlotMap::build(drafts))
    }

    /// The canonical map of the shards found.
    fn build(drafts: Vec<Draft>) -> SlotMap {
        let mut shards: Vec<Shard> = drafts
            .into_iter()
            .filter_map(|d| {
                let primary = d.primary?;
                if d.ranges.is_empty() {
                    return None;
                }
                let mut ranges = d.ranges;
                ranges.sort_unstable();
                let mut replicas = d.replicas;
                replicas.sort_by(|a, b| (&a.id, &a.addr).cmp(&(&b.id, &b.addr)));
                Some(Shard {
                    primary,
                    replicas,
                    ranges,
                })
            })
            .collect();
        shards.sort_by_key(|s| s.ranges[0]);
        let mut slots = vec![None; SLOTS];
        for (i, shard) in shards.iter().enumerate() {
            // At most 16384 shards have slots.
            let index = u16::try_from(i).ok();
            for &(a, b) in &shard.ranges {
                for slot in &mut slots[usize::from(a)..=usize::from(b)] {
                    *slot = index;
                }
            }
        }
        SlotMap { shards, slots }
    }

    /// The shards, ordered by their lowest slot.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The index (into [`shards`](Self::shards)) of the shard serving `slot`.
    pub fn shard_index(&self, slot: u16) -> Option<usize> {
        self.slots
            .get(usize::from(slot))
            .copied()
            .flatten()
            .map(usize::from)
    }

    /// The shard serving `slot`.
    pub fn shard(&self, slot: u16) -> Option<&Shard> {
        self.shard_index(slot).map(|i| &self.shards[i])
    }

    /// The shard serving `key`'s slot.
    pub fn shard_for_key(&self, key: &[u8]) -> Option<&Shard> {
        self.shard(key_slot(key))
    }

    /// How many slots some shard serves (16384 when the cluster is complete).
    pub fn covered(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

/// Learns the slot map from the node at `addr` (`host:port`): one connection set
/// up as any upstream connection of `cfg` (TLS, AUTH, the connect timeout; no
/// `SELECT`), then `CLUSTER SHARDS`, or `CLUSTER SLOTS` when the node refuses it.
/// The questions are bounded by `cfg.command_timeout`.
pub async fn fetch(addr: &str, cfg: &UpstreamConfig) -> Result<SlotMap, MapError> {
    let mut conn = open(addr, cfg).await?;
    match conn.map(Source::Shards).await {
        Err(MapError::Refused { .. }) => conn.map(Source::Slots).await,
        other => other,
    }
}

/// [`fetch`] from one command only (no fallback).
pub async fn fetch_from(
    addr: &str,
    cfg: &UpstreamConfig,
    source: Source,
) -> Result<SlotMap, MapError> {
    open(addr, cfg).await?.map(source).await
}

/// A connection to one node, for slot-map questions.
struct MapConn {
    stream: Stream,
    frames: Frames,
    addr: String,
    host: String,
    tls: bool,
    timeout: Duration,
}

/// A node address, `host:port` (IPv6 in brackets), split; `None` if it is not one.
pub fn split_addr(addr: &str) -> Option<(String, u16)> {
    let (h, p) = addr.rsplit_once(':')?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    Some((h.to_string(), p.parse().ok().filter(|&p| p > 0)?))
}

async fn open(addr: &str, cfg: &UpstreamConfig) -> Result<MapConn, MapError> {
    let (host, port) = split_addr(addr).ok_or_else(|| MapError::Io {
        addr: addr.to_string(),
        why: "not a host:port address".into(),
    })?;
    let mut node = cfg.clone();
    node.host = host.clone();
    node.port = port;
    // A cluster has only db 0; the node is asked directly, never through sentinels.
    node.db = 0;
    node.sentinel = None;
    node.endpoint = crate::endpoint::Endpoint::new();
    let stream = crate::upstream::connect::connect(&node, false).await?;
    Ok(MapConn {
        stream,
        frames: Frames::new(16 * 1024),
        addr: addr.to_string(),
        host,
        tls: cfg.tls.is_some(),
        timeout: cfg.command_timeout,
    })
}

/// Largest slot-map reply read (a 1000-node cluster's `CLUSTER SHARDS` is ~300 KB).
const MAX_REPLY: usize = 16 << 20;

impl MapConn {
    async fn map(&mut self, source: Source) -> Result<SlotMap, MapError> {
        let args: [&[u8]; 2] = match source {
            Source::Shards => [b"CLUSTER", b"SHARDS"],
            Source::Slots => [b"CLUSTER", b"SLOTS"],
        };
        let reply = match tokio::time::timeout(self.timeout, self.call(&args)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(self.io(format!(
                    "no reply to {} within {:?}",
                    source.name(),
                    self.timeout
                )))
            }
        };
        match reply {
            Value::Error(e) => Err(MapError::Refused {
                addr: self.addr.clone(),
                command: source.name(),
                reply: e,
            }),
            v => match source {
                Source::Shards => SlotMap::from_shards(&v, &self.host, self.tls),
                Source::Slots => SlotMap::from_slots(&v, &self.host),
            },
        }
    }

    fn io(&self, why: String) -> MapError {
        MapError::Io {
            addr: self.addr.clone(),
            why,
        }
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<Value, MapError> {
        let mut out = Vec::new();
        encode_command(args, &mut out);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| self.io(e.to_string()))?;
        self.stream
            .flush()
            .await
            .map_err(|e| self.io(e.to_string()))?;
        let mut read = 0;
        loop {
            match self.frames.next_frame() {
                Err(e) => return Err(self.io(e.to_string())),
                Ok(Some(_)) => {
                    let bytes = self.frames.take();
                    return match decode(&bytes, 0) {
                        Ok(Some((v, _))) => Ok(v),
                        _ => Err(self.io("a reply nested too deeply".into())),
                    };
                }
                Ok(None) => {}
            }
            if read > MAX_REPLY {
                return Err(self.io(format!("a reply larger than {MAX_REPLY} bytes")));
            }
            match self.frames.fill(&mut self.stream).await {
                Ok(0) => return Err(self.io("connection closed".into())),
                Ok(n) => read += n,
                Err(e) => return Err(self.io(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Value {
        Value::Bulk(Some(t.as_bytes().to_vec()))
    }

    fn arr(items: Vec<Value>) -> Value {
        Value::Array(Some(items))
    }

    /// A `CLUSTER SHARDS` node: `[id, port, ip, endpoint, role, health]` fields.
    fn node(id: &str, port: i64, ip: &str, endpoint: &str, role: &str, health: &str) -> Value {
        arr(vec![
            s("id"),
            s(id),
            s("port"),
            Value::Int(port),
            s("ip"),
            s(ip),
            s("endpoint"),
            s(endpoint),
            s("role"),
            s(role),
            s("replication-offset"),
            Value::Int(0),
            s("health"),
            s(health),
        ])
    }

    fn shard(slots: &[i64], nodes: Vec<Value>) -> Value {
        arr(vec![
            s("slots"),
            arr(slots.iter().map(|&n| Value::Int(n)).collect()),
            s("nodes"),
            arr(nodes),
        ])
    }

    #[test]
    fn shards_reply_with_unassigned_slots_and_endpoints() {
        let reply = arr(vec![
            shard(
                &[100, 199, 0, 9],
                vec![
                    node("b", 7001, "10.0.0.2", "?", "replica", "loading"),
                    node("a", 7000, "10.0.0.1", "redis-a.local", "master", "online"),
                ],
            ),
            shard(
                &[10, 10],
                vec![node("c", 7002, "10.0.0.3", "", "master", "online")],
            ),
            // No slots: left out.
            shard(
                &[],
                vec![node("d", 7003, "10.0.0.4", "", "master", "online")],
            ),
        ]);
        let map = SlotMap::from_shards(&reply, "seed", false).expect("parsed");
        assert_eq!(map.shards().len(), 2);
        assert_eq!(map.covered(), 10 + 1 + 100);
        let first = map.shard(0).expect("slot 0");
        assert_eq!(first.ranges, vec![(0, 9), (100, 199)]);
        assert_eq!(first.primary.addr, "redis-a.local:7000");
        assert_eq!(first.replicas[0].addr, "10.0.0.2:7001");
        assert_eq!(first.replicas[0].health, Health::Loading);
        assert_eq!(
            map.shard(10).expect("slot 10").primary.addr,
            "10.0.0.3:7002"
        );
        assert_eq!(map.shard(11), None);
        assert_eq!(map.shard(16383), None);
        assert_eq!(map.shard(200), None);
    }

    #[test]
    fn a_failed_primary_gives_way_to_a_healthy_one() {
        let reply = arr(vec![shard(
            &[0, 16383],
            vec![
                node("old", 7000, "10.0.0.1", "10.0.0.1", "master", "failed"),
                node("new", 7001, "10.0.0.2", "10.0.0.2", "master", "online"),
            ],
        )]);
        let map = SlotMap::from_shards(&reply, "seed", false).expect("parsed");
        let served = map.shard(5).expect("served");
        assert_eq!(served.primary.id, "new");
        assert_eq!(served.replicas[0].id, "old");
        assert_eq!(served.replicas[0].health, Health::Failed);
        // A shard whose only node is a replica has no primary: its slots are unserved.
        let orphan = arr(vec![shard(
            &[0, 16383],
            vec![node("r", 7001, "10.0.0.2", "", "replica", "online")],
        )]);
        assert_eq!(
            SlotMap::from_shards(&orphan, "seed", false)
                .expect("parsed")
                .covered(),
            0
        );
    }

    #[test]
    fn slots_reply_groups_ranges_by_primary() {
        let n = |endpoint: Value, port: i64, id: &str| arr(vec![endpoint, Value::Int(port), s(id)]);
        let reply = arr(vec![
            arr(vec![
                Value::Int(0),
                Value::Int(99),
                n(s("10.0.0.1"), 7000, "a"),
                n(s("?"), 7001, "b"),
            ]),
            arr(vec![
                Value::Int(200),
                Value::Int(299),
                n(s("10.0.0.1"), 7000, "a"),
                n(s("?"), 7001, "b"),
            ]),
            // An unknown (nil) endpoint: the host asked.
            arr(vec![
                Value::Int(100),
                Value::Int(199),
                n(Value::Bulk(None), 7002, "c"),
            ]),
        ]);
        let map = SlotMap::from_slots(&reply, "seed.example").expect("parsed");
        assert_eq!(map.shards().len(), 2);
        assert_eq!(map.covered(), 300);
        let a = map.shard(250).expect("slot 250");
        assert_eq!(a.ranges, vec![(0, 99), (200, 299)]);
        assert_eq!(a.replicas.len(), 1);
        assert_eq!(a.replicas[0].addr, "seed.example:7001");
        assert_eq!(
            map.shard(150).expect("slot 150").primary.addr,
            "seed.example:7002"
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [
            Value::Int(1),
            arr(vec![arr(vec![
                s("slots"),
                arr(vec![Value::Int(5)]),
                s("nodes"),
                arr(vec![]),
            ])]),
            arr(vec![shard(&[0, 16384], vec![])]),
            arr(vec![shard(&[9, 3], vec![])]),
        ] {
            assert!(
                SlotMap::from_shards(&bad, "seed", false).is_err(),
                "{bad:?}"
            );
        }
        assert!(
            SlotMap::from_slots(&arr(vec![arr(vec![Value::Int(0), Value::Int(5)])]), "seed")
                .is_err()
        );
    }
}
