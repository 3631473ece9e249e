//! Redis Cluster upstreams.
//!
//! * [`slot`]: the hash slot of a key (CRC16 mod 16384, hash tags), as Redis's
//!   `keyHashSlot`.
//! * [`map`]: the slot map (slot -> shard: primary and replicas) learnt from
//!   `CLUSTER SHARDS`, or `CLUSTER SLOTS` on servers without it, over a connection
//!   opened like any upstream connection (TLS, AUTH, timeouts).
//! * [`plan`]: where one request goes (its keys' slot, any primary, every
//!   primary, split per slot, `SCAN` node by node, or refused as Redis does).
//! * [`merge`]: the parts' replies merged into the client's one reply; the
//!   redirect errors read; [`info`]: `INFO`'s keyspace section summed over
//!   the primaries.
//! * [`order`]: each session's batches in the order it sent them, across
//!   redirects and map changes.
//! * [`client`]: a cluster upstream at run time: the nodes' connections, the
//!   session's batches split per node, redirects followed in order, the map kept fresh.
//!
//! Layering: below `router`; uses `resilience` (a breaker per node), `upstream`,
//! `command` (key specs) and `protocol`.

pub mod client;
pub mod info;
pub mod map;
pub mod merge;
pub mod order;
pub mod plan;
pub mod slot;

pub use client::Cluster;
pub use map::{Node, Shard, SlotMap};
pub use slot::{key_slot, SLOTS};
