//! On a Redis Cluster, a session's exclusive connection (a transaction, WATCH, a
//! blocking command) follows its slot when the proxy's map was stale.
//!
//! The connection is taken from the pool of the node the map names for the slot
//! it is pinned to (`Session::pin_slot`). If that node no longer serves the slot,
//! Redis answers `-MOVED` (or `-ASK` during a migration, `-TRYAGAIN` /
//! `-CLUSTERDOWN`), which prove the command did not run. A [`Follow`] task sits
//! between the session and the connection's [`Dedicated`] task, passes batches on
//! one at a time (as the connection itself runs them) and reads each answer: when
//! it holds such a reply for the pinned slot, the map is learnt again (awaited,
//! bounded), a connection to the right node is taken and what did not run is sent
//! again there — a command outside MULTI that was redirected; a transaction with a
//! redirected command whole (MULTI and what was queued before, from earlier
//! batches, silently: the client already has their `+OK`/`+QUEUED`), since Redis
//! aborts its EXEC; a transaction still open at the end of the batch, so it stays
//! on the connection. The old connection gets DISCARD/UNWATCH and goes back to its
//! pool. `-ASK`: the connection moves to the named node and every command (or
//! MULTI) sent there is preceded by `ASKING`. `-TRYAGAIN`/`-CLUSTERDOWN`: the
//! map learnt again after the cluster client's pause, as its shared
//! connections do, while the bound of any retry of the batch is not passed. At
//! most [`ROUNDS`] moves per batch; then the last replies are passed on.
//!
//! A WATCH Redis accepted does not move with the connection (the new node never
//! saw it, and the key may have changed meanwhile), so the transaction it
//! guards cannot run: from the redirected command to the end of the
//! transaction, the connection is *doomed*. The commands go to the new node as
//! above, but an `EXEC` is sent as `DISCARD` and answered as Redis answers an
//! `EXEC` whose watched key changed (a null; `-EXECABORT` if a queued command
//! was refused), so a client retries as it does after a conflict; UNWATCH and
//! DISCARD end it too.
//!
//! Never resent: a command that got any other reply (it may have run). A
//! redirect for another slot than the pinned one (a transaction spanning
//! nodes) is passed on, as Redis Cluster allows one node per transaction.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::clients::Located;
use crate::cluster::client::Cluster;
use crate::cluster::merge::{self, Redirect, ASKING};
use crate::command::{each_request, Block, Descriptor, TxOp};
use crate::protocol::reply;
use crate::upstream::dedicated::{Dedicated, Pool};
use crate::upstream::mux::{Answer, Batch, Retry};
use crate::upstream::pubsub::End;
use crate::upstream::UpstreamError;

/// Most moves one batch makes (as the cluster client's redirects).
const ROUNDS: u32 = crate::cluster::client::MAX_REDIRECTS;

/// A session's held connection: a [`Dedicated`] one, or on a cluster one that
/// follows its slot.
#[derive(Debug)]
pub(super) enum HeldConn {
    Direct(Dedicated),
    Follow(Follow),
}

impl HeldConn {
    /// Queues a batch; returns the pushes read before it (see [`Dedicated::send`]).
    pub fn send(&mut self, batch: Batch) -> Vec<Bytes> {
        match self {
            HeldConn::Direct(d) => d.send(batch),
            HeldConn::Follow(f) => {
                let _ = f.tx.send(Msg::Batch(batch));
                Vec::new()
            }
        }
    }

    /// Redis's `CLIENT ID` of the connection (of the node it is on now).
    pub fn upstream_id(&self) -> Arc<AtomicU64> {
        match self {
            HeldConn::Direct(d) => d.upstream_id(),
            HeldConn::Follow(f) => f.at.lock().unwrap_or_else(|e| e.into_inner()).id.clone(),
        }
    }

