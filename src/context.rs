//! What every client session shares: the configuration, the router, the table of
//! clients and the proxy-wide counters.

use std::sync::Arc;

use crate::clients::Clients;
use crate::config::Config;
use crate::router::Router;
use crate::stats::ProxyStats;

/// Shared, read-mostly state of a running proxy.
#[derive(Debug)]
pub struct Context {
    /// The resolved configuration.
    pub config: Arc<Config>,
    /// Databases and their upstreams.
    pub router: Router,
    /// Proxy-wide counters.
    pub stats: ProxyStats,
    /// Every open client session (CLIENT LIST / KILL / UNBLOCK).
    pub clients: Arc<Clients>,
    /// The open-file limit and the `max_clients` in force (see `limits`).
    pub fds: crate::limits::FdLimits,
    /// `PROXY SLOWLOG`.
    pub slowlog: crate::slowlog::SlowLog,
    /// The address the listener is bound to.
    pub local_addr: std::net::SocketAddr,
}
