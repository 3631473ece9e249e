//! The replies of a request's parts (one per slot or per primary) merged into the
//! one reply the client expects, and the cluster's redirect errors read. Replies
//! stay bytes: only headers and integers are read.

use super::plan::Merge;
use crate::protocol::reply;

/// A redirect or a "not now" from a node: Redis did not run the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// `-MOVED slot host:port`: the slot lives there now.
    Moved(String),
    /// `-ASK slot host:port`: this once, there, after `ASKING`.
    Ask(String),
    /// `-TRYAGAIN` (keys of a multi-key command split by a migration) or
    /// `-CLUSTERDOWN` (the cluster is not serving): again after a pause.
    Again,
}

/// `ASKING`, sent before a request an `-ASK` redirect moved to another node.
pub const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";

/// What a reply says about where its command must go, if anywhere else.
pub fn redirect(frame: &[u8]) -> Option<Redirect> {
    let body = frame.strip_prefix(b"-")?;
    let line = body.split(|&b| b == b'\r').next().unwrap_or(b"");
    let addr = |rest: &[u8]| -> Option<String> {
        let mut words = rest.split(|&b| b == b' ');
        let _slot = words.next()?;
        let a = words.next()?;
        std::str::from_utf8(a).ok().map(str::to_string)
    };
    if let Some(rest) = line.strip_prefix(b"MOVED ") {
        return addr(rest).map(Redirect::Moved);
    }
    if let Some(rest) = line.strip_prefix(b"ASK ") {
        return addr(rest).map(Redirect::Ask);
    }
    if line.starts_with(b"TRYAGAIN") || line.starts_with(b"CLUSTERDOWN") {
        return Some(Redirect::Again);
    }
    None
}

/// The slot a `-MOVED slot host:port` or `-ASK slot host:port` reply names.
pub fn redirect_slot(frame: &[u8]) -> Option<u16> {
    let body = frame
        .strip_prefix(b"-MOVED ")
        .or_else(|| frame.strip_prefix(b"-ASK "))?;
    let end = body.iter().position(|&b| b == b' ')?;
    std::str::from_utf8(&body[..end]).ok()?.parse().ok()
}

/// Whether replies (back to back, or nested in an EXEC's array) hold a
/// `-MOVED` error.
pub fn has_moved(replies: &[u8]) -> bool {
    replies.starts_with(b"-MOVED ") || replies.windows(9).any(|w| w == b"\r\n-MOVED ")
}

/// The elements of an array reply (`*`, or RESP3 `~`/`>`), each as its bytes.
/// `None` if `frame` is not an array (an error, a nil array …).
pub fn elements(frame: &[u8]) -> Option<Vec<&[u8]>> {
    if !matches!(frame.first(), Some(b'*' | b'~')) {
        return None;
    }
    let items = reply::items(frame)?;
    Some(
        items
            .into_iter()
            .filter(|(_, push)| !push)
            .map(|(e, _)| e)
            .collect(),
    )
}

/// The elements of an array, or the keys and values of a RESP3 map, in order.
fn pair_elements(frame: &[u8]) -> Option<Vec<&[u8]>> {
    let Some(rest) = frame.strip_prefix(b"%") else {
        return elements(frame);
    };
    // A map of n pairs is an array of 2n elements after its header.
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let n: usize = std::str::from_utf8(&rest[..nl.checked_sub(1)?])
        .ok()?
        .parse()
        .ok()?;
    let count = n.checked_mul(2)?;
    let mut out = Vec::with_capacity(count.min(1024));
    let mut at = nl + 2;
    for _ in 0..count {
        let f = reply::scan(&frame[at..]).ok()??;
        out.push(&frame[at..at + f.len]);
        at += f.len;
    }
    Some(out)
}

fn integer(frame: &[u8]) -> Option<i64> {
    let body = frame.strip_prefix(b":")?;
    let end = body.iter().position(|&b| b == b'\r')?;
    std::str::from_utf8(&body[..end]).ok()?.parse().ok()
}

fn is_nil(frame: &[u8]) -> bool {
    frame == b"$-1\r\n" || frame == b"_\r\n" || frame == b"*-1\r\n"
}

