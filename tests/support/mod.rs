//! Integration-test helpers shared by `tests/*.rs` (use as `mod support;`).
//!
//! * [`RedisServer`] – a real `redis-server` on a free loopback port, in a temp dir.
//! * [`proxy_config`] / [`start_proxy`] – the in-process proxy (library API).
//! * [`BinaryProxy`] – the built `redis-sidecar` binary as a child process.
//! * [`RawClient`] / [`AsyncRawClient`] – byte-exact RESP clients that read exactly one
//!   reply frame at a time (RESP2 and RESP3), always with a timeout.
//! * [`resp_cmd`], [`resp_frame_len`], [`redis_cli`], [`free_port`].
//!
//! Nothing here may hang a test: every wait is bounded and panics with a clear message.
//! In-process proxy tests run on a tokio runtime; use [`AsyncRawClient`] there (a blocking
//! [`RawClient`] on a current-thread runtime would starve the proxy's tasks).
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use redis_sidecar::config::Config;
use redis_sidecar::server::Proxy;
pub mod cluster;
pub mod commands;
pub mod fake_upstream;
pub mod sentinel;
pub mod upstream;

/// Default bound for any single wait (reply, startup, shutdown).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a start is retried on a port race.
const START_ATTEMPTS: usize = 5;

// ---------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------

/// Ports already handed out by [`free_port`] in this test process, so two tests running
/// in parallel threads never get the same one.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback TCP port that was free a moment ago, below Linux's ephemeral range
/// (32768-60999): the kernel gives ports of that range to every socket bound to
/// port 0 and to outgoing connections, so a port from it could be taken by another
/// test's listener, or be an outgoing connection's own port (which then connects to
/// itself), before the test binds it or while it relies on nothing listening there.
/// Never returns the same port twice within one test process. Callers that then bind
/// it must still tolerate a race (the helpers here retry with a new port).
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // Test binaries run one after another; each starts at its own place.
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (LOW + start.wrapping_add(n.wrapping_mul(104_729)) % SPAN) as u16;
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        let handed = guard.get_or_insert_with(HashSet::new);
        if handed.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            handed.insert(port);
            return port;
        }
    }
    panic!("free_port: could not find an unused loopback port");
}

fn signal_pid(pid: u32, signal: &str) -> io::Result<()> {
    // `kill` from procps if present, otherwise the shell builtin.
    let status = match Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Command::new("sh")
            .args(["-c", &format!("kill -s {signal} {pid}")])
            .stderr(Stdio::null())
            .status()?,
        Err(e) => return Err(e),
    };
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "kill -s {signal} {pid} failed: {status}"
        )))
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn tail(path: &Path, max: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// Sends a raw `PING` to `addr` and returns true if one complete reply frame comes back
/// (any reply, including `-NOAUTH`, proves the server is serving).
fn answers_ping(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut c) = RawClient::try_connect_timeout(addr, timeout) else {
        return false;
    };
    if c.try_send(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    c.try_read_reply().is_ok()
}

// ---------------------------------------------------------------------------------------
// RedisServer
// ---------------------------------------------------------------------------------------

/// A real `redis-server` child process on a free 127.0.0.1 port, running in its own temp
/// dir with persistence off. Killed (SIGKILL) on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    extra_args: Vec<String>,
    dir: tempfile::TempDir,
    starts: u32,
    paused: bool,
}

impl RedisServer {
    /// Starts a server with default arguments. Panics if it cannot.
    pub fn start() -> RedisServer {
        Self::start_with_args(&[])
    }

    /// Starts a server with extra arguments appended, e.g. `&["--requirepass", "s3cret"]`.
    pub fn start_with_args(extra_args: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("redis-sidecar-test-redis")
            .tempdir()
            .expect("create temp dir for redis-server");
        let mut server = RedisServer {
            child: None,
            port: 0,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            dir,
            starts: 0,
            paused: false,
        };
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("redis-server failed to start after {START_ATTEMPTS} attempts: {last_err}");
    }

    /// Starts a server on exactly `port` (e.g. one a proxy was already pointed at while
    /// nothing listened there). Retries for a few seconds if the port is still busy;
    /// panics if it cannot start.
    pub fn start_on_port(port: u16) -> RedisServer {
        Self::start_on_port_with_args(port, &[])
    }

