//! Differential tests of the proxy's two RESP readers:
//! - the reply framer (`protocol::reply::Scanner`) against the `redis-protocol`
//!   crate's RESP2 and RESP3 decoders, on random valid reply streams (nested
//!   arrays, maps, sets, pushes, attributes, bulk, verbatim, big numbers, doubles,
//!   nulls, errors) cut into random pieces: the same frame boundaries;
//! - the request parser (`protocol::request::Parser`) against redis-protocol's
//!   RESP2 decoder on multibulk requests, and against a real `redis-server` on
//!   random RESP-like bytes: the same replies, byte for byte, and the same close.
//!
//! Where redis-protocol and Redis legitimately differ, Redis is the reference; the
//! differences are listed in docs/fuzzing.md and pinned by
//! `documented_differences_with_redis_protocol`.

mod fuzz_props;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{
    Config as PropConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner,
};
use redis_protocol::{resp2, resp3};
use redis_sidecar::config::Limits;
use redis_sidecar::protocol::request::{encode_command, RequestKind};
use support::{proxy_config, start_proxy, RedisServer};

// ---------------------------------------------------------------------------------
// Random valid replies
// ---------------------------------------------------------------------------------

/// A reply, as Redis writes them.
#[derive(Debug, Clone)]
enum Reply {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Vec<u8>),
    /// RESP2 `$-1`.
    NullBulk,
    /// RESP2 `*-1`.
    NullArray,
    Array(Vec<Reply>),
    // RESP3 only:
    Null,
    Double(String),
    Bool(bool),
    Big(String),
    Verbatim(&'static str, Vec<u8>),
    BlobError(Vec<u8>),
    Map(Vec<(Reply, Reply)>),
    Set(Vec<Reply>),
    Push(Vec<Reply>),
    /// Attributes, then the reply they describe.
    Attr(Vec<(Reply, Reply)>, Box<Reply>),
}

fn header(out: &mut Vec<u8>, tag: u8, n: impl std::fmt::Display) {
    out.push(tag);
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn blob(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    header(out, tag, body.len());
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

impl Reply {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => {
                out.push(b'+');
                out.extend_from_slice(s);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Error(s) => {
                out.push(b'-');
                out.extend_from_slice(s);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Int(n) => header(out, b':', n),
            Reply::Bulk(b) => blob(out, b'$', b),
            Reply::NullBulk => out.extend_from_slice(b"$-1\r\n"),
            Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) | Reply::Set(items) | Reply::Push(items) => {
                let tag = match self {
                    Reply::Array(_) => b'*',
                    Reply::Set(_) => b'~',
                    _ => b'>',
                };
                header(out, tag, items.len());
                items.iter().for_each(|i| i.write(out));
            }
            Reply::Null => out.extend_from_slice(b"_\r\n"),
            Reply::Double(d) => header(out, b',', d),
            Reply::Bool(b) => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Reply::Big(n) => header(out, b'(', n),
            Reply::Verbatim(format, body) => {
                header(out, b'=', body.len() + 4);
                out.extend_from_slice(format.as_bytes());
                out.push(b':');
                out.extend_from_slice(body);
                out.extend_from_slice(b"\r\n");
            }
            Reply::BlobError(b) => blob(out, b'!', b),
            Reply::Map(pairs) | Reply::Attr(pairs, _) => {
                header(
                    out,
                    if matches!(self, Reply::Map(_)) {
                        b'%'
                    } else {
                        b'|'
                    },
                    pairs.len(),
                );
                for (k, v) in pairs {
                    k.write(out);
                    v.write(out);
                }
                if let Reply::Attr(_, value) = self {
                    value.write(out);
                }
            }
        }
    }
}

/// A line as Redis writes status and error replies: no `\r`, no `\n`.
fn line() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop_oneof![3 => b' '..=b'~', 1 => Just(b'\t')], 0..16)
}

/// Bulk bodies: any bytes, often CRLFs and RESP type bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            2 => any::<u8>(),
            1 => proptest::sample::select(b"\r\n$*:-+0123456789_,#(=!%~>|".to_vec()),
        ],
        0..40,
    )
}

