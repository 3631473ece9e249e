//! One client connection: read requests, send them on, write replies back in order.
//!
//! The session reads whatever the client sent, parses every complete request in the
//! buffer and classifies it once. A run of consecutive stateless requests for the
//! same database is forwarded as one batch — a slice of the read buffer, not a copy
//! — to the database's shared upstream connection. Requests the proxy answers
//! itself (SELECT, AUTH, HELLO, CLIENT …, PROXY …) end the run. Every request gets
//! a place in a FIFO queue of pending replies, which is written to the client
//! strictly in order, so a pipeline is answered in order even when its commands
//! went to different upstreams.
//!
//! **The ordering guarantee.** The commands of one client run upstream in the
//! order the client sent them: on one connection because Redis runs a
//! connection's commands in order and retries are made by the shared slot in
//! place (`upstream::mux`); across connections because a request for a different
//! connection than the previous one waits until every earlier reply has arrived
//! (`dispatch`). The only exceptions are the commands Redis itself runs while
//! busy (SCRIPT KILL, FUNCTION KILL, SHUTDOWN), which go out of band at once.
//!
//! Reading, writing replies and shutdown are raced with `select!` in one task.
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | the task: read, write, shutdown, the client table entry |
//! | `mode.rs` | the connection mode (shared, exclusive, private, subscribed) and its transitions |
//! | `dispatch.rs` | parsing, classification, runs of requests, where each request goes |
//! | `queue.rs` | the FIFO of replies, settling upstream answers, error texts, the outbox |
//! | `memory.rs` | backpressure, output buffer limits, the client's memory |
//! | `exclusive.rs` | MULTI/WATCH on a held connection, `auth_passthrough` login |
//! | `follow.rs` | cluster: an exclusive connection follows `-MOVED`/`-ASK` of its slot |
//! | `pubsub.rs` | subscribed sessions: streaming, counts, the barrier |
//! | `tracking.rs` | `CLIENT TRACKING`: the tracking connection, pushes, REDIRECT |
//! | `stand_in.rs` | the connection a REDIRECT names, kept while the session lives |
//! | `local.rs` | commands the proxy answers itself |
//! | `reload.rs` | moving to the configuration a reload published |

mod dispatch;
mod exclusive;
mod follow;
mod local;
mod memory;
mod mode;
mod prefix;
mod pubsub;
mod queue;
mod reload;
mod stand_in;
mod tracking;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::task::Poll;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::clients::{Names, Registration};
use crate::context::{Context, Live};
use crate::protocol::request;
use crate::router::Database;
use crate::stats;
use crate::transport::Stream;

use dispatch::encode;
use exclusive::Login;
use mode::{Conn, Mode};
use queue::{Outbox, Pending};

/// What happened at the front of the reply queue.
enum Front {
    Answer(Option<crate::upstream::mux::Answer>),
    Part(Option<crate::upstream::mux::BatchReply>),
    /// A reply the proxy produced later (`PROXY CHECK`).
    Local(bytes::Bytes),
    Nothing,
}

/// What happened on the client's socket.
enum Io {
    Wrote(std::io::Result<usize>),
    Flushed(std::io::Result<()>),
    Read(std::io::Result<usize>),
}

/// Most queue entries a session may have before it stops reading (backpressure).
const MAX_QUEUE: usize = 1024;
/// Queue room an empty queue keeps while the session is active (a pipeline of
/// this many requests, a few KiB): a client sending one request at a time does
/// not allocate a queue per request. A larger queue is let go once empty, and an
/// idle session lets go of it all when it parks or declines to (a sweep).
const QUEUE_KEEP: usize = 16;
/// Bytes of replies a session may have in flight upstream (at most
/// `limits.client_reply_buffer`): requests are sent while the expected size of
/// their replies fits. Small, so that Redis's own output buffer for a shared
/// connection stays small (its `client-output-buffer-limit normal` applies to it).
const IN_FLIGHT_BYTES: usize = 512 * 1024;
/// Most requests a session may have in flight upstream, however small the replies.
const MAX_IN_FLIGHT: usize = 64 * 1024;
/// What a reply is expected to weigh before one arrived: for a batch of reads
/// (values of any size), and for one with a write (mostly small replies).
const FIRST_ESTIMATE: [usize; 2] = [64 * 1024, 256];
/// A read buffer that held more than this is replaced once it is (nearly) empty,
/// so a client that once sent a large value does not keep its buffer.
const READ_BUFFER_KEEP: usize = 64 * 1024;
/// The most bytes read at once into an empty read buffer (on the stack), and the
/// room made before reading on after a partial request.
const READ_BUFFER: usize = 16 * 1024;
/// A session's memory is published to the client table when it changed this much.
const MEMORY_STEP: usize = 32 * 1024;
/// Bytes read ahead, without executing them, while requests are held back.
const HELD_BACK_READ_LIMIT: usize = 1 << 20;

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
    /// AUTH attempts the proxy refused on this connection.
    pub auth_failures: u32,
    /// `PROXY AUTH` succeeded: the session may change the proxy.
    pub admin: bool,
}

