//! A subscriber's own upstream connection.
//!
//! Once a client subscribes, Redis pushes messages to it at any time, so its
//! connection can be neither shared nor pooled. The session opens one connection per
//! subscribed client (AUTH/SELECT done as usual), writes the client's requests to it
//! as they come, and streams every frame Redis sends back to the client in arrival
//! order. A reader task frames the stream; the bytes it has queued but the client
//! has not yet taken are counted, and past `limit` the subscription ends with
//! [`End::Overflow`] (the session then disconnects the slow client, as Redis's
//! `client-output-buffer-limit pubsub` does), so a slow subscriber cannot grow the
//! proxy's memory without end.
//!
//! The connection also learns its `CLIENT ID` (from a `HELLO` written before the
//! client's first request, whose reply the reader keeps to itself), so that a
//! client tracking keys (`CLIENT TRACKING ON REDIRECT <this session>`) can have its
//! invalidation messages sent here.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::connect::connect;
use super::dedicated::{hello_id, ExclusiveConn, HELLO};
use super::error::UpstreamError;
use super::frames::Frames;
pub use super::satellites::Nodes;
use super::satellites::{self, Satellites};
use crate::config::UpstreamConfig;
use crate::transport::{ReadHalf, WriteHalf};

/// Why a subscription's stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The upstream connection closed or broke.
    Closed,
    /// The client fell more than the limit behind.
    Overflow,
}

