//! The session's connection mode — which upstream connection its requests go to —
//! as one enum, and the only place where it changes.
//!
//! ```text
//!            MULTI/WATCH/BLPOP…           EXEC/DISCARD/UNWATCH, blocking reply sent
//!  Shared ───────────────────────▶ Exclusive ─────────────────────────────▶ Shared
//!    │  ▲                          AUTH (auth_passthrough), CLIENT TRACKING ON
//!    │  └──── RESET / QUIT, TRACKING OFF ────── Private ◀──────────── Shared
//!    │ SUBSCRIBE/MONITOR                          │ SUBSCRIBE (parked, or, RESP3
//!    ▼                                            ▼ tracking: the connection itself)
//!  Subscribed ── last UNSUBSCRIBE, RESET ──▶ Shared, or the parked Private
//! ```
//!
//! (A subscriber connection tracking keys in RESP3 stays `Subscribed` after its
//! last unsubscribe, until tracking is turned off: [`Subscribed::tracking`].
//! `CLIENT TRACKING ON` under a `WATCH` goes Exclusive → Private: the watching
//! connection leaves its pool and becomes the session's own, `Session::own_held`.)
//!
//! Every request forwarded also names its connection ([`Conn`]); a request for a
//! different connection than the previous one waits until every earlier reply has
//! arrived, so a client's commands run upstream in the order it sent them even
//! when they use several connections.

use std::sync::Arc;

use bytes::Bytes;

use super::follow::{Follow, HeldConn, Place};
use super::Session;
use crate::router::Database;
use crate::upstream::dedicated::Dedicated;
use crate::upstream::pubsub::Subscription;

/// Which upstream connection a session's requests go to.
pub(super) enum Mode {
    /// Stateless commands pipelined on the database's shared connection.
    Shared,
    /// An exclusive connection from the database's pool, held for a transaction
    /// (MULTI … EXEC, WATCH) or a blocking call.
    Exclusive(Held),
    /// The session's own connection — logged in as its user (`auth_passthrough`),
    /// or tracking keys for it (`CLIENT TRACKING`); every request goes there. Pushes
    /// Redis sends on it (invalidations) are streamed to the client.
    Private(Private),
    /// Subscribed (or MONITOR): requests go to the session's subscriber connection
    /// and every frame Redis sends on it is streamed back.
    Subscribed(Box<Subscribed>),
}

/// An exclusive connection held by the session, and the MULTI/WATCH state on it.
pub(super) struct Held {
    pub conn: HeldConn,
    /// Names this connection in [`Conn::Held`].
    pub id: u64,
    /// MULTI was sent and not yet EXEC/DISCARD.
    pub in_multi: bool,
    /// `in_multi` after the last batch sent on it: where the next batch's
    /// requests start (their replies, if the connection is lost, are what Redis
    /// answers each at its place, [`super::queue`]'s `ended_all_the_same`).
    pub sent_multi: bool,
    /// The client knows of a transaction on this connection: a reply came on it
    /// (what was sent there reached Redis), or the proxy answered its MULTI
    /// (deferred on a cluster until a key named the node).
    pub known: bool,
    /// WATCH was sent and not yet cleared.
    pub watching: bool,
    /// The database a SELECT queued in the current MULTI switches to at EXEC.
    pub pending_select: Option<Arc<Database>>,
    /// A command of the current MULTI was refused while queueing (`deny_commands`,
    /// a command the proxy cannot run there): as in Redis, EXEC discards the
    /// transaction (`-EXECABORT`).
    pub dirty: bool,
    /// Requests of the current MULTI queued by Redis: EXEC's reply holds one
    /// element for each.
    pub queued: u32,
    /// Commands of the current MULTI the proxy answers itself, queued as Redis
    /// queues every command there: they run when EXEC runs the transaction.
    pub locals: Vec<Queued>,
    /// `key_prefix`: commands of the current MULTI whose replies name keys, by
    /// their element of EXEC's reply ([`super::prefix::Rewrite::Exec`]).
    pub unprefix: Vec<(usize, super::prefix::Unprefix, bytes::Bytes)>,
}

/// A command the proxy answers itself (CLIENT SETNAME, PROXY INFO …), queued inside
/// MULTI: it runs if EXEC runs the transaction, and its reply takes its place
/// among the elements of EXEC's.
#[derive(Debug)]
pub(super) struct Queued {
    /// Requests Redis queued before it in the transaction.
    pub after: u32,
    pub route: crate::command::Route,
    pub args: Vec<Vec<u8>>,
    /// Its reply, known when it was queued (an error EXEC will give).
    pub reply: Option<Vec<u8>>,
}

