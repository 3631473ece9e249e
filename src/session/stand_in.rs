//! Own connections a session keeps after letting go of them: the one that
//! stands in for a session named by other clients' `CLIENT TRACKING …
//! REDIRECT`, and the dormant one that tracked keys for it.
//!
//! Redis names a client in a redirect, and the name holds for as long as the
//! client is connected, whatever it does meanwhile. Through the proxy the name
//! is a connection: the session's own one (subscriber, tracking or login
//! connection) while it has one, else a push connection opened for it
//! (`Clients::push_sink_id`). An own connection can end before the session does
//! (its last `UNSUBSCRIBE`, `RESET`, `CLIENT TRACKING OFF`, the end of a
//! `WATCH`); if a redirect named it, closing it would break the redirecting
//! clients' tracking, where Redis's goes on. So it is kept instead, as the
//! session's push connection ([`StandIn`]): its subscriptions, transaction and
//! own tracking ended and its protocol switched to RESP3, so that Redis pushes
//! every invalidation redirected there, and the session writes them as Redis
//! would write them to it as it is now (`Session::on_redirected_push`). From then
//! on, redirects to the session name it.
//!
//! A connection that tracked keys for the session is kept too when the session
//! lets go of it (tracking turned off, `RESET`, the end of a `WATCH` it kept,
//! a RESP3 subscriber's last unsubscribe after tracking ended there) and no
//! redirect named it: idle, as the session's [`Dormant`] connection, its
//! transaction and tracking ended. Redis keeps the keys it tracked for a client
//! after tracking is turned off (they leave its table only when written, by
//! anyone, in any database), and once the client turns tracking on again it
//! reports a write of any of them. So the next `CLIENT TRACKING ON` on that
//! server takes the dormant connection back (`Session::revive_dormant`; a
//! RESP3 subscriber's goes back to pub/sub mode subscribed to nothing,
//! `Session::revive_dormant_subscriber`, and a RESP3 session's subscription is
//! made there too) rather than opening one that tracks nothing. Only a
//! connection logged in as the database's user is kept (an `auth_passthrough`
//! login's is closed); if it closes meanwhile, tracking starts afresh.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;

use super::mode::{Held, Mode, Private};
use super::tracking::{self, unanswered, INVALIDATE};
use super::{local, Session};
use crate::command::ArgList;
use crate::router::Database;
use crate::upstream::dedicated::Dedicated;
use crate::upstream::pubsub::{End, Subscription};

/// Ends a kept connection's transaction, if it is in one.
const DISCARD: &[u8] = b"*1\r\n$7\r\nDISCARD\r\n";
/// Ends a kept connection's `WATCH`.
const UNWATCH: &[u8] = b"*1\r\n$7\r\nUNWATCH\r\n";
/// Ends a kept connection's own tracking.
const TRACKING_OFF: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$3\r\nOFF\r\n";
/// Makes a kept connection RESP3.
const HELLO_3: &[u8] = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n";
/// Makes a revived connection RESP2.
const HELLO_2: &[u8] = b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n";
/// Ends a kept subscriber connection's subscriptions.
const UNSUBSCRIBE_ALL: &[u8] =
    b"*1\r\n$11\r\nUNSUBSCRIBE\r\n*1\r\n$12\r\nPUNSUBSCRIBE\r\n*1\r\n$12\r\nSUNSUBSCRIBE\r\n";

/// A session's push connection: where invalidations redirected to it arrive.
#[derive(Debug)]
pub(super) enum StandIn {
    /// Opened for the session, or its private connection kept.
    Opened(Dedicated),
    /// Its subscriber connection, kept; `setup` is what is left to write of
    /// what sets it up (`Session::let_go_of_subscriber`).
    Subscriber { sub: Subscription, setup: Bytes },
}

impl StandIn {
    /// The next invalidation Redis pushed (anything else read there, the replies
    /// to the setup and what came before them, is dropped), or why the stream
    /// ended. Cancellation-safe.
    pub async fn next_push(&mut self) -> Result<Bytes, End> {
        loop {
            let frame = match self {
                StandIn::Opened(conn) => conn.next_push().await?,
                StandIn::Subscriber { sub, setup } => {
                    if !setup.is_empty() {
                        sub.write_from(setup).await.map_err(|_| End::Closed)?;
                    }
                    sub.next().await?
                }
            };
            if frame.starts_with(INVALIDATE) {
                return Ok(frame);
            }
        }
    }
}

