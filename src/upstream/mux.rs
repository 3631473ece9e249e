//! A shared upstream connection onto which many client sessions pipeline their
//! commands (the multiplexing model of twemproxy and Envoy), and the place where
//! their retries happen.
//!
//! A *slot* is a long-lived task that owns one upstream connection at a time. Sessions
//! send it [`Batch`]es: a contiguous run of complete requests (the exact bytes the
//! client sent) and how many replies they produce. The slot writes batches in the
//! order received and a companion reader task cuts the reply stream into the same
//! batches, answering each through its oneshot channel. Redis answers a connection's
//! commands in order, so the n-th batch written is answered by the n-th run of
//! replies read. Replies are never decoded, only framed, so clients get Redis's
//! bytes unchanged.
//!
//! # Retries, in order
//!
//! The slot is the one place that sees every batch of a session in the order the
//! session sent it, so it is where retries are decided and made
//! ([`Batch::retry`]): a batch that failed is either answered with the error or kept
//! in the slot's queue *at the position it had*, ahead of everything sent after it,
//! and sent again on the next connection. Nothing a session sent later can
//! overtake it.
//!
//! * A connect attempt that fails: every waiting batch has had an attempt that
//!   never reached Redis. Each is kept while it has attempts left
//!   (`1 + retry_attempts`) and the next attempt, after the back-off pause, can begin
//!   before its bound (`connect_timeout + command_timeout` after it was first sent);
//!   the others get the error.
//! * A connection lost (or timed out) with batches in flight: a batch that may have
//!   run is kept only if all its commands are read-only, and only if no later
//!   in-flight batch of the same session is being failed (a retried read must not
//!   observe a write its client sent after it). Kept batches go first on the next
//!   connection, at once, and *alone*: nothing else is written on it until they
//!   are answered. Redis closes a connection for one reply larger than its
//!   `client-output-buffer-limit normal`, and the read behind it would close the
//!   next connection again, failing what other sessions sent behind it there (a
//!   write that may have run is never sent again); sent alone, it takes nothing
//!   with it. A batch that waits meanwhile past its bound gets
//!   [`UpstreamError::Lost`] (never sent).
//! * Before any attempt after a failure, the circuit breaker is asked
//!   ([`Observer::admit`]); an open breaker fails the waiting batches.
//!
//! The slot connects lazily, when the first batch arrives, and reconnects the same
//! way after a failure.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};

use super::connect::connect;
use super::error::UpstreamError;
use super::frames::Frames;
use super::Observer;
use crate::command::Block;
use crate::config::UpstreamConfig;
use crate::stats::{self, DbStats};
use crate::transport::{ReadHalf, Stream};

/// The replies to a batch, back to back as Redis sent them, or why there are none.
pub type BatchReply = Result<Bytes, UpstreamError>;

/// What a session gets back for a batch: its replies and how many attempts it took.
#[derive(Debug)]
pub struct Answer {
    /// The replies, or the error of the last attempt.
    pub reply: BatchReply,
    /// Attempts made (1 when no retry was needed; 0 if none could begin).
    pub attempts: u32,
    /// A large reply is passed on as it arrives: `reply` is its first part, the
    /// rest comes here, and the channel closes after the last part. An error on it
    /// means the connection broke mid-reply (the client's stream cannot be
    /// completed).
    pub rest: Option<mpsc::UnboundedReceiver<BatchReply>>,
}

impl From<BatchReply> for Answer {
    /// The answer of a batch that had exactly one attempt.
    fn from(reply: BatchReply) -> Answer {
        Answer {
            reply,
            attempts: 1,
            rest: None,
        }
    }
}

/// A reply that has this many bytes ready while more are on their way is passed on
/// in parts (cut-through), so a 30 MB LRANGE does not wait to be whole in the
/// proxy before its first byte reaches the client.
const STREAM_START: usize = 256 * 1024;
/// Once a reply is being passed on, parts of at least this size follow.
const STREAM_PART: usize = 16 * 1024;

/// What a slot needs to retry a batch safely and in order.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// The session that sent the batch (its batches keep their order).
    pub origin: u64,
    /// Every command in the batch is read-only: it may run again after its reply
    /// was lost.
    pub readonly: bool,
    /// No attempt begins after this instant.
    pub bound: Instant,
    /// Attempts made so far.
    pub attempts: u32,
    /// Kept after a connection was lost while it may have run: its next attempt
    /// goes alone (see the module docs).
    pub alone: bool,
}

impl Retry {
    /// A batch of session `origin` sent now: attempts may begin until
    /// `connect_timeout + command_timeout` from now.
    pub fn new(origin: u64, readonly: bool, cfg: &UpstreamConfig) -> Retry {
        Retry {
            origin,
            readonly,
            bound: Instant::now() + cfg.connect_timeout + cfg.command_timeout,
            attempts: 0,
            alone: false,
        }
    }
}

/// A run of complete requests sent as one unit.
#[derive(Debug)]
pub struct Batch {
    /// The requests, exactly as the client sent them (multibulk).
    pub bytes: Bytes,
    /// How many replies they produce.
    pub count: u32,
    /// Where the replies go.
    pub reply: oneshot::Sender<Answer>,
    /// For a blocking command on an exclusive connection: how long it may wait
    /// beyond the command timeout. Shared connections always use the command timeout.
    pub block: Block,
    /// Retry bookkeeping (used by shared slots; exclusive connections never retry).
    pub retry: Retry,
    /// Where the answer goes instead of `reply` when a reply is a cluster
    /// redirect or the batch fails (shared slots only; `None` elsewhere).
    pub divert: Option<Divert>,
    /// Redis may hold it back for long while answering other connections (a
    /// script: `-BUSY` to others; a write during `CLIENT PAUSE`): a shared slot
    /// says when such a batch keeps it waiting ([`MuxHandle::busy`]).
    pub may_hold: bool,
}

