//! Redis Cluster upstreams — groundwork, not yet wired into routing or config.
//!
//! * [`slot`]: the hash slot of a key (CRC16 mod 16384, hash tags), as Redis's
//!   `keyHashSlot`.
//! * [`map`]: the slot map (slot -> shard: primary and replicas) learnt from
//!   `CLUSTER SHARDS`, or `CLUSTER SLOTS` on servers without it, over a connection
//!   opened like any upstream connection (TLS, AUTH, timeouts).
//!
//! Layering: below `router`; uses `upstream` (connection setup) and `protocol`.

pub mod client;
pub mod map;
pub mod merge;
pub mod plan;
pub mod slot;

pub use client::Cluster;
pub use map::{Node, Shard, SlotMap};
pub use slot::{key_slot, SLOTS};
