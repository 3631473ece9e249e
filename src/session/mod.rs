//! One client connection: read requests, send them on, write replies back in order.
//!
//! The session reads whatever the client sent, parses every complete request in the
//! buffer and classifies it. A run of consecutive stateless requests for the same
//! database is forwarded as one [`Batch`] — a slice of the read buffer, not a copy —
//! to the database's shared upstream connection. Requests the proxy answers itself
//! (SELECT, AUTH, HELLO, CLIENT …, PROXY …) end the run. Every request gets a place
//! in a FIFO queue of pending replies, which is written to the client strictly in
//! order, so a pipeline is answered in order even when its commands went to
//! different upstreams.
//!
//! Reading, writing replies and shutdown are raced with `select!` in one task.

mod local;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::future::Future;
use std::ops::Range;

use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clients::{Exclusive, Registration};
use crate::command::{self, table, ArgList, Block, Family, Ranged, Route};
use crate::config::{Secret, UpstreamConfig};
use crate::context::Context;
use crate::protocol::reply;
use crate::protocol::request::{self, encode_command, RequestKind};
use crate::router::Database;
use crate::stats;
use crate::upstream::dedicated::{Dedicated, ExclusiveConn};
use crate::upstream::mux::{Answer, Batch, Retry};
use crate::upstream::oob;
use crate::upstream::pubsub::{self, End, Subscription};
use crate::upstream::UpstreamError;

/// Most queue entries a session may have before it stops reading (backpressure).
const MAX_QUEUE: usize = 1024;
/// Replies larger than this are written straight from their buffer.
const DIRECT_WRITE: usize = 16 * 1024;

/// A reply slot in the session's FIFO.
enum Pending {
    /// A reply the proxy produced.
    Ready(Bytes),
    /// Replies to a batch sent upstream.
    Upstream(Sent),
    /// Close the connection once everything before this is written.
    Close,
}

/// Command-table indexes of the commands in a batch (unknown: `table::COUNT`).
type CmdList = SmallVec<[u16; 16]>;

/// A batch sent upstream, waiting for its answer (retries happen in the shared
/// slot, which keeps the session's batches in order; see `upstream::mux`).
struct Sent {
    rx: oneshot::Receiver<Answer>,
    count: u32,
    db: Arc<Database>,
    /// When it was sent.
    started: Instant,
    cmds: CmdList,
    /// Sent on a shared connection (not an exclusive one).
    shared: bool,
    /// CLIENT REPLY OFF/SKIP: the client gets no reply for this batch.
    silent: bool,
    /// An EXEC whose transaction SELECTs this database: the session switches to it
    /// if EXEC ran the transaction.
    select_after: Option<Arc<Database>>,
}

/// Per-client state kept by the proxy (never applied to a shared connection).
pub(crate) struct State {
    /// Session id (also `CLIENT ID`).
    pub id: u64,
    /// The selected database.
    pub db: Arc<Database>,
    /// Whether the client has authenticated (or no password is required).
    pub authenticated: bool,
    /// `CLIENT SETNAME`.
    pub name: Option<Vec<u8>>,
    /// `CLIENT SETINFO LIB-NAME`.
    pub lib_name: Option<Vec<u8>>,
    /// `CLIENT SETINFO LIB-VER`.
    pub lib_ver: Option<Vec<u8>>,
    /// The client negotiated RESP3 with `HELLO 3`.
    pub resp3: bool,
    /// The client's address.
    pub peer: String,
    /// The user the client authenticated as (`None`: the default user).
    pub user: Option<String>,
}

/// Serves one client until it disconnects, sends a malformed request, or the proxy
/// shuts down (then pending replies are still delivered).
pub async fn run(stream: TcpStream, ctx: Arc<Context>, id: u64, shutdown: CancellationToken) {
    let Some(db) = ctx.router.default_database().cloned() else {
        return;
    };
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let laddr = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    // Cancelled by the proxy's shutdown, or by CLIENT KILL from another client.
    let client = ctx
        .clients
        .register(id, peer.clone(), laddr, shutdown.child_token());
    let state = State {
        id,
        db,
        authenticated: ctx.config.client_password.is_none(),
        name: None,
        lib_name: None,
        lib_ver: None,
        resp3: false,
        peer,
        user: None,
    };
    let mut session = Session {
        ctx,
        state,
        queue: VecDeque::new(),
        out: Vec::with_capacity(16 * 1024),
        args: Vec::new(),
        read_closed: false,
        closing: false,
        done: false,
        stalled: false,
        dedicated: None,
        in_multi: false,
        watching: false,
        last_dedicated: false,
        block: Block::No,
        run_cmds: CmdList::new(),
        run_readonly: true,
        pubsub: None,
        sub_counts: [0; 2],
        monitor: false,
        barrier: None,
        barrier_passed: false,
        after_unsubscribe: 0,
        reply_off: false,
        skip_next: false,
        client,
        pending_select: None,
        exec_select: None,
        awaiting_exec: false,
        login: None,
        private: None,
    };
    session.publish();
    if let Err(e) = session.serve(stream).await {
        tracing::debug!(session = id, error = %e, "client connection ended");
    }
}

