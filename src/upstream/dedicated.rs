//! Exclusive upstream connections for commands that change a connection's state
//! (MULTI … EXEC, WATCH, blocking pops), taken from a per-database bb8 pool.
//!
//! A session that needs one starts a [`Dedicated`] task and sends it batches just as
//! it would to a shared slot. The task checks a connection out of the pool, runs the
//! batches one after another (write, then read exactly that many replies), and when
//! the session lets go it returns the connection:
//!
//! * released cleanly ([`Dedicated::release`]) after EXEC/DISCARD/UNWATCH or a
//!   blocking command's reply: returned to the pool as it is;
//! * dropped without release (client gone mid-transaction, RESET, QUIT): the task
//!   sends `DISCARD` and `UNWATCH` and returns the connection only if both answer;
//! * client gone while a command is still waiting for its reply (a blocked BLPOP):
//!   the connection's state is unknown, so it is discarded, never reused.
//!
//! A session's *own* connection (`auth_passthrough` login, `CLIENT TRACKING`) is served
//! by the same task, and may carry RESP3 pushes (`>`: tracking invalidations) that
//! are not replies. A round trip does not count them, and keeps them in the reply
//! bytes where they arrived; while no command is in flight the task watches the
//! socket and hands pushes to the session at once (see [`Dedicated::next_push`]). A
//! push read after the session sent a batch the task has not started yet travels
//! in front of that batch's reply instead, so the client gets every push exactly
//! where Redis put it in the stream.
//!
//! A checkout that cannot be served says why: the manager keeps the last failure of
//! opening a connection (refused, AUTH or SELECT rejected, not logged in) and a
//! waiting checkout fails with it as soon as it happens, rather than after the
//! connect timeout. Only when every pooled connection is checked out does the error
//! say that they are all in use.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use super::connect::connect_at;
use super::error::UpstreamError;
use super::frames::Frames;
use super::mux::{Batch, BatchReply};
use super::pubsub::End;
use crate::command::Block;
use crate::config::UpstreamConfig;
use crate::transport::Stream;

use crate::protocol::request::encode_command;

/// `HELLO` without arguments: the connection's details (its `id` among them) in the
/// protocol it already speaks.
pub(crate) const HELLO: &[u8] = b"*1\r\n$5\r\nHELLO\r\n";

