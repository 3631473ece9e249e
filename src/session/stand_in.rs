//! The connection that stands in for a session named by other clients'
//! `CLIENT TRACKING … REDIRECT`.
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
//! A tracking connection that `CLIENT TRACKING OFF` lets go of (and no redirect
//! named) is kept too, idle, as the session's [`Dormant`] connection: Redis keeps
//! the keys it tracked for a client after tracking is turned off (they leave its
//! table only when written), and once the client turns tracking on again it
//! reports a write of any of them, wherever it comes from. So the next
//! `CLIENT TRACKING ON` on that server takes the dormant connection back
//! (`Session::revive_dormant`) rather than opening one that tracks nothing.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;

use std::sync::Arc;

use super::dispatch::{encode, Outgoing, Target};
use super::mode::{Held, Mode, Private};
use super::queue::CmdList;
use super::tracking::{unanswered, INVALIDATE};
use super::Session;
use crate::command::{table, Block};
use crate::router::Database;
use crate::upstream::dedicated::Dedicated;
use crate::upstream::pubsub::{End, Subscription};

/// Ends a kept connection's transaction, if it is in one.
const DISCARD: &[u8] = b"*1\r\n$7\r\nDISCARD\r\n";
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

/// A tracking connection let go by `CLIENT TRACKING OFF`, kept idle (see the
/// module docs).
pub(super) struct Dormant {
    conn: Dedicated,
    /// The database it was on (its server, and the db it selected).
    db: Arc<Database>,
    resp3: bool,
}

impl Session {
    /// `CLIENT TRACKING OFF` was answered `+OK`: the session lets go of its
    /// private connection, which is kept as its push connection if a redirect
    /// named it, else as its dormant one.
    pub(super) fn let_go_after_tracking(&mut self) {
        if let Mode::Private(p) = std::mem::replace(&mut self.mode, Mode::Shared) {
            self.let_go_of_private(p, false, true);
        }
    }

    /// `CLIENT TRACKING ON` with no connection of the session's own: its dormant
    /// connection becomes its private one again, if it is on the session's
    /// server and still open (`false`: a new one is needed). It is switched to
    /// the session's protocol and database first, silently.
    pub(super) async fn revive_dormant(&mut self) -> bool {
        let Some(dormant) = self.dormant.take() else {
            return false;
        };
        let Dormant {
            mut conn,
            db,
            resp3,
        } = *dormant;
        let now = self.state.db.clone();
        if !db.same_server(&now) || !conn.still_open() {
            return false;
        }
        let mut setup: Vec<&[u8]> = Vec::new();
        if resp3 != self.state.resp3 {
            setup.push(if self.state.resp3 { HELLO_3 } else { HELLO_2 });
        }
        let selected = now.config.upstream.db;
        let select = encode(&[&b"SELECT"[..], selected.to_string().as_bytes()][..]);
        if selected != db.config.upstream.db {
            setup.push(&select);
        }
        let resp3 = self.state.resp3;
        self.hold_private(conn, now.clone(), resp3);
        if !setup.is_empty() {
            let mut cmds = CmdList::new();
            for _ in &setup {
                cmds.push(table::COUNT as u16);
            }
            let out = Outgoing {
                bytes: Bytes::from(setup.concat()),
                count: setup.len() as u32,
                target: Target::Held,
                cmds,
                readonly: false,
                block: Block::No,
                silent: true,
                select_after: None,
            };
            self.send(now, out).await;
        }
        true
    }

    /// The session lets go of its subscriber connection `sub`: kept as its push
    /// connection if a redirect named it (see the module docs), else closed.
    pub(super) fn let_go_of_subscriber(&mut self, sub: Subscription, in_multi: bool) {
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
        }
    }

    /// The session lets go of its private connection (`tracking`: tracking
    /// was on there): kept as its push connection if a redirect named it, else
    /// as its dormant connection (`dormant`: tracking was just turned off
    /// there), else closed.
    pub(super) fn let_go_of_private(&mut self, private: Private, tracking: bool, dormant: bool) {
        let Private {
            held: Held {
                conn, sent_multi, ..
            },
            db,
            resp3,
        } = private;
        let Some(mut conn) = conn.into_direct() else {
            return;
        };
        if !self.keeps(conn.upstream_id().load(Relaxed), &db.config.upstream) {
            if dormant {
                self.dormant = Some(Box::new(Dormant {
                    conn,
                    db: self.state.db.clone(),
                    resp3,
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
        let setup: Vec<u8> = steps
            .iter()
            .filter(|s| s.0)
            .flat_map(|s| s.1)
            .copied()
            .collect();
        if !setup.is_empty() {
            let count = steps.iter().filter(|s| s.0).count() as u32;
            // (What it read before is not for the client.)
            let _ = conn.send(unanswered(Bytes::from(setup), count, self.state.id, &db));
        }
        self.push_conn = Some(Box::new(StandIn::Opened(conn)));
    }

    /// Whether the own connection `id` to `upstream`, being let go, is kept as
    /// the session's push connection (a redirect named it, and the session has
    /// none yet).
    fn keeps(&self, id: u64, upstream: &crate::config::UpstreamConfig) -> bool {
        self.push_conn.is_none() && self.client.keep_push_conn(id, upstream)
    }
}
