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
//! A checkout that cannot be served says why: the manager keeps the last failure of
//! opening a connection (refused, AUTH or SELECT rejected, not logged in) and a
//! waiting checkout fails with it as soon as it happens, rather than after the
//! connect timeout. Only when every pooled connection is checked out does the error
//! say that they are all in use.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::connect::connect;
use super::error::UpstreamError;
use super::frames::Frames;
use super::mux::{Batch, BatchReply};
use crate::command::Block;
use crate::config::UpstreamConfig;

use crate::protocol::request::encode_command;

/// A connection owned by one session at a time.
#[derive(Debug)]
pub struct ExclusiveConn {
    stream: TcpStream,
    frames: Frames,
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
            frames: Frames::new(4096),
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

    /// Writes `bytes` and reads `count` complete replies, returned back to back.
    ///
    /// Cancellation-safe for the pool: until the last reply is read the connection
    /// counts as broken, so one dropped mid-exchange (e.g. a checkout's PING given
    /// up) is never handed to anyone else with a reply still on its way.
    pub(crate) async fn round_trip(&mut self, bytes: &[u8], count: u32) -> BatchReply {
        self.broken = true;
        let reply = self.exchange(bytes, count).await;
        if reply.is_ok() {
            self.broken = false;
        }
        reply
    }

    /// One exchange; an error leaves the connection broken (see `round_trip`).
    async fn exchange(&mut self, bytes: &[u8], count: u32) -> BatchReply {
        let lost = |sent| UpstreamError::Lost {
            addr: self.addr.clone(),
            sent,
        };
        if self.stream.write_all(bytes).await.is_err() {
            return Err(lost(true));
        }
        let mut done = 0;
        while done < count {
            match self.frames.next_frame() {
                Ok(Some(_)) => done += 1,
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
/// went wrong last (see [`Failures`]).
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
            Ok(r) if r.as_ref() == b"+PONG\r\n" => return Ok(()),
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
        conn.broken
    }
}

/// A per-database bb8 pool of exclusive connections.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: bb8::Pool<Manager>,
    manager: Manager,
    max: u32,
}

impl Pool {
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
        .test_on_check_out(true)
        // One attempt per checkout: bb8's retries would hide an immediate error
        // (refused, AUTH rejected) until `connection_timeout`.
        .retry_connection(false)
        .build_unchecked(manager.clone());
    Pool {
        inner,
        manager,
        max,
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
        Dedicated::spawn(Source::Pool(pool), label, command_timeout)
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

/// Checks out a connection. bb8 opens a new one in the background when none is idle
/// and the pool has room, but does not hand that attempt's error to the waiting
/// checkout (it just waits on, until `connection_timeout`); so the checkout also
/// watches the manager's connect failures and fails with the first one at once.
async fn checkout(pool: &Pool) -> Result<bb8::PooledConnection<'_, Manager>, UpstreamError> {
    let started = Instant::now();
    // Subscribed before asking the pool, so the attempt made for us is seen.
    let mut connect_failed = pool.manager.failures.connect.subscribe();
    tokio::select! {
        got = pool.inner.get() => match got {
            Ok(conn) => Ok(conn),
            Err(bb8::RunError::User(e)) => Err(e),
            Err(bb8::RunError::TimedOut) => {
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
            Err(failed.unwrap_or_else(|| pool.timed_out(started, None)))
        }
    }
}

/// Where a [`Dedicated`] task's connection comes from.
enum Source {
    /// Checked out of the database's pool, returned when the session lets go.
    Pool(Pool),
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
    let pool = match source {
        Source::Own(mut conn) => {
            serve(&mut conn, &mut rx, command_timeout, &upstream_id, None).await;
            return;
        }
        Source::Pool(pool) => pool,
    };
    let mut conn = match checkout(&pool).await {
        Ok(c) => c,
        Err(err) => {
            tracing::debug!(db = %label, error = %err, "no exclusive upstream connection");
            while let Some(msg) = rx.recv().await {
                if let Msg::Batch(b) = msg {
                    let _ = b.reply.send(Err(err.clone()).into());
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
) {
    upstream_id.store(conn.id, Relaxed);
    // Cleared however the task ends (the session may still be asked to unblock).
    let _cleared = ClearOnDrop(upstream_id.clone());
    let mut clean = false;
    let mut reselect = false;
    while let Some(msg) = rx.recv().await {
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
            r = conn.round_trip(&bytes, count) => {
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
