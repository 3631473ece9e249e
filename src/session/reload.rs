//! Moving a session to the configuration snapshot a reload published.
//!
//! A session keeps the [`crate::context::Live`] snapshot it took; at each
//! batch (and when a reload wakes it while idle) it compares generations, one
//! atomic load. It moves only at a point where nothing of its own is in flight
//! on a shared connection, so its commands keep their order even when the
//! database got new connections; and only in the shared mode: a session in a
//! transaction, blocked, subscribed or on a private connection finishes there,
//! on the old snapshot, and moves when it leaves that mode. Its database is
//! looked up again by index; if the reload removed it, the session stays on a
//! stand-in that refuses every command with a message saying so
//! ([`Database::removed`](crate::router::Database::removed)) until it selects
//! another database.

use std::sync::Arc;

use super::mode::{Conn, Mode};
use super::Session;
use crate::context::Live;
use crate::router::Database;

impl Session {
    /// A reload published a snapshot newer than the session's.
    #[inline]
    pub(super) fn stale(&self) -> bool {
        self.ctx.generation() != self.live.generation
    }

    /// Takes the newest snapshot if the session may move now. `false`: requests
    /// of its own are in flight on a shared connection; the caller waits for
    /// their replies (stalls) and calls again. A pinned session (see the module
    /// docs) stays where it is, and `true` lets it go on there.
    pub(super) fn refresh(&mut self) -> bool {
        if !matches!(self.mode, Mode::Shared) {
            return true;
        }
        if self.waits_upstream() {
            return false;
        }
        let live = self.ctx.live();
        self.state.db = moved(&live, &self.state.db, self.state.id);
        self.live = live;
        // A reload may have moved the database to another upstream.
        self.record_db_in_span();
        // The next request may use other connections for the same database.
        self.last = Conn::None;
        true
    }
}

/// The session's database in the snapshot `live`: looked up again by index, or,
/// if the reload removed it, a stand-in that refuses every command.
pub(super) fn moved(live: &Live, db: &Arc<Database>, session: u64) -> Arc<Database> {
    let index = db.config.index;
    match live.router.get(i64::from(index)) {
        Some(db) => db.clone(),
        None if db.is_removed() => db.clone(),
        None => {
            tracing::info!(
                session,
                db = index,
                "the session's database was removed by a configuration reload"
            );
            Arc::new(db.removed())
        }
    }
}
