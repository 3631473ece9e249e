//! A client's memory, bounded: backpressure, Redis's output buffer limits and
//! `maxmemory-clients`.
//!
//! * **Backpressure** (always on). Replies waiting to be written to the client
//!   (the outbox) are its output buffer. Past `limits.client_reply_buffer` (4 MiB)
//!   the session stops executing the client's requests until it has caught up
//!   (it reads on, without executing, up to `limits.client_read_ahead`, 64 MiB, so
//!   that a client that writes a whole pipeline before reading any reply does not
//!   wait on itself: Redis reads such a pipeline whole); and
//!   it keeps about 512 KiB of replies in flight upstream: requests go while the
//!   expected size of their replies fits, learnt from the last replies (apart for
//!   batches of reads, whose values may be of any size, and batches with a write,
//!   whose replies are mostly small; a read starts out expected at 64 KiB). Replies
//!   already in flight still arrive and are buffered — the shared connection never
//!   waits for one client — so a client that does not read costs about the buffer
//!   plus what was in flight plus the read-ahead, whatever it sends. The estimate
//!   can be fooled (many small replies, then large ones): the count in flight is
//!   capped as well, and
//!   `client_output_buffer_limit` / `max_client_memory` close such a client.
//! * **`client_output_buffer_limit`** (off by default, as Redis's `normal` class):
//!   past `hard` bytes, or past `soft` for `soft_seconds`, the client is closed.
//! * **`max_client_memory`** (off by default, as `maxmemory-clients`): the sum of
//!   every client's buffers is kept in the client table; past it, the client using
//!   the most is closed.
//!
//! Memory is published to the client table when it changed by [`MEMORY_STEP`], so
//! the common case (small replies) pays a comparison per loop, no atomic.

use bytes::BytesMut;
use tokio::time::Instant;

use super::{Session, HELD_BACK_READ_LIMIT, IN_FLIGHT_BYTES, MAX_IN_FLIGHT, MEMORY_STEP};
use crate::stats;

/// A batch on its way upstream, as the in-flight bound counts it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Flight {
    count: usize,
    /// The bytes its replies were expected to weigh.
    expected: usize,
    /// Which estimate it teaches: 0 for reads only, 1 with a write.
    class: usize,
}

impl Session {
    /// Bytes of replies a session may have in flight upstream.
    fn in_flight_budget(&self) -> usize {
        IN_FLIGHT_BYTES.min(self.live.config.limits.client_reply_buffer)
    }

    /// Whether no more requests may go upstream while `count` more (reads only:
    /// `readonly`) are about to; one always may when none is in flight.
    pub(super) fn in_flight_full(&self, count: u32, readonly: bool) -> bool {
        let n = self.inflight + count as usize;
        let expected = count as usize * self.estimate[usize::from(!readonly)];
        n > 0 && (n >= MAX_IN_FLIGHT || self.in_flight_bytes + expected >= self.in_flight_budget())
    }

    /// Bytes of requests that may be read ahead while held back (`pressed`: by
    /// backpressure, not only by a request that must be answered first).
    pub(super) fn read_ahead(&self, pressed: bool) -> usize {
        let mut bound = if self.waits_on_exclusive() {
            HELD_BACK_READ_LIMIT
        } else {
            0
        };
        if pressed {
            let limit = self.live.config.limits.client_read_ahead;
            // (Before AUTH, no more than while a command blocks: Redis's own
            // limits for such clients are tight.)
            let limit = match self.state.authenticated {
                true => limit,
                false => limit.min(HELD_BACK_READ_LIMIT),
            };
            bound = bound.max(limit);
        }
        bound
    }

    /// The client's replies pile up: stop executing its requests.
    pub(super) fn over_budget(&self) -> bool {
        self.outbox.len() >= self.live.config.limits.client_reply_buffer
            || self.in_flight_full(0, true)
    }

    /// A batch of `count` requests goes upstream.
    pub(super) fn depart(&mut self, count: u32, readonly: bool) -> Flight {
        let class = usize::from(!readonly);
        let flight = Flight {
            count: count as usize,
            expected: count as usize * self.estimate[class],
            class,
        };
        self.inflight += flight.count;
        self.in_flight_bytes += flight.expected;
        flight
    }

    /// The first `bytes` of a batch's replies arrived; `whole`: all of them (a
    /// large reply passed on in parts is in flight until its last part). The
    /// estimate follows the replies: up at once, down to an eighth at a time.
    pub(super) fn arrive(&mut self, flight: &Flight, bytes: usize, whole: bool) {
        let per = bytes / flight.count.max(1);
        let est = &mut self.estimate[flight.class];
        if whole {
            *est = per.max(*est / 8).max(1);
            self.land(flight);
        } else {
            *est = per.max(*est);
        }
    }

    /// A batch is no longer in flight (answered, or failed: then it teaches
    /// nothing).
    pub(super) fn land(&mut self, flight: &Flight) {
        self.inflight = self.inflight.saturating_sub(flight.count);
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(flight.expected);
    }

    /// When the client will have been past the soft output buffer limit for long
    /// enough, if it is past it.
    pub(super) fn soft_deadline(&self) -> Option<Instant> {
        let limit = &self.live.config.limits.client_output_buffer_limit;
        self.soft_since.map(|t| t + limit.soft_seconds)
    }

    /// Checks the output buffer limits and publishes the session's memory (read
    /// buffer and outbox); closes the client past a limit, and the biggest client
    /// when all of them together pass `max_client_memory`.
    pub(super) fn account(&mut self, inbuf: &BytesMut) {
        let limits = &self.live.config.limits;
        let buffered = self.outbox.len();
        let obl = limits.client_output_buffer_limit;
        if obl.hard > 0 && buffered > obl.hard {
            self.close_for_output_buffer("hard", obl.hard);
            return;
        }
        if obl.soft > 0 {
            if buffered > obl.soft {
                let since = *self.soft_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= obl.soft_seconds {
                    self.close_for_output_buffer("soft", obl.soft);
                    return;
                }
            } else {
                self.soft_since = None;
            }
        }
        let memory = self.outbox.memory() + inbuf.capacity();
        if memory.abs_diff(self.published_memory) < MEMORY_STEP {
            return;
        }
        let grew = memory > self.published_memory;
        self.published_memory = memory;
        let total = self.client.set_memory(memory);
        let max = limits.max_client_memory;
        if grew && max > 0 && total > max {
            if let Some(victim) = self.ctx.clients.evict_largest() {
                stats::add(&self.ctx.stats.evicted_clients, 1);
                if self.ctx.clients.may_warn() {
                    tracing::warn!(
                        client = victim.id,
                        peer = %victim.addr,
                        memory = victim.memory,
                        total,
                        max_client_memory = max,
                        "client evicted: the memory of all clients passed max_client_memory"
                    );
                }
            }
        }
    }

    /// Closes the client at once, as Redis does past an output buffer limit.
    fn close_for_output_buffer(&mut self, which: &str, limit: usize) {
        stats::add(&self.ctx.stats.output_buffer_disconnections, 1);
        if self.ctx.clients.may_warn() {
            tracing::warn!(
                session = self.state.id,
                peer = %self.state.peer,
                buffered = self.outbox.len(),
                limit,
                "Client id={} addr={} closed for overcoming of output buffer limits ({which} limit).",
                self.state.id,
                self.state.peer,
            );
        }
        self.queue.clear();
        self.done = true;
    }
}
