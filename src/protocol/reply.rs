//! Reply framing: finding where one upstream reply ends (without decoding it), and
//! encoding the replies the proxy writes itself.
//!
//! Upstream replies are forwarded byte for byte; the proxy only needs to know where
//! each one ends so it can hand the right bytes to the right client. The scanner
//! understands every RESP2 and RESP3 type and is iterative (no recursion), so deep
//! nesting cannot overflow the stack.

use super::request::{memchr, plain_len_line};

/// The upstream sent bytes that are not RESP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed reply from upstream: {0}")]
pub struct ReplyError(pub &'static str);

/// A complete reply frame found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Length in bytes.
    pub len: usize,
    /// The top-level frame is an error (`-` or `!`).
    pub is_error: bool,
    /// The top-level frame is a RESP3 push (`>`), i.e. not a reply to a command.
    pub is_push: bool,
}

/// Parses a RESP length or integer header with the grammar `scan` has always used:
/// an optional `-`, then `0` or digits without a leading zero, at most 19 of them,
/// within `i64` (so `-0` is 0, and `i64::MIN` is refused).
#[inline]
fn header_int(digits: &[u8]) -> Option<i64> {
    let (neg, body) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    match body {
        [b'0'] => Some(0),
        [b'1'..=b'9', ..] if body.len() <= 19 => {
            let mut v: u64 = 0;
            for &d in body {
                if !d.is_ascii_digit() {
                    return None;
                }
                // At most 19 digits: cannot overflow a u64.
                v = v * 10 + u64::from(d - b'0');
            }
            let v = i64::try_from(v).ok()?;
            Some(if neg { -v } else { v })
        }
        _ => None,
    }
}

/// A resumable reply framer: finds where one reply ends, remembering between calls
/// how far it got, so that a reply arriving in many reads is scanned once in total
/// (O(reply size), not O(reply size × reads)).
///
/// Contract:
/// - every call passes a buffer that starts at the first byte of the reply being
///   framed; between calls the caller may only append bytes to it;
/// - `Ok(Some(frame))` and `Err(_)` reset the scanner: the next call starts a new
///   reply (the caller drops `frame.len` bytes, or the connection, first);
/// - `Ok(None)` means more bytes are needed; the scanner keeps its place;
/// - call [`Scanner::reset`] before passing a buffer that does not start at the same
///   partial reply (e.g. after discarding the buffer of a broken connection).
///
/// At every call, the result is exactly what the one-shot [`scan`] returns for the
/// same buffer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scanner {
    /// Offset of the next element's type byte: every byte before it is scanned.
    /// 0 while the top-level element's header is not complete.
    pos: usize,
    /// Elements still to read, including the one at `pos` (meaningful when `pos > 0`).
    remaining: u64,
    /// Where the search for the `\n` ending the header line at `pos` resumes
    /// (0: from `pos + 1`).
    line_from: usize,
    /// Length of the buffer at the previous call: a shorter buffer means the caller
    /// broke the contract, and the reply is scanned again from its start.
    seen: usize,
    /// The reply's type byte, once bytes of it were consumed ([`Scanner::consume`]).
    first: Option<u8>,
}

impl Scanner {
    /// A scanner at the start of a reply.
    pub const fn new() -> Self {
        Scanner {
            pos: 0,
            remaining: 0,
            line_from: 0,
            seen: 0,
            first: None,
        }
    }

    /// Bytes at the start of the partial reply that are scanned and may be passed on
    /// before the reply is complete (always fewer than the reply's length).
    #[inline]
    pub fn scanned(&self, buffered: usize) -> usize {
        self.pos.min(buffered).saturating_sub(1)
    }