/// The `id` field of a `HELLO` reply (RESP2 array or RESP3 map).
pub(crate) fn hello_id(reply: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"$2\r\nid\r\n:";
    let at = reply.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = &reply[at..];
    let end = digits.iter().position(|&b| b == b'\r')?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// A connection owned by one session at a time.
#[derive(Debug)]
pub struct ExclusiveConn {
    stream: Stream,
    frames: Frames,
    broken: bool,
    addr: String,
    /// Redis's `CLIENT ID` for this connection (0 if Redis did not say).
    id: u64,
    /// Where the database's upstream is now, and the generation of it this
    /// connection was opened for: one of an older generation (the primary moved)
    /// is not handed out again.
    endpoint: crate::endpoint::Endpoint,
    generation: u64,
}

impl ExclusiveConn {
    /// Opens a connection to `cfg`'s upstream (AUTH, `HELLO 3` when `resp3`,
    /// SELECT) and, with `ask_id`, asks Redis for its `CLIENT ID`, all within the
    /// connect timeout. (A client's private connection does not ask: its user may
    /// not be allowed CLIENT ID, and the refusal would land in Redis's ACL LOG.)
    pub async fn open(
        cfg: &UpstreamConfig,
        resp3: bool,
        ask_id: bool,
    ) -> Result<ExclusiveConn, UpstreamError> {
        let (stream, generation) = connect_at(cfg, resp3).await?;
        let mut conn = ExclusiveConn {
            stream,
            frames: Frames::new(4096),
            broken: false,
            addr: cfg.address(),
            id: 0,
            endpoint: cfg.endpoint.clone(),
            generation,
        };
        if !ask_id {
            return Ok(conn);
        }
        // Its id on Redis, so CLIENT UNBLOCK for the session holding it can be
        // translated. Best effort: a Redis that will not say leaves it at 0.
        let asked = tokio::time::timeout(
            cfg.connect_timeout,
            conn.round_trip(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n", 1),
        )
        .await;
        match asked {
            // Nothing in the setup needed a login (no password, db 0), but Redis
            // wants one: the connection is useless, and this is why.
            Ok(Ok(reply)) if reply.starts_with(b"-NOAUTH") => Err(UpstreamError::Handshake {
                addr: cfg.address(),
                reply: String::from_utf8_lossy(&reply[1..]).trim_end().to_string(),
            }),
            Ok(Ok(reply)) => {
                conn.id = reply
                    .strip_prefix(b":")
                    .and_then(|r| r.strip_suffix(b"\r\n"))
                    .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
                    .unwrap_or(0);
                Ok(conn)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(UpstreamError::Connect {
                addr: cfg.address(),
                reason: format!("timed out after {:?}", cfg.connect_timeout),
            }),
        }
    }

    /// Opens a session's own connection (see [`ExclusiveConn::open`]) and learns its
    /// `CLIENT ID` from `HELLO`'s reply: every user may run `HELLO`, so a restricted
    /// user's refusal never lands in Redis's ACL LOG. (A Redis without HELLO leaves
    /// the id at 0.)
    pub async fn open_own(
        cfg: &UpstreamConfig,
        resp3: bool,
    ) -> Result<ExclusiveConn, UpstreamError> {
        let conn = ExclusiveConn::open(cfg, resp3, false).await?;
        conn.learn_id(cfg, None).await
    }

    /// [`ExclusiveConn::open_own`] for a login that may not `SELECT`: the
    /// connection is set up with `cfg`'s own credentials (the proxy's), its
    /// database selected, and then logged in with `auth` (an encoded `AUTH`), as
    /// a client that selected its database before logging in (Redis keeps a
    /// connection's database across `AUTH`). A refused `AUTH` is Redis's reply.
    pub async fn open_own_then_auth(
        cfg: &UpstreamConfig,
        resp3: bool,
        auth: &[u8],
    ) -> Result<ExclusiveConn, UpstreamError> {
        let conn = ExclusiveConn::open(cfg, resp3, false).await?;
        conn.learn_id(cfg, Some(auth)).await
    }

    /// Sends `before` (if any; an error reply to it fails the setup) and then
    /// `HELLO`, whose reply gives the connection's `CLIENT ID`, within the connect
    /// timeout.
    async fn learn_id(
        mut self,
        cfg: &UpstreamConfig,
        before: Option<&[u8]>,
    ) -> Result<ExclusiveConn, UpstreamError> {
        let asked = tokio::time::timeout(cfg.connect_timeout, async {
            if let Some(bytes) = before {
                let reply = self.round_trip(bytes, 1).await?;
                if reply.starts_with(b"-") {
                    return Err(UpstreamError::Handshake {
                        addr: cfg.address(),
                        reply: String::from_utf8_lossy(&reply[1..]).trim_end().to_string(),
                    });
                }
            }
            self.round_trip(HELLO, 1).await
        })
        .await;
        match asked {
            Ok(Ok(reply)) => {
                self.id = hello_id(&reply).unwrap_or(0);
                Ok(self)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(UpstreamError::Connect {
                addr: cfg.address(),
                reason: format!("timed out after {:?}", cfg.connect_timeout),
            }),
        }
    }

    /// The connection's stream, what was read from it and not yet taken, its
    /// `host:port` and Redis's `CLIENT ID` of it.
    pub(crate) fn into_parts(self) -> (Stream, Frames, String, u64) {
        (self.stream, self.frames, self.addr, self.id)
    }

    /// Whether an idle connection is still usable, without a round trip: it has
    /// nothing to read, so a read that would block means yes; end of stream (Redis
    /// restarted, or closed it for idleness), an error or stray bytes mean no.
    /// The end is asked of the socket itself first ([`Stream::peer_closed`]): the
    /// runtime's readiness may not have seen a close that just came (a
    /// connection killed a moment before was handed out under load, and its
    /// command reported as one that may have run).
    pub(crate) fn is_alive(&mut self) -> bool {
        if self.broken || self.frames.has_unread() || !self.is_current() {
            return false;
        }
        if self.stream.peer_closed() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(
            self.stream.try_read(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Whether the connection goes to the database's current upstream (not to a
    /// primary that has since been replaced, as the sentinels said).
    pub fn is_current(&self) -> bool {
        self.generation == self.endpoint.generation()
    }

    /// Writes `bytes` and reads `count` complete replies, returned back to back.
    ///
    /// Cancellation-safe for the pool: until the last reply is read the connection
    /// counts as broken, so one dropped mid-exchange (e.g. a checkout's PING given
    /// up) is never handed to anyone else with a reply still on its way.
    pub(crate) async fn round_trip(&mut self, bytes: &[u8], count: u32) -> BatchReply {
        self.round_trip_then(bytes, count, || {}).await
    }

    /// [`ExclusiveConn::round_trip`], calling `written` once the bytes are written
    /// (or failed to be), before waiting for the replies.
    async fn round_trip_then(
        &mut self,
        bytes: &[u8],
        count: u32,
        written: impl FnOnce(),
    ) -> BatchReply {
        self.broken = true;
        let reply = self.exchange(bytes, count, written).await;
        if reply.is_ok() {
            self.broken = false;
        }
        reply
    }

    /// One exchange; an error leaves the connection broken (see `round_trip`).
    async fn exchange(&mut self, bytes: &[u8], count: u32, written: impl FnOnce()) -> BatchReply {
        let lost = |sent| UpstreamError::Lost {
            addr: self.addr.clone(),
            sent,
        };
        let wrote = match self.stream.write_all(bytes).await {
            // TLS may still hold the last bytes (a no-op for plain TCP).
            Ok(()) => self.stream.flush().await,
            Err(e) => Err(e),
        };
        written();
        if wrote.is_err() {
            return Err(lost(true));
        }
        let mut done = 0;
        while done < count {
            match self.frames.next_frame() {
                // A push (tracking invalidation) keeps its place in the bytes but
                // answers nothing.
                Ok(Some((frame, at))) => {
                    // A demoted primary: the watcher asks the sentinels (the reply
                    // goes to the client as Redis sent it; see `mux::read_loop`).
                    if frame.is_error && super::is_readonly(self.frames.bytes(at)) {
                        self.endpoint.suspect();
                    }
                    done += u32::from(!frame.is_push)
                }
                Ok(None) => match self.frames.fill(&mut self.stream).await {
                    Ok(n) if n > 0 => {}
                    _ => {
                        return Err(lost(true));
                    }
                },
                Err(_) => {
                    return Err(UpstreamError::Protocol {
                        addr: self.addr.clone(),
                    });
                }
            }
        }
        Ok(self.frames.take())
    }
}

/// bb8 manager: opens connections with AUTH/SELECT done; a connection that failed
/// mid-command is reported broken and dropped by the pool. Its clones share what
/// went wrong last (see `Failures`).
#[derive(Debug, Clone)]
pub struct Manager {
    cfg: UpstreamConfig,
    resp3: bool,
    failures: Arc<Failures>,
}

/// The last failures of a pool's connections, for checkouts to report.
#[derive(Debug)]
struct Failures {
    /// The last error opening a connection; every failed attempt sends (so a
    /// waiting checkout wakes up even when the error is the same as before).
    connect: watch::Sender<Option<UpstreamError>>,
    /// The last failed check (PING) of an idle connection, and when it happened.
    invalid: Mutex<Option<(Instant, UpstreamError)>>,
}

impl Manager {
    /// A manager for `cfg`'s upstream, speaking RESP2 or (after `HELLO 3`) RESP3.
    pub fn new(cfg: UpstreamConfig, resp3: bool) -> Manager {
        Manager {
            cfg,
            resp3,
            failures: Arc::new(Failures {
                connect: watch::channel(None).0,
                invalid: Mutex::new(None),
            }),
        }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = ExclusiveConn;
    type Error = UpstreamError;

    async fn connect(&self) -> Result<ExclusiveConn, UpstreamError> {
        let opened = ExclusiveConn::open(&self.cfg, self.resp3, true).await;
        if let Err(e) = &opened {
            self.failures.connect.send_replace(Some(e.clone()));
        }
        opened
    }

    async fn is_valid(&self, conn: &mut ExclusiveConn) -> Result<(), UpstreamError> {
        let r = match conn.round_trip(b"*1\r\n$4\r\nPING\r\n", 1).await {
            Ok(r) if super::answers_ping(&r) => return Ok(()),
            Ok(r) if r.first() == Some(&b'-') => Err(UpstreamError::NotServing {
                addr: conn.addr.clone(),
                reply: String::from_utf8_lossy(r.get(1..r.len().saturating_sub(2)).unwrap_or(b""))
                    .into_owned(),
            }),
            Ok(_) => {
                conn.broken = true;
                Err(UpstreamError::Protocol {
                    addr: conn.addr.clone(),
                })
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &r {
            if let Ok(mut last) = self.failures.invalid.lock() {
                *last = Some((Instant::now(), e.clone()));
            }
        }
        r
    }

    fn has_broken(&self, conn: &mut ExclusiveConn) -> bool {
        // One opened for a primary that has since been replaced is dropped on return.
        conn.broken || !conn.is_current()
    }
}

/// A per-database bb8 pool of exclusive connections.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: bb8::Pool<Manager>,
    manager: Manager,
    max: u32,
    turns: Arc<Turns>,
}

impl Pool {
    /// The `host:port` of the pool's server.
    pub fn address(&self) -> String {
        self.manager.cfg.address()
    }

    /// Open and idle connections.
    pub fn state(&self) -> bb8::State {
        self.inner.state()
    }

    /// Why a checkout that started at `started` got no connection within the
    /// timeout: every connection checked out, or the last failure since then.
    fn timed_out(&self, started: Instant, connect_failed: Option<UpstreamError>) -> UpstreamError {
        let addr = self.manager.cfg.address();
        let state = self.inner.state();
        if state.idle_connections == 0 && state.connections >= self.max {
            return UpstreamError::Connect {
                addr,
                reason: format!(
                    "no exclusive connection free in the pool (all in use by transactions or blocking commands: max_connections {}) within {:?}",
                    self.max, self.manager.cfg.connect_timeout
                ),
            };
        }
        if let Some(e) = connect_failed {
            return e;
        }
        let invalid = self
            .manager
            .failures
            .invalid
            .lock()
            .ok()
            .and_then(|l| l.clone());
        match invalid {
            Some((at, e)) if at >= started => e,
            _ => UpstreamError::Connect {
                addr,
                reason: format!(
                    "no connection could be opened within {:?}",
                    self.manager.cfg.connect_timeout
                ),
            },
        }
    }
}

/// Builds a pool (no connection is opened until one is needed).
pub fn pool(cfg: &UpstreamConfig, resp3: bool) -> Pool {
    let manager = Manager::new(cfg.clone(), resp3);
    let max = cfg.pool_size.max(1);
    let inner = bb8::Pool::builder()
        .max_size(max)
        .min_idle(None)
        .connection_timeout(cfg.connect_timeout)
        // Checked in `checkout` instead, without bb8's round trip (see there).
        .test_on_check_out(false)
        // One attempt per checkout: bb8's retries would hide an immediate error
        // (refused, AUTH rejected) until `connection_timeout`.
        .retry_connection(false)
        .build_unchecked(manager.clone());
    Pool {
        inner,
        manager,
        max,
        turns: Arc::new(Turns::default()),
    }
}

enum Msg {
    Batch(Batch),
    Release,
    /// The session sent SELECT on the connection: select the pool's db again
    /// before the connection goes back.
    Reselected,
    /// An own connection, idle, handed to the session as it is
    /// ([`Dedicated::hand_over`]).
    HandOver(tokio::sync::oneshot::Sender<ExclusiveConn>),
    /// A pooled connection, idle, taken out of the pool for the session to keep
    /// ([`Dedicated::detach`]).
    Detach(tokio::sync::oneshot::Sender<Result<ExclusiveConn, UpstreamError>>),
}

/// A session's handle to its exclusive connection.
#[derive(Debug)]
pub struct Dedicated {
    tx: mpsc::UnboundedSender<Msg>,
    upstream_id: Arc<AtomicU64>,
    /// An own connection's pushes (`None` for pooled connections, and once the
    /// stream of pushes ended).
    pushes: Option<PushRx>,
}

/// The session's end of an own connection's pushes.
#[derive(Debug)]
struct PushRx {
    rx: mpsc::UnboundedReceiver<Result<Bytes, End>>,
    /// Batches the session has sent (the gate of [`PushTx::deliver`]).
    sent: Arc<Mutex<u64>>,
    /// Bytes of pushes handed over and not yet taken by the session.
    queued: Arc<AtomicUsize>,
    /// The end of the stream, found while draining pushes in [`Dedicated::send`].
    ended: Option<End>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Batch(_) => "Batch",
            Msg::Release => "Release",
            Msg::Reselected => "Reselected",
            Msg::HandOver(_) => "HandOver",
            Msg::Detach(_) => "Detach",
        })
    }
}

impl Dedicated {
    /// Starts the task that checks out a connection and serves this session.
    pub fn start(pool: Pool, label: String, command_timeout: std::time::Duration) -> Dedicated {
        let upstream_id = Arc::new(AtomicU64::new(0));
        // The session calls this as it reads the request: its place in line.
        let turn = pool.turns.take();
        Dedicated::spawn(
            Source::Pool(pool, turn),
            label,
            command_timeout,
            upstream_id,
            None,
        )
    }

    /// Serves a session on a connection of its own (logged in as the session's
    /// user, or tracking keys for it): never pooled, closed when the session lets
    /// go. Pushes Redis sends on it while no command is in flight are read at once
    /// ([`Dedicated::next_push`]); past `push_limit` bytes not yet taken by the
    /// session, the stream of pushes ends with [`End::Overflow`].
    pub fn private(
        conn: ExclusiveConn,
        label: String,
        command_timeout: std::time::Duration,
        push_limit: usize,
    ) -> Dedicated {
        let (tx, rx) = mpsc::unbounded_channel();
        let sent = Arc::new(Mutex::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let watch = PushTx {
            tx,
            sent: sent.clone(),
            queued: queued.clone(),
            limit: push_limit,
            started: 0,
            carry: BytesMut::new(),
            live: true,
        };
        // Known at once (a session may name this connection right after opening it).
        let upstream_id = Arc::new(AtomicU64::new(conn.id));
        let pushes = PushRx {
            rx,
            sent,
            queued,
            ended: None,
        };
        Dedicated::spawn(
            Source::Own(conn),
            label,
            command_timeout,
            upstream_id,
            Some((watch, pushes)),
        )
    }

    fn spawn(
        source: Source,
        label: String,
        command_timeout: std::time::Duration,
        upstream_id: Arc<AtomicU64>,
        pushes: Option<(PushTx, PushRx)>,
    ) -> Dedicated {
        let (tx, rx) = mpsc::unbounded_channel();
        let (watch, pushes) = pushes.unzip();
        tokio::spawn(run(
            source,
            rx,
            label,
            command_timeout,
            upstream_id.clone(),
            watch,
        ));
        Dedicated {
            tx,
            upstream_id,
            pushes,
        }
    }

    /// Redis's `CLIENT ID` of the connection once it is checked out (0 before, and
    /// after the connection is given back or lost).
    pub fn upstream_id(&self) -> Arc<AtomicU64> {
        self.upstream_id.clone()
    }

    /// Queues a batch for the exclusive connection. Returns the pushes read before
    /// it: the session queues them in front of the batch's reply.
    pub fn send(&mut self, batch: Batch) -> Vec<Bytes> {
        let mut before = Vec::new();
        if let Some(p) = &mut self.pushes {
            // Counted under the gate: from now on the task puts what it reads in
            // front of this batch's reply, and everything it handed over before
            // is already in the channel.
            let mut sent = p.sent.lock().unwrap_or_else(|e| e.into_inner());
            *sent += 1;
            while p.ended.is_none() {
                match p.rx.try_recv() {
                    Ok(Ok(push)) => {
                        p.queued.fetch_sub(push.len(), Relaxed);
                        before.push(push);
                    }
                    Ok(Err(end)) => p.ended = Some(end),
                    Err(_) => break,
                }
            }
        }
        if let Err(mpsc::error::SendError(Msg::Batch(b))) = self.tx.send(Msg::Batch(batch)) {
            drop(b);
        }
        before
    }

    /// Whether an own connection kept idle is still open: its stream of pushes
    /// has not ended and it still has its `CLIENT ID`. What Redis pushed there
    /// meanwhile is dropped (nobody was waiting for it).
    pub fn still_open(&mut self) -> bool {
        if let Some(p) = &mut self.pushes {
            while p.ended.is_none() {
                match p.rx.try_recv() {
                    Ok(Ok(push)) => {
                        p.queued.fetch_sub(push.len(), Relaxed);
                    }
                    Ok(Err(end)) => p.ended = Some(end),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => p.ended = Some(End::Closed),
                }
            }
        }
        self.pushes.as_ref().is_some_and(|p| p.ended.is_none())
            && self.upstream_id.load(Relaxed) != 0
    }

    /// Whether this connection's pushes are watched (an own connection whose
    /// stream of pushes has not ended).
    pub fn watches_pushes(&self) -> bool {
        self.pushes.is_some()
    }

    /// The next push Redis sent while no command was in flight, or why the stream
    /// of pushes ended ([`End::Closed`]: the connection closed or lost its place in
    /// the stream; [`End::Overflow`]: the session fell too far behind). After the
    /// end, and on pooled connections, it never completes. Cancellation-safe.
    pub async fn next_push(&mut self) -> Result<Bytes, End> {
        let Some(p) = &mut self.pushes else {
            return std::future::pending().await;
        };
        let got = match p.ended.take() {
            Some(end) => Err(end),
            None => match p.rx.recv().await {
                Some(Ok(push)) => {
                    p.queued.fetch_sub(push.len(), Relaxed);
                    return Ok(push);
                }
                Some(Err(end)) => Err(end),
                None => Err(End::Closed),
            },
        };
        self.pushes = None;
        got
    }

    /// A SELECT was sent on the connection (inside a transaction): before it goes
    /// back to the pool, it selects the pool's database again.
    pub fn reselect_on_release(&self) {
        let _ = self.tx.send(Msg::Reselected);
    }

    /// The connection's state is clean after the queued batches: return it as is.
    pub fn release(self) {
        let _ = self.tx.send(Msg::Release);
    }

    /// An own connection, once every batch sent is answered, with the pushes it
    /// read before (in order; the buffer keeps the start of any push not yet
    /// complete). `None` if it was lost, or is pooled.
    pub async fn hand_over(mut self) -> Option<(ExclusiveConn, Vec<Bytes>)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Msg::HandOver(tx)).ok()?;
        let conn = rx.await.ok()?;
        // Everything the task read before it let go is in the channel now.
        let mut pushes = Vec::new();
        let p = self.pushes.as_mut()?;
        while let Ok(got) = p.rx.try_recv() {
            pushes.push(got.ok()?);
        }
        Some((conn, pushes))
    }

    /// A pooled connection, once every batch sent is answered, taken out of the
    /// pool as it is (its `WATCH`, its `SELECT`): a new connection takes its place
    /// there. The task serving it ends; on an error (the new connection could not
    /// be opened, the connection was lost, or it is not pooled) it goes on serving.
    pub async fn detach(&mut self) -> Result<ExclusiveConn, UpstreamError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || UpstreamError::Lost {
            addr: String::new(),
            sent: false,
        };
        self.tx.send(Msg::Detach(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// The task's end of an own connection's pushes.
struct PushTx {
    tx: mpsc::UnboundedSender<Result<Bytes, End>>,
    /// Batches the session has sent.
    sent: Arc<Mutex<u64>>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    /// Batches taken from the session so far.
    started: u64,
    /// Pushes read after the session sent a batch not yet started: they go in
    /// front of that batch's reply.
    carry: BytesMut,
    /// Still watching (not after the connection closed or the session fell behind).
    live: bool,
}

impl PushTx {
    /// Hands on every complete push at the start of `conn`'s buffer. A reply there
    /// (nothing was asked) means the stream is out of step.
    fn deliver(&mut self, conn: &mut ExclusiveConn) -> Result<(), End> {
        loop {
            match conn.frames.next_frame() {
                Ok(Some((frame, _))) if frame.is_push => {
                    let push = conn.frames.take();
                    let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
                    if *sent > self.started {
                        // The session already counts on a batch's reply: this push
                        // came first, so it goes first.
                        self.carry.extend_from_slice(&push);
                    } else {
                        let len = push.len();
                        if self.queued.fetch_add(len, Relaxed) + len > self.limit {
                            return Err(End::Overflow);
                        }
                        if self.tx.send(Ok(push)).is_err() {
                            self.queued.fetch_sub(len, Relaxed);
                        }
                    }
                }
                Ok(None) => return Ok(()),
                Ok(Some(_)) | Err(_) => return Err(End::Closed),
            }
        }
    }

    /// Stops watching and tells the session why.
    fn end(&mut self, end: End) {
        self.live = false;
        let _ = self.tx.send(Err(end));
    }

    /// A batch's reply, followed by the complete pushes read with it: Redis
    /// wrote them right after it (a flush's invalidation after `FLUSHDB`'s
    /// `+OK`), so they reach the client before anything the proxy answers after
    /// that reply.
    fn with_trailing(conn: &mut ExclusiveConn, reply: Bytes) -> Bytes {
        let mut all: Option<BytesMut> = None;
        while let Some(push) = conn.frames.take_push() {
            all.get_or_insert_with(|| BytesMut::from(&reply[..]))
                .extend_from_slice(&push);
        }
        all.map_or(reply, BytesMut::freeze)
    }

    /// A batch's reply, behind the pushes read before it started.
    fn behind_carry(&mut self, reply: Bytes) -> Bytes {
        if self.carry.is_empty() {
            return reply;
        }
        let mut all = std::mem::take(&mut self.carry);
        all.extend_from_slice(&reply);
        all.freeze()
    }
}

/// Checks out a connection, in `turn` (see [`Turns`]).
///
/// An idle connection is checked without a round trip ([`ExclusiveConn::is_alive`]);
/// one Redis closed meanwhile is dropped and the next one taken. Not a PING (bb8's
/// `test_on_check_out`): that round trip delayed every blocking command, so of two
/// clients that sent BLPOP one after the other the second often reached Redis
/// first and got the element meant for the first (and in Redis's own "BRPOPLPUSH
/// with multiple blocked clients" the first never got its WRONGTYPE and stayed
/// blocked). Waiting for the turn counts against the same bound as waiting for a
/// free connection: an exhausted pool answers within `connect_timeout`.
async fn checkout<'a>(
    pool: &'a Pool,
    turn: &Turn,
) -> Result<bb8::PooledConnection<'a, Manager>, UpstreamError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + pool.manager.cfg.connect_timeout;
    // Subscribed before asking the pool, so the attempt made for us is seen.
    let mut connect_failed = pool.manager.failures.connect.subscribe();
    let in_turn = async {
        turn.wait().await;
        // Each dead idle connection is dropped, so this ends within `max` + 1 tries.
        for _ in 0..pool.max {
            let mut conn = get(pool, &mut connect_failed, started).await?;
            if conn.is_alive() {
                return Ok(conn);
            }
            // Closed by Redis while idle: the pool drops it when it comes back broken.
            conn.broken = true;
        }
        get(pool, &mut connect_failed, started).await
    };
    tokio::time::timeout_at(deadline, in_turn)
        .await
        .unwrap_or_else(|_| Err(pool.timed_out(started, None)))
}

/// One checkout from bb8. bb8 opens a new connection in the background when none is
/// idle and the pool has room, but does not hand that attempt's error to the
/// waiting checkout (it just waits on, until `connection_timeout`); so the checkout
/// also watches the manager's connect failures and fails with the first one at once.
///
/// A wait is asked again every [`REGET`] (the caller's deadline bounds it): the
/// failure of an attempt is seen here (it is recorded inside the manager's
/// `connect`) a moment before bb8 counts the attempt as over, and a checkout that
/// asks bb8 in that moment starts no attempt of its own (bb8 thinks one is under
/// way) and would wait, with none, until `connection_timeout`. Asking again starts
/// one if none is pending, and never a second one while one is.
async fn get<'a>(
    pool: &'a Pool,
    connect_failed: &mut watch::Receiver<Option<UpstreamError>>,
    started: Instant,
) -> Result<bb8::PooledConnection<'a, Manager>, UpstreamError> {
    loop {
        tokio::select! {
            got = tokio::time::timeout(REGET, pool.inner.get()) => return match got {
                Err(_) => continue,
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(bb8::RunError::User(e))) => Err(e),
                Ok(Err(bb8::RunError::TimedOut)) => {
                    let failed = if connect_failed.has_changed().unwrap_or(false) {
                        connect_failed.borrow_and_update().clone()
                    } else {
                        None
                    };
                    Err(pool.timed_out(started, failed))
                }
            },
            Ok(()) = connect_failed.changed() => {
                let failed = connect_failed.borrow_and_update().clone();
                return Err(failed.unwrap_or_else(|| pool.timed_out(started, None)));
            }
        }
    }
}

/// How long one request to bb8 for a connection waits before it is made again
/// (see [`get`]).
const REGET: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a task in turn waits for its session's first batch (sent as the session
/// starts the task, so normally already there) before letting the next one go.
const FIRST_BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// The order in which sessions asked a pool for a connection. Each takes a ticket
/// when it starts ([`Dedicated::start`], called as the session reads the request)
/// and checks out a connection and writes its first batch only when every session
/// that asked before has done so (or given up). Redis serves blocked clients in the
/// order their commands arrive, and clients (Redis's own test suite among them)
/// rely on two BLPOPs sent one after the other being served in that order; without
/// this, whichever session's checkout or connect finished first went first.
#[derive(Debug)]
struct Turns {
    state: Mutex<TurnState>,
    /// The lowest ticket not yet finished: its holder may go.
    now: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct TurnState {
    issued: u64,
    now: u64,
    /// Finished tickets above `now` (their holders went out of turn: gave up).
    finished: BTreeSet<u64>,
}

impl Default for Turns {
    fn default() -> Turns {
        Turns {
            state: Mutex::new(TurnState::default()),
            now: watch::channel(0).0,
        }
    }
}

impl Turns {
    fn lock(&self) -> std::sync::MutexGuard<'_, TurnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(self: &Arc<Self>) -> Turn {
        let mut state = self.lock();
        let n = state.issued;
        state.issued += 1;
        Turn {
            turns: self.clone(),
            n,
            ended: false,
        }
    }

    fn finish(&self, n: u64) {
        let mut state = self.lock();
        state.finished.insert(n);
        let mut now = state.now;
        while state.finished.remove(&now) {
            now += 1;
        }
        state.now = now;
        self.now.send_replace(now);
    }
}

/// A session's ticket in its pool's [`Turns`]; ended at the latest when dropped.
#[derive(Debug)]
struct Turn {
    turns: Arc<Turns>,
    n: u64,
    ended: bool,
}

impl Turn {
    /// Waits until every earlier ticket has ended.
    async fn wait(&self) {
        let mut now = self.turns.now.subscribe();
        let _ = now.wait_for(|&now| now >= self.n).await;
    }

    /// Lets the next session go.
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.turns.finish(self.n);
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.end();
    }
}

/// Where a [`Dedicated`] task's connection comes from.
enum Source {
    /// Checked out of the database's pool in the session's turn, returned when the
    /// session lets go.
    Pool(Pool, Turn),
    /// The session's own connection, closed when it lets go.
    Own(ExclusiveConn),
}

async fn run(
    source: Source,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    label: String,
    command_timeout: std::time::Duration,
    upstream_id: Arc<AtomicU64>,
    watch: Option<PushTx>,
) {
    let (pool, mut turn) = match source {
        Source::Own(mut conn) => {
            let handed = serve(
                &mut conn,
                &mut rx,
                command_timeout,
                &upstream_id,
                None,
                watch,
                None,
            )
            .await;
            if let Some(to) = handed.filter(|_| !conn.broken) {
                let _ = to.send(conn);
            }
            return;
        }
        Source::Pool(pool, turn) => (pool, turn),
    };
    let mut conn = match checkout(&pool, &turn).await {
        Ok(c) => c,
        Err(err) => {
            turn.end();
            tracing::debug!(db = %label, error = %err, "no exclusive upstream connection");
            while let Some(msg) = rx.recv().await {
                if let Msg::Batch(b) = msg {
                    let _ = b.reply.send(Err(err.clone()).into());
                }
            }
            return;
        }
    };
    serve(
        &mut conn,
        &mut rx,
        command_timeout,
        &upstream_id,
        Some(&pool.manager),
        None,
        Some(turn),
    )
    .await;
}

/// Runs the session's batches on `conn` until it lets go. For a pooled connection
/// (`pooled`: the pool's manager), leaves it clean for the next user or marks it
/// broken so the pool drops it. With `watch` (an own connection), the socket is
/// also read while no batch is in flight, and pushes are handed to the session.
/// Returns where the session asked an own connection to be handed over, if it did.
async fn serve(
    conn: &mut ExclusiveConn,
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    command_timeout: std::time::Duration,
    upstream_id: &Arc<AtomicU64>,
    pooled: Option<&Manager>,
    mut watch: Option<PushTx>,
    mut turn: Option<Turn>,
) -> Option<tokio::sync::oneshot::Sender<ExclusiveConn>> {
    upstream_id.store(conn.id, Relaxed);
    // Cleared however the task ends (the session may still be asked to unblock).
    let _cleared = ClearOnDrop(upstream_id.clone());
    let mut clean = false;
    let mut reselect = false;
    loop {
        let in_turn = turn.as_mut().filter(|t| !t.ended);
        let msg = match watch.as_mut().filter(|w| w.live && !conn.broken) {
            // In turn (a pooled connection's first batch): the session sent it as it
            // started this task, so it is (all but) there; the next session waits
            // until it is written.
            _ if in_turn.is_some() => match rx.try_recv() {
                Ok(msg) => Some(msg),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout(FIRST_BATCH_WAIT, rx.recv()).await {
                        Ok(msg) => msg,
                        Err(_) => {
                            if let Some(t) = in_turn {
                                t.end();
                            }
                            rx.recv().await
                        }
                    }
                }
            },
            Some(w) => {
                // Pushes left behind a reply (or read just now) first.
                if let Err(end) = w.deliver(conn) {
                    conn.broken = true;
                    upstream_id.store(0, Relaxed);
                    w.end(end);
                    continue;
                }
                tokio::select! {
                    biased;
                    m = rx.recv() => m,
                    r = conn.frames.fill(&mut conn.stream) => {
                        if !matches!(r, Ok(n) if n > 0) {
                            // Closed while idle: the session hears of it now.
                            conn.broken = true;
                            upstream_id.store(0, Relaxed);
                            w.end(End::Closed);
                        }
                        continue;
                    }
                }
            }
            None => rx.recv().await,
        };
        let Some(msg) = msg else {
            break;
        };
        let batch = match msg {
            Msg::Batch(b) => b,
            Msg::Release => {
                clean = true;
                break;
            }
            Msg::Reselected => {
                reselect = true;
                continue;
            }
            Msg::HandOver(to) if pooled.is_none() => return Some(to),
            // (Only an own connection is handed over.)
            Msg::HandOver(_) => continue,
            Msg::Detach(to) => {
                let fresh = match pooled.filter(|_| !conn.broken) {
                    Some(m) => bb8::ManageConnection::connect(m).await,
                    None => Err(UpstreamError::Lost {
                        addr: conn.addr.clone(),
                        sent: false,
                    }),
                };
                match fresh {
                    Ok(fresh) => {
                        // The pool gets the new one back as it is.
                        let _ = to.send(Ok(std::mem::replace(conn, fresh)));
                        return None;
                    }
                    Err(e) => {
                        let _ = to.send(Err(e));
                        continue;
                    }
                }
            }
        };
        if let Some(w) = &mut watch {
            w.started += 1;
        }
        if conn.broken {
            if let Some(t) = turn.as_mut() {
                t.end();
            }
            let _ = batch.reply.send(
                Err(UpstreamError::Lost {
                    addr: conn.addr.clone(),
                    sent: false,
                })
                .into(),
            );
            continue;
        }
        let Batch {
            bytes,
            count,
            mut reply,
            block,
            ..
        } = batch;
        let limit = match block {
            Block::No => Some(conn.endpoint.reply_within(command_timeout)),
            Block::For(d) => Some(conn.endpoint.reply_within(command_timeout + d)),
            Block::Forever => None,
        };
        let sleep = async {
            match limit {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.round_trip_then(&bytes, count, || {
                if let Some(t) = turn.as_mut() {
                    t.end();
                }
            }) => {
                let r = match &mut watch {
                    Some(w) => r.map(|bytes| PushTx::with_trailing(conn, w.behind_carry(bytes))),
                    None => r,
                };
                let _ = reply.send(r.into());
            }
            _ = sleep => {
                // Its place in the reply stream is unknown now: never reuse it.
                conn.broken = true;
                let _ = reply.send(
                    Err(UpstreamError::Timeout {
                        addr: conn.addr.clone(),
                        after: limit.unwrap_or_default(),
                    })
                    .into(),
                );
                return None;
            }
            _ = reply.closed() => {
                // The client left while its command was running (e.g. blocked).
                conn.broken = true;
                return None;
            }
        }
    }
    // (An own connection is closed as it is.)
    let home = pooled?.cfg.db;
    if !clean && !conn.broken {
        let reset = b"*1\r\n$7\r\nDISCARD\r\n*1\r\n$7\r\nUNWATCH\r\n";
        match tokio::time::timeout(command_timeout, conn.round_trip(reset, 2)).await {
            Ok(Ok(_)) => {}
            _ => conn.broken = true,
        }
    }
    if reselect && !conn.broken {
        let mut select = Vec::new();
        let db = home.to_string();
        encode_command(&[&b"SELECT"[..], db.as_bytes()], &mut select);
        match tokio::time::timeout(command_timeout, conn.round_trip(&select, 1)).await {
            Ok(Ok(r)) if r.as_ref() == b"+OK\r\n" => {}
            _ => conn.broken = true,
        }
    }
    None
}

/// Resets a connection id to 0 when the task holding the connection ends.
struct ClearOnDrop(Arc<AtomicU64>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    #[test]
    fn reads_the_id_of_a_hello_reply() {
        let resp2 = b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:1234\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n";
        assert_eq!(hello_id(resp2), Some(1234));
        let resp3 = b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:7\r\n";
        assert_eq!(hello_id(resp3), Some(7));
        assert_eq!(hello_id(b"-ERR unknown command 'HELLO'\r\n"), None);
    }

    /// A connection to a fake server that writes `chunks` in order (an empty one:
    /// waits for a request first), then closes.
    async fn scripted(chunks: Vec<&'static [u8]>) -> ExclusiveConn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            for chunk in chunks {
                if chunk.is_empty() {
                    // Wait for a request first.
                    if s.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    continue;
                }
                s.write_all(chunk).await.unwrap();
            }
            // Then it closes.
        });
        over(tokio::net::TcpStream::connect(addr).await.unwrap())
    }

    /// A connection over `tcp`, as opened and set up.
    fn over(tcp: tokio::net::TcpStream) -> ExclusiveConn {
        ExclusiveConn {
            addr: tcp.peer_addr().expect("peer").to_string(),
            stream: tcp.into(),
            frames: Frames::new(4096),
            broken: false,
            id: 0,
            endpoint: crate::endpoint::Endpoint::new(),
            generation: 0,
        }
    }

    const PUSH: &[u8] = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n";

    #[tokio::test]
    async fn pushes_in_a_round_trip_keep_their_place_and_are_not_counted() {
        let mut conn = scripted(vec![
            b"",
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n+OK\r\n",
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n$1\r\nv\r\n",
        ])
        .await;
        let got = conn
            .round_trip(b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n", 2)
            .await
            .unwrap();
        assert_eq!(
            got.as_ref(),
            [PUSH, b"+OK\r\n", PUSH, b"$1\r\nv\r\n"].concat().as_slice()
        );
        assert!(!conn.broken);
    }

    #[tokio::test]
    async fn an_own_connection_hands_over_pushes_while_idle_and_in_order() {
        let conn = scripted(vec![
            // While idle: a push at once.
            PUSH,
            // A request: its reply, then a push behind it, read with it: it
            // goes with the reply (Redis wrote it right after).
            b"",
            b"+OK\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n",
        ])
        .await;
        let mut d = Dedicated::private(conn, "test".into(), Duration::from_secs(5), 1 << 20);
        let first = tokio::time::timeout(Duration::from_secs(5), d.next_push())
            .await
            .unwrap();
        assert_eq!(first.unwrap().as_ref(), PUSH);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let before = d.send(Batch {
            bytes: Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"),
            count: 1,
            reply: tx,
            block: Block::No,
            retry: crate::upstream::mux::Retry {
                origin: 1,
                readonly: false,
                bound: tokio::time::Instant::now(),
                attempts: 0,
                alone: false,
            },
            divert: None,
            may_hold: false,
        });
        assert!(before.is_empty());
        let reply = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            reply.reply.unwrap().as_ref(),
            [&b"+OK\r\n"[..], PUSH].concat().as_slice()
        );
        // The server closes: the stream of pushes ends, once.
        let end = tokio::time::timeout(Duration::from_secs(5), d.next_push())
            .await
            .unwrap();
        assert_eq!(end, Err(End::Closed));
        assert!(!d.watches_pushes());
        assert_eq!(d.upstream_id().load(Relaxed), 0);
    }

    /// A pooled connection Redis closed a moment before its checkout, while the
    /// runtime did not turn (a busy one lags by milliseconds): the checkout's
    /// check finds it dead, so no command is sent on it (until session 44 it was
    /// handed out, and its command reported as one that may have run).
    #[tokio::test]
    async fn an_idle_connection_closed_unseen_by_the_runtime_is_not_alive() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut peer, _) = listener.accept().expect("accept");
        let mut conn = over(tcp);
        peer.write_all(b"+PONG\r\n").expect("write");
        let got = conn.round_trip(b"*1\r\n$4\r\nPING\r\n", 1).await;
        assert_eq!(got.expect("reply").as_ref(), b"+PONG\r\n");
        let mut buf = [0u8; 64];
        assert_eq!(peer.read(&mut buf).expect("read"), 14);
        assert!(conn.is_alive(), "open and idle");
        // Closed (a FIN: everything was read) while this current-thread runtime
        // does not turn.
        drop(peer);
        std::thread::sleep(Duration::from_millis(20));
        // The premise: the runtime's readiness has not seen the close.
        let mut probe = [0u8; 1];
        let e = conn.stream.try_read(&mut probe).expect_err("unseen close");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        assert!(!conn.is_alive());
    }
}