/// Serves one client until it disconnects, sends a malformed request, or the proxy
/// shuts down (then pending replies are still delivered).
///
/// **Parking.** An idle client on plain TCP costs only what `Parked` holds: the
/// task waits for the socket to become readable (or a signal, or its close
/// deadline) in its small form, and the session, its state machine and its span
/// are built when bytes arrive. A session goes back to that form when the client
/// table's sweep finds it idle for 100–200 ms ([`crate::clients::Clients::sweep`])
/// and it holds nothing: no reply pending or buffered, no partial request, the
/// shared mode, no `CLIENT TRACKING`, no `auth_passthrough` login, replies on.
/// A TLS session never parks (rustls may hold decrypted bytes the socket no
/// longer signals).
///
/// The task's future is a hand-written state machine (`Task`) so that an idle
/// client's task is only the stream and `Parked`: what runs is boxed, and the
/// caller's count of connected clients is decremented here.
pub fn run(stream: Stream, ctx: Arc<Context>, id: u64) -> impl Future<Output = ()> + Send {
    // (Registered before the task starts; the task's future holds only the stream
    // and this, not the arguments as well.)
    Task(match Parked::new(&stream, ctx, id) {
        Some(parked) => Step::Parked { stream, parked },
        None => Step::Done,
    })
}

/// A client's task (see [`run`]).
struct Task(Step);

/// What a client's task is doing.
enum Step {
    /// Waiting for the client, parked.
    Parked {
        stream: Stream,
        parked: Parked,
    },
    /// The session runs (it gives the stream back when it may park), or the
    /// connection is being closed; boxed: it exists only meanwhile.
    Running(Running),
    Done,
}

/// The running session: the stream and the parked form back when it may park,
/// `None` when the client is gone.
type Running = std::pin::Pin<Box<dyn Future<Output = Option<(Stream, Parked)>> + Send>>;

