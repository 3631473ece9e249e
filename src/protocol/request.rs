//! Client request parser: RESP multibulk requests and inline commands.
//!
//! The parser never copies a multibulk request: it reports the request's length and
//! the byte ranges of its arguments inside the caller's buffer, so that the session
//! can forward a run of requests upstream as one contiguous slice of its read buffer.
//! Inline commands (`PING\r\n` as typed into telnet) are split like Redis's
//! `sdssplitargs` and returned as owned arguments.
//!
//! A [`Parser`] keeps its place in a partial request between reads (the count, the
//! arguments parsed so far, how far a line search went), so a request arriving in
//! many reads is parsed once in total; [`parse`] is the same parser from scratch.

use std::ops::Range;

use crate::config::Limits;

/// A malformed request. The message is what Redis itself answers (after `-ERR `),
/// and the connection is closed after it is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(msg: impl Into<String>) -> Self {
        ProtocolError(msg.into())
    }

    /// The error reply Redis sends for it, byte for byte: `-ERR Protocol error: …`,
    /// with `\r` and `\n` as spaces, and the byte that `expected '$', got 'X'` quotes
    /// sent as that byte (Redis's `%c`), not as the UTF-8 of `char::from(byte)`.
    pub fn reply(&self) -> Vec<u8> {
        let mut out = b"-ERR Protocol error: ".to_vec();
        // Every char of a message is ASCII or a `char::from(u8)`.
        out.extend(self.0.chars().map(|c| match c {
            '\r' | '\n' => b' ',
            c => u8::try_from(c).unwrap_or(b'?'),
        }));
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// What one complete request at the start of the buffer is.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// A multibulk request; its arguments are the ranges written to `args`.
    Multibulk,
    /// An inline command, split into owned arguments (never empty).
    Inline(Vec<Vec<u8>>),
    /// Nothing to execute (`*0`, `*-1` or an empty inline line); Redis ignores these.
    Empty,
}

/// One complete request found at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// Bytes the request occupies in the buffer.
    pub len: usize,
    /// Its kind.
    pub kind: RequestKind,
}

/// Where a line searched for from `from` ends, as Redis 7.0 finds it with `strchr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineEnd {
    /// At this `\r` (or `\n`), with at least one byte after it.
    At(usize),
    /// The `\r` is the last byte: wait for one more (no "too big" check then).
    Last(usize),
    /// Not found yet: search again from this offset. `usize::MAX`: a NUL came first,
    /// where `strchr` stops, so the line never ends (until it is too big).
    Wait(usize),
}

/// The line that starts before `from` ends at the first `end` byte at or after
/// `from`, as Redis's `strchr(querybuf + pos, end)` finds it: whatever byte follows
/// a `\r` (Redis skips it unchecked), and never past a NUL byte.
#[inline]
fn line_end(buf: &[u8], from: usize, end: u8) -> LineEnd {
    let Some(hay) = buf.get(from..) else {
        return LineEnd::Wait(from);
    };
    match memchr(end, hay) {
        Some(off) if memchr(0, &hay[..off]).is_some() => LineEnd::Wait(usize::MAX),
        Some(off) if from + off + 1 < buf.len() => LineEnd::At(from + off),
        Some(off) => LineEnd::Last(from + off),
        None if memchr(0, hay).is_some() => LineEnd::Wait(usize::MAX),
        None => LineEnd::Wait(buf.len()),
    }
}

/// Position of the first `needle` in `hay`, eight bytes at a time.
#[inline]
pub(super) fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(needle);
    let mut chunks = hay.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ pattern;
        // A byte of `x` is zero where `needle` is; the lowest flagged byte is exact
        // (borrows only make bytes above a zero byte look zero).
        let zero = x.wrapping_sub(LO) & !x & HI;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = chunks.remainder();
    tail.iter().position(|&b| b == needle).map(|i| at + i)
}