impl Batch {
    /// Answers the batch with `err`, counting its commands as failed.
    fn fail(mut self, err: UpstreamError, stats: &DbStats) {
        stats::add(&stats.upstream_failures, self.count as u64);
        stats::add(&stats.errors, self.count as u64);
        let answer = Answer {
            reply: Err(err),
            attempts: self.retry.attempts,
            rest: None,
        };
        match self.divert.take() {
            Some(d) => (d.0)(self, answer),
            None => {
                let _ = self.reply.send(answer);
            }
        }
    }
}

/// Takes a batch's answer in place of its `reply` channel when the answer needs
/// more work than passing it on: a reply is a cluster redirect
/// ([`super::is_redirect`]: Redis did not run that command) or the batch failed.
/// The batch comes back with it (its `divert` taken). Replies of a batch with a
/// divert are never streamed ([`Answer::rest`]): they are seen whole first.
pub struct Divert(pub Box<dyn FnOnce(Batch, Answer) + Send + Sync>);

impl std::fmt::Debug for Divert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Divert")
    }
}

/// Handle to a slot; cheap to clone.
#[derive(Debug, Clone)]
pub struct MuxHandle {
    tx: mpsc::Sender<Batch>,
    /// See [`MuxHandle::busy`].
    busy: Arc<Held>,
}

/// Whether a slot is held up ([`MuxHandle::busy`]); a slot of a group (a
/// cluster's nodes) also counts itself in the group's total while it is, so
/// that "is any held up?" costs one load ([`MuxHandle::spawn_counted`]).
#[derive(Debug, Default)]
struct Held {
    on: AtomicBool,
    group: Option<Arc<AtomicUsize>>,
}

impl Held {
    #[inline]
    fn get(&self) -> bool {
        self.on.load(Relaxed)
    }

    fn set(&self, on: bool) {
        if self.on.swap(on, Relaxed) != on {
            if let Some(g) = &self.group {
                if on {
                    g.fetch_add(1, Relaxed);
                } else {
                    g.fetch_sub(1, Relaxed);
                }
            }
        }
    }
}

/// How long a batch that Redis may hold back ([`Batch::may_hold`]) waits for its
/// replies before its slot counts as busy.
pub const HELD_AFTER: Duration = Duration::from_millis(100);

/// How many batches may wait for a slot's writer before senders are slowed down.
const QUEUE: usize = 4096;
/// Write-coalescing bound: batches are gathered up to this many bytes per write.
const COALESCE: usize = 64 * 1024;

impl MuxHandle {
    /// Starts a slot for `cfg` on the current runtime; `observer` hears the outcome
    /// of every connect attempt and batch, and decides whether retries may go.
    pub fn spawn(
        cfg: Arc<UpstreamConfig>,
        stats: Arc<DbStats>,
        observer: Arc<dyn Observer>,
        resp3: bool,
    ) -> MuxHandle {
        Self::start(cfg, stats, observer, resp3, Held::default())
    }

    /// A handle whose batches arrive on the returned receiver (no slot task).
    #[cfg(test)]
    pub(crate) fn channel() -> (MuxHandle, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let busy = Arc::new(Held::default());
        (MuxHandle { tx, busy }, rx)
    }

    /// [`MuxHandle::spawn`], for a slot of a group: while the slot is held up
    /// ([`MuxHandle::busy`]), it counts itself in `held`.
    pub fn spawn_counted(
        cfg: Arc<UpstreamConfig>,
        stats: Arc<DbStats>,
        observer: Arc<dyn Observer>,
        resp3: bool,
        held: Arc<AtomicUsize>,
    ) -> MuxHandle {
        let held = Held {
            on: AtomicBool::new(false),
            group: Some(held),
        };
        Self::start(cfg, stats, observer, resp3, held)
    }

    fn start(
        cfg: Arc<UpstreamConfig>,
        stats: Arc<DbStats>,
        observer: Arc<dyn Observer>,
        resp3: bool,
        held: Held,
    ) -> MuxHandle {
        let (tx, rx) = mpsc::channel(QUEUE);
        let busy = Arc::new(held);
        let span = super::span(&cfg);
        tokio::spawn(tracing::Instrument::instrument(
            run_slot(cfg, rx, stats, observer, resp3, busy.clone()),
            span,
        ));
        MuxHandle { tx, busy }
    }

    /// The oldest batch waiting for its replies is one Redis may hold back
    /// ([`Batch::may_hold`]) and has waited [`HELD_AFTER`]: a script running for
    /// long (until it ends or `SCRIPT KILL`), or a write held by a pause made
    /// anywhere (`CLIENT PAUSE`, `FAILOVER`). Redis answers other connections
    /// meanwhile (reads during a pause; `-BUSY` past its `busy-reply-threshold`
    /// during a script) but not this one. A session with nothing in flight then
    /// sends on another connection (`Database::detour`), as a client of its own
    /// would.
    #[inline]
    pub fn busy(&self) -> bool {
        self.busy.get()
    }

    /// Queues a batch. If the slot is gone (runtime shutting down), the batch is failed.
    pub async fn send(&self, batch: Batch) {
        match self.tx.try_send(batch) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(b)) => {
                // Boxed: only a full queue waits, and the future stays small in
                // every session's task.
                if let Err(mpsc::error::SendError(b)) = Box::pin(self.tx.send(b)).await {
                    drop(b);
                }
            }
            Err(mpsc::error::TrySendError::Closed(b)) => drop(b),
        }
    }
}

/// First and largest pause before connecting again after a failed attempt that
/// left no batch waiting. Batches arriving during the pause wait for its end and
/// the next attempt, so a restarting Redis is met by one connect per slot and
/// pause, not a storm, and no client gets a stale error once Redis is back.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_millis(500);

/// `d` to the millisecond (for messages).
fn ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// A jittered pause: between half and all of `d`.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() / 2.0)
}