fn resp2_leaf() -> impl Strategy<Value = Reply> {
    prop_oneof![
        line().prop_map(Reply::Simple),
        line().prop_map(|mut l| {
            l.splice(0..0, b"ERR ".iter().copied());
            Reply::Error(l)
        }),
        any::<i64>().prop_map(Reply::Int),
        body().prop_map(Reply::Bulk),
        Just(Reply::NullBulk),
        Just(Reply::NullArray),
    ]
}

/// Random RESP2 replies, nested up to 4 levels.
fn resp2_reply() -> impl Strategy<Value = Reply> {
    resp2_leaf().prop_recursive(4, 64, 6, |inner| {
        proptest::collection::vec(inner, 0..6).prop_map(Reply::Array)
    })
}

/// Doubles as Redis writes them (`%.17g`, `inf`, `-inf`, `nan`) and other valid forms.
fn double() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |d| d.is_finite())
            .prop_map(|d| format!("{d}")),
        any::<i32>().prop_map(|i| i.to_string()),
        proptest::sample::select(vec!["inf", "-inf", "nan", "1.5e+10", "-2.5e-3", "0", "-0"])
            .prop_map(str::to_string),
    ]
}

/// RESP3 leaves that can be map keys and set members (redis-protocol hashes them).
fn resp3_key() -> impl Strategy<Value = Reply> {
    prop_oneof![
        line().prop_map(Reply::Simple),
        line().prop_map(|mut l| {
            l.splice(0..0, b"ERR ".iter().copied());
            Reply::Error(l)
        }),
        any::<i64>().prop_map(Reply::Int),
        body().prop_map(Reply::Bulk),
        Just(Reply::Null),
        double().prop_map(Reply::Double),
        any::<bool>().prop_map(Reply::Bool),
        (any::<bool>(), "[1-9][0-9]{0,40}").prop_map(|(neg, d)| Reply::Big(if neg {
            format!("-{d}")
        } else {
            d
        })),
        (proptest::sample::select(vec!["txt", "mkd"]), body())
            .prop_map(|(f, b)| Reply::Verbatim(f, b)),
        body().prop_map(Reply::BlobError),
    ]
}

/// Random RESP3 replies, nested up to 4 levels, pushes at the top level only: a
/// push inside another reply is out of band for the scanner (as Redis 7.0 writes
/// messages inside `EXEC`'s array), one of its elements for redis-protocol. (No
/// `$-1`/`*-1`: Redis writes `_` in RESP3, and redis-protocol reads `-1` there as
/// a streamed aggregate.)
fn resp3_reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        4 => resp3_value(),
        1 => proptest::collection::vec(resp3_value(), 0..6).prop_map(Reply::Push),
    ]
}

/// A RESP3 reply other than a push, nested up to 4 levels, with none inside.
fn resp3_value() -> impl Strategy<Value = Reply> {
    resp3_key().prop_recursive(4, 64, 6, |inner| {
        let pairs = || proptest::collection::vec((resp3_key(), inner.clone()), 0..4);
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Reply::Array),
            proptest::collection::vec(resp3_key(), 0..6).prop_map(Reply::Set),
            pairs().prop_map(Reply::Map),
            // redis-protocol attaches attributes to the next frame: not a null,
            // not another attribute.
            (pairs(), inner.clone()).prop_map(|(p, v)| {
                let v = match v {
                    Reply::Null | Reply::Attr(..) => Reply::Simple(b"OK".to_vec()),
                    v => v,
                };
                Reply::Attr(p, Box::new(v))
            }),
        ]
    })
}

/// Serializes `replies` back to back; returns the stream and each frame's end.
fn stream_of(replies: &[Reply]) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut ends = Vec::new();
    for r in replies {
        r.write(&mut out);
        ends.push(out.len());
    }
    (out, ends)
}