/// Parses a signed decimal integer exactly like Redis's `string2ll`: `0`, or an
/// optional `-` followed by digits without a leading zero, within `i64`. There are no
/// spaces, no `+`, no `-0` and no leading zeros (`00`, `01`, `-01` are refused).
#[inline]
pub fn parse_int(digits: &[u8]) -> Option<i64> {
    let (neg, body) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    match body {
        [b'0'] if !neg => Some(0),
        [b'1'..=b'9', ..] if body.len() <= 19 => {
            let mut v: u64 = 0;
            for &d in body {
                if !d.is_ascii_digit() {
                    return None;
                }
                // At most 19 digits: cannot overflow a u64.
                v = v * 10 + u64::from(d - b'0');
            }
            if neg {
                // Down to i64::MIN, whose magnitude is one more than i64::MAX.
                (v <= 1 << 63).then(|| (v as i64).wrapping_neg())
            } else {
                i64::try_from(v).ok()
            }
        }
        _ => None,
    }
}

/// The fast path for a length line: when the bytes at `from` are a plain length (`0`,
/// or up to 18 digits without a leading zero) followed by `\r\n`, returns the value
/// and the offset of the `\r`. Any other line (signs, long numbers, garbage, not yet
/// complete) returns `None` and goes through the general path, so the grammar stays
/// the one the line search and `parse_int` define.
#[inline(always)]
pub(super) fn plain_len_line(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let line = buf.get(from..)?;
    let mut v = match *line.first()? {
        b'0' => return (line.get(1..3)? == b"\r\n").then_some((0, from + 1)),
        d @ b'1'..=b'9' => usize::from(d - b'0'),
        _ => return None,
    };
    // At most 18 digits (the `\r` is at index 18 at the latest): no overflow, and the
    // value fits an i64 like parse_int's.
    let end = line.len().min(19);
    let mut i = 1;
    while i < end {
        let c = line[i];
        let d = c.wrapping_sub(b'0');
        if d < 10 {
            v = v * 10 + usize::from(d);
            i += 1;
        } else if c == b'\r' && line.get(i + 1) == Some(&b'\n') {
            return Some((v, from + i));
        } else {
            return None;
        }
    }
    None
}

/// A resumable request parser: parses one request at the start of the buffer,
/// remembering between calls how far it got, so that a request arriving in many
/// reads is parsed once in total (O(request size), not O(request size × reads)).
///
/// Contract (see [`Parser::parse`]):
/// - every call passes a buffer that starts at the first byte of the request being
///   parsed; between calls the caller may only append bytes to it, and passes the
///   same `args` vector back untouched;
/// - `Ok(Some(_))` and `Err(_)` reset the parser: the next call starts a new request
///   (the caller first drops the request's `len` bytes, or the connection);
/// - `Ok(None)` means more bytes are needed; the parser keeps its place;
/// - call [`Parser::reset`] before passing a buffer that does not start at the same
///   partial request (e.g. after discarding buffered bytes).
///
/// At every call, the result (and `args`) is exactly what the one-shot [`parse`]
/// returns for the same buffer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parser {
    /// Multibulk: offset of the next argument's `$` (every byte before it is parsed),
    /// or 0 while the count line is incomplete.
    pos: usize,
    /// Multibulk: the request's argument count (meaningful when `pos > 0`).
    count: usize,
    /// Multibulk: arguments still to parse, including the one at `pos`.
    remaining: usize,
    /// Where the search for the end of the current line resumes (0: from its start).
    line_from: usize,
    /// Length of the buffer at the previous call: a shorter buffer means the caller
    /// broke the contract, and the request is parsed again from its start.
    seen: usize,
}

impl Parser {
    /// A parser at the start of a request.
    pub const fn new() -> Self {
        Parser {
            pos: 0,
            count: 0,
            remaining: 0,
            line_from: 0,
            seen: 0,
        }
    }

    /// Forgets a partially parsed request.
    #[inline]
    pub fn reset(&mut self) {
        *self = Parser::new();
    }

    /// Whether the parser is partway through a request.
    #[inline]
    pub fn in_progress(&self) -> bool {
        self.pos != 0 || self.line_from != 0
    }