impl Future for Task {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let step = &mut self.get_mut().0;
        loop {
            match step {
                Step::Parked { stream, parked } => {
                    let wake = match stream {
                        Stream::Tls(_) => Wake::Serve,
                        _ => std::task::ready!(parked.poll_wait(stream, cx)),
                    };
                    if let Wake::Reload = wake {
                        // (Moved in place: a reload does not wake every idle session up.)
                        parked.live = parked.ctx.live();
                        parked.db = reload::moved(&parked.live, &parked.db, parked.client.id);
                        continue;
                    }
                    let Step::Parked { mut stream, parked } = std::mem::replace(step, Step::Done)
                    else {
                        unreachable!("matched above")
                    };
                    *step = match wake {
                        Wake::Close(why) => {
                            if let Some(why) = why {
                                tracing::info!(session = parked.client.id, peer = %parked.client.addr(), "closing client: {why}");
                            }
                            stats::sub(&parked.ctx.stats.connected_clients, 1);
                            drop(parked);
                            Step::Running(Box::pin(async move {
                                let _ = stream.shutdown().await;
                                None
                            }))
                        }
                        _ => Step::Running(Box::pin(active(parked, stream))),
                    };
                }
                Step::Running(running) => {
                    *step = match std::task::ready!(running.as_mut().poll(cx)) {
                        Some((stream, parked)) => Step::Parked { stream, parked },
                        None => Step::Done,
                    }
                }
                Step::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Runs the session until it ends (`None`) or may park.
async fn active(parked: Parked, mut stream: Stream) -> Option<(Stream, Parked)> {
    let mut session = Session::unpark(parked);
    let id = session.state.id;
    // Log lines of the session's task carry its id, database and that database's
    // upstream as fields (the span is entered per poll of the task, not per
    // command; pool checkouts and private connections log inside it).
    let span = tracing::error_span!(
        "session",
        session = id,
        db = %session.state.db.config.name(),
        upstream = %session.state.db.config.upstream.address(),
        peer = %session.state.peer
    );
    let served = tracing::Instrument::instrument(session.serve(&mut stream), span).await;
    match served {
        Ok(true) => return Some((stream, session.park())),
        Ok(false) => {
            stats::sub(&session.ctx.stats.connected_clients, 1);
            drop(session);
            let _ = stream.shutdown().await;
        }
        Err(e) => {
            stats::sub(&session.ctx.stats.connected_clients, 1);
            tracing::debug!(session = id, error = %e, "client connection ended");
        }
    }
    None
}

/// What an idle session keeps while parked (see [`run`]): its entry in the client
/// table (which also keeps the names it set), its snapshot and database, and the
/// few settings a client may have changed.
struct Parked {
    ctx: Arc<Context>,
    live: Arc<Live>,
    client: Registration,
    db: Arc<Database>,
    /// The close deadline of the wait under way (boxed: most clients have none).
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// A wait is under way (`client` says parked, `sleep` is set).
    waiting: bool,
    authenticated: bool,
    resp3: bool,
    admin: bool,
    auth_failures: u32,
    /// (Narrowed from the session's: the parked form is kept small.)
    estimate: [u32; 2],
    checkouts: u64,
    connected_at: Instant,
    last_read: Instant,
}

impl Parked {
    /// A new client's session, parked (it registers in the client table); `None`
    /// (the connection is closed) if there is no database to serve.
    fn new(stream: &Stream, ctx: Arc<Context>, id: u64) -> Option<Parked> {
        let live = ctx.live();
        let Some(db) = live.router.default_database().cloned() else {
            stats::sub(&ctx.stats.connected_clients, 1);
            return None;
        };
        let _ = stream.set_nodelay(true);
        if let Some(tcp) = stream.tcp() {
            crate::upstream::connect::keepalive(tcp);
        }
        let client = ctx.clients.register(
            id,
            stream.peer_addr().ok(),
            stream.local_addr().ok(),
            stream.socket_path(),
        );
        client.info().db = db.config.index;
        let now = Instant::now();
        Some(Parked {
            authenticated: live.config.client_password.is_none(),
            ctx,
            live,
            client,
            db,
            sleep: None,
            waiting: false,
            resp3: false,
            admin: false,
            auth_failures: 0,
            checkouts: 0,
            estimate: FIRST_ESTIMATE.map(narrow),
            connected_at: now,
            last_read: now,
        })
    }

    /// Waits until the client sent something (or closed, or an error is pending:
    /// the session reads it), a reload asks the session to move, or the client is
    /// to be closed: killed, the proxy shutting down (nothing is pending), or
    /// silent past its close deadline.
    fn poll_wait(&mut self, stream: &Stream, cx: &mut std::task::Context<'_>) -> Poll<Wake> {
        if !self.waiting {
            let deadline = close_deadline(
                &self.live.config,
                self.authenticated,
                true,
                self.connected_at,
                self.last_read,
            );
            self.sleep = deadline.map(|at| Box::pin(tokio::time::sleep_until(at)));
            self.client.set_parked(true);
            self.waiting = true;
        }
        let woke = std::task::ready!(self.poll_woken(stream, cx));
        self.waiting = false;
        self.sleep = None;
        self.client.set_parked(false);
        Poll::Ready(woke)
    }

    fn poll_woken(&mut self, stream: &Stream, cx: &mut std::task::Context<'_>) -> Poll<Wake> {
        use crate::clients::signal::{KILLED, PUSHES, RELOAD, SHUTDOWN, SWEEP};
        loop {
            match self
                .client
                .poll_signal(cx, KILLED | SHUTDOWN | RELOAD | SWEEP | PUSHES)
            {
                Poll::Ready(s) if s & (KILLED | SHUTDOWN) != 0 => {
                    return Poll::Ready(Wake::Close(None))
                }
                Poll::Ready(s) if s & RELOAD != 0 => return Poll::Ready(Wake::Reload),
                // A push connection to read: the session runs (and takes it).
                Poll::Ready(s) if s & PUSHES != 0 => return Poll::Ready(Wake::Serve),
                // (A sweep raised just before the session parked.)
                Poll::Ready(_) => continue,
                Poll::Pending => break,
            }
        }
        if let Some(s) = self.sleep.as_mut() {
            if s.as_mut().poll(cx).is_ready() {
                let why = if self.authenticated {
                    IDLE_TIMEOUT
                } else {
                    AUTH_TIMEOUT
                };
                return Poll::Ready(Wake::Close(Some(why)));
            }
        }
        stream.poll_read_ready(cx).map(|_| Wake::Serve)
    }
}

/// A reply-size estimate as the parked form keeps it.
fn narrow(estimate: usize) -> u32 {
    u32::try_from(estimate).unwrap_or(u32::MAX)
}

/// What ended a parked session's wait.
enum Wake {
    /// Bytes (or the end, or an error) to read: the session runs.
    Serve,
    /// A reload published a new snapshot.
    Reload,
    /// Close the client (with why, for the log).
    Close(Option<&'static str>),
}

/// Why a silent client is closed.
const IDLE_TIMEOUT: &str = "idle longer than client_idle_timeout";
const AUTH_TIMEOUT: &str = "not authenticated within auth_timeout";

struct Session {
    ctx: Arc<Context>,
    /// The configuration snapshot the session uses (see `refresh`).
    live: Arc<Live>,
    state: State,
    queue: VecDeque<Pending>,
    /// Replies taken off the queue, waiting to be written.
    outbox: Outbox,
    /// Requests sent upstream whose replies have not arrived.
    inflight: usize,
    /// The bytes their replies are expected to weigh.
    in_flight_bytes: usize,
    /// Bytes a reply is expected to weigh, in a batch of reads and in one with a
    /// write (learnt from the last replies).
    estimate: [usize; 2],
    /// Dispatch stopped with requests left in the read buffer: too many in flight.
    throttled: bool,
    /// The memory last published to the client table.
    published_memory: usize,
    /// Since when the outbox is past the soft output buffer limit.
    soft_since: Option<Instant>,
    /// The request parser, which keeps its place in a partial request.
    parser: request::Parser,
    /// The arguments of the request being parsed (ranges into the read buffer).
    args: Vec<Range<usize>>,
    /// No more bytes are read from the client (EOF or shutdown); what is buffered
    /// is still executed.
    read_closed: bool,
    /// Stop executing requests (protocol error, QUIT); the session ends when the
    /// queue is empty.
    closing: bool,
    /// A `Close` entry was reached: stop now.
    done: bool,
    /// The next request waits until every reply before it has arrived (it goes to
    /// another connection than the previous one, or behind a barrier).
    stalled: bool,
    /// Which upstream connection requests go to.
    mode: Mode,
    /// The connection of the last request forwarded.
    last: Conn,
    /// Requests for the shared connection go to the database's detour slot: the
    /// session's own is held up by another client's long script or paused write
    /// (decided at the start of each dispatch; see `Database::detour`).
    detour: bool,
    /// Exclusive and private connections held so far (they are named by number).
    checkouts: u64,
    /// CLIENT REPLY OFF is in force.
    reply_off: bool,
    /// CLIENT REPLY SKIP: the next command gets no reply.
    skip_next: bool,
    /// This session's entry in the client table (CLIENT LIST/KILL).
    client: Registration,
    /// An EXEC that may switch the database is in flight: later requests wait.
    awaiting_exec: bool,
    /// An AUTH queued inside MULTI failed when EXEC ran it: the growing pause
    /// after a failed AUTH comes before the next request.
    auth_pause_due: bool,
    /// `auth_passthrough`: the credentials the client logged in to Redis with.
    login: Option<Login>,
    /// `CLIENT TRACKING` is on (on the session's own connection).
    tracking: Option<tracking::Tracking>,
    /// A connection opened for this RESP3 session as another client's tracking
    /// redirect target: what Redis pushes on it is written to the client
    /// (`crate::clients`, `Clients::push_sink_id`).
    push_conn: Option<Box<stand_in::StandIn>>,
    /// The tracking connection `CLIENT TRACKING OFF` let go of, kept for the next
    /// `CLIENT TRACKING ON` (`stand_in::Dormant`).
    dormant: Option<Box<stand_in::Dormant>>,
    /// A cluster database's MULTI was answered `+OK` and waits for the first
    /// request with a key to pick the node (`dispatch::deferred_step`).
    deferred_multi: bool,
    /// A `RESET` or `QUIT` waits for the reply of a `PING` sent on the
    /// session's own RESP3 connection (`dispatch`'s `local`): the pushes Redis
    /// sent before it are written first, as Redis writes them before its reply.
    end_barrier: bool,
    /// A `BCAST` client's invalidations of keys that Redis sent after a batch of
    /// a read whose later requests wait (`stalled`): Redis sends them once it has
    /// run every command of the read, so they follow its last reply
    /// (`tracking::Session::hold_bcast`).
    bcast_held: Vec<bytes::Bytes>,
    /// A request was refused while `deferred_multi` (`deny_commands`, cluster
    /// commands): EXEC answers `-EXECABORT`, as Redis after a refusal at queueing.
    deferred_dirty: bool,
    /// The held connection of a transaction under way was lost: the proxy
    /// answers the rest of the transaction (`exclusive::Lost`).
    lost: Option<exclusive::Lost>,
    /// When the client connected (for `auth_timeout`).
    connected_at: Instant,
    /// When the client last sent something (for `client_idle_timeout`).
    last_read: Instant,
}

impl Session {
    /// The running session, from what it kept while parked.
    fn unpark(p: Parked) -> Box<Session> {
        let names = p.client.info().names.as_deref().cloned();
        let (name, lib_name, lib_ver, user) = match names {
            Some(n) => (n.name, n.lib_name, n.lib_ver, n.user),
            None => (None, None, None, None),
        };
        Box::new(Session {
            state: State {
                id: p.client.id,
                db: p.db,
                authenticated: p.authenticated,
                name,
                lib_name,
                lib_ver,
                resp3: p.resp3,
                peer: p.client.addr(),
                user,
                auth_failures: p.auth_failures,
                admin: p.admin,
            },
            ctx: p.ctx,
            live: p.live,
            queue: VecDeque::new(),
            outbox: Outbox::default(),
            inflight: 0,
            in_flight_bytes: 0,
            estimate: p.estimate.map(|e| e as usize),
            throttled: false,
            published_memory: 0,
            soft_since: None,
            parser: request::Parser::new(),
            args: Vec::new(),
            read_closed: false,
            closing: false,
            done: false,
            stalled: false,
            mode: Mode::Shared,
            last: Conn::None,
            detour: false,
            checkouts: p.checkouts,
            reply_off: false,
            skip_next: false,
            client: p.client,
            awaiting_exec: false,
            auth_pause_due: false,
            login: None,
            tracking: None,
            push_conn: None,
            dormant: None,
            deferred_multi: false,
            end_barrier: false,
            bcast_held: Vec::new(),
            deferred_dirty: false,
            lost: None,
            connected_at: p.connected_at,
            last_read: p.last_read,
        })
    }

    /// What the session keeps while parked (it may park: [`Session::parkable`]).
    fn park(self: Box<Self>) -> Parked {
        // Its names stay in the client table's entry only (restored from there).
        self.publish();
        let s = *self;
        if s.published_memory != 0 {
            s.client.set_memory(0);
        }
        let st = s.state;
        Parked {
            ctx: s.ctx,
            live: s.live,
            client: s.client,
            db: st.db,
            authenticated: st.authenticated,
            resp3: st.resp3,
            admin: st.admin,
            auth_failures: st.auth_failures,
            checkouts: s.checkouts,
            estimate: s.estimate.map(narrow),
            sleep: None,
            waiting: false,
            connected_at: s.connected_at,
            last_read: s.last_read,
        }
    }

    /// Whether the session may park now (nothing held, nothing pending): `Ok`; or
    /// `Err(true)` when only a request can change that (TLS, a mode other than
    /// shared, tracking, …), `Err(false)` when it may pass by itself (replies
    /// pending).
    fn parkable(&self, tls: bool, busy: bool) -> Result<(), bool> {
        if tls
            || self.closing
            || !matches!(self.mode, Mode::Shared)
            || self.tracking.is_some()
            || self.push_conn.is_some()
            || self.dormant.is_some()
            || self.login.is_some()
            || self.reply_off
            || self.skip_next
            || self.deferred_multi
            || self.lost.is_some()
            || self.state.db.is_removed()
        {
            return Err(true);
        }
        let idle = !busy
            && self.queue.is_empty()
            && self.outbox.is_empty()
            && self.inflight == 0
            && !self.stalled
            && !self.throttled
            && !self.read_closed
            && !self.done
            && !self.awaiting_exec
            && !self.parser.in_progress()
            && !self.stale();
        if idle {
            Ok(())
        } else {
            Err(false)
        }
    }

    /// Serves the client until it leaves (`Ok(false)`) or the session may park
    /// (`Ok(true)`, when the sweep asks an idle session that holds nothing).
    async fn serve(&mut self, stream: &mut Stream) -> std::io::Result<bool> {
        use crate::clients::signal::{KILLED, PUSHES, RELOAD, SHUTDOWN, SWEEP};
        // (A push connection handed over while the session was parked.)
        self.take_push_conn();
        // Allocated when bytes arrive, freed once they are all dispatched: an idle
        // client holds no read buffer (see `poll_read_into`).
        let mut inbuf = BytesMut::new();
        let tls = matches!(stream, Stream::Tls(_));
        // Bytes were written to a TLS stream and not flushed yet.
        let mut unflushed = false;
        // Bytes were read but not parsed yet (they arrived while held back).
        let mut unparsed = false;
        loop {
            if self.stale() && self.queue.is_empty() && !self.stalled {
                self.refresh();
            }
            self.take_ready();
            if self.queue.is_empty() && self.queue.capacity() > QUEUE_KEEP {
                // Nothing pending: the room of a long pipeline is let go.
                self.queue = VecDeque::new();
            }
            self.account(&inbuf);
            self.client.set_queue(self.queue.len(), self.outbox.len());
            if self.done {
                break;
            }
            if self.stalled && self.queue.is_empty() && !self.barrier_pending() {
                self.stalled = false;
                unparsed = false;
                self.dispatch_read(&mut inbuf).await;
                continue;
            }
            let over = self.over_budget();
            if (unparsed || self.throttled)
                && !self.stalled
                && !over
                && self.queue.len() < MAX_QUEUE
            {
                // Bytes read while requests were held back.
                unparsed = false;
                self.throttled = false;
                self.dispatch_read(&mut inbuf).await;
                continue;
            }
            let finished = self.closing || (self.read_closed && !self.stalled);
            if self.done || (finished && self.queue.is_empty() && self.outbox.is_empty()) {
                break;
            }
            // Requests are executed only when nothing holds them back; but while a
            // command waits on an exclusive connection (a blocked BLPOP) the socket
            // is still read (buffered, up to a bound) so that a client that leaves is
            // noticed and its blocked connection discarded, as Redis frees a blocked
            // client that disconnects. Backpressure: a client whose replies pile up
            // (it does not read them) has its requests read ahead, not executed, up
            // to `client_read_ahead` (a client that writes its whole pipeline before
            // reading is not left waiting on itself), then is not read from until it
            // catches up.
            let pressed = self.queue.len() >= MAX_QUEUE || over;
            let held_back = self.stalled || pressed;
            let can_read = !self.read_closed
                && !self.closing
                && (!held_back || inbuf.len() < self.read_ahead(pressed));
            if can_read && !inbuf.is_empty() && inbuf.capacity() - inbuf.len() < 4096 {
                inbuf.reserve(READ_BUFFER);
            }
            let deadline = self.close_deadline();
            let soft_deadline = self.soft_deadline();
            let queue = &mut self.queue;
            // (A `Close` at the front waits for the outbox to drain.)
            let awaits_front = matches!(
                queue.front(),
                Some(Pending::Upstream(_) | Pending::Parts { .. } | Pending::Later(_))
            );
            let outbox = &self.outbox;
            let want_write = !outbox.is_empty();
            // TLS may keep the last bytes written in its buffer until flushed
            // (plain TCP never sets `unflushed`: its flush does nothing).
            let want_flush = unflushed && !want_write;
            // Pub/sub messages and pushes are taken only while the client keeps up;
            // beyond, they wait (counted) on their connection, whose own limit
            // (`pubsub_buffer_limit`) applies.
            let (sub, own) = match &mut self.mode {
                _ if over => (None, None),
                Mode::Subscribed(s) => (
                    Some(&mut s.sub),
                    s.parked.as_mut().map(|p| &mut p.held.conn),
                ),
                Mode::Private(p) => (None, Some(&mut p.held.conn)),
                _ => (None, None),
            };
            let has_sub = sub.is_some();
            let has_pushes = own.as_ref().is_some_and(|c| c.watches_pushes());
            let push_conn = self.push_conn.as_mut().filter(|_| !over);
            let has_push_conn = push_conn.is_some();
            // CLIENT KILL or an eviction close the client at once, even while
            // replies wait to be written to it; shutdown stops the reading (what is
            // pending is delivered); a sweep may park an idle session; a reload
            // wakes it to move to the new snapshot (at the top of the loop).
            let client = &self.client;
            let late = SWEEP | RELOAD | PUSHES | if self.read_closed { 0 } else { SHUTDOWN };
            tokio::select! {
                biased;
                ev = poll_fn(|cx| match queue.front_mut() {
                    Some(Pending::Upstream(sent)) => {
                        Pin::new(&mut sent.rx).poll(cx).map(|r| Front::Answer(r.ok()))
                    }
                    Some(Pending::Parts { rx, .. }) => rx.poll_recv(cx).map(Front::Part),
                    Some(Pending::Later(rx)) => Pin::new(rx).poll(cx).map(|r| {
                        Front::Local(r.unwrap_or_else(|_| bytes::Bytes::from_static(queue::NO_LOCAL_REPLY)))
                    }),
                    _ => Poll::Ready(Front::Nothing),
                }), if awaits_front => match ev {
                    Front::Answer(r) => self.settle_front(r),
                    Front::Part(p) => self.on_part(p),
                    Front::Local(b) => {
                        if let Some(front) = self.queue.front_mut() {
                            *front = Pending::Ready(b);
                        }
                    }
                    Front::Nothing => {}
                },
                _ = poll_fn(|cx| client.poll_signal(cx, KILLED)) => {
                    self.queue.clear();
                    self.done = true;
                }
                io = poll_fn(|cx| {
                    // Replies first; the client's next requests after.
                    if want_write {
                        if let Poll::Ready(r) = Pin::new(&mut *stream).poll_write(cx, outbox.front()) {
                            return Poll::Ready(Io::Wrote(r));
                        }
                    }
                    if want_flush {
                        if let Poll::Ready(r) = Pin::new(&mut *stream).poll_flush(cx) {
                            return Poll::Ready(Io::Flushed(r));
                        }
                    }
                    if can_read {
                        if let Poll::Ready(r) = poll_read_into(Pin::new(&mut *stream), cx, &mut inbuf) {
                            return Poll::Ready(Io::Read(r));
                        }
                    }
                    Poll::Pending
                }), if want_write || want_flush || can_read => match io {
                    Io::Wrote(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Io::Wrote(Ok(n)) => {
                        self.outbox.advance(n);
                        unflushed = tls;
                    }
                    Io::Flushed(Ok(())) => unflushed = false,
                    Io::Flushed(Err(e)) => return Err(e),
                    Io::Wrote(Err(e)) => return Err(e),
                    Io::Read(Ok(0)) if !self.waits_on_exclusive() => self.read_closed = true,
                    // A client that leaves while a command waits on an exclusive
                    // connection (a blocked BLPOP) is gone for good, as in Redis:
                    // drop its replies so the connection is discarded, not left
                    // blocked to take a later item.
                    Io::Read(Ok(0) | Err(_)) => {
                        self.queue.clear();
                        self.read_closed = true;
                        self.done = true;
                    }
                    Io::Read(Ok(_)) if held_back => {
                        self.last_read = Instant::now();
                        unparsed = true;
                    }
                    Io::Read(Ok(_)) => {
                        self.last_read = Instant::now();
                        self.dispatch_read(&mut inbuf).await;
                    }
                },
                f = async {
                    match sub {
                        Some(sub) => sub.next().await,
                        None => std::future::pending().await,
                    }
                }, if has_sub => self.on_pubsub(f).await,
                p = async {
                    match own {
                        Some(conn) => conn.next_push().await,
                        None => std::future::pending().await,
                    }
                }, if has_pushes => self.on_push(p),
                p = async {
                    match push_conn {
                        Some(conn) => conn.next_push().await,
                        None => std::future::pending().await,
                    }
                }, if has_push_conn => self.on_redirected_push(p),
                _ = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                }, if deadline.is_some() => {
                    let why = if self.state.authenticated { IDLE_TIMEOUT } else { AUTH_TIMEOUT };
                    tracing::info!(session = self.state.id, peer = %self.state.peer, "closing client: {why}");
                    self.queue.clear();
                    self.done = true;
                }
                // Still past the soft output buffer limit: `account` closes it.
                _ = async {
                    match soft_deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                }, if soft_deadline.is_some() => {}
                signals = poll_fn(|cx| client.poll_signal(cx, late)) => {
                    if signals & SHUTDOWN != 0 {
                        self.read_closed = true;
                    }
                    if signals & PUSHES != 0 {
                        self.take_push_conn();
                    }
                    if signals & SWEEP != 0 {
                        let busy = !inbuf.is_empty() || unparsed || unflushed;
                        if self.queue.is_empty() {
                            // Idle: it keeps no queue memory, parked or not.
                            self.queue = VecDeque::new();
                        }
                        match self.parkable(tls, busy) {
                            Ok(()) => return Ok(true),
                            // (A blocked command may wait long: not asked again
                            // every sweep.)
                            Err(lasting) if lasting || self.waits_on_exclusive() => {
                                self.client.decline_park()
                            }
                            Err(_) => {}
                        }
                    }
                }
            }
        }
        Ok(false)
    }

    /// Dispatches what the read buffer holds, then gives back its memory once all of
    /// it was dispatched, or that of a buffer that grew for a large request once
    /// little of it is left.
    async fn dispatch_read(&mut self, inbuf: &mut BytesMut) {
        crate::busy_poll::kick();
        let grown = inbuf.len() > READ_BUFFER_KEEP;
        // Boxed for the time of the call: the dispatch future is the largest state
        // of the session's task, which every idle client would otherwise carry.
        Box::pin(self.dispatch(inbuf)).await;
        if !self.stalled && !self.bcast_held.is_empty() {
            self.release_bcast();
        }
        if !self.stalled {
            self.sub_bcast_dispatched();
        }
        if inbuf.is_empty() {
            // (The bytes already taken off it live on in their batches.)
            *inbuf = BytesMut::new();
        } else if grown && inbuf.len() < READ_BUFFER {
            // The parser's positions are relative to the buffer's start: the few
            // bytes left keep theirs in the new buffer.
            let mut fresh = BytesMut::with_capacity(READ_BUFFER);
            fresh.extend_from_slice(inbuf);
            *inbuf = fresh;
            if inbuf.is_empty() && self.args.capacity() > 1024 {
                self.args = Vec::new();
            }
        }
    }

    /// When the client is closed for silence, if ever: `auth_timeout` after
    /// connecting while it has not authenticated (with `client_password` set), and
    /// `client_idle_timeout` after its last bytes while it is not subscribed and not
    /// waiting on a blocking command (as Redis's `timeout`).
    fn close_deadline(&self) -> Option<Instant> {
        close_deadline(
            &self.live.config,
            self.state.authenticated,
            !self.mode.in_pubsub() && !self.waits_on_exclusive(),
            self.connected_at,
            self.last_read,
        )
    }

    /// A barrier PING is on its way on the subscriber connection (a MONITOR
    /// connection: replies to earlier requests are).
    fn barrier_pending(&self) -> bool {
        matches!(&self.mode, Mode::Subscribed(s) if s.barrier.is_some()
            || s.tx.as_ref().is_some_and(|t| t.waits())
            || (s.monitor && s.home.awaiting()))
    }

    /// The session span's `db` and `upstream` fields follow the database in use.
    fn record_db_in_span(&self) {
        let span = tracing::Span::current();
        span.record("db", self.state.db.config.name());
        span.record("upstream", self.state.db.config.upstream.address());
    }

    /// The names the client set, if any.
    fn names(&self) -> Option<Names> {
        let st = &self.state;
        let named =
            st.name.is_some() || st.lib_name.is_some() || st.lib_ver.is_some() || st.user.is_some();
        named.then(|| Names {
            name: st.name.clone(),
            lib_name: st.lib_name.clone(),
            lib_ver: st.lib_ver.clone(),
            user: st.user.clone(),
        })
    }

    /// Copies what CLIENT LIST shows about this session to the client table.
    fn publish(&self) {
        let st = &self.state;
        let parts = (
            st.name.as_deref(),
            st.lib_name.as_deref(),
            st.lib_ver.as_deref(),
            st.user.as_deref(),
        );
        let mut info = self.client.info();
        // (Copied only when they changed: this runs for every command the proxy
        // answers itself, and most clients set a library name.)
        if info.names.as_deref().map(Names::parts).unwrap_or_default() != parts {
            info.names = self.names().map(Box::new);
        }
        if info.db != self.state.db.config.index {
            self.record_db_in_span();
        }
        info.db = self.state.db.config.index;
        info.resp = if self.state.resp3 { 3 } else { 2 };
        info.pubsub = self.mode.in_pubsub();
        info.multi = self.mode.in_multi() || self.multi_unheld();
        info.tracking = self.tracking_info();
        drop(info);
        self.client.set_own(self.own_conn());
    }
}

/// When a silent client is closed (see [`Session::close_deadline`]); `idle`:
/// `client_idle_timeout` applies in the session's mode.
fn close_deadline(
    cfg: &crate::config::Config,
    authenticated: bool,
    idle: bool,
    connected_at: Instant,
    last_read: Instant,
) -> Option<Instant> {
    let auth = (!authenticated && cfg.client_password.is_some() && !cfg.auth_timeout.is_zero())
        .then(|| connected_at + cfg.auth_timeout);
    let idle =
        (idle && !cfg.client_idle_timeout.is_zero()).then(|| last_read + cfg.client_idle_timeout);
    match (auth, idle) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Reads what the client sent into `inbuf`. An empty buffer holds no memory: the
/// bytes are read into [`READ_BUFFER`] bytes on the stack, then copied into a
/// buffer of exactly their size (which most often goes upstream whole, as the
/// batch). A partial request is read on in place, after it.
fn poll_read_into(
    stream: std::pin::Pin<&mut Stream>,
    cx: &mut std::task::Context<'_>,
    inbuf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    use tokio::io::AsyncRead;
    if !inbuf.is_empty() {
        return tokio_util::io::poll_read_buf(stream, cx, inbuf);
    }
    let mut room = [const { std::mem::MaybeUninit::<u8>::uninit() }; READ_BUFFER];
    let mut buf = tokio::io::ReadBuf::uninit(&mut room);
    std::task::ready!(stream.poll_read(cx, &mut buf))?;
    let filled = buf.filled();
    *inbuf = BytesMut::from(filled);
    Poll::Ready(Ok(filled.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12, goal 4: what an idle client's task holds is the parked future,
    /// not the session's state machine. Its size is a type's, so this bounds every
    /// idle client (release builds are smaller than this debug bound).
    #[tokio::test]
    async fn a_parked_session_is_small() {
        let yaml = "redis_databases:\n  main:\n    db: 0\n";
        let config = crate::config::Config::from_yaml_str_with_env(yaml, None, &|_| None)
            .expect("valid config");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let router = crate::router::Router::new(&config, &shutdown);
        let live = Live::new(config, router, 1);
        let fds = crate::limits::FdLimits::unlimited(&live.config);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let ctx = Arc::new(Context::new(live, fds, addr, tx));
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let local = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(local)
            .await
            .expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let task = run(Stream::Plain(accepted), ctx, 1);
        let (task, parked, session, client) = (
            std::mem::size_of_val(&task),
            std::mem::size_of::<Parked>(),
            std::mem::size_of::<Session>(),
            std::mem::size_of::<crate::clients::Client>(),
        );
        eprintln!("session task future {task} B, Parked {parked} B, Session {session} B (boxed while running), client table entry {client} B");
        // tokio's task cell (header, scheduler, id, the future in a `TaskTracker`
        // wrapper of 8 B, trailer) is a multiple of 128 B: a future of at most
        // 144 B keeps an idle client's task in 256 B.
        assert!(task <= 144, "the session task's future is {task} B");
        // (`Arc`'s two counters on top: at most 192 B, a jemalloc size class.)
        assert!(client <= 176, "the client table entry is {client} B");
        shutdown.cancel();
    }
}
