//! Reply framing: finding where one upstream reply ends (without decoding it), and
//! encoding the replies the proxy writes itself.
//!
//! Upstream replies are forwarded byte for byte; the proxy only needs to know where
//! each one ends so it can hand the right bytes to the right client. The scanner
//! understands every RESP2 and RESP3 type and is iterative (no recursion), so deep
//! nesting cannot overflow the stack.

use super::request::parse_int;

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
        pos = eol + 2;
        remaining -= 1;
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

/// `$-1\r\n` (RESP2 nil).
pub fn nil(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
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
        nil(&mut out);
        array_header(&mut out, 2);
        assert_eq!(out, b"+OK\r\n-ERR a  b\r\n:-3\r\n$1\r\nx\r\n$-1\r\n*2\r\n");
    }
}
