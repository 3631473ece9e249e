//! Subscriptions before publishes, across clients.
//!
//! Redis runs commands in the order it reads them, so a client that sends
//! `SUBSCRIBE ch` and another that sends `PUBLISH ch m` just after it (without
//! waiting for the confirmation: a test, or two parts of one application) finds the
//! subscriber receiving `m`. Through the proxy the `SUBSCRIBE` first opens the
//! session's subscriber connection (connect, AUTH, SELECT), while the `PUBLISH`
//! goes at once on an open shared connection: it overtook the subscription and the
//! message was lost. So each subscriber connection being opened holds a
//! [`Subscribing`] ticket until Redis's first reply on it (the subscription is in
//! place), and a `PUBLISH` sent meanwhile first waits, within its bound, for the
//! tickets taken before it. Keyspace notifications are published by the writes
//! themselves: while a subscription to a `__keyspace@…`/`__keyevent@…` channel or
//! pattern is being opened, writes wait for it the same way.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// The subscriptions in progress (see the module docs).
#[derive(Debug, Default)]
pub struct PublishOrder {
    /// How many tickets are out (read without the lock by every `PUBLISH`).
    open: AtomicUsize,
    /// How many of them are for keyspace notifications (read by every write).
    keyspace: AtomicUsize,
    inner: Mutex<Inner>,
    /// Told whenever a ticket is returned.
    returned: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// The next ticket's number.
    next: u64,
    /// The numbers of the tickets out.
    out: BTreeSet<u64>,
    /// Those for keyspace notifications.
    keyspace: BTreeSet<u64>,
}

/// A subscription in progress; returned when dropped.
#[derive(Debug)]
pub struct Subscribing {
    order: Arc<PublishOrder>,
    number: u64,
    keyspace: bool,
}

impl Drop for Subscribing {
    fn drop(&mut self) {
        let mut inner = self.order.lock();
        inner.out.remove(&self.number);
        if self.keyspace {
            inner.keyspace.remove(&self.number);
            self.order.keyspace.fetch_sub(1, Relaxed);
        }
        drop(inner);
        self.order.open.fetch_sub(1, Relaxed);
        self.order.returned.notify_waiters();
    }
}

/// Whether a channel or pattern may get keyspace notifications
/// (`__keyspace@0__:k`, `__keyevent@*__:set`, `__key*`).
pub fn keyspace_channel(name: &[u8]) -> bool {
    name.starts_with(b"__key")
}

impl PublishOrder {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ticket for a subscription that begins now (`keyspace`: to keyspace
    /// notifications).
    pub fn begin(self: &Arc<Self>, keyspace: bool) -> Subscribing {
        let mut inner = self.lock();
        let number = inner.next;
        inner.next += 1;
        inner.out.insert(number);
        if keyspace {
            inner.keyspace.insert(number);
            self.keyspace.fetch_add(1, Relaxed);
        }
        self.open.fetch_add(1, Relaxed);
        Subscribing {
            order: self.clone(),
            number,
            keyspace,
        }
    }

    /// Whether any subscription is in progress.
    pub fn busy(&self) -> bool {
        self.open.load(Relaxed) > 0
    }

    /// Whether a subscription to keyspace notifications is in progress.
    pub fn keyspace_busy(&self) -> bool {
        self.keyspace.load(Relaxed) > 0
    }

    /// Waits until every subscription (`keyspace`: to keyspace notifications)
    /// begun before now is in place, or `within` passed (a command is never held
    /// longer than its own bound).
    pub async fn after_subscriptions(&self, keyspace: bool, within: Duration) {
        let before = self.lock().next;
        let _ = tokio::time::timeout(within, async {
            loop {
                let returned = self.returned.notified();
                tokio::pin!(returned);
                returned.as_mut().enable();
                let done = {
                    let inner = self.lock();
                    let set = if keyspace {
                        &inner.keyspace
                    } else {
                        &inner.out
                    };
                    set.first().is_none_or(|&n| n >= before)
                };
                if done {
                    return;
                }
                returned.await;
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_publish_waits_for_the_subscriptions_begun_before_it_only() {
        let order = Arc::new(PublishOrder::default());
        assert!(!order.busy());
        let first = order.begin(false);
        let started = tokio::time::Instant::now();
        let waiter = {
            let order = order.clone();
            tokio::spawn(async move {
                order
                    .after_subscriptions(false, Duration::from_secs(10))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Begun after the publish: not waited for.
        let later = order.begin(false);
        assert!(!waiter.is_finished());
        drop(first);
        waiter.await.expect("waiter");
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert!(order.busy());
        drop(later);
        assert!(!order.busy());
    }

    #[tokio::test(start_paused = true)]
    async fn a_publish_waits_no_longer_than_its_bound() {
        let order = Arc::new(PublishOrder::default());
        let _stuck = order.begin(false);
        let started = tokio::time::Instant::now();
        order
            .after_subscriptions(false, Duration::from_secs(2))
            .await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn writes_wait_only_for_keyspace_subscriptions() {
        let order = Arc::new(PublishOrder::default());
        let plain = order.begin(false);
        assert!(order.busy() && !order.keyspace_busy());
        let started = tokio::time::Instant::now();
        order
            .after_subscriptions(true, Duration::from_secs(2))
            .await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        let keyspace = order.begin(true);
        assert!(order.keyspace_busy());
        drop(keyspace);
        assert!(!order.keyspace_busy() && order.busy());
        drop(plain);
        assert!(!order.busy());
        assert!(keyspace_channel(b"__keyspace@0__:k") && keyspace_channel(b"__key*"));
        assert!(!keyspace_channel(b"news"));
    }
}
