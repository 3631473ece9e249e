//! The session's FIFO of pending replies: every request gets a place, and the
//! client is written to strictly in that order. Upstream failures become the
//! client's error text here, in one place.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::exclusive::end_refusal;
use super::memory::Flight;
use super::prefix::{self, Rewrite};
use super::tracking::{self, Hook};
use super::Session;
use crate::protocol::reply;
use crate::router::Database;
use crate::stats;
use crate::upstream::mux::{Answer, BatchReply};
use crate::upstream::UpstreamError;

/// Replies this large are written straight from their buffer.
const DIRECT_WRITE: usize = 16 * 1024;

/// Command-table indexes of the commands in a batch (unknown: `table::COUNT`).
pub(super) type CmdList = SmallVec<[u16; 16]>;

/// A reply slot in the session's FIFO.
// Most slots are `Upstream`: boxing its `Sent` would allocate once a batch.
#[allow(clippy::large_enum_variant)]
pub(super) enum Pending {
    /// A reply the proxy produced.
    Ready(Bytes),
    /// A `BCAST` client's invalidations of keys, after the replies of the read
    /// that wrote them; those of a later batch of that read join them while they
    /// wait (`Session::queue_bcast`).
    Pushes(Bytes),
    /// Replies to a batch sent upstream.
    Upstream(Sent),
    /// The rest of a large reply, passed on in parts as it arrives (`silent`: the
    /// client asked not to get it). Its batch of `count` requests stays in flight
    /// until the last part; `bytes` have arrived so far.
    Parts {
        rx: mpsc::UnboundedReceiver<BatchReply>,
        silent: bool,
        flight: Flight,
        bytes: usize,
    },
    /// A reply the proxy is still producing (`PROXY CHECK`), in its place; if
    /// its producer goes away, the client reads [`NO_LOCAL_REPLY`].
    Later(oneshot::Receiver<Bytes>),
    /// Close the connection once everything before this is written.
    Close,
}

/// The reply to a `Pending::Later` whose producer went away without one.
pub(super) const NO_LOCAL_REPLY: &[u8] = b"-ERR the proxy could not produce this reply\r\n";

/// A batch sent upstream, waiting for its answer (retries happen in the shared
/// slot, which keeps the session's batches in order; see `upstream::mux`).
pub(super) struct Sent {
    pub rx: oneshot::Receiver<Answer>,
    /// As the in-flight bound counts it.
    pub flight: Flight,
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
    /// `key_prefix`: the reply names keys (of one command, or of commands an EXEC
    /// ran); the prefix is removed.
    pub unprefix: Option<Rewrite>,
    /// `CLIENT PAUSE`/`UNPAUSE`, noted when sent: taken back if Redis answers
    /// with an error (kept on `+OK`, `+QUEUED`, and when the answer is lost).
    pub pause_noted: Option<super::local::PauseNoted>,
    /// An EXEC whose transaction queued commands the proxy answers itself: they
    /// run if it ran, their replies put among its own ([`Session::splice_exec`]).
    pub splice: Option<Vec<super::mode::Queued>>,
    /// Sent on a held connection inside MULTI (a MULTI before this batch).
    pub multi_before: bool,
}

/// Replies taken off the queue, in order, waiting to be written to the client.
///
/// Small replies are copied together into `tail` (one write for many); large ones
/// (and a full `tail`) are kept as segments and written straight from their buffers.
/// Its length is the client's output buffer: what backpressure, the
/// `client_output_buffer_limit` and `max_client_memory` measure.
#[derive(Default)]
pub(super) struct Outbox {
    segments: VecDeque<Bytes>,
    /// Small replies, after every segment.
    tail: Vec<u8>,
    /// Bytes of the front (the first segment, or `tail` without one) written.
    pos: usize,
    /// Bytes not yet written.
    len: usize,
}

/// A `tail` this full becomes a segment.
const TAIL_MAX: usize = 64 * 1024;

impl Outbox {
    /// Appends a reply.
    pub(super) fn push(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        if bytes.len() >= DIRECT_WRITE {
            self.seal();
            self.segments.push_back(bytes);
        } else {
            if self.tail.len() + bytes.len() > TAIL_MAX {
                self.seal();
            }
            self.tail.extend_from_slice(&bytes);
        }
    }

    /// Makes `tail` a segment (its written part stays written: it is the front
    /// either way).
    fn seal(&mut self) {
        if !self.tail.is_empty() {
            let tail = std::mem::take(&mut self.tail);
            self.segments.push_back(Bytes::from(tail));
        }
    }

    /// The next bytes to write.
    pub(super) fn front(&self) -> &[u8] {
        match self.segments.front() {
            Some(s) => &s[self.pos..],
            None => &self.tail[self.pos..],
        }
    }