async fn run_slot(
    cfg: Arc<UpstreamConfig>,
    mut rx: mpsc::Receiver<Batch>,
    stats: Arc<DbStats>,
    observer: Arc<dyn Observer>,
    resp3: bool,
    busy: Arc<Held>,
) {
    let addr = cfg.address();
    let max_attempts = cfg.resilience.retry_attempts.saturating_add(1);
    let mut pause = RECONNECT_MIN;
    let mut retry_at: Option<Instant> = None;
    // Why the last attempt failed (for batches whose deadline passes in a pause).
    let mut last_err: Option<UpstreamError> = None;
    // Batches waiting for a connection, in the order they were sent.
    let mut waiting: VecDeque<Batch> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(b) => waiting.push_back(b),
                None => break,
            }
        }
        if let Some(at) = retry_at.take() {
            pause_until(at, &mut waiting, &mut rx, last_err.as_ref(), &stats).await;
        }
        while let Ok(b) = rx.try_recv() {
            waiting.push_back(b);
        }
        if waiting.iter().any(|b| b.retry.attempts > 0) {
            // A retry: the breaker may have opened since the batches were sent.
            if let Err(retry_in) = observer.admit() {
                let err = UpstreamError::CircuitOpen { retry_in };
                for b in waiting.drain(..) {
                    b.fail(err.clone(), &stats);
                }
                continue;
            }
        }
        // No attempt outlives the time bound of the batch that waits longest: a
        // retry begun just before it (a server that accepts but does not answer
        // the setup) ends there, not a whole connect_timeout later.
        let started = Instant::now();
        // Told when a Sentinel-backed database's primary moves (see `serve`).
        let mut moved = cfg.endpoint.subscribe();
        let bound = waiting.iter().map(|b| b.retry.bound).min();
        let attempt = match bound {
            Some(at) => tokio::time::timeout_at(at, connect(&cfg, resp3))
                .await
                .unwrap_or_else(|_| {
                    Err(UpstreamError::Connect {
                        addr: addr.clone(),
                        reason: format!(
                            "timed out after {:?}, at the command's deadline (connect_timeout + command_timeout after it was sent)",
                            ms(started.elapsed())
                        ),
                    })
                }),
            None => connect(&cfg, resp3).await,
        };
        match attempt {
            Ok(stream) => {
                pause = RECONNECT_MIN;
                stats::add(&stats.connects, 1);
                stats::add(&stats.mux_connected, 1);
                tracing::debug!(upstream = %addr, db = cfg.db, "shared upstream connection open");
                let ended = serve(
                    stream,
                    &mut waiting,
                    &mut rx,
                    &cfg,
                    &stats,
                    &observer,
                    &mut moved,
                    &busy,
                )
                .await;
                stats::sub(&stats.mux_connected, 1);
                if let Some((err, in_flight)) = ended {
                    // Retried ones go first: they were sent before anything waiting.
                    let kept = keep_after_loss(in_flight, &err, max_attempts, &stats);
                    for b in kept.into_iter().rev() {
                        waiting.push_front(b);
                    }
                }
            }
            Err(err) => {
                last_err = Some(err.clone());
                if err.counts_as_failure() {
                    observer.failure();
                }
                stats::add(&stats.connect_failures, 1);
                tracing::warn!(upstream = %addr, error = %err, "upstream connection failed");
                while let Ok(b) = rx.try_recv() {
                    waiting.push_back(b);
                }
                let now = Instant::now();
                let fewest = waiting.iter().map(|b| b.retry.attempts).min().unwrap_or(0);
                let next = now + observer.retry_delay(fewest);
                let mut kept = VecDeque::with_capacity(waiting.len());
                for mut b in waiting.drain(..) {
                    b.retry.attempts += 1;
                    if err.is_transient() && b.retry.attempts < max_attempts && next < b.retry.bound
                    {
                        kept.push_back(b);
                    } else {
                        b.fail(err.clone(), &stats);
                    }
                }
                waiting = kept;
                retry_at = Some(if waiting.is_empty() {
                    let at = now + jittered(pause);
                    pause = (pause * 2).min(RECONNECT_MAX);
                    at
                } else {
                    next
                });
            }
        }
    }
}

/// Waits until `at`, the end of the pause after a failed attempt, taking in the
/// batches that arrive meanwhile. A batch whose deadline comes first gets the last
/// attempt's error at its deadline, not after the pause: no command outlives
/// `connect_timeout + command_timeout` because the slot is pausing.
async fn pause_until(
    at: Instant,
    waiting: &mut VecDeque<Batch>,
    rx: &mut mpsc::Receiver<Batch>,
    last_err: Option<&UpstreamError>,
    stats: &DbStats,
) {
    loop {
        let first_deadline = waiting.iter().map(|b| b.retry.bound).min();
        let wake = first_deadline.map_or(at, |d| d.min(at));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            b = rx.recv() => match b {
                Some(b) => {
                    waiting.push_back(b);
                    continue;
                }
                None => return,
            },
        }
        let now = Instant::now();
        if now >= at {
            return;
        }
        if let Some(err) = last_err {
            fail_expired(waiting, now, err, stats);
        }
    }
}

/// Answers with `err` the waiting batches whose bound has passed at `now`; the
/// others keep their order.
fn fail_expired(waiting: &mut VecDeque<Batch>, now: Instant, err: &UpstreamError, stats: &DbStats) {
    let (expired, kept): (VecDeque<Batch>, VecDeque<Batch>) =
        waiting.drain(..).partition(|b| b.retry.bound <= now);
    *waiting = kept;
    for b in expired {
        b.fail(err.clone(), stats);
    }
}