    /// The caller dropped the first `n` bytes of the partial reply (at most
    /// [`Scanner::scanned`]): the next call passes a buffer starting after them, and
    /// the frame it returns is the rest of the reply.
    pub fn consume(&mut self, n: usize, first: u8) {
        debug_assert!(n < self.pos);
        self.first.get_or_insert(first);
        self.pos -= n;
        self.line_from = self.line_from.saturating_sub(n);
        self.seen = self.seen.saturating_sub(n);
    }

    /// Forgets a partially scanned reply.
    #[inline]
    pub fn reset(&mut self) {
        *self = Scanner::new();
    }

    /// Whether the scanner is partway through a reply.
    #[inline]
    pub fn in_progress(&self) -> bool {
        self.pos != 0 || self.line_from != 0
    }

    /// Scans the reply at the start of `buf`, continuing where the previous call
    /// stopped. `Ok(None)` means more bytes are needed.
    #[inline]
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<Frame>, ReplyError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if buf.len() < self.seen {
            self.reset();
        }
        let first = self.first.unwrap_or(first);
        let mut pos = self.pos;
        // Frames still to read, including the one at `pos`.
        let mut remaining: u64 = if pos == 0 { 1 } else { self.remaining };
        let mut line_from = self.line_from;
        while remaining > 0 {
            let Some(&tag) = buf.get(pos) else {
                self.save(buf, pos, remaining, 0);
                return Ok(None);
            };
            // The common headers, `$<len>\r\n` and `*<len>\r\n` with a plain length,
            // without a separate search for the line's end.
            if tag == b'$' || tag == b'*' {
                if let Some((n, eol)) = plain_len_line(buf, pos + 1) {
                    pos = eol + 2;
                    remaining -= 1;
                    if tag == b'$' {
                        pos = pos.saturating_add(n).saturating_add(2);
                    } else {
                        remaining = remaining.saturating_add(n as u64);
                    }
                    line_from = 0;
                    continue;
                }
            }
            let from = line_from.max(pos + 1);
            line_from = 0;
            let Some(rel) = memchr(b'\n', &buf[from..]) else {
                if tag == b'\n' {
                    self.reset();
                    return Err(ReplyError("line not terminated by CRLF"));
                }
                self.save(buf, pos, remaining, buf.len());
                return Ok(None);
            };
            let nl = from + rel;
            if nl == pos + 1 || buf[nl - 1] != b'\r' {
                self.reset();
                return Err(ReplyError("line not terminated by CRLF"));
            }
            let header = &buf[pos + 1..nl - 1];
            let at = pos;
            pos = nl + 1;
            remaining -= 1;
            if tag == b'>' && at > 0 {
                // A RESP3 push inside another reply: Redis 7.0 writes one inside
                // `EXEC`'s array both as the reply of a queued command (a
                // (un)subscribe confirmation, counted by the array's header) and
                // out of band (a message the transaction published to the client
                // itself, or a keyspace notification, between the elements, not
                // counted: `*2 >message… :1 >message… :1`), which RESP3 clients
                // (redis-py, node-redis) take aside, going on with the array.
                match nested_push_counts(&buf[pos..], header) {
                    Some(true) => {}
                    Some(false) => remaining += 1,
                    None => {
                        // Its kind is not all here: this header again later.
                        self.save(buf, at, remaining + 1, nl);
                        return Ok(None);
                    }
                }
            }
            let step = match tag {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(()),
                b'$' | b'=' | b'!' => match header_int(header) {
                    Some(n) if n >= 0 => {
                        pos = pos.saturating_add(n as usize).saturating_add(2);
                        Ok(())
                    }
                    Some(-1) => Ok(()),
                    Some(_) => Err(ReplyError("negative bulk length")),
                    None => Err(ReplyError("bad bulk length")),
                },
                b'*' | b'~' | b'>' => match header_int(header) {
                    Some(n) => {
                        remaining = remaining.saturating_add(n.max(0) as u64);
                        Ok(())
                    }
                    None => Err(ReplyError("bad aggregate length")),
                },
                b'%' => match header_int(header) {
                    Some(n) => {
                        remaining = remaining.saturating_add(2 * n.max(0) as u64);
                        Ok(())
                    }
                    None => Err(ReplyError("bad map length")),
                },
                // Attributes: n pairs, then the frame they describe.
                b'|' => match header_int(header) {
                    Some(n) => {
                        remaining = remaining.saturating_add(2 * n.max(0) as u64 + 1);
                        Ok(())
                    }
                    None => Err(ReplyError("bad attribute length")),
                },
                _ => Err(ReplyError("unknown type byte")),
            };
            if let Err(e) = step {
                self.reset();
                return Err(e);
            }
        }
        if buf.len() < pos {
            // The last bulk string's body is not all here yet.
            self.save(buf, pos, 0, 0);
            return Ok(None);
        }
        self.reset();
        Ok(Some(Frame {
            len: pos,
            is_error: is_error(&[first]),
            is_push: first == b'>',
        }))
    }

    #[inline]
    fn save(&mut self, buf: &[u8], pos: usize, remaining: u64, line_from: usize) {
        self.pos = pos;
        self.remaining = remaining;
        self.line_from = line_from;
        self.seen = buf.len();
    }
}