/// The session's own connection (`auth_passthrough` login, `CLIENT TRACKING`).
pub(super) struct Private {
    pub held: Held,
    /// The database (server) and protocol it was opened for.
    pub db: Arc<Database>,
    pub resp3: bool,
    /// Tracking was on here at some time: Redis may still hold keys it tracked
    /// for this connection (`super::stand_in::Dormant`).
    pub tracked: bool,
}

/// A subscriber (or MONITOR) connection and what the session knows of it.
pub(super) struct Subscribed {
    pub sub: Subscription,
    /// Subscriptions Redis last reported: channels plus patterns, and shard
    /// channels (Redis 7 counts the two apart; the client leaves pub/sub mode only
    /// when both are zero).
    pub counts: [i64; 2],
    /// A MONITOR stream, not subscriptions.
    pub monitor: bool,
    /// A PING sent so that a command the proxy answers itself (QUIT, RESET,
    /// PROXY) is answered after every earlier request's replies: its tag, as a
    /// bulk string (see `pubsub::is_barrier` for the replies it may get).
    pub barrier: Option<Bytes>,
    /// The barrier was passed: the stalled request may now be answered.
    pub barrier_passed: bool,
    /// A MONITOR connection's `RESET` or `QUIT` was sent there: Redis answers it
    /// after the stream line of every request before it; that reply is not passed
    /// on (the session's own follows it), nor the close after a `QUIT`.
    pub end_sent: Option<MonitorEnd>,
    /// The private connection to go back to after the last unsubscribe.
    pub parked: Option<Private>,
    /// Sharded subscriptions, followed to their slot's node on a cluster.
    pub shards: super::pubsub::Shards,
    /// Channels and patterns, subscribed again elsewhere if the home node's
    /// connection is lost on a cluster.
    pub home: super::pubsub::Home,
    /// A RESP3 transaction on the subscriber connection, from its MULTI until
    /// EXEC's reply ([`super::pubsub::SubTx`]).
    pub tx: Option<Box<super::pubsub::SubTx>>,
    /// The client-facing database the connection is on (opened for, or moved to
    /// by a RESP3 `SELECT` it could follow): after a SELECT of another one
    /// (RESP3), commands go where they go unsubscribed.
    pub db: u32,
    /// A RESP3 session's `HELLO 2` was sent on the connection (its reply skipped):
    /// it speaks RESP2 from there (`pubsub::subscriber_to_resp2`).
    pub to_resp2: bool,
    /// A `WATCH` was sent on the connection (RESP3) and no `EXEC`, `DISCARD` or
    /// `UNWATCH` since.
    pub watching: bool,
    /// A `CLIENT TRACKING ON` was sent on the connection (RESP3) and no `OFF`
    /// since: Redis tracks the keys read there and pushes their invalidations
    /// there, so the connection stays the session's after its last unsubscribe
    /// (as Redis's client keeps its tracking), until tracking is turned off.
    pub tracking: bool,
    /// Tracking was on here at some time: Redis may still hold keys it tracked
    /// for this connection (`super::stand_in::Dormant`).
    pub tracked: bool,
    /// Taken back from dormancy for a `CLIENT TRACKING ON` not sent yet
    /// (`Session::revive_dormant_subscriber`): kept until it is.
    pub revived: bool,
    /// That tracking is in `BCAST` mode (for `CLIENT LIST`'s flags).
    pub bcast: bool,
    /// `BCAST`: the prefixes Redis holds for the connection (as
    /// `tracking::Tracking::prefixes`), and those of a `CLIENT TRACKING ON`
    /// sent there and not answered yet.
    pub prefixes: Vec<Vec<u8>>,
    pub asked_prefixes: Vec<Vec<u8>>,
    /// `BCAST`: invalidations of keys held until every reply of the read
    /// before them is in (`Session::hold_sub_bcast`), and how many requests
    /// written there are still to be answered first (`None`: the read is
    /// still being dispatched).
    pub bcast_held: Vec<bytes::Bytes>,
    pub bcast_due: Option<usize>,
    /// That tracking's `REDIRECT`: the proxy session named, and the Redis client
    /// id sent in its place (translated back in replies and pushes).
    pub redirect: Option<(u64, u64)>,
    /// A tracking request sent on the connection after every earlier reply
    /// (`Session::tracking_on_subscriber`): what its reply, the next one that
    /// answers a request, changes; and whether the client asked not to get it.
    pub tracking_reply: Option<(super::tracking::OnSubscriber, bool)>,
}