/// Decides, after a connection ended with `in_flight` batches (oldest first)
/// unanswered, which of them are sent again: those that provably did not run or
/// are read-only, have attempts left and time before their bound, and are not
/// followed by a failed batch of the same session. The others get `err`.
fn keep_after_loss(
    in_flight: Vec<Batch>,
    err: &UpstreamError,
    max_attempts: u32,
    stats: &DbStats,
) -> Vec<Batch> {
    let now = Instant::now();
    let mut failed_sessions: Vec<u64> = Vec::new();
    let mut kept = Vec::new();
    for mut b in in_flight.into_iter().rev() {
        let r = &b.retry;
        let safe = err.is_transient()
            && (!err.may_have_run() || r.readonly)
            && r.attempts < max_attempts
            && now < r.bound
            && !failed_sessions.contains(&r.origin);
        if safe {
            b.retry.alone = err.may_have_run();
            kept.push(b);
        } else {
            if !failed_sessions.contains(&r.origin) {
                failed_sessions.push(r.origin);
            }
            b.fail(err.clone(), stats);
        }
    }
    kept.reverse();
    kept
}

/// A batch written upstream, waiting for its replies.
struct InFlight {
    batch: Batch,
    /// When its replies are overdue.
    deadline: Instant,
    /// Its reply is being passed on in parts (see [`Answer::rest`]).
    parts: Option<mpsc::UnboundedSender<BatchReply>>,
    /// Held by a batch sent alone: the slot writes nothing more until every such
    /// sender is dropped (the batch answered, or given back when the connection
    /// ended).
    _gate: Option<mpsc::Sender<()>>,
}

impl InFlight {
    /// Passes on what is ready of a large reply, if enough is.
    fn pass_on(&mut self, frames: &mut Frames) {
        if self.batch.divert.is_some() {
            // A redirect is a short error reply: a batch of one request whose
            // reply is not an error needs no divert and is passed on as usual.
            let error = matches!(frames.first_unread(), None | Some(b'-' | b'!'));
            if self.batch.count != 1 || error || !frames.take_ready(STREAM_START) {
                return;
            }
            self.batch.divert = None;
        }
        let min = if self.parts.is_some() {
            STREAM_PART
        } else {
            STREAM_START
        };
        let Some(part) = frames.take_partial(min) else {
            return;
        };
        match &self.parts {
            Some(tx) => {
                let _ = tx.send(Ok(part));
            }
            None => {
                let (tx, rx) = mpsc::unbounded_channel();
                let (unused, _) = oneshot::channel();
                let reply = std::mem::replace(&mut self.batch.reply, unused);
                let _ = reply.send(Answer {
                    reply: Ok(part),
                    attempts: self.batch.retry.attempts,
                    rest: Some(rx),
                });
                self.parts = Some(tx);
            }
        }
    }

    /// Answers with the last replies (or the whole of them); `redirected`: one of
    /// them is a cluster redirect (the batch's divert, if any, takes them).
    fn answer(mut self, bytes: Bytes, redirected: bool) {
        if redirected {
            if let Some(d) = self.batch.divert.take() {
                let answer = Answer {
                    reply: Ok(bytes),
                    attempts: self.batch.retry.attempts,
                    rest: None,
                };
                return (d.0)(self.batch, answer);
            }
        }
        match self.parts {
            Some(tx) => {
                let _ = tx.send(Ok(bytes));
            }
            None => {
                let _ = self.batch.reply.send(Answer {
                    reply: Ok(bytes),
                    attempts: self.batch.retry.attempts,
                    rest: None,
                });
            }
        }
    }
}

