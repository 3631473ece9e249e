//! Upstream Redis connections: setup (AUTH/SELECT), shared multiplexed connections,
//! and the errors that say whether a command may have reached Redis.

pub mod connect;
pub mod error;
pub mod mux;

pub use error::UpstreamError;
