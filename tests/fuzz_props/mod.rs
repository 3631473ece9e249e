//! The properties of the request parser and the reply framer that the fuzz targets
//! (`fuzz/fuzz_targets/`), the replay of their checked-in corpus
//! (`tests/fuzz_corpus.rs`) and `tests/differential.rs` check. One definition, three
//! users: the fuzz crate includes this file with `#[path]`.
//!
//! Every check takes any bytes and panics when a property is broken:
//! - resumption: the stream fed in one piece and in random pieces (derived from the
//!   bytes themselves, so a run is reproducible) gives the same frames and the same
//!   end (error or incomplete tail) at the same point;
//! - the differential oracle: the `redis-protocol` crate's decoders. Where they
//!   decode a frame that their encoder writes back byte for byte (a canonical
//!   frame, as Redis writes them), the proxy must find exactly the same frame
//!   boundary; where both find a frame, the boundaries must agree. The documented
//!   differences (docs/fuzzing.md) are all on non-canonical bytes.
#![allow(dead_code)]

use std::ops::Range;

use redis_protocol::resp2::types::Resp2Frame;
use redis_protocol::resp3::types::Resp3Frame;
use redis_protocol::{resp2, resp3};
use redis_sidecar::config::Limits;
use redis_sidecar::protocol::reply::{self, Frame, ReplyError, Scanner};
use redis_sidecar::protocol::request::{self, encode_command, Parser, ProtocolError, RequestKind};

/// What a stream turns into: the frames found, then how it ended (`Ok(rest)`: the
/// bytes left over, an incomplete frame; `Err`: the error and where it struck).
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome<T, E> {
    pub frames: Vec<T>,
    pub end: Result<usize, (usize, E)>,
}