struct Session {
    ctx: Arc<Context>,
    state: State,
    queue: VecDeque<Pending>,
    out: Vec<u8>,
    args: Vec<Range<usize>>,
    /// No more bytes are read from the client (EOF or shutdown); what is buffered
    /// is still executed.
    read_closed: bool,
    /// Stop executing requests (protocol error, QUIT); the session ends when the
    /// queue is empty.
    closing: bool,
    /// A `Close` entry was reached: stop now.
    done: bool,
    /// The next request must go to another connection than the previous one and
    /// waits until every reply before it has arrived (so it runs after them).
    stalled: bool,
    /// The exclusive connection of a transaction in progress.
    dedicated: Option<Dedicated>,
    /// MULTI was sent and not yet EXEC/DISCARD.
    in_multi: bool,
    /// WATCH was sent and not yet cleared.
    watching: bool,
    /// The last forwarded request went to an exclusive connection.
    last_dedicated: bool,
    /// Block time of the blocking command in the run being built.
    block: Block,
    /// Commands of the run being built.
    run_cmds: CmdList,
    /// Every command of the run being built is read-only.
    run_readonly: bool,
    /// The client is subscribed: its requests go to this connection and every
    /// frame Redis sends on it is streamed back.
    pubsub: Option<Subscription>,
    /// Subscriptions Redis last reported on the subscriber connection: channels
    /// plus patterns, and shard channels (Redis counts the two apart; the client
    /// leaves pub/sub mode only when both are zero).
    sub_counts: [i64; 2],
    /// The subscriber connection is a MONITOR stream.
    monitor: bool,
    /// A PING sent on the subscriber connection so that a command the proxy answers
    /// itself (QUIT, RESET, PROXY) is answered after every earlier request's
    /// replies: the exact frame that will answer it.
    barrier: Option<Bytes>,
    /// The barrier was passed: the stalled request may now be answered.
    barrier_passed: bool,
    /// CLIENT REPLY OFF is in force.
    reply_off: bool,
    /// CLIENT REPLY SKIP: the next command gets no reply.
    skip_next: bool,
    /// Requests written to the subscriber connection since the last UNSUBSCRIBE-
    /// family command: the connection can only be let go when there are none (their
    /// replies would arrive on it).
    after_unsubscribe: u32,
    /// This session's entry in the client table (CLIENT LIST/KILL).
    client: Registration,
    /// The database a SELECT queued in the current MULTI switches to at EXEC.
    pending_select: Option<Arc<Database>>,
    /// Handed to the next batch forwarded (the EXEC carrying `pending_select`).
    exec_select: Option<Arc<Database>>,
    /// An EXEC that may switch the database is in flight: later requests wait.
    awaiting_exec: bool,
    /// `auth_passthrough`: the credentials the client logged in to Redis with.
    login: Option<Login>,
    /// The exclusive connection is the session's own, logged in as `login`, opened
    /// for this database and protocol (RESP3): every request goes there.
    private: Option<(Arc<Database>, bool)>,
}

/// Credentials a client logged in to Redis with (`auth_passthrough`).
struct Login {
    user: Option<String>,
    password: Secret,
}

/// Which upstream connection a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Shared,
    Dedicated,
}

impl Session {
    async fn serve(&mut self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut inbuf = BytesMut::with_capacity(16 * 1024);
        let token: CancellationToken = self.client.token().clone();
        let cancelled = token.cancelled();
        tokio::pin!(cancelled);
        loop {
            self.write_ready(&mut stream).await?;
            if self.stalled && self.queue.is_empty() && self.barrier.is_none() {
                self.stalled = false;
                self.dispatch(&mut inbuf).await;
                continue;
            }
            let finished = self.closing || (self.read_closed && !self.stalled);
            if self.done || (finished && self.queue.is_empty()) {
                break;
            }
            let can_read =
                !self.read_closed && !self.closing && !self.stalled && self.queue.len() < MAX_QUEUE;
            let queue = &mut self.queue;
            let has_pubsub = self.pubsub.is_some();
            let pubsub = &mut self.pubsub;
            tokio::select! {
                biased;
                ev = poll_fn(|cx| match queue.front_mut() {
                    Some(Pending::Upstream(sent)) => {
                        Pin::new(&mut sent.rx).poll(cx).map(|r| Some(r.ok()))
                    }
                    _ => Poll::Ready(None),
                }), if !queue.is_empty() => if let Some(r) = ev {
                    self.settle_front(r);
                },
                r = stream.read_buf(&mut inbuf), if can_read => match r {
                    Ok(0) if !self.waits_on_exclusive() => self.read_closed = true,
                    // A client that leaves while a command waits on an exclusive
                    // connection (a blocked BLPOP) is gone for good, as in Redis:
                    // drop its replies so the connection is discarded, not left
                    // blocked to take a later item.
                    Ok(0) | Err(_) => {
                        self.queue.clear();
                        self.read_closed = true;
                        self.done = true;
                    }
                    Ok(_) => {
                        self.dispatch(&mut inbuf).await;
                        if inbuf.capacity() - inbuf.len() < 4096 {
                            inbuf.reserve(16 * 1024);
                        }
                    }
                },
                f = async {
                    match pubsub.as_mut() {
                        Some(sub) => sub.next().await,
                        None => std::future::pending().await,
                    }
                }, if has_pubsub => self.on_pubsub_frame(f),
                _ = &mut cancelled, if !self.read_closed => {
                    self.read_closed = true;
                    if self.client.was_killed() {
                        // CLIENT KILL: closed at once, as Redis frees the client.
                        self.queue.clear();
                        self.done = true;
                    }
                }
            }
        }
        let _ = stream.shutdown().await;
        Ok(())
    }

    /// Writes every reply at the front of the queue that is already available.
    async fn write_ready(&mut self, stream: &mut TcpStream) -> std::io::Result<()> {
        while let Some(front) = self.queue.front_mut() {
            let bytes = match front {
                Pending::Ready(b) => std::mem::take(b),
                Pending::Close => {
                    self.done = true;
                    self.queue.clear();
                    break;
                }
                Pending::Upstream(sent) => {
                    let r = match sent.rx.try_recv() {
                        Ok(r) => Some(r),
                        Err(oneshot::error::TryRecvError::Empty) => break,
                        Err(oneshot::error::TryRecvError::Closed) => None,
                    };
                    self.settle_front(r);
                    continue;
                }
            };
            self.queue.pop_front();
            if bytes.len() >= DIRECT_WRITE {
                if !self.out.is_empty() {
                    stream.write_all(&self.out).await?;
                    self.out.clear();
                }
                stream.write_all(&bytes).await?;
            } else {
                self.out.extend_from_slice(&bytes);
                if self.out.len() >= 64 * 1024 {
                    stream.write_all(&self.out).await?;
                    self.out.clear();
                }
            }
        }
        if !self.out.is_empty() {
            stream.write_all(&self.out).await?;
            self.out.clear();
            if self.out.capacity() > 256 * 1024 {
                self.out = Vec::with_capacity(16 * 1024);
            }
        }
        Ok(())
    }

