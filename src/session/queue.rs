//! The session's FIFO of pending replies: every request gets a place, and the
//! client is written to strictly in that order. Upstream failures become the
//! client's error text here, in one place.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::tracking::{self, Hook};
use super::Session;
use crate::protocol::reply;
use crate::router::Database;
use crate::stats;
use crate::transport::Stream;
use crate::upstream::mux::{Answer, BatchReply};
use crate::upstream::UpstreamError;

/// Replies larger than this are written straight from their buffer.
const DIRECT_WRITE: usize = 16 * 1024;

/// Command-table indexes of the commands in a batch (unknown: `table::COUNT`).
pub(super) type CmdList = SmallVec<[u16; 16]>;

/// A reply slot in the session's FIFO.
pub(super) enum Pending {
    /// A reply the proxy produced.
    Ready(Bytes),
    /// Replies to a batch sent upstream.
    Upstream(Sent),
    /// The rest of a large reply, passed on in parts as it arrives (`silent`: the
    /// client asked not to get it).
    Parts {
        rx: mpsc::UnboundedReceiver<BatchReply>,
        silent: bool,
    },
    /// Close the connection once everything before this is written.
    Close,
}

/// A batch sent upstream, waiting for its answer (retries happen in the shared
/// slot, which keeps the session's batches in order; see `upstream::mux`).
pub(super) struct Sent {
    pub rx: oneshot::Receiver<Answer>,
    pub count: u32,
    pub db: Arc<Database>,
    /// When it was sent.
    pub started: Instant,
    pub cmds: CmdList,
    /// Sent on a shared (or out-of-band) connection, not an exclusive one.
    pub shared: bool,
    /// CLIENT REPLY OFF/SKIP: the client gets no reply for this batch.
    pub silent: bool,
    /// An EXEC whose transaction SELECTs this database: the session switches to it
    /// if EXEC ran the transaction.
    pub select_after: Option<Arc<Database>>,
    /// A tracking command whose reply changes the session or is translated.
    pub hook: Option<Hook>,
}

impl Session {
    /// Writes every reply at the front of the queue that is already available.
    pub(super) async fn write_ready(&mut self, stream: &mut Stream) -> std::io::Result<()> {
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
                Pending::Parts { rx, .. } => {
                    let part = match rx.try_recv() {
                        Ok(p) => Some(p),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    };
                    self.on_part(part);
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
        // TLS may still hold the last bytes (a no-op for plain TCP).
        stream.flush().await
    }

    /// Queues a reply the proxy produced (unless CLIENT REPLY says otherwise).
    pub(super) fn push_reply(&mut self, bytes: Vec<u8>) {
        stats::add(&self.ctx.stats.local_commands, 1);
        if self.reply_off || std::mem::take(&mut self.skip_next) {
            return;
        }
        self.queue.push_back(Pending::Ready(Bytes::from(bytes)));
    }

    /// Queues a reply, then the end of the connection.
    pub(super) fn close_after(&mut self, bytes: Vec<u8>) {
        self.push_reply(bytes);
        self.queue.push_back(Pending::Close);
        self.closing = true;
    }

    /// Whether any reply is still expected from upstream.
    pub(super) fn waits_upstream(&self) -> bool {
        self.queue
            .iter()
            .any(|p| matches!(p, Pending::Upstream(_) | Pending::Parts { .. }))
    }

    /// The next part of the large reply at the front of the queue (`None`: it is
    /// complete). A connection that broke mid-reply leaves the client's stream
    /// unfinishable: the client is disconnected, as Redis's own would be.
    pub(super) fn on_part(&mut self, part: Option<BatchReply>) {
        let Some(Pending::Parts { silent, .. }) = self.queue.front() else {
            return;
        };
        let silent = *silent;
        match part {
            Some(Ok(bytes)) if !silent => self.queue.push_front(Pending::Ready(bytes)),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::info!(session = self.state.id, error = %e, "upstream connection lost in the middle of a reply; closing the client");
                self.queue.clear();
                self.done = true;
            }
            None => {
                self.queue.pop_front();
            }
        }
    }

