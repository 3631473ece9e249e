//! Redis Cluster groundwork against a real 6-node cluster (3 primaries, 3
//! replicas, `tests/support/cluster.rs`, one per test binary): the hash slot of a
//! key as `CLUSTER KEYSLOT` computes it, and the slot map learnt with
//! `CLUSTER SHARDS` / `CLUSTER SLOTS` names the node that really serves each key.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use redis_sidecar::cluster::map::{self, Health, MapError, Source};
use redis_sidecar::cluster::{key_slot, SlotMap};
use redis_sidecar::config::UpstreamConfig;
use support::cluster::Cluster;
use support::{RawClient, RedisServer};

fn cfg() -> UpstreamConfig {
    UpstreamConfig::new("127.0.0.1", 0, 0)
}

/// A random key: printable, brace-heavy or binary, 0..24 bytes, sometimes with a
/// (possibly empty) hash tag.
fn random_key(rng: &mut fastrand::Rng) -> Vec<u8> {
    let len = rng.usize(0..24);
    let mut key: Vec<u8> = match rng.u8(0..3) {
        0 => (0..len).map(|_| rng.alphanumeric() as u8).collect(),
        1 => (0..len)
            .map(|_| *rng.choice(b"ab{}:x{}".iter()).unwrap_or(&b'a'))
            .collect(),
        _ => (0..len).map(|_| rng.u8(..)).collect(),
    };
    if rng.bool() {
        let at = rng.usize(0..=key.len());
        let tag: Vec<u8> = match rng.u8(0..3) {
            0 => b"{}".to_vec(),
            1 => b"{user1}".to_vec(),
            _ => {
                let mut t = vec![b'{'];
                t.extend((0..rng.usize(0..6)).map(|_| rng.u8(..)));
                t.push(b'}');
                t
            }
        };
        key.splice(at..at, tag);
    }
    key
}

fn int_reply(reply: &[u8]) -> i64 {
    let text = String::from_utf8_lossy(reply);
    text.strip_prefix(':')
        .and_then(|t| t.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("not an integer reply: {text:?}"))
}

#[test]
fn key_slot_matches_cluster_keyslot() {
    let cluster = Cluster::shared();
    let mut client = cluster.nodes()[0].client();
    let mut rng = fastrand::Rng::with_seed(0x5107);
    let mut keys: Vec<Vec<u8>> = [
        &b"foo"[..],
        b"",
        b"{}",
        b"foo{}{bar}",
        b"foo{{bar}}zap",
        b"{user1}:a",
        b"user1",
        b"a}{b}",
        b"{",
        b"}",
        b"123456789",
    ]
    .iter()
    .map(|k| k.to_vec())
    .collect();
    while keys.len() < 2000 {
        keys.push(random_key(&mut rng));
    }
    let mut request = Vec::new();
    for key in &keys {
        request.extend(support::resp_cmd(&[b"CLUSTER", b"KEYSLOT", key]));
    }
    client.send(&request);
    let replies = client.read_replies(keys.len());
    for (key, reply) in keys.iter().zip(&replies) {
        assert_eq!(
            i64::from(key_slot(key)),
            int_reply(reply),
            "slot of {}",
            support::printable(key)
        );
    }
    assert_eq!(key_slot(b"foo"), 12182);
    assert_eq!(key_slot(b"{user1}:a"), key_slot(b"user1"));
}

/// The map from `CLUSTER SHARDS`. (Redis 7.0 reports a replica that has
/// replicated nothing yet as `loading`, so health is not compared here.)
async fn shards_map(seed: &str) -> SlotMap {
    map::fetch_from(seed, &cfg(), Source::Shards)
        .await
        .expect("CLUSTER SHARDS")
}

fn client_for(addr: &str) -> RawClient {
    RawClient::connect(addr)
}