impl Subscribed {
    /// The connection holds a transaction's state (a `MULTI` or a `WATCH` sent
    /// on it, RESP3): it cannot be replaced by another one when lost or when
    /// its shard channels move (on a cluster), which would run the queued
    /// commands on their own or forget the watch; the client is disconnected
    /// instead, as Redis's would be.
    pub fn holds_transaction(&self) -> bool {
        self.tx.is_some() || self.watching
    }

    /// Redis keeps state for the client on the connection (its tracking, a
    /// `WATCH`), so it stays the session's after the last unsubscribe, until
    /// that state ends (RESP3: a RESP2 subscriber's `WATCH` is refused).
    pub fn kept(&self) -> bool {
        self.tracking || self.watching || self.revived
    }
}

/// How a MONITOR session ends its stream: the command sent on the MONITOR
/// connection ahead of the session's own reply (`Session::monitor_end`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MonitorEnd {
    Reset,
    Quit,
}

/// The upstream connection a forwarded request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Conn {
    /// Nothing forwarded yet.
    None,
    /// A database's shared connection (by client-facing index and protocol;
    /// `login`: on a cluster, the `auth_passthrough` login's, by its id, whose
    /// connections are its own, `Cluster::login`; 0 for the proxy's; `detour`:
    /// the database's detour slot, `Database::detour`).
    Shared {
        db: u32,
        resp3: bool,
        login: u64,
        detour: bool,
    },
    /// An exclusive or private connection (by [`Held::id`]).
    Held(u64),
    /// The subscriber connection.
    Sub,
}

impl Mode {
    /// The exclusive or private connection, if the session holds one.
    pub fn held(&self) -> Option<&Held> {
        match self {
            Mode::Exclusive(h) | Mode::Private(Private { held: h, .. }) => Some(h),
            _ => None,
        }
    }

    pub fn held_mut(&mut self) -> Option<&mut Held> {
        match self {
            Mode::Exclusive(h) | Mode::Private(Private { held: h, .. }) => Some(h),
            _ => None,
        }
    }

    /// Inside MULTI.
    pub fn in_multi(&self) -> bool {
        self.held().is_some_and(|h| h.in_multi)
    }

    /// The session's own connection, also while parked under a subscription.
    pub fn private_mut(&mut self) -> Option<&mut Private> {
        match self {
            Mode::Private(p) => Some(p),
            Mode::Subscribed(s) => s.parked.as_mut(),
            _ => None,
        }
    }

    pub fn is_private(&self) -> bool {
        matches!(self, Mode::Private(_))
    }

    /// In pub/sub as Redis counts a client there (`CLIENT LIST`'s `P`, exempt from
    /// `timeout`): subscribed or monitoring, not a connection that only tracks
    /// keys after its last unsubscribe.
    pub fn in_pubsub(&self) -> bool {
        matches!(self, Mode::Subscribed(s) if s.monitor || !s.kept() || s.counts != [0, 0])
    }

    pub fn subscribed(&mut self) -> Option<&mut Subscribed> {
        match self {
            Mode::Subscribed(s) => Some(s),
            _ => None,
        }
    }
}

impl Held {
    pub fn new(conn: HeldConn, id: u64) -> Held {
        Held {
            conn,
            id,
            in_multi: false,
            sent_multi: false,
            known: false,
            watching: false,
            pending_select: None,
            dirty: false,
            queued: 0,
            locals: Vec::new(),
            unprefix: Vec::new(),
        }
    }
}

impl Session {
    /// The shared connection of the session's current database.
    pub(super) fn shared_conn(&self) -> Conn {
        Conn::Shared {
            db: self.state.db.config.index,
            resp3: self.state.resp3,
            // (Logging in or out switches connections: what was sent before is
            // answered first.)
            login: self.login.as_ref().map_or(0, |l| l.id),
            detour: self.detour,
        }
    }

    /// Shared → Exclusive: checks a connection out of the database's pool (on a
    /// cluster, the pool of the node serving `slot`).
    pub(super) fn hold_exclusive(&mut self, slot: Option<u16>) {
        // An `auth_passthrough` login on a cluster: from its own pools.
        let view = self.login_view();
        let db = &self.state.db;
        let resp3 = self.state.resp3;
        let pool = view
            .as_ref()
            .and_then(|v| v.pool(slot, self.state.id, resp3))
            .unwrap_or_else(|| db.pool_for(resp3, slot, self.state.id));
        let node = pool.address();
        let conn = Dedicated::start(pool, db.label(), db.config.upstream.command_timeout);
        let conn = match view.as_ref().or(db.cluster()) {
            // On a cluster it follows its slot if the map was stale.
            Some(c) => HeldConn::Follow(Follow::start(
                conn,
                node,
                Place {
                    cluster: c.clone(),
                    label: db.label(),
                    command_timeout: db.config.upstream.command_timeout,
                    connect_timeout: db.config.upstream.connect_timeout,
                    resp3: self.state.resp3,
                    slot,
                },
            )),
            None => HeldConn::Direct(conn),
        };
        self.checkouts += 1;
        self.mode = Mode::Exclusive(Held::new(conn, self.checkouts));
    }

