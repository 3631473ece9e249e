//! Where one request goes on a Redis Cluster, decided from its keys (the key specs
//! of the command table, [`keys::locate`]) and its name: one slot, any node, every
//! primary (with how the replies are merged), split per slot, or refused as Redis
//! refuses it. No I/O.

use super::slot::key_slot;
use crate::command::keys::{self, KeyKind};
use crate::command::table::CommandInfo;
use crate::command::ArgList;

/// Redis's own error for keys of several slots (`-CROSSSLOT …`).
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// How the replies of the parts of one request become the client's one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Integers added (`DBSIZE`, `DEL`, `UNLINK`, `EXISTS`, `TOUCH`).
    Sum,
    /// The smallest integer (`LASTSAVE`: the whole keyspace was saved by then).
    Min,
    /// Arrays concatenated in part order (`KEYS`).
    Concat,
    /// `MGET`: each part's elements put back at their keys' places.
    Keys,
    /// The first part's reply, unless a part answered an error (then the first
    /// error): `MSET`, `FLUSHDB`, `SCRIPT LOAD` … on every primary.
    First,
    /// A random non-nil reply (`RANDOMKEY`); nil when every part is nil.
    AnyNonNil,
    /// `PUBSUB SHARDNUMSUB`: each part's channel-and-count pairs put back at
    /// their channels' places (an array, or a RESP3 map).
    Pairs,
    /// `SLOWLOG GET [count]`: every part's entries, newest first (by their
    /// timestamps), at most `count` (negative: all).
    Newest(i64),
    /// `ACL LOG [count]`: every part's entries, the most recent first (by
    /// their `age-seconds`), at most `count`.
    Youngest(i64),
    /// `INFO` with its keyspace section: the first part's text, with the
    /// keyspace lines of every part summed ([`super::info`]).
    Info,
}