    /// Where a following connection is now (updated as it moves).
    pub fn located(&self) -> Option<Arc<Mutex<Located>>> {
        match self {
            HeldConn::Direct(_) => None,
            HeldConn::Follow(f) => Some(f.at.clone()),
        }
    }

    /// See [`Dedicated::reselect_on_release`].
    pub fn reselect_on_release(&self) {
        match self {
            HeldConn::Direct(d) => d.reselect_on_release(),
            HeldConn::Follow(f) => {
                let _ = f.tx.send(Msg::Reselected);
            }
        }
    }

    /// See [`Dedicated::release`].
    pub fn release(self) {
        match self {
            HeldConn::Direct(d) => d.release(),
            HeldConn::Follow(f) => {
                let _ = f.tx.send(Msg::Release);
            }
        }
    }

    /// The session's own connection (`None`: one that follows its slot).
    pub fn into_direct(self) -> Option<Dedicated> {
        match self {
            HeldConn::Direct(d) => Some(d),
            HeldConn::Follow(_) => None,
        }
    }

    /// See [`Dedicated::watches_pushes`] (a pooled connection has none).
    pub fn watches_pushes(&self) -> bool {
        matches!(self, HeldConn::Direct(d) if d.watches_pushes())
    }

    /// See [`Dedicated::next_push`].
    pub async fn next_push(&mut self) -> Result<Bytes, End> {
        match self {
            HeldConn::Direct(d) => d.next_push().await,
            HeldConn::Follow(_) => std::future::pending().await,
        }
    }
}

enum Msg {
    Batch(Batch),
    Release,
    Reselected,
}

/// The session's handle to a following exclusive connection.
#[derive(Debug)]
pub(super) struct Follow {
    tx: mpsc::UnboundedSender<Msg>,
    /// The current connection's node and `CLIENT ID` cell.
    at: Arc<Mutex<Located>>,
}

/// Where the connection is, and how to get another.
pub(super) struct Place {
    pub cluster: Arc<Cluster>,
    pub label: String,
    pub command_timeout: Duration,
    pub connect_timeout: Duration,
    pub resp3: bool,
    /// The slot the connection is pinned to (`None`: the first redirected one).
    pub slot: Option<u16>,
}

impl Follow {
    /// Serves the session on `conn` (taken for `place.slot`, from the pool of
    /// `node`) and what replaces it.
    pub fn start(conn: Dedicated, node: String, place: Place) -> Follow {
        let (tx, rx) = mpsc::unbounded_channel();
        let at = Arc::new(Mutex::new(Located {
            id: conn.upstream_id(),
            node,
        }));
        let task = Task {
            place,
            conn: Some(conn),
            asking: false,
            journal: None,
            watched: false,
            doomed: false,
            reselect: false,
            at: at.clone(),
        };
        tokio::spawn(task.run(rx));
        Follow { tx, at }
    }
}

/// One request of a batch.
struct Req {
    bytes: Bytes,
    op: TxOp,
    /// It is EXEC (not DISCARD).
    exec: bool,
}

struct Task {
    place: Place,
    conn: Option<Dedicated>,
    /// The connection is on the node an `-ASK` named: `ASKING` precedes every
    /// command outside MULTI and every MULTI.
    asking: bool,
    /// The open transaction: MULTI and the requests queued after it, answered.
    journal: Option<Vec<Bytes>>,
    /// A WATCH Redis accepted is in force on the connection.
    watched: bool,
    /// The connection moved while a WATCH was in force, and the transaction
    /// has not ended: its EXEC must not run.
    doomed: bool,
    /// A SELECT was sent (see [`Dedicated::reselect_on_release`]).
    reselect: bool,
    at: Arc<Mutex<Located>>,
}

/// The requests of a batch (multibulk, as sessions send them), with their
/// transaction role.
fn requests(bytes: &Bytes) -> Vec<Req> {
    let mut out = Vec::new();
    each_request(bytes, |bytes, args| {
        let op = Descriptor::of(args).tx;
        out.push(Req {
            bytes,
            op,
            exec: op == TxOp::End && args.arg(0).eq_ignore_ascii_case(b"EXEC"),
        });
        true
    });
    out
}