fn unexpected(out: &mut Vec<u8>, what: &str) {
    reply::error(
        out,
        &format!("ERR cluster: unexpected reply from a node while merging {what}"),
    );
}

/// Every part's entries (each part an array of them) in the order of `key`,
/// smallest first (stable: entries with one key keep their node's order), at
/// most `count` (negative: all). `false` if a part is not an array.
fn entries(parts: &[&[u8]], count: i64, key: impl Fn(&[u8]) -> f64, out: &mut Vec<u8>) -> bool {
    let mut all: Vec<(f64, &[u8])> = Vec::new();
    for p in parts {
        let Some(list) = elements(p) else {
            return false;
        };
        all.extend(list.into_iter().map(|e| (key(e), e)));
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let Ok(n) = usize::try_from(count) {
        all.truncate(n);
    }
    reply::array_header(out, all.len());
    all.iter().for_each(|(_, e)| out.extend_from_slice(e));
    true
}

/// A number sent as a bulk string (RESP2) or a double (RESP3).
fn text_number(frame: &[u8]) -> Option<f64> {
    let body = match frame.first()? {
        b',' => frame.get(1..)?,
        b'$' => &frame[frame.iter().position(|&b| b == b'\n')? + 1..],
        _ => return None,
    };
    let end = body.iter().position(|&b| b == b'\r')?;
    std::str::from_utf8(&body[..end]).ok()?.parse().ok()
}

/// Merges `parts` (one reply frame each, in part order). `positions` (for
/// [`Merge::Keys`]): per part, the place of each of its elements in the client's
/// reply. `pick` chooses among candidates for [`Merge::AnyNonNil`].
pub fn merge(
    how: Merge,
    parts: &[&[u8]],
    positions: &[Vec<usize>],
    pick: usize,
    out: &mut Vec<u8>,
) {
    if let Some(err) = parts.iter().find(|p| reply::is_error(p)) {
        out.extend_from_slice(err);
        return;
    }
    match how {
        Merge::First => out.extend_from_slice(parts.first().copied().unwrap_or(b"+OK\r\n")),
        Merge::Sum | Merge::Min => {
            let Some(all) = parts
                .iter()
                .map(|p| integer(p))
                .collect::<Option<Vec<i64>>>()
            else {
                return unexpected(out, "integers");
            };
            let merged = match how {
                Merge::Min => all.iter().copied().min().unwrap_or(0),
                _ => all.iter().fold(0i64, |t, &n| t.saturating_add(n)),
            };
            reply::integer(out, merged);
        }
        Merge::Concat => {
            let mut all: Vec<&[u8]> = Vec::new();
            for p in parts {
                match elements(p) {
                    Some(e) => all.extend(e),
                    None => return unexpected(out, "arrays"),
                }
            }
            reply::array_header(out, all.len());
            all.iter().for_each(|e| out.extend_from_slice(e));
        }
        Merge::Keys => {
            let total: usize = positions.iter().map(Vec::len).sum();
            let mut slots: Vec<&[u8]> = vec![b"$-1\r\n"; total];
            for (p, pos) in parts.iter().zip(positions) {
                match elements(p) {
                    Some(e) if e.len() == pos.len() => {
                        for (el, &at) in e.into_iter().zip(pos) {
                            if let Some(s) = slots.get_mut(at) {
                                *s = el;
                            }
                        }
                    }
                    _ => return unexpected(out, "MGET replies"),
                }
            }
            reply::array_header(out, total);
            slots.iter().for_each(|e| out.extend_from_slice(e));
        }
        Merge::Pairs => {
            let total: usize = positions.iter().map(Vec::len).sum();
            let mut pairs: Vec<&[u8]> = vec![b"$-1\r\n"; total * 2];
            for (p, pos) in parts.iter().zip(positions) {
                match pair_elements(p) {
                    Some(e) if e.len() == pos.len() * 2 => {
                        for (two, &at) in e.chunks(2).zip(pos) {
                            if let Some(s) = pairs.get_mut(at * 2..at * 2 + 2) {
                                s.copy_from_slice(two);
                            }
                        }
                    }
                    _ => return unexpected(out, "PUBSUB SHARDNUMSUB replies"),
                }
            }
            if parts.first().is_some_and(|p| p.starts_with(b"%")) {
                out.extend_from_slice(format!("%{total}\r\n").as_bytes());
            } else {
                reply::array_header(out, total * 2);
            }
            pairs.iter().for_each(|e| out.extend_from_slice(e));
        }
        Merge::Newest(count) => {
            // An entry: [id, timestamp, duration, args, client, name].
            let at = |e: &[u8]| {
                let t = elements(e).and_then(|f| integer(f.get(1)?));
                -(t.unwrap_or(0) as f64)
            };
            if !entries(parts, count, at, out) {
                unexpected(out, "SLOWLOG GET replies");
            }
        }
        Merge::Youngest(count) => {
            // An entry: field/value pairs (a RESP3 map), its age among them.
            let age = |e: &[u8]| {
                let f = pair_elements(e)?;
                let at = f.chunks(2).find(|kv| kv[0] == b"$11\r\nage-seconds\r\n")?;
                text_number(at.get(1)?)
            };
            if !entries(parts, count, |e| age(e).unwrap_or(f64::MAX), out) {
                unexpected(out, "ACL LOG replies");
            }
        }
        Merge::Info => match super::info::merge(parts) {
            Some(text) => out.extend_from_slice(&text),
            None => unexpected(out, "INFO replies"),
        },
        Merge::AnyNonNil => {
            let found: Vec<&&[u8]> = parts.iter().filter(|p| !is_nil(p)).collect();
            match found.len() {
                0 => out.extend_from_slice(parts.first().copied().unwrap_or(b"$-1\r\n")),
                n => out.extend_from_slice(found[pick % n]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(how: Merge, parts: &[&[u8]], positions: &[Vec<usize>]) -> Vec<u8> {
        let mut out = Vec::new();
        merge(how, parts, positions, 0, &mut out);
        out
    }

    #[test]
    fn redirects_are_read() {
        assert_eq!(
            redirect(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved("127.0.0.1:6381".into()))
        );
        assert_eq!(
            redirect(b"-ASK 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Ask("127.0.0.1:6381".into()))
        );
        assert_eq!(
            redirect(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Redirect::Again)
        );
        assert_eq!(
            redirect(b"-CLUSTERDOWN The cluster is down\r\n"),
            Some(Redirect::Again)
        );
        assert_eq!(redirect(b"-ERR wrong\r\n"), None);
        assert_eq!(redirect(b"+OK\r\n"), None);
        assert!(has_moved(b"-MOVED 1 a:1\r\n"));
        assert!(has_moved(b"+QUEUED\r\n-MOVED 1 a:1\r\n"));
        assert!(!has_moved(b"$7\r\n-MOVEDx\r\n"));
    }

    #[test]
    fn slowlog_entries_of_every_node_newest_first() {
        // [id, timestamp, duration, args, client, name]
        let entry = |id: u8, at: &str| {
            format!("*6\r\n:{id}\r\n:{at}\r\n:5\r\n*1\r\n$3\r\nGET\r\n$0\r\n\r\n$0\r\n\r\n")
        };
        let a = format!("*2\r\n{}{}", entry(2, "300"), entry(1, "100"));
        let b = format!("*1\r\n{}", entry(7, "200"));
        let parts: [&[u8]; 3] = [a.as_bytes(), b"*0\r\n", b.as_bytes()];
        let all = format!(
            "*3\r\n{}{}{}",
            entry(2, "300"),
            entry(7, "200"),
            entry(1, "100")
        );
        assert_eq!(merged(Merge::Newest(10), &parts, &[]), all.as_bytes());
        assert_eq!(merged(Merge::Newest(-1), &parts, &[]), all.as_bytes());
        let two = format!("*2\r\n{}{}", entry(2, "300"), entry(7, "200"));
        assert_eq!(merged(Merge::Newest(2), &parts, &[]), two.as_bytes());
        assert_eq!(merged(Merge::Newest(0), &parts, &[]), b"*0\r\n");
        // A node's error is the client's.
        let err: [&[u8]; 2] = [
            a.as_bytes(),
            b"-ERR count should be greater than or equal to -1\r\n",
        ];
        assert!(merged(Merge::Newest(-5), &err, &[]).starts_with(b"-ERR count"));
    }

    #[test]
    fn acl_log_entries_of_every_node_most_recent_first() {
        let entry = |user: &str, age: &str| {
            format!(
                "*4\r\n$8\r\nusername\r\n${}\r\n{user}\r\n$11\r\nage-seconds\r\n${}\r\n{age}\r\n",
                user.len(),
                age.len()
            )
        };
        let a = format!("*2\r\n{}{}", entry("a1", "0.5"), entry("a2", "30"));
        let b = format!("*1\r\n{}", entry("b1", "2.25"));
        let parts: Vec<&[u8]> = vec![a.as_bytes(), b.as_bytes()];
        let want = format!(
            "*3\r\n{}{}{}",
            entry("a1", "0.5"),
            entry("b1", "2.25"),
            entry("a2", "30")
        );
        assert_eq!(merged(Merge::Youngest(10), &parts, &[]), want.as_bytes());
        let two = format!("*2\r\n{}{}", entry("a1", "0.5"), entry("b1", "2.25"));
        assert_eq!(merged(Merge::Youngest(2), &parts, &[]), two.as_bytes());
        // RESP3: a map per entry, the age a double.
        let m = |user: &str, age: &str| {
            format!(
                "%2\r\n$8\r\nusername\r\n${}\r\n{user}\r\n$11\r\nage-seconds\r\n,{age}\r\n",
                user.len()
            )
        };
        let a = format!("*1\r\n{}", m("old", "9.5"));
        let b = format!("*1\r\n{}", m("new", "0.125"));
        let want = format!("*2\r\n{}{}", m("new", "0.125"), m("old", "9.5"));
        assert_eq!(
            merged(Merge::Youngest(-1), &[a.as_bytes(), b.as_bytes()], &[]),
            want.as_bytes()
        );
    }

    #[test]
    fn merges() {
        assert_eq!(merged(Merge::Sum, &[b":2\r\n", b":3\r\n"], &[]), b":5\r\n");
        assert_eq!(merged(Merge::Min, &[b":7\r\n", b":3\r\n"], &[]), b":3\r\n");
        assert_eq!(
            merged(
                Merge::Concat,
                &[b"*1\r\n$1\r\na\r\n", b"*0\r\n", b"*1\r\n$1\r\nb\r\n"],
                &[]
            ),
            b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"
        );
        // PUBSUB SHARDNUMSUB a b c, with a and c on one node: RESP2 and RESP3.
        assert_eq!(
            merged(
                Merge::Pairs,
                &[
                    b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nc\r\n:3\r\n",
                    b"*2\r\n$1\r\nb\r\n:2\r\n"
                ],
                &[vec![0, 2], vec![1]]
            ),
            b"*6\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:2\r\n$1\r\nc\r\n:3\r\n"
        );
        assert_eq!(
            merged(
                Merge::Pairs,
                &[
                    b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nc\r\n:3\r\n",
                    b"%1\r\n$1\r\nb\r\n:2\r\n"
                ],
                &[vec![0, 2], vec![1]]
            ),
            b"%3\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:2\r\n$1\r\nc\r\n:3\r\n"
        );
        assert_eq!(
            merged(
                Merge::Keys,
                &[b"*2\r\n$1\r\na\r\n$-1\r\n", b"*1\r\n$1\r\nb\r\n"],
                &[vec![0, 2], vec![1]]
            ),
            b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n"
        );
        assert_eq!(
            merged(Merge::First, &[b"+OK\r\n", b"-ERR x\r\n"], &[]),
            b"-ERR x\r\n"
        );
        assert_eq!(
            merged(Merge::AnyNonNil, &[b"$-1\r\n", b"$1\r\nk\r\n"], &[]),
            b"$1\r\nk\r\n"
        );
        assert_eq!(
            merged(Merge::AnyNonNil, &[b"$-1\r\n", b"$-1\r\n"], &[]),
            b"$-1\r\n"
        );
    }
}
