//! Where a request's key arguments are: the key specs of the generated command
//! table ([`table::KeySpec`]) applied to its arguments, as Redis's own
//! `getKeysUsingKeySpecs` does.
//!
//! Two commands have specs Redis itself marks incomplete (the keys can be
//! anywhere): `SORT`/`SORT_RO` (`STORE dst`, and the `BY`/`GET` patterns, which
//! name keys by pattern) and `MIGRATE` (`KEYS k …`). For those the arguments are
//! parsed as Redis's `sortGetKeys` / `migrateGetKeys` do. Any other command
//! whose keys cannot be located (an unknown spec, an unknown command or
//! subcommand) is [`Unlocatable`]: a caller that must see every key refuses it.
//!
//! This is what `key_prefix` rewrites, and what a cluster router needs to route
//! by slot (it takes the [`KeyKind::Key`] and [`KeyKind::Channel`] arguments).

use super::table::{self, Begin, CommandInfo, Find, KS_INCOMPLETE, KS_NOT_KEY};
use super::ArgList;

/// What kind of name an argument is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A key.
    Key,
    /// A shard channel (`SPUBLISH`, `SSUBSCRIBE`): hashed like a key (Redis's
    /// `not_key` spec flag) but not a key of the keyspace.
    Channel,
    /// A key pattern (`SORT … BY`/`GET`): `*` is replaced by elements; `#` (the
    /// element itself) is not a pattern and is never reported.
    Pattern,
}

/// The key arguments of one request (most have at most four: no allocation).
pub type KeyArgs = smallvec::SmallVec<[KeyArg; 4]>;

/// One key argument of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyArg {
    /// Its index in the arguments (the command name is 0).
    pub index: usize,
    /// What it is.
    pub kind: KeyKind,
}

/// The keys of a command cannot be located from the table: the command (or its
/// subcommand) is unknown, or its key spec is incomplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unlocatable;

/// Appends the key arguments of a request classified as `info` to `out`, in
/// argument order for each spec (specs in table order). Arguments the spec points
/// past (too few arguments, a `numkeys` larger than the rest) are left out:
/// Redis refuses such a request without running it.
pub fn locate<L: ArgList + ?Sized>(
    info: Option<&CommandInfo>,
    args: &L,
    out: &mut KeyArgs,
) -> Result<(), Unlocatable> {
    let Some(info) = info else {
        return Err(Unlocatable);
    };
    if info.has(table::CONTAINER) {
        // A subcommand the table does not know.
        return Err(Unlocatable);
    }
    match info.name {
        "sort" | "sort_ro" => {
            sort_keys(args, out);
            return Ok(());
        }
        "migrate" => {
            migrate_keys(args, out);
            return Ok(());
        }
        _ => {}
    }
    let argc = args.count() as i64;
    for spec in info.keys {
        if spec.flags & KS_INCOMPLETE != 0 {
            return Err(Unlocatable);
        }
        let kind = if spec.flags & KS_NOT_KEY != 0 {
            KeyKind::Channel
        } else {
            KeyKind::Key
        };
        let first = match spec.begin {
            Begin::Index(i) => i as i64,
            Begin::Keyword {
                keyword,
                start_from,
            } => match find_keyword(args, keyword, start_from as i64) {
                Some(i) => i + 1,
                None => continue,
            },
            Begin::Unknown => return Err(Unlocatable),
        };
        let (first, last, step) = match spec.find {
            Find::Range {
                last_key,
                step,
                limit,
            } => {
                let last = if last_key >= 0 {
                    first + last_key as i64
                } else if limit <= 0 {
                    argc + last_key as i64
                } else {
                    first + ((argc - first) / limit as i64 + last_key as i64)
                };
                (first, last, step as i64)
            }
            Find::KeyNum {
                keynum_idx,
                first_key,
                step,
            } => {
                let at = first + keynum_idx as i64;
                if at < 1 || at >= argc {
                    continue;
                }
                let Some(numkeys) = crate::protocol::request::parse_int(args.arg(at as usize))
                else {
                    continue;
                };
                if numkeys <= 0 {
                    continue;
                }
                let start = first + first_key as i64;
                let step = step as i64;
                let last = start.saturating_add((numkeys.min(argc) - 1) * step.max(1));
                (start, last, step)
            }
            Find::Unknown => return Err(Unlocatable),
        };
        if step <= 0 || first < 1 {
            continue;
        }
        let mut i = first;
        while i <= last && i < argc {
            out.push(KeyArg {
                index: i as usize,
                kind,
            });
            i += step;
        }
    }
    Ok(())
}

