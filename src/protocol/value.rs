//! Decoding small RESP2 replies into a tree, for the few places the proxy reads a
//! reply's content itself (sentinel lookups, the cluster slot map, key_prefix's
//! SCAN, the upstream's `HELLO`; RESP3 maps and sets read as flat arrays, a RESP3
//! null as a nil bulk string). Replies relayed to clients are never decoded: they are framed by
//! [`super::reply`].

use super::reply::ReplyError;

/// A RESP2 reply, decoded (sentinel replies, `CLUSTER SHARDS`/`CLUSTER SLOTS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

/// Decodes one reply at the start of `buf`: `Ok(None)` if incomplete, with the
/// number of bytes used. Nesting is limited to 8 levels (the replies decoded are shallow).
pub fn decode(buf: &[u8], depth: u32) -> Result<Option<(Value, usize)>, ReplyError> {
    if depth > 8 {
        return Err(ReplyError("nested too deeply"));
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let (kind, line) = match buf.split_first() {
        Some((k, rest)) => (*k, &rest[..end - 1]),
        None => return Ok(None),
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    let int = || -> Result<i64, ReplyError> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(ReplyError("bad integer"))
    };
    let mut used = end + 2;
    let value = match kind {
        b'+' => Value::Simple(text()),
        b'-' => Value::Error(text()),
        b':' => Value::Int(int()?),
        b'$' => match usize::try_from(int()?) {
            Err(_) => Value::Bulk(None),
            Ok(n) => {
                if buf.len() < used + n + 2 {
                    return Ok(None);
                }
                let data = buf[used..used + n].to_vec();
                used += n + 2;
                Value::Bulk(Some(data))
            }
        },
        b'_' => Value::Bulk(None),
        b'*' | b'~' | b'%' => match usize::try_from(int()?) {
            Err(_) => Value::Array(None),
            Ok(n) => {
                // A map's n entries are 2n values, read as a flat array.
                let n = if kind == b'%' { n.saturating_mul(2) } else { n };
                let mut items = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    match decode(&buf[used..], depth + 1)? {
                        None => return Ok(None),
                        Some((v, u)) => {
                            items.push(v);
                            used += u;
                        }
                    }
                }
                Value::Array(Some(items))
            }
        },
        _ => return Err(ReplyError("unknown type")),
    };
    Ok(Some((value, used)))
}

impl Value {
    /// Appends the value in RESP2 (a decoded map comes out as its flat array).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Simple(s) => super::reply::simple(out, s),
            Value::Error(e) => super::reply::error(out, e),
            Value::Int(n) => super::reply::integer(out, *n),
            Value::Bulk(Some(b)) => super::reply::bulk(out, b),
            Value::Bulk(None) => super::reply::nil(out, false),
            Value::Array(None) => out.extend_from_slice(b"*-1\r\n"),
            Value::Array(Some(items)) => {
                super::reply::array_header(out, items.len());
                for item in items {
                    item.encode(out);
                }
            }
        }
    }

    /// A bulk or simple string, as text (lossy).
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::Simple(s) => Some(s.clone()),
            _ => None,
        }
    }
}