    fn push_reply(&mut self, bytes: Vec<u8>) {
        stats::add(&self.ctx.stats.local_commands, 1);
        if self.reply_off || std::mem::take(&mut self.skip_next) {
            return;
        }
        self.queue.push_back(Pending::Ready(Bytes::from(bytes)));
    }

    /// Replaces the front batch with the bytes its client gets (none if the
    /// client turned replies off with CLIENT REPLY).
    fn finish_front(&mut self, bytes: Bytes) {
        if let Some(front) = self.queue.front_mut() {
            let silent = matches!(front, Pending::Upstream(s) if s.silent);
            *front = Pending::Ready(if silent { Bytes::new() } else { bytes });
        }
    }

    /// Sends `bytes` (holding `count` requests, whose commands are in `run_cmds`) to
    /// the current database, on the shared slot or the session's exclusive
    /// connection — unless the database's circuit breaker is open.
    async fn forward(&mut self, bytes: Bytes, count: u32, target: Target) {
        let db = self.state.db.clone();
        self.forward_to(db, bytes, count, target).await;
    }

    /// [`Session::forward`] to a given database (CLIENT UNBLOCK goes to the
    /// database of the connection it unblocks).
    async fn forward_to(&mut self, db: Arc<Database>, bytes: Bytes, count: u32, target: Target) {
        let cmds = std::mem::take(&mut self.run_cmds);
        let readonly = std::mem::replace(&mut self.run_readonly, true);
        let block = std::mem::replace(&mut self.block, Block::No);
        if count == 0 {
            return;
        }
        let select_after = self.exec_select.take();
        let silent = self.reply_off || std::mem::take(&mut self.skip_next);
        if let Err(rejected) = db.breaker.check() {
            for &c in &cmds {
                db.commands.record_rejected(c as usize);
            }
            let msg = circuit_open(&db, rejected.retry_in);
            let mut out = Vec::new();
            for _ in 0..count {
                reply::error(&mut out, &msg);
            }
            if !silent {
                self.queue.push_back(Pending::Ready(Bytes::from(out)));
            }
            if target == Target::Dedicated && self.private.is_none() {
                // The transaction cannot go on; its connection is reset.
                self.end_dedicated(false);
            }
            return;
        }
        stats::add(&db.stats.commands, count as u64);
        let (tx, rx) = oneshot::channel();
        let batch = Batch {
            bytes,
            count,
            reply: tx,
            block,
            retry: Retry::new(self.state.id, readonly, &db.config.upstream),
        };
        let shared = match (target, &self.dedicated) {
            (Target::Dedicated, Some(d)) => {
                if block != Block::No {
                    // CLIENT UNBLOCK from another client reaches this connection.
                    self.client.set_blocked(Some(Exclusive {
                        db: db.clone(),
                        upstream_id: d.upstream_id(),
                    }));
                }
                d.send(batch);
                false
            }
            _ => {
                db.slot(self.state.id, self.state.resp3).send(batch).await;
                true
            }
        };
        self.awaiting_exec = select_after.is_some();
        self.queue.push_back(Pending::Upstream(Sent {
            rx,
            count,
            db,
            started: Instant::now(),
            cmds,
            shared,
            silent,
            select_after,
        }));
    }

    /// Sends one request that Redis runs even while busy (SCRIPT KILL …) at once on
    /// a connection of its own, bypassing the breaker; its reply keeps its place.
    fn out_of_band(&mut self, bytes: Bytes, cmd: u16) {
        let db = self.state.db.clone();
        stats::add(&db.stats.commands, 1);
        let rx = oob::call(self.upstream_cfg(&db), self.state.resp3, bytes);
        let silent = self.reply_off || std::mem::take(&mut self.skip_next);
        let mut cmds = CmdList::new();
        cmds.push(cmd);
        self.queue.push_back(Pending::Upstream(Sent {
            rx,
            count: 1,
            db,
            started: Instant::now(),
            cmds,
            shared: true,
            silent,
            select_after: None,
        }));
    }

    /// The front batch got its answer (`None`: the answer was lost): it is
    /// replaced with the bytes for the client.
    fn settle_front(&mut self, answer: Option<Answer>) {
        let Some(Pending::Upstream(sent)) = self.queue.front_mut() else {
            return;
        };
        let latency = sent.started.elapsed();
        if !sent.shared {
            self.client.set_blocked(None);
        }
        let (reply, attempts) = match answer {
            Some(a) => (a.reply, a.attempts),
            None => (
                Err(UpstreamError::Lost {
                    addr: sent.db.config.upstream.address(),
                    sent: true,
                }),
                1,
            ),
        };
        for _ in 1..attempts {
            for &c in &sent.cmds {
                sent.db.commands.record_retry(c as usize);
            }
        }
        let err = match reply {
            Ok(bytes) => {
                record(sent, latency, true);
                if let Some(db) = sent.select_after.take() {
                    self.awaiting_exec = false;
                    // `*N`: EXEC ran the queued commands, the SELECT among them
                    // (`*-1`/`_`: a WATCH conflict; `-EXECABORT`: nothing ran).
                    if bytes.starts_with(b"*") && !bytes.starts_with(b"*-1") {
                        self.state.db = db;
                        self.publish();
                    }
                }
                self.finish_front(bytes);
                return;
            }
            Err(e) => e,
        };
        let db = sent.db.clone();
        match err {
            UpstreamError::CircuitOpen { .. } => {
                for &c in &sent.cmds {
                    db.commands.record_rejected(c as usize);
                }
            }
            UpstreamError::Timeout { .. } => {
                for &c in &sent.cmds {
                    db.commands.record_timeout(c as usize);
                }
                record(sent, latency, false);
            }
            _ => record(sent, latency, false),
        }
        let bytes = errors(sent.count, &error_text(&db, &err, attempts));
        if sent.select_after.take().is_some() {
            self.awaiting_exec = false;
        }
        if !sent.shared {
            if self.private.is_some() {
                // The client's own connection to Redis is gone: as Redis would,
                // close the client's connection (after this error reply).
                self.closing = true;
                self.queue.push_back(Pending::Close);
            }
            // The exclusive connection failed (pool exhausted, connect error,
            // connection lost): whatever transaction was under way is over.
            self.end_dedicated(false);
        }
        self.finish_front(bytes);
    }

