//! The client request parser (`protocol::request`): one piece vs random pieces,
//! limits, and multibulk framing against redis-protocol's RESP2 decoder. The
//! properties are in `tests/fuzz_props/mod.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_props/mod.rs"]
mod props;

fuzz_target!(|data: &[u8]| props::check_requests(data));
