//! The upstream reply framer (`protocol::reply::Scanner`, as `upstream::frames`
//! drives it): one piece vs random pieces, parts of large replies passed on, and
//! frame boundaries against redis-protocol's RESP2 and RESP3 decoders. The
//! properties are in `tests/fuzz_props/mod.rs`, shared with `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzz_props/mod.rs"]
mod props;

fuzz_target!(|data: &[u8]| props::check_replies(data));