    /// [`start_on_port`](Self::start_on_port) with extra `redis-server` arguments.
    pub fn start_on_port_with_args(port: u16, extra_args: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("redis-sidecar-test-redis")
            .tempdir()
            .expect("create temp dir for redis-server");
        let mut server = RedisServer {
            child: None,
            port,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            dir,
            starts: 0,
            paused: false,
        };
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) if Instant::now() >= deadline => {
                    panic!("redis-server failed to start on port {port}: {e}")
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The port it listens on (stable across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pid of the running process, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process exists (a paused server is still running).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The current log file's last few KiB (for assertion messages).
    pub fn log(&self) -> String {
        tail(&self.log_path(), 8192)
    }

    /// A raw client connected to this server.
    pub fn client(&self) -> RawClient {
        RawClient::connect(self.addr())
    }

    /// Runs `redis-cli -p <port> args...` against this server.
    pub fn cli(&self, args: &[&str]) -> (String, ExitStatus) {
        redis_cli(self.port, args)
    }

    /// SIGKILL: the process dies immediately, connections are reset.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Graceful stop (SIGTERM, bounded wait, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                let _ = signal_pid(child.id(), "CONT");
            }
            if signal_pid(child.id(), "TERM").is_err()
                || wait_child(&mut child, DEFAULT_TIMEOUT).is_none()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.paused = false;
    }

