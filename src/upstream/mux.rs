//! A shared upstream connection onto which many client sessions pipeline their
//! commands (the multiplexing model of twemproxy and Envoy).
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
//! The slot connects lazily, when the first batch arrives, and reconnects the same
//! way after a failure; batches that arrive while no connection can be made are
//! failed at once with the connect error.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};

use super::connect::connect;
use super::error::UpstreamError;
use super::Observer;
use crate::command::Block;
use crate::config::UpstreamConfig;
use crate::protocol::reply;
use crate::stats::{self, DbStats};

/// The answer to a batch: all its replies, back to back, as Redis sent them.
pub type BatchReply = Result<Bytes, UpstreamError>;

/// A run of complete requests sent as one unit.
#[derive(Debug)]
pub struct Batch {
    /// The requests, exactly as the client sent them (multibulk).
    pub bytes: Bytes,
    /// How many replies they produce.
    pub count: u32,
    /// Where the replies go.
    pub reply: oneshot::Sender<BatchReply>,
    /// For a blocking command on an exclusive connection: how long it may wait
    /// beyond the command timeout. Shared connections always use the command timeout.
    pub block: Block,
}

impl Batch {
    /// Answers the batch with `err`, counting its commands as failed.
    fn fail(self, err: UpstreamError, stats: &DbStats) {
        stats::add(&stats.upstream_failures, self.count as u64);
        stats::add(&stats.errors, self.count as u64);
        let _ = self.reply.send(Err(err));
    }
}

/// Handle to a slot; cheap to clone.
#[derive(Debug, Clone)]
pub struct MuxHandle {
    tx: mpsc::Sender<Batch>,
}

/// How many batches may wait for a slot's writer before senders are slowed down.
const QUEUE: usize = 4096;
/// Write-coalescing bound: batches are gathered up to this many bytes per write.
const COALESCE: usize = 64 * 1024;

impl MuxHandle {
    /// Starts a slot for `cfg` on the current runtime; `observer` hears the outcome
    /// of every connect attempt and batch.
    pub fn spawn(
        cfg: Arc<UpstreamConfig>,
        stats: Arc<DbStats>,
        observer: Arc<dyn Observer>,
        resp3: bool,
    ) -> MuxHandle {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run_slot(cfg, rx, stats, observer, resp3));
        MuxHandle { tx }
    }

    /// Queues a batch. If the slot is gone (runtime shutting down), the batch is failed.
    pub async fn send(&self, batch: Batch) {
        match self.tx.try_send(batch) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(b)) => {
                if let Err(mpsc::error::SendError(b)) = self.tx.send(b).await {
                    drop(b);
                }
            }
            Err(mpsc::error::TrySendError::Closed(b)) => drop(b),
        }
    }
}

/// First and largest pause between failed connect attempts of one slot. Batches
/// arriving during the pause wait for its end and the next attempt, so a
/// restarting Redis is met by one connect per slot and pause, not a storm, and
/// no client gets a stale error once Redis is back.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_millis(500);