    /// Parses the request at the start of `buf`, continuing where the previous call
    /// stopped.
    ///
    /// Returns `Ok(None)` when more bytes are needed. For a multibulk request, `args`
    /// receives the argument ranges (relative to `buf`): when a new request starts it
    /// is cleared, and while the request is partial it holds the arguments parsed so
    /// far, which the next call extends — so it must come back unchanged. (If its
    /// length does not match, the parser starts the request over: slower, still
    /// correct.) Limits are checked when the bytes they apply to are parsed; pass the
    /// same limits for the whole request.
    #[inline]
    pub fn parse(
        &mut self,
        buf: &[u8],
        limits: &Limits,
        args: &mut Vec<Range<usize>>,
    ) -> Result<Option<Request>, ProtocolError> {
        if buf.len() < self.seen {
            self.reset();
        }
        match buf.first() {
            None => {
                self.reset();
                args.clear();
                Ok(None)
            }
            Some(b'*') => {
                let r = self.parse_multibulk(buf, limits, args);
                if !matches!(r, Ok(None)) {
                    self.reset();
                }
                r
            }
            Some(_) => {
                args.clear();
                self.parse_inline(buf, limits)
            }
        }
    }

    #[inline]
    fn parse_multibulk(
        &mut self,
        buf: &[u8],
        limits: &Limits,
        args: &mut Vec<Range<usize>>,
    ) -> Result<Option<Request>, ProtocolError> {
        let mut pos;
        let mut remaining;
        if self.pos != 0 && args.len() + self.remaining == self.count {
            pos = self.pos;
            remaining = self.remaining;
        } else {
            args.clear();
            let (count, eol) = match plain_len_line(buf, 1) {
                Some((n, eol)) if n <= i32::MAX as usize => (n as i64, eol),
                _ => {
                    let from = if self.pos == 0 {
                        self.line_from.max(1)
                    } else {
                        1
                    };
                    let eol = match line_end(buf, from, b'\r') {
                        LineEnd::At(eol) => eol,
                        LineEnd::Wait(_) if buf.len() > limits.max_inline_len => {
                            return Err(ProtocolError::new("too big mbulk count string"));
                        }
                        LineEnd::Wait(at) | LineEnd::Last(at) => {
                            self.line_from = at;
                            self.seen = buf.len();
                            return Ok(None);
                        }
                    };
                    match parse_int(&buf[1..eol]) {
                        Some(n) if n <= i32::MAX as i64 => (n, eol),
                        _ => return Err(ProtocolError::new("invalid multibulk length")),
                    }
                }
            };
            pos = eol + 2;
            if count <= 0 {
                return Ok(Some(Request {
                    len: pos,
                    kind: RequestKind::Empty,
                }));
            }
            if count as usize > limits.max_args && limits.unauthenticated {
                return Err(ProtocolError::new("unauthenticated multibulk length"));
            }
            if count as usize > limits.max_args {
                return Err(ProtocolError(format!(
                    "invalid multibulk length ({count} arguments, limit is {})",
                    limits.max_args
                )));
            }
            remaining = count as usize;
            self.count = remaining;
            self.line_from = 0;
        }
        while remaining > 0 {
            let Some(&first) = buf.get(pos) else {
                self.save(buf, pos, remaining, 0);
                return Ok(None);
            };
            let fast = match first {
                b'$' => plain_len_line(buf, pos + 1),
                _ => None,
            };
            let (len, eol) = match fast {
                Some((n, eol)) if n <= limits.max_bulk_len => (n, eol),
                _ => {
                    // As Redis: the line (from the byte that should be `$`) must be
                    // complete before that byte is checked.
                    let eol = match line_end(buf, self.line_from.max(pos), b'\r') {
                        LineEnd::At(eol) => eol,
                        LineEnd::Wait(_) if buf.len() - pos > limits.max_inline_len => {
                            return Err(ProtocolError::new("too big bulk count string"));
                        }
                        LineEnd::Wait(at) | LineEnd::Last(at) => {
                            self.save(buf, pos, remaining, at);
                            return Ok(None);
                        }
                    };
                    if first != b'$' {
                        return Err(ProtocolError(format!(
                            "expected '$', got '{}'",
                            char::from(first)
                        )));
                    }
                    match parse_int(&buf[pos + 1..eol]) {
                        Some(n) if n >= 0 && n as u64 <= limits.max_bulk_len as u64 => {
                            (n as usize, eol)
                        }
                        Some(n) if n >= 0 && limits.unauthenticated => {
                            return Err(ProtocolError::new("unauthenticated bulk length"))
                        }
                        _ => return Err(ProtocolError::new("invalid bulk length")),
                    }
                }
            };
            self.line_from = 0;
            let start = eol + 2;
            let end = start + len;
            if buf.len() < end + 2 {
                // The body is not all here yet: resume at this argument, whose
                // header line is known to end at `eol`.
                self.save(buf, pos, remaining, eol);
                return Ok(None);
            }
            // Redis does not check the terminator bytes; it just skips two bytes.
            args.push(start..end);
            pos = end + 2;
            remaining -= 1;
        }
        Ok(Some(Request {
            len: pos,
            kind: RequestKind::Multibulk,
        }))
    }