/// Cut points from random indexes, sorted, ending at `len`.
fn cuts_at(len: usize, at: &[proptest::sample::Index]) -> Vec<usize> {
    let mut cuts: Vec<usize> = at.iter().map(|i| i.index(len + 1)).collect();
    cuts.push(len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// The frame ends redis-protocol's decoder finds in `stream`.
fn decoder_ends(
    stream: &[u8],
    decode: impl Fn(&[u8]) -> Result<Option<usize>, String>,
) -> Result<Vec<usize>, String> {
    let mut ends = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        match decode(&stream[at..])? {
            Some(n) => {
                at += n;
                ends.push(at);
            }
            None => return Err(format!("incomplete at {at}")),
        }
    }
    Ok(ends)
}

fn resp2_ends(stream: &[u8]) -> Result<Vec<usize>, String> {
    decoder_ends(stream, |b| {
        resp2::decode::decode(b)
            .map(|r| r.map(|(_, n)| n))
            .map_err(|e| e.to_string())
    })
}

fn resp3_ends(stream: &[u8]) -> Result<Vec<usize>, String> {
    decoder_ends(stream, |b| {
        resp3::decode::complete::decode(b)
            .map(|r| r.map(|(_, n)| n))
            .map_err(|e| e.to_string())
    })
}

/// The frame ends the proxy's scanner finds in `stream` fed in pieces ending at
/// `cuts` (and, separately, with parts of frames passed on as they arrive), with
/// every call checked against the one-shot scan; the flags follow the type byte.
fn scanner_ends(stream: &[u8], cuts: &[usize], partial: u64) -> Result<Vec<usize>, TestCaseError> {
    let fed = fuzz_props::replies_fed(stream, cuts, None, true);
    let mut rng = fastrand::Rng::with_seed(partial);
    let parts = fuzz_props::replies_fed(stream, cuts, Some(&mut rng), false);
    prop_assert_eq!(&parts, &fed, "with parts passed on");
    prop_assert_eq!(&fed.end, &Ok(0), "the whole stream is frames");
    let mut ends = Vec::new();
    let mut at = 0;
    for f in &fed.frames {
        prop_assert_eq!(f.is_error, matches!(stream[at], b'-' | b'!'));
        prop_assert_eq!(f.is_push, stream[at] == b'>');
        at += f.len;
        ends.push(at);
    }
    Ok(ends)
}

fn prop_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(prop_config(512))]

    /// RESP2 reply streams: the scanner's boundaries are the serializer's and
    /// redis-protocol's RESP2 (and RESP3) decoder's, in any pieces.
    #[test]
    fn resp2_streams_frame_like_redis_protocol(
        replies in proptest::collection::vec(resp2_reply(), 1..8),
        at in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
        partial in any::<u64>(),
    ) {
        let (stream, ends) = stream_of(&replies);
        prop_assert_eq!(resp2_ends(&stream), Ok(ends.clone()), "redis-protocol resp2");
        let cuts = cuts_at(stream.len(), &at);
        prop_assert_eq!(scanner_ends(&stream, &cuts, partial)?, ends);
        fuzz_props::check_replies(&stream);
    }

    /// RESP3 reply streams, every type: the same boundaries as redis-protocol's
    /// RESP3 decoder, in any pieces.
    #[test]
    fn resp3_streams_frame_like_redis_protocol(
        replies in proptest::collection::vec(resp3_reply(), 1..8),
        at in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
        partial in any::<u64>(),
    ) {
        let (stream, ends) = stream_of(&replies);
        prop_assert_eq!(resp3_ends(&stream), Ok(ends.clone()), "redis-protocol resp3");
        let cuts = cuts_at(stream.len(), &at);
        prop_assert_eq!(scanner_ends(&stream, &cuts, partial)?, ends);
        fuzz_props::check_replies(&stream);
    }

    /// Damaged reply streams: the scanner never rejects, or misframes, a frame
    /// redis-protocol decodes and re-encodes to the same bytes; in pieces it
    /// fails at the same point as in one piece.
    #[test]
    fn damaged_reply_streams_keep_the_properties(
        replies in proptest::collection::vec(resp3_reply(), 1..6),
        damage in proptest::collection::vec((any::<proptest::sample::Index>(), 0u8..4, any::<u8>()), 1..4),
    ) {
        let (mut stream, _) = stream_of(&replies);
        corrupt(&mut stream, &damage);
        fuzz_props::check_replies(&stream);
    }

    /// Multibulk request streams: the parser's requests, in any pieces, are the
    /// arrays of bulk strings redis-protocol's RESP2 decoder finds.
    #[test]
    fn multibulk_requests_frame_like_redis_protocol(
        requests in proptest::collection::vec(proptest::collection::vec(body(), 1..6), 1..8),
        at in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
    ) {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for args in &requests {
            encode_command(args, &mut stream);
            ends.push(stream.len());
        }
        prop_assert_eq!(resp2_ends(&stream), Ok(ends.clone()), "redis-protocol resp2");
        let cuts = cuts_at(stream.len(), &at);
        let fed = fuzz_props::requests_fed(&stream, &cuts, &Limits::default(), true);
        prop_assert_eq!(&fed.end, &Ok(0));
        let mut got_ends = Vec::new();
        let mut at = 0;
        for ((len, kind, args), want) in fed.frames.iter().zip(&requests) {
            prop_assert_eq!(kind, &RequestKind::Multibulk);
            prop_assert_eq!(args, want);
            at += len;
            got_ends.push(at);
        }
        prop_assert_eq!(got_ends, ends);
        fuzz_props::check_requests(&stream);
    }

    /// Damaged request streams (and the RESP-like bytes below): resumption, limits,
    /// and redis-protocol's framing of every canonical multibulk request.
    #[test]
    fn damaged_request_streams_keep_the_properties(
        requests in proptest::collection::vec(proptest::collection::vec(body(), 1..4), 1..4),
        damage in proptest::collection::vec((any::<proptest::sample::Index>(), 0u8..4, any::<u8>()), 1..4),
        noise in resp_like_bytes(),
    ) {
        let mut stream = Vec::new();
        for args in &requests {
            encode_command(args, &mut stream);
        }
        corrupt(&mut stream, &damage);
        fuzz_props::check_requests(&stream);
        fuzz_props::check_requests(&noise);
    }
}