/// The index of the first argument equal to `keyword`, searched as Redis does:
/// forwards from `start_from`, or backwards from `argc + start_from` when negative.
fn find_keyword<L: ArgList + ?Sized>(args: &L, keyword: &[u8], start_from: i64) -> Option<i64> {
    let argc = args.count() as i64;
    let hit = |i: i64| args.arg(i as usize).eq_ignore_ascii_case(keyword);
    if start_from > 0 {
        (start_from..argc).find(|&i| hit(i))
    } else {
        let start = argc + start_from;
        (1..=start).rev().find(|&i| hit(i))
    }
}

/// `SORT key [BY pattern] [LIMIT offset count] [GET pattern …] [ASC|DESC] [ALPHA]`
/// [STORE destination], parsed as Redis's `sortGetKeys` skips options.
fn sort_keys<L: ArgList + ?Sized>(args: &L, out: &mut KeyArgs) {
    let argc = args.count();
    if argc < 2 {
        return;
    }
    out.push(KeyArg {
        index: 1,
        kind: KeyKind::Key,
    });
    let mut i = 2;
    while i < argc {
        let a = args.arg(i);
        if a.eq_ignore_ascii_case(b"LIMIT") {
            i += 3;
            continue;
        }
        let kind = if a.eq_ignore_ascii_case(b"BY") || a.eq_ignore_ascii_case(b"GET") {
            KeyKind::Pattern
        } else if a.eq_ignore_ascii_case(b"STORE") {
            KeyKind::Key
        } else {
            i += 1;
            continue;
        };
        if i + 1 < argc && !(kind == KeyKind::Pattern && args.arg(i + 1) == b"#") {
            out.push(KeyArg { index: i + 1, kind });
        }
        i += 2;
    }
}