/// Runs one connection until it breaks or the slot is closed. Batches are taken
/// from `waiting` first, then from `rx`; batches not written when the connection
/// ends are left at the front of `waiting`. Returns the error that ended the
/// connection and the batches then in flight (oldest first), if any.
#[allow(clippy::too_many_arguments)] // the slot's parts, passed as they are
async fn serve(
    stream: Stream,
    waiting: &mut VecDeque<Batch>,
    rx: &mut mpsc::Receiver<Batch>,
    cfg: &UpstreamConfig,
    stats: &Arc<DbStats>,
    observer: &Arc<dyn Observer>,
    moved: &mut tokio::sync::watch::Receiver<u64>,
    busy: &Arc<Held>,
) -> Option<(UpstreamError, Vec<Batch>)> {
    let addr = cfg.address();
    let (rd, mut wr) = stream.into_split();
    let (ptx, prx) = mpsc::unbounded_channel::<InFlight>();
    let mut reader = tokio::spawn(read_loop(
        rd,
        prx,
        addr.clone(),
        cfg.command_timeout,
        stats.clone(),
        observer.clone(),
        cfg.endpoint.clone(),
        busy.clone(),
    ));
    let mut out = BytesMut::with_capacity(COALESCE);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut unsent: Vec<Batch> = Vec::new();
    let ended = 'conn: loop {
        if moved.has_changed().unwrap_or(false) {
            // The primary moved (Sentinel): nothing more is written here; what is
            // in flight is answered by the old primary, or fails with the usual
            // rule (a write that may have run is never sent again), and the slot
            // reconnects to the new primary for everything after it.
            drop(ptx);
            break (&mut reader).await.ok();
        }
        let batch = match waiting.pop_front() {
            Some(b) => b,
            None => tokio::select! {
                b = rx.recv() => match b {
                    Some(b) => b,
                    None => break 'conn None,
                },
                r = &mut reader => break 'conn r.ok(),
                Ok(()) = moved.changed() => {
                    // As above (`changed` marked the change seen).
                    drop(ptx);
                    break 'conn (&mut reader).await.ok();
                }
            },
        };
        if stats::get(&stats.in_flight) > 0 {
            // Redis is still busy with earlier commands, so more are coming (the
            // sessions its replies wake): let every task that is ready, and those
            // the next I/O poll readies, queue theirs first, and send them all in
            // one write (one read in Redis). With nothing in flight (a single
            // client) the batch goes at once.
            tokio::task::yield_now().await;
        }
        // Gather what is queued into one write; batches sent again after a loss
        // go alone (they are at the front), and nothing follows them until they
        // are answered.
        let alone = batch.retry.alone;
        let (gate_tx, gate) = match alone {
            true => {
                let (tx, rx) = mpsc::channel::<()>(1);
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let mut total = batch.bytes.len();
        let deadline = Instant::now() + cfg.endpoint.reply_within(cfg.command_timeout);
        let mut from_queue = || {
            if alone {
                return waiting
                    .front()
                    .is_some_and(|b| b.retry.alone)
                    .then(|| waiting.pop_front())
                    .flatten();
            }
            if total >= COALESCE {
                return None;
            }
            let b = waiting.pop_front().or_else(|| rx.try_recv().ok())?;
            total += b.bytes.len();
            Some(b)
        };
        let mut next = Some(batch);
        while let Some(mut b) = next.take().or_else(&mut from_queue) {
            if !unsent.is_empty() || ptx.is_closed() {
                unsent.push(b);
                continue;
            }
            stats::add(&stats.in_flight, b.count as u64);
            b.retry.attempts += 1;
            b.retry.alone = false;
            let bytes = b.bytes.clone();
            let f = InFlight {
                batch: b,
                deadline,
                parts: None,
                _gate: gate_tx.clone(),
            };
            if let Err(mpsc::error::SendError(f)) = ptx.send(f) {
                // The reader just ended: this batch was never written; the next
                // connection takes it.
                stats::sub(&stats.in_flight, f.batch.count as u64);
                let mut b = f.batch;
                b.retry.attempts -= 1;
                b.retry.alone = alone;
                unsent.push(b);
                continue;
            }
            chunks.push(bytes);
        }
        let write = async {
            if chunks.len() == 1 {
                wr.write_all(&chunks[0]).await?;
            } else {
                for c in &chunks {
                    out.extend_from_slice(c);
                }
                let r = wr.write_all(&out).await;
                out.clear();
                if out.capacity() > 4 * COALESCE {
                    // A large request gathered behind a small one: not kept.
                    out = BytesMut::with_capacity(COALESCE);
                }
                r?;
            }
            // TLS may still hold the last bytes (a no-op for plain TCP).
            wr.flush().await
        };
        // A frozen upstream stops reading; the reader's timeout then ends the
        // connection, and the write must not outlive it.
        let res = tokio::select! {
            r = write => r,
            r = &mut reader => break 'conn r.ok(),
        };
        chunks.clear();
        if !unsent.is_empty() || res.is_err() {
            // Closing our write half makes the reader see the end.
            let _ = wr.shutdown().await;
            drop(ptx);
            break (&mut reader).await.ok();
        }
        if let Some(mut gate) = gate {
            drop(gate_tx);
            // Until the batches sent alone are answered (every sender of the
            // gate dropped), what arrives waits; one whose bound passes gets an
            // error (it was never sent), as in a pause after a failed connect.
            let mut taking = true;
            loop {
                let first = waiting.iter().map(|b| b.retry.bound).min();
                tokio::select! {
                    _ = gate.recv() => break,
                    r = &mut reader => break 'conn r.ok(),
                    b = rx.recv(), if taking => match b {
                        Some(b) => waiting.push_back(b),
                        None => taking = false,
                    },
                    _ = tokio::time::sleep_until(first.unwrap_or_else(Instant::now)), if first.is_some() => {
                        let err = UpstreamError::Lost { addr: addr.clone(), sent: false };
                        fail_expired(waiting, Instant::now(), &err, stats);
                    }
                }
            }
        }
    };
    for b in unsent.into_iter().rev() {
        waiting.push_front(b);
    }
    ended.flatten()
}

/// Reads replies and hands each batch its run of replies. Ends the connection when
/// it breaks, when Redis sends something that is not a reply, or when the oldest
/// batch's replies are overdue (its position in the stream is then unknown).
/// Returns why it ended and the batches still unanswered, oldest first (`None` when
/// the slot closed the connection with nothing in flight).
#[allow(clippy::too_many_arguments)] // the slot's parts, passed as they are
async fn read_loop(
    mut rd: ReadHalf,
    mut prx: mpsc::UnboundedReceiver<InFlight>,
    addr: String,
    timeout: Duration,
    stats: Arc<DbStats>,
    observer: Arc<dyn Observer>,
    endpoint: crate::endpoint::Endpoint,
    busy: Arc<Held>,
) -> Option<(UpstreamError, Vec<Batch>)> {
    let mut not_serving = false;
    // A timer for when the slot counts as busy ([`MuxHandle::busy`]): armed for
    // the first batch that may be held, and, like `sleep`, re-armed only when it
    // fires (for the current batch, if it may be held; else left off until one
    // comes), so a stream of writes costs a timer wake-up per `HELD_AFTER`.
    let held_timer = tokio::time::sleep(timeout);
    tokio::pin!(held_timer);
    let mut held_armed = false;
    let mut frames = Frames::new(64 * 1024);
    let mut cur: Option<InFlight> = None;
    let mut done = 0u32;
    let mut errors = 0u64;
    let mut redirected = false;
    let sleep = tokio::time::sleep(timeout);
    tokio::pin!(sleep);
    let mut armed = false;
    let err = 'conn: loop {
        loop {
            if cur.is_none() {
                if !frames.has_unread() {
                    break;
                }
                match prx.try_recv() {
                    Ok(f) => cur = Some(f),
                    Err(_) => {
                        // Bytes nobody asked for (e.g. a push message): not RESP we can place.
                        break 'conn UpstreamError::Protocol { addr: addr.clone() };
                    }
                }
            }
            let Some(f) = cur.as_mut() else { break };
            match frames.next_frame() {
                Ok(Some((frame, at))) => {
                    done += 1;
                    if frame.is_error {
                        errors += 1;
                        redirected |= f.batch.divert.is_some()
                            && super::is_redirect(frames.bytes(at.clone()));
                        not_serving |= super::is_not_serving(frames.bytes(at.clone()));
                        // `-READONLY`: a demoted primary. The watcher asks the
                        // sentinels; the reply goes to the client as Redis sent it
                        // and nothing is resent. Redis refuses only writes with it
                        // (reads run on a replica), so there is no read to retry,
                        // and resending the write alone would reorder it after the
                        // later commands of its pipeline that already ran here.
                        if super::is_readonly(frames.bytes(at)) {
                            endpoint.suspect();
                        }
                    }
                    if done == f.batch.count {
                        if std::mem::take(&mut not_serving) {
                            observer.failure();
                        } else {
                            observer.success();
                        }
                        let bytes = frames.take();
                        stats::sub(&stats.in_flight, f.batch.count as u64);
                        if errors > 0 {
                            stats::add(&stats.errors, errors);
                        }
                        if let Some(f) = cur.take() {
                            f.answer(bytes, std::mem::take(&mut redirected));
                        }
                        if busy.get() {
                            busy.set(false);
                            held_armed = false;
                        }
                        done = 0;
                        errors = 0;
                    }
                }
                Ok(None) => {
                    f.pass_on(&mut frames);
                    break;
                }
                Err(_) => break 'conn UpstreamError::Protocol { addr: addr.clone() },
            }
        }
        if cur.is_none() {
            match prx.try_recv() {
                Ok(f) => cur = Some(f),
                Err(mpsc::error::TryRecvError::Empty) => {}
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    break UpstreamError::Lost {
                        addr: addr.clone(),
                        sent: false,
                    }
                }
            }
        }
        let read = match &cur {
            // Nothing in flight: wait for data or for the next batch.
            None => tokio::select! {
                r = frames.fill(&mut rd) => r,
                f = prx.recv() => {
                    match f {
                        Some(f) => cur = Some(f),
                        None => break UpstreamError::Lost { addr: addr.clone(), sent: false },
                    }
                    continue;
                }
            },
            Some(f) => {
                // Deadlines grow in send order, so a timer armed for an earlier
                // batch fires no later than the current one's: it is re-armed only
                // when it fires early, not for every batch.
                if !armed {
                    sleep.as_mut().reset(f.deadline);
                    armed = true;
                }
                // (`deadline` is the time it was written plus the timeout.)
                let held_at = f.deadline.checked_sub(timeout).unwrap_or(f.deadline) + HELD_AFTER;
                if f.batch.may_hold && !held_armed {
                    held_timer.as_mut().reset(held_at);
                    held_armed = true;
                }
                let watch_held = held_armed && !busy.get();
                tokio::select! {
                    r = frames.fill(&mut rd) => r,
                    _ = &mut sleep => {
                        if Instant::now() >= f.deadline {
                            break UpstreamError::Timeout { addr: addr.clone(), after: timeout };
                        }
                        sleep.as_mut().reset(f.deadline);
                        continue;
                    }
                    _ = &mut held_timer, if watch_held => {
                        if !f.batch.may_hold {
                            held_armed = false;
                        } else if Instant::now() >= held_at {
                            busy.set(true);
                        } else {
                            held_timer.as_mut().reset(held_at);
                        }
                        continue;
                    }
                }
            }
        };
        match read {
            Ok(0) | Err(_) => {
                break UpstreamError::Lost {
                    addr: addr.clone(),
                    sent: true,
                }
            }
            Ok(_) => crate::busy_poll::kick(),
        }
    };
    busy.set(false);
    tracing::debug!(upstream = %addr, error = %err, "shared upstream connection closed");
    prx.close();
    let in_flight: Vec<Batch> = cur
        .into_iter()
        .chain(std::iter::from_fn(|| prx.try_recv().ok()))
        .filter_map(|f| {
            stats::sub(&stats.in_flight, f.batch.count as u64);
            match f.parts {
                // Partly passed on: it cannot be retried, and its client's
                // stream cannot be completed.
                Some(tx) => {
                    let _ = tx.send(Err(err.clone()));
                    None
                }
                None => Some(f.batch),
            }
        })
        .collect();
    // A connection Redis closed is not counted by itself, with commands in
    // flight or not: Redis closes connections for one client's sake — idle ones
    // (its `timeout`), one whose reply is over its output buffer limit
    // (`client-output-buffer-limit normal`, which one client's large reply on a
    // shared connection reaches), `CLIENT KILL`, `maxmemory-clients` — and
    // counting those would let one client's large reply, or a quiet database,
    // open the breaker for every client. A Redis that is really gone is counted
    // when the next connection cannot be made; one that stops answering, by the
    // timeout.
    if !matches!(err, UpstreamError::Lost { .. }) {
        observer.failure();
    }
    if matches!(err, UpstreamError::Timeout { .. }) {
        let n: u64 = in_flight.iter().map(|b| b.count as u64).sum();
        stats::add(&stats.timeouts, n);
    }
    if in_flight.is_empty() && matches!(err, UpstreamError::Lost { sent: false, .. }) {
        return None;
    }
    Some((err, in_flight))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

    use super::*;
    use crate::config::Config;

    /// A policy with a fixed pause between retries that counts failures.
    #[derive(Debug)]
    struct Fixed {
        delay: Duration,
        failures: AtomicU32,
    }

    impl Observer for Fixed {
        fn success(&self) {}
        fn failure(&self) {
            self.failures.fetch_add(1, Relaxed);
        }
        fn retry_delay(&self, _retry: u32) -> Duration {
            self.delay
        }
    }

    /// A loopback port nothing listens on (connects are refused at once).
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    fn slot(retries: u32, timeouts: Duration) -> (MuxHandle, Arc<UpstreamConfig>, Arc<Fixed>) {
        let mut cfg = Config::for_upstream("127.0.0.1", closed_port()).databases[0]
            .upstream
            .clone();
        cfg.resilience.retry_attempts = retries;
        cfg.connect_timeout = timeouts;
        cfg.command_timeout = timeouts;
        let cfg = Arc::new(cfg);
        let policy = Arc::new(Fixed {
            delay: Duration::from_millis(100),
            failures: AtomicU32::new(0),
        });
        let handle = MuxHandle::spawn(
            cfg.clone(),
            Arc::new(DbStats::default()),
            policy.clone(),
            false,
        );
        (handle, cfg, policy)
    }

    async fn send(
        handle: &MuxHandle,
        cfg: &UpstreamConfig,
        origin: u64,
    ) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        handle
            .send(Batch {
                bytes: Bytes::from_static(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
                count: 1,
                reply: tx,
                block: Block::No,
                retry: Retry::new(origin, true, cfg),
                divert: None,
                may_hold: false,
            })
            .await;
        rx
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_batch_gets_every_attempt_with_the_pause_between() {
        let (handle, cfg, policy) = slot(2, Duration::from_secs(5));
        let started = Instant::now();
        let answer = send(&handle, &cfg, 1).await.await.expect("answer");
        assert!(
            matches!(answer.reply, Err(UpstreamError::Connect { .. })),
            "{answer:?}"
        );
        assert_eq!(answer.attempts, 3);
        assert_eq!(policy.failures.load(Relaxed), 3);
        // Two pauses of 100 ms between three attempts (time is paused: exact).
        assert_eq!(started.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn no_attempt_begins_after_the_bound() {
        // Bound: connect + command timeout = 250 ms; attempts at 0, 100, 200 ms.
        let (handle, cfg, _) = slot(10, Duration::from_millis(125));
        let started = Instant::now();
        let answer = send(&handle, &cfg, 1).await.await.expect("answer");
        assert_eq!(answer.attempts, 3);
        assert_eq!(started.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_sent_during_the_pause_waits_behind_the_earlier_one() {
        let (handle, cfg, _) = slot(1, Duration::from_secs(5));
        let started = Instant::now();
        let first = send(&handle, &cfg, 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Sent while the first waits for its retry: it joins the first's next
        // attempt (never one of its own before it), and has its own retry after.
        let second = send(&handle, &cfg, 1).await;
        let a = first.await.expect("first");
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        let b = second.await.expect("second");
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        assert_eq!((a.attempts, b.attempts), (2, 2));
        assert!(a.reply.is_err() && b.reply.is_err());
    }

    #[test]
    fn after_a_loss_a_read_is_not_retried_behind_a_failed_write_of_its_session() {
        let cfg = Config::for_upstream("127.0.0.1", 1).databases[0]
            .upstream
            .clone();
        let batch = |origin, readonly| {
            let (tx, rx) = oneshot::channel();
            let mut retry = Retry::new(origin, readonly, &cfg);
            retry.attempts = 1;
            let b = Batch {
                bytes: Bytes::new(),
                count: 1,
                reply: tx,
                block: Block::No,
                retry,
                divert: None,
                may_hold: false,
            };
            (b, rx)
        };
        // In flight, oldest first: session 1 GET, session 2 GET, session 1 SET,
        // session 2 GET.
        let (b1, mut r1) = batch(1, true);
        let (b2, _r2) = batch(2, true);
        let (b3, mut r3) = batch(1, false);
        let (b4, _r4) = batch(2, true);
        let err = UpstreamError::Lost {
            addr: "x".into(),
            sent: true,
        };
        let kept = keep_after_loss(vec![b1, b2, b3, b4], &err, 4, &DbStats::default());
        // Session 2's reads are retried, in order; session 1's read is not (its
        // write after it may have run), and the write gets the error.
        let origins: Vec<u64> = kept.iter().map(|b| b.retry.origin).collect();
        assert_eq!(origins, vec![2, 2]);
        assert!(r1.try_recv().expect("answered").reply.is_err());
        assert!(r3.try_recv().expect("answered").reply.is_err());
    }

    /// Reads a connection's setup (it ends with PING) and answers it: `+OK` to each
    /// SELECT, `+PONG`. False if the connection closed first.
    async fn answer_setup(s: &mut tokio::net::TcpStream) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(6).any(|w| w == b"PING\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let selects = seen.windows(6).filter(|w| w == b"SELECT").count();
        let mut setup = b"+OK\r\n".repeat(selects);
        setup.extend_from_slice(b"+PONG\r\n");
        s.write_all(&setup).await.is_ok()
    }

    /// A scripted upstream on a loopback port: answers the connection setup, then
    /// reads one batch and sends `reply`, then `rest` when told.
    async fn scripted(
        reply: Vec<u8>,
        rest: Vec<u8>,
    ) -> (u16, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (go, more) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut buf = [0u8; 4096];
            assert!(answer_setup(&mut s).await, "closed during setup");
            let mut seen = Vec::new();
            while !seen.windows(3).any(|w| w == b"GET") {
                let n = s.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed before the batch");
                seen.extend_from_slice(&buf[..n]);
            }
            s.write_all(&reply).await.expect("write");
            let _ = more.await;
            s.write_all(&rest).await.expect("write");
            // Held open until the test ends.
            let _ = s.read(&mut buf).await;
        });
        (port, go, task)
    }

    /// An upstream that closes its first connection when a batch arrives and
    /// never answers a batch on the others; says whether it ever saw a `SET`.
    async fn closes_then_stalls() -> (u16, Arc<AtomicBool>) {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let saw_set = Arc::new(AtomicBool::new(false));
        let saw = saw_set.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let saw = saw.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    if !answer_setup(&mut s).await {
                        return;
                    }
                    loop {
                        let k = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => k,
                        };
                        if buf[..k].windows(3).any(|w| w == b"SET") {
                            saw.store(true, Relaxed);
                        }
                        if n == 0 {
                            return;
                        }
                    }
                });
            }
        });
        (port, saw_set)
    }

    /// A read kept after a loss is sent again alone; a batch of another session
    /// that arrives meanwhile waits, and gets an error that says it was never
    /// sent once its bound passes (here the read's next attempts time out).
    #[tokio::test]
    async fn a_read_sent_again_after_a_loss_goes_alone_and_the_rest_waits_within_its_bound() {
        let (port, saw_set) = closes_then_stalls().await;
        let mut cfg = Config::for_upstream("127.0.0.1", port).databases[0]
            .upstream
            .clone();
        cfg.resilience.retry_attempts = 3;
        cfg.connect_timeout = Duration::from_millis(50);
        cfg.command_timeout = Duration::from_millis(400);
        let cfg = Arc::new(cfg);
        let policy = Arc::new(Fixed {
            delay: Duration::from_millis(10),
            failures: AtomicU32::new(0),
        });
        let handle = MuxHandle::spawn(cfg.clone(), Arc::new(DbStats::default()), policy, false);
        let started = Instant::now();
        let read = send(&handle, &cfg, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (tx, write) = oneshot::channel();
        handle
            .send(Batch {
                bytes: Bytes::from_static(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"),
                count: 1,
                reply: tx,
                block: Block::No,
                retry: Retry::new(2, false, &cfg),
                divert: None,
                may_hold: false,
            })
            .await;
        let w = write.await.expect("the write's answer");
        let waited = started.elapsed();
        assert!(
            matches!(w.reply, Err(UpstreamError::Lost { sent: false, .. })),
            "{w:?}"
        );
        assert_eq!(w.attempts, 0);
        // Its bound: 450 ms after it was sent, 100 ms after the read.
        assert!(
            waited >= Duration::from_millis(540) && waited < Duration::from_millis(900),
            "{waited:?}"
        );
        let r = read.await.expect("the read's answer");
        assert!(
            matches!(r.reply, Err(UpstreamError::Timeout { .. })),
            "{r:?}"
        );
        // Lost on the first connection, then timed out on the next two alone.
        assert_eq!(r.attempts, 3);
        assert!(!saw_set.load(Relaxed), "the write was sent behind the read");
    }

    /// A batch of `count` GETs with a divert that reports on `diverted`.
    async fn send_diverted(
        port: u16,
        count: u32,
    ) -> (
        oneshot::Receiver<Answer>,
        tokio::sync::mpsc::UnboundedReceiver<Answer>,
        MuxHandle,
    ) {
        let cfg = Arc::new(
            Config::for_upstream("127.0.0.1", port).databases[0]
                .upstream
                .clone(),
        );
        let policy = Arc::new(Fixed {
            delay: Duration::from_millis(100),
            failures: AtomicU32::new(0),
        });
        let handle = MuxHandle::spawn(cfg.clone(), Arc::new(DbStats::default()), policy, false);
        let (dtx, drx) = tokio::sync::mpsc::unbounded_channel();
        let (tx, rx) = oneshot::channel();
        let get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        handle
            .send(Batch {
                bytes: Bytes::from(get.repeat(count as usize)),
                count,
                reply: tx,
                block: Block::No,
                retry: Retry::new(1, true, &cfg),
                divert: Some(Divert(Box::new(move |_batch, answer| {
                    let _ = dtx.send(answer);
                }))),
                may_hold: false,
            })
            .await;
        (rx, drx, handle)
    }

    const BIG: usize = 1_000_000;

    fn big_reply() -> (Vec<u8>, Vec<u8>) {
        let mut first = format!("${BIG}\r\n").into_bytes();
        first.extend(std::iter::repeat_n(b'x', 2 * STREAM_START));
        let mut rest = vec![b'x'; BIG - 2 * STREAM_START];
        rest.extend_from_slice(b"\r\n");
        (first, rest)
    }

    /// One request whose reply is not an error cannot be redirected: a large one
    /// is passed on as it arrives even with a divert (which is never called).
    #[tokio::test]
    async fn a_divert_batch_of_one_large_reply_is_passed_on_in_parts() {
        let (first, rest) = big_reply();
        let total = first.len() + rest.len();
        let (port, go, _up) = scripted(first, rest).await;
        let (rx, mut diverted, _h) = send_diverted(port, 1).await;
        // Only part of the reply was sent: an answer now means it was streamed.
        let answer = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("the first part before the rest was sent")
            .expect("answered");
        let mut got = answer.reply.expect("replies").len();
        let mut parts = answer.rest.expect("streamed");
        let _ = go.send(());
        while let Some(part) = tokio::time::timeout(Duration::from_secs(10), parts.recv())
            .await
            .expect("parts in time")
        {
            got += part.expect("part").len();
        }
        assert_eq!(got, total);
        assert!(diverted.try_recv().is_err(), "not diverted");
    }

    /// With two requests, a later reply could still be a redirect: nothing is
    /// passed on before the batch's replies are all in.
    #[tokio::test]
    async fn a_divert_batch_of_several_requests_is_answered_whole() {
        let (big, rest) = big_reply();
        let mut first = b"$1\r\nv\r\n".to_vec();
        first.extend(big);
        let total = first.len() + rest.len();
        let (port, go, _up) = scripted(first, rest).await;
        let (mut rx, _diverted, _h) = send_diverted(port, 2).await;
        let early = tokio::time::timeout(Duration::from_millis(500), &mut rx).await;
        assert!(early.is_err(), "answered before the replies were all in");
        let _ = go.send(());
        let answer = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("answer in time")
            .expect("answered");
        assert!(answer.rest.is_none(), "not streamed");
        assert_eq!(answer.reply.expect("replies").len(), total);
    }

    /// A redirect goes to the divert, with the replies; the reply channel is not
    /// used.
    #[tokio::test]
    async fn a_redirect_goes_to_the_divert() {
        let moved = b"-MOVED 3999 127.0.0.1:6381\r\n".to_vec();
        let (port, _go, _up) = scripted(moved.clone(), Vec::new()).await;
        let (rx, mut diverted, _h) = send_diverted(port, 1).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), diverted.recv())
            .await
            .expect("diverted in time")
            .expect("diverted");
        assert_eq!(answer.reply.expect("replies"), moved);
        assert!(
            rx.await.is_err(),
            "the batch's own reply channel was not used"
        );
    }
}