/// Bytes that make parsers take unusual paths.
const SPICY: &[u8] = b"\r\n$*:-+0123456789_,#(=!%~>|? \"'\\x\0";

fn corrupt(buf: &mut Vec<u8>, damage: &[(proptest::sample::Index, u8, u8)]) {
    for (at, how, byte) in damage {
        if buf.is_empty() {
            return;
        }
        let at = at.index(buf.len());
        let spicy = SPICY[usize::from(*byte) % SPICY.len()];
        match how {
            0 => buf[at] = spicy,
            1 => buf.insert(at, spicy),
            2 => {
                buf.remove(at);
            }
            _ => buf[at] = *byte,
        }
    }
}

// ---------------------------------------------------------------------------------
// Where redis-protocol and Redis differ
// ---------------------------------------------------------------------------------

/// What the scanner and redis-protocol's decoders make of some bytes:
/// `Some(len)`, `None` (incomplete) or `Err`, as text.
fn verdicts(bytes: &[u8]) -> (String, String, String) {
    let ours = match redis_sidecar::protocol::reply::scan(bytes) {
        Ok(Some(f)) => format!("{}", f.len),
        Ok(None) => "incomplete".into(),
        Err(_) => "error".into(),
    };
    let show = |r: Result<Option<usize>, String>| match r {
        Ok(Some(n)) => format!("{n}"),
        Ok(None) => "incomplete".into(),
        Err(_) => "error".into(),
    };
    let r2 = show(
        resp2::decode::decode(bytes)
            .map(|r| r.map(|(_, n)| n))
            .map_err(|e| e.to_string()),
    );
    let r3 = show(
        resp3::decode::complete::decode(bytes)
            .map(|r| r.map(|(_, n)| n))
            .map_err(|e| e.to_string()),
    );
    (ours, r2, r3)
}