    /// Whether a reply is still expected from an exclusive connection.
    pub(super) fn waits_on_exclusive(&self) -> bool {
        self.queue
            .iter()
            .any(|p| matches!(p, Pending::Upstream(s) if !s.shared))
    }

    /// Replaces the front batch with the bytes its client gets (none if the
    /// client turned replies off with CLIENT REPLY).
    fn finish_front(&mut self, bytes: Bytes) {
        if let Some(front) = self.queue.front_mut() {
            let silent = matches!(front, Pending::Upstream(s) if s.silent);
            let own = matches!(front, Pending::Upstream(s) if !s.shared);
            *front = Pending::Ready(match (silent, own) {
                (false, _) => bytes,
                // As on Redis, pushes (invalidations) still reach a client that
                // turned replies off.
                (true, true) => tracking::pushes_only(&bytes),
                (true, false) => Bytes::new(),
            });
        }
    }

    /// The front batch got its answer (`None`: the answer was lost): it is
    /// replaced with the bytes for the client.
    pub(super) fn settle_front(&mut self, answer: Option<Answer>) {
        let Some(Pending::Upstream(sent)) = self.queue.front_mut() else {
            return;
        };
        let latency = sent.started.elapsed();
        if !sent.shared {
            self.client.set_blocked(None);
        }
        let (reply, attempts, rest) = match answer {
            Some(a) => (a.reply, a.attempts, a.rest),
            None => (
                Err(UpstreamError::Lost {
                    addr: sent.db.config.upstream.address(),
                    sent: true,
                }),
                1,
                None,
            ),
        };
        for _ in 1..attempts {
            for &c in &sent.cmds {
                sent.db.commands.record_retry(c as usize);
            }
        }
        let hook = sent.hook.take();
        let shared = sent.shared;
        let err = match reply {
            Ok(bytes) => {
                record(sent, latency, true);
                // The rest of a large reply follows in parts, right behind.
                let silent = sent.silent;
                let parts = rest.map(|rx| Pending::Parts { rx, silent });
                if let Some(db) = sent.select_after.take() {
                    self.awaiting_exec = false;
                    // `*N`: EXEC ran the queued commands, the SELECT among them
                    // (`*-1`/`_`: a WATCH conflict; `-EXECABORT`: nothing ran).
                    if bytes.starts_with(b"*") && !bytes.starts_with(b"*-1") {
                        self.state.db = db;
                        self.publish();
                    }
                }
                let bytes = if hook.is_some() || !shared {
                    self.tracking_reply(hook, shared, bytes)
                } else {
                    bytes
                };
                self.finish_front(bytes);
                if let Some(p) = parts {
                    self.queue.insert(1, p);
                }
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
            if self.mode.is_private() {
                // The client's own connection to Redis is gone: as Redis would,
                // close the client's connection (after this error reply).
                self.closing = true;
                self.queue.push_back(Pending::Close);
            }
            // The exclusive connection failed (pool exhausted, connect error,
            // connection lost): whatever transaction was under way is over.
            self.release(false);
        }
        self.finish_front(bytes);
    }
}

/// Records a finished batch in the database's per-command statistics.
fn record(sent: &Sent, latency: Duration, ok: bool) {
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
pub(super) fn error_text(db: &Database, err: &UpstreamError, attempts: u32) -> String {
    if let UpstreamError::CircuitOpen { retry_in } = err {
        return circuit_open(db, *retry_in);
    }
    if let UpstreamError::LocalResources { .. } = err {
        return format!("ERR {err} (database {})", db.label());
    }
    let mut msg = format!("UPSTREAM database {}: {}", db.label(), err);
    if attempts > 1 {
        msg.push_str(&format!(" (after {attempts} attempts)"));
    }
    msg
}

/// `count` copies of an error reply.
pub(super) fn errors(count: u32, msg: &str) -> Bytes {
    let mut out = Vec::new();
    for _ in 0..count {
        reply::error(&mut out, msg);
    }
    Bytes::from(out)
}

/// The error text while a database's circuit breaker is open.
fn circuit_open(db: &Database, retry_in: Option<Duration>) -> String {
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