/// The replies of `bytes`, one per non-push frame (a push stays in front of the
/// reply after it).
fn frames(bytes: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < bytes.len() {
        let Ok(Some(f)) = reply::scan(&bytes[at..]) else {
            break;
        };
        at += f.len;
        if !f.is_push {
            out.push(bytes.slice(start..at));
            start = at;
        }
    }
    out
}

/// A run of requests that moves as one: a command outside MULTI, or a
/// transaction (from MULTI, or the open one, to EXEC/DISCARD or the batch's end).
struct Unit {
    /// Indexes of its requests in the batch.
    reqs: std::ops::Range<usize>,
    /// It continues the transaction opened by an earlier batch.
    journal: bool,
    /// It ends with the transaction open.
    open: bool,
}

/// Cuts a batch into units; `in_multi`: the batch starts inside MULTI.
fn units(reqs: &[Req], mut in_multi: bool) -> Vec<Unit> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut journal = in_multi;
    for (i, r) in reqs.iter().enumerate() {
        if !in_multi && r.op != TxOp::Multi {
            out.push(Unit {
                reqs: i..i + 1,
                journal: false,
                open: false,
            });
            start = i + 1;
            continue;
        }
        if !in_multi {
            in_multi = true;
            start = i;
            continue;
        }
        if !r.op.in_multi_after(true) {
            out.push(Unit {
                reqs: start..i + 1,
                journal: std::mem::take(&mut journal),
                open: false,
            });
            in_multi = false;
            start = i + 1;
        }
    }
    if in_multi {
        out.push(Unit {
            reqs: start..reqs.len(),
            journal,
            open: true,
        });
    }
    out
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                Msg::Batch(b) => {
                    if !self.batch(b).await {
                        return;
                    }
                }
                Msg::Reselected => {
                    self.reselect = true;
                    if let Some(c) = &self.conn {
                        c.reselect_on_release();
                    }
                }
                Msg::Release => {
                    if let Some(c) = self.conn.take() {
                        c.release();
                    }
                    return;
                }
            }
        }
        // Dropped without release: the connection resets itself (DISCARD, UNWATCH).
    }

    /// Sends `bytes` (`count` replies) on the connection and waits for the
    /// answer. `None`: the session is gone (the connection is given up).
    async fn exchange(
        &mut self,
        bytes: Bytes,
        count: u32,
        block: Block,
        retry: Retry,
        client: &mut oneshot::Sender<Answer>,
    ) -> Option<Answer> {
        let (tx, rx) = oneshot::channel();
        let conn = self.conn.as_mut()?;
        conn.send(Batch {
            bytes,
            count,
            reply: tx,
            block,
            retry,
            divert: None,
            may_hold: false,
        });
        tokio::select! {
            a = rx => Some(a.unwrap_or_else(|_| Answer::from(Err(UpstreamError::Lost {
                addr: self.place.label.clone(),
                sent: true,
            })))),
            // The client left (e.g. while blocked): the connection's task sees
            // its reply dropped and discards the connection.
            _ = client.closed() => None,
        }
    }

    /// Serves one batch. `false`: the session is gone.
    async fn batch(&mut self, b: Batch) -> bool {
        let Batch {
            bytes,
            count,
            reply: mut client,
            block,
            retry,
            ..
        } = b;
        let reqs = requests(&bytes);
        if reqs.len() != count as usize {
            // Not a batch this task can take apart (never sent by a session):
            // passed on as it is, and its answer as it comes.
            let answer = self.exchange(bytes, count, block, retry, &mut client).await;
            return answer.map(|a| client.send(a)).is_some();
        }
        let plain = !self.asking && !self.doomed;
        // Which requests run without their WATCH: from the first one while doomed.
        let mut doom_from = self.doomed.then_some(0);
        let started_in_multi = self.journal.is_some();
        let (mut doom, mut still_doomed) = doomed(&reqs, doom_from, started_in_multi);
        // Every request, for the `ASKING` path (which encodes them one by one).
        let all: Vec<usize> = if plain {
            Vec::new()
        } else {
            (0..reqs.len()).collect()
        };
        let answer = if plain {
            self.exchange(bytes, count, block, retry, &mut client).await
        } else {
            let in_multi = self.journal.is_some();
            let (out, n) = self.encode(&[], &reqs, &all, in_multi, &doom);
            self.exchange(out, n, block, retry, &mut client).await
        };
        let Some(answer) = answer else {
            return false;
        };
        let Ok(first) = answer.reply else {
            let _ = client.send(answer);
            return true;
        };
        let mut got = if plain {
            frames(&first)
        } else {
            self.unask(&[], &reqs, &all, &first)
        };
        if got.len() != reqs.len() {
            // Not a batch this task can take apart: as it came.
            let _ = client.send(Answer::from(Ok(first)));
            return true;
        }
        if !plain {
            answer_execs(
                self.place.resp3,
                &reqs,
                &all,
                &mut got,
                &doom,
                self.journal.is_some(),
            );
        }
        for round in 0..ROUNDS {
            let Some((redirect, resend, watched_at)) = self.must_move(&reqs, &got) else {
                break;
            };
            if !self.move_to(redirect, round, retry.bound).await {
                break;
            }
            if let Some(at) = watched_at {
                // The WATCH stays behind: what follows runs without it.
                doom_from = Some(doom_from.map_or(at, |f| f.min(at)));
                (doom, still_doomed) = doomed(&reqs, doom_from, started_in_multi);
            }
            let journal = self.journal.clone().unwrap_or_default();
            let replay_journal = resend.first().is_some_and(|u: &Unit| u.journal);
            let which: Vec<usize> = resend.iter().flat_map(|u| u.reqs.clone()).collect();
            let sent_journal: &[Bytes] = if replay_journal { &journal } else { &[] };
            let (out, n) = self.encode(sent_journal, &reqs, &which, false, &doom);
            let Some(answer) = self.exchange(out, n, block, retry, &mut client).await else {
                return false;
            };
            let Ok(again) = answer.reply else {
                let _ = client.send(answer);
                return true;
            };
            let mut fresh = self.unask(sent_journal, &reqs, &which, &again);
            if fresh.len() != sent_journal.len() + which.len() {
                let _ = client.send(Answer::from(Ok(again)));
                return true;
            }
            let journal_frames: Vec<Bytes> = fresh.drain(..sent_journal.len()).collect();
            answer_execs(
                self.place.resp3,
                &reqs,
                &which,
                &mut fresh,
                &doom,
                replay_journal,
            );
            if journal_frames.iter().any(|f| self.ours(f).is_some()) {
                // The open transaction's earlier commands were redirected on the
                // new node: the whole of it goes again (its reply is the one
                // given for its last command).
                if let (Some(&last), Some(f)) = (which.first(), journal_frames.last()) {
                    got[last] = f.clone();
                }
            }
            for (i, f) in which.iter().zip(fresh) {
                got[*i] = f;
            }
        }
        self.after(&reqs, &got);
        // Doomed at the end: from a request on, with nothing after it that ends
        // the watch.
        self.doomed = still_doomed;
        let mut out = BytesMut::new();
        for f in &got {
            out.extend_from_slice(f);
        }
        let _ = client.send(Answer::from(Ok(out.freeze())));
        true
    }

    /// A redirect that concerns this connection: `-MOVED`/`-ASK` for the pinned
    /// slot (the first one seen pins a connection taken for no slot), or
    /// `-TRYAGAIN`/`-CLUSTERDOWN`.
    fn ours(&mut self, frame: &[u8]) -> Option<Redirect> {
        let r = merge::redirect(frame)?;
        if r == Redirect::Again {
            return Some(r);
        }
        let slot = merge::redirect_slot(frame)?;
        match self.place.slot {
            Some(s) if s == slot => Some(r),
            Some(_) => None,
            None => {
                self.place.slot = Some(slot);
                Some(r)
            }
        }
    }

    /// Whether the batch's replies `got` say the connection must move, and what
    /// then goes again: the first redirect, the units to resend, and the first
    /// redirected request if a WATCH accepted on this node was in force there
    /// (it is lost with the connection).
    fn must_move(
        &mut self,
        reqs: &[Req],
        got: &[Bytes],
    ) -> Option<(Redirect, Vec<Unit>, Option<usize>)> {
        let mut watching = self.watched;
        let mut in_multi = self.journal.is_some();
        let mut watched_at = None;
        for (i, (r, f)) in reqs.iter().zip(got).enumerate() {
            if self.ours(f).is_some() {
                watched_at = watching.then_some(i);
                break;
            }
            if r.op.ends_watch(in_multi) {
                watching = false;
            } else if r.op == TxOp::Watch && !in_multi && f.starts_with(b"+") {
                watching = true;
            }
            in_multi = r.op.in_multi_after(in_multi);
        }
        let mut first = None;
        let mut resend = Vec::new();
        for u in units(reqs, self.journal.is_some()) {
            let mut hit = false;
            for i in u.reqs.clone() {
                if let Some(r) = self.ours(&got[i]) {
                    first.get_or_insert(r);
                    hit = true;
                }
            }
            if hit || u.open {
                resend.push(u);
            }
        }
        let first = first?;
        Some((first, resend, watched_at))
    }

    /// Replaces the connection with one to where `redirect` points (the map
    /// learnt again first for `-MOVED`; for `-TRYAGAIN`/`-CLUSTERDOWN`, after the
    /// pause of round `round`, if it ends before `until`, the bound of any retry
    /// of the batch). `false`: no node to go to, or no more waiting.
    async fn move_to(&mut self, redirect: Redirect, round: u32, until: Instant) -> bool {
        let cluster = self.place.cluster.clone();
        let bound = self.place.connect_timeout;
        let seen = cluster.topology().map_or(0, |t| t.generation);
        let resp3 = self.place.resp3;
        let pool: Option<Pool> = match &redirect {
            Redirect::Moved(addr) => {
                let _ = tokio::time::timeout(bound, cluster.refresh(seen)).await;
                self.asking = false;
                cluster.pool_at(addr, resp3)
            }
            Redirect::Ask(addr) => {
                self.asking = true;
                cluster.pool_at(addr, resp3)
            }
            Redirect::Again => {
                let pause = cluster.again_pause(round);
                if Instant::now() + pause >= until {
                    return false;
                }
                tokio::time::sleep(pause).await;
                let _ = tokio::time::timeout(bound, cluster.refresh(seen)).await;
                self.asking = false;
                cluster.pool(self.place.slot, 0, resp3)
            }
        };
        let Some(pool) = pool else {
            return false;
        };
        let counter = match redirect {
            Redirect::Ask(_) => &cluster.counters().asked,
            Redirect::Moved(_) => &cluster.counters().moved,
            Redirect::Again => &cluster.counters().again,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let node = pool.address();
        let conn = Dedicated::start(pool, self.place.label.clone(), self.place.command_timeout);
        if self.reselect {
            conn.reselect_on_release();
        }
        *self.at.lock().unwrap_or_else(|e| e.into_inner()) = Located {
            id: conn.upstream_id(),
            node,
        };
        // The old one resets itself (DISCARD, UNWATCH) and goes back to its pool,
        // with its WATCH.
        self.conn = Some(conn);
        self.watched = false;
        true
    }

    /// The bytes to send: `journal` then the requests `which` of `reqs`, with
    /// `ASKING` where the connection needs it and `DISCARD` for a `doom`ed
    /// EXEC; and how many replies they get.
    fn encode(
        &self,
        journal: &[Bytes],
        reqs: &[Req],
        which: &[usize],
        in_multi: bool,
        doom: &[bool],
    ) -> (Bytes, u32) {
        let mut out = BytesMut::new();
        let mut n = 0;
        let mut in_multi = in_multi;
        let all = journal
            .iter()
            .enumerate()
            .map(|(i, b)| (b, if i == 0 { TxOp::Multi } else { TxOp::None }, false))
            .chain(
                which
                    .iter()
                    .map(|&i| (&reqs[i].bytes, reqs[i].op, reqs[i].exec && doom[i])),
            );
        for (bytes, op, doomed_exec) in all {
            if self.asking && !in_multi {
                out.extend_from_slice(ASKING);
                n += 1;
            }
            let bytes = if doomed_exec && in_multi {
                &DISCARD
            } else {
                bytes
            };
            in_multi = op.in_multi_after(in_multi);
            out.extend_from_slice(bytes);
            n += 1;
        }
        (out.freeze(), n)
    }

    /// The replies to what [`Task::encode`] sent, without those to `ASKING`.
    fn unask(&self, journal: &[Bytes], reqs: &[Req], which: &[usize], bytes: &Bytes) -> Vec<Bytes> {
        let all = frames(bytes);
        if !self.asking {
            return all;
        }
        let mut out = Vec::new();
        let mut it = all.into_iter();
        let mut in_multi = false;
        let ops = journal
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { TxOp::Multi } else { TxOp::None })
            .chain(which.iter().map(|&i| reqs[i].op));
        for op in ops {
            if !in_multi {
                // ASKING's +OK.
                let _ = it.next();
            }
            in_multi = op.in_multi_after(in_multi);
            if let Some(f) = it.next() {
                out.push(f);
            }
        }
        out
    }

    /// Notes what the batch left on the connection: the open transaction, a WATCH.
    fn after(&mut self, reqs: &[Req], got: &[Bytes]) {
        for (r, f) in reqs.iter().zip(got) {
            if r.op.ends_watch(self.journal.is_some()) {
                self.watched = false;
            }
            match (&mut self.journal, r.op) {
                (None, TxOp::Multi) => self.journal = Some(vec![r.bytes.clone()]),
                (None, TxOp::Watch) if f.starts_with(b"+") => self.watched = true,
                (None, _) => {}
                (Some(_), op) if !op.in_multi_after(true) => self.journal = None,
                (Some(j), _) => j.push(r.bytes.clone()),
            }
        }
    }
}