/// A connection that tracked keys for the session, let go of and kept idle (see
/// the module docs).
pub(super) struct Dormant {
    conn: Kept,
    /// The database it is on (its server, and the db it selected).
    db: Arc<Database>,
}

/// What kind of connection a [`Dormant`] one is.
enum Kept {
    /// A private connection (tracking, or a `WATCH` under which tracking was
    /// on), and whether it speaks RESP3.
    Own(Dedicated, bool),
    /// A RESP3 subscriber connection that tracked keys, with no subscriptions
    /// left: a `CLIENT TRACKING ON` takes the session back to it (subscribed to
    /// nothing, as after its last unsubscribe while tracking).
    Subscriber(Subscription),
}

impl Session {
    /// `CLIENT TRACKING ON` with no connection of the session's own: its dormant
    /// private connection becomes its private one again, if it is on the
    /// session's server and still open (`false`: a new one is needed; a dormant
    /// subscriber connection is closed here, see
    /// [`Session::dormant_subscriber_fits`]). It is switched to the session's
    /// protocol and database first, silently.
    pub(super) async fn revive_dormant(&mut self) -> bool {
        if !matches!(self.mode, Mode::Shared) {
            // (Subscribed, RESP2: tracking goes on a connection parked apart.)
            return false;
        }
        let Some(dormant) = self.dormant.take() else {
            return false;
        };
        let Dormant { conn, db } = *dormant;
        let now = self.state.db.clone();
        let Kept::Own(mut conn, was_resp3) = conn else {
            return false;
        };
        if !db.same_server(&now) || !conn.still_open() {
            return false;
        }
        let resp3 = self.state.resp3;
        let mut setup = Vec::new();
        if was_resp3 != resp3 {
            setup.push(if resp3 { HELLO_3 } else { HELLO_2 }.to_vec());
        }
        if now.config.upstream.db != db.config.upstream.db {
            setup.push(local::upstream_select(&now));
        }
        self.hold_private(conn, now, resp3);
        if let Some(p) = self.mode.private_mut() {
            p.tracked = true;
        }
        if !setup.is_empty() {
            let count = setup.len() as u32;
            self.send_silently(setup.concat(), count).await;
        }
        true
    }

    /// Whether `args`, a `CLIENT` request of a session on the shared
    /// connections, is a `CLIENT TRACKING ON` that goes to the session's dormant subscriber
    /// connection ([`Session::revive_dormant_subscriber`]): a RESP3 session,
    /// on that server, outside a transaction, the connection still open.
    pub(super) fn dormant_subscriber_fits(&self, args: &dyn ArgList) -> bool {
        matches!(self.mode, Mode::Shared)
            && self.state.authenticated
            && self.lost.is_none()
            && !self.deferred_multi
            && self.dormant_subscriber_usable(false)
            && args.count() >= 3
            && tracking::sub(args) == Some(tracking::Sub::Tracking)
            && args.arg(2).eq_ignore_ascii_case(b"ON")
    }

    /// The session goes back to its dormant subscriber connection, subscribed
    /// to nothing, on the session's database; the `CLIENT TRACKING ON` that
    /// [`Session::dormant_subscriber_fits`] is then sent there, as a RESP3
    /// subscriber's is.
    pub(super) async fn revive_dormant_subscriber(&mut self) {
        if let Some((sub, db)) = self.dormant_subscriber(false) {
            self.enter_pubsub(sub, false);
            if let Some(s) = self.mode.subscribed() {
                s.revived = true;
            }
            self.settle_revived(&db).await;
        }
    }

    /// A RESP3 session's dormant subscriber connection, taken for a
    /// subscription (or a `CLIENT TRACKING ON`, [`Session::revive_dormant_subscriber`])
    /// if it is on the session's server and still open, with the database it is
    /// on: Redis's client subscribes on the connection whose keys it tracked.
    pub(super) fn dormant_subscriber(
        &mut self,
        monitor: bool,
    ) -> Option<(Subscription, Arc<Database>)> {
        if !self.dormant_subscriber_usable(monitor) {
            return None;
        }
        match *self.dormant.take()? {
            Dormant {
                conn: Kept::Subscriber(sub),
                db,
                ..
            } => Some((sub, db)),
            _ => None,
        }
    }

    /// Whether the session has a dormant subscriber connection it can take back
    /// (`monitor`: for a MONITOR, which never does).
    fn dormant_subscriber_usable(&self, monitor: bool) -> bool {
        !monitor
            && self.state.resp3
            && self.login.is_none()
            && self.state.db.cluster().is_none()
            && matches!(self.dormant.as_deref(), Some(Dormant {
                conn: Kept::Subscriber(sub),
                db,
                ..
            }) if db.same_server(&self.state.db) && sub.upstream_id().load(Relaxed) != 0)
    }

