//! The RESP wire protocol: the client request parser and reply framing.

pub mod reply;
pub mod request;
