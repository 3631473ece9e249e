//! A client's memory, bounded: backpressure, Redis's output buffer limits and
//! `maxmemory-clients`.
//!
//! * **Backpressure** (always on). Replies waiting to be written to the client
//!   (the outbox) are its output buffer. Past `limits.client_reply_buffer` (4 MiB)
//!   the session stops reading the client's requests until it has caught up; and
//!   it keeps at most that many bytes' worth of replies in flight upstream (the
//!   count of requests in flight is bounded by the buffer over the expected size of
//!   a reply, learnt from the last replies). Replies already in flight still arrive
//!   and are buffered — the shared connection never waits for one client — so a
//!   client that does not read costs about twice the buffer, whatever it sends.
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

use super::{Session, IN_FLIGHT_BYTES, MAX_IN_FLIGHT, MEMORY_STEP};
use crate::stats;

impl Session {
    /// Requests that may be in flight upstream at once.
    pub(super) fn window(&self) -> usize {
        let bytes = IN_FLIGHT_BYTES.min(self.ctx.config.limits.client_reply_buffer);
        (bytes / self.reply_estimate.max(1)).clamp(1, MAX_IN_FLIGHT)
    }

    /// The client's replies pile up: stop reading its requests.
    pub(super) fn over_budget(&self) -> bool {
        self.outbox.len() >= self.ctx.config.limits.client_reply_buffer
            || self.inflight >= self.window()
    }

    /// When the client will have been past the soft output buffer limit for long
    /// enough, if it is past it.
    pub(super) fn soft_deadline(&self) -> Option<Instant> {
        let limit = &self.ctx.config.limits.client_output_buffer_limit;
        self.soft_since.map(|t| t + limit.soft_seconds)
    }

    /// Checks the output buffer limits and publishes the session's memory (read
    /// buffer and outbox); closes the client past a limit, and the biggest client
    /// when all of them together pass `max_client_memory`.
    pub(super) fn account(&mut self, inbuf: &BytesMut) {
        let limits = &self.ctx.config.limits;
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