    /// The subscriber connection taken back from dormancy, once the session is
    /// subscribed there: it tracked keys, and it moves to the session's
    /// database (a `SELECT`, its reply skipped) if it is on another.
    pub(super) async fn settle_revived(&mut self, was_on: &Database) {
        let now = self.state.db.clone();
        if let Some(s) = self.mode.subscribed() {
            s.tracked = true;
            s.db = now.config.index;
        }
        if now.config.upstream.db != was_on.config.upstream.db {
            let select = local::upstream_select(&now);
            self.subscriber_select(now.config.index, &select).await;
        }
    }

    /// The session lets go of its subscriber connection `sub`: kept as its push
    /// connection if a redirect named it (see the module docs), else as its
    /// dormant connection (`dormant`: it tracked keys once and is left as
    /// Redis leaves a client that turned tracking off, with no subscriptions,
    /// on this database), else closed.
    pub(super) fn let_go_of_subscriber(
        &mut self,
        sub: Subscription,
        in_multi: bool,
        dormant: Option<u32>,
    ) {
        let db = self.state.db.clone();
        if self.keeps(sub.upstream_id().load(Relaxed), &db.config.upstream) {
            // (A RESP3 subscriber's transaction first: inside it the rest would
            // be queued.)
            let discard = if in_multi { DISCARD } else { b"" };
            let setup = [discard, UNSUBSCRIBE_ALL, TRACKING_OFF, HELLO_3].concat();
            self.push_conn = Some(Box::new(StandIn::Subscriber {
                sub,
                setup: Bytes::from(setup),
            }));
            return;
        }
        let on = dormant.and_then(|index| self.live.router.get(i64::from(index)).cloned());
        if let Some(db) = on.filter(|_| self.login.is_none()) {
            self.dormant = Some(Box::new(Dormant {
                conn: Kept::Subscriber(sub),
                db,
            }));
        }
    }

    /// The session lets go of its private connection (`tracking`: tracking
    /// is on there): kept as its push connection if a redirect named it, else
    /// as its dormant connection if it tracked keys once and is logged in as
    /// the database's user (no `auth_passthrough` login), else closed.
    pub(super) fn let_go_of_private(&mut self, private: Private, tracking: bool) {
        let Private {
            held:
                Held {
                    conn,
                    sent_multi,
                    watching,
                    ..
                },
            db,
            resp3,
            tracked,
        } = private;
        let Some(mut conn) = conn.into_direct() else {
            return;
        };
        if !self.keeps(conn.upstream_id().load(Relaxed), &db.config.upstream) {
            if tracked && self.login.is_none() {
                // Left as Redis leaves a client that turned tracking off.
                let steps = [
                    (sent_multi, DISCARD),
                    (watching, UNWATCH),
                    (tracking, TRACKING_OFF),
                ];
                self.set_up(&mut conn, &steps, &db);
                self.dormant = Some(Box::new(Dormant {
                    conn: Kept::Own(conn, resp3),
                    db: self.state.db.clone(),
                }));
            }
            return;
        }
        // Only what it needs: a setup's round trip is a moment in which the
        // invalidations it reads go with the setup's replies, not to the client.
        let steps = [
            (sent_multi, DISCARD),
            (tracking, TRACKING_OFF),
            (!resp3, HELLO_3),
        ];
        self.set_up(&mut conn, &steps, &db);
        self.push_conn = Some(Box::new(StandIn::Opened(conn)));
    }

    /// Sends a kept connection the requests of `steps` that apply, their replies
    /// not waited for.
    fn set_up(&self, conn: &mut Dedicated, steps: &[(bool, &[u8])], db: &Database) {
        let setup: Vec<u8> = steps
            .iter()
            .filter(|s| s.0)
            .flat_map(|s| s.1)
            .copied()
            .collect();
        if !setup.is_empty() {
            let count = steps.iter().filter(|s| s.0).count() as u32;
            // (What it read before is not for the client.)
            let _ = conn.send(unanswered(Bytes::from(setup), count, self.state.id, db));
        }
    }

    /// Whether the own connection `id` to `upstream`, being let go, is kept as
    /// the session's push connection (a redirect named it, and the session has
    /// none yet).
    fn keeps(&self, id: u64, upstream: &crate::config::UpstreamConfig) -> bool {
        self.push_conn.is_none() && self.client.keep_push_conn(id, upstream)
    }
}