    /// `n` bytes of [`Outbox::front`] were written.
    pub(super) fn advance(&mut self, n: usize) {
        self.pos += n;
        self.len -= n;
        match self.segments.front() {
            Some(s) if self.pos >= s.len() => {
                self.segments.pop_front();
                self.pos = 0;
                if self.segments.is_empty() {
                    self.segments = VecDeque::new();
                }
            }
            Some(_) => {}
            None if self.pos >= self.tail.len() => {
                // Drained: its memory is freed (an idle client keeps none).
                self.pos = 0;
                self.tail = Vec::new();
            }
            None => {}
        }
    }

    /// Bytes waiting to be written.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Memory held: the bytes waiting and the room of `tail`.
    pub(super) fn memory(&self) -> usize {
        self.len + self.tail.capacity() - self.tail.len()
    }
}

impl Session {
    /// Moves every reply at the front of the queue that is already available to the
    /// outbox, in order. A `Close` entry ends the session once everything before it
    /// is written.
    pub(super) fn take_ready(&mut self) {
        while let Some(front) = self.queue.front_mut() {
            let bytes = match front {
                Pending::Ready(b) | Pending::Pushes(b) => std::mem::take(b),
                Pending::Close => {
                    if self.outbox.is_empty() {
                        self.done = true;
                        self.queue.clear();
                    }
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
                Pending::Later(rx) => match rx.try_recv() {
                    Ok(b) => b,
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => Bytes::from_static(NO_LOCAL_REPLY),
                },
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
            self.outbox.push(bytes);
        }
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
        self.close_when_answered();
    }

    /// Closes the client once every reply queued so far is written.
    pub(super) fn close_when_answered(&mut self) {
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
        let Some(Pending::Parts {
            silent,
            flight,
            bytes: so_far,
            ..
        }) = self.queue.front_mut()
        else {
            return;
        };
        let silent = *silent;
        if let Some(Ok(bytes)) = &part {
            *so_far += bytes.len();
        }
        match part {
            Some(Ok(bytes)) if !silent => self.queue.push_front(Pending::Ready(bytes)),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::info!(session = self.state.id, error = %e, "upstream connection lost in the middle of a reply; closing the client");
                self.queue.clear();
                self.done = true;
            }
            None => {
                let (flight, total) = (*flight, *so_far);
                self.arrive(&flight, total, true);
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
        // Replies on the session's own connection while a RESET or QUIT waits
        // (the PING before it): a BCAST client's invalidations of keys, which
        // Redis sends once it has run every command of the read (RESET's,
        // QUIT's too), are not sent then.
        let bcast = self.tracks_bcast();
        let keys = !(self.end_barrier && bcast);
        // (Not where other clients' invalidations come too: `holds_bcast`.)
        let hold = bcast && self.holds_bcast();
        let mut after = None;
        if let Some(front) = self.queue.front_mut() {
            let silent = matches!(front, Pending::Upstream(s) if s.silent);
            let own = matches!(front, Pending::Upstream(s) if !s.shared);
            *front = Pending::Ready(match (silent, own) {
                (false, true) if !keys => tracking::without_key_pushes(bytes),
                (false, true) if hold => {
                    // Invalidations Redis sent after the batch's last reply: it
                    // sends a BCAST client's once it has run the whole read, so
                    // they follow the rest of the read's replies.
                    let (replies, pushes) = tracking::split_trailing_key_pushes(bytes);
                    after = pushes;
                    replies
                }
                (false, _) => bytes,
                // As on Redis, pushes (invalidations) still reach a client that
                // turned replies off (a BCAST client's after the read, as above).
                (true, true) if hold && keys => {
                    let pushes = tracking::pushes_only(&bytes, true);
                    let (flushes, later) = tracking::split_trailing_key_pushes(pushes);
                    after = later;
                    flushes
                }
                (true, true) => tracking::pushes_only(&bytes, keys),
                (true, false) => Bytes::new(),
            });
        }
        if let Some(pushes) = after {
            self.hold_bcast(pushes);
        }
    }

    /// The front batch got its answer (`None`: the answer was lost): it is
    /// replaced with the bytes for the client.
    pub(super) fn settle_front(&mut self, answer: Option<Answer>) {
        let Some(Pending::Upstream(sent)) = self.queue.front_mut() else {
            return;
        };
        let latency = sent.started.elapsed();
        let flight = sent.flight;
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
        if sent.shared && self.ctx.slowlog.is_slow(latency) {
            self.ctx.slowlog.push(
                latency,
                sent.db.label(),
                sent.cmds
                    .iter()
                    .map(|&c| crate::command::table_name(c as usize)),
                sent.count,
                &self.state.peer,
                self.state.name.as_deref(),
            );
        }
        if let (Some(noted), Ok(bytes)) = (sent.pause_noted.take(), &reply) {
            if reply::is_error(bytes) {
                noted.take_back();
            }
        }
        let hook = sent.hook.take();
        let unprefix = sent.unprefix.take();
        let splice = sent.splice.take();
        let shared = sent.shared;
        let err = match reply {
            Ok(bytes) => {
                record(sent, latency, true);
                if !shared {
                    if let Some(h) = self.mode.held_mut() {
                        h.known = true;
                    }
                }
                // The rest of a large reply follows in parts, right behind (and
                // its batch stays in flight until the last one).
                let silent = sent.silent;
                let first = bytes.len();
                let parts = rest.map(|rx| Pending::Parts {
                    rx,
                    silent,
                    flight,
                    bytes: first,
                });
                let whole = parts.is_none();
                let cluster = if shared {
                    None
                } else {
                    sent.db.cluster().cloned()
                };
                if let Some(db) = sent.select_after.take() {
                    self.awaiting_exec = false;
                    // `*N`: EXEC ran the queued commands, the SELECT among them
                    // (`*-1`/`_`: a WATCH conflict; `-EXECABORT`: nothing ran);
                    // `+OK`: a SELECT outside MULTI ran (`-NOPERM`: refused).
                    let ran = bytes.starts_with(b"*") && !bytes.starts_with(b"*-1");
                    if ran || bytes.starts_with(b"+OK") {
                        self.state.db = db;
                        self.publish();
                    }
                }
                let bytes = match splice {
                    Some(locals) => self.splice_exec(bytes, locals),
                    None => bytes,
                };
                if let Some(c) = &cluster {
                    if crate::cluster::merge::has_moved(&bytes) {
                        // Passed on by an exclusive connection (a key of another
                        // node than the transaction's, see `follow`): the map may
                        // be stale too.
                        c.refresh_soon();
                    }
                }
                let bytes = if hook.is_some() || !shared {
                    self.tracking_reply(hook, shared, bytes)
                } else {
                    bytes
                };
                if let Some(rewrite) = unprefix {
                    // Rewritten whole: a reply passed on in parts is gathered first.
                    self.arrive(&flight, first, true);
                    match parts {
                        Some(Pending::Parts { rx, .. }) if !silent => {
                            let whole = prefix::gather(rewrite, bytes, rx);
                            if let Some(front) = self.queue.front_mut() {
                                *front = Pending::Later(whole);
                            }
                        }
                        _ => self.finish_front(rewrite.apply(bytes)),
                    }
                    return;
                }
                self.arrive(&flight, first, whole);
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
        let text = error_text(&db, &err, attempts);
        if sent.select_after.take().is_some() {
            self.awaiting_exec = false;
        }
        let count = sent.count;
        let one_each = (!shared && sent.cmds.len() == count as usize)
            .then(|| (sent.cmds.clone(), sent.multi_before));
        let mut bytes = None;
        if !shared {
            if self.mode.is_private() {
                // The client's own connection to Redis is gone: as Redis would,
                // close the client's connection (after this error reply).
                self.close_when_answered();
            }
            // The exclusive connection failed (pool exhausted, connect error,
            // connection lost): a transaction under way on it is lost.
            self.lose_held(err.may_have_run());
            if let Some((cmds, multi)) = one_each {
                bytes = Some(ended_all_the_same(&cmds, &text, multi));
            }
        }
        let bytes = bytes.unwrap_or_else(|| errors(count, &text));
        self.land(&flight);
        self.finish_front(bytes);
    }
}

/// The replies to a batch of `cmds` whose held connection failed (`multi`: sent
/// inside MULTI): `text` for each, but what Redis answers, whether they ran or
/// the connection closed, at each one's place: `+OK` to a DISCARD inside MULTI
/// and to an UNWATCH outside it (nothing of the transaction runs, no key stays
/// watched), and Redis's refusal to an EXEC or DISCARD outside MULTI (under a
/// WATCH, now lost), which runs nothing.
fn ended_all_the_same(cmds: &[u16], text: &str, mut multi: bool) -> Bytes {
    let mut out = Vec::new();
    for &c in cmds {
        let name = crate::command::table_name(c as usize);
        match name {
            "discard" | "exec" if !multi => out.extend_from_slice(end_refusal(name)),
            "discard" => out.extend_from_slice(b"+OK\r\n"),
            "unwatch" if !multi => out.extend_from_slice(b"+OK\r\n"),
            _ => reply::error(&mut out, text),
        }
        multi = match name {
            "multi" => true,
            "exec" | "discard" => false,
            _ => multi,
        };
    }
    Bytes::from(out)
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
    if let UpstreamError::Handshake { reply, .. } = err {
        // Refused for a reason Redis gives any command then (`BUSY` running a
        // script, `LOADING` its dataset): the command never ran, and the client
        // gets Redis's own error, which clients know (and may retry on).
        if reply.starts_with("BUSY ") || reply.starts_with("LOADING ") {
            return reply.clone();
        }
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
