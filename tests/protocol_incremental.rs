//! The resumable request parser and reply scanner: fed a stream in any chunks, they
//! give, at every call, exactly what the one-shot `request::parse` / `reply::scan`
//! give for the same buffer (same frames, same arguments, same errors at the same
//! point), and they really resume instead of starting over. Also: odd length
//! headers (`*-0`, `$+3`, `*01`, ...) are answered exactly as redis-server 7.0.15
//! answers them.

use std::ops::Range;

use redis_sidecar::config::Limits;
use redis_sidecar::protocol::reply::{self, Frame, ReplyError, Scanner};
use redis_sidecar::protocol::request::{
    self, encode_command, Parser, ProtocolError, Request, RequestKind,
};

// ---------------------------------------------------------------------------------
// Random frames
// ---------------------------------------------------------------------------------

/// Bytes that make parsers take unusual paths.
const SPICY: &[u8] = b"\r\n$*:-+0123456789_,#(=!%~>|? \"'\\x\0";

fn random_bytes(rng: &mut fastrand::Rng, max: usize, out: &mut Vec<u8>) {
    for _ in 0..rng.usize(0..=max) {
        out.push(if rng.bool() {
            SPICY[rng.usize(..SPICY.len())]
        } else {
            rng.u8(..)
        });
    }
}

/// A line without `\r` or `\n`.
fn random_line(rng: &mut fastrand::Rng, max: usize, out: &mut Vec<u8>) {
    for _ in 0..rng.usize(0..=max) {
        let c = if rng.bool() {
            rng.alphanumeric() as u8
        } else {
            rng.u8(..)
        };
        out.push(if c == b'\r' || c == b'\n' { b' ' } else { c });
    }
}

