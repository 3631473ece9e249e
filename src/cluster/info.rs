//! `INFO` on a cluster: the client sees one standalone server, so the `# Keyspace`
//! section counts the keys of every primary (each holds the keys of its slots),
//! not those of the one node that answered. Everything else is that node's.

use crate::protocol::reply;

/// Whether `INFO section…` (arguments after the name, any case) includes the
/// keyspace section: no section (Redis's default), `default`, `all`,
/// `everything` or `keyspace`.
pub fn wants_keyspace<'a>(mut sections: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut any = false;
    let found = sections.any(|s| {
        any = true;
        [&b"keyspace"[..], b"default", b"all", b"everything"]
            .iter()
            .any(|w| s.eq_ignore_ascii_case(w))
    });
    found || !any
}

/// The first part's `INFO` text with its keyspace section replaced by the sum of
/// every part's, encoded as the first part was (a bulk string, or RESP3's
/// verbatim `txt`). `None` if a part is not an `INFO` text.
pub fn merge(parts: &[&[u8]]) -> Option<Vec<u8>> {
    let (verbatim, first) = text(parts.first()?)?;
    let mut dbs: Vec<Db> = Vec::new();
    for p in parts {
        let (_, t) = text(p)?;
        for line in keyspace(t).1 {
            add(&mut dbs, line);
        }
    }
    let ((before, after), _) = keyspace(first);
    let mut body = Vec::with_capacity(first.len() + 64);
    body.extend_from_slice(&first[..before]);
    dbs.sort_by_key(|d| d.index);
    for d in &dbs {
        d.render(&mut body);
    }
    body.extend_from_slice(&first[after..]);
    let mut out = Vec::with_capacity(body.len() + 16);
    if verbatim {
        out.extend_from_slice(format!("={}\r\ntxt:", body.len() + 4).as_bytes());
    } else {
        out.extend_from_slice(format!("${}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// The text of a bulk string (`false`) or a verbatim `txt` string (`true`).
fn text(frame: &[u8]) -> Option<(bool, &[u8])> {
    let f = reply::scan(frame).ok()??;
    let verbatim = match frame.first() {
        Some(b'$') => false,
        Some(b'=') => true,
        _ => return None,
    };
    let nl = frame.iter().position(|&b| b == b'\n')?;
    let body = frame.get(nl + 1..f.len.checked_sub(2)?)?;
    if verbatim {
        return Some((true, body.strip_prefix(b"txt:")?));
    }
    Some((false, body))
}

/// Where the lines of the keyspace section start and end in `text` (both at the
/// end of the text when it has none), and those lines (`dbN:…`).
fn keyspace(text: &[u8]) -> ((usize, usize), Vec<&[u8]>) {
    const HEAD: &[u8] = b"# Keyspace\r\n";
    let Some(at) = text.windows(HEAD.len()).position(|w| w == HEAD) else {
        return ((text.len(), text.len()), Vec::new());
    };
    let start = at + HEAD.len();
    let mut end = start;
    let mut lines = Vec::new();
    while let Some(len) = text[end..].windows(2).position(|w| w == b"\r\n") {
        let line = &text[end..end + len];
        if line.is_empty() || line.starts_with(b"#") {
            break;
        }
        lines.push(line);
        end += len + 2;
    }
    ((start, end), lines)
}

/// One database's line summed over the nodes: its fields in the order the first
/// node gave them; `avg_ttl` averaged over the keys with an expiry.
struct Db {
    index: u64,
    fields: Vec<(Vec<u8>, u64)>,
    ttl_weighted: u128,
}

/// Adds a `dbN:keys=…,expires=…,avg_ttl=…` line (lines that do not parse are
/// left out).
fn add(dbs: &mut Vec<Db>, line: &[u8]) {
    let Some((name, rest)) = split_once(line, b':') else {
        return;
    };
    let Some(index) = name
        .strip_prefix(b"db")
        .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
    else {
        return;
    };
    let mut fields: Vec<(&[u8], u64)> = Vec::new();
    for kv in rest.split(|&b| b == b',') {
        let Some((k, v)) = split_once(kv, b'=') else {
            return;
        };
        let Some(v) = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()) else {
            return;
        };
        fields.push((k, v));
    }
    let get = |name: &[u8]| fields.iter().find(|f| f.0 == name).map_or(0, |f| f.1);
    let weight = u128::from(get(b"avg_ttl")) * u128::from(get(b"expires"));
    let db = match dbs.iter().position(|d| d.index == index) {
        Some(i) => &mut dbs[i],
        None => {
            dbs.push(Db {
                index,
                fields: Vec::new(),
                ttl_weighted: 0,
            });
            let last = dbs.len() - 1;
            &mut dbs[last]
        }
    };
    db.ttl_weighted += weight;
    for (k, v) in fields {
        match db.fields.iter_mut().find(|f| f.0 == k) {
            Some(f) => f.1 = f.1.saturating_add(v),
            None => db.fields.push((k.to_vec(), v)),
        }
    }
}

impl Db {
    fn render(&self, out: &mut Vec<u8>) {
        let expires = self
            .fields
            .iter()
            .find(|f| f.0 == b"expires")
            .map_or(0, |f| f.1);
        out.extend_from_slice(format!("db{}:", self.index).as_bytes());
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let v = if k == b"avg_ttl" {
                match u128::from(expires) {
                    0 => 0,
                    e => u64::try_from(self.ttl_weighted / e).unwrap_or(u64::MAX),
                }
            } else {
                *v
            };
            out.extend_from_slice(k);
            out.push(b'=');
            out.extend_from_slice(v.to_string().as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn split_once(s: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == at)?;
    Some((&s[..i], &s[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(t: &str) -> Vec<u8> {
        format!("${}\r\n{t}\r\n", t.len()).into_bytes()
    }

    const HEAD: &str = "# Server\r\nredis_version:7.0.15\r\n\r\n# Keyspace\r\n";

    #[test]
    fn keyspace_lines_are_summed_over_the_nodes() {
        let a = bulk(&format!(
            "{HEAD}db0:keys=10,expires=2,avg_ttl=1000\r\ndb3:keys=1,expires=0,avg_ttl=0\r\n"
        ));
        let b = bulk(&format!("{HEAD}db0:keys=5,expires=2,avg_ttl=3000\r\n"));
        let c = bulk(HEAD);
        let merged = merge(&[&a, &b, &c]).unwrap();
        assert_eq!(
            String::from_utf8(merged).unwrap(),
            String::from_utf8(bulk(&format!(
                "{HEAD}db0:keys=15,expires=4,avg_ttl=2000\r\ndb3:keys=1,expires=0,avg_ttl=0\r\n"
            )))
            .unwrap()
        );
        // A node with no keys first: the others' lines still show.
        let merged = merge(&[&c, &b]).unwrap();
        assert_eq!(
            merged,
            bulk(&format!("{HEAD}db0:keys=5,expires=2,avg_ttl=3000\r\n"))
        );
    }

    #[test]
    fn sections_after_the_keyspace_stay_and_fields_redis_adds_are_summed() {
        let tail = "\r\n# Keysizes\r\nx:1\r\n";
        let a = bulk(&format!(
            "{HEAD}db0:keys=1,expires=0,avg_ttl=0,subexpiry=1\r\n{tail}"
        ));
        let b = bulk(&format!(
            "{HEAD}db0:keys=2,expires=0,avg_ttl=0,subexpiry=2\r\n{tail}"
        ));
        assert_eq!(
            merge(&[&a, &b]).unwrap(),
            bulk(&format!(
                "{HEAD}db0:keys=3,expires=0,avg_ttl=0,subexpiry=3\r\n{tail}"
            ))
        );
    }

    #[test]
    fn resp3_verbatim_text_stays_verbatim() {
        let t = format!("{HEAD}db0:keys=1,expires=0,avg_ttl=0\r\n");
        let v = format!("={}\r\ntxt:{t}\r\n", t.len() + 4).into_bytes();
        let merged = merge(&[&v, &v]).unwrap();
        let want = format!("{HEAD}db0:keys=2,expires=0,avg_ttl=0\r\n");
        assert_eq!(
            merged,
            format!("={}\r\ntxt:{want}\r\n", want.len() + 4).into_bytes()
        );
        assert_eq!(merge(&[b":1\r\n"]), None);
    }

    #[test]
    fn which_requests_include_the_keyspace() {
        let w = |s: &[&str]| wants_keyspace(s.iter().map(|s| s.as_bytes()));
        assert!(w(&[]));
        assert!(w(&["KEYSPACE"]));
        assert!(w(&["server", "keyspace"]));
        assert!(w(&["all"]));
        assert!(w(&["Everything"]));
        assert!(w(&["default"]));
        assert!(!w(&["server"]));
        assert!(!w(&["cluster"]));
    }
}