    /// A frame (or the end) of the subscriber connection's stream.
    fn on_pubsub_frame(&mut self, f: Result<Bytes, End>) {
        match f {
            Ok(frame) => {
                if self.barrier.as_ref() == Some(&frame) {
                    // Every reply to what the client sent before is in the queue.
                    self.barrier = None;
                    self.barrier_passed = true;
                    return;
                }
                if let Some(c) = pubsub::confirmation(&frame) {
                    self.sub_counts[c.shard as usize] = c.count;
                    if !c.subscribe && self.sub_counts == [0, 0] && self.after_unsubscribe == 0 {
                        // No subscriptions left and nothing else in flight on the
                        // connection: back to normal request/reply.
                        self.leave_pubsub();
                        self.publish();
                    }
                }
                self.queue.push_back(Pending::Ready(frame));
            }
            Err(End::Overflow) => {
                tracing::warn!(
                    session = self.state.id,
                    peer = %self.state.peer,
                    limit = self.ctx.config.limits.pubsub_buffer_limit,
                    "disconnecting slow subscriber: pub/sub output buffer limit reached"
                );
                self.leave_pubsub();
                self.queue.clear();
                self.done = true;
            }
            Err(End::Closed) => {
                // The client's subscriptions are gone with the connection; as with
                // Redis itself, the client's connection closes, so its library
                // reconnects and subscribes again.
                tracing::info!(
                    session = self.state.id,
                    "subscriber upstream connection closed; closing the client"
                );
                self.leave_pubsub();
                self.queue.clear();
                self.done = true;
            }
        }
    }

    /// Lets the subscriber (or MONITOR) connection go, with its bookkeeping.
    fn leave_pubsub(&mut self) {
        self.pubsub = None;
        self.sub_counts = [0; 2];
        self.monitor = false;
        self.barrier = None;
        self.barrier_passed = false;
    }

    /// Sends a PING with a tag no client can guess on the subscriber connection;
    /// its reply marks the point where every earlier request has been answered.
    async fn send_barrier(&mut self) -> Result<(), End> {
        let tag = format!("redis-sidecar-barrier-{:016x}", fastrand::u64(..));
        let mut expected = Vec::new();
        if !self.state.resp3 {
            // RESP2 subscribers get PING's reply as a pub/sub-style array.
            expected.extend_from_slice(b"*2\r\n$4\r\npong\r\n");
        }
        reply::bulk(&mut expected, tag.as_bytes());
        let mut ping = Vec::new();
        encode_command(&[&b"PING"[..], tag.as_bytes()], &mut ping);
        let sub = self.pubsub.as_mut().ok_or(End::Closed)?;
        sub.send(&ping).await.map_err(|_| End::Closed)?;
        self.barrier = Some(Bytes::from(expected));
        Ok(())
    }

    /// Whether a reply is still expected from an exclusive connection.
    fn waits_on_exclusive(&self) -> bool {
        self.queue
            .iter()
            .any(|p| matches!(p, Pending::Upstream(s) if !s.shared))
    }

    /// No state that changes where a forwardable command goes: authenticated, not
    /// subscribed, no exclusive connection (now or for the previous request), no
    /// CLIENT REPLY SKIP pending, no EXEC that may switch the database in flight.
    #[inline]
    fn plain(&self) -> bool {
        self.state.authenticated
            && self.pubsub.is_none()
            && self.dedicated.is_none()
            && !self.last_dedicated
            && !self.skip_next
            && !self.awaiting_exec
    }

    /// Where a request goes, if upstream: `None` means the proxy answers it.
    fn target(&self, route: Route) -> Option<Target> {
        if !self.state.authenticated {
            return None;
        }
        match route {
            Route::Forward if self.dedicated.is_some() => Some(Target::Dedicated),
            Route::Forward => Some(Target::Shared),
            Route::Stateful(Family::Transaction | Family::Blocking) => Some(Target::Dedicated),
            _ => None,
        }
    }

    /// Tracks MULTI/EXEC/WATCH for a request sent to the exclusive connection, and
    /// returns whether the connection can be given back after it.
    fn transaction_step(&mut self, op: TxOp) -> bool {
        let was_multi = self.in_multi;
        match op {
            TxOp::Multi => self.in_multi = true,
            TxOp::End => {
                self.in_multi = false;
                self.watching = false;
            }
            TxOp::Watch if !self.in_multi => self.watching = true,
            TxOp::Unwatch if !self.in_multi => self.watching = false,
            _ => {}
        }
        if was_multi != self.in_multi {
            self.publish();
        }
        !self.in_multi && !self.watching
    }

    /// The settings for this session's own upstream connections to `db`
    /// (subscriber, private): the database's, logged in as the session's user when
    /// it authenticated through to Redis.
    fn upstream_cfg(&self, db: &Database) -> UpstreamConfig {
        let mut cfg = db.config.upstream.clone();
        if let Some(login) = &self.login {
            cfg.username.clone_from(&login.user);
            cfg.password = Some(login.password.clone());
        }
        cfg
    }

