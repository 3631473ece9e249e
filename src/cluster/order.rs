//! The order of one session's batches on a cluster.
//!
//! Each batch a session sends gets a [`Ticket`], numbered in the session's order;
//! the batch is *unsettled* until the ticket is dropped (its answer given, every
//! resend done). Two rules keep a client's commands for one key in the order it
//! sent them, across redirects and map changes:
//!
//! * **Dispatch.** A batch goes out at once if every unsettled earlier batch of the
//!   session went out with the same map generation: one map sends a slot to one
//!   node, and one session's requests to one node share one connection (first in,
//!   first out). With a different map, it first waits until every earlier batch is
//!   settled ([`Ticket::must_wait`], [`Ticket::earlier_settled`],
//!   [`Ticket::goes_out_with`]).
//! * **Resend.** A redirected request is resent only once every earlier batch of the
//!   session is settled ([`Ticket::earlier_settled`]): later requests for the same
//!   slot that were already sent got the same redirect (the node does not serve the
//!   slot, or does not have the key), so their resends come after.
//!
//! The bookkeeping costs two short locks per batch, and a wait only when a map
//! changes or a redirect is followed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smallvec::SmallVec;
use tokio::sync::Notify;

/// The longest a batch waits for its session's earlier batches (they end by
/// their own timeouts well before; this only bounds a bug).
const WAIT_AT_MOST: Duration = Duration::from_secs(120);

/// Every session's unsettled batches on one cluster.
#[derive(Debug, Default)]
pub struct Orders {
    sessions: Mutex<HashMap<u64, Session>>,
}

#[derive(Debug)]
struct Session {
    /// Numbers of the unsettled batches, ascending (a few: inline).
    unsettled: SmallVec<[u64; 4]>,
    /// The number of the next batch.
    next: u64,
    /// The map generation the last batch went out with.
    generation: u64,
    /// Woken when the oldest unsettled batch settles (made on first wait).
    settled: Option<Arc<Notify>>,
}

/// One batch's place in its session's order; dropping it settles the batch.
#[derive(Debug)]
pub struct Ticket {
    orders: Arc<Orders>,
    session: u64,
    n: u64,
    wait: bool,
}

impl Orders {
    /// Registers `session`'s next batch, to go out with map `generation`.
    pub fn begin(self: &Arc<Self>, session: u64, generation: u64) -> Ticket {
        let mut sessions = self.lock();
        let s = sessions.entry(session).or_insert(Session {
            unsettled: SmallVec::new(),
            next: 0,
            generation,
            settled: None,
        });
        let wait = !s.unsettled.is_empty() && s.generation != generation;
        if !wait {
            s.generation = generation;
        }
        let n = s.next;
        s.next += 1;
        s.unsettled.push(n);
        Ticket {
            orders: self.clone(),
            session,
            n,
            wait,
        }
    }

    /// Sessions with unsettled batches (for tests and statistics).
    pub fn sessions(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Session>> {
        // A panic elsewhere while holding the lock leaves consistent data: each
        // change is one step.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ticket {
    /// Whether the batch must wait for its session's earlier batches before it
    /// goes out (they went out with another map).
    pub fn must_wait(&self) -> bool {
        self.wait
    }

    /// Waits until every earlier batch of the session is settled (see the module
    /// docs).
    pub async fn earlier_settled(&mut self) {
        let _ = tokio::time::timeout(WAIT_AT_MOST, self.wait_earlier()).await;
        self.wait = false;
    }

    /// After [`Ticket::earlier_settled`]: the batch goes out with map `generation`
    /// (later batches with the same map need not wait for it).
    pub fn goes_out_with(&self, generation: u64) {
        if let Some(s) = self.orders.lock().get_mut(&self.session) {
            s.generation = generation;
        }
    }

    async fn wait_earlier(&self) {
        loop {
            let notify = {
                let mut sessions = self.orders.lock();
                let Some(s) = sessions.get_mut(&self.session) else {
                    return;
                };
                if s.unsettled.first().is_none_or(|&f| f >= self.n) {
                    return;
                }
                s.settled.get_or_insert_with(Default::default).clone()
            };
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            // Settled between the check and `enable`: look again.
            let done = self
                .orders
                .lock()
                .get(&self.session)
                .is_none_or(|s| s.unsettled.first().is_none_or(|&f| f >= self.n));
            if done {
                return;
            }
            woken.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut sessions = self.orders.lock();
        let Some(s) = sessions.get_mut(&self.session) else {
            return;
        };
        let oldest = s.unsettled.first() == Some(&self.n);
        if let Ok(i) = s.unsettled.binary_search(&self.n) {
            s.unsettled.remove(i);
        }
        let wake = if oldest { s.settled.clone() } else { None };
        if s.unsettled.is_empty() {
            sessions.remove(&self.session);
        }
        drop(sessions);
        if let Some(w) = wake {
            w.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_map_never_waits_and_settled_sessions_are_forgotten() {
        let o = Arc::new(Orders::default());
        let a = o.begin(1, 5);
        let b = o.begin(1, 5);
        assert!(!a.must_wait() && !b.must_wait());
        assert_eq!(o.sessions(), 1);
        drop(b);
        drop(a);
        assert_eq!(o.sessions(), 0);
        // Nothing unsettled: a new map does not wait.
        assert!(!o.begin(1, 6).must_wait());
    }

    #[test]
    fn a_new_map_waits_while_an_earlier_batch_is_unsettled() {
        let o = Arc::new(Orders::default());
        let a = o.begin(1, 5);
        assert!(o.begin(1, 6).must_wait());
        // Another session is not held by session 1's batches.
        assert!(!o.begin(2, 6).must_wait());
        drop(a);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_for_every_earlier_one_and_no_later_one() {
        let o = Arc::new(Orders::default());
        let a = o.begin(1, 5);
        let b = o.begin(1, 5);
        let mut c = o.begin(1, 6);
        assert!(c.must_wait());
        let d = o.begin(1, 6);
        let waiting = tokio::spawn(async move {
            c.earlier_settled().await;
            c.goes_out_with(6);
            c
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished());
        drop(b); // settled out of order: `a` is still unsettled
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished());
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken when the last earlier batch settled")
            .expect("the waiting task ran");
        assert!(!c.must_wait());
        // `d`, later, never held `c` back; a batch after them with map 6 goes at once.
        assert!(!o.begin(1, 6).must_wait());
        drop((c, d));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_bounded() {
        let o = Arc::new(Orders::default());
        let _stuck = o.begin(1, 5);
        let mut t = o.begin(1, 6);
        let started = tokio::time::Instant::now();
        t.earlier_settled().await;
        assert_eq!(started.elapsed(), WAIT_AT_MOST);
    }
}