    /// Stops (gracefully, if still running) and starts again on the same port. Data is not
    /// persisted, so the restarted server is empty. Panics if it cannot come back.
    pub fn restart(&mut self) {
        self.stop();
        // The port was just released; someone could grab it in between, so retry for a bit.
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("redis-server failed to restart on port {}: {e}", self.port)
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// SIGSTOP: the process keeps its sockets but stops answering (simulates a hang).
    pub fn pause(&mut self) {
        let pid = self.pid().expect("pause: redis-server is not running");
        signal_pid(pid, "STOP").expect("SIGSTOP redis-server");
        self.paused = true;
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        let pid = self.pid().expect("resume: redis-server is not running");
        signal_pid(pid, "CONT").expect("SIGCONT redis-server");
        self.paused = false;
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("redis-{}.log", self.starts))
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log_path = self.log_path();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log_path)
            .args(&self.extra_args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
                "redis-server is not installed (not found on PATH). Install it with \
                 `apt-get install redis-server redis-tools`, or run `bash scripts/test.sh`, \
                 which installs it when run as root."
            ),
            Err(e) => panic!("failed to spawn redis-server: {e}"),
        };
        self.child = Some(child);
        let addr = self.addr();
        let started = Instant::now();
        let deadline = started + DEFAULT_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("child");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited during startup ({status}); log:\n{}",
                    self.port,
                    tail(&log_path, 4096)
                ));
            }
            if answers_ping(addr, Duration::from_millis(500)) {
                // Make sure it is *our* process that answered (not another server that won a
                // port race): its own log says it is listening, and it is still alive.
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                let ours = log.contains("Ready to accept connections")
                    || started.elapsed() > Duration::from_secs(1);
                let child = self.child.as_mut().expect("child");
                if ours && matches!(child.try_wait(), Ok(None)) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "redis-server on port {} did not answer PING within {:?}; log:\n{}",
                    self.port,
                    DEFAULT_TIMEOUT,
                    tail(&log_path, 4096)
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// In-process proxy (library API)
// ---------------------------------------------------------------------------------------

/// The 11 AutoBot databases on `redis`, listening on 127.0.0.1:0 (an ephemeral port; read
/// it back with `proxy.local_addr()`).
pub fn proxy_config(redis: &RedisServer) -> Config {
    let mut config = Config::for_upstream("127.0.0.1", redis.port());
    config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    config
}

/// Turns off the resilience layer's retries and circuit breaker for every database
/// (retry_attempts 0, a failure threshold that is never reached), so a test sees each
/// upstream failure as it happens.
pub fn without_retries_or_breaker(config: &mut Config) {
    for db in &mut config.databases {
        db.upstream.resilience.retry_attempts = 0;
        db.upstream.resilience.failure_threshold = u32::MAX;
    }
}

/// Starts the proxy on the current tokio runtime. Panics if it cannot bind.
pub async fn start_proxy(config: Config) -> Proxy {
    let listen = config.listen;
    match Proxy::start(config).await {
        Ok(proxy) => proxy,
        Err(e) => panic!("Proxy::start (listen {listen}) failed: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// BinaryProxy: the built binary as a child process
// ---------------------------------------------------------------------------------------

/// The 11 database names, in index order.
pub const DATABASE_NAMES: [&str; 11] = redis_sidecar::config::AUTOBOT_DATABASES;

/// The AutoBot `redis-databases.yaml` for all 11 databases (db 0..10) on `host:port`.
pub fn databases_yaml(host: &str, port: u16) -> String {
    let mut yaml = String::from("redis_databases:\n");
    for (i, name) in DATABASE_NAMES.iter().enumerate() {
        yaml.push_str(&format!("  {name}:\n    db: {i}\n"));
    }
    yaml.push_str(&format!("host: {host}\nport: {port}\n"));
    yaml
}

/// Environment variables that would override the config file; cleared for the child so
/// the developer's shell cannot change a test's outcome (pass them via `envs` on purpose).
const OVERRIDE_ENV: [&str; 6] = [
    "AUTOBOT_REDIS_HOST",
    "AUTOBOT_REDIS_PORT",
    "AUTOBOT_REDIS_PASSWORD",
    "REDIS_SIDECAR_LISTEN",
    "REDIS_SIDECAR_CLIENT_PASSWORD",
    "RUST_LOG",
];

/// The built `redis-sidecar` binary, started with `--config <tempfile> --listen
/// 127.0.0.1:<free port>`. Its stdout+stderr go to a log file ([`log`](Self::log)).
/// Killed (SIGKILL) on drop.
pub struct BinaryProxy {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    status: Option<ExitStatus>,
}

impl BinaryProxy {
    /// Path of the binary under test.
    pub fn bin_path() -> &'static str {
        env!("CARGO_BIN_EXE_redis-sidecar")
    }

    /// Runs the binary in front of `redis` with the standard 11-database YAML.
    pub fn start(redis: &RedisServer) -> BinaryProxy {
        Self::start_with(&databases_yaml("127.0.0.1", redis.port()), &[], &[])
    }

    /// Runs the binary with the given YAML, extra CLI args (after `--config`/`--listen`) and
    /// extra environment variables. Waits (bounded) until it accepts TCP connections;
    /// retries on a new port if the chosen one was taken.
    pub fn start_with(yaml: &str, extra_args: &[&str], envs: &[(&str, &str)]) -> BinaryProxy {
        Self::start_wrapped(&[], yaml, extra_args, envs)
    }

    /// Like [`BinaryProxy::start_with`], but run through `wrapper` (a command and
    /// its arguments that then run the binary, e.g. `prlimit --nofile=64:64`).
    pub fn start_wrapped(
        wrapper: &[&str],
        yaml: &str,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> BinaryProxy {
        let dir = tempfile::Builder::new()
            .prefix("redis-sidecar-test-proxy")
            .tempdir()
            .expect("create temp dir for the proxy");
        let config_path = dir.path().join("redis-databases.yaml");
        fs::write(&config_path, yaml).expect("write proxy config");
        let mut last_err = String::new();
        for attempt in 0..START_ATTEMPTS {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
            let log_path = dir.path().join(format!("proxy-{attempt}.log"));
            let log = fs::File::create(&log_path).expect("create proxy log");
            let mut cmd = match wrapper.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(Self::bin_path());
                    c
                }
                None => Command::new(Self::bin_path()),
            };
            cmd.arg("--config")
                .arg(&config_path)
                .arg("--listen")
                .arg(addr.to_string())
                .args(extra_args)
                // Parallel test proxies must not fight over the default 9180.
                .args(if extra_args.contains(&"--metrics-listen") {
                    &[][..]
                } else {
                    &["--metrics-listen", "127.0.0.1:0"][..]
                })
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log);
            for key in OVERRIDE_ENV {
                cmd.env_remove(key);
            }
            for (k, v) in envs {
                cmd.env(k, v);
            }
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", Self::bin_path()));
            let deadline = Instant::now() + Duration::from_secs(10);
            let outcome = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break Err(format!("exited during startup ({status})"));
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    // Still alive after accepting => it is our listener, not a port thief.
                    thread::sleep(Duration::from_millis(20));
                    match child.try_wait() {
                        Ok(None) => break Ok(()),
                        _ => break Err("exited right after startup".to_string()),
                    }
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err("did not accept connections within 10s".to_string());
                }
                thread::sleep(Duration::from_millis(20));
            };
            match outcome {
                Ok(()) => {
                    return BinaryProxy {
                        child: Some(child),
                        addr,
                        dir,
                        status: None,
                    }
                }
                Err(e) => {
                    let log = tail(&log_path, 4096);
                    last_err = format!("redis-sidecar on {addr} {e}; output:\n{log}");
                    // Only a port race is worth retrying; anything else fails fast.
                    if !log.to_ascii_lowercase().contains("address already in use")
                        && !log.to_ascii_lowercase().contains("addrinuse")
                    {
                        break;
                    }
                }
            }
        }
        panic!("redis-sidecar failed to start: {last_err}");
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Its pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Path of the config file it was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("redis-databases.yaml")
    }

    /// `GET /metrics` on the metrics address the binary logged (it must have been
    /// started with a metrics listener).
    pub fn metrics(&self) -> String {
        let log = self.log();
        let addr: SocketAddr = log
            .split("metrics at http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("request");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// Its combined stdout/stderr so far (all start attempts' last log).
    pub fn log(&self) -> String {
        let mut logs: Vec<PathBuf> = fs::read_dir(self.dir.path())
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        logs.last().map(|p| tail(p, 64 * 1024)).unwrap_or_default()
    }

    /// A raw client connected to the proxy.
    pub fn client(&self) -> RawClient {
        RawClient::connect(self.addr)
    }

    /// Sends a signal by name, e.g. `"TERM"`, `"INT"`, `"HUP"`.
    pub fn send_signal(&self, signal: &str) {
        let pid = self.pid().expect("send_signal: proxy is not running");
        signal_pid(pid, signal).unwrap_or_else(|e| panic!("signal {signal}: {e}"));
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.status {
            return Some(status);
        }
        let child = self.child.as_mut()?;
        let status = wait_child(child, timeout)?;
        self.status = Some(status);
        Some(status)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if self.status.is_none() {
                let _ = child.kill();
                self.status = child.wait().ok();
            }
        }
    }
}

