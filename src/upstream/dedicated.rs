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

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::connect::connect;
use super::error::UpstreamError;
use super::mux::{Batch, BatchReply};
use crate::command::Block;
use crate::config::UpstreamConfig;
use crate::protocol::reply;
use crate::protocol::request::encode_command;

/// A connection owned by one session at a time.
#[derive(Debug)]
pub struct ExclusiveConn {
    stream: TcpStream,
    buf: BytesMut,
    broken: bool,
    addr: String,
    /// Redis's `CLIENT ID` for this connection (0 if Redis did not say).
    id: u64,
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
        let stream = connect(cfg, resp3).await?;
        let mut conn = ExclusiveConn {
            stream,
            buf: BytesMut::with_capacity(4096),
            broken: false,
            addr: cfg.address(),
            id: 0,
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

    /// Whether an idle connection is still usable, without a round trip: it has
    /// nothing to read, so a read that would block means yes; end of stream (Redis
    /// restarted, or closed it for idleness), an error or stray bytes mean no.
    fn is_alive(&self) -> bool {
        if self.broken || !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(
            self.stream.try_read(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Writes `bytes` and reads `count` complete replies, returned back to back.
    async fn round_trip(&mut self, bytes: &[u8], count: u32) -> BatchReply {
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
        let lost = |sent| UpstreamError::Lost {
            addr: self.addr.clone(),
            sent,
        };
        let wrote = self.stream.write_all(bytes).await;
        written();
        if wrote.is_err() {
            self.broken = true;
            return Err(lost(true));
        }
        let mut scanned = 0;
        let mut done = 0;
        while done < count {
            match reply::scan(&self.buf[scanned..]) {
                Ok(Some(frame)) => {
                    scanned += frame.len;
                    done += 1;
                }
                Ok(None) => match self.stream.read_buf(&mut self.buf).await {
                    Ok(n) if n > 0 => {}
                    _ => {
                        self.broken = true;
                        return Err(lost(true));
                    }
                },
                Err(_) => {
                    self.broken = true;
                    return Err(UpstreamError::Protocol {
                        addr: self.addr.clone(),
                    });
                }
            }
        }
        Ok(self.buf.split_to(scanned).freeze())
    }
}

/// bb8 manager: opens connections with AUTH/SELECT done; a connection that failed
/// mid-command is reported broken and dropped by the pool.
#[derive(Debug, Clone)]
pub struct Manager {
    cfg: UpstreamConfig,
    resp3: bool,
}

impl Manager {
    /// A manager for `cfg`'s upstream, speaking RESP2 or (after `HELLO 3`) RESP3.
    pub fn new(cfg: UpstreamConfig, resp3: bool) -> Manager {
        Manager { cfg, resp3 }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = ExclusiveConn;
    type Error = UpstreamError;

    async fn connect(&self) -> Result<ExclusiveConn, UpstreamError> {
        ExclusiveConn::open(&self.cfg, self.resp3, true).await
    }

    /// A PING round trip: the health probe's check. Checkouts do not use it (the
    /// pool is built without `test_on_check_out`; see [`checkout`]).
    async fn is_valid(&self, conn: &mut ExclusiveConn) -> Result<(), UpstreamError> {
        let r = conn.round_trip(b"*1\r\n$4\r\nPING\r\n", 1).await?;
        if r.as_ref() == b"+PONG\r\n" {
            Ok(())
        } else {
            conn.broken = true;
            Err(UpstreamError::Protocol {
                addr: conn.addr.clone(),
            })
        }
    }

    fn has_broken(&self, conn: &mut ExclusiveConn) -> bool {
        conn.broken
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
    /// Open and idle connections.
    pub fn state(&self) -> bb8::State {
        self.inner.state()
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
}

/// A session's handle to its exclusive connection.
#[derive(Debug)]
pub struct Dedicated {
    tx: mpsc::UnboundedSender<Msg>,
    upstream_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Batch(_) => "Batch",
            Msg::Release => "Release",
            Msg::Reselected => "Reselected",
        })
    }
}

impl Dedicated {
    /// Starts the task that checks out a connection and serves this session.
    pub fn start(pool: Pool, label: String, command_timeout: std::time::Duration) -> Dedicated {
        // The session calls this as it reads the request: its place in line.
        let turn = pool.turns.take();
        Dedicated::spawn(Source::Pool(pool, turn), label, command_timeout)
    }

    /// Serves a session on a connection of its own (logged in as the session's
    /// user): never pooled, closed when the session lets go.
    pub fn private(
        conn: ExclusiveConn,
        label: String,
        command_timeout: std::time::Duration,
    ) -> Dedicated {
        Dedicated::spawn(Source::Own(conn), label, command_timeout)
    }

    fn spawn(source: Source, label: String, command_timeout: std::time::Duration) -> Dedicated {
        let (tx, rx) = mpsc::unbounded_channel();
        let upstream_id = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(source, rx, label, command_timeout, upstream_id.clone()));
        Dedicated { tx, upstream_id }
    }

    /// Redis's `CLIENT ID` of the connection once it is checked out (0 before, and
    /// after the connection is given back).
    pub fn upstream_id(&self) -> Arc<AtomicU64> {
        self.upstream_id.clone()
    }

    /// Queues a batch for the exclusive connection.
    pub fn send(&self, batch: Batch) {
        if let Err(mpsc::error::SendError(Msg::Batch(b))) = self.tx.send(Msg::Batch(batch)) {
            drop(b);
        }
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
}

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

/// Checks out a connection, in `turn` (see [`Turns`]). When none is idle and the
/// pool has room, a new connection is opened first — alongside the sessions ahead
/// in line — and here, so a refused connect or a rejected AUTH is reported at once
/// with its cause (bb8 would only report a checkout timeout).
///
/// An idle connection is checked without a round trip ([`ExclusiveConn::is_alive`]);
/// one Redis closed meanwhile is dropped and the next one taken. Not a PING (bb8's
/// `test_on_check_out`): that round trip delayed every blocking command, so of two
/// clients that sent BLPOP one after the other the second often reached Redis
/// first and got the element meant for the first (and in Redis's own "BRPOPLPUSH
/// with multiple blocked clients" the first never got its WRONGTYPE and stayed
/// blocked).
async fn checkout<'a>(
    pool: &'a Pool,
    turn: &Turn,
) -> Result<bb8::PooledConnection<'a, Manager>, bb8::RunError<UpstreamError>> {
    fill(pool).await?;
    // Waiting for the turn counts against the same bound as waiting for a free
    // connection: an exhausted pool answers within `connect_timeout`, as before.
    let deadline = tokio::time::Instant::now() + pool.manager.cfg.connect_timeout;
    let in_turn = async {
        turn.wait().await;
        // Each dead idle connection is dropped, so this ends within `max` + 1 turns.
        for _ in 0..pool.max {
            let mut conn = pool.inner.get().await?;
            if conn.is_alive() {
                return Ok(conn);
            }
            // Closed by Redis while idle: the pool drops it when it comes back broken.
            conn.broken = true;
            drop(conn);
            fill(pool).await?;
        }
        pool.inner.get().await
    };
    tokio::time::timeout_at(deadline, in_turn)
        .await
        .unwrap_or(Err(bb8::RunError::TimedOut))
}

/// Opens a connection into the pool if none is idle and there is room.
async fn fill(pool: &Pool) -> Result<(), bb8::RunError<UpstreamError>> {
    let state = pool.inner.state();
    if state.idle_connections == 0 && state.connections < pool.max {
        let conn = bb8::ManageConnection::connect(&pool.manager)
            .await
            .map_err(bb8::RunError::User)?;
        // If the pool filled up meanwhile, the connection is dropped and we wait.
        let _ = pool.inner.add(conn);
    }
    Ok(())
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
) {
    let (pool, mut turn) = match source {
        Source::Own(mut conn) => {
            serve(
                &mut conn,
                &mut rx,
                command_timeout,
                &upstream_id,
                None,
                None,
            )
            .await;
            return;
        }
        Source::Pool(pool, turn) => (pool, turn),
    };
    let mut conn = match checkout(&pool, &turn).await {
        Ok(c) => c,
        Err(e) => {
            turn.end();
            let err = match e {
                bb8::RunError::User(e) => e,
                bb8::RunError::TimedOut => UpstreamError::Connect {
                    addr: label,
                    reason: "no exclusive connection free in the pool (all in use by transactions or blocking commands) before the timeout".into(),
                },
            };
            while let Some(msg) = rx.recv().await {
                if let Msg::Batch(b) = msg {
                    let _ = b.reply.send(Err(err.clone()));
                }
            }
            return;
        }
    };
    let home = pool.manager.cfg.db;
    serve(
        &mut conn,
        &mut rx,
        command_timeout,
        &upstream_id,
        Some(home),
        Some(turn),
    )
    .await;
}

/// Runs the session's batches on `conn` until it lets go. For a pooled connection
/// (`home`: the pool's db index), leaves it clean for the next user or marks it
/// broken so the pool drops it.
async fn serve(
    conn: &mut ExclusiveConn,
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    command_timeout: std::time::Duration,
    upstream_id: &Arc<AtomicU64>,
    home: Option<u32>,
    mut turn: Option<Turn>,
) {
    upstream_id.store(conn.id, Relaxed);
    // Cleared however the task ends (the session may still be asked to unblock).
    let _cleared = ClearOnDrop(upstream_id.clone());
    let mut clean = false;
    let mut reselect = false;
    loop {
        let msg = match turn.as_mut() {
            // In turn: the session sent its first batch as it started this task,
            // so it is (all but) there; the next session waits until it is written.
            Some(t) if !t.ended => match rx.try_recv() {
                Ok(msg) => Some(msg),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout(FIRST_BATCH_WAIT, rx.recv()).await {
                        Ok(msg) => msg,
                        Err(_) => {
                            t.end();
                            rx.recv().await
                        }
                    }
                }
            },
            _ => rx.recv().await,
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
        };
        if conn.broken {
            if let Some(t) = turn.as_mut() {
                t.end();
            }
            let _ = batch.reply.send(Err(UpstreamError::Lost {
                addr: conn.addr.clone(),
                sent: false,
            }));
            continue;
        }
        let Batch {
            bytes,
            count,
            mut reply,
            block,
        } = batch;
        let limit = match block {
            Block::No => Some(command_timeout),
            Block::For(d) => Some(command_timeout + d),
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
                let _ = reply.send(r);
            }
            _ = sleep => {
                // Its place in the reply stream is unknown now: never reuse it.
                conn.broken = true;
                let _ = reply.send(Err(UpstreamError::Timeout {
                    addr: conn.addr.clone(),
                    after: limit.unwrap_or_default(),
                }));
                return;
            }
            _ = reply.closed() => {
                // The client left while its command was running (e.g. blocked).
                conn.broken = true;
                return;
            }
        }
    }
    let Some(home) = home else {
        return;
    };
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
}

/// Resets a connection id to 0 when the task holding the connection ends.
struct ClearOnDrop(Arc<AtomicU64>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(0, Relaxed);
    }
}