/// Scans one complete reply at the start of `buf`. `Ok(None)` means more bytes are
/// needed. Callers that receive a reply over several reads should keep a [`Scanner`]
/// instead, so that the reply is not scanned again from its start on every read.
#[inline]
pub fn scan(buf: &[u8]) -> Result<Option<Frame>, ReplyError> {
    Scanner::new().scan(buf)
}

/// Where the first complete frame of `buf` that is not a RESP3 push starts and
/// ends (a connection of a client's own may send invalidation pushes before a
/// reply); `None` if there is none complete.
pub fn after_pushes(buf: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut at = 0;
    loop {
        let f = scan(buf.get(at..)?).ok()??;
        if buf[at] != b'>' {
            return Some(at..at + f.len);
        }
        at += f.len;
    }
}

/// Whether a push inside another reply is one of its elements: a subscription
/// confirmation, the reply of a command queued in a transaction (otherwise it is
/// out of band: see [`Scanner::scan`]). `rest`: the bytes after the push's
/// header, whose length is `header`; `None`: its kind is not all there yet.
fn nested_push_counts(rest: &[u8], header: &[u8]) -> Option<bool> {
    const CONFIRMATIONS: [&[u8]; 6] = [
        b"subscribe",
        b"unsubscribe",
        b"psubscribe",
        b"punsubscribe",
        b"ssubscribe",
        b"sunsubscribe",
    ];
    if header_int(header).is_none_or(|n| n <= 0) {
        // (A malformed length is refused by the caller.)
        return Some(false);
    }
    match rest.first() {
        None => return None,
        Some(b'$') => {}
        Some(_) => return Some(false),
    }
    let nl = memchr(b'\n', rest)?;
    let Some(len) = nl
        .checked_sub(1)
        .and_then(|end| rest.get(1..end))
        .and_then(header_int)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= 12)
    else {
        return Some(false);
    };
    let kind = rest.get(nl + 1..nl + 1 + len)?;
    Some(CONFIRMATIONS.contains(&kind))
}

/// The elements of an array, set or push reply, each with whether it is a RESP3
/// push that Redis wrote between them out of band (a message, not a command's
/// reply: see [`Scanner::scan`]), and so not one of them; `None` for another type
/// or a frame that does not scan.
pub fn items(frame: &[u8]) -> Option<Vec<(&[u8], bool)>> {
    if !matches!(frame.first(), Some(b'*' | b'~' | b'>')) {
        return None;
    }
    let nl = memchr(b'\n', frame)?;
    let n = header_int(frame.get(1..nl.checked_sub(1)?)?)?;
    let mut out = Vec::with_capacity(n.clamp(0, 1024) as usize);
    let mut at = nl + 1;
    let mut left = n.max(0);
    while left > 0 {
        let f = scan(frame.get(at..)?).ok()??;
        let bytes = &frame[at..at + f.len];
        let out_of_band = f.is_push && !is_confirmation_push(bytes);
        out.push((bytes, out_of_band));
        if !out_of_band {
            left -= 1;
        }
        at += f.len;
    }
    Some(out)
}