    /// `auth_passthrough`: opens a connection to the current database's server
    /// logged in with `creds`. On success it becomes the session's private
    /// connection (every later request goes there); on failure the reply is
    /// Redis's own error (`-WRONGPASS …`), and the session keeps its login.
    async fn log_in(&mut self, creds: local::Credentials) -> Result<(), Vec<u8>> {
        if self.in_multi || (self.dedicated.is_some() && self.private.is_none()) {
            return Err(
                b"-ERR AUTH inside a transaction is not supported by redis-sidecar\r\n".to_vec(),
            );
        }
        let text = |b: Vec<u8>| String::from_utf8(b).map_err(|_| ());
        let (Ok(user), Ok(password)) = (creds.user.map(text).transpose(), text(creds.password))
        else {
            return Err(
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n".to_vec(),
            );
        };
        let previous = self.login.replace(Login {
            user,
            password: Secret(password),
        });
        match self.open_private(creds.resp3).await {
            Ok(()) => {
                self.state.user = Some(
                    self.login
                        .as_ref()
                        .and_then(|l| l.user.clone())
                        .unwrap_or_else(|| "default".into()),
                );
                self.state.authenticated = true;
                Ok(())
            }
            Err(e) => {
                self.login = previous;
                Err(e)
            }
        }
    }

    /// Opens the private connection again (new protocol or server), same login.
    async fn reopen_private(&mut self) -> Result<(), Vec<u8>> {
        let resp3 = self.state.resp3;
        self.open_private(resp3).await
    }

    /// Opens a connection logged in as `self.login` to the current database and
    /// makes it the session's private connection (replacing any before it).
    async fn open_private(&mut self, resp3: bool) -> Result<(), Vec<u8>> {
        let db = self.state.db.clone();
        let cfg = self.upstream_cfg(&db);
        match ExclusiveConn::open(&cfg, resp3, false).await {
            Ok(conn) => {
                self.end_dedicated(false);
                self.dedicated = Some(Dedicated::private(
                    conn,
                    db.label(),
                    db.config.upstream.command_timeout,
                ));
                self.private = Some((db, resp3));
                self.last_dedicated = true;
                Ok(())
            }
            Err(UpstreamError::Handshake { reply, .. }) => {
                let mut out = Vec::new();
                reply::error(&mut out, &reply);
                Err(out)
            }
            Err(e) => {
                let mut out = Vec::new();
                reply::error(&mut out, &error_text(&db, &e, 1));
                Err(out)
            }
        }
    }

    /// Copies what CLIENT LIST shows about this session to the client table.
    fn publish(&self) {
        let mut info = self.client.info();
        info.name.clone_from(&self.state.name);
        info.lib_name.clone_from(&self.state.lib_name);
        info.lib_ver.clone_from(&self.state.lib_ver);
        info.db = self.state.db.config.index;
        info.resp = if self.state.resp3 { 3 } else { 2 };
        info.user = self.state.user.clone().unwrap_or_default();
        info.pubsub = self.pubsub.is_some();
        info.multi = self.in_multi;
    }

    /// Ends a transaction's hold on its exclusive connection. `clean` means the
    /// connection has no MULTI/WATCH state once its queued commands have run.
    fn end_dedicated(&mut self, clean: bool) {
        // A private connection is only let go when the session logs out (RESET)
        // or loses it; it is never pooled.
        self.private = None;
        if let Some(d) = self.dedicated.take() {
            if clean {
                d.release();
            }
        }
        if self.in_multi {
            self.in_multi = false;
            self.publish();
        }
        self.watching = false;
        self.pending_select = None;
    }

