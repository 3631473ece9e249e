//! What every client session shares: the configuration, the router and the
//! proxy-wide counters.

use std::sync::Arc;

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
    /// The address the listener is bound to.
    pub local_addr: std::net::SocketAddr,
}
