//! A scripted fake Redis for fault-injection tests: a tokio `TcpListener` on
//! 127.0.0.1:0 that speaks just enough RESP (multibulk requests in, RESP2 replies out).
//!
//! * Always answered: `PING [msg]`, `SELECT n`, `AUTH …`, `ECHO msg`.
//! * A tiny in-memory keyspace (one for every db): `GET`, `SET`, `DEL`, `INCR`,
//!   `RPUSH`, `LRANGE key 0 -1`. Anything else gets `-ERR unknown command`.
//! * Programmable faults ([`FakeUpstream::fault`]): on the n-th occurrence (counted over
//!   all connections, from 1) of a command, do [`Fault::ApplyThenClose`],
//!   [`Fault::Close`], [`Fault::ApplyThenStall`] or [`Fault::Stall`] instead of replying.
//! * Counts every command it received ([`FakeUpstream::received`]), so a test can tell
//!   whether the proxy resent one.
//!
//! Must be started inside a tokio runtime; every task it spawns is aborted on drop.
//! Nothing here blocks: callers bound their own waits.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// What the fake does with the command a fault matches, instead of answering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Execute the command, then close the connection without replying (the client
    /// cannot know whether it ran: the "may have been executed" case).
    ApplyThenClose,
    /// Close the connection without executing or answering the command.
    Close,
    /// Execute the command, then never answer anything on this connection again.
    ApplyThenStall,
    /// Never answer this command or anything after it on this connection (it is not
    /// executed: a frozen server).
    Stall,
}

#[derive(Debug)]
struct Rule {
    command: String,
    nth: u64,
    fault: Fault,
}

#[derive(Debug, Default)]
struct Inner {
    /// Upper-case command name → how many were received (processed or faulted;
    /// commands read on a stalled connection are not counted).
    received: HashMap<String, u64>,
    rules: Vec<Rule>,
    strings: HashMap<Vec<u8>, Vec<u8>>,
    lists: HashMap<Vec<u8>, Vec<Vec<u8>>>,
    /// Every request received, as `(connection number, upper-case command name)`.
    log: Vec<(u64, String)>,
    connections: u64,
    /// Stalled connections that the peer has since closed.
    stalled_closed: u64,
    tasks: Vec<AbortHandle>,
}

/// A running fake upstream. See the [module docs](self).
#[derive(Debug)]
pub struct FakeUpstream {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl FakeUpstream {
    /// Binds 127.0.0.1:0 and starts accepting on the current tokio runtime.
    pub async fn start() -> FakeUpstream {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("fake upstream: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake upstream: local_addr");
        let inner = Arc::new(Mutex::new(Inner::default()));
        let shared = inner.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let conn_id = {
                    let mut g = lock(&shared);
                    g.connections += 1;
                    g.connections
                };
                let task = tokio::spawn(serve(stream, conn_id, shared.clone()));
                let mut g = lock(&shared);
                g.tasks.retain(|t| !t.is_finished());
                g.tasks.push(task.abort_handle());
            }
        });
        lock(&inner).tasks.push(accept.abort_handle());
        FakeUpstream { addr, inner }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// On the `nth` (1-based, counted over all connections) `command` received, do
    /// `fault` instead of answering. `command` is matched case-insensitively.
    pub fn fault(&self, command: &str, nth: u64, fault: Fault) {
        lock(&self.inner).rules.push(Rule {
            command: command.to_ascii_uppercase(),
            nth,
            fault,
        });
    }

    /// How many `command`s were received (including the one a fault matched).
    pub fn received(&self, command: &str) -> u64 {
        lock(&self.inner)
            .received
            .get(&command.to_ascii_uppercase())
            .copied()
            .unwrap_or(0)
    }

    /// Every request received so far: (connection number, upper-case command name).
    pub fn log(&self) -> Vec<(u64, String)> {
        lock(&self.inner).log.clone()
    }

    /// Connections accepted so far (health probes included).
    pub fn connections(&self) -> u64 {
        lock(&self.inner).connections
    }

    /// Stalled connections that the client (the proxy) has closed since.
    pub fn stalled_connections_closed(&self) -> u64 {
        lock(&self.inner).stalled_closed
    }

    /// Sets a string key directly.
    pub fn set(&self, key: &[u8], value: &[u8]) {
        let mut g = lock(&self.inner);
        g.lists.remove(key);
        g.strings.insert(key.to_vec(), value.to_vec());
    }

    /// A string key's value.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        lock(&self.inner).strings.get(key).cloned()
    }

    /// A list key's items.
    pub fn list(&self, key: &[u8]) -> Vec<Vec<u8>> {
        lock(&self.inner)
            .lists
            .get(key)
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for t in lock(&self.inner).tasks.drain(..) {
            t.abort();
        }
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What to do after a request.
enum Next {
    Continue,
    Close,
    Stall,
}

async fn serve(mut stream: TcpStream, conn_id: u64, inner: Arc<Mutex<Inner>>) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let mut out = Vec::new();
        let mut next = Next::Continue;
        loop {
            let args = match parse_request(&buf) {
                Ok(Some((args, used))) => {
                    buf.drain(..used);
                    args
                }
                Ok(None) => break,
                Err(e) => {
                    out.extend_from_slice(format!("-ERR Protocol error: {e}\r\n").as_bytes());
                    next = Next::Close;
                    break;
                }
            };
            if args.is_empty() {
                continue;
            }
            next = handle(&args, conn_id, &inner, &mut out);
            if !matches!(next, Next::Continue) {
                break;
            }
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
        match next {
            Next::Continue => {}
            Next::Close => {
                let _ = stream.shutdown().await;
                return;
            }
            Next::Stall => {
                // Frozen: read (and ignore) until the peer gives up on us.
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                lock(&inner).stalled_closed += 1;
                return;
            }
        }
    }
}

