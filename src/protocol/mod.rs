//! The RESP wire protocol: the client request parser and reply framing.
//!
//! Both are resumable: [`request::Parser`] and [`reply::Scanner`] keep their place in
//! a frame that is not complete yet, so a frame arriving over many reads costs time
//! linear in its size. The one-shot [`request::parse`] and [`reply::scan`] start from
//! scratch on every call.

pub mod reply;
pub mod request;
pub mod value;
