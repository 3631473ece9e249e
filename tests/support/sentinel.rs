//! A Redis Sentinel deployment on loopback for tests: 1 primary, 1 replica and 3
//! sentinels monitoring them as `mymaster` (quorum 2), with a short
//! `down-after-milliseconds` (1000) and `failover-timeout` (3000) so a failover
//! completes within a few seconds.
//!
//! Each test starts its own ([`SentinelGroup::start`]): tests in one binary run in
//! parallel and the failover tests change the topology, so sharing one would make
//! them see each other's failovers. Everything is killed on drop.
//!
//! The sentinels run as `redis-sentinel <conf>` (Debian's `redis-sentinel` package)
//! when that is on PATH, else as `redis-server <conf> --sentinel`
//! (`REDIS_SIDECAR_TEST_SENTINEL=redis-server` forces the fallback). Each gets a
//! writable config file in its own temp dir (sentinels rewrite it).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, redis_cli, RedisServer};

/// The master name the sentinels monitor.
pub const MASTER: &str = "mymaster";

/// One sentinel process.
pub struct Sentinel {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sentinel {
    /// Starts a sentinel on a free port monitoring `MASTER` at `127.0.0.1:primary`;
    /// `password` is its `requirepass`, if any.
    pub fn start(primary: u16, password: Option<&str>) -> Sentinel {
        Sentinel::start_with(primary, password, "")
    }

    /// [`Sentinel::start`] with `extra` lines in its config file (e.g. a `tls-port`).
    pub fn start_with(primary: u16, password: Option<&str>, extra: &str) -> Sentinel {
        let mut last = String::new();
        for _ in 0..5 {
            match Sentinel::try_start(primary, password, extra) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("sentinel failed to start: {last}");
    }

    fn try_start(primary: u16, password: Option<&str>, extra: &str) -> Result<Sentinel, String> {
        let dir = tempfile::Builder::new()
            .prefix("redis-sidecar-test-sentinel")
            .tempdir()
            .expect("create temp dir for a sentinel");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let mut text = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {log}\n\
             sentinel resolve-hostnames no\nsentinel announce-ip 127.0.0.1\n\
             sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 3000\n\
             sentinel parallel-syncs {MASTER} 1\n",
            dir = dir.path().display(),
            log = dir.path().join("sentinel.log").display(),
        );
        if let Some(pw) = password {
            text.push_str(&format!("requirepass {pw}\n"));
        }
        text.push_str(extra);
        fs::write(&conf, text).expect("write sentinel.conf");
        let mut s = Sentinel {
            child: Some(spawn(&conf)),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(Ok(Some(status))) = s.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("exited ({status}): {}", s.log()));
            }
            let (out, ok) = redis_cli(port, &auth_args(password, &["PING"]));
            if ok.success() && out.contains("PONG") {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(format!("no PONG within 5 s: {}", s.log()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }

    /// SIGSTOP: it keeps its connections but answers nothing (killed on drop).
    pub fn pause(&self) {
        let pid = self.child.as_ref().expect("sentinel running").id();
        let ok = Command::new("kill")
            .args(["-s", "STOP", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "SIGSTOP sentinel {pid}");
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-sentinel conf` or `redis-server conf --sentinel`.
fn spawn(conf: &Path) -> Child {
    let forced = std::env::var("REDIS_SIDECAR_TEST_SENTINEL").ok();
    let has_sentinel_bin = forced.as_deref() != Some("redis-server")
        && Command::new("redis-sentinel")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let mut cmd = if has_sentinel_bin {
        let mut c = Command::new("redis-sentinel");
        c.arg(conf);
        c
    } else {
        let mut c = Command::new("redis-server");
        c.arg(conf).arg("--sentinel");
        c
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a sentinel (redis-sentinel or redis-server --sentinel)")
}

/// `AUTH password` prepended for redis-cli (`-a`), when there is one.
fn auth_args<'a>(password: Option<&'a str>, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = Vec::new();
    if let Some(pw) = password {
        v.extend(["--no-auth-warning", "-a", pw]);
    }
    v.extend_from_slice(args);
    v
}

/// 1 primary, 1 replica, 3 sentinels.
pub struct SentinelGroup {
    /// The primary at start.
    pub primary: RedisServer,
    /// Its replica.
    pub replica: RedisServer,
    /// The sentinels.
    pub sentinels: Vec<Sentinel>,
    password: Option<String>,
}

impl SentinelGroup {
    /// Starts the group and waits (bounded) until the replica is in sync and the
    /// sentinels know the replica and each other (so a failover can be authorised).
    pub fn start() -> SentinelGroup {
        Self::start_with_password(None)
    }

    /// [`SentinelGroup::start`] with the sentinels requiring `password`.
    pub fn start_with_password(password: Option<&str>) -> SentinelGroup {
        let primary = RedisServer::start();
        let port = primary.port().to_string();
        let replica = RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &port]);
        let sentinels = (0..3)
            .map(|_| Sentinel::start(primary.port(), password))
            .collect();
        let group = SentinelGroup {
            primary,
            replica,
            sentinels,
            password: password.map(str::to_string),
        };
        group.wait_ready(Duration::from_secs(20));
        group
    }

    /// `host:port` of every sentinel, for the proxy's `sentinel.nodes`.
    pub fn nodes(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect()
    }

    /// Runs `args` on sentinel `i` with redis-cli.
    pub fn ask(&self, i: usize, args: &[&str]) -> String {
        let (out, _) = redis_cli(
            self.sentinels[i].port(),
            &auth_args(self.password.as_deref(), args),
        );
        out
    }

    /// The primary's port as sentinel `i` names it now.
    pub fn primary_port(&self, i: usize) -> Option<u16> {
        let out = self.ask(i, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]);
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// Waits until the replica is in sync and every sentinel sees 1 replica and 2
    /// other sentinels.
    pub fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let (info, _) = redis_cli(self.replica.port(), &["INFO", "replication"]);
            let synced = info.contains("master_link_status:up");
            let known = (0..self.sentinels.len()).all(|i| {
                let m = self.ask(i, &["SENTINEL", "MASTER", MASTER]);
                field(&m, "num-slaves") == Some("1")
                    && field(&m, "num-other-sentinels") == Some("2")
            });
            if synced && known {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "sentinel group not ready within {limit:?} (replica synced: {synced}); sentinel 0 log:\n{}",
                    self.sentinels[0].log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every sentinel names `port` as the primary; panics after `limit`.
    pub fn wait_primary(&self, port: u16, limit: Duration) {
        let deadline = Instant::now() + limit;
        while (0..self.sentinels.len()).any(|i| self.primary_port(i) != Some(port)) {
            if Instant::now() >= deadline {
                panic!(
                    "sentinels did not move to {port} within {limit:?}; sentinel 0 log:\n{}",
                    self.sentinels[0].log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The value after `name` in redis-cli's one-item-per-line output of a flat
/// field/value reply.
fn field<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = out.lines();
    while let Some(l) = lines.next() {
        if l.trim() == name {
            return lines.next().map(str::trim);
        }
    }
    None
}