/// Replaces the replies (`DISCARD`'s) of the `doom`ed EXECs among the
/// requests `which` (answered by `frames`, one each; `in_multi`: the first
/// is inside a transaction) with what Redis answers an EXEC whose watched
/// key changed: a null, or `-EXECABORT` if a command of the transaction was
/// refused when queued.
fn answer_execs(
    resp3: bool,
    reqs: &[Req],
    which: &[usize],
    frames: &mut [Bytes],
    doom: &[bool],
    mut in_multi: bool,
) {
    let mut refused = false;
    for (&i, f) in which.iter().zip(frames.iter_mut()) {
        let r = &reqs[i];
        if r.exec && doom[i] && in_multi {
            *f = Bytes::from_static(match (refused, resp3) {
                (true, _) => EXECABORT,
                (false, true) => b"_\r\n",
                (false, false) => b"*-1\r\n",
            });
        } else if in_multi && r.op == TxOp::None {
            refused |= f.starts_with(b"-");
        }
        in_multi = r.op.in_multi_after(in_multi);
        if r.op == TxOp::Multi {
            refused = false;
        }
    }
}

/// What a doomed EXEC is sent as.
static DISCARD: Bytes = Bytes::from_static(b"*1\r\n$7\r\nDISCARD\r\n");
/// Redis's reply to EXEC after a command of the transaction was refused.
const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";