/// The differences listed in docs/fuzzing.md, as they are: (bytes, scanner,
/// redis-protocol RESP2, redis-protocol RESP3). None is on bytes Redis writes.
#[test]
fn documented_differences_with_redis_protocol() {
    let table: &[(&[u8], &str, &str, &str)] = &[
        // Lengths: redis-protocol parses them with Rust's `parse` (a `+`, leading
        // zeros); Redis writes plain decimal, and the scanner keeps its grammar.
        (b"$+1\r\na\r\n", "error", "8", "8"),
        (b"*01\r\n:1\r\n", "error", "9", "9"),
        // A simple string with a bare `\n`: Redis never writes one (it replaces
        // newlines in status and error lines); the scanner wants CRLF line ends.
        (b"+a\nb\r\n", "error", "6", "6"),
        // Values of lines are not checked by the scanner, which only frames.
        (b":abc\r\n", "6", "error", "error"),
        (b"#x\r\n", "4", "error", "error"),
        (b",x\r\n", "4", "error", "error"),
        (b"=3\r\nabc\r\n", "9", "error", "error"),
        // Negative lengths other than -1: the scanner reads them as empty.
        (b"*-5\r\n", "5", "error", "error"),
        (b"!-1\r\n", "5", "error", "error"),
        // `-1` (RESP2 null) means a streamed aggregate to redis-protocol's RESP3
        // decoder, which then refuses it as a complete frame.
        (b"*-1\r\n", "5", "5", "error"),
        (b"$-1\r\n", "5", "5", "error"),
        // RESP3 streamed strings and aggregates: Redis never sends them; the
        // scanner refuses them.
        (b"*?\r\n:1\r\n.\r\n", "error", "error", "error"),
        (b"$?\r\n;1\r\na\r\n;0\r\n", "error", "error", "error"),
        // A chunk of a streamed string on its own is a frame to redis-protocol's
        // RESP3 decoder (found by the reply_framer fuzz target).
        (b";3\r\nabc\r\n", "error", "error", "9"),
        // Aggregates as map keys and set members, and attributes before a null or
        // another attribute: valid RESP3, refused by redis-protocol.
        (b"%1\r\n*1\r\n:1\r\n:2\r\n", "16", "error", "error"),
        (b"~1\r\n*0\r\n", "8", "error", "error"),
        (b"|1\r\n+a\r\n+b\r\n_\r\n", "15", "error", "error"),
        // A push where a map's value goes: one of its elements to redis-protocol
        // (which then drops it with its duplicate key), out of band for the
        // scanner, as Redis 7.0 writes pushes inside a reply (found in session 42).
        (
            b"%2\r\n_\r\n:1\r\n_\r\n>1\r\n:2\r\n",
            "incomplete",
            "error",
            "22",
        ),
        (
            b"|1\r\n+a\r\n+b\r\n|1\r\n+c\r\n+d\r\n:1\r\n",
            "28",
            "error",
            "error",
        ),
    ];
    for (bytes, ours, r2, r3) in table {
        assert_eq!(
            verdicts(bytes),
            (ours.to_string(), r2.to_string(), r3.to_string()),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

// ---------------------------------------------------------------------------------
// Requests: the proxy against redis-server
// ---------------------------------------------------------------------------------

/// Pieces of RESP-like input: type bytes, digits, signs, big numbers, negative
/// zeros, leading zeros, spaces, quotes for inline commands, whole requests.
fn token() -> impl Strategy<Value = Vec<u8>> {
    let pieces: &[&[u8]] = &[
        b"*",
        b"$",
        b"*",
        b"$",
        b"0",
        b"1",
        b"2",
        b"3",
        b"4",
        b"9",
        b"-",
        b"+",
        b"\r\n",
        b"\r\n",
        b"\r",
        b"\n",
        b" ",
        b"\t",
        b"\"",
        b"'",
        b"\\",
        b"\\x41",
        b"x",
        b"-0",
        b"00",
        b"01",
        b"-1",
        b"2147483647",
        b"2147483648",
        b"536870912",
        b"536870913",
        b"9223372036854775807",
        b"9223372036854775808",
        b"-9223372036854775809",
        b"18446744073709551616",
        b"PING",
        b"ECHO",
        b"ping",
        b"echo",
        b"PING\r\n",
        b"ECHO \"a b\"\r\n",
        b"ECHO 'x'y\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"*2\r\n$4\r\nECHO\r\n$3\r\na\r\n\r\n",
        b"*-0\r\n",
        b"$-0\r\n",
        b"*0\r\n",
        b"*-1\r\n",
        b"$4\r\nPING\r\n",
        b"*2\r\n$4\r\nECHO\r\n",
    ];
    prop_oneof![
        8 => proptest::sample::select(pieces.to_vec()).prop_map(<[u8]>::to_vec),
        1 => any::<u8>().prop_map(|b| vec![b]),
    ]
}

/// A multibulk request for PING or ECHO whose count and lengths may be odd.
fn odd_request() -> impl Strategy<Value = Vec<u8>> {
    let len = || {
        prop_oneof![
            4 => Just(None),
            1 => proptest::sample::select(vec![
                "-0", "+1", "01", "-1", "-2", " 1", "1 ", "", "x", "2147483648",
                "9223372036854775808", "0x1",
            ])
            .prop_map(Some),
        ]
    };
    (any::<bool>(), len(), len(), len(), "[a-z ]{0,6}").prop_map(|(echo, count, l1, l2, arg)| {
        let name: &[u8] = if echo { b"ECHO" } else { b"PING" };
        let n = if echo { 2 } else { 1 };
        let mut out = Vec::new();
        let count = count.map(str::to_string).unwrap_or(n.to_string());
        out.extend_from_slice(format!("*{count}\r\n").as_bytes());
        let l1 = l1.map(str::to_string).unwrap_or("4".into());
        out.extend_from_slice(format!("${l1}\r\n").as_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(b"\r\n");
        if echo {
            let l2 = l2.map(str::to_string).unwrap_or(arg.len().to_string());
            out.extend_from_slice(format!("${l2}\r\n{arg}\r\n").as_bytes());
        }
        out
    })
}

/// Random RESP-like bytes: tokens, odd requests, or both.
fn resp_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(token(), 1..24).prop_map(|t| t.concat()),
        proptest::collection::vec(odd_request(), 1..4).prop_map(|t| t.concat()),
        (
            proptest::collection::vec(odd_request(), 0..3),
            proptest::collection::vec(token(), 1..12)
        )
            .prop_map(|(a, b)| [a.concat(), b.concat()].concat()),
    ]
}

/// Sends `bytes` on a new connection and reads what comes back: until the peer
/// closes (`true`), or until at least `want` bytes arrived and then nothing more
/// for `quiet`; at most 2 s.
async fn exchange(addr: SocketAddr, bytes: &[u8], want: usize, quiet: Duration) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return (out, false);
        }
        let wait = if out.len() >= want {
            quiet
        } else {
            deadline - now
        };
        match tokio::time::timeout(wait.min(deadline - now), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Random RESP-like bytes sent to redis-server and to the proxy get the same reply
/// bytes and the same close: the proxy's parser accepts exactly what Redis
/// accepts, and a protocol error is Redis's own, after which both close.
#[test]
fn random_requests_are_answered_like_redis_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let redis = RedisServer::start();
    let proxy = rt.block_on(start_proxy(proxy_config(&redis)));
    let (direct, proxied) = (redis.addr(), proxy.local_addr());
    let started = Instant::now();
    // A fixed seed, so CI is repeatable; DIFFERENTIAL_SEED=<n> explores others
    // (`random`: a new one each run, printed on failure).
    let seed = match std::env::var("DIFFERENTIAL_SEED").as_deref() {
        Ok("random") => fastrand::u64(..),
        Ok(n) => n.parse().expect("DIFFERENTIAL_SEED: a number or `random`"),
        Err(_) => 0x5eed_0009,
    };
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        PropConfig {
            cases: 300,
            failure_persistence: None,
            max_shrink_iters: 200,
            ..PropConfig::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let result = runner.run(&resp_like_bytes(), |input| {
        // Redis answers within microseconds: what it sends in the first 50 ms of
        // quiet is its answer. The proxy gets as long as it needs for as many
        // bytes, then 50 ms more to show it sends nothing else; a difference is
        // checked again with 500 ms, so a slow moment is not a failure.
        let mut quiet = Duration::from_millis(50);
        loop {
            let (want, want_closed) = rt.block_on(exchange(direct, &input, 0, quiet));
            let (got, got_closed) = rt.block_on(exchange(proxied, &input, want.len(), quiet));
            if (&got, got_closed) == (&want, want_closed) {
                return Ok(());
            }
            if quiet >= Duration::from_millis(500) {
                prop_assert_eq!(
                    (show(&got), got_closed),
                    (show(&want), want_closed),
                    "input {:?}",
                    show(&input)
                );
            }
            quiet = Duration::from_millis(500);
        }
    });
    rt.block_on(proxy.shutdown());
    if let Err(e) = result {
        panic!("{e} (DIFFERENTIAL_SEED={seed})");
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
}

/// Session 42's CI: a damaged stream where a map's duplicate key made
/// redis-protocol drop the push that was its value, which the scanner takes out
/// of band (as Redis 7.0 writes pushes inside a reply); the frames' lengths
/// differ for that reason only, and the property leaves such frames out.
#[test]
fn a_push_dropped_with_a_duplicate_key_is_not_a_difference() {
    let stream = b"%2\r\n_\r\n:1\r\n_\r\n>1\r\n:2\r\n:3\r\n";
    assert_eq!(
        verdicts(stream),
        ("26".to_string(), "error".to_string(), "22".to_string())
    );
    fuzz_props::check_replies(stream);
}