impl Merge {
    /// How many leading arguments every part repeats (`MGET`; `PUBSUB
    /// SHARDNUMSUB`): the parts' own arguments follow.
    pub fn head(self) -> usize {
        match self {
            Merge::Pairs => 2,
            _ => 1,
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Every key in this slot (`None`: no key; any primary serves it).
    Slot(Option<u16>),
    /// Keys in several slots, of a command that splits: one part per slot,
    /// each with the argument indexes it carries (a key, or a key and its value
    /// for `MSET`), in the client's order.
    Split {
        /// How the parts' replies merge.
        merge: Merge,
        /// (slot, argument indexes) per part.
        parts: Vec<(u16, Vec<usize>)>,
    },
    /// Sent to every primary; replies merged.
    Every(Merge),
    /// Sent to every node of the map, replicas too (a server's settings and
    /// users: a promoted replica must have them); replies merged.
    EveryNode(Merge),
    /// `SCAN`: one node at a time, the node's index folded into the cursor.
    Scan,
    /// To the node where the proxy's subscriber connections are (`PUBLISH`,
    /// `PUBSUB CHANNELS/NUMSUB/NUMPAT`; `Cluster::home`): the cluster delivers a
    /// message on every node, but each node counts only its own subscribers.
    Home,
    /// Answered with this error, as Redis would.
    Refuse(&'static str),
}

/// Commands Redis runs on one node only that must reach every primary to act on
/// the whole keyspace (their replies agree when they succeed).
const EVERY_FIRST: &[&str] = &[
    "flushdb",
    "flushall",
    "script|flush",
    "script|load",
    "function|load",
    "function|flush",
    "function|delete",
    "function|restore",
    // Persistence of the whole keyspace: each primary saves its slots' keys.
    "save",
    "bgsave",
    "bgrewriteaof",
];

/// Commands that change a server's settings or users: through the proxy they
/// change "the server" the client sees, so every node of the cluster.
const EVERY_NODE: &[&str] = &[
    "config|set",
    "config|resetstat",
    "config|rewrite",
    "acl|setuser",
    "acl|deluser",
    "acl|load",
    "acl|save",
    "slowlog|reset",
    "latency|reset",
    "memory|purge",
    // "The server" paused for every client: every node (a failover procedure
    // pauses writes on the primaries).
    "client|pause",
    "client|unpause",
];

/// Plans a request classified as `info` (`None`: unknown to the table).
pub fn plan<L: ArgList + ?Sized>(info: Option<&CommandInfo>, args: &L) -> Plan {
    let name = info.map_or("", |i| i.name);
    let mut found = keys::KeyArgs::new();
    if keys::locate(info, args, &mut found).is_err() {
        // Unknown command: Redis refuses it wherever it goes.
        return Plan::Slot(None);
    }
    let keyed = || {
        found
            .iter()
            .filter(|k| k.kind != KeyKind::Pattern)
            .map(|k| k.index)
    };
    let Some(first) = keyed().next() else {
        return keyless(name, args);
    };
    let slot = key_slot(args.arg(first));
    if keyed().skip(1).all(|i| key_slot(args.arg(i)) == slot) {
        return Plan::Slot(Some(slot));
    }
    let (merge, pairs) = match name {
        "mget" => (Merge::Keys, false),
        "del" | "unlink" | "exists" | "touch" => (Merge::Sum, false),
        "mset" => (Merge::First, true),
        _ => return Plan::Refuse(CROSSSLOT),
    };
    let mut parts: Vec<(u16, Vec<usize>)> = Vec::new();
    for k in keyed() {
        let s = key_slot(args.arg(k));
        let idx = match parts.iter().position(|(ps, _)| *ps == s) {
            Some(i) => i,
            None => {
                parts.push((s, Vec::new()));
                parts.len() - 1
            }
        };
        parts[idx].1.push(k);
        if pairs {
            parts[idx].1.push(k + 1);
        }
    }
    Plan::Split { merge, parts }
}

/// A request without keys.
fn keyless<L: ArgList + ?Sized>(name: &str, args: &L) -> Plan {
    match name {
        "dbsize" => Plan::Every(Merge::Sum),
        "lastsave" => Plan::Every(Merge::Min),
        // Each primary has the shard channels of its slots (the proxy's
        // SSUBSCRIBEs go to primaries).
        "keys" | "pubsub|shardchannels" => Plan::Every(Merge::Concat),
        "pubsub|shardnumsub" => shard_numsub(args),
        "randomkey" => Plan::Every(Merge::AnyNonNil),
        // Each node logs what it ran: the client's server is all of them.
        "slowlog|len" => Plan::EveryNode(Merge::Sum),
        "slowlog|get" => Plan::EveryNode(Merge::Newest(count_arg(args))),
        // Each node logs the refusals it made; RESET clears every node's.
        "acl|log" if args.count() > 2 && args.arg(2).eq_ignore_ascii_case(b"reset") => {
            Plan::EveryNode(Merge::First)
        }
        "acl|log" => Plan::EveryNode(Merge::Youngest(count_arg(args))),
        "scan" => Plan::Scan,
        "info" if super::info::wants_keyspace((1..args.count()).map(|i| args.arg(i))) => {
            Plan::Every(Merge::Info)
        }
        "publish" | "pubsub|channels" | "pubsub|numsub" | "pubsub|numpat" => Plan::Home,
        n if EVERY_FIRST.contains(&n) => Plan::Every(Merge::First),
        n if EVERY_NODE.contains(&n) => Plan::EveryNode(Merge::First),
        _ => Plan::Slot(None),
    }
}

/// The optional count after a subcommand (`SLOWLOG GET [count]`, `ACL LOG
/// [count]`): 10 when absent; one that is not a number (each node answers
/// Redis's own error) -1.
fn count_arg<L: ArgList + ?Sized>(args: &L) -> i64 {
    match args.count() {
        2 => 10,
        _ => std::str::from_utf8(args.arg(2))
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(-1),
    }
}

/// `PUBSUB SHARDNUMSUB channel…`: each channel counted on the primary of its
/// slot (where its subscribers are), split like `MGET`.
fn shard_numsub<L: ArgList + ?Sized>(args: &L) -> Plan {
    let channels = 2..args.count();
    let Some(slot) = channels.clone().next().map(|i| key_slot(args.arg(i))) else {
        return Plan::Slot(None);
    };
    let mut parts: Vec<(u16, Vec<usize>)> = Vec::new();
    for i in channels {
        let s = key_slot(args.arg(i));
        match parts.iter_mut().find(|(ps, _)| *ps == s) {
            Some((_, idx)) => idx.push(i),
            None => parts.push((s, vec![i])),
        }
    }
    if parts.len() == 1 {
        return Plan::Slot(Some(slot));
    }
    Plan::Split {
        merge: Merge::Pairs,
        parts,
    }
}

/// The slot of a request's keys, with `prefix` (`key_prefix`, not yet added to
/// the arguments) in front of each key (not of a shard channel): what pins an exclusive connection (a
/// transaction, a blocking command) to a node. `None` without keys, or with
/// keys of several slots.
pub fn slot_of<L: ArgList + ?Sized>(
    info: Option<&CommandInfo>,
    args: &L,
    prefix: Option<&[u8]>,
) -> Option<u16> {
    let mut found = keys::KeyArgs::new();
    keys::locate(info, args, &mut found).ok()?;
    let mut key = Vec::new();
    let mut slot = None;
    for k in found.iter().filter(|k| k.kind != KeyKind::Pattern) {
        key.clear();
        if k.kind == KeyKind::Key {
            // (Shard channels are not prefixed: `session::prefix`.)
            key.extend_from_slice(prefix.unwrap_or(b""));
        }
        key.extend_from_slice(args.arg(k.index));
        let s = key_slot(&key);
        if slot.is_some_and(|x| x != s) {
            return None;
        }
        slot = Some(s);
    }
    slot
}

/// A whole-cluster `SCAN` cursor: node `index` of `nodes`, at that node's `cursor`.
/// `0` is the start (node 0, cursor 0) and the end.
pub fn scan_cursor(index: usize, nodes: usize, cursor: u64) -> Option<u64> {
    cursor
        .checked_mul(nodes as u64)
        .and_then(|c| c.checked_add(index as u64))
}

/// The node index and that node's cursor in a whole-cluster cursor.
pub fn scan_position(cursor: u64, nodes: usize) -> (usize, u64) {
    let n = nodes.max(1) as u64;
    ((cursor % n) as usize, cursor / n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Descriptor;

    fn plan_of(args: &[&str]) -> Plan {
        let d = Descriptor::of(args);
        plan(d.info, args)
    }

    /// `key_prefix` goes in front of keys, not of shard channels (which the
    /// session does not prefix).
    #[test]
    fn the_prefix_counts_for_keys_not_for_shard_channels() {
        let slot = |args: &[&str], prefix: &str| {
            let d = Descriptor::of(args);
            slot_of(d.info, args, Some(prefix.as_bytes()))
        };
        assert_eq!(slot(&["SET", "k", "v"], "kb:"), Some(key_slot(b"kb:k")));
        for cmd in ["SSUBSCRIBE", "SPUBLISH"] {
            assert_eq!(
                slot(&[cmd, "pch:a", "m"][..2], "kb:"),
                Some(key_slot(b"pch:a"))
            );
        }
    }

    #[test]
    fn single_slot_keyless_and_hash_tags() {
        assert_eq!(plan_of(&["GET", "foo"]), Plan::Slot(Some(key_slot(b"foo"))));
        assert_eq!(plan_of(&["PING"]), Plan::Slot(None));
        let tagged = plan_of(&["MGET", "{u1}:a", "{u1}:b"]);
        assert_eq!(tagged, Plan::Slot(Some(key_slot(b"u1"))));
        assert_eq!(plan_of(&["DBSIZE"]), Plan::Every(Merge::Sum));
        assert_eq!(
            plan_of(&["SCRIPT", "LOAD", "return 1"]),
            Plan::Every(Merge::First)
        );
        assert_eq!(plan_of(&["scan", "0"]), Plan::Scan);
        assert_eq!(plan_of(&["INFO"]), Plan::Every(Merge::Info));
        assert_eq!(plan_of(&["info", "keyspace"]), Plan::Every(Merge::Info));
        assert_eq!(plan_of(&["INFO", "server"]), Plan::Slot(None));
        assert_eq!(plan_of(&["LASTSAVE"]), Plan::Every(Merge::Min));
        for (cmd, merge) in [
            (&["ACL", "LOG"][..], Merge::Youngest(10)),
            (&["acl", "log", "2"], Merge::Youngest(2)),
            (&["ACL", "LOG", "reset"], Merge::First),
            (&["SLOWLOG", "GET"], Merge::Newest(10)),
            (&["slowlog", "get", "25"], Merge::Newest(25)),
        ] {
            assert_eq!(plan_of(cmd), Plan::EveryNode(merge), "{cmd:?}");
        }
        assert_eq!(plan_of(&["BGSAVE"]), Plan::Every(Merge::First));
        for cmd in [
            &["CONFIG", "SET", "maxmemory", "0"][..],
            &["config", "resetstat"],
            &["ACL", "SETUSER", "u", "on"],
            &["ACL", "DELUSER", "u"],
            &["SLOWLOG", "RESET"],
            &["CLIENT", "PAUSE", "100", "WRITE"],
            &["client", "unpause"],
        ] {
            assert_eq!(plan_of(cmd), Plan::EveryNode(Merge::First), "{cmd:?}");
        }
        assert_eq!(plan_of(&["CONFIG", "GET", "maxmemory"]), Plan::Slot(None));
        assert_eq!(plan_of(&["SLOWLOG", "LEN"]), Plan::EveryNode(Merge::Sum));
        assert_eq!(plan_of(&["ACL", "GETUSER", "u"]), Plan::Slot(None));
        assert_eq!(plan_of(&["PUBLISH", "ch", "m"]), Plan::Home);
        assert_eq!(plan_of(&["PUBSUB", "NUMSUB", "ch"]), Plan::Home);
        assert_eq!(
            plan_of(&["PUBSUB", "SHARDCHANNELS"]),
            Plan::Every(Merge::Concat)
        );
        assert_eq!(plan_of(&["PUBSUB", "SHARDNUMSUB"]), Plan::Slot(None));
        assert_eq!(
            plan_of(&["PUBSUB", "SHARDNUMSUB", "a", "{a}x"]),
            Plan::Slot(Some(key_slot(b"a")))
        );
        match plan_of(&["PUBSUB", "SHARDNUMSUB", "a", "b", "{a}x"]) {
            Plan::Split { merge, parts } => {
                assert_eq!(merge, Merge::Pairs);
                assert_eq!(parts[0], (key_slot(b"a"), vec![2, 4]));
                assert_eq!(parts[1], (key_slot(b"b"), vec![3]));
            }
            other => panic!("{other:?}"),
        }
        // EVAL with its keys in one slot goes there; with none, anywhere.
        let eval = plan_of(&["EVAL", "return 1", "1", "foo"]);
        assert_eq!(eval, Plan::Slot(Some(key_slot(b"foo"))));
        assert_eq!(plan_of(&["EVAL", "return 1", "0"]), Plan::Slot(None));
    }

    #[test]
    fn cross_slot_splits_or_refuses() {
        // "a" and "b" hash to different slots.
        assert_ne!(key_slot(b"a"), key_slot(b"b"));
        match plan_of(&["MSET", "a", "1", "b", "2", "a", "3"]) {
            Plan::Split { merge, parts } => {
                assert_eq!(merge, Merge::First);
                assert_eq!(parts[0], (key_slot(b"a"), vec![1, 2, 5, 6]));
                assert_eq!(parts[1], (key_slot(b"b"), vec![3, 4]));
            }
            other => panic!("{other:?}"),
        }
        match plan_of(&["DEL", "a", "b"]) {
            Plan::Split { merge, parts } => {
                assert_eq!(merge, Merge::Sum);
                assert_eq!(parts.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            plan_of(&["MSETNX", "a", "1", "b", "2"]),
            Plan::Refuse(CROSSSLOT)
        );
        assert_eq!(plan_of(&["SUNION", "a", "b"]), Plan::Refuse(CROSSSLOT));
        assert_eq!(
            plan_of(&["EVAL", "return 1", "2", "a", "b"]),
            Plan::Refuse(CROSSSLOT)
        );
    }

    #[test]
    fn scan_cursors_round_trip() {
        for nodes in 1..5 {
            for index in 0..nodes {
                for cursor in [0u64, 1, 17, 1 << 40] {
                    let c = scan_cursor(index, nodes, cursor).expect("fits");
                    assert_eq!(scan_position(c, nodes), (index, cursor));
                }
            }
        }
        assert_eq!(scan_cursor(1, 3, u64::MAX), None);
    }
}