impl Drop for BinaryProxy {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// RESP encoding and framing
// ---------------------------------------------------------------------------------------

/// Encodes a request as a RESP multibulk: `*N\r\n$len\r\narg\r\n...`.
pub fn resp_cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `$len\r\ndata\r\n`.
pub fn resp_bulk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// `*N\r\n` followed by the already-encoded items.
pub fn resp_array(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", items.len()).into_bytes();
    for item in items {
        out.extend_from_slice(item);
    }
    out
}

/// Length of the first complete RESP2/RESP3 frame at the start of `buf`:
/// `Ok(Some(n))` if `buf[..n]` is one whole frame, `Ok(None)` if more bytes are needed,
/// `Err` if the bytes are not RESP.
///
/// Simple lines: `+ - : _ , # (`. Length-prefixed: `$ = !` (`-1` = nil). Aggregates with a
/// count: `* ~ >` (`-1` = nil), `%` maps (2 frames per entry), `|` attributes (2 per entry,
/// then the real frame follows). Streamed (`?`) lengths are not supported.
pub fn resp_frame_len(buf: &[u8]) -> Result<Option<usize>, String> {
    FrameScan::new().advance(buf)
}

/// A resumable [`resp_frame_len`]: when a frame is incomplete it remembers how far it
/// got (at an element boundary), so feeding it a growing buffer costs linear time even
/// for a reply with millions of elements. Reset with [`FrameScan::new`] after a frame.
#[derive(Debug, Clone)]
pub struct FrameScan {
    pos: usize,
    pending: u64,
}

impl Default for FrameScan {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameScan {
    /// A scanner at the start of a frame.
    pub fn new() -> FrameScan {
        FrameScan { pos: 0, pending: 1 }
    }