    /// Parses and handles every complete request in `inbuf`.
    async fn dispatch(&mut self, inbuf: &mut BytesMut) {
        // The current run of forwardable requests: `run_len` bytes, `run_count` replies,
        // all for `run_target`.
        let mut run_len = 0usize;
        let mut run_count = 0u32;
        let mut run_target = Target::Shared;
        let log_commands = self.ctx.config.log_commands;
        self.client.touch(&self.ctx.clients);
        while !self.closing && !self.stalled {
            let parsed = request::parse(&inbuf[run_len..], &self.ctx.config.limits, &mut self.args);
            let req = match parsed {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(e) => {
                    stats::add(&self.ctx.stats.protocol_errors, 1);
                    tracing::info!(session = self.state.id, peer = %self.state.peer, error = %e, "closing client after protocol error");
                    let run = inbuf.split_to(run_len).freeze();
                    self.forward(run, run_count, run_target).await;
                    inbuf.clear();
                    let mut out = Vec::new();
                    reply::error(&mut out, &format!("ERR {e}"));
                    self.push_reply(out);
                    self.queue.push_back(Pending::Close);
                    self.closing = true;
                    return;
                }
            };
            let (route, op, block, subscribe, info) = match &req.kind {
                RequestKind::Empty => {
                    // Redis ignores these; they may travel inside a run.
                    run_len += req.len;
                    continue;
                }
                RequestKind::Multibulk => {
                    let args = Ranged {
                        buf: &inbuf[run_len..],
                        ranges: &self.args,
                    };
                    let name = args.arg(0);
                    if log_commands {
                        log_command(self.state.id, name);
                    }
                    let (route, info) = command::identify(&args);
                    let block = if route == Route::Stateful(Family::Blocking) {
                        command::block_time(&args)
                    } else {
                        Block::No
                    };
                    (
                        route,
                        tx_op(route, name),
                        block,
                        subscribes(route, name),
                        info,
                    )
                }
                RequestKind::Inline(args) => {
                    if log_commands {
                        log_command(self.state.id, args[..].arg(0));
                    }
                    let (route, info) = command::identify(&args[..]);
                    let block = if route == Route::Stateful(Family::Blocking) {
                        command::block_time(&args[..])
                    } else {
                        Block::No
                    };
                    (
                        route,
                        tx_op(route, &args[0]),
                        block,
                        subscribes(route, &args[0]),
                        info,
                    )
                }
            };
            let idx = info.map_or(table::COUNT, |i| i.index as usize);
            if info.is_some() {
                self.client.set_last_cmd(idx as u16);
            }
            if info.is_some() && self.state.db.is_denied(idx) && self.state.authenticated {
                let run = inbuf.split_to(run_len).freeze();
                self.forward(run, run_count, run_target).await;
                run_len = 0;
                run_count = 0;
                inbuf.advance(req.len);
                let mut out = Vec::new();
                reply::error(
                    &mut out,
                    &format!(
                        "NOPERM '{}' is denied by redis-sidecar's deny_commands for database {}",
                        command::command_name(idx).replace('_', " "),
                        self.state.db.label()
                    ),
                );
                self.push_reply(out);
                continue;
            }
            if info.is_some_and(|i| command::runs_while_busy(route, i))
                && self.state.authenticated
                && self.pubsub.is_none()
                && !self.in_multi
                && (self.dedicated.is_none() || self.private.is_some())
            {
                // SCRIPT KILL and friends: at once, on a connection of their own.
                let run = inbuf.split_to(run_len).freeze();
                self.forward(run, run_count, run_target).await;
                run_len = 0;
                run_count = 0;
                let bytes: Bytes = match &req.kind {
                    RequestKind::Inline(args) => {
                        let b = encode(&args[..]).into();
                        inbuf.advance(req.len);
                        b
                    }
                    _ => inbuf.split_to(req.len).freeze(),
                };
                self.out_of_band(bytes, idx as u16);
                continue;
            }
            if route == Route::Forward
                && run_target == Target::Shared
                && matches!(req.kind, RequestKind::Multibulk)
                && self.plain()
            {
                // The common case, a plain command from a plain session: it joins
                // the run for the shared connection (what the general path below
                // concludes, without its checks).
                self.run_readonly &= info.is_some_and(|i| i.is_readonly());
                self.run_cmds.push(idx as u16);
                run_len += req.len;
                run_count += 1;
                continue;
            }
            let in_pubsub = self.pubsub.is_some()
                && !matches!(route, Route::Quit | Route::Reset | Route::Proxy);
            let streams = matches!(
                route,
                Route::Stateful(Family::PubSub) | Route::Stateful(Family::Monitor)
            );
            if self.state.authenticated && (in_pubsub || streams) {
                let run = inbuf.split_to(run_len).freeze();
                self.forward(run, run_count, run_target).await;
                run_len = 0;
                run_count = 0;
                if self.pubsub.is_none() {
                    if !subscribe {
                        // UNSUBSCRIBE … without subscriptions: Redis's answer,
                        // one confirmation per channel (or one with nil).
                        let raw = inbuf.split_to(req.len);
                        let out = match &req.kind {
                            RequestKind::Inline(args) => unsubscribed(&args[..], self.state.resp3),
                            _ => unsubscribed(
                                &Ranged {
                                    buf: &raw,
                                    ranges: &self.args,
                                },
                                self.state.resp3,
                            ),
                        };
                        self.push_reply(out);
                        continue;
                    }
                    if !self.queue.is_empty() {
                        // Subscribe only after every earlier reply has arrived.
                        self.stalled = true;
                        return;
                    }
                    let db = self.state.db.clone();
                    match Subscription::open(
                        &self.upstream_cfg(&db),
                        self.ctx.config.limits.pubsub_buffer_limit,
                        self.state.resp3,
                    )
                    .await
                    {
                        Ok(sub) => {
                            self.pubsub = Some(sub);
                            self.monitor = route == Route::Stateful(Family::Monitor);
                            self.publish();
                        }
                        Err(e) => {
                            inbuf.advance(req.len);
                            let mut out = Vec::new();
                            reply::error(&mut out, &error_text(&db, &e, 1));
                            self.push_reply(out);
                            continue;
                        }
                    }
                }
                let bytes: Bytes = match &req.kind {
                    RequestKind::Inline(args) => {
                        let b = encode(&args[..]).into();
                        inbuf.advance(req.len);
                        b
                    }
                    _ => inbuf.split_to(req.len).freeze(),
                };
                if route == Route::Stateful(Family::PubSub) && !subscribe {
                    self.after_unsubscribe = 0;
                } else {
                    self.after_unsubscribe += 1;
                }
                if let Some(sub) = self.pubsub.as_mut() {
                    if sub.send(&bytes).await.is_err() {
                        self.on_pubsub_frame(Err(End::Closed));
                        return;
                    }
                }
                continue;
            }
            if self.pubsub.is_some()
                && !self.monitor
                && self.state.authenticated
                && !std::mem::take(&mut self.barrier_passed)
            {
                // QUIT, RESET or PROXY while subscribed: answered only after the
                // replies to everything before it (confirmations still on their
                // way from the subscriber connection).
                if self.send_barrier().await.is_err() {
                    self.on_pubsub_frame(Err(End::Closed));
                    return;
                }
                self.stalled = true;
                return;
            }
            let skipped = self.skip_next && self.target(route).is_some();
            if skipped {
                // CLIENT REPLY SKIP: this command travels alone, its reply dropped.
                let run = inbuf.split_to(run_len).freeze();
                self.skip_next = false;
                self.forward(run, run_count, run_target).await;
                self.skip_next = true;
                run_len = 0;
                run_count = 0;
            }
            if let Some(target) = self.target(route) {
                let switching = match target {
                    Target::Shared => self.last_dedicated,
                    Target::Dedicated => self.dedicated.is_none(),
                };
                if switching || target != run_target {
                    let run = inbuf.split_to(run_len).freeze();
                    self.forward(run, run_count, run_target).await;
                    run_len = 0;
                    run_count = 0;
                    run_target = target;
                }
                if switching && !self.queue.is_empty() {
                    // Run it only after everything before it has been answered.
                    self.stalled = true;
                    return;
                }
                if target == Target::Dedicated && self.dedicated.is_none() {
                    let db = &self.state.db;
                    self.dedicated = Some(Dedicated::start(
                        db.pool(self.state.resp3).clone(),
                        db.label(),
                        db.config.upstream.command_timeout,
                    ));
                }
                self.last_dedicated = target == Target::Dedicated;
                if !self.in_multi && block != Block::No {
                    // Travels alone (see transaction_step) with its own deadline.
                    self.block = block;
                }
                let readonly = info.is_some_and(|i| i.is_readonly());
                let idx = info.map_or(table::COUNT as u16, |i| i.index);
                let select_after = if op == TxOp::End && target == Target::Dedicated {
                    self.pending_select.take()
                } else {
                    None
                };
                if select_after.is_some() {
                    // EXEC of a transaction with a SELECT travels alone: its reply
                    // says whether the SELECT ran.
                    let run = inbuf.split_to(run_len).freeze();
                    self.forward(run, run_count, run_target).await;
                    run_len = 0;
                    run_count = 0;
                    self.exec_select = select_after;
                }
                match req.kind {
                    RequestKind::Multibulk => {
                        self.run_readonly &= readonly;
                        self.run_cmds.push(idx);
                        run_len += req.len;
                        run_count += 1;
                    }
                    RequestKind::Inline(ref args) => {
                        let run = inbuf.split_to(run_len).freeze();
                        self.forward(run, run_count, run_target).await;
                        run_len = 0;
                        run_count = 0;
                        inbuf.advance(req.len);
                        self.run_readonly = readonly;
                        self.run_cmds.push(idx);
                        self.forward(encode(&args[..]).into(), 1, target).await;
                    }
                    RequestKind::Empty => {}
                }
                if skipped {
                    let run = inbuf.split_to(run_len).freeze();
                    self.forward(run, run_count, run_target).await;
                    run_len = 0;
                    run_count = 0;
                }
                if target == Target::Dedicated
                    && self.transaction_step(op)
                    && self.private.is_none()
                {
                    let run = inbuf.split_to(run_len).freeze();
                    self.forward(run, run_count, run_target).await;
                    run_len = 0;
                    run_count = 0;
                    self.end_dedicated(true);
                }
                if self.awaiting_exec {
                    // The next request runs on the database EXEC leaves selected.
                    self.stalled = true;
                    return;
                }
                continue;
            }
            // Answered by the proxy: this ends the run.
            let run = inbuf.split_to(run_len).freeze();
            self.forward(run, run_count, run_target).await;
            run_len = 0;
            run_count = 0;
            let logs_in = self.ctx.config.auth_passthrough && route == Route::Auth;
            let moves_private = self.private.is_some() && route == Route::Select;
            if ((route == Route::Hello || logs_in || moves_private) && !self.queue.is_empty())
                || (matches!(route, Route::Client | Route::CrossDb)
                    && self.dedicated.is_none()
                    && self.last_dedicated
                    && !self.queue.is_empty())
            {
                // May be forwarded on the shared connection: keep it after the
                // exclusive connection's commands.
                self.stalled = true;
                return;
            }
            let raw = inbuf.split_to(req.len);
            let client_reply = match &req.kind {
                RequestKind::Inline(args) => client_reply(&args[..]),
                _ => client_reply(&Ranged {
                    buf: &raw,
                    ranges: &self.args,
                }),
            };
            if let (Route::Client, Some(mode)) = (route, client_reply) {
                // CLIENT REPLY OFF/SKIP themselves get no reply; ON gets +OK.
                match mode {
                    Some(ReplyMode::On) => {
                        self.reply_off = false;
                        self.skip_next = false;
                        self.push_reply(b"+OK\r\n".to_vec());
                    }
                    Some(ReplyMode::Off) => self.reply_off = true,
                    Some(ReplyMode::Skip) => self.skip_next = !self.reply_off,
                    None => self.push_reply(b"-ERR syntax error\r\n".to_vec()),
                }
                continue;
            }
            let kind = &req.kind;
            let ranges = self.args.clone();
            let ranged = Ranged {
                buf: &raw,
                ranges: &ranges,
            };
            let args: &(dyn ArgList + Sync) = match kind {
                RequestKind::Inline(a) => a,
                _ => &ranged,
            };
            if self.ctx.config.auth_passthrough {
                if let Some(creds) = local::credentials(route, args, self.state.resp3) {
                    // Redis checks the credentials: the session logs in on a
                    // connection of its own, or gets Redis's refusal.
                    if let Err(refused) = self.log_in(creds).await {
                        self.push_reply(refused);
                        continue;
                    }
                }
            }
            let outcome = if self.dedicated.is_some() && route == Route::Select {
                match local::select_in_transaction(&self.state, &self.ctx, args) {
                    Ok((db, select)) => {
                        if let Some(d) = &self.dedicated {
                            d.reselect_on_release();
                        }
                        if self.in_multi {
                            // Queued: it takes effect if EXEC runs the transaction.
                            self.pending_select = Some(db);
                        } else {
                            // Under WATCH (or on a private connection), outside
                            // MULTI: it runs now.
                            self.state.db = db;
                        }
                        local::Outcome::Forward(Some(select))
                    }
                    // A private connection follows the client to another server.
                    Err(_) if self.private.is_some() && !self.in_multi => {
                        local::handle(&mut self.state, &self.ctx, route, args)
                    }
                    Err(refused) => refused,
                }
            } else if self.dedicated.is_some()
                && route == Route::Hello
                && (self.private.is_none() || self.in_multi)
            {
                local::Outcome::Reply(
                    b"-ERR HELLO inside a transaction is not supported by redis-sidecar\r\n"
                        .to_vec(),
                )
            } else {
                if matches!(route, Route::Reset | Route::Quit) {
                    self.end_dedicated(false);
                    self.login = None;
                    self.leave_pubsub();
                }
                if route == Route::Reset {
                    // As Redis: RESET turns replies back on (a SKIP before it still
                    // drops RESET's own reply).
                    self.reply_off = false;
                }
                local::handle(&mut self.state, &self.ctx, route, args)
            };
            if let Some((db, resp3)) = &self.private {
                if !db.same_server(&self.state.db) || *resp3 != self.state.resp3 {
                    // The private connection must speak the new protocol, or live
                    // on the newly selected database's server.
                    if let Err(e) = self.reopen_private().await {
                        self.push_reply(e);
                        self.queue.push_back(Pending::Close);
                        self.closing = true;
                        return;
                    }
                }
            }
            self.publish();
            match outcome {
                local::Outcome::Reply(r) => self.push_reply(r),
                local::Outcome::ForwardTo(db, encoded) => {
                    // CLIENT UNBLOCK: on the other database's shared connection.
                    self.run_readonly = false;
                    self.run_cmds.push(idx as u16);
                    self.forward_to(db, Bytes::from(encoded), 1, Target::Shared)
                        .await;
                }
                local::Outcome::Forward(encoded) => {
                    let bytes = encoded.map(Bytes::from).unwrap_or_else(|| raw.freeze());
                    let target = if self.dedicated.is_some() {
                        Target::Dedicated
                    } else {
                        Target::Shared
                    };
                    self.last_dedicated = target == Target::Dedicated;
                    // CLIENT KILL/PAUSE, MOVE, SWAPDB …: never retried.
                    self.run_readonly = false;
                    self.forward(bytes, 1, target).await;
                }
                local::Outcome::Close(r) => {
                    self.push_reply(r);
                    self.queue.push_back(Pending::Close);
                    self.closing = true;
                }
            }
        }
        let run = inbuf.split_to(run_len).freeze();
        self.forward(run, run_count, run_target).await;
    }
}

