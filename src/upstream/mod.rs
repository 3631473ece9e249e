//! Upstream Redis connections: setup (AUTH/SELECT), shared multiplexed connections,
//! exclusive pooled connections for stateful commands,
//! and the errors that say whether a command may have reached Redis.

pub mod connect;
pub mod dedicated;
pub mod error;
pub mod mux;

pub use error::UpstreamError;
