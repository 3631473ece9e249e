//! The session while subscribed: requests go to the subscriber connection, every
//! frame from it is streamed back in arrival order, and the proxy's own replies
//! wait behind a barrier so they never overtake a confirmation.

use bytes::Bytes;

use super::queue::Pending;
use super::Session;
use crate::command::ArgList;
use crate::protocol::reply;
use crate::protocol::request::encode_command;
use crate::upstream::pubsub::{self, End};

impl Session {
    /// A frame (or the end) of the subscriber connection's stream.
    pub(super) fn on_pubsub_frame(&mut self, f: Result<Bytes, End>) {
        let frame = match f {
            Ok(frame) => frame,
            Err(end) => {
                if end == End::Overflow {
                    tracing::warn!(
                        session = self.state.id,
                        peer = %self.state.peer,
                        limit = self.live.config.limits.pubsub_buffer_limit,
                        "disconnecting slow subscriber: pub/sub output buffer limit reached"
                    );
                } else {
                    // The client's subscriptions are gone with the connection; as
                    // with Redis itself, the client's connection closes, so its
                    // library reconnects and subscribes again.
                    tracing::info!(
                        session = self.state.id,
                        "subscriber upstream connection closed; closing the client"
                    );
                }
                self.leave_pubsub();
                self.queue.clear();
                self.done = true;
                return;
            }
        };
        let Some(s) = self.mode.subscribed() else {
            return;
        };
        if s.barrier.as_ref() == Some(&frame) {
            // Every reply to what the client sent before is in the queue.
            s.barrier = None;
            s.barrier_passed = true;
            return;
        }
        let mut last = false;
        if let Some(c) = pubsub::confirmation(&frame) {
            s.counts[c.shard as usize] = c.count;
            // No subscriptions left and nothing else in flight on the connection:
            // back to normal request/reply.
            last = !c.subscribe && s.counts == [0, 0] && s.after_unsubscribe == 0;
        }
        if last {
            self.leave_pubsub();
        }
        let frame = match &self.state.db.config.upstream.key_prefix {
            None => frame,
            Some(p) => match super::prefix::pubsub_frame(p, frame) {
                Some(f) => f,
                // A notification about another database's key.
                None => return,
            },
        };
        self.queue.push_back(Pending::Ready(frame));
    }

    /// Writes a request to the subscriber connection; `unsubscribes`: it is an
    /// UNSUBSCRIBE-family command.
    pub(super) async fn send_to_subscriber(&mut self, bytes: &[u8], unsubscribes: bool) {
        let Some(s) = self.mode.subscribed() else {
            return;
        };
        if unsubscribes {
            s.after_unsubscribe = 0;
        } else {
            s.after_unsubscribe += 1;
        }
        if s.sub.send(bytes).await.is_err() {
            self.on_pubsub_frame(Err(End::Closed));
        }
    }

    /// Before a command the proxy answers itself while subscribed: `true` when it
    /// may be answered now; otherwise a barrier PING (with a tag no client can
    /// guess) is sent on the subscriber connection and the command waits for its
    /// reply, which marks the point where every earlier request has been answered.
    pub(super) async fn barrier_passed(&mut self) -> bool {
        let resp3 = self.state.resp3;
        let Some(s) = self.mode.subscribed() else {
            return true;
        };
        if s.monitor || std::mem::take(&mut s.barrier_passed) {
            // (A MONITOR stream would show the PING to the client.)
            return true;
        }
        let tag = format!("redis-sidecar-barrier-{:016x}", fastrand::u64(..));
        let mut expected = Vec::new();
        if !resp3 {
            // RESP2 subscribers get PING's reply as a pub/sub-style array.
            expected.extend_from_slice(b"*2\r\n$4\r\npong\r\n");
        }
        reply::bulk(&mut expected, tag.as_bytes());
        let mut ping = Vec::new();
        encode_command(&[&b"PING"[..], tag.as_bytes()], &mut ping);
        s.barrier = Some(Bytes::from(expected));
        if s.sub.send(&ping).await.is_err() {
            self.on_pubsub_frame(Err(End::Closed));
        }
        false
    }
}

/// Redis's confirmations for an UNSUBSCRIBE-family command from a client with no
/// subscriptions: one per channel named, or one with a nil channel.
pub(super) fn unsubscribed<L: ArgList + ?Sized>(args: &L, resp3: bool) -> Vec<u8> {
    let kind = args.arg(0).to_ascii_lowercase();
    let mut out = Vec::new();
    let mut one = |channel: Option<&[u8]>| {
        out.extend_from_slice(if resp3 { b">3\r\n" } else { b"*3\r\n" });
        reply::bulk(&mut out, &kind);
        match channel {
            Some(c) => reply::bulk(&mut out, c),
            None => reply::nil(&mut out),
        }
        reply::integer(&mut out, 0);
    };
    if args.count() < 2 {
        one(None);
    } else {
        for i in 1..args.count() {
            one(Some(args.arg(i)));
        }
    }
    out
}