/// A seed from the bytes themselves (FNV-1a), so that pieces and limits are a
/// function of the input: a crash reproduces from the input file alone.
pub fn seed(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Piece boundaries for a stream of `len` bytes: 1-byte pieces, or random pieces of
/// 1 to `max` bytes for a random `max`; always ending at `len`.
pub fn random_cuts(rng: &mut fastrand::Rng, len: usize) -> Vec<usize> {
    let max = [1, 2, 3, 7, 16, 64, 1024][rng.usize(..7)];
    let mut cuts = Vec::new();
    let mut at = 0;
    while at < len {
        at = (at + rng.usize(1..=max)).min(len);
        cuts.push(at);
    }
    if cuts.is_empty() {
        cuts.push(0);
    }
    cuts
}

// ---------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------

/// A request as a session sees it: its length, kind and argument bytes.
pub type Parsed = (usize, RequestKind, Vec<Vec<u8>>);

/// Small limits, so that inputs of a few hundred bytes reach every limit.
pub fn small_limits() -> Limits {
    Limits {
        max_bulk_len: 16,
        max_args: 4,
        max_inline_len: 40,
        ..Limits::default()
    }
}

/// The limits a fuzz input is parsed with (chosen by its seed).
pub fn pick_limits(rng: &mut fastrand::Rng) -> Limits {
    match rng.u8(..4) {
        0 => small_limits(),
        1 => Limits::default().before_auth(),
        _ => Limits::default(),
    }
}

/// Parses `stream` with the one-shot `parse`, request after request.
pub fn requests_one_shot(stream: &[u8], limits: &Limits) -> Outcome<Parsed, ProtocolError> {
    let mut args: Vec<Range<usize>> = Vec::new();
    let mut base = 0;
    let mut frames = Vec::new();
    loop {
        let buf = &stream[base..];
        match request::parse(buf, limits, &mut args) {
            Ok(Some(r)) => {
                assert!(r.len > 0 && r.len <= buf.len(), "request length {}", r.len);
                let a = collect_args(buf, &r.kind, &args);
                base += r.len;
                frames.push((r.len, r.kind, a));
            }
            Ok(None) => {
                return Outcome {
                    frames,
                    end: Ok(stream.len() - base),
                }
            }
            Err(e) => {
                return Outcome {
                    frames,
                    end: Err((base, e)),
                }
            }
        }
    }
}

fn collect_args(buf: &[u8], kind: &RequestKind, args: &[Range<usize>]) -> Vec<Vec<u8>> {
    match kind {
        RequestKind::Multibulk => args.iter().map(|r| buf[r.clone()].to_vec()).collect(),
        _ => Vec::new(),
    }
}

/// Feeds `stream` to one resumable `Parser`, the bytes arriving up to each of `cuts`
/// in turn, as a session does (complete requests are dropped from the buffer's
/// start). With `check_each`, every call must also return what the one-shot `parse`
/// returns for the same buffer.
pub fn requests_fed(
    stream: &[u8],
    cuts: &[usize],
    limits: &Limits,
    check_each: bool,
) -> Outcome<Parsed, ProtocolError> {
    let mut parser = Parser::new();
    let mut args: Vec<Range<usize>> = Vec::new();
    let mut want_args: Vec<Range<usize>> = Vec::new();
    let mut base = 0;
    let mut frames = Vec::new();
    for &end in cuts {
        loop {
            let buf = &stream[base..end];
            let got = parser.parse(buf, limits, &mut args);
            if check_each {
                let want = request::parse(buf, limits, &mut want_args);
                assert_eq!(
                    (&got, &args),
                    (&want, &want_args),
                    "resumed parse differs from one-shot parse at {base}..{end}"
                );
            }
            match got {
                Ok(Some(r)) => {
                    assert!(!parser.in_progress());
                    let a = collect_args(buf, &r.kind, &args);
                    base += r.len;
                    frames.push((r.len, r.kind, a));
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(!parser.in_progress());
                    return Outcome {
                        frames,
                        end: Err((base, e)),
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        end: Ok(stream.len() - base),
    }
}

/// Every property of the request parser, for any bytes.
pub fn check_requests(data: &[u8]) {
    let mut rng = fastrand::Rng::with_seed(seed(data));
    let limits = pick_limits(&mut rng);
    let whole = requests_one_shot(data, &limits);
    let cuts = random_cuts(&mut rng, data.len());
    let fed = requests_fed(data, &cuts, &limits, data.len() <= 64);
    match &fed.end {
        // A line without its end yet is "too big" once it passes the limit: in
        // pieces that can happen before its end arrives (Redis too: it depends on
        // what one read brings). Up to that request, the same requests.
        Err((at, e)) if e.0.starts_with("too big") => {
            assert!(
                whole.frames.starts_with(&fed.frames),
                "pieces {cuts:?} vs one piece: {fed:?} / {whole:?}"
            );
            assert_eq!(*at, fed.frames.iter().map(|f| f.0).sum::<usize>());
        }
        _ => assert_eq!(fed, whole, "pieces {cuts:?} vs one piece"),
    }
    check_request_limits(&whole, &limits);
    check_requests_against_redis_protocol(data, &whole, &limits);
}

/// Nothing accepted breaks the limits.
fn check_request_limits(whole: &Outcome<Parsed, ProtocolError>, limits: &Limits) {
    for (_, kind, args) in &whole.frames {
        match kind {
            RequestKind::Multibulk => {
                assert!(!args.is_empty() && args.len() <= limits.max_args);
                assert!(args.iter().all(|a| a.len() <= limits.max_bulk_len));
            }
            RequestKind::Inline(parts) => {
                assert!(!parts.is_empty() && parts.len() <= limits.max_args)
            }
            RequestKind::Empty => {}
        }
    }
}

/// Multibulk framing against `redis-protocol`'s RESP2 decoder: a request the
/// parser accepts is an array of bulk strings there too, with the same length and
/// arguments; an array of bulk strings there, canonical and within the limits, is
/// a request here.
fn check_requests_against_redis_protocol(
    data: &[u8],
    whole: &Outcome<Parsed, ProtocolError>,
    limits: &Limits,
) {
    let mut starts = Vec::new();
    let mut base = 0;
    for f in &whole.frames {
        starts.push((base, Some(f)));
        base += f.0;
    }
    starts.push((base, None));
    if too_deep(data) {
        return;
    }
    for (at, ours) in starts {
        let buf = &data[at..];
        if buf.first() != Some(&b'*') {
            continue;
        }
        let theirs = resp2::decode::decode(buf);
        if let Some((len, RequestKind::Multibulk, args)) = ours {
            // Redis (and the parser) end a header line at its `\r` whatever follows
            // it, and skip a bulk's terminator unchecked; redis-protocol wants CRLF.
            // Canonical requests must decode identically.
            let mut canonical = Vec::new();
            encode_command(args, &mut canonical);
            if canonical[..] != buf[..*len] {
                continue;
            }
            match &theirs {
                Ok(Some((resp2::types::OwnedFrame::Array(items), n))) => {
                    assert_eq!(n, len, "request length vs redis-protocol at {at}");
                    let theirs_args: Vec<Vec<u8>> = items
                        .iter()
                        .map(|i| match i {
                            resp2::types::OwnedFrame::BulkString(b) => b.clone(),
                            other => panic!("redis-protocol: {other:?} in a request at {at}"),
                        })
                        .collect();
                    assert_eq!(&theirs_args, args, "arguments vs redis-protocol at {at}");
                }
                other => panic!("a request redis-protocol does not frame at {at}: {other:?}"),
            }
        }
        if let Ok(Some((frame @ resp2::types::OwnedFrame::Array(items), n))) = &theirs {
            let all_bulk = !items.is_empty()
                && items
                    .iter()
                    .all(|i| matches!(i, resp2::types::OwnedFrame::BulkString(_)));
            let within = items.len() <= limits.max_args
                && items.iter().all(|i| {
                    matches!(i, resp2::types::OwnedFrame::BulkString(b) if b.len() <= limits.max_bulk_len)
                });
            if all_bulk && within && canonical2(frame, &buf[..*n]) {
                assert!(
                    matches!(ours, Some((len, RequestKind::Multibulk, _)) if len == n),
                    "a canonical request ({n} bytes) at {at} is not parsed as one: {ours:?} / {:?}",
                    whole.end
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------

/// Frames `stream` with the one-shot `scan`, reply after reply.
pub fn replies_one_shot(stream: &[u8]) -> Outcome<Frame, ReplyError> {
    let mut base = 0;
    let mut frames = Vec::new();
    loop {
        match reply::scan(&stream[base..]) {
            Ok(Some(f)) => {
                assert!(f.len > 0 && f.len <= stream.len() - base, "frame length");
                base += f.len;
                frames.push(f);
            }
            Ok(None) => {
                return Outcome {
                    frames,
                    end: Ok(stream.len() - base),
                }
            }
            Err(e) => {
                return Outcome {
                    frames,
                    end: Err((base, e)),
                }
            }
        }
    }
}

/// Feeds `stream` to one resumable `Scanner` in pieces, as the upstream reader
/// (`upstream::frames`) does. With `take_partial`, the scanned part of an incomplete
/// frame is sometimes passed on (`Scanner::scanned` / `Scanner::consume`, as
/// `Frames::take_partial` does for large replies): the frame then found is the rest
/// of the reply, and the parts add up to it. With `check_each`, every call on a
/// whole frame's buffer must return what the one-shot `scan` returns.
pub fn replies_fed(
    stream: &[u8],
    cuts: &[usize],
    mut take_partial: Option<&mut fastrand::Rng>,
    check_each: bool,
) -> Outcome<Frame, ReplyError> {
    let mut scanner = Scanner::new();
    let mut base = 0;
    // Bytes of the current reply already passed on.
    let mut passed = 0;
    let mut frames = Vec::new();
    for &end in cuts {
        loop {
            let buf = &stream[base + passed..end];
            let got = scanner.scan(buf);
            if check_each && passed == 0 {
                assert_eq!(
                    got,
                    reply::scan(buf),
                    "resumed scan differs from one-shot scan at {base}..{end}"
                );
            }
            match got {
                Ok(Some(f)) => {
                    assert!(!scanner.in_progress());
                    let whole = Frame {
                        len: passed + f.len,
                        ..f
                    };
                    base += whole.len;
                    passed = 0;
                    frames.push(whole);
                }
                Ok(None) => {
                    if let Some(rng) = take_partial.as_deref_mut() {
                        let n = scanner.scanned(buf.len());
                        assert!(n < buf.len() || buf.is_empty(), "scanned past the buffer");
                        if n > 0 && rng.bool() {
                            let n = rng.usize(1..=n);
                            scanner.consume(n, buf[0]);
                            passed += n;
                        }
                    }
                    break;
                }
                Err(e) => {
                    return Outcome {
                        frames,
                        end: Err((base, e)),
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        end: Ok(stream.len() - base),
    }
}

/// Every property of the reply framer, for any bytes.
pub fn check_replies(data: &[u8]) {
    let mut rng = fastrand::Rng::with_seed(seed(data));
    let whole = replies_one_shot(data);
    let cuts = random_cuts(&mut rng, data.len());
    let fed = replies_fed(data, &cuts, None, data.len() <= 64);
    // The same frames, and an error at the same point. (Not always the same error:
    // a reply starting with `\n` is "line not terminated by CRLF" while no other
    // `\n` has arrived, "unknown type byte" once its line is complete. Every call
    // still returns what the one-shot scan returns for that buffer.)
    assert_eq!(fed.frames, whole.frames, "pieces {cuts:?} vs one piece");
    assert_eq!(
        fed.end.as_ref().map_err(|e| e.0),
        whole.end.as_ref().map_err(|e| e.0),
        "pieces {cuts:?} vs one piece: {:?} / {:?}",
        fed.end,
        whole.end
    );
    let mut take = fastrand::Rng::with_seed(rng.u64(..));
    let cuts = random_cuts(&mut rng, data.len());
    let partial = replies_fed(data, &cuts, Some(&mut take), false);
    // Passing parts on changes nothing but where the bytes go; an error is found
    // at the same point, though the scanner can only tell after the parts left.
    assert_eq!(
        partial.frames, whole.frames,
        "with parts taken, pieces {cuts:?}"
    );
    assert_eq!(
        partial.end.as_ref().map_err(|e| e.0),
        whole.end.as_ref().map_err(|e| e.0),
        "with parts taken, pieces {cuts:?}: {:?} / {:?}",
        partial.end,
        whole.end
    );
    check_replies_against_redis_protocol(data, &whole);
}

/// Deeply nested input would overflow `redis-protocol`'s recursive decoder's stack
/// (the proxy's scanner is iterative): inputs with more than 200 aggregate type
/// bytes are not given to it.
fn too_deep(buf: &[u8]) -> bool {
    buf.iter()
        .filter(|&&b| matches!(b, b'*' | b'%' | b'~' | b'>' | b'|'))
        .count()
        > 200
}

/// A line as Redis writes one: no `\r`, no `\n` (redis-protocol's encoder writes
/// any bytes it is given).
fn is_line(text: &[u8]) -> bool {
    !text.iter().any(|&b| b == b'\r' || b == b'\n')
}

/// Whether Redis could write `frame`: its lines are lines, all the way down (and,
/// in RESP3, it is no streamed-string chunk).
fn lines2(frame: &resp2::types::OwnedFrame) -> bool {
    use resp2::types::OwnedFrame as F;
    match frame {
        F::SimpleString(s) => is_line(s),
        F::Error(s) => is_line(s.as_bytes()),
        F::Array(items) => items.iter().all(lines2),
        _ => true,
    }
}

fn lines3(frame: &resp3::types::OwnedFrame) -> bool {
    use resp3::types::OwnedFrame as F;
    let attrs = |a: &Option<resp3::types::OwnedAttributes>| {
        a.iter().flatten().all(|(k, v)| lines3(k) && lines3(v))
    };
    match frame {
        F::SimpleString { data, attributes } | F::BigNumber { data, attributes } => {
            is_line(data) && attrs(attributes)
        }
        F::SimpleError { data, attributes } => is_line(data.as_bytes()) && attrs(attributes),
        F::Array { data, attributes } | F::Push { data, attributes } => {
            data.iter().all(lines3) && attrs(attributes)
        }
        F::Set { data, attributes } => data.iter().all(lines3) && attrs(attributes),
        F::Map { data, attributes } => {
            data.iter().all(|(k, v)| lines3(k) && lines3(v)) && attrs(attributes)
        }
        F::BlobString { attributes, .. }
        | F::BlobError { attributes, .. }
        | F::VerbatimString { attributes, .. }
        | F::Number { attributes, .. }
        | F::Double { attributes, .. }
        | F::Boolean { attributes, .. } => attrs(attributes),
        F::Null => true,
        // Streamed-string chunks (`;3\r\nabc\r\n`, `;0\r\n`) and an inline HELLO:
        // Redis never writes them as replies.
        F::ChunkedString(_) | F::Hello { .. } => false,
    }
}

/// Whether a push stands inside `frame` (anywhere below its top level).
fn holds_push(frame: &resp3::types::OwnedFrame) -> bool {
    use resp3::types::OwnedFrame as F;
    let push = |f: &F| matches!(f, F::Push { .. }) || holds_push(f);
    let attrs = |a: &Option<resp3::types::OwnedAttributes>| {
        a.iter().flatten().any(|(k, v)| push(k) || push(v))
    };
    match frame {
        F::Array { data, attributes } | F::Push { data, attributes } => {
            data.iter().any(push) || attrs(attributes)
        }
        F::Set { data, attributes } => data.iter().any(push) || attrs(attributes),
        F::Map { data, attributes } => {
            data.iter().any(|(k, v)| push(k) || push(v)) || attrs(attributes)
        }
        F::SimpleString { attributes, .. }
        | F::BigNumber { attributes, .. }
        | F::SimpleError { attributes, .. }
        | F::BlobString { attributes, .. }
        | F::BlobError { attributes, .. }
        | F::VerbatimString { attributes, .. }
        | F::Number { attributes, .. }
        | F::Double { attributes, .. }
        | F::Boolean { attributes, .. } => attrs(attributes),
        F::Null | F::ChunkedString(_) | F::Hello { .. } => false,
    }
}

/// Whether `bytes` are exactly what redis-protocol's RESP2 encoder writes for `frame`,
/// and could come from Redis.
fn canonical2(frame: &resp2::types::OwnedFrame, bytes: &[u8]) -> bool {
    let mut out = vec![0; frame.encode_len(false)];
    lines2(frame)
        && matches!(resp2::encode::encode(&mut out, frame, false), Ok(n) if out[..n] == *bytes)
}

/// Whether `bytes` are exactly what redis-protocol's RESP3 encoder writes for `frame`,
/// and could come from Redis.
fn canonical3(frame: &resp3::types::OwnedFrame, bytes: &[u8]) -> bool {
    let mut out = vec![0; frame.encode_len(false)];
    lines3(frame)
        && matches!(resp3::encode::complete::encode(&mut out, frame, false), Ok(n) if out[..n] == *bytes)
}

/// What redis-protocol's decoders make of the reply at the start of `buf`: the
/// length each one that decodes a frame finds, and whether that frame is canonical.
pub fn redis_protocol_frames(buf: &[u8]) -> Vec<(&'static str, usize, bool)> {
    let mut out = Vec::new();
    if let Ok(Some((f, n))) = resp2::decode::decode(buf) {
        out.push(("resp2", n, canonical2(&f, &buf[..n])));
    }
    if let Ok(Some((f, n))) = resp3::decode::complete::decode(buf) {
        // (A push inside another reply is one of its elements for redis-protocol,
        // out of band for the scanner, as Redis 7.0 writes it inside EXEC's array:
        // not compared.)
        // (Nor a push after attributes, `|0 >1 …`, which the scanner takes for a
        // push inside the attribute frame: Redis sends no attributes.)
        let after_attributes = matches!(f, resp3::types::OwnedFrame::Push { .. }) && buf[0] != b'>';
        // (Nor a frame it did not decode whole that has a `>` in it: a map's
        // duplicate key is dropped with its value, which may be that push,
        // `%2 _ :1 _ >1 :2`; found by `damaged_reply_streams_keep_the_properties`
        // in session 42's CI.)
        let canonical = canonical3(&f, &buf[..n]);
        let lost_push = !canonical && buf[..n].contains(&b'>');
        if !holds_push(&f) && !after_attributes && !lost_push {
            out.push(("resp3", n, canonical));
        }
    }
    out
}

/// Reply framing against `redis-protocol`'s RESP2 and RESP3 decoders, at the start
/// of every frame the scanner found and where it stopped: a canonical frame there
/// is a frame here, of the same length; any frame both find has the same length.
fn check_replies_against_redis_protocol(data: &[u8], whole: &Outcome<Frame, ReplyError>) {
    let mut at = 0;
    let mut ours = Vec::new();
    for f in &whole.frames {
        ours.push((at, Some(f.len)));
        at += f.len;
    }
    ours.push((at, None));
    if too_deep(data) {
        return;
    }
    for (at, len) in ours {
        let buf = &data[at..];
        if buf.is_empty() {
            continue;
        }
        for (decoder, n, canonical) in redis_protocol_frames(buf) {
            if let Some(len) = len {
                assert_eq!(len, n, "frame length at {at} vs redis-protocol {decoder}");
            } else {
                assert!(
                    !canonical,
                    "a canonical frame ({decoder}, {n} bytes) at {at} is not framed: {:?}",
                    whole.end
                );
            }
        }
    }
}
