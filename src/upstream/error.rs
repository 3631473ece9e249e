//! Upstream failures, carrying whether the command may have reached Redis.

/// Why a command sent to an upstream did not get a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened; the command was never sent.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// `host:port` of the upstream.
        addr: String,
        /// What went wrong (refused, timed out, DNS …).
        reason: String,
    },
    /// The proxy itself ran out of file descriptors, socket buffers or memory
    /// opening the connection (EMFILE, ENFILE, ENOBUFS, ENOMEM); the command was
    /// never sent, and the upstream is not at fault.
    #[error("proxy out of file descriptors (or socket buffers or memory): cannot open a connection to {addr}: {reason}; not counted against the upstream")]
    LocalResources {
        /// `host:port` of the upstream.
        addr: String,
        /// The operating system's error.
        reason: String,
    },
    /// The upstream answered AUTH or SELECT with an error; the command was never sent.
    #[error("upstream {addr} rejected the connection setup: {reply}")]
    Handshake {
        /// `host:port` of the upstream.
        addr: String,
        /// The error reply, without its leading `-`.
        reply: String,
    },
    /// The connection broke. If `sent`, the command may have run.
    #[error("connection to {addr} was lost{}", if *sent { " (the command may have been executed)" } else { " before the command was sent" })]
    Lost {
        /// `host:port` of the upstream.
        addr: String,
        /// Whether any byte of the command may have reached the upstream.
        sent: bool,
    },
    /// No reply within the command timeout; the connection was dropped (its
    /// position in the reply stream is unknown) and the command may have run.
    #[error("no reply from {addr} within {after:?} (the command may have been executed)")]
    Timeout {
        /// `host:port` of the upstream.
        addr: String,
        /// The timeout that expired.
        after: std::time::Duration,
    },
    /// The database's circuit breaker refused a retry; nothing was sent.
    #[error("circuit open")]
    CircuitOpen {
        /// Time until the breaker lets trial traffic through (`None`: forced open).
        retry_in: Option<std::time::Duration>,
    },
    /// The upstream sent bytes that are not RESP; the connection was dropped.
    #[error("upstream {addr} sent a malformed reply")]
    Protocol {
        /// `host:port` of the upstream.
        addr: String,
    },
    /// The upstream answered the proxy's own `PING` (a health probe) with an error
    /// that says it is not serving (`-LOADING`, `-MASTERDOWN`: see
    /// [`super::is_not_serving`]); no client's command was sent.
    #[error("upstream {addr} answered PING with -{reply}")]
    NotServing {
        /// `host:port` of the upstream.
        addr: String,
        /// The error reply, without its leading `-` and line end.
        reply: String,
    },
}

impl UpstreamError {
    /// A failed TCP connect to `addr`: [`UpstreamError::LocalResources`] when the
    /// proxy ran out of a local resource, [`UpstreamError::Connect`] otherwise.
    pub fn connect_io(addr: &str, e: &std::io::Error) -> UpstreamError {
        if crate::limits::is_local_exhaustion(e) {
            UpstreamError::LocalResources {
                addr: addr.to_string(),
                reason: e.to_string(),
            }
        } else {
            UpstreamError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            }
        }
    }

    /// Whether this failure tells something about the upstream, so that the
    /// circuit breaker and the health state should hear of it. The proxy's own
    /// exhaustion does not: counting it would take a healthy database down for
    /// everyone because this process is short of descriptors (as `-BUSY` is not
    /// counted, see [`super::is_not_serving`]). Nor does a connection setup that a
    /// busy server refused (`-BUSY` to its `SELECT`, while one client's script runs
    /// past `busy-reply-threshold`): the server is up, and the client gets that
    /// `-BUSY` as Redis's own reply.
    pub fn counts_as_failure(&self) -> bool {
        !matches!(self, UpstreamError::LocalResources { .. }) && !self.is_busy()
    }

    /// Whether a busy server refused the connection setup (`-BUSY` to its
    /// `SELECT`): it is up, running one client's long script.
    pub fn is_busy(&self) -> bool {
        matches!(self, UpstreamError::Handshake { reply, .. } if reply.starts_with("BUSY "))
    }

    /// Whether trying again soon may succeed. A rejected AUTH/SELECT is a
    /// configuration problem: retrying only adds load and delay. A server still
    /// loading its data (`-LOADING` to the setup's PING) will be ready soon.
    pub fn is_transient(&self) -> bool {
        match self {
            UpstreamError::Handshake { reply, .. } => reply.starts_with("LOADING"),
            UpstreamError::CircuitOpen { .. } => false,
            _ => true,
        }
    }

    /// Whether the command may have reached (and been executed by) Redis.
    pub fn may_have_run(&self) -> bool {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::LocalResources { .. }
            | UpstreamError::Handshake { .. }
            | UpstreamError::CircuitOpen { .. }
            | UpstreamError::NotServing { .. } => false,
            UpstreamError::Lost { sent, .. } => *sent,
            UpstreamError::Protocol { .. } | UpstreamError::Timeout { .. } => true,
        }
    }
}
