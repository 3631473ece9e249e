//! A local Redis Cluster for tests: 6 `redis-server --cluster-enabled yes` nodes on
//! free loopback ports (3 primaries, 3 replicas), joined with
//! `redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`, ready when
//! every node says `cluster_state:ok` with all 16384 slots and sees 3 primaries and
//! 3 replicas.
//!
//! [`Cluster::start`] gives a cluster of one's own (killed on drop, as any
//! [`RedisServer`]). [`Cluster::shared`] starts one per test binary, on first use,
//! that lives for the process: statics are never dropped, so a watchdog (`sh`,
//! detached from the test's pipes) waits for the test process to exit, then kills
//! the nodes (only processes whose command line still says `cluster-enabled`) and
//! removes their directories.

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use std::sync::Arc;

use redis_sidecar::config::{ClusterConfig, Config, ReadFrom};

use super::{free_port, redis_cli, redis_cli_with_timeout, signal_pid, RedisServer};

/// Nodes: 3 primaries, each with 1 replica.
pub const NODES: usize = 6;
/// How long the cluster may take to form before the helper panics.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(20);

/// A running 6-node cluster.
pub struct Cluster {
    nodes: Vec<RedisServer>,
    started_in: Duration,
}

/// A free port whose cluster bus port (+10000) is free and valid too.
pub fn cluster_port() -> u16 {
    for _ in 0..500 {
        let port = free_port();
        let Some(bus) = port.checked_add(10000) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair (port, port+10000) for a cluster node");
}

/// A `redis-server --cluster-enabled yes` node on a free port pair
/// ([`cluster_port`]), in no cluster yet.
pub fn start_node() -> RedisServer {
    RedisServer::start_on_port_with_args(
        cluster_port(),
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
        ],
    )
}

/// The 11 AutoBot databases, each on the cluster whose nodes listen on `ports`
/// (every one a seed, reads from primaries), with `first`'s proxy config
/// otherwise (an ephemeral loopback listener).
pub fn proxy_config_on(first: &RedisServer, ports: &[u16]) -> Config {
    let mut config = super::proxy_config(first);
    let cc = Arc::new(ClusterConfig {
        nodes: ports
            .iter()
            .map(|p| ("127.0.0.1".to_string(), *p))
            .collect(),
        read_from: ReadFrom::Primary,
    });
    for db in &mut config.databases {
        db.upstream.cluster = Some(cc.clone());
        db.upstream.db = 0;
    }
    config
}

impl Cluster {
    /// Starts and forms a cluster; panics (with the nodes' view) if it does not
    /// become healthy within [`FORM_TIMEOUT`].
    pub fn start() -> Cluster {
        let begun = Instant::now();
        let nodes: Vec<RedisServer> = (0..NODES).map(|_| start_node()).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let (out, status) = redis_cli_with_timeout(nodes[0].port(), &args, FORM_TIMEOUT);
        assert!(status.success(), "redis-cli --cluster create failed: {out}");
        let cluster = Cluster {
            nodes,
            started_in: Duration::ZERO,
        };
        let deadline = begun + FORM_TIMEOUT;
        loop {
            match cluster.not_ready() {
                None => break,
                Some(why) if Instant::now() >= deadline => {
                    panic!("the cluster did not form within {FORM_TIMEOUT:?}: {why}")
                }
                Some(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
        Cluster {
            started_in: begun.elapsed(),
            ..cluster
        }
    }

    /// What is not ready yet, on which node; `None` when every node agrees the
    /// cluster is complete.
    fn not_ready(&self) -> Option<String> {
        for node in &self.nodes {
            let (info, _) = redis_cli(node.port(), &["CLUSTER", "INFO"]);
            if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_ok:16384") {
                return Some(format!("{}: {}", node.port(), info.trim()));
            }
            let (nodes, _) = redis_cli(node.port(), &["CLUSTER", "NODES"]);
            let flags: Vec<&str> = nodes.lines().filter_map(|l| l.split(' ').nth(2)).collect();
            let primaries = flags.iter().filter(|f| f.contains("master")).count();
            let replicas = flags.iter().filter(|f| f.contains("slave")).count();
            let troubled = flags
                .iter()
                .any(|f| f.contains("fail") || f.contains("handshake") || f.contains("noaddr"));
            if primaries != 3 || replicas != 3 || troubled {
                return Some(format!("{}: {}", node.port(), nodes.trim()));
            }
        }
        None
    }

    /// The cluster of this test binary, started on first use, killed when the
    /// process exits.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let cluster = Cluster::start();
            cluster.watch_for_exit();
            cluster
        })
    }

    /// The watchdog of [`shared`](Self::shared). It is never waited for: it must
    /// outlive this process (and is reparented to init when the process exits).
    #[allow(clippy::zombie_processes)]
    fn watch_for_exit(&self) {
        let pids: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.pid())
            .map(|p| p.to_string())
            .collect();
        let dirs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("'{}'", n.dir().display()))
            .collect();
        // A node is killed only if it still looks like one (the pid may have been
        // reused): its arguments, or the title Redis gives itself in their place
        // (`redis-server 127.0.0.1:7000 [cluster]`, which is what /proc shows).
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.2; done; \
             for p in {pids}; do grep -qE 'cluster-enabled|\\[cluster\\]' /proc/$p/cmdline 2>/dev/null && kill -9 $p; done; \
             rm -rf {dirs}",
            me = std::process::id(),
            pids = pids.join(" "),
            dirs = dirs.join(" "),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the cluster watchdog (sh)");
    }

    /// The nodes, in the order they were started (which primary or replica each is
    /// is up to `redis-cli --cluster create`).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// `127.0.0.1:port` of every node (seed addresses).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect()
    }

    /// How long starting and forming took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The 11 AutoBot databases, each on this cluster (every node a seed,
    /// reads from primaries), listening on an ephemeral loopback port.
    pub fn proxy_config(&self) -> Config {
        proxy_config_on(&self.nodes[0], &self.ports())
    }

    /// `config`'s proxy in process, on a runtime of its own (2 workers) that
    /// must outlive it.
    pub fn start_proxy(config: Config) -> (tokio::runtime::Runtime, redis_sidecar::server::Proxy) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let proxy = rt.block_on(super::start_proxy(config));
        (rt, proxy)
    }

    /// SIGKILL to the node on `port` (the cluster is shared, so its servers cannot
    /// be borrowed mutably; the watchdog skips a pid that is gone).
    pub fn kill_node(&self, port: u16) {
        self.signal_node(port, "KILL");
    }

    /// SIGSTOP to the node on `port`: it keeps its sockets but answers nothing.
    pub fn pause_node(&self, port: u16) {
        self.signal_node(port, "STOP");
    }

    /// SIGCONT after [`pause_node`](Self::pause_node).
    pub fn resume_node(&self, port: u16) {
        self.signal_node(port, "CONT");
    }

    fn signal_node(&self, port: u16, signal: &str) {
        let node = self
            .nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"));
        let pid = node.pid().expect("the node's pid");
        signal_pid(pid, signal).unwrap_or_else(|e| panic!("SIG{signal} to node {port}: {e}"));
    }
}