/// Whether a complete push frame is a subscription confirmation.
fn is_confirmation_push(push: &[u8]) -> bool {
    memchr(b'\n', push).is_some_and(|nl| {
        let header = &push[1..nl.saturating_sub(1).max(1)];
        nested_push_counts(&push[nl + 1..], header) == Some(true)
    })
}

/// The RESP3 pushes among the elements of a reply ([`items`]: out of band or
/// not), back to back: what a client still gets of a reply it asked not to get
/// (`CLIENT REPLY OFF`), since Redis sends pushes regardless.
pub fn pushes_within(frame: &[u8]) -> Vec<u8> {
    items(frame)
        .unwrap_or_default()
        .into_iter()
        .filter(|(bytes, _)| bytes.starts_with(b">"))
        .flat_map(|(bytes, _)| bytes.iter().copied())
        .collect()
}

/// Whether a reply frame is an error (`-…` simple error, RESP3 `!` blob error).
#[inline]
pub fn is_error(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(b'-' | b'!'))
}

/// `+text\r\n`
pub fn simple(out: &mut Vec<u8>, text: &str) {
    out.push(b'+');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `-text\r\n` (the text must include its prefix, e.g. `ERR ...`; newlines are replaced).
pub fn error(out: &mut Vec<u8>, text: &str) {
    out.push(b'-');
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// `:n\r\n`
pub fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `$len\r\nbytes\r\n`
pub fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// The nil string: `$-1\r\n` in RESP2, `_\r\n` (null) in RESP3.
pub fn nil(out: &mut Vec<u8>, resp3: bool) {
    out.extend_from_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" });
}

/// `*n\r\n` (array header; the caller writes the elements).
pub fn array_header(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Text as Redis sends `CLIENT INFO`/`CLIENT LIST`: a RESP3 verbatim string
/// (`=len\r\ntxt:…`), or a bulk string in RESP2.
pub fn verbatim(out: &mut Vec<u8>, text: &[u8], resp3: bool) {
    if !resp3 {
        return bulk(out, text);
    }
    out.push(b'=');
    out.extend_from_slice((text.len() + 4).to_string().as_bytes());
    out.extend_from_slice(b"\r\ntxt:");
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(buf: &[u8]) -> Option<usize> {
        scan(buf).unwrap().map(|f| f.len)
    }

    /// Redis 7.0's `EXEC` reply with two messages the transaction published to
    /// the subscriber itself between its elements.
    const EXEC_WITH_PUSHES: &[u8] = b"*2\r\n>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n:1\r\n>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nn\r\n:1\r\n";

    #[test]
    fn a_push_between_an_arrays_elements_is_not_one_of_them() {
        let mut buf = EXEC_WITH_PUSHES.to_vec();
        buf.extend_from_slice(b"+NEXT\r\n");
        assert_eq!(len(&buf), Some(EXEC_WITH_PUSHES.len()));
        // Every prefix is incomplete, resumed or not.
        let mut scanner = Scanner::new();
        for end in 1..EXEC_WITH_PUSHES.len() {
            assert_eq!(scan(&EXEC_WITH_PUSHES[..end]).unwrap(), None, "{end}");
            assert_eq!(scanner.scan(&EXEC_WITH_PUSHES[..end]).unwrap(), None);
        }
        let f = scanner.scan(&buf).unwrap().unwrap();
        assert_eq!((f.len, f.is_push), (EXEC_WITH_PUSHES.len(), false));
        // A push at the top level is still one frame of its own.
        let push = b">2\r\n$1\r\na\r\n$1\r\nb\r\n+OK\r\n";
        assert_eq!(len(push), Some(push.len() - 5));
        let all = items(EXEC_WITH_PUSHES).unwrap();
        let flags: Vec<bool> = all.iter().map(|(_, p)| *p).collect();
        assert_eq!(flags, [true, false, true, false]);
        assert_eq!(all[1].0, b":1\r\n");
        assert_eq!(
            pushes_within(EXEC_WITH_PUSHES),
            [all[0].0, all[2].0].concat()
        );
        assert!(pushes_within(b"*1\r\n:1\r\n").is_empty());
        // A subscription confirmation is the reply of a command queued in the
        // transaction (Redis 7.0's `UNSUBSCRIBE` inside MULTI): an element.
        let confirmed = b"*2\r\n>3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n+PONG\r\n";
        assert_eq!(len(confirmed), Some(confirmed.len()));
        let mut scanner = Scanner::new();
        for end in 1..confirmed.len() {
            assert_eq!(scanner.scan(&confirmed[..end]).unwrap(), None, "{end}");
        }
        assert_eq!(
            scanner.scan(confirmed).unwrap().map(|f| f.len),
            Some(confirmed.len())
        );
        let flags: Vec<bool> = items(confirmed).unwrap().iter().map(|(_, o)| *o).collect();
        assert_eq!(flags, [false, false]);
        assert_eq!(pushes_within(confirmed), &confirmed[4..confirmed.len() - 7]);
        assert_eq!(items(b"+OK\r\n"), None);
        assert_eq!(items(b"*-1\r\n"), Some(vec![]));
    }

    #[test]
    fn scans_every_type_and_rejects_nothing_partial() {
        let cases: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR x\r\n",
            b":-5\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"$5\r\na\r\nbc\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n+x\r\n",
            b"_\r\n",
            b",3.14\r\n",
            b"#t\r\n",
            b"(12345678901234567890\r\n",
            b"=15\r\ntxt:Some string\r\n",
            b"!8\r\nSYNTAX x\r\n",
            b"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n:2\r\n",
            b"~2\r\n+a\r\n+b\r\n",
            b">3\r\n+message\r\n+ch\r\n$2\r\nhi\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$2\r\nhi\r\n",
        ];
        for c in cases {
            assert_eq!(len(c), Some(c.len()), "{:?}", String::from_utf8_lossy(c));
            for cut in 0..c.len() {
                assert_eq!(len(&c[..cut]), None, "cut {cut} of {:?}", c);
            }
            let mut two = c.to_vec();
            two.extend_from_slice(b"+next\r\n");
            assert_eq!(len(&two), Some(c.len()));
        }
    }

    #[test]
    fn flags() {
        assert!(scan(b"-ERR\r\n").unwrap().unwrap().is_error);
        assert!(!scan(b"+OK\r\n").unwrap().unwrap().is_error);
        assert!(scan(b">1\r\n+x\r\n").unwrap().unwrap().is_push);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(scan(b"hello\r\n").is_err());
        assert!(scan(b"$x\r\n").is_err());
        assert!(scan(b"+OK\n").is_err());
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let mut buf = Vec::new();
        for _ in 0..100_000 {
            buf.extend_from_slice(b"*1\r\n");
        }
        buf.extend_from_slice(b":1\r\n");
        assert_eq!(len(&buf), Some(buf.len()));
    }

    #[test]
    fn encoders() {
        let mut out = Vec::new();
        simple(&mut out, "OK");
        error(&mut out, "ERR a\r\nb");
        integer(&mut out, -3);
        bulk(&mut out, b"x");
        nil(&mut out, false);
        nil(&mut out, true);
        array_header(&mut out, 2);
        assert_eq!(
            out,
            b"+OK\r\n-ERR a  b\r\n:-3\r\n$1\r\nx\r\n$-1\r\n_\r\n*2\r\n"
        );
    }
}