    /// Continues scanning `buf` (the same frame's bytes, possibly longer than last time).
    /// `Ok(Some(n))`: `buf[..n]` is the whole frame and the scanner is reset.
    pub fn advance(&mut self, buf: &[u8]) -> Result<Option<usize>, String> {
        let n = scan_from(buf, &mut self.pos, &mut self.pending)?;
        if n.is_some() {
            *self = FrameScan::new();
        }
        Ok(n)
    }
}

fn scan_from(
    buf: &[u8],
    saved_pos: &mut usize,
    saved_pending: &mut u64,
) -> Result<Option<usize>, String> {
    let mut pos = *saved_pos;
    // Frames still to read; a pre-order walk needs only this counter, not a stack.
    let mut pending: u64 = *saved_pending;
    while pending > 0 {
        // Element boundary: remember it, so an incomplete element is resumed from here.
        *saved_pos = pos;
        *saved_pending = pending;
        let Some(rel) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line_end = pos + rel;
        if line_end == pos {
            return Err(format!("empty line at offset {pos}"));
        }
        let kind = buf[pos];
        let body = &buf[pos + 1..line_end];
        let start = pos;
        pending -= 1;
        let parse_len = move |body: &[u8]| -> Result<i64, String> {
            std::str::from_utf8(body)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|n| *n >= -1)
                .ok_or_else(|| {
                    format!(
                        "bad length {:?} for type {:?} at offset {start}",
                        String::from_utf8_lossy(body),
                        kind as char
                    )
                })
        };
        pos = line_end + 2;
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
            b'$' | b'=' | b'!' => {
                let len = parse_len(body)?;
                if len >= 0 {
                    let end = pos + len as usize;
                    if buf.len() < end + 2 {
                        return Ok(None);
                    }
                    if &buf[end..end + 2] != b"\r\n" {
                        return Err(format!("bulk of length {len} at offset {pos} lacks CRLF"));
                    }
                    pos = end + 2;
                }
            }
            b'*' | b'~' | b'>' => {
                let n = parse_len(body)?;
                if n > 0 {
                    pending += n as u64;
                }
            }
            b'%' => {
                let n = parse_len(body)?;
                if n > 0 {
                    pending += 2 * n as u64;
                }
            }
            b'|' => {
                let n = parse_len(body)?;
                pending += 2 * n.max(0) as u64 + 1;
            }
            other => {
                return Err(format!(
                    "unknown RESP type byte {:?} at offset {start}",
                    other as char
                ))
            }
        }
    }
    Ok(Some(pos))
}

fn show(bytes: &[u8]) -> String {
    const MAX: usize = 512;
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
    let s = format!("{s:?}");
    if bytes.len() > MAX {
        format!("{s}... ({} bytes)", bytes.len())
    } else {
        s
    }
}

fn take_frame(buf: &mut Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    match resp_frame_len(buf) {
        Ok(Some(n)) => {
            let frame = buf[..n].to_vec();
            buf.drain(..n);
            Ok(Some(frame))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{e}; buffer: {}", show(buf)),
        )),
    }
}

fn is_closed_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

// ---------------------------------------------------------------------------------------
// RawClient (blocking, std)
// ---------------------------------------------------------------------------------------

/// A blocking byte-level RESP client. Every read is bounded by `timeout`
/// (default [`DEFAULT_TIMEOUT`]); the panicking methods panic on timeout.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl RawClient {
    /// Connects or panics.
    pub fn connect(addr: impl ToSocketAddrs) -> RawClient {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().expect("resolve").collect();
        let addr = *addrs.first().expect("no address");
        Self::try_connect_timeout(addr, DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Connects with a bounded connect timeout; reads/writes use the same timeout.
    pub fn try_connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<RawClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(RawClient {
            stream,
            buf: Vec::new(),
            timeout,
        })
    }

    /// Changes the read/write timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        self.stream.set_write_timeout(Some(timeout)).unwrap();
    }

    /// The underlying stream (e.g. to `shutdown(Write)`).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes all bytes or panics.
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .unwrap_or_else(|e| panic!("send {}: {e}", show(bytes)));
    }

    /// Writes all bytes.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends `args` as a multibulk and reads one reply.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send(&resp_cmd(args));
        self.read_reply()
    }

    /// Reads exactly one complete reply frame (raw bytes); panics on timeout, EOF or junk.
    pub fn read_reply(&mut self) -> Vec<u8> {
        self.try_read_reply()
            .unwrap_or_else(|e| panic!("read_reply: {e}"))
    }

    /// Reads exactly one complete reply frame. Errors: `TimedOut`/`WouldBlock` when nothing
    /// complete arrived within the timeout, `UnexpectedEof` when the peer closed,
    /// `InvalidData` for non-RESP bytes. Bytes after the frame stay buffered.
    pub fn try_read_reply(&mut self) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + self.timeout;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(frame) = take_frame(&mut self.buf)? {
                return Ok(frame);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no complete reply within {:?}; buffered: {}",
                        self.timeout,
                        show(&self.buf)
                    ),
                ));
            }
            self.stream.set_read_timeout(Some(deadline - now))?;
            let read = self.stream.read(&mut chunk);
            self.stream.set_read_timeout(Some(self.timeout))?;
            match read {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("connection closed; buffered: {}", show(&self.buf)),
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads `n` replies.
    pub fn read_replies(&mut self, n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|_| self.read_reply()).collect()
    }

    /// Asserts nothing arrives within `wait` (and that nothing is already buffered).
    pub fn assert_no_reply(&mut self, wait: Duration) {
        let saved = self.timeout;
        self.set_timeout(wait);
        let got = self.try_read_reply();
        self.set_timeout(saved);
        match got {
            Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut) && self.buf.is_empty() => {}
            other => panic!("expected no reply within {wait:?}, got {other:?}"),
        }
    }

    /// Reads until the peer closes (EOF or reset) and returns every byte not yet consumed.
    /// Panics if the connection is still open after the timeout.
    pub fn read_until_closed(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + self.timeout;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "connection still open after {:?}; received: {}",
                    self.timeout,
                    show(&self.buf)
                );
            }
            self.stream.set_read_timeout(Some(deadline - now)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_closed_error(&e) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("read_until_closed: {e}"),
            }
        }
        self.stream.set_read_timeout(Some(self.timeout)).unwrap();
        std::mem::take(&mut self.buf)
    }
}

