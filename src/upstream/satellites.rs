//! Keyspace notifications (and `MONITOR`) of a whole cluster for one subscriber.
//!
//! Redis Cluster sends a key's keyspace and keyevent notifications
//! (`__keyspace@0__:key`, `__keyevent@0__:set`) only to the subscribers of the node
//! that holds the key, unlike `PUBLISH`, which the cluster bus carries to every
//! node. A client subscribed through the proxy has one subscriber connection (to
//! the cluster's home node), so it would see the events of a third of the keys on
//! three primaries. Here, once Redis confirms a subscription that can receive such
//! notifications (a `__keyspace@`/`__keyevent@` channel, or a pattern that may match
//! one), the same subscription is made on every other primary ("satellite"
//! connections, opened on first need), and their notifications join the client's
//! stream. Everything else a satellite sends is dropped: its confirmations (the
//! home node's are the client's), and the `PUBLISH` messages the bus brought
//! (the home node delivers those).
//!
//! `MONITOR` is repeated the same way once the home node accepted it: each
//! primary shows only the commands it runs.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::connect::connect;
use super::frames::Frames;
use super::pubsub::{self, End};
use crate::config::UpstreamConfig;
use crate::protocol::request::encode_command;
use crate::transport::{ReadHalf, WriteHalf};

const HEADS: [&[u8]; 2] = [b"__keyspace@", b"__keyevent@"];

/// The primaries a subscriber's satellites go to, asked again every
/// `REFRESH`: on a cluster, those of the slot map of the moment, but the
/// home node's.
pub type Nodes = Arc<dyn Fn() -> Vec<UpstreamConfig> + Send + Sync>;

/// How often the satellites are compared with [`Nodes`]: a connection that
/// broke is opened again (a killed primary's, to the replica promoted in its
/// place), a shard that appeared (a reshard to a new node) gets one, and one to
/// a node that is no longer listed is closed. (After a graceful failover the old
/// primary, now a replica, still sends the notifications of the writes it
/// replicates, until the map names the new primary.)
const REFRESH: Duration = Duration::from_secs(1);

/// The satellite connections of one subscriber: what the home node's reader
/// hands over (`follow`), and the task that holds them.
pub(super) struct Satellites {
    requests: mpsc::UnboundedSender<Follow>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Satellites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Satellites")
    }
}

impl Satellites {
    /// Starts the task for `nodes` (nothing is opened before a subscription
    /// needs them); notifications go to `out`, counted in `queued` against `limit`.
    pub(super) fn spawn(
        nodes: Nodes,
        resp3: bool,
        out: mpsc::UnboundedSender<Result<Bytes, End>>,
        queued: Arc<AtomicUsize>,
        limit: usize,
    ) -> Satellites {
        let (requests, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(nodes, resp3, rx, out, queued, limit));
        Satellites { requests, task }
    }

    /// A handle for the home node's reader.
    pub(super) fn sender(&self) -> mpsc::UnboundedSender<Follow> {
        self.requests.clone()
    }
}