#[tokio::test]
async fn map_covers_every_slot_and_names_the_serving_primary() {
    let cluster = Cluster::shared();
    eprintln!("cluster formed in {:?}", cluster.started_in());
    let seeds: HashSet<String> = cluster.seeds().into_iter().collect();
    let map = map::fetch(&cluster.seeds()[0], &cfg())
        .await
        .expect("fetch");
    assert_eq!(map.covered(), 16384);
    assert_eq!(map.shards().len(), 3, "{map:#?}");
    let mut all = HashSet::new();
    for shard in map.shards() {
        assert_eq!(shard.replicas.len(), 1, "{shard:#?}");
        assert_eq!(shard.primary.id.len(), 40, "{shard:#?}");
        for node in std::iter::once(&shard.primary).chain(&shard.replicas) {
            assert!(
                seeds.contains(&node.addr),
                "{} is not a cluster node",
                node.addr
            );
            assert!(
                all.insert(node.addr.clone()),
                "{} twice in the map",
                node.addr
            );
        }
    }
    assert_eq!(all.len(), 6);

    // Every node, primary or replica, describes the same cluster.
    let reference = shards_map(&cluster.seeds()[0]).await;
    for seed in cluster.seeds() {
        let other = shards_map(&seed).await;
        assert_eq!(
            slots_and_nodes(&other),
            slots_and_nodes(&reference),
            "map from {seed}"
        );
    }

    // A SET sent straight to the primary the map names is served there.
    let mut clients: Vec<RawClient> = map
        .shards()
        .iter()
        .map(|s| client_for(&s.primary.addr))
        .collect();
    let mut rng = fastrand::Rng::with_seed(0xc1);
    for i in 0..200 {
        let key = random_key(&mut rng);
        let shard = map
            .shard_index(key_slot(&key))
            .expect("every slot is served");
        let reply = clients[shard].cmd(&[b"SET", &key, format!("v{i}").as_bytes()]);
        assert_eq!(
            reply,
            b"+OK\r\n",
            "SET {} on {}",
            support::printable(&key),
            map.shards()[shard].primary.addr
        );
        // The same key on another primary is redirected: the check above can fail.
        let other = (shard + 1) % clients.len();
        let moved = clients[other].cmd(&[b"SET", &key, b"x"]);
        let expected = format!(
            "-MOVED {} {}\r\n",
            key_slot(&key),
            map.shards()[shard].primary.addr
        );
        assert_eq!(String::from_utf8_lossy(&moved), expected);
    }
}

/// A shard's ranges, primary id and address, replicas' ids and addresses.
type ShardView = (Vec<(u16, u16)>, String, String, Vec<(String, String)>);

/// Slots, primaries and replicas (ids and addresses) of a map, without health.
fn slots_and_nodes(map: &SlotMap) -> Vec<ShardView> {
    map.shards()
        .iter()
        .map(|s| {
            (
                s.ranges.clone(),
                s.primary.id.clone(),
                s.primary.addr.clone(),
                s.replicas
                    .iter()
                    .map(|r| (r.id.clone(), r.addr.clone()))
                    .collect(),
            )
        })
        .collect()
}

/// Writes a key to every primary, then waits (bounded) until `seed` reports every
/// replica `online`: Redis 7.0 calls a replica that has replicated nothing yet
/// `loading` in `CLUSTER SHARDS` and leaves it out of `CLUSTER SLOTS`.
async fn replicas_online(seed: &str) -> SlotMap {
    let map = shards_map(seed).await;
    for shard in map.shards() {
        let slot = shard.ranges[0].0;
        let key = (0u32..)
            .map(|i| format!("warm:{i}"))
            .find(|k| key_slot(k.as_bytes()) == slot)
            .expect("a key in the slot");
        let reply = client_for(&shard.primary.addr).cmd(&[b"SET", key.as_bytes(), b"1"]);
        assert_eq!(reply, b"+OK\r\n");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let map = shards_map(seed).await;
        let online = map.shards().iter().all(|s| {
            s.primary.health == Health::Online
                && s.replicas.iter().all(|r| r.health == Health::Online)
        });
        if online {
            return map;
        }
        assert!(Instant::now() < deadline, "replicas not online: {map:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn cluster_slots_gives_the_same_map_as_cluster_shards() {
    let cluster = Cluster::shared();
    for seed in cluster.seeds() {
        let shards = replicas_online(&seed).await;
        let slots = map::fetch_from(&seed, &cfg(), Source::Slots)
            .await
            .expect("CLUSTER SLOTS");
        assert_eq!(slots.covered(), 16384);
        assert_eq!(slots.shards().len(), 3);
        assert_eq!(slots, shards, "from {seed}");
    }
}

#[tokio::test]
async fn fetch_falls_back_to_cluster_slots_on_an_error_reply() {
    // A standalone server refuses both; the error names the fallback command, so
    // CLUSTER SLOTS was asked after CLUSTER SHARDS failed.
    let redis = RedisServer::start();
    let addr = format!("127.0.0.1:{}", redis.port());
    match map::fetch(&addr, &cfg()).await {
        Err(MapError::Refused { command, reply, .. }) => {
            assert_eq!(command, "CLUSTER SLOTS");
            assert!(reply.contains("cluster support disabled"), "{reply}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nothing listening: a connect error, not a hang.
    let gone = format!("127.0.0.1:{}", support::free_port());
    assert!(matches!(
        map::fetch(&gone, &cfg()).await,
        Err(MapError::Upstream(_))
    ));
}