fn header(out: &mut Vec<u8>, tag: u8, n: i64) {
    out.push(tag);
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A random RESP2/RESP3 reply, nested up to `depth` levels.
fn random_reply(rng: &mut fastrand::Rng, depth: u32, out: &mut Vec<u8>) {
    let kinds: &[u8] = if depth == 0 {
        b"+-:_,#($=!"
    } else {
        b"+-:_,#($=!*%~>|*$"
    };
    let tag = kinds[rng.usize(..kinds.len())];
    match tag {
        b'+' | b'-' | b',' | b'(' => {
            out.push(tag);
            random_line(rng, 12, out);
            out.extend_from_slice(b"\r\n");
        }
        b':' => header(out, b':', rng.i64(..)),
        b'_' => out.extend_from_slice(b"_\r\n"),
        b'#' => out.extend_from_slice(if rng.bool() { b"#t\r\n" } else { b"#f\r\n" }),
        b'$' | b'=' | b'!' => {
            if tag == b'$' && rng.u8(..8) == 0 {
                out.extend_from_slice(b"$-1\r\n");
            } else {
                let mut body = Vec::new();
                random_bytes(rng, 24, &mut body);
                header(out, tag, body.len() as i64);
                out.extend_from_slice(&body);
                out.extend_from_slice(b"\r\n");
            }
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            if tag == b'*' && rng.u8(..8) == 0 {
                out.extend_from_slice(b"*-1\r\n");
                return;
            }
            let n = rng.usize(0..=5);
            header(out, tag, n as i64);
            let items = if matches!(tag, b'%' | b'|') { 2 * n } else { n };
            // The value the attributes describe comes after them.
            let items = items + usize::from(tag == b'|');
            let mut made = 0;
            while made < items {
                let start = out.len();
                random_reply(rng, depth - 1, out);
                // A push inside another reply is out of band, not an element
                // (Redis 7.0 writes messages inside EXEC's array so).
                made += usize::from(out[start] != b'>');
            }
        }
        _ => unreachable!(),
    }
}

/// A random client request: multibulk, inline or empty.
fn random_request(rng: &mut fastrand::Rng, out: &mut Vec<u8>) {
    match rng.u8(..10) {
        0..=5 => {
            let mut args = Vec::new();
            for _ in 0..rng.usize(1..=6) {
                let mut a = Vec::new();
                random_bytes(rng, 20, &mut a);
                args.push(a);
            }
            encode_command(&args, out);
        }
        6..=8 => {
            // Inline: words, quoted strings, escapes, sometimes broken quoting.
            let pieces: &[&[u8]] = &[
                b"SET",
                b"get",
                b"k",
                b" ",
                b"  ",
                b"\t",
                b"\"a b\"",
                b"'c d'",
                b"\"\\x41\\n\"",
                b"'it\\'s'",
                b"\"",
                b"'",
                b"x\"y\"",
                b"\"q\"z",
                b"\r",
                b"\0",
            ];
            let first: &[&[u8]] = &[b"PING", b"SET", b" ", b"\"x\"", b"'y'"];
            out.extend_from_slice(first[rng.usize(..first.len())]);
            for _ in 0..rng.usize(0..8) {
                out.extend_from_slice(pieces[rng.usize(..pieces.len())]);
            }
            out.extend_from_slice(if rng.bool() { b"\r\n" } else { b"\n" });
        }
        _ => {
            let empties: &[&[u8]] = &[b"*0\r\n", b"*-1\r\n", b"*-7\r\n", b"\r\n", b"\n"];
            out.extend_from_slice(empties[rng.usize(..empties.len())]);
        }
    }
}

/// Damages `buf` in one random place (or leaves it alone).
fn corrupt(rng: &mut fastrand::Rng, buf: &mut Vec<u8>) {
    if buf.is_empty() {
        return;
    }
    let at = rng.usize(..buf.len());
    match rng.u8(..4) {
        0 => buf[at] = SPICY[rng.usize(..SPICY.len())],
        1 => buf.insert(at, SPICY[rng.usize(..SPICY.len())]),
        2 => {
            buf.remove(at);
        }
        _ => buf[at] = rng.u8(..),
    }
}

/// Chunk boundaries: random chunk sizes from 1 to `max`, ending at `len`.
fn random_cuts(rng: &mut fastrand::Rng, len: usize, max: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut at = 0;
    while at < len {
        at = (at + rng.usize(1..=max)).min(len);
        cuts.push(at);
    }
    cuts
}

// ---------------------------------------------------------------------------------
// Equivalence drivers
// ---------------------------------------------------------------------------------

/// What a stream turns into: the frames found, then how it ended.
#[derive(Debug, PartialEq, Eq)]
struct Outcome<T, E> {
    frames: Vec<T>,
    end: Result<(), E>,
}

/// Feeds `stream` to one `Scanner`, the bytes arriving up to each of `cuts` in turn,
/// like an upstream reader: complete frames are dropped from the buffer's start.
/// Every call must return what the one-shot `scan` returns for the same buffer.
fn feed_replies(stream: &[u8], cuts: &[usize]) -> Outcome<Frame, ReplyError> {
    let mut scanner = Scanner::new();
    let mut base = 0;
    let mut frames = Vec::new();
    for &end in cuts {
        loop {
            let buf = &stream[base..end];
            let got = scanner.scan(buf);
            let want = reply::scan(buf);
            assert_eq!(
                want,
                reference::reply::scan(buf),
                "against the old scan: {:?}",
                String::from_utf8_lossy(buf)
            );
            assert_eq!(
                got,
                want,
                "stream {:?}, cuts {cuts:?}, buffer {base}..{end}",
                String::from_utf8_lossy(stream)
            );
            match got {
                Ok(Some(f)) => {
                    assert!(!scanner.in_progress());
                    base += f.len;
                    frames.push(f);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(!scanner.in_progress());
                    return Outcome {
                        frames,
                        end: Err(e),
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        end: Ok(()),
    }
}

/// A request as the session sees it: the request, its arguments' bytes.
type Parsed = (Request, Vec<Vec<u8>>);

/// Like `feed_replies`, for requests: every call must return what the one-shot
/// `parse` returns for the same buffer, with the same `args`.
fn feed_requests(stream: &[u8], cuts: &[usize], limits: &Limits) -> Outcome<Parsed, ProtocolError> {
    let mut parser = Parser::default();
    let mut args: Vec<Range<usize>> = Vec::new();
    let mut want_args: Vec<Range<usize>> = vec![0..1; 3]; // stale: parse must clear it
    let mut base = 0;
    let mut frames = Vec::new();
    for &end in cuts {
        loop {
            let buf = &stream[base..end];
            let got = parser.parse(buf, limits, &mut args);
            let want = request::parse(buf, limits, &mut want_args);
            let mut old_args = Vec::new();
            assert_eq!(
                (&want, &want_args),
                (
                    &reference::request::parse(buf, limits, &mut old_args),
                    &old_args
                ),
                "against the old parse: {:?}",
                String::from_utf8_lossy(buf)
            );
            assert_eq!(
                (&got, &args),
                (&want, &want_args),
                "stream {:?}, cuts {cuts:?}, buffer {base}..{end}",
                String::from_utf8_lossy(stream)
            );
            match got {
                Ok(Some(r)) => {
                    assert!(!parser.in_progress());
                    let a = args.iter().map(|r| buf[r.clone()].to_vec()).collect();
                    base += r.len;
                    frames.push((r, a));
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(!parser.in_progress());
                    return Outcome {
                        frames,
                        end: Err(e),
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        end: Ok(()),
    }
}

fn every_split(len: usize, at: usize) -> Vec<usize> {
    if at == 0 || at >= len {
        vec![len]
    } else {
        vec![at, len]
    }
}

fn small_limits() -> Limits {
    Limits {
        max_bulk_len: 16,
        max_args: 4,
        max_inline_len: 40,
        ..Limits::default()
    }
}

// ---------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------

#[test]
fn replies_split_at_every_position_scan_like_one_shot() {
    let mut rng = fastrand::Rng::with_seed(0x5ca1_ab1e);
    for _ in 0..300 {
        let mut stream = Vec::new();
        for _ in 0..rng.usize(1..=3) {
            random_reply(&mut rng, 3, &mut stream);
        }
        let whole = feed_replies(&stream, &[stream.len()]);
        assert_eq!(whole.end, Ok(()));
        assert_eq!(
            whole.frames.iter().map(|f| f.len).sum::<usize>(),
            stream.len()
        );
        for at in 0..=stream.len() {
            assert_eq!(feed_replies(&stream, &every_split(stream.len(), at)), whole);
        }
        let bytewise: Vec<usize> = (1..=stream.len()).collect();
        assert_eq!(feed_replies(&stream, &bytewise), whole);
    }
}

#[test]
fn replies_in_random_chunks_scan_like_one_shot() {
    let mut rng = fastrand::Rng::with_seed(42);
    for round in 0..3000 {
        let mut stream = Vec::new();
        for _ in 0..rng.usize(1..=4) {
            random_reply(&mut rng, 4, &mut stream);
        }
        let whole = feed_replies(&stream, &[stream.len()]);
        assert_eq!(whole.end, Ok(()));
        for max in [1, 3, 7, 64] {
            let cuts = random_cuts(&mut rng, stream.len(), max);
            assert_eq!(feed_replies(&stream, &cuts), whole, "round {round}");
        }
    }
}

#[test]
fn damaged_replies_fail_at_the_same_point() {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut errors = 0;
    for _ in 0..3000 {
        let mut stream = Vec::new();
        for _ in 0..rng.usize(1..=3) {
            random_reply(&mut rng, 3, &mut stream);
        }
        for _ in 0..rng.usize(1..=2) {
            corrupt(&mut rng, &mut stream);
        }
        // Every call is checked against the one-shot scan inside `feed_replies`.
        let whole = feed_replies(&stream, &[stream.len()]);
        errors += whole.end.is_err() as usize;
        for max in [1, 2, 5, 50] {
            let cuts = random_cuts(&mut rng, stream.len(), max);
            let chunked = feed_replies(&stream, &cuts);
            // A frame found in a prefix is found in any longer buffer.
            assert!(
                whole.frames.starts_with(&chunked.frames)
                    || chunked.frames.starts_with(&whole.frames)
            );
        }
        if stream.len() < 200 {
            for at in 0..=stream.len() {
                feed_replies(&stream, &every_split(stream.len(), at));
            }
        }
    }
    assert!(errors > 500, "only {errors} damaged streams were errors");
}

#[test]
fn deep_and_wide_replies_resume() {
    // Deep nesting, fed a byte at a time (the scanner is iterative).
    let mut deep = b"*1\r\n".repeat(20_000);
    deep.extend_from_slice(b"$3\r\nend\r\n");
    let cuts: Vec<usize> = (1..=deep.len()).step_by(3).chain([deep.len()]).collect();
    let o = feed_replies(&deep, &cuts);
    assert_eq!(o.frames.len(), 1);
    assert_eq!(o.frames[0].len, deep.len());

    // A long simple string and a big bulk string arriving in small pieces.
    let mut long = b"+".to_vec();
    long.extend(std::iter::repeat_n(b'a', 100_000));
    long.extend_from_slice(b"\r\n");
    reply::bulk(&mut long, &vec![b'\n'; 100_000]);
    let cuts: Vec<usize> = (1..=long.len()).step_by(97).chain([long.len()]).collect();
    let o = feed_replies(&long, &cuts);
    assert_eq!(o.frames.len(), 2);
    assert_eq!(o.end, Ok(()));
}

#[test]
fn reply_scanner_resumes_instead_of_starting_over() {
    // Deliberately breaks the contract (bytes already scanned are changed between
    // calls) to observe that the scanner does not read them again.
    let mut s = Scanner::new();
    assert_eq!(s.scan(b"*2\r\n$5\r\nhello\r\n$5\r\nwor"), Ok(None));
    let changed = b"*2\r\n$x\r\nhello\r\n$5\r\nworld\r\n";
    assert_eq!(reply::scan(changed), Err(ReplyError("bad bulk length")));
    assert_eq!(s.scan(changed).unwrap().unwrap().len, changed.len());

    // The search for the end of a line resumes too.
    let mut s = Scanner::new();
    assert_eq!(s.scan(b"+hello"), Ok(None));
    let changed = b"+he\nlo\r\n";
    assert_eq!(
        reply::scan(changed),
        Err(ReplyError("line not terminated by CRLF"))
    );
    assert_eq!(s.scan(changed).unwrap().unwrap().len, changed.len());

    // `reset` forgets; a shorter buffer is taken as a new reply.
    let mut s = Scanner::new();
    assert_eq!(s.scan(b"*2\r\n:1\r\n"), Ok(None));
    assert!(s.in_progress());
    s.reset();
    assert!(!s.in_progress());
    assert_eq!(s.scan(b":1\r\n").unwrap().unwrap().len, 4);
    assert_eq!(s.scan(b"*2\r\n:1\r\n"), Ok(None));
    assert_eq!(s.scan(b":1\r\n").unwrap().unwrap().len, 4);
}

#[test]
fn reply_scanner_flags_and_reuse() {
    let mut s = Scanner::new();
    let stream = b"-ERR x\r\n>2\r\n+message\r\n+x\r\n!3\r\nERR\r\n+OK\r\n";
    let mut base = 0;
    let mut flags = Vec::new();
    for end in 1..=stream.len() {
        while let Some(f) = s.scan(&stream[base..end]).unwrap() {
            flags.push((f.is_error, f.is_push));
            base += f.len;
        }
    }
    assert_eq!(
        flags,
        [(true, false), (false, true), (true, false), (false, false)]
    );
}

// ---------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------

#[test]
fn requests_split_at_every_position_parse_like_one_shot() {
    let mut rng = fastrand::Rng::with_seed(0xdead_beef);
    let limits = Limits::default();
    for _ in 0..400 {
        let mut stream = Vec::new();
        for _ in 0..rng.usize(1..=4) {
            random_request(&mut rng, &mut stream);
        }
        let whole = feed_requests(&stream, &[stream.len()], &limits);
        for at in 0..=stream.len() {
            let split = feed_requests(&stream, &every_split(stream.len(), at), &limits);
            // Without damage or limits, the requests found do not depend on the reads
            // (an unbalanced inline quote still fails at its own request).
            assert_eq!(split, whole);
        }
        let bytewise: Vec<usize> = (1..=stream.len()).collect();
        assert_eq!(feed_requests(&stream, &bytewise, &limits), whole);
    }
}

#[test]
fn requests_in_random_chunks_parse_like_one_shot() {
    let mut rng = fastrand::Rng::with_seed(1234);
    let limits = Limits::default();
    let mut multibulk = 0;
    for round in 0..3000 {
        let mut stream = Vec::new();
        for _ in 0..rng.usize(1..=5) {
            random_request(&mut rng, &mut stream);
        }
        let whole = feed_requests(&stream, &[stream.len()], &limits);
        multibulk += whole
            .frames
            .iter()
            .filter(|(r, _)| r.kind == RequestKind::Multibulk)
            .count();
        for max in [1, 3, 7, 64] {
            let cuts = random_cuts(&mut rng, stream.len(), max);
            assert_eq!(
                feed_requests(&stream, &cuts, &limits),
                whole,
                "round {round}"
            );
        }
    }
    assert!(multibulk > 3000);
}

#[test]
fn damaged_requests_and_limits_fail_at_the_same_point() {
    let mut rng = fastrand::Rng::with_seed(99);
    let mut errors = 0;
    for _ in 0..3000 {
        let mut stream = Vec::new();
        for _ in 0..rng.usize(1..=3) {
            random_request(&mut rng, &mut stream);
        }
        for _ in 0..rng.usize(0..=2) {
            corrupt(&mut rng, &mut stream);
        }
        // Small limits make the size checks (which depend on how much is buffered)
        // fire; every call is still checked against the one-shot parse.
        for limits in [Limits::default(), small_limits()] {
            let whole = feed_requests(&stream, &[stream.len()], &limits);
            errors += whole.end.is_err() as usize;
            for max in [1, 2, 5, 50] {
                let cuts = random_cuts(&mut rng, stream.len(), max);
                feed_requests(&stream, &cuts, &limits);
            }
            if stream.len() < 200 {
                for at in 0..=stream.len() {
                    feed_requests(&stream, &every_split(stream.len(), at), &limits);
                }
            }
        }
    }
    assert!(errors > 1000, "only {errors} damaged streams were errors");
}

#[test]
fn long_lines_and_big_bodies_resume() {
    let limits = Limits::default();
    // A long inline line, a long bulk-length line, a big argument, in small pieces.
    let mut stream = b"ECHO ".to_vec();
    stream.extend(std::iter::repeat_n(b'x', 60_000));
    stream.extend_from_slice(b"\r\n");
    encode_command(&[&b"SET"[..], b"k", &vec![b'\r'; 300_000]], &mut stream);
    stream.extend_from_slice(b"*2\r\n$");
    stream.extend(std::iter::repeat_n(b'0', 60_000));
    stream.extend_from_slice(b"\r\n");
    let cuts: Vec<usize> = (1..=stream.len())
        .step_by(101)
        .chain([stream.len()])
        .collect();
    let o = feed_requests(&stream, &cuts, &limits);
    assert_eq!(o.frames.len(), 2);
    assert_eq!(o.frames[1].1[2].len(), 300_000);
    assert_eq!(o.end, Err(ProtocolError("invalid bulk length".into())));
    // Past 64 KiB without a line end.
    let mut stream = b"*1\r\n$".to_vec();
    stream.extend(std::iter::repeat_n(b'1', 70_000));
    let cuts: Vec<usize> = (1..=stream.len())
        .step_by(1000)
        .chain([stream.len()])
        .collect();
    assert_eq!(
        feed_requests(&stream, &cuts, &limits).end,
        Err(ProtocolError("too big bulk count string".into()))
    );
}

#[test]
fn request_parser_resumes_instead_of_starting_over() {
    let limits = Limits::default();
    // Deliberately breaks the contract (bytes already parsed are changed between
    // calls) to observe that the parser does not read them again.
    let mut p = Parser::default();
    let mut args = Vec::new();
    assert_eq!(
        p.parse(b"*2\r\n$3\r\nGET\r\n$1\r\n", &limits, &mut args),
        Ok(None)
    );
    assert_eq!(args, vec![8..11usize]);
    let changed = b"*2\r\n$x\r\nGET\r\n$1\r\nk\r\n";
    assert_eq!(
        request::parse(changed, &limits, &mut Vec::new()),
        Err(ProtocolError("invalid bulk length".into()))
    );
    let r = p.parse(changed, &limits, &mut args).unwrap().unwrap();
    assert_eq!((r.len, r.kind), (changed.len(), RequestKind::Multibulk));
    assert_eq!(args, [8..11, 17..18]);

    // The search for the end of an inline line resumes too.
    let mut p = Parser::default();
    assert_eq!(p.parse(b"PING", &limits, &mut args), Ok(None));
    let changed = b"PI\nG\r\n";
    assert_eq!(
        request::parse(changed, &limits, &mut args)
            .unwrap()
            .unwrap()
            .len,
        3
    );
    assert_eq!(
        p.parse(changed, &limits, &mut args).unwrap().unwrap().len,
        changed.len()
    );
}

#[test]
fn request_parser_recovers_from_misuse() {
    let limits = Limits::default();
    let full = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    // `args` changed between calls: the request is parsed again from its start.
    let mut p = Parser::default();
    let mut args = Vec::new();
    assert_eq!(p.parse(&full[..15], &limits, &mut args), Ok(None));
    args.clear();
    assert_eq!(
        p.parse(full, &limits, &mut args).unwrap().unwrap().len,
        full.len()
    );
    assert_eq!(args, [8..11, 17..18]);
    // A shorter buffer (bytes dropped without `reset`): also parsed from its start.
    assert_eq!(p.parse(&full[..15], &limits, &mut args), Ok(None));
    assert_eq!(
        p.parse(b"*1\r\n$4\r\nPING\r\n", &limits, &mut args)
            .unwrap()
            .unwrap()
            .len,
        14
    );
    assert_eq!(args, vec![8..12usize]);
    // `reset` forgets.
    assert_eq!(p.parse(&full[..15], &limits, &mut args), Ok(None));
    assert!(p.in_progress());
    p.reset();
    assert!(!p.in_progress());
    assert_eq!(
        p.parse(b"PING\r\n", &limits, &mut args)
            .unwrap()
            .unwrap()
            .len,
        6
    );
    assert!(args.is_empty());
}

// ---------------------------------------------------------------------------------
// Odd length headers, as redis-server 7.0.15 answers them
// ---------------------------------------------------------------------------------

/// What the client sees from the proxy for `bytes` sent on a fresh connection (for
/// the requests the parser decides on): the requests accepted, then the error reply
/// the session writes before closing (`-ERR <error>\r\n`), or `None` if it waits.
fn client_view(bytes: &[u8]) -> (Vec<RequestKind>, Option<Vec<u8>>) {
    let limits = Limits::default();
    let mut parser = Parser::default();
    let mut args = Vec::new();
    // Fed whole and byte by byte: both must agree.
    let mut views = Vec::new();
    for bytewise in [false, true] {
        let mut kinds = Vec::new();
        let mut base = 0;
        parser.reset();
        let cuts: Vec<usize> = if bytewise {
            (1..=bytes.len()).collect()
        } else {
            vec![bytes.len()]
        };
        let mut error = None;
        'feed: for end in cuts {
            loop {
                match parser.parse(&bytes[base..end], &limits, &mut args) {
                    Ok(Some(r)) => {
                        base += r.len;
                        kinds.push(r.kind);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e.reply());
                        break 'feed;
                    }
                }
            }
        }
        views.push((kinds, error));
    }
    assert_eq!(views[0], views[1], "{:?}", String::from_utf8_lossy(bytes));
    views.swap_remove(0)
}

/// Bytes sent; requests the parser accepts; the error reply before closing, if any.
type Case = (&'static [u8], &'static [RequestKind], Option<&'static [u8]>);

const INVALID_MULTIBULK: &[u8] = b"-ERR Protocol error: invalid multibulk length\r\n";
const INVALID_BULK: &[u8] = b"-ERR Protocol error: invalid bulk length\r\n";

#[test]
fn signed_and_padded_multibulk_counts_are_answered_like_redis() {
    use RequestKind::{Empty, Multibulk};
    // Measured on redis-server 7.0.15: the raw bytes sent on a fresh connection, and
    // what came back ("closed": Redis closed the connection after the reply; "open":
    // it answered nothing more and kept waiting).
    let cases: &[Case] = &[
        // *-0\r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"*-0\r\n", &[], Some(INVALID_MULTIBULK)),
        // *-0\r\nPING\r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"*-0\r\nPING\r\n", &[], Some(INVALID_MULTIBULK)),
        // *+1\r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"*+1\r\n", &[], Some(INVALID_MULTIBULK)),
        // *+0\r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"*+0\r\n", &[], Some(INVALID_MULTIBULK)),
        // *01\r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"*01\r\n", &[], Some(INVALID_MULTIBULK)),
        // *00\r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"*00\r\n", &[], Some(INVALID_MULTIBULK)),
        // *-00\r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"*-00\r\n", &[], Some(INVALID_MULTIBULK)),
        // *-01\r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"*-01\r\n", &[], Some(INVALID_MULTIBULK)),
        // * 1\r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"* 1\r\n", &[], Some(INVALID_MULTIBULK)),
        // *1 \r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"*1 \r\n", &[], Some(INVALID_MULTIBULK)),
        // *\r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"*\r\n", &[], Some(INVALID_MULTIBULK)),
        // *-\r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"*-\r\n", &[], Some(INVALID_MULTIBULK)),
        // *2147483648\r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"*2147483648\r\n", &[], Some(INVALID_MULTIBULK)),
        // *9223372036854775808\r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"*9223372036854775808\r\n", &[], Some(INVALID_MULTIBULK)),
        // *-9223372036854775809\r\n -> -ERR Protocol error: invalid multibulk length\r\n, closed
        (b"*-9223372036854775809\r\n", &[], Some(INVALID_MULTIBULK)),
        // *-9223372036854775808\r\n -> nothing, open (LLONG_MIN parses; <= 0: ignored)
        (b"*-9223372036854775808\r\n", &[Empty], None),
        // *0\r\n, *-1\r\n, *-5\r\n -> nothing, open
        (b"*0\r\n", &[Empty], None),
        (b"*-1\r\n", &[Empty], None),
        (b"*-5\r\n", &[Empty], None),
        // *0\r\nPING\r\n, *-1\r\nPING\r\n -> +PONG\r\n, open
        (b"*0\r\n*1\r\n$4\r\nPING\r\n", &[Empty, Multibulk], None),
        (b"*-1\r\n*1\r\n$4\r\nPING\r\n", &[Empty, Multibulk], None),
        // *1\r\n$4\r\nPING\r\n*-0\r\n -> +PONG\r\n-ERR Protocol error: invalid multibulk length\r\n, closed
        (
            b"*1\r\n$4\r\nPING\r\n*-0\r\n",
            &[Multibulk],
            Some(INVALID_MULTIBULK),
        ),
    ];
    for (bytes, kinds, error) in cases {
        let (got_kinds, got_error) = client_view(bytes);
        assert_eq!(
            (&got_kinds[..], got_error.as_deref()),
            (*kinds, *error),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn signed_and_padded_bulk_lengths_are_answered_like_redis() {
    use RequestKind::Multibulk;
    // Measured on redis-server 7.0.15 (see above).
    let cases: &[Case] = &[
        // *1\r\n$-0\r\n -> -ERR Protocol error: invalid bulk length\r\n, closed
        (b"*1\r\n$-0\r\n", &[], Some(INVALID_BULK)),
        // *1\r\n$+3\r\nfoo\r\n -> -ERR Protocol error: invalid bulk length\r\n, closed
        (b"*1\r\n$+3\r\nfoo\r\n", &[], Some(INVALID_BULK)),
        // *1\r\n$03\r\nfoo\r\n -> -ERR Protocol error: invalid bulk length\r\n, closed
        (b"*1\r\n$03\r\nfoo\r\n", &[], Some(INVALID_BULK)),
        // *1\r\n$00\r\n\r\n -> -ERR Protocol error: invalid bulk length\r\n, closed
        (b"*1\r\n$00\r\n\r\n", &[], Some(INVALID_BULK)),
        // *1\r\n$-1\r\n -> -ERR Protocol error: invalid bulk length\r\n, closed
        (b"*1\r\n$-1\r\n", &[], Some(INVALID_BULK)),
        // *1\r\n$-5\r\n -> -ERR Protocol error: invalid bulk length\r\n, closed
        (b"*1\r\n$-5\r\n", &[], Some(INVALID_BULK)),
        // *1\r\n$\r\n -> -ERR Protocol error: invalid bulk length\r\n, closed
        (b"*1\r\n$\r\n", &[], Some(INVALID_BULK)),
        // *1\r\n$-\r\n -> -ERR Protocol error: invalid bulk length\r\n, closed
        (b"*1\r\n$-\r\n", &[], Some(INVALID_BULK)),
        // *1\r\n$ 4\r\nPING\r\n -> -ERR Protocol error: invalid bulk length\r\n, closed
        (b"*1\r\n$ 4\r\nPING\r\n", &[], Some(INVALID_BULK)),
        // *1\r\n$536870913\r\n -> -ERR Protocol error: invalid bulk length\r\n, closed
        // (proto-max-bulk-len 512mb, the proxy's default max_bulk_len)
        (b"*1\r\n$536870913\r\n", &[], Some(INVALID_BULK)),
        // *1\r\n$536870912\r\n -> nothing, open (waits for the body)
        (b"*1\r\n$536870912\r\n", &[], None),
        // *2\r\n$4\r\nECHO\r\n$-0\r\n -> -ERR Protocol error: invalid bulk length\r\n, closed
        (b"*2\r\n$4\r\nECHO\r\n$-0\r\n", &[], Some(INVALID_BULK)),
        // *1\r\n$0\r\n\r\n -> -ERR unknown command '', with args beginning with: \r\n, open
        (b"*1\r\n$0\r\n\r\n", &[Multibulk], None),
        // *1\r\n$4\r\nPINGxx -> +PONG\r\n, open (the terminator is not checked)
        (b"*1\r\n$4\r\nPINGxx", &[Multibulk], None),
        // *1\r\n+OK\r\n -> -ERR Protocol error: expected '$', got '+'\r\n, closed
        (
            b"*1\r\n+OK\r\n",
            &[],
            Some(b"-ERR Protocol error: expected '$', got '+'\r\n"),
        ),
    ];
    for (bytes, kinds, error) in cases {
        let (got_kinds, got_error) = client_view(bytes);
        assert_eq!(
            (&got_kinds[..], got_error.as_deref()),
            (*kinds, *error),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Redis 7.0 finds the end of a request line with `strchr`: a count or length line
/// ends at the first `\r`, whatever byte follows it (that byte is skipped
/// unchecked, once it is there); an inline line at the first `\n`; and a NUL byte
/// before either ends the search, so the request never completes (until it is too
/// big). The byte after `*1\r\n` is checked for `$` only once its line is complete,
/// and it is quoted raw. Found by tests/differential.rs
/// (`random_requests_are_answered_like_redis_server`).
#[test]
fn request_lines_end_where_redis_strchr_ends_them() {
    use RequestKind::Multibulk;
    // Measured on redis-server 7.0.15, as above.
    let expected_ff: &[u8] = b"-ERR Protocol error: expected '$', got '\xff'\r\n";
    let too_big_bulk: &[u8] = b"-ERR Protocol error: too big bulk count string\r\n";
    let too_big_mbulk: &[u8] = b"-ERR Protocol error: too big mbulk count string\r\n";
    let cases: &[Case] = &[
        // *1\rX$4\r\nPING\r\n -> +PONG\r\n, open
        (b"*1\rX$4\r\nPING\r\n", &[Multibulk], None),
        // *1\r\n$4\rxPING\r\n -> +PONG\r\n, open
        (b"*1\r\n$4\rxPING\r\n", &[Multibulk], None),
        // *1\r\n$4\r\nPING\rx -> +PONG\r\n, open
        (b"*1\r\n$4\r\nPING\rx", &[Multibulk], None),
        // *1\r\r\n -> nothing, open (waits for the line after `\r\r`)
        (b"*1\r\r\n", &[], None),
        // *1\0\r\n*1\r\n$4\r\nPING\r\n -> nothing, open (the NUL stops strchr)
        (b"*1\0\r\n*1\r\n$4\r\nPING\r\n", &[], None),
        // PING\0x\nPING\r\n -> nothing, open
        (b"PING\0x\nPING\r\n", &[], None),
        // *1\r\n$4\r\nPING\r\n\0PING\n -> +PONG\r\n, open
        (b"*1\r\n$4\r\nPING\r\n\0PING\n", &[Multibulk], None),
        // *1\r\n+OK -> nothing, open (the `+` is checked once its line is complete)
        (b"*1\r\n+OK", &[], None),
        // *1\r\n\r\n -> -ERR Protocol error: expected '$', got ' '\r\n, closed
        (
            b"*1\r\n\r\n",
            &[],
            Some(b"-ERR Protocol error: expected '$', got ' '\r\n"),
        ),
        // *1\r\n\xff\r\n -> -ERR Protocol error: expected '$', got '\xff'\r\n, closed
        (b"*1\r\n\xff\r\n", &[], Some(expected_ff)),
        // A request, then the same: the request is answered, then the error.
        (
            b"*1\r\n$4\r\nPING\r\n*1\r\n\xff\r\n",
            &[Multibulk],
            Some(expected_ff),
        ),
    ];
    for (bytes, kinds, error) in cases {
        let (got_kinds, got_error) = client_view(bytes);
        assert_eq!(
            (&got_kinds[..], got_error.as_deref()),
            (*kinds, *error),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // Long lines (70,000 bytes), measured the same way.
    let long = |head: &[u8], fill: u8, tail: &[u8]| {
        let mut v = head.to_vec();
        v.resize(head.len() + 70_000, fill);
        v.extend_from_slice(tail);
        v
    };
    let long_cases: Vec<(Vec<u8>, Option<&[u8]>)> = vec![
        // *1\r\n + 70,000 x -> too big bulk count string (before the `$` check)
        (long(b"*1\r\n", b'x', b""), Some(too_big_bulk)),
        // *1\r\nx + 70,000 NUL -> too big bulk count string
        (long(b"*1\r\nx", 0, b""), Some(too_big_bulk)),
        // *1 + 70,000 NUL -> too big mbulk count string
        (long(b"*1", 0, b""), Some(too_big_mbulk)),
        // *1 + 70,000 x + \r -> nothing, open (a `\r` was found: no size check)
        (long(b"*1", b'x', b"\r"), None),
        // PING + 70,000 NUL -> too big inline request
        (
            long(b"PING", 0, b""),
            Some(b"-ERR Protocol error: too big inline request\r\n"),
        ),
    ];
    for (bytes, error) in long_cases {
        let mut args = Vec::new();
        let got = Parser::new().parse(&bytes, &Limits::default(), &mut args);
        assert_eq!(
            got.as_ref().err().map(ProtocolError::reply).as_deref(),
            error,
            "{:?}",
            String::from_utf8_lossy(&bytes[..8])
        );
        assert!(matches!(got, Ok(None) | Err(_)));
    }
}

#[test]
fn reply_scanner_keeps_its_grammar_for_lengths() {
    // Upstream replies keep the grammar `scan` always had (Redis never sends these).
    assert_eq!(reply::scan(b"$-0\r\n\r\n").unwrap().unwrap().len, 7);
    assert_eq!(reply::scan(b"*-0\r\n").unwrap().unwrap().len, 5);
    assert_eq!(
        reply::scan(b"$+3\r\nabc\r\n"),
        Err(ReplyError("bad bulk length"))
    );
    assert_eq!(
        reply::scan(b"*01\r\n:1\r\n"),
        Err(ReplyError("bad aggregate length"))
    );
    assert_eq!(
        reply::scan(b"$-2\r\n"),
        Err(ReplyError("negative bulk length"))
    );
    assert_eq!(
        reply::scan(b"*-9223372036854775808\r\n"),
        Err(ReplyError("bad aggregate length"))
    );
}

// ---------------------------------------------------------------------------------
// The one-shot code as it was before it became resumable
// ---------------------------------------------------------------------------------

/// The one-shot reply scanner and request parser of commit 4f14891, verbatim except
/// that requests use the current `parse_int` (now exactly `string2ll`: `-0` refused,
/// `i64::MIN` accepted), `ProtocolError(..)` replaces its private constructor, and
/// request lines end where Redis 7.0's `strchr` ends them (`strchr` below; found by
/// tests/differential.rs). The rewritten code (with its fast paths) must agree with
/// them on every input.
mod reference {
    pub mod reply {
        use redis_sidecar::protocol::reply::{Frame, ReplyError};

        /// Parses a signed decimal integer the way Redis's `string2ll` does (no spaces, no `+`).
        #[inline]
        pub fn parse_int(digits: &[u8]) -> Option<i64> {
            let (neg, body) = match digits.split_first() {
                Some((b'-', rest)) => (true, rest),
                _ => (false, digits),
            };
            if body.is_empty() || body.len() > 19 {
                return None;
            }
            if body.len() > 1 && body[0] == b'0' {
                return None;
            }
            let mut v: i64 = 0;
            for &d in body {
                if !d.is_ascii_digit() {
                    return None;
                }
                v = v.checked_mul(10)?.checked_add((d - b'0') as i64)?;
            }
            Some(if neg { -v } else { v })
        }

        #[inline]
        fn line_end(buf: &[u8], from: usize) -> Option<usize> {
            let rel = buf.get(from..)?.iter().position(|&b| b == b'\n')?;
            let nl = from + rel;
            if nl == from || buf[nl - 1] != b'\r' {
                return None;
            }
            Some(nl - 1)
        }

        /// Scans one complete reply at the start of `buf`. `Ok(None)` means more bytes are needed.
        pub fn scan(buf: &[u8]) -> Result<Option<Frame>, ReplyError> {
            let Some(&first) = buf.first() else {
                return Ok(None);
            };
            let mut pos = 0usize;
            // Frames still to read, including the one at `pos`.
            let mut remaining: u64 = 1;
            while remaining > 0 {
                let Some(&tag) = buf.get(pos) else {
                    return Ok(None);
                };
                let Some(eol) = line_end(buf, pos + 1) else {
                    if buf[pos..].contains(&b'\n') {
                        return Err(ReplyError("line not terminated by CRLF"));
                    }
                    return Ok(None);
                };
                let header = &buf[pos + 1..eol];
                let at = pos;
                pos = eol + 2;
                remaining -= 1;
                // A push inside another reply is out of band, not an element,
                // unless it is a subscription confirmation (a queued command's
                // reply in EXEC's array).
                if tag == b'>' && at > 0 && parse_int(header).is_some_and(|n| n > 0) {
                    let rest = &buf[pos..];
                    match rest.first() {
                        None => return Ok(None),
                        Some(b'$') => {
                            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                                return Ok(None);
                            };
                            let len = nl
                                .checked_sub(1)
                                .and_then(|end| rest.get(1..end))
                                .and_then(parse_int)
                                .filter(|n| (0..=12).contains(n));
                            match len {
                                Some(n) => {
                                    let Some(kind) = rest.get(nl + 1..nl + 1 + n as usize) else {
                                        return Ok(None);
                                    };
                                    let confirmations: [&[u8]; 6] = [
                                        b"subscribe",
                                        b"unsubscribe",
                                        b"psubscribe",
                                        b"punsubscribe",
                                        b"ssubscribe",
                                        b"sunsubscribe",
                                    ];
                                    if !confirmations.contains(&kind) {
                                        remaining += 1;
                                    }
                                }
                                None => remaining += 1,
                            }
                        }
                        Some(_) => remaining += 1,
                    }
                } else if tag == b'>' && at > 0 && parse_int(header).is_some() {
                    remaining += 1;
                }
                match tag {
                    b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
                    b'$' | b'=' | b'!' => {
                        let n = parse_int(header).ok_or(ReplyError("bad bulk length"))?;
                        if n >= 0 {
                            let end = pos + n as usize + 2;
                            if buf.len() < end {
                                return Ok(None);
                            }
                            pos = end;
                        } else if n != -1 {
                            return Err(ReplyError("negative bulk length"));
                        }
                    }
                    b'*' | b'~' | b'>' => {
                        let n = parse_int(header).ok_or(ReplyError("bad aggregate length"))?;
                        if n > 0 {
                            remaining += n as u64;
                        }
                    }
                    b'%' => {
                        let n = parse_int(header).ok_or(ReplyError("bad map length"))?;
                        if n > 0 {
                            remaining += 2 * n as u64;
                        }
                    }
                    b'|' => {
                        // Attributes: n pairs, then the frame they describe.
                        let n = parse_int(header).ok_or(ReplyError("bad attribute length"))?;
                        remaining += 2 * n.max(0) as u64 + 1;
                    }
                    _ => return Err(ReplyError("unknown type byte")),
                }
            }
            Ok(Some(Frame {
                len: pos,
                is_error: matches!(first, b'-' | b'!'),
                is_push: first == b'>',
            }))
        }
    }

    pub mod request {
        use std::ops::Range;

        use redis_sidecar::config::Limits;
        use redis_sidecar::protocol::request::{
            parse_int, split_args, ProtocolError, Request, RequestKind,
        };

        /// Redis's `strchr(buf + from, c)`: the first `c` at or after `from`, unless
        /// a NUL byte comes first (C strings end there).
        fn strchr(buf: &[u8], from: usize, c: u8) -> Option<usize> {
            let at = from + buf.get(from..)?.iter().position(|&b| b == c || b == 0)?;
            (buf[at] == c).then_some(at)
        }

        /// Parses one request at the start of `buf`.
        ///
        /// Returns `Ok(None)` when more bytes are needed. For multibulk requests, `args` is
        /// cleared and filled with the argument ranges (relative to `buf`).
        pub fn parse(
            buf: &[u8],
            limits: &Limits,
            args: &mut Vec<Range<usize>>,
        ) -> Result<Option<Request>, ProtocolError> {
            args.clear();
            match buf.first() {
                None => Ok(None),
                Some(b'*') => parse_multibulk(buf, limits, args),
                Some(_) => parse_inline(buf, limits),
            }
        }

        fn parse_multibulk(
            buf: &[u8],
            limits: &Limits,
            args: &mut Vec<Range<usize>>,
        ) -> Result<Option<Request>, ProtocolError> {
            let Some(eol) = strchr(buf, 1, b'\r') else {
                if buf.len() > limits.max_inline_len {
                    return Err(ProtocolError("too big mbulk count string".into()));
                }
                return Ok(None);
            };
            // Redis skips the byte after the `\r` unchecked, once it is there.
            if eol + 1 >= buf.len() {
                return Ok(None);
            }
            let count = match parse_int(&buf[1..eol]) {
                Some(n) if n <= i32::MAX as i64 => n,
                _ => return Err(ProtocolError("invalid multibulk length".into())),
            };
            let mut pos = eol + 2;
            if count <= 0 {
                return Ok(Some(Request {
                    len: pos,
                    kind: RequestKind::Empty,
                }));
            }
            if count as usize > limits.max_args {
                return Err(ProtocolError(format!(
                    "invalid multibulk length ({count} arguments, limit is {})",
                    limits.max_args
                )));
            }
            for _ in 0..count {
                // The line is searched from the byte that should be `$`, which is
                // checked once the line is complete.
                let Some(eol) = strchr(buf, pos, b'\r') else {
                    if buf.len() - pos > limits.max_inline_len {
                        return Err(ProtocolError("too big bulk count string".into()));
                    }
                    return Ok(None);
                };
                if eol + 1 >= buf.len() {
                    return Ok(None);
                }
                if buf[pos] != b'$' {
                    return Err(ProtocolError(format!(
                        "expected '$', got '{}'",
                        char::from(buf[pos])
                    )));
                }
                let len = match parse_int(&buf[pos + 1..eol]) {
                    Some(n) if n >= 0 && n as u64 <= limits.max_bulk_len as u64 => n as usize,
                    _ => return Err(ProtocolError("invalid bulk length".into())),
                };
                let start = eol + 2;
                let end = start + len;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                // Redis does not check the terminator bytes; it just skips two bytes.
                args.push(start..end);
                pos = end + 2;
            }
            Ok(Some(Request {
                len: pos,
                kind: RequestKind::Multibulk,
            }))
        }

        fn parse_inline(buf: &[u8], limits: &Limits) -> Result<Option<Request>, ProtocolError> {
            let Some(nl) = strchr(buf, 0, b'\n') else {
                if buf.len() > limits.max_inline_len {
                    return Err(ProtocolError("too big inline request".into()));
                }
                return Ok(None);
            };
            let mut line = &buf[..nl];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            let parts = split_args(line)
                .ok_or_else(|| ProtocolError("unbalanced quotes in request".into()))?;
            let kind = if parts.is_empty() {
                RequestKind::Empty
            } else {
                if parts.len() > limits.max_args {
                    return Err(ProtocolError("invalid multibulk length".into()));
                }
                RequestKind::Inline(parts)
            };
            Ok(Some(Request { len: nl + 1, kind }))
        }
    }
}