/// CLIENT REPLY's argument.
enum ReplyMode {
    On,
    Off,
    Skip,
}

/// `Some(mode)` for `CLIENT REPLY <mode>` (`Some(None)` for a bad mode), `None`
/// for any other command.
fn client_reply<L: ArgList + ?Sized>(args: &L) -> Option<Option<ReplyMode>> {
    if args.count() < 2 || !args.arg(1).eq_ignore_ascii_case(b"REPLY") {
        return None;
    }
    if args.count() != 3 {
        return Some(None);
    }
    let m = args.arg(2);
    Some(if m.eq_ignore_ascii_case(b"ON") {
        Some(ReplyMode::On)
    } else if m.eq_ignore_ascii_case(b"OFF") {
        Some(ReplyMode::Off)
    } else if m.eq_ignore_ascii_case(b"SKIP") {
        Some(ReplyMode::Skip)
    } else {
        None
    })
}

/// What a transaction-family command does to the MULTI/WATCH state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxOp {
    None,
    Multi,
    /// EXEC or DISCARD.
    End,
    Watch,
    Unwatch,
}

fn tx_op(route: Route, name: &[u8]) -> TxOp {
    if route != Route::Stateful(Family::Transaction) {
        return TxOp::None;
    }
    let mut buf = [0u8; 32];
    match command::upper(name, &mut buf).unwrap_or(b"") {
        b"MULTI" => TxOp::Multi,
        b"EXEC" | b"DISCARD" => TxOp::End,
        b"WATCH" => TxOp::Watch,
        b"UNWATCH" => TxOp::Unwatch,
        _ => TxOp::None,
    }
}