// ---------------------------------------------------------------------------------------
// AsyncRawClient (tokio)
// ---------------------------------------------------------------------------------------

/// The tokio twin of [`RawClient`], for tests that run the proxy in-process.
pub struct AsyncRawClient {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl AsyncRawClient {
    /// Connects (bounded by [`DEFAULT_TIMEOUT`]) or panics.
    pub async fn connect(addr: SocketAddr) -> AsyncRawClient {
        Self::try_connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Connects, bounded by [`DEFAULT_TIMEOUT`].
    pub async fn try_connect(addr: SocketAddr) -> io::Result<AsyncRawClient> {
        let stream = tokio::time::timeout(DEFAULT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(AsyncRawClient {
            stream,
            buf: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Changes the read/write timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The underlying stream.
    pub fn stream_mut(&mut self) -> &mut tokio::net::TcpStream {
        &mut self.stream
    }

    /// Writes all bytes or panics.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .await
            .unwrap_or_else(|e| panic!("send {}: {e}", show(bytes)));
    }

    /// Writes all bytes (bounded by the timeout).
    pub async fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        tokio::time::timeout(self.timeout, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
    }

    /// Sends `args` as a multibulk and reads one reply.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send(&resp_cmd(args)).await;
        self.read_reply().await
    }

    /// Reads exactly one complete reply frame; panics on timeout, EOF or junk.
    pub async fn read_reply(&mut self) -> Vec<u8> {
        self.try_read_reply()
            .await
            .unwrap_or_else(|e| panic!("read_reply: {e}"))
    }

    /// Reads exactly one complete reply frame (see [`RawClient::try_read_reply`]).
    pub async fn try_read_reply(&mut self) -> io::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(frame) = take_frame(&mut self.buf)? {
                return Ok(frame);
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no complete reply within {:?}; buffered: {}",
                            self.timeout,
                            show(&self.buf)
                        ),
                    ))
                }
                Ok(Ok(0)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("connection closed; buffered: {}", show(&self.buf)),
                    ))
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// Reads `n` replies.
    pub async fn read_replies(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.read_reply().await);
        }
        out
    }

    /// Asserts nothing arrives within `wait` (and that nothing is already buffered).
    pub async fn assert_no_reply(&mut self, wait: Duration) {
        let saved = self.timeout;
        self.timeout = wait;
        let got = self.try_read_reply().await;
        self.timeout = saved;
        match got {
            Err(e) if e.kind() == io::ErrorKind::TimedOut && self.buf.is_empty() => {}
            other => panic!("expected no reply within {wait:?}, got {other:?}"),
        }
    }

    /// Reads until the peer closes (EOF or reset) and returns every byte not yet consumed.
    /// Panics if still open after the timeout.
    pub async fn read_until_closed(&mut self) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => panic!(
                    "connection still open after {:?}; received: {}",
                    self.timeout,
                    show(&self.buf)
                ),
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) if is_closed_error(&e) => break,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => panic!("read_until_closed: {e}"),
            }
        }
        std::mem::take(&mut self.buf)
    }
}

// ---------------------------------------------------------------------------------------
// redis-cli
// ---------------------------------------------------------------------------------------