    /// Makes `conn` (logged in as the session's user, or the database's) the
    /// session's private connection, replacing whatever it held. While subscribed
    /// (an `AUTH` then, with `auth_passthrough`) it is parked, replacing the one
    /// parked before: the subscriptions stay where they are, and the session goes
    /// to the new login's connection after its last unsubscribe.
    pub(super) fn hold_private(&mut self, conn: Dedicated, db: Arc<Database>, resp3: bool) {
        self.checkouts += 1;
        let private = Private {
            held: Held::new(HeldConn::Direct(conn), self.checkouts),
            db,
            resp3,
            tracked: false,
        };
        if let Mode::Subscribed(s) = &mut self.mode {
            s.parked = Some(private);
            return;
        }
        self.release(false);
        self.mode = Mode::Private(private);
        self.last = Conn::Held(self.checkouts);
    }

    /// Exclusive → Private: `conn`, the exclusive connection taken out of its
    /// pool, is the session's own from now on, with the `WATCH` state it holds.
    pub(super) fn own_held(&mut self, conn: Dedicated, db: Arc<Database>) {
        if let Mode::Exclusive(mut held) = std::mem::replace(&mut self.mode, Mode::Shared) {
            held.conn = HeldConn::Direct(conn);
            self.mode = Mode::Private(Private {
                held,
                db,
                resp3: self.state.resp3,
                tracked: false,
            });
        }
    }

    /// Lets go of an exclusive or private connection (back to Shared; a private
    /// connection's tracking ends with it). `clean`:
    /// the connection has no MULTI/WATCH state once its queued commands have run,
    /// so it goes back to the pool as it is (otherwise it is reset, or dropped).
    pub(super) fn release(&mut self, clean: bool) {
        let was_multi = self.mode.in_multi();
        match std::mem::replace(&mut self.mode, Mode::Shared) {
            Mode::Exclusive(held) if clean => held.conn.release(),
            Mode::Subscribed(s) => self.mode = Mode::Subscribed(s),
            // The session's own connection closes, and its tracking with it
            // (unless a redirect named it: `stand_in`).
            Mode::Private(p) => {
                let tracking = self.tracking.take().is_some();
                self.let_go_of_private(p, tracking);
            }
            _ => {}
        }
        if was_multi {
            self.publish();
        }
    }

    /// Shared or Private → Subscribed.
    pub(super) fn enter_pubsub(&mut self, sub: Subscription, monitor: bool) {
        let parked = match std::mem::replace(&mut self.mode, Mode::Shared) {
            Mode::Private(p) => Some(p),
            _ => None,
        };
        self.mode = Mode::Subscribed(Box::new(Subscribed {
            sub,
            counts: [0; 2],
            monitor,
            barrier: None,
            barrier_passed: false,
            end_sent: None,
            parked,
            shards: Default::default(),
            home: Default::default(),
            tx: None,
            db: self.state.db.config.index,
            to_resp2: false,
            watching: false,
            tracking: false,
            tracked: false,
            revived: false,
            bcast: false,
            prefixes: Vec::new(),
            asked_prefixes: Vec::new(),
            bcast_held: Vec::new(),
            bcast_due: None,
            redirect: None,
            tracking_reply: None,
        }));
        self.publish();
    }

    /// Subscribed → Shared, or back to the parked private connection.
    pub(super) fn leave_pubsub(&mut self) {
        // Any other mode stays as it is (a private connection, and the tracking
        // that lives on it, is let go by `release`, not dropped here).
        if matches!(self.mode, Mode::Subscribed(_)) {
            if let Mode::Subscribed(s) = std::mem::replace(&mut self.mode, Mode::Shared) {
                let s = *s;
                // Tracking ended there, subscribed to nothing: kept idle.
                let dormant = s.tracked
                    && !s.kept()
                    && s.tx.is_none()
                    && !s.to_resp2
                    && s.counts == [0, 0]
                    && s.parked.is_none();
                if let Some(p) = s.parked {
                    self.mode = Mode::Private(p);
                }
                if !s.monitor {
                    self.let_go_of_subscriber(s.sub, s.tx.is_some(), dormant.then_some(s.db));
                }
            }
        }
        self.publish();
    }
}