/// Whether a pub/sub-family command starts subscriptions (SUBSCRIBE, PSUBSCRIBE,
/// SSUBSCRIBE) rather than ending them.
fn subscribes(route: Route, name: &[u8]) -> bool {
    match route {
        Route::Stateful(Family::Monitor) => true,
        Route::Stateful(Family::PubSub) => {
            !name.windows(5).any(|w| w.eq_ignore_ascii_case(b"UNSUB"))
        }
        _ => false,
    }
}

/// Redis's confirmations for an UNSUBSCRIBE-family command from a client with no
/// subscriptions: one per channel named, or one with a nil channel.
fn unsubscribed<L: ArgList + ?Sized>(args: &L, resp3: bool) -> Vec<u8> {
    let kind = args.arg(0).to_ascii_lowercase();
    let mut out = Vec::new();
    let mut one = |channel: Option<&[u8]>| {
        out.extend_from_slice(if resp3 { b">3\r\n" } else { b"*3\r\n" });
        reply::bulk(&mut out, &kind);
        match channel {
            Some(c) => reply::bulk(&mut out, c),
            None => reply::nil(&mut out),
        }
        reply::integer(&mut out, 0);
    };
    if args.count() < 2 {
        one(None);
    } else {
        for i in 1..args.count() {
            one(Some(args.arg(i)));
        }
    }
    out
}

/// Records a finished batch in the database's per-command statistics.
fn record(sent: &Sent, latency: std::time::Duration, ok: bool) {
    let table = &sent.db.commands;
    table.all().record_n(latency, ok, sent.cmds.len() as u64);
    let mut i = 0;
    while i < sent.cmds.len() {
        let c = sent.cmds[i];
        let n = sent.cmds[i..].iter().take_while(|&&x| x == c).count();
        table.record_n(c as usize, latency, ok, n as u64);
        i += n;
    }
}

/// The one text of an upstream failure as the client reads it (after `-`).
fn error_text(db: &Database, err: &UpstreamError, attempts: u32) -> String {
    if let UpstreamError::CircuitOpen { retry_in } = err {
        return circuit_open(db, *retry_in);
    }
    let mut msg = format!("UPSTREAM database {}: {}", db.label(), err);
    if attempts > 1 {
        msg.push_str(&format!(" (after {attempts} attempts)"));
    }
    msg
}

/// `count` copies of an error reply.
fn errors(count: u32, msg: &str) -> Bytes {
    let mut out = Vec::new();
    for _ in 0..count {
        reply::error(&mut out, msg);
    }
    Bytes::from(out)
}

/// The error text while a database's circuit breaker is open.
fn circuit_open(db: &Database, retry_in: Option<std::time::Duration>) -> String {
    match retry_in {
        Some(d) => format!(
            "CIRCUITOPEN database {} is unavailable; retry in {}s",
            db.label(),
            d.as_secs() + u64::from(d.subsec_nanos() > 0)
        ),
        None => format!(
            "CIRCUITOPEN database {} is unavailable (circuit forced open by an operator)",
            db.label()
        ),
    }
}

fn log_command(session: u64, name: &[u8]) {
    tracing::info!(session, command = %String::from_utf8_lossy(name).to_ascii_uppercase(), "command");
}

/// Re-encodes inline arguments as a multibulk request for the upstream.
fn encode<L: command::ArgList + ?Sized>(args: &L) -> Vec<u8> {
    let all: Vec<&[u8]> = (0..args.count()).map(|i| args.arg(i)).collect();
    let mut out = Vec::new();
    encode_command(&all, &mut out);
    out
}