/// Runs one request, appending its reply to `out` (unless a fault says otherwise).
fn handle(args: &[Vec<u8>], conn_id: u64, inner: &Mutex<Inner>, out: &mut Vec<u8>) -> Next {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    let mut g = lock(inner);
    let count = {
        let c = g.received.entry(name.clone()).or_insert(0);
        *c += 1;
        *c
    };
    g.log.push((conn_id, name.clone()));
    let fault = g
        .rules
        .iter()
        .find(|r| r.command == name && r.nth == count)
        .map(|r| r.fault);
    let mut reply = Vec::new();
    match fault {
        None => {
            execute(&mut g, &name, args, &mut reply);
            out.extend_from_slice(&reply);
            Next::Continue
        }
        Some(Fault::ApplyThenClose) => {
            execute(&mut g, &name, args, &mut reply);
            Next::Close
        }
        Some(Fault::Close) => Next::Close,
        Some(Fault::ApplyThenStall) => {
            execute(&mut g, &name, args, &mut reply);
            Next::Stall
        }
        Some(Fault::Stall) => Next::Stall,
    }
}

fn bulk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn wrong_args(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(
        format!(
            "-ERR wrong number of arguments for '{}' command\r\n",
            name.to_ascii_lowercase()
        )
        .as_bytes(),
    );
}

const WRONGTYPE: &[u8] = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";

fn execute(g: &mut Inner, name: &str, args: &[Vec<u8>], out: &mut Vec<u8>) {
    match (name, args.len()) {
        ("PING", 1) => out.extend_from_slice(b"+PONG\r\n"),
        ("PING", 2) | ("ECHO", 2) => bulk(out, &args[1]),
        ("SELECT", 2) | ("AUTH", 2) | ("AUTH", 3) => out.extend_from_slice(b"+OK\r\n"),
        ("GET", 2) => {
            if g.lists.contains_key(&args[1]) {
                out.extend_from_slice(WRONGTYPE);
            } else {
                match g.strings.get(&args[1]) {
                    Some(v) => bulk(out, v),
                    None => out.extend_from_slice(b"$-1\r\n"),
                }
            }
        }
        ("SET", 3) => {
            g.lists.remove(&args[1]);
            g.strings.insert(args[1].clone(), args[2].clone());
            out.extend_from_slice(b"+OK\r\n");
        }
        ("DEL", n) if n >= 2 => {
            let mut removed = 0;
            for k in &args[1..] {
                removed += u64::from(g.strings.remove(k).is_some());
                removed += u64::from(g.lists.remove(k).is_some());
            }
            out.extend_from_slice(format!(":{removed}\r\n").as_bytes());
        }
        ("INCR", 2) => {
            if g.lists.contains_key(&args[1]) {
                out.extend_from_slice(WRONGTYPE);
                return;
            }
            let current = match g.strings.get(&args[1]) {
                None => Some(0i64),
                Some(v) => std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()),
            };
            match current.and_then(|c| c.checked_add(1)) {
                Some(n) => {
                    g.strings
                        .insert(args[1].clone(), n.to_string().into_bytes());
                    out.extend_from_slice(format!(":{n}\r\n").as_bytes());
                }
                None => out.extend_from_slice(b"-ERR value is not an integer or out of range\r\n"),
            }
        }
        ("RPUSH", n) if n >= 3 => {
            if g.strings.contains_key(&args[1]) {
                out.extend_from_slice(WRONGTYPE);
                return;
            }
            let list = g.lists.entry(args[1].clone()).or_default();
            list.extend(args[2..].iter().cloned());
            out.extend_from_slice(format!(":{}\r\n", list.len()).as_bytes());
        }
        ("LRANGE", 4) => {
            // Only the whole list (`0 -1`) is needed by the tests.
            let items = g.lists.get(&args[1]).cloned().unwrap_or_default();
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for i in &items {
                bulk(out, i);
            }
        }
        (
            "PING" | "ECHO" | "SELECT" | "AUTH" | "GET" | "SET" | "DEL" | "INCR" | "RPUSH"
            | "LRANGE",
            _,
        ) => wrong_args(out, name),
        _ => out.extend_from_slice(
            format!("-ERR unknown command '{}'\r\n", name.to_ascii_lowercase()).as_bytes(),
        ),
    }
}

/// Parses one multibulk request at the start of `buf`: `Ok(Some((args, bytes used)))`,
/// `Ok(None)` when incomplete, `Err` for anything that is not a multibulk request.
/// A parsed request's arguments and how many bytes it took.
type Parsed = (Vec<Vec<u8>>, usize);

fn parse_request(buf: &[u8]) -> Result<Option<Parsed>, String> {
    fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
        let rel = buf.get(from..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((&buf[from..from + rel], from + rel + 2))
    }
    fn number(bytes: &[u8]) -> Result<i64, String> {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(bytes)))
    }
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return Err(format!("expected '*', got {:?}", buf[0] as char));
    }
    let Some((header, mut pos)) = line(buf, 0) else {
        return Ok(None);
    };
    let n = number(&header[1..])?;
    let mut args = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let Some((h, after)) = line(buf, pos) else {
            return Ok(None);
        };
        if h.first() != Some(&b'$') {
            return Err("expected '$'".into());
        }
        let len = number(&h[1..])?;
        if len < 0 {
            return Err("negative bulk length".into());
        }
        let end = after + len as usize;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        args.push(buf[after..end].to_vec());
        pos = end + 2;
    }
    Ok(Some((args, pos)))
}