impl Drop for Satellites {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the home node accepted, to be repeated on the satellites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Follow {
    /// A (P)SUBSCRIBE (`subscribe`) or (P)UNSUBSCRIBE of a name that may
    /// receive keyspace notifications (`pattern`: a glob).
    Sub {
        subscribe: bool,
        pattern: bool,
        name: Bytes,
    },
    /// `MONITOR`: every command each node runs.
    Monitor,
}

impl Follow {
    fn encode(&self) -> Vec<u8> {
        let Follow::Sub {
            subscribe,
            pattern,
            name,
        } = self
        else {
            return b"*1\r\n$7\r\nMONITOR\r\n".to_vec();
        };
        let kind: &[u8] = match (subscribe, pattern) {
            (true, false) => b"SUBSCRIBE",
            (true, true) => b"PSUBSCRIBE",
            (false, false) => b"UNSUBSCRIBE",
            (false, true) => b"PUNSUBSCRIBE",
        };
        let mut out = Vec::with_capacity(name.len() + 32);
        encode_command(&[kind, name], &mut out);
        out
    }
}

/// What the home node's `frame` confirms, if it is the `SUBSCRIBE`,
/// `PSUBSCRIBE`, `UNSUBSCRIBE` or `PUNSUBSCRIBE` of a name that may receive
/// keyspace notifications. `None` for anything else.
pub(super) fn follow(frame: &[u8]) -> Option<Follow> {
    let c = pubsub::confirmation(frame).filter(|c| !c.shard)?;
    let name = pubsub::confirmed_channel(frame)?;
    let pattern = pubsub::confirms_pattern(frame);
    let receives = if pattern {
        HEADS.iter().any(|h| may_match(name, h))
    } else {
        HEADS.iter().any(|h| name.starts_with(h))
    };
    receives.then(|| Follow::Sub {
        subscribe: c.subscribe,
        pattern,
        name: Bytes::copy_from_slice(name),
    })
}

/// Whether glob `pattern` (Redis's `stringmatchlen`) may match some string that
/// starts with `head`: walked along `head` until a `*`; a class or `?` counts as
/// any one byte.
fn may_match(pattern: &[u8], head: &[u8]) -> bool {
    let mut i = 0;
    for &want in head {
        let Some(&c) = pattern.get(i) else {
            return false;
        };
        match c {
            b'*' => return true,
            b'?' => i += 1,
            b'[' => match pattern[i + 1..].iter().position(|&b| b == b']') {
                Some(k) => i += k + 2,
                None => return true,
            },
            b'\\' if i + 1 < pattern.len() => {
                if pattern[i + 1] != want {
                    return false;
                }
                i += 2;
            }
            _ => {
                if c != want {
                    return false;
                }
                i += 1;
            }
        }
    }
    true
}

/// The channel of a `message` or `pmessage` frame (RESP2 array or RESP3 push).
fn message_channel(frame: &[u8]) -> Option<&[u8]> {
    let (n, at) = header(frame)?;
    let (kind, mut at) = bulk(frame, at)?;
    match (kind, n) {
        (b"message", 3) => {}
        (b"pmessage", 4) => at = bulk(frame, at)?.1,
        _ => return None,
    }
    Some(bulk(frame, at)?.0)
}

/// An array or push header: its count and where its first element starts.
fn header(frame: &[u8]) -> Option<(usize, usize)> {
    if !matches!(frame.first(), Some(b'*' | b'>')) {
        return None;
    }
    let nl = frame.iter().position(|&b| b == b'\n')?;
    let n = std::str::from_utf8(frame.get(1..nl.checked_sub(1)?)?)
        .ok()?
        .parse()
        .ok()?;
    Some((n, nl + 1))
}

/// The bulk string at `at` and where the next element starts.
fn bulk(frame: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = frame.get(at..)?.strip_prefix(b"$")?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let len: usize = std::str::from_utf8(rest.get(..nl.checked_sub(1)?)?)
        .ok()?
        .parse()
        .ok()?;
    let start = at + 1 + nl + 1;
    Some((frame.get(start..start + len)?, start + len + 2))
}

async fn run(
    nodes: Nodes,
    resp3: bool,
    mut requests: mpsc::UnboundedReceiver<Follow>,
    out: mpsc::UnboundedSender<Result<Bytes, End>>,
    queued: Arc<AtomicUsize>,
    limit: usize,
) {
    let mut subs: Vec<Follow> = Vec::new();
    let mut conns = Conns(Vec::new());
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reader = |rd, addr, monitor| {
        tokio::spawn(read_node(
            rd,
            out.clone(),
            queued.clone(),
            limit,
            addr,
            monitor,
        ))
    };
    loop {
        tokio::select! {
            r = requests.recv() => {
                let Some(r) = r else { break };
                let request = r.encode();
                // What a connection opened later is sent: the active ones.
                match &r {
                    Follow::Sub { subscribe: false, pattern, name } => subs.retain(|s| {
                        !matches!(s, Follow::Sub { pattern: p, name: n, .. } if p == pattern && n == name)
                    }),
                    _ if !subs.contains(&r) => subs.push(r),
                    _ => {}
                }
                for c in &mut conns.0 {
                    c.send(&request).await;
                }
                if conns.0.is_empty() && !subs.is_empty() {
                    // First need: open them at once.
                    sync(&nodes, &mut conns, &subs, resp3, &reader).await;
                }
            }
            _ = tick.tick(), if !subs.is_empty() => {
                sync(&nodes, &mut conns, &subs, resp3, &reader).await;
            }
        }
    }
}

/// One satellite connection.
struct Conn {
    addr: String,
    wr: WriteHalf,
    reader: tokio::task::JoinHandle<()>,
}

impl Conn {
    async fn send(&mut self, request: &[u8]) {
        let sent = async {
            self.wr.write_all(request).await?;
            self.wr.flush().await
        };
        if let Err(e) = sent.await {
            tracing::debug!(node = %self.addr, error = %e, "satellite subscriber connection lost");
        }
    }
}

/// The satellites, their readers stopped with the task.
struct Conns(Vec<Conn>);

impl Drop for Conns {
    fn drop(&mut self) {
        self.0.iter().for_each(|c| c.reader.abort());
    }
}

/// Makes the satellites those of [`Nodes`] now: a connection to a node that is
/// no longer listed, or whose reader ended, is closed; a listed node without one
/// gets one, with every active subscription.
async fn sync(
    nodes: &Nodes,
    conns: &mut Conns,
    subs: &[Follow],
    resp3: bool,
    reader: &impl Fn(ReadHalf, String, bool) -> tokio::task::JoinHandle<()>,
) {
    let monitor = subs.contains(&Follow::Monitor);
    let want = nodes();
    conns.0.retain(|c| {
        let keep = !c.reader.is_finished() && want.iter().any(|w| w.address() == c.addr);
        if !keep {
            c.reader.abort();
        }
        keep
    });
    for cfg in want {
        let addr = cfg.address();
        if conns.0.iter().any(|c| c.addr == addr) {
            continue;
        }
        match connect(&cfg, resp3).await {
            Ok(stream) => {
                let (rd, wr) = stream.into_split();
                let mut c = Conn {
                    reader: reader(rd, addr.clone(), monitor),
                    addr,
                    wr,
                };
                for s in subs {
                    c.send(&s.encode()).await;
                }
                tracing::debug!(node = %c.addr, "satellite subscriber connection opened");
                conns.0.push(c);
            }
            Err(e) => {
                tracing::debug!(node = %addr, error = %e, "satellite subscriber connection failed; tried again in 1s")
            }
        }
    }
}

/// Whether `frame` is a line of a `MONITOR` stream (`+1733150000.123456 [0
/// 127.0.0.1:5000] "GET" "k"`), not its `+OK`.
fn monitor_line(frame: &[u8]) -> bool {
    frame.first() == Some(&b'+') && frame.get(1).is_some_and(u8::is_ascii_digit)
}

/// Passes on a satellite's keyspace notifications (or, `monitor`, its MONITOR
/// lines); drops the rest.
async fn read_node(
    mut rd: ReadHalf,
    out: mpsc::UnboundedSender<Result<Bytes, End>>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    addr: String,
    monitor: bool,
) {
    let mut frames = Frames::new(16 * 1024);
    loop {
        loop {
            match frames.next_frame() {
                Ok(Some(_)) => {
                    let frame = frames.take();
                    let notification = match monitor {
                        true => monitor_line(&frame),
                        false => message_channel(&frame)
                            .is_some_and(|c| HEADS.iter().any(|h| c.starts_with(h))),
                    };
                    if !notification {
                        continue;
                    }
                    if queued.fetch_add(frame.len(), Relaxed) + frame.len() > limit {
                        let _ = out.send(Err(End::Overflow));
                        return;
                    }
                    if out.send(Ok(frame)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if !matches!(frames.fill(&mut rd).await, Ok(n) if n > 0) {
            tracing::debug!(node = %addr, "satellite subscriber connection closed");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: &str, parts: &[&str]) -> Vec<u8> {
        let mut out = format!("{kind}{}\r\n", parts.len()).into_bytes();
        for p in parts {
            out.extend_from_slice(format!("${}\r\n{p}\r\n", p.len()).as_bytes());
        }
        out
    }

    #[test]
    fn subscriptions_that_may_receive_notifications_are_followed() {
        let conf = |kind: &str, name: &str| {
            let mut f = frame("*", &[kind, name]);
            f[1] = b'3';
            f.extend_from_slice(b":1\r\n");
            follow(&f)
        };
        let cmd = |kind: &str, name: &str| {
            let mut out = Vec::new();
            encode_command(&[kind.to_uppercase().as_bytes(), name.as_bytes()], &mut out);
            Some(out)
        };
        for (kind, name) in [
            ("psubscribe", "__keyspace@0__:*"),
            ("psubscribe", "*"),
            ("psubscribe", "__key*"),
            ("psubscribe", "__keyevent@?__:set"),
            ("psubscribe", "__key[a-z]pace@0__:*"),
            ("punsubscribe", "__keyspace@*"),
            ("subscribe", "__keyevent@0__:expired"),
            ("unsubscribe", "__keyspace@0__:k"),
        ] {
            let followed = conf(kind, name).map(|f| f.encode());
            assert_eq!(followed, cmd(kind, name), "{kind} {name}");
        }
        for (kind, name) in [
            ("psubscribe", "news.*"),
            ("psubscribe", "__keyspace"),
            ("psubscribe", "_x*"),
            ("subscribe", "news"),
            ("ssubscribe", "__keyspace@0__:k"),
        ] {
            assert_eq!(conf(kind, name), None, "{kind} {name}");
        }
        // A confirmation without a channel (UNSUBSCRIBE with none left).
        assert_eq!(follow(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"), None);
    }

    #[test]
    fn only_notifications_pass_from_a_satellite() {
        let ks = |f: &[u8]| message_channel(f).map(|c| c.to_vec());
        assert_eq!(
            ks(&frame("*", &["message", "__keyspace@0__:k", "set"])),
            Some(b"__keyspace@0__:k".to_vec())
        );
        assert_eq!(
            ks(&frame(">", &["pmessage", "*", "__keyevent@0__:del", "k"])),
            Some(b"__keyevent@0__:del".to_vec())
        );
        assert_eq!(ks(&frame("*", &["psubscribe", "*"])), None);
        assert_eq!(ks(b"+OK\r\n"), None);
        assert!(monitor_line(
            b"+1733150000.123456 [0 127.0.0.1:5000] \"GET\" \"k\"\r\n"
        ));
        assert!(!monitor_line(b"+OK\r\n"));
        assert!(!monitor_line(b"-ERR x\r\n"));
        assert_eq!(Follow::Monitor.encode(), b"*1\r\n$7\r\nMONITOR\r\n");
    }
}