/// Runs `redis-cli -h 127.0.0.1 -p PORT args...` (bounded by 10 s) and returns its stdout
/// and exit status. Panics if redis-cli is missing or hangs.
pub fn redis_cli(port: u16, args: &[&str]) -> (String, ExitStatus) {
    redis_cli_with_timeout(port, args, Duration::from_secs(10))
}

/// [`redis_cli`] with an explicit timeout.
pub fn redis_cli_with_timeout(port: u16, args: &[&str], timeout: Duration) -> (String, ExitStatus) {
    let mut child = match Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
            "redis-cli is not installed (not found on PATH). Install it with \
             `apt-get install redis-tools`, or run `bash scripts/test.sh`."
        ),
        Err(e) => panic!("failed to spawn redis-cli: {e}"),
    };
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let status = match wait_child(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let err = err_reader.join().unwrap_or_default();
            panic!(
                "redis-cli -p {port} {args:?} did not finish within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&err)
            );
        }
    };
    let out = out_reader.join().unwrap_or_default();
    let _ = err_reader.join();
    (String::from_utf8_lossy(&out).into_owned(), status)
}

// ---------------------------------------------------------------------------------------
// Big pipelines, redis-rs clients, INFO text, fd limits
// ---------------------------------------------------------------------------------------

/// Sends `request` (any number of requests back to back) on a new connection to `addr`
/// while reading replies concurrently (so neither side can block on a full socket
/// buffer), and returns exactly `replies` raw reply frames, in order. Panics if they do
/// not all arrive within `timeout`, or if the peer closes early.
pub async fn raw_pipeline(
    addr: SocketAddr,
    request: Vec<u8>,
    replies: usize,
    timeout: Duration,
) -> Vec<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::time::timeout(DEFAULT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect to {addr} timed out"))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_nodelay(true).expect("nodelay");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let r = wr.write_all(&request).await;
        // Keep the write half open until the reader is done (closing it early would be
        // a half-close, which some servers treat as the end of the session).
        (r, wr)
    });
    let read = async {
        let mut out = Vec::with_capacity(replies);
        let mut buf: Vec<u8> = Vec::new();
        let mut start = 0usize;
        let mut scan = FrameScan::new();
        let mut chunk = vec![0u8; 256 * 1024];
        while out.len() < replies {
            match scan.advance(&buf[start..]) {
                Ok(Some(n)) => {
                    out.push(buf[start..start + n].to_vec());
                    start += n;
                    if start > 1024 * 1024 {
                        buf.drain(..start);
                        start = 0;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => panic!("raw_pipeline: bad reply after {} frames: {e}", out.len()),
            }
            match rd.read(&mut chunk).await {
                Ok(0) => panic!(
                    "raw_pipeline: connection closed after {} of {replies} replies; last: {:?}",
                    out.len(),
                    out.last().map(|r| show(r))
                ),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("raw_pipeline: read after {} replies: {e}", out.len()),
            }
        }
        out
    };
    let out = match tokio::time::timeout(timeout, read).await {
        Ok(out) => out,
        Err(_) => panic!("raw_pipeline: not all {replies} replies arrived within {timeout:?}"),
    };
    let (r, _wr) = writer.await.expect("writer task");
    r.expect("raw_pipeline: write");
    out
}

/// `redis://127.0.0.1:port/db`.
pub fn redis_url(addr: SocketAddr, db: u32) -> String {
    format!("redis://127.0.0.1:{}/{db}", addr.port())
}

/// A bb8 pool of redis-rs multiplexed connections to `addr`, database `db`
/// (redis-rs sends `SELECT db` on connect when `db != 0`).
pub async fn bb8_pool(
    addr: SocketAddr,
    db: u32,
    size: u32,
) -> bb8_redis::bb8::Pool<bb8_redis::RedisConnectionManager> {
    let manager = bb8_redis::RedisConnectionManager::new(redis_url(addr, db)).expect("redis url");
    bb8_redis::bb8::Pool::builder()
        .max_size(size)
        .connection_timeout(DEFAULT_TIMEOUT)
        .build(manager)
        .await
        .expect("build bb8 pool")
}

/// One redis-rs multiplexed connection to `addr`/`db` with a response timeout of
/// `response_timeout` (redis-rs's default is 500 ms, too short for huge values).
pub async fn redis_rs_conn(
    addr: SocketAddr,
    db: u32,
    response_timeout: Duration,
) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis_url(addr, db)).expect("redis url");
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(DEFAULT_TIMEOUT))
        .set_response_timeout(Some(response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap_or_else(|e| panic!("redis-rs connect to {addr}/{db}: {e}"))
}

/// The payload of a raw bulk-string reply (`$n\r\n...\r\n`); panics on anything else.
pub fn bulk_payload(reply: &[u8]) -> Vec<u8> {
    assert!(reply.starts_with(b"$"), "not a bulk reply: {}", show(reply));
    let nl = reply
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("bulk header");
    let n: usize = std::str::from_utf8(&reply[1..nl])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad bulk length: {}", show(reply)));
    assert_eq!(reply.len(), nl + 2 + n + 2, "bulk frame length");
    reply[nl + 2..nl + 2 + n].to_vec()
}

/// Parses INFO-style text (`# Section` headers, `key:value` lines) into a map.
pub fn parse_info(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Like [`parse_info`], but only the lines of section `name` (`# Name`).
pub fn parse_info_section(text: &str, name: &str) -> std::collections::HashMap<String, String> {
    let mut inside = false;
    let mut lines = Vec::new();
    for l in text.lines().map(str::trim_end) {
        if let Some(h) = l.strip_prefix("# ") {
            inside = h.eq_ignore_ascii_case(name);
        } else if inside {
            lines.push(l);
        }
    }
    parse_info(&lines.join("\n"))
}

/// The section names (`# Name` lines) of INFO-style text, in order.
pub fn info_sections(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim_end().strip_prefix("# "))
        .map(str::to_string)
        .collect()
}

/// This process's soft limit on open files (from /proc/self/limits), if known.
pub fn fd_soft_limit() -> Option<u64> {
    let text = fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// How many file descriptors this process has open now (from /proc/self/fd), if known.
pub fn open_fds() -> Option<usize> {
    fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// Waits (at most 5 s) until the proxy has learnt what its upstream is (`HELLO`
/// through `c` names Redis): the health probe task asks it at start.
pub async fn upstream_learnt(c: &mut AsyncRawClient) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&c.cmd(&[b"HELLO"]).await).contains("$5\r\nredis\r\n") {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream's HELLO was not learnt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shows bytes for assertion messages (lossy UTF-8, truncated).
pub fn printable(bytes: &[u8]) -> String {
    show(bytes)
}

/// Runs the `redis-sidecar` binary to completion with `args` (override variables
/// cleared, then `envs` set), bounded by `timeout`; returns (stdout, stderr, status).
/// For one-shot modes such as `--check-config`. Panics if it does not exit in time.
pub fn run_binary(
    args: &[&str],
    envs: &[(&str, &str)],
    timeout: Duration,
) -> (String, String, ExitStatus) {
    let mut cmd = Command::new(BinaryProxy::bin_path());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for key in OVERRIDE_ENV {
        cmd.env_remove(key);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", BinaryProxy::bin_path()));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let Some(status) = wait_child(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-sidecar {args:?} did not exit within {timeout:?}");
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        status,
    )
}

// ---------------------------------------------------------------------------------------
// In-process proxy on a runtime of its own
// ---------------------------------------------------------------------------------------

/// The in-process proxy on a tokio runtime of its own, in its own thread, built as the
/// binary builds it for `--threads N` (1: current-thread runtime, the default), so the
/// test's clients do not share the proxy's threads. With `RUST_LOG` set, the proxy's
/// tracing goes to stderr (once per test process). Shut down on drop.
pub struct ProxyThread {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ProxyThread {
    /// Starts the proxy with `config` on a runtime of `threads` worker threads.
    pub fn start(config: Config, threads: usize) -> ProxyThread {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(io::stderr)
                .try_init();
        }
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let mut rt = if threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(threads);
                b
            };
            let rt = rt.enable_all().build().expect("proxy runtime");
            rt.block_on(async move {
                let proxy = start_proxy(config).await;
                let _ = addr_tx.send(proxy.local_addr());
                let _ = stopped.await;
                proxy.shutdown().await;
            });
        });
        let addr = addr_rx
            .recv_timeout(DEFAULT_TIMEOUT)
            .expect("the proxy thread did not start in time");
        ProxyThread {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ProxyThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            // Bounded: shutdown drains for at most the config's shutdown_timeout.
            let deadline = Instant::now() + Duration::from_secs(15);
            while !t.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP (the metrics listener)
// ---------------------------------------------------------------------------------------

/// A minimal HTTP/1.1 GET; returns (status code, headers, body). Bounded by 5 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no complete response within 5 s"));
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    (status, head.to_string(), body.to_string())
}