    #[inline]
    fn save(&mut self, buf: &[u8], pos: usize, remaining: usize, line_from: usize) {
        self.pos = pos;
        self.remaining = remaining;
        self.line_from = line_from;
        self.seen = buf.len();
    }

    fn parse_inline(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<Request>, ProtocolError> {
        let from = self.line_from;
        let nl = match line_end(buf, from, b'\n') {
            LineEnd::At(nl) | LineEnd::Last(nl) => nl,
            LineEnd::Wait(at) => {
                if buf.len() > limits.max_inline_len {
                    self.reset();
                    return Err(ProtocolError::new("too big inline request"));
                }
                self.line_from = at;
                self.seen = buf.len();
                return Ok(None);
            }
        };
        if from != 0 || self.pos != 0 {
            self.reset();
        }
        parse_inline_line(buf, nl, limits)
    }
}

/// Parses one request at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. For multibulk requests, `args` is
/// cleared and filled with the argument ranges (relative to `buf`). Callers that
/// receive a request over several reads should keep a [`Parser`] instead, so that the
/// request is not parsed again from its start on every read.
#[inline]
pub fn parse(
    buf: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
) -> Result<Option<Request>, ProtocolError> {
    Parser::new().parse(buf, limits, args)
}

/// The inline request whose line ends with the `\n` at `nl`.
fn parse_inline_line(
    buf: &[u8],
    nl: usize,
    limits: &Limits,
) -> Result<Option<Request>, ProtocolError> {
    let mut line = &buf[..nl];
    if let Some(stripped) = line.strip_suffix(b"\r") {
        line = stripped;
    }
    let parts =
        split_args(line).ok_or_else(|| ProtocolError::new("unbalanced quotes in request"))?;
    let kind = if parts.is_empty() {
        RequestKind::Empty
    } else {
        if parts.len() > limits.max_args {
            return Err(ProtocolError::new("invalid multibulk length"));
        }
        RequestKind::Inline(parts)
    };
    Ok(Some(Request { len: nl + 1, kind }))
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Splits an inline line into arguments with Redis's `sdssplitargs` rules: blanks
/// (`isspace`) before an argument are skipped, an unquoted argument ends at a space,
/// `\n`, `\r` or `\t`, `"..."` supports `\n \r \t \b \a \\ \" \xHH` escapes,
/// `'...'` supports `\'`; a closing quote must be followed by a blank.
/// Returns `None` for unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut i = 0;
    let n = line.len();
    let is_space = |c: u8| matches!(c, b' ' | b'\n' | b'\r' | b'\t' | 0x0b | 0x0c);
    loop {
        while i < n && is_space(line[i]) {
            i += 1;
        }
        if i >= n {
            return Some(out);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                if i >= n {
                    return None;
                }
                let c = line[i];
                if c == b'\\'
                    && i + 3 < n
                    && line[i + 1] == b'x'
                    && hex_val(line[i + 2]).is_some()
                    && hex_val(line[i + 3]).is_some()
                {
                    let hi = hex_val(line[i + 2]).unwrap_or(0);
                    let lo = hex_val(line[i + 3]).unwrap_or(0);
                    cur.push(hi * 16 + lo);
                    i += 3;
                } else if c == b'\\' && i + 1 < n {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if i + 1 < n && !is_space(line[i + 1]) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if in_sq {
                if i >= n {
                    return None;
                }
                let c = line[i];
                if c == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    i += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if i + 1 < n && !is_space(line[i + 1]) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else {
                if i >= n {
                    break;
                }
                match line[i] {
                    // Inside an unquoted argument only these end it (a vertical
                    // tab or form feed is part of it, as in sdssplitargs).
                    b' ' | b'\n' | b'\r' | b'\t' => break,
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    c => cur.push(c),
                }
            }
            i += 1;
        }
        out.push(cur);
    }
}

/// Encodes arguments as a RESP multibulk request.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(buf: &[u8]) -> (Result<Option<Request>, ProtocolError>, Vec<Vec<u8>>) {
        let mut args = Vec::new();
        let r = parse(buf, &Limits::default(), &mut args);
        let a = args.iter().map(|r| buf[r.clone()].to_vec()).collect();
        (r, a)
    }

    #[test]
    fn multibulk_complete_and_partial() {
        let full = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        let (r, a) = p(full);
        assert_eq!(
            r,
            Ok(Some(Request {
                len: full.len(),
                kind: RequestKind::Multibulk
            }))
        );
        assert_eq!(a, vec![b"GET".to_vec(), b"k".to_vec()]);
        for cut in 0..full.len() {
            assert_eq!(p(&full[..cut]).0, Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn binary_argument_with_crlf_inside() {
        let buf = b"*1\r\n$4\r\n\r\n\r\n\r\n";
        let (r, a) = p(buf);
        assert_eq!(r.unwrap().unwrap().len, buf.len());
        assert_eq!(a, vec![b"\r\n\r\n".to_vec()]);
    }

    #[test]
    fn malformed_requests_get_redis_messages() {
        assert_eq!(
            p(b"*x\r\n").0.unwrap_err().to_string(),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(
            p(b"*1\r\n+OK\r\n").0.unwrap_err().to_string(),
            "Protocol error: expected '$', got '+'"
        );
        assert_eq!(
            p(b"*1\r\n$-5\r\n").0.unwrap_err().to_string(),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            p(b"*1\r\n$999999999999\r\n").0.unwrap_err().to_string(),
            "Protocol error: invalid bulk length"
        );
        let long = vec![b'*'; 70_000];
        assert_eq!(
            p(&long).0.unwrap_err().to_string(),
            "Protocol error: too big mbulk count string"
        );
        let long = vec![b'a'; 70_000];
        assert_eq!(
            p(&long).0.unwrap_err().to_string(),
            "Protocol error: too big inline request"
        );
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_bulk_len: 10,
            max_args: 2,
            max_inline_len: 100,
            pubsub_buffer_limit: 1024,
            ..Limits::default()
        };
        let mut args = Vec::new();
        assert!(parse(b"*3\r\n", &limits, &mut args).is_err());
        assert!(parse(b"*1\r\n$11\r\n", &limits, &mut args).is_err());
        assert!(parse(b"*1\r\n$10\r\n", &limits, &mut args)
            .unwrap()
            .is_none());
    }

    #[test]
    fn empty_requests_are_skipped() {
        assert_eq!(p(b"*0\r\n").0.unwrap().unwrap().kind, RequestKind::Empty);
        assert_eq!(p(b"*-1\r\n").0.unwrap().unwrap().kind, RequestKind::Empty);
        assert_eq!(p(b"\r\n").0.unwrap().unwrap().kind, RequestKind::Empty);
    }

    #[test]
    fn inline_commands_split_like_redis() {
        let (r, _) = p(b"SET k \"a b\\x41\\n\" 'it\\'s'\r\nrest");
        let r = r.unwrap().unwrap();
        assert_eq!(r.len, 27);
        assert_eq!(
            r.kind,
            RequestKind::Inline(vec![
                b"SET".to_vec(),
                b"k".to_vec(),
                b"a bA\n".to_vec(),
                b"it's".to_vec()
            ])
        );
        assert_eq!(
            p(b"PING\n").0.unwrap().unwrap().kind,
            RequestKind::Inline(vec![b"PING".to_vec()])
        );
        // A vertical tab or form feed is skipped before an argument but is part
        // of an unquoted one (measured on redis-server 7.0.15: `ECHO A\vB` echoes
        // `A\vB`, `\f ECHO \vX` echoes `X`).
        assert_eq!(
            split_args(b"ECHO A\x0bB"),
            Some(vec![b"ECHO".to_vec(), b"A\x0bB".to_vec()])
        );
        assert_eq!(
            split_args(b"\x0c ECHO \x0bX"),
            Some(vec![b"ECHO".to_vec(), b"X".to_vec()])
        );
        assert_eq!(
            p(b"SET \"a\r\n").0.unwrap_err().to_string(),
            "Protocol error: unbalanced quotes in request"
        );
        assert_eq!(
            p(b"SET \"a\"b\r\n").0.unwrap_err().to_string(),
            "Protocol error: unbalanced quotes in request"
        );
    }

    #[test]
    fn parse_int_matches_string2ll() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-12"), Some(-12));
        assert_eq!(parse_int(b"012"), None);
        assert_eq!(parse_int(b"+1"), None);
        assert_eq!(parse_int(b""), None);
        assert_eq!(parse_int(b"99999999999999999999"), None);
        assert_eq!(parse_int(b"-0"), None);
        assert_eq!(parse_int(b"-"), None);
        assert_eq!(parse_int(b"00"), None);
        assert_eq!(parse_int(b"-01"), None);
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int(b"-9223372036854775809"), None);
    }

    #[test]
    fn memchr_finds_the_first_match() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..5000 {
            let hay: Vec<u8> = (0..rng.usize(0..40))
                .map(|_| *rng.choice(b"\r\n\x80\xffab\x0b\x01").unwrap())
                .collect();
            for needle in [b'\r', b'\n', 0x80, 0xff, 0x01] {
                assert_eq!(
                    memchr(needle, &hay),
                    hay.iter().position(|&b| b == needle),
                    "{hay:?} {needle}"
                );
            }
        }
    }

    #[test]
    fn plain_len_line_agrees_with_the_general_path() {
        let lines: &[&[u8]] = &[
            b"0\r\n",
            b"7\r\n",
            b"42\r\nrest",
            b"00\r\n",
            b"01\r\n",
            b"-1\r\n",
            b"+1\r\n",
            b"1\r",
            b"1",
            b"",
            b"1\rx",
            b"1 \r\n",
            b"999999999999999999\r\n",
            b"9999999999999999999\r\n",
            b"12\n",
            b"\r\n",
        ];
        for line in lines {
            let general = match line_end(line, 0, b'\r') {
                LineEnd::At(eol) => parse_int(&line[..eol]).map(|n| (n, eol)),
                _ => None,
            };
            if let Some((n, eol)) = plain_len_line(line, 0) {
                assert_eq!(general, Some((n as i64, eol)), "{line:?}");
            }
        }
        assert_eq!(plain_len_line(b"*42\r\n", 1), Some((42, 3)));
        assert_eq!(plain_len_line(b"0\r\n", 0), Some((0, 1)));
        assert_eq!(
            plain_len_line(b"999999999999999999\r\n", 0),
            Some((999_999_999_999_999_999, 18))
        );
    }

    #[test]
    fn encode_roundtrip() {
        let mut out = Vec::new();
        encode_command(&[&b"SET"[..], b"k", b""], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        let (r, a) = p(&out);
        assert_eq!(r.unwrap().unwrap().len, out.len());
        assert_eq!(a, vec![b"SET".to_vec(), b"k".to_vec(), b"".to_vec()]);
    }
}