/// Which requests of a batch run without the WATCH they were sent under: from
/// `from` to the first that ends the watch ([`TxOp::ends_watch`]: an EXEC or
/// DISCARD without MULTI does not), included; and whether the watch is still
/// lost after the batch (a request from `from` on, none after it ending the
/// watch). `in_multi`: the batch starts inside MULTI.
fn doomed(reqs: &[Req], from: Option<usize>, mut in_multi: bool) -> (Vec<bool>, bool) {
    let mut out = vec![false; reqs.len()];
    let Some(from) = from else {
        return (out, false);
    };
    for (i, r) in reqs.iter().enumerate() {
        let ends = r.op.ends_watch(in_multi);
        in_multi = r.op.in_multi_after(in_multi);
        if i >= from {
            out[i] = true;
            if ends {
                return (out, false);
            }
        }
    }
    (out, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::request;

    fn batch(cmds: &[&[&[u8]]]) -> Bytes {
        let mut out = Vec::new();
        for c in cmds {
            request::encode_command(c, &mut out);
        }
        Bytes::from(out)
    }

    #[test]
    fn a_batch_is_cut_into_commands_and_transactions() {
        let b = batch(&[
            &[b"WATCH", b"k"],
            &[b"GET", b"k"],
            &[b"MULTI"],
            &[b"SET", b"k", b"1"],
            &[b"EXEC"],
            &[b"MULTI"],
            &[b"INCR", b"k"],
        ]);
        let reqs = requests(&b);
        assert_eq!(reqs.len(), 7);
        let u = units(&reqs, false);
        let shape: Vec<_> = u
            .iter()
            .map(|u| (u.reqs.clone(), u.journal, u.open))
            .collect();
        assert_eq!(
            shape,
            [
                (0..1, false, false),
                (1..2, false, false),
                (2..5, false, false),
                (5..7, false, true)
            ]
        );
        // Inside a transaction opened by an earlier batch.
        let b = batch(&[&[b"SET", b"k", b"1"], &[b"EXEC"], &[b"GET", b"k"]]);
        let reqs = requests(&b);
        let shape: Vec<_> = units(&reqs, true)
            .iter()
            .map(|u| (u.reqs.clone(), u.journal, u.open))
            .collect();
        assert_eq!(shape, [(0..2, true, false), (2..3, false, false)]);
    }

    #[test]
    fn a_doomed_exec_is_answered_as_after_a_conflict() {
        let b = batch(&[
            &[b"GET", b"k"],
            &[b"MULTI"],
            &[b"INCR", b"k"],
            &[b"EXEC"],
            &[b"MULTI"],
            &[b"INCR", b"k"],
            &[b"EXEC"],
        ]);
        let reqs = requests(&b);
        // From the GET to the first EXEC.
        let (doom, still) = doomed(&reqs, Some(0), false);
        assert_eq!(doom, [true, true, true, true, false, false, false]);
        assert!(!still);
        let all: Vec<usize> = (0..reqs.len()).collect();
        let reply = |r: &'static [u8]| Bytes::from_static(r);
        let discarded = [
            reply(b"$-1\r\n"),
            reply(b"+OK\r\n"),
            reply(b"+QUEUED\r\n"),
            reply(b"+OK\r\n"),
            reply(b"+OK\r\n"),
            reply(b"+QUEUED\r\n"),
            reply(b"*1\r\n:1\r\n"),
        ];
        for (resp3, null) in [(false, &b"*-1\r\n"[..]), (true, b"_\r\n")] {
            let mut got = discarded.clone();
            answer_execs(resp3, &reqs, &all, &mut got, &doom, false);
            assert_eq!(got[3].as_ref(), null);
            // The second transaction ran: its EXEC's reply is Redis's.
            assert_eq!(got[6].as_ref(), b"*1\r\n:1\r\n");
        }
        // A command refused when queued: -EXECABORT, as Redis says.
        let mut got = discarded.clone();
        got[2] = reply(b"-ERR wrong number of arguments\r\n");
        answer_execs(false, &reqs, &all, &mut got, &doom, false);
        assert_eq!(got[3].as_ref(), EXECABORT);
        // UNWATCH ends it; EXEC without MULTI neither ends it (Redis refuses it
        // and the keys stay watched) nor is one to answer.
        let b = batch(&[&[b"EXEC"], &[b"UNWATCH"], &[b"MULTI"], &[b"EXEC"]]);
        let reqs = requests(&b);
        assert_eq!(
            doomed(&reqs, Some(1), false),
            (vec![false, true, false, false], false)
        );
        let (doom, _) = doomed(&reqs, Some(0), false);
        assert_eq!(doom, [true, true, false, false]);
        let mut got = vec![reply(b"-ERR EXEC without MULTI\r\n"); 1];
        answer_execs(false, &reqs, &[0], &mut got, &doom, false);
        assert_eq!(got[0].as_ref(), b"-ERR EXEC without MULTI\r\n");
        // Nor do DISCARD without MULTI, UNWATCH inside it, or the refused
        // (wrong arity) DISCARD or UNWATCH: the watch is still lost after them.
        let b = batch(&[
            &[b"DISCARD"],
            &[b"UNWATCH", b"x"],
            &[b"MULTI"],
            &[b"UNWATCH"],
            &[b"DISCARD", b"x"],
            &[b"INCR", b"k"],
        ]);
        let reqs = requests(&b);
        assert_eq!(doomed(&reqs, Some(0), false), (vec![true; 6], true));
        // (The same inside a MULTI of an earlier batch.) Its EXEC does …
        assert_eq!(doomed(&reqs[4..], Some(0), true), (vec![true, true], true));
        let b = batch(&[&[b"EXEC"], &[b"GET", b"k"]]);
        let reqs = requests(&b);
        assert_eq!(doomed(&reqs, Some(0), true), (vec![true, false], false));
        // … and so does an EXEC refused for its arity, in MULTI or not.
        let b = batch(&[&[b"EXEC", b"x"], &[b"GET", b"k"]]);
        let reqs = requests(&b);
        assert_eq!(reqs[0].op, TxOp::Abort);
        assert!(!reqs[0].exec);
        for in_multi in [false, true] {
            assert_eq!(doomed(&reqs, Some(0), in_multi), (vec![true, false], false));
        }
    }

    #[test]
    fn a_refused_discard_leaves_the_transaction_open_and_exec_x_ends_it() {
        let b = batch(&[
            &[b"MULTI"],
            &[b"DISCARD", b"x"],
            &[b"SET", b"k", b"1"],
            &[b"EXEC"],
            &[b"MULTI"],
            &[b"EXEC", b"x"],
            &[b"GET", b"k"],
        ]);
        let reqs = requests(&b);
        let shape: Vec<_> = units(&reqs, false)
            .iter()
            .map(|u| (u.reqs.clone(), u.journal, u.open))
            .collect();
        assert_eq!(
            shape,
            [
                (0..4, false, false),
                (4..6, false, false),
                (6..7, false, false)
            ]
        );
    }

    #[test]
    fn replies_are_split_with_pushes_kept_in_front() {
        let b = Bytes::from_static(b"+OK\r\n>2\r\n$1\r\na\r\n$1\r\nb\r\n:1\r\n*1\r\n$1\r\nx\r\n");
        let f = frames(&b);
        assert_eq!(f.len(), 3);
        assert_eq!(f[1].as_ref(), b">2\r\n$1\r\na\r\n$1\r\nb\r\n:1\r\n");
    }
}