/// An open subscriber connection.
#[derive(Debug)]
pub struct Subscription {
    wr: WriteHalf,
    frames: mpsc::UnboundedReceiver<Result<Bytes, End>>,
    queued: Arc<AtomicUsize>,
    reader: tokio::task::JoinHandle<()>,
    /// Redis's `CLIENT ID` of the connection (0 until known, and once it closed).
    upstream_id: Arc<AtomicU64>,
    /// On a cluster: the other primaries' keyspace notifications or MONITOR lines.
    _satellites: Option<Satellites>,
    /// The server's `host:port`.
    addr: String,
    /// Closed at Redis's first reply to the client's requests (or the end).
    first: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Subscription {
    /// Opens a connection for a subscriber (bounded by the connect timeout).
    /// `satellites`: on a cluster, the other primaries, where subscriptions that
    /// may receive keyspace notifications, or a `MONITOR` (`monitor`: the
    /// client's request is MONITOR), are repeated (`super::satellites`).
    pub async fn open(
        cfg: &UpstreamConfig,
        limit: usize,
        resp3: bool,
        satellites: Option<Nodes>,
        monitor: bool,
    ) -> Result<Subscription, UpstreamError> {
        let stream = connect(cfg, resp3).await?;
        let (rd, mut wr) = stream.into_split();
        // Answered before anything the client sends; the reader takes the id from it.
        let hello = async {
            wr.write_all(HELLO).await?;
            wr.flush().await
        };
        hello.await.map_err(|_| UpstreamError::Connect {
            addr: cfg.address(),
            reason: "connection closed during setup".into(),
        })?;
        let reader = Reader {
            frames: Frames::new(16 * 1024),
            hello: true,
            id: 0,
        };
        let satellites = satellites.map(|n| (n, resp3));
        Ok(Subscription::start(
            rd,
            wr,
            reader,
            cfg.address(),
            limit,
            satellites,
            monitor,
        ))
    }

    /// Makes a session's own connection (a RESP3 one, tracking keys for it) its
    /// subscriber connection, as Redis's client subscribes on the connection it
    /// tracks on: what was read from it and not yet taken is framed first, and
    /// its `CLIENT ID` is known. (Standalone only: no satellites.)
    pub fn adopt(conn: ExclusiveConn, limit: usize) -> Subscription {
        let (stream, frames, addr, id) = conn.into_parts();
        let (rd, wr) = stream.into_split();
        let reader = Reader {
            frames,
            hello: false,
            id,
        };
        Subscription::start(rd, wr, reader, addr, limit, None, false)
    }

    /// The subscription on a connection set up for it: its reader task (and, on
    /// a cluster, its satellites, with the protocol they speak) started.
    fn start(
        rd: ReadHalf,
        wr: WriteHalf,
        reader: Reader,
        addr: String,
        limit: usize,
        satellites: Option<(Nodes, bool)>,
        monitor: bool,
    ) -> Subscription {
        let (tx, frames) = mpsc::unbounded_channel();
        let (first_tx, first) = tokio::sync::oneshot::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let upstream_id = Arc::new(AtomicU64::new(reader.id));
        let satellites = satellites
            .map(|(n, resp3)| Satellites::spawn(n, resp3, tx.clone(), queued.clone(), limit));
        let reader = tokio::spawn(read_frames(
            rd,
            reader,
            tx,
            queued.clone(),
            limit,
            upstream_id.clone(),
            satellites.as_ref().map(Satellites::sender),
            monitor,
            first_tx,
        ));
        Subscription {
            wr,
            frames,
            queued,
            reader,
            upstream_id,
            _satellites: satellites,
            addr,
            first: Some(first),
        }
    }

    /// Resolves at Redis's first reply to the client's requests (the first
    /// subscription is then in place) or when the connection ends; taken once.
    pub fn first_reply(&mut self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        self.first.take()
    }

    /// The `host:port` of the server the connection goes to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Redis's `CLIENT ID` of this connection (0 until `HELLO` is answered, and
    /// once the connection closed).
    pub fn upstream_id(&self) -> Arc<AtomicU64> {
        self.upstream_id.clone()
    }

    /// Writes a client request to the subscriber connection.
    pub async fn send(&mut self, request: &[u8]) -> std::io::Result<()> {
        self.wr.write_all(request).await?;
        self.wr.flush().await
    }

    /// Writes `bytes`, advanced past what is written: cancellation-safe (called
    /// again, it goes on where it stopped).
    pub async fn write_from(&mut self, bytes: &mut Bytes) -> std::io::Result<()> {
        use bytes::Buf;
        use std::pin::Pin;
        use tokio::io::AsyncWrite;
        while !bytes.is_empty() {
            let n = std::future::poll_fn(|cx| Pin::new(&mut self.wr).poll_write(cx, bytes)).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            bytes.advance(n);
        }
        std::future::poll_fn(|cx| Pin::new(&mut self.wr).poll_flush(cx)).await
    }

    /// The next frame from Redis if one was read already (`None`: none yet).
    pub fn try_next(&mut self) -> Option<Result<Bytes, End>> {
        match self.frames.try_recv() {
            Ok(Ok(frame)) => {
                self.queued.fetch_sub(frame.len(), Relaxed);
                Some(Ok(frame))
            }
            Ok(Err(end)) => Some(Err(end)),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(Err(End::Closed)),
        }
    }

    /// The next frame from Redis, in arrival order, or why the stream ended.
    pub async fn next(&mut self) -> Result<Bytes, End> {
        match self.frames.recv().await {
            Some(Ok(frame)) => {
                self.queued.fetch_sub(frame.len(), Relaxed);
                Ok(frame)
            }
            Some(Err(end)) => Err(end),
            None => Err(End::Closed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Closing the connection makes Redis drop the subscriptions.
        self.reader.abort();
        self.upstream_id.store(0, Relaxed);
    }
}

/// Where a subscription's reader starts: what was read already, whether the
/// reply to the proxy's `HELLO` comes first (a connection opened for it), and
/// Redis's `CLIENT ID` of the connection if known (0: `HELLO` tells).
struct Reader {
    frames: Frames,
    hello: bool,
    id: u64,
}

#[allow(clippy::too_many_arguments)] // the subscription's parts, passed as they are
async fn read_frames(
    mut rd: ReadHalf,
    start: Reader,
    tx: mpsc::UnboundedSender<Result<Bytes, End>>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    upstream_id: Arc<AtomicU64>,
    satellites: Option<mpsc::UnboundedSender<satellites::Follow>>,
    monitor: bool,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = Some(first);
    // A MONITOR not yet accepted by this node.
    let mut monitor_pending = monitor;
    let _closed = ClearOnExit(upstream_id.clone());
    let Reader {
        mut frames,
        mut hello,
        ..
    } = start;
    loop {
        loop {
            match frames.next_frame() {
                Ok(Some(_)) if hello => {
                    // The reply to the proxy's HELLO (an error on a Redis without it).
                    hello = false;
                    let reply = frames.take();
                    upstream_id.store(hello_id(&reply).unwrap_or(0), Relaxed);
                }
                Ok(Some(_)) => {
                    if let Some(f) = first.take() {
                        let _ = f.send(());
                    }
                    let bytes = frames.take();
                    if queued.fetch_add(bytes.len(), Relaxed) + bytes.len() > limit {
                        let _ = tx.send(Err(End::Overflow));
                        return;
                    }
                    // Confirmed here first: the satellites' notifications come after.
                    let repeat = satellites.as_ref().and_then(|_| match monitor_pending {
                        // MONITOR accepted: the other nodes' streams join it.
                        true if &bytes[..] == b"+OK\r\n" => {
                            monitor_pending = false;
                            Some(satellites::Follow::Monitor)
                        }
                        true => None,
                        false => satellites::follow(&bytes),
                    });
                    if tx.send(Ok(bytes)).is_err() {
                        return;
                    }
                    if let (Some(s), Some(r)) = (&satellites, repeat) {
                        let _ = s.send(r);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    let _ = tx.send(Err(End::Closed));
                    return;
                }
            }
        }
        match frames.fill(&mut rd).await {
            Ok(n) if n > 0 => {}
            _ => {
                let _ = tx.send(Err(End::Closed));
                return;
            }
        }
    }
}

/// Sets the connection's id to 0 when its reader ends (the connection is gone).
struct ClearOnExit(Arc<AtomicU64>);

impl Drop for ClearOnExit {
    fn drop(&mut self) {
        self.0.store(0, Relaxed);
    }
}

/// A subscribe or unsubscribe confirmation: which kind, and the count Redis
/// reports after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation {
    /// SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE (not an UNSUBSCRIBE-family one).
    pub subscribe: bool,
    /// SSUBSCRIBE / SUNSUBSCRIBE: the count is of shard channels only. Otherwise it
    /// is of channels plus patterns (Redis 7 counts the two apart).
    pub shard: bool,
    /// The count after this confirmation.
    pub count: i64,
}

/// The confirmation `frame` is (`*3`/`>3` of a (un)subscribe kind, a channel, and
/// the count), or `None` for messages and other replies.
pub fn confirmation(frame: &[u8]) -> Option<Confirmation> {
    let (_, subscribe, shard, _) = kind(frame)?;
    let body = frame.strip_suffix(b"\r\n")?;
    let start = body.iter().rposition(|&b| b == b'\n')? + 1;
    let count = body[start..].strip_prefix(b":")?;
    let count = std::str::from_utf8(count).ok()?.parse().ok()?;
    Some(Confirmation {
        subscribe,
        shard,
        count,
    })
}

/// Whether `frame` is a line of a MONITOR stream (`+1700000000.123456 [0
/// 127.0.0.1:5000] "GET" "k"`, in RESP2 and RESP3 alike), not a reply to one of
/// the monitoring client's own requests (no reply of Redis's starts with a
/// time and a `[`).
pub fn is_monitor_line(frame: &[u8]) -> bool {
    let Some(rest) = frame.strip_prefix(b"+") else {
        return false;
    };
    let secs = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let Some(rest) = rest[secs..].strip_prefix(b".").filter(|_| secs > 0) else {
        return false;
    };
    let micros = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    micros > 0 && rest[micros..].starts_with(b" [")
}

/// Whether `frame` answers a request (a confirmation, PING's reply, an error,
/// a RESP3 reply), rather than being sent by Redis on its own (a message, a
/// keyspace notification, an invalidation: RESP2 `message`-kind arrays and
/// every RESP3 push but confirmations).
pub fn answers_request(frame: &[u8]) -> bool {
    const MESSAGES: [&[u8]; 3] = [
        b"*3\r\n$7\r\nmessage\r\n",
        b"*4\r\n$8\r\npmessage\r\n",
        b"*3\r\n$8\r\nsmessage\r\n",
    ];
    kind(frame).is_some()
        || !(frame.starts_with(b">") || MESSAGES.iter().any(|m| frame.starts_with(m)))
}

/// Whether `frame` confirms a PSUBSCRIBE or PUNSUBSCRIBE (of a pattern).
pub fn confirms_pattern(frame: &[u8]) -> bool {
    kind(frame).is_some_and(|(_, _, _, pattern)| pattern)
}

/// The kind of (un)subscribe confirmation `frame` starts as: what follows the
/// kind, whether it subscribes, whether it is of shard channels, whether of a
/// pattern.
fn kind(frame: &[u8]) -> Option<(&[u8], bool, bool, bool)> {
    let rest = frame
        .strip_prefix(b"*3\r\n")
        .or_else(|| frame.strip_prefix(b">3\r\n"))?;
    const KINDS: [(&[u8], bool, bool, bool); 6] = [
        (b"$9\r\nsubscribe\r\n", true, false, false),
        (b"$10\r\npsubscribe\r\n", true, false, true),
        (b"$10\r\nssubscribe\r\n", true, true, false),
        (b"$11\r\nunsubscribe\r\n", false, false, false),
        (b"$12\r\npunsubscribe\r\n", false, false, true),
        (b"$12\r\nsunsubscribe\r\n", false, true, false),
    ];
    KINDS.iter().find_map(|&(k, subscribe, shard, pattern)| {
        Some((rest.strip_prefix(k)?, subscribe, shard, pattern))
    })
}

/// The channel a confirmation names (`None`: a nil one, or not a confirmation).
pub fn confirmed_channel(frame: &[u8]) -> Option<&[u8]> {
    confirmation(frame)?;
    let (rest, ..) = kind(frame)?;
    let body = rest.strip_prefix(b"$")?;
    let eol = body.iter().position(|&b| b == b'\r')?;
    let len: usize = std::str::from_utf8(&body[..eol]).ok()?.parse().ok()?;
    body.get(eol + 2..eol + 2 + len)
}

#[cfg(test)]
mod tests {
    use super::{answers_request, confirmation, confirmed_channel, is_monitor_line, Confirmation};

    #[test]
    fn tells_replies_from_what_redis_sends_on_its_own() {
        for reply in [
            &b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"[..],
            b">3\r\n$12\r\npunsubscribe\r\n_\r\n:0\r\n",
            b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
            b"+PONG\r\n",
            b"-ERR Can't execute 'get'\r\n",
            b"$1\r\nv\r\n",
        ] {
            assert!(answers_request(reply), "{}", String::from_utf8_lossy(reply));
        }
        for pushed in [
            &b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nm\r\n"[..],
            b"*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$1\r\na\r\n$1\r\nm\r\n",
            b">3\r\n$8\r\nsmessage\r\n$1\r\na\r\n$1\r\nm\r\n",
            b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nm\r\n",
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n",
        ] {
            assert!(
                !answers_request(pushed),
                "{}",
                String::from_utf8_lossy(pushed)
            );
        }
    }

    #[test]
    fn tells_monitor_lines_from_replies() {
        for line in [
            &b"+1796458181.046379 [0 127.0.0.1:58278] \"GET\" \"k\"\r\n"[..],
            b"+1796458181.046440 [0 lua] \"ping\"\r\n",
            b"+1.5 [3 unix:/tmp/redis.sock] \"PING\"\r\n",
        ] {
            assert!(is_monitor_line(line), "{}", String::from_utf8_lossy(line));
        }
        for reply in [
            &b"+OK\r\n"[..],
            b"+PONG\r\n",
            b"+1796458181\r\n",
            b"+1.5\r\n",
            b"+.5 [0 lua]\r\n",
            b"$30\r\n1796458181.046379 [0 lua] \"x\"\r\n",
            b":1796458181\r\n",
        ] {
            assert!(
                !is_monitor_line(reply),
                "{}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    #[test]
    fn reads_confirmations() {
        let c = |subscribe, shard, count| {
            Some(Confirmation {
                subscribe,
                shard,
                count,
            })
        };
        assert_eq!(
            confirmation(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n"),
            c(false, false, 0)
        );
        assert_eq!(
            confirmation(b">3\r\n$12\r\npunsubscribe\r\n$-1\r\n:0\r\n"),
            c(false, false, 0)
        );
        assert_eq!(
            confirmation(b">3\r\n$12\r\npunsubscribe\r\n_\r\n:0\r\n"),
            c(false, false, 0)
        );
        assert_eq!(
            confirmation(b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\nb\r\n:12\r\n"),
            c(false, true, 12)
        );
        assert_eq!(
            confirmation(b"*3\r\n$10\r\nssubscribe\r\n$1\r\nb\r\n:1\r\n"),
            c(true, true, 1)
        );
        assert_eq!(
            confirmation(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:3\r\n"),
            c(true, false, 3)
        );
        assert_eq!(
            confirmation(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\n:0\r\n"),
            None
        );
        assert_eq!(confirmation(b"+PONG\r\n"), None);
    }

    #[test]
    fn reads_the_channel_of_a_confirmation() {
        assert_eq!(
            confirmed_channel(b">3\r\n$12\r\nsunsubscribe\r\n$5\r\n{c}xy\r\n:0\r\n"),
            Some(&b"{c}xy"[..])
        );
        assert_eq!(
            confirmed_channel(b"*3\r\n$10\r\nssubscribe\r\n$1\r\nb\r\n:1\r\n"),
            Some(&b"b"[..])
        );
        assert_eq!(
            confirmed_channel(b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:0\r\n"),
            None
        );
        assert_eq!(
            confirmed_channel(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nm\r\n"),
            None
        );
    }
}