async fn run_slot(
    cfg: Arc<UpstreamConfig>,
    mut rx: mpsc::Receiver<Batch>,
    stats: Arc<DbStats>,
    observer: Arc<dyn Observer>,
    resp3: bool,
) {
    let addr = cfg.address();
    let mut pause = RECONNECT_MIN;
    let mut retry_at: Option<Instant> = None;
    let mut carried: std::collections::VecDeque<Batch> = std::collections::VecDeque::new();
    loop {
        let first = match carried.pop_front() {
            Some(b) => b,
            None => match rx.recv().await {
                Some(b) => b,
                None => break,
            },
        };
        if let Some(at) = retry_at.take() {
            tokio::time::sleep_until(at).await;
        }
        match connect(&cfg, resp3).await {
            Ok(stream) => {
                pause = RECONNECT_MIN;
                stats::add(&stats.connects, 1);
                stats::add(&stats.mux_connected, 1);
                tracing::debug!(upstream = %addr, db = cfg.db, "shared upstream connection open");
                let unsent = serve(stream, first, &mut rx, &cfg, &stats, &observer).await;
                for b in unsent.into_iter().rev() {
                    carried.push_front(b);
                }
                stats::sub(&stats.mux_connected, 1);
            }
            Err(err) => {
                observer.failure();
                stats::add(&stats.connect_failures, 1);
                tracing::warn!(upstream = %addr, error = %err, "upstream connection failed");
                first.fail(err.clone(), &stats);
                for b in carried.drain(..) {
                    b.fail(err.clone(), &stats);
                }
                while let Ok(b) = rx.try_recv() {
                    b.fail(err.clone(), &stats);
                }
                // Jittered: between half and all of the pause.
                retry_at = Some(Instant::now() + pause.mul_f64(0.5 + fastrand::f64() / 2.0));
                pause = (pause * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// A batch written upstream, waiting for its replies.
struct InFlight {
    count: u32,
    reply: oneshot::Sender<BatchReply>,
    /// When its replies are overdue.
    deadline: Instant,
}

/// Runs one connection until it breaks or the slot is closed.
async fn serve(
    stream: TcpStream,
    first: Batch,
    rx: &mut mpsc::Receiver<Batch>,
    cfg: &UpstreamConfig,
    stats: &Arc<DbStats>,
    observer: &Arc<dyn Observer>,
) -> Vec<Batch> {
    let mut unsent: Vec<Batch> = Vec::new();
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
    ));
    let mut next = Some(first);
    let mut out = BytesMut::with_capacity(COALESCE);
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        let batch = match next.take() {
            Some(b) => b,
            None => tokio::select! {
                b = rx.recv() => match b {
                    Some(b) => b,
                    None => break,
                },
                _ = &mut reader => {
                    // Connection broken on the read side: nothing more can be sent.
                    return unsent;
                }
            },
        };
        // Gather what is queued into one write.
        let mut total = batch.bytes.len();
        let mut failed = false;
        let deadline = Instant::now() + cfg.command_timeout;
        for b in std::iter::once(batch).chain(std::iter::from_fn(|| {
            if total >= COALESCE {
                return None;
            }
            let b = rx.try_recv().ok()?;
            total += b.bytes.len();
            Some(b)
        })) {
            if failed || ptx.is_closed() {
                failed = true;
                unsent.push(b);
                continue;
            }
            let Batch {
                bytes,
                count,
                reply,
                block,
            } = b;
            stats::add(&stats.in_flight, count as u64);
            let f = InFlight {
                count,
                reply,
                deadline,
            };
            if let Err(mpsc::error::SendError(f)) = ptx.send(f) {
                // The reader just ended: this batch was never written; the next
                // connection takes it.
                stats::sub(&stats.in_flight, f.count as u64);
                unsent.push(Batch {
                    bytes,
                    count: f.count,
                    reply: f.reply,
                    block,
                });
                failed = true;
                continue;
            }
            chunks.push(bytes);
        }
        let write = async {
            if chunks.len() == 1 {
                wr.write_all(&chunks[0]).await
            } else {
                for c in &chunks {
                    out.extend_from_slice(c);
                }
                let r = wr.write_all(&out).await;
                out.clear();
                r
            }
        };
        // A frozen upstream stops reading; the reader's timeout then ends the
        // connection, and the write must not outlive it.
        let res = tokio::select! {
            r = write => r,
            _ = &mut reader => return unsent,
        };
        chunks.clear();
        if failed || res.is_err() {
            break;
        }
    }
    // Closing our write half tells Redis we are done; the reader answers or fails
    // whatever is still in flight when the connection ends (or times out).
    let _ = wr.shutdown().await;
    drop(ptx);
    let _ = (&mut reader).await;
    unsent
}

/// Reads replies and hands each batch its run of replies. Ends the connection when
/// it breaks, when Redis sends something that is not a reply, or when the oldest
/// batch's replies are overdue (its position in the stream is then unknown).
async fn read_loop(
    mut rd: OwnedReadHalf,
    mut prx: mpsc::UnboundedReceiver<InFlight>,
    addr: String,
    timeout: Duration,
    stats: Arc<DbStats>,
    observer: Arc<dyn Observer>,
) {
    let mut not_serving = false;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut cur: Option<InFlight> = None;
    let mut scanned = 0usize;
    let mut done = 0u32;
    let mut errors = 0u64;
    let sleep = tokio::time::sleep(timeout);
    tokio::pin!(sleep);
    let mut armed = false;
    let err = 'conn: loop {
        loop {
            if cur.is_none() {
                if buf.is_empty() {
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
            match reply::scan(&buf[scanned..]) {
                Ok(Some(frame)) => {
                    scanned += frame.len;
                    done += 1;
                    if frame.is_error {
                        errors += 1;
                        not_serving |= super::is_not_serving(&buf[scanned - frame.len..scanned]);
                    }
                    if done == f.count {
                        if std::mem::take(&mut not_serving) {
                            observer.failure();
                        } else {
                            observer.success();
                        }
                        let bytes = buf.split_to(scanned).freeze();
                        stats::sub(&stats.in_flight, f.count as u64);
                        if errors > 0 {
                            stats::add(&stats.errors, errors);
                        }
                        if let Some(f) = cur.take() {
                            let _ = f.reply.send(Ok(bytes));
                        }
                        scanned = 0;
                        done = 0;
                        errors = 0;
                    }
                }
                Ok(None) => break,
                Err(_) => break 'conn UpstreamError::Protocol { addr: addr.clone() },
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
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
                r = rd.read_buf(&mut buf) => r,
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
                tokio::select! {
                    r = rd.read_buf(&mut buf) => r,
                    _ = &mut sleep => {
                        if Instant::now() >= f.deadline {
                            break UpstreamError::Timeout { addr: addr.clone(), after: timeout };
                        }
                        sleep.as_mut().reset(f.deadline);
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
            Ok(_) => {}
        }
    };
    tracing::debug!(upstream = %addr, error = %err, "shared upstream connection closed");
    if cur.is_some() || !matches!(err, UpstreamError::Lost { sent: false, .. }) {
        observer.failure();
    }
    prx.close();
    let mut failed = 0u64;
    for f in cur
        .into_iter()
        .chain(std::iter::from_fn(|| prx.try_recv().ok()))
    {
        stats::sub(&stats.in_flight, f.count as u64);
        failed += f.count as u64;
        let _ = f.reply.send(Err(err.clone()));
    }
    stats::add(&stats.upstream_failures, failed);
    stats::add(&stats.errors, failed);
    if matches!(err, UpstreamError::Timeout { .. }) {
        stats::add(&stats.timeouts, failed);
    }
}