/// `MIGRATE host port key|"" destination-db timeout [COPY] [REPLACE] [AUTH pw]`
/// [AUTH2 user pw] [KEYS key …], parsed as Redis's `migrateGetKeys`.
fn migrate_keys<L: ArgList + ?Sized>(args: &L, out: &mut KeyArgs) {
    let argc = args.count();
    if argc > 3 && !args.arg(3).is_empty() {
        out.push(KeyArg {
            index: 3,
            kind: KeyKind::Key,
        });
    }
    let mut i = 6;
    while i < argc {
        let a = args.arg(i);
        if a.eq_ignore_ascii_case(b"AUTH") {
            i += 2;
        } else if a.eq_ignore_ascii_case(b"AUTH2") {
            i += 3;
        } else if a.eq_ignore_ascii_case(b"KEYS") {
            out.extend((i + 1..argc).map(|index| KeyArg {
                index,
                kind: KeyKind::Key,
            }));
            return;
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(args: &[&str]) -> Result<Vec<(usize, KeyKind)>, Unlocatable> {
        let (_, info) = super::super::identify(args);
        let mut out = KeyArgs::new();
        locate(info, args, &mut out)?;
        Ok(out.into_iter().map(|k| (k.index, k.kind)).collect())
    }

    fn idx(args: &[&str]) -> Vec<usize> {
        keys(args)
            .expect("locatable")
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn fixed_ranges_and_steps() {
        assert_eq!(idx(&["GET", "k"]), [1]);
        assert_eq!(idx(&["set", "k", "v", "EX", "10"]), [1]);
        assert_eq!(idx(&["MSET", "a", "1", "b", "2", "c", "3"]), [1, 3, 5]);
        assert_eq!(idx(&["MGET", "a", "b", "c"]), [1, 2, 3]);
        assert_eq!(idx(&["DEL", "a", "b"]), [1, 2]);
        assert_eq!(idx(&["BLPOP", "a", "b", "0"]), [1, 2]);
        assert_eq!(idx(&["LMOVE", "a", "b", "LEFT", "RIGHT"]), [1, 2]);
        assert_eq!(idx(&["COPY", "a", "b"]), [1, 2]);
        assert_eq!(idx(&["PING"]), Vec::<usize>::new());
        assert_eq!(idx(&["GET"]), Vec::<usize>::new(), "too few: Redis refuses");
    }

    #[test]
    fn keynum_commands() {
        assert_eq!(idx(&["EVAL", "s", "2", "a", "b", "x"]), [3, 4]);
        assert_eq!(idx(&["FCALL", "f", "1", "a", "x"]), [3]);
        assert_eq!(idx(&["EVAL", "s", "0", "x"]), Vec::<usize>::new());
        assert_eq!(idx(&["EVAL", "s", "nope", "x"]), Vec::<usize>::new());
        assert_eq!(idx(&["EVAL", "s", "9", "a"]), [3], "Redis refuses it");
        assert_eq!(
            idx(&["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]),
            [1, 3, 4]
        );
        assert_eq!(idx(&["LMPOP", "2", "a", "b", "LEFT"]), [2, 3]);
        assert_eq!(idx(&["BLMPOP", "0", "2", "a", "b", "LEFT"]), [3, 4]);
        assert_eq!(idx(&["ZMPOP", "1", "a", "MIN"]), [2]);
        assert_eq!(idx(&["SINTERCARD", "2", "a", "b", "LIMIT", "1"]), [2, 3]);
    }

    #[test]
    fn keyword_searches() {
        assert_eq!(
            idx(&["XREAD", "COUNT", "1", "STREAMS", "s1", "s2", "0", "0"]),
            [4, 5]
        );
        assert_eq!(
            idx(&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"]),
            [5]
        );
        assert_eq!(
            idx(&["GEORADIUS", "g", "0", "0", "1", "km", "STORE", "d"]),
            [1, 7]
        );
        assert_eq!(
            idx(&["GEORADIUS", "g", "0", "0", "1", "km", "STOREDIST", "d"]),
            [1, 7]
        );
        assert_eq!(idx(&["GEORADIUS", "g", "0", "0", "1", "km"]), [1]);
    }

    #[test]
    fn incomplete_specs_are_parsed() {
        assert_eq!(
            keys(&["SORT", "l", "BY", "w_*", "GET", "#", "GET", "o_*", "STORE", "d"]).unwrap(),
            [
                (1, KeyKind::Key),
                (3, KeyKind::Pattern),
                (7, KeyKind::Pattern),
                (9, KeyKind::Key)
            ]
        );
        assert_eq!(
            idx(&["SORT", "l", "LIMIT", "0", "10", "ALPHA", "STORE", "d"]),
            [1, 7]
        );
        assert_eq!(
            idx(&["MIGRATE", "h", "1", "", "0", "5", "AUTH", "KEYS", "KEYS", "a", "b"]),
            [9, 10],
            "the AUTH password is `KEYS`"
        );
        assert_eq!(idx(&["MIGRATE", "h", "1", "k", "0", "5", "COPY"]), [3]);
    }

    #[test]
    fn subcommands_and_channels() {
        assert_eq!(idx(&["OBJECT", "ENCODING", "k"]), [2]);
        assert_eq!(idx(&["memory", "usage", "k"]), [2]);
        assert_eq!(idx(&["XINFO", "STREAM", "k"]), [2]);
        assert_eq!(
            keys(&["SPUBLISH", "ch", "m"]).unwrap(),
            [(1, KeyKind::Channel)]
        );
    }

    #[test]
    fn unknown_commands_and_subcommands_are_unlocatable() {
        assert_eq!(keys(&["NOSUCHCMD", "k"]), Err(Unlocatable));
        assert_eq!(keys(&["OBJECT", "NOSUCH", "k"]), Err(Unlocatable));
    }
}
