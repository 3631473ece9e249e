//! Differential runs of random command sequences: the same seeded sequence of
//! commands (strings, keys, lists, hashes, sets, sorted sets, streams, bitmaps,
//! HyperLogLogs, geo, scripts, blocking pops with short timeouts, pipelines,
//! `MULTI` blocks, `WATCH` … `MULTI` blocks, transaction commands in any order,
//! `SCAN` loops) to a reference Redis and to one or more
//! proxy targets (a `key_prefix` database, a database on a Redis Cluster), each
//! reply compared byte for byte. Only orders Redis leaves undefined are put in order
//! first: the elements of `KEYS`, `SMEMBERS`, `SINTER`, `SUNION`, `SDIFF`, and the
//! keys a whole `SCAN` loop returns (cursors differ by design).
//!
//! `cluster_safe`: multi-key commands that Redis Cluster cannot split get keys
//! of one hash tag (elsewhere they get `-CROSSSLOT`, as on a cluster), and
//! transactions keep to one tag; `MGET`, `MSET`, `DEL`, `EXISTS`, `TOUCH`,
//! `UNLINK` and the keyless commands use keys of every slot.

use super::RawClient;

/// Keys of many slots.
const SPREAD: &[&str] = &["a", "b", "c", "d", "e", "f", "{t}a", "{t}b"];
/// Keys of one slot.
const TAGGED: &[&str] = &["{t}a", "{t}b", "{t}c", "{t}d"];

type Cmd = Vec<String>;

/// One step of a sequence.
enum Step {
    One(Cmd),
    /// `SCAN` from 0 until the cursor is 0 again.
    Scan,
    Multi(Vec<Cmd>),
    /// `WATCH key`, commands, `MULTI`, commands, `EXEC`.
    Watch(String, Vec<Cmd>, Vec<Cmd>),
    /// Commands sent in one write (a pipeline), then their replies read.
    Pipeline(Vec<Cmd>),
    /// Transaction commands in any order (`EXEC` without `MULTI`, `WATCH`
    /// inside it, nested `MULTI`, arity errors …) among plain ones: what a
    /// session, and the pooled connection it gives back, must track as Redis
    /// does. Ends with `DISCARD` and `UNWATCH`.
    Loose(Vec<Cmd>),
}

struct Gen {
    rng: fastrand::Rng,
    cluster_safe: bool,
}

fn s(v: &[&str]) -> Cmd {
    v.iter().map(|x| x.to_string()).collect()
}

impl Gen {
    fn pick(&mut self, from: &[&'static str]) -> String {
        from[self.rng.usize(..from.len())].to_string()
    }
    fn key(&mut self) -> String {
        self.pick(SPREAD)
    }
    fn keys(&mut self, lo: usize, hi: usize) -> Vec<String> {
        let n = self.rng.usize(lo..hi);
        (0..n).map(|_| self.key()).collect()
    }
    /// Keys for a multi-key command that does not split on a cluster.
    fn multi(&mut self, n: usize) -> Vec<String> {
        let from = if self.cluster_safe { TAGGED } else { SPREAD };
        (0..n).map(|_| self.pick(from)).collect()
    }
    fn val(&mut self) -> String {
        self.pick(&["1", "2", "x", "10", "-3", "hello", "3.5", ""])
    }
    fn member(&mut self) -> String {
        self.pick(&["m1", "m2", "m3", "m4"])
    }
    fn field(&mut self) -> String {
        self.pick(&["f1", "f2", "f3"])
    }
    fn score(&mut self) -> String {
        self.pick(&["1", "2", "-1", "0.5", "10"])
    }
    fn side(&mut self) -> String {
        self.pick(&["LEFT", "RIGHT"])
    }

    /// One command (keys `SPREAD`, or `TAGGED` with `tagged`).
    fn command(&mut self, tagged: bool) -> Cmd {
        let saved = self.cluster_safe;
        if tagged {
            self.cluster_safe = true;
        }
        let mut c = self.any_command();
        if tagged {
            // Every key of a transaction in one slot: the single-key commands'
            // keys too.
            for a in c.iter_mut().skip(1) {
                if SPREAD.contains(&a.as_str()) && !a.starts_with("{t}") {
                    *a = format!("{{t}}{a}");
                }
            }
        }
        self.cluster_safe = saved;
        c
    }

    fn any_command(&mut self) -> Cmd {
        let k = self.key();
        let v = self.val();
        let mut c: Cmd = match self.rng.u32(..62) {
            0 => {
                let opt = self.pick(&["", "NX", "XX", "GET", "KEEPTTL", "EXAT"]);
                let mut c = s(&["SET", &k, &v]);
                match opt.as_str() {
                    "" => {}
                    "EXAT" => c.extend(s(&["EXAT", "4000000000"])),
                    o => c.push(o.to_string()),
                }
                c
            }
            1 => s(&["GET", &k]),
            2 => s(&["GETDEL", &k]),
            3 => s(&["APPEND", &k, &v]),
            4 => s(&["INCR", &k]),
            5 => s(&["INCRBYFLOAT", &k, "1.5"]),
            6 => s(&["SETRANGE", &k, "2", &v]),
            7 => {
                let mut c = s(&["MSET"]);
                for key in self.keys(1, 4) {
                    let v = self.val();
                    c.extend([key, v]);
                }
                c
            }
            8 => [s(&["MGET"]), self.keys(1, 5)].concat(),
            9 => {
                let mut c = s(&["MSETNX"]);
                for key in self.multi(2) {
                    c.extend([key, "v".to_string()]);
                }
                c
            }
            10 => [s(&["DEL"]), self.keys(1, 4)].concat(),
            11 => [s(&["EXISTS"]), self.keys(1, 4)].concat(),
            12 => s(&["TYPE", &k]),
            13 => [s(&["RENAME"]), self.multi(2)].concat(),
            14 => [s(&["COPY"]), self.multi(2), s(&["REPLACE"])].concat(),
            15 => s(&["EXPIREAT", &k, "4000000000"]),
            16 => s(&["EXPIRETIME", &k]),
            17 => s(&["OBJECT", "ENCODING", &k]),
            18 => s(&["SORT", &k, "ALPHA", "LIMIT", "0", "2"]),
            19 => s(&["KEYS", "*"]),
            20 => s(&["DBSIZE"]),
            21 => {
                let push = self.pick(&["LPUSH", "RPUSH"]);
                let w = self.val();
                s(&[&push, &k, &v, &w])
            }
            22 => {
                let pop = self.pick(&["LPOP", "RPOP"]);
                s(&[&pop, &k, "2"])
            }
            23 => s(&["LRANGE", &k, "0", "-1"]),
            24 => {
                let (a, b) = (self.side(), self.side());
                [s(&["LMOVE"]), self.multi(2), vec![a, b]].concat()
            }
            25 => {
                let side = self.side();
                [s(&["LMPOP", "2"]), self.multi(2), vec![side]].concat()
            }
            26 => [s(&["BLPOP"]), self.multi(2), s(&["0.01"])].concat(),
            27 => [
                s(&["BLMPOP", "0.01", "2"]),
                self.multi(2),
                s(&["LEFT", "COUNT", "2"]),
            ]
            .concat(),
            28 => [s(&["BRPOPLPUSH"]), self.multi(2), s(&["0.01"])].concat(),
            29 => {
                let (f, g) = (self.field(), self.field());
                s(&["HSET", &k, &f, &v, &g, "2"])
            }
            30 => s(&["HGETALL", &k]),
            31 => {
                let f = self.field();
                s(&["HINCRBY", &k, &f, "3"])
            }
            32 => {
                let (m, n) = (self.member(), self.member());
                s(&["SADD", &k, &m, &n])
            }
            33 => s(&["SMEMBERS", &k]),
            34 => {
                let op = self.pick(&["SINTER", "SUNION", "SDIFF"]);
                let n = self.rng.usize(1..3);
                [vec![op], self.multi(n)].concat()
            }
            35 => {
                let op = self.pick(&["SINTERSTORE", "SUNIONSTORE", "SDIFFSTORE"]);
                let n = self.rng.usize(2..4);
                [vec![op], self.multi(n)].concat()
            }
            36 => {
                let m = self.member();
                [s(&["SMOVE"]), self.multi(2), vec![m]].concat()
            }
            37 => [s(&["SINTERCARD", "2"]), self.multi(2)].concat(),
            38 => {
                let (a, m, b, n) = (self.score(), self.member(), self.score(), self.member());
                s(&["ZADD", &k, &a, &m, &b, &n])
            }
            39 => s(&["ZRANGE", &k, "0", "-1", "WITHSCORES"]),
            40 => s(&["ZPOPMIN", &k]),
            41 => {
                let op = self.pick(&["ZUNIONSTORE", "ZINTERSTORE", "ZDIFFSTORE"]);
                [vec![op], self.multi(1), s(&["2"]), self.multi(2)].concat()
            }
            42 => {
                let op = self.pick(&["ZUNION", "ZINTER", "ZDIFF"]);
                [vec![op, "2".into()], self.multi(2), s(&["WITHSCORES"])].concat()
            }
            43 => [s(&["ZMPOP", "2"]), self.multi(2), s(&["MIN"])].concat(),
            44 => [s(&["BZPOPMIN"]), self.multi(2), s(&["0.01"])].concat(),
            45 => [s(&["BZMPOP", "0.01", "2"]), self.multi(2), s(&["MAX"])].concat(),
            46 => {
                let id = format!("{}-{}", self.rng.u32(1..4), self.rng.u32(..3));
                s(&["XADD", &k, &id, "f", &v])
            }
            47 => {
                let n = self.rng.usize(1..3);
                let ks = self.multi(n);
                let ids = vec!["0".to_string(); ks.len()];
                [s(&["XREAD", "COUNT", "2", "STREAMS"]), ks, ids].concat()
            }
            48 => s(&["XGROUP", "CREATE", &k, "g", "0", "MKSTREAM"]),
            49 => s(&[
                "XREADGROUP",
                "GROUP",
                "g",
                "c1",
                "COUNT",
                "2",
                "STREAMS",
                &k,
                ">",
            ]),
            50 => s(&["XPENDING", &k, "g"]),
            51 => s(&["XAUTOCLAIM", &k, "g", "c2", "0", "0-0"]),
            52 => s(&["XINFO", "STREAM", &k]),
            53 => {
                let (m, n) = (self.member(), self.member());
                s(&["PFADD", &k, &m, &n])
            }
            54 => [s(&["PFMERGE"]), self.multi(2)].concat(),
            55 => {
                let m = self.member();
                s(&["GEOADD", &k, "13.36", "38.11", &m])
            }
            56 => [
                s(&["GEOSEARCHSTORE"]),
                self.multi(2),
                s(&["FROMLONLAT", "13.36", "38.11", "BYRADIUS", "100", "km"]),
            ]
            .concat(),
            57 => {
                let bit = self.rng.u32(..16).to_string();
                let on = self.rng.u32(..2).to_string();
                s(&["SETBIT", &k, &bit, &on])
            }
            58 => {
                let op = self.pick(&["AND", "OR", "XOR"]);
                let n = self.rng.usize(2..4);
                [s(&["BITOP"]), vec![op], self.multi(n)].concat()
            }
            59 => s(&["EVAL", "return redis.call('GET', KEYS[1])", "1", &k]),
            60 => s(&[
                "EVAL",
                "return redis.call('SET', KEYS[1], ARGV[1])",
                "1",
                &k,
                &v,
            ]),
            _ => [s(&["UNLINK"]), self.keys(1, 3)].concat(),
        };
        c.shrink_to_fit();
        c
    }

    /// A transaction command, or a plain one, of one hash tag.
    fn loose(&mut self) -> Cmd {
        let k = self.pick(TAGGED);
        match self.rng.u32(..14) {
            0 | 1 => s(&["MULTI"]),
            2 | 3 => s(&["EXEC"]),
            4 => s(&["DISCARD"]),
            5 => s(&["WATCH", &k]),
            6 => s(&["WATCH"]),
            7 => s(&["UNWATCH"]),
            8 => s(&["SET", &k]),
            9 => s(&["INCR", &k]),
            10 => s(&["LPUSH", &k, "x"]),
            11 => s(&["GET", &k]),
            12 => s(&["PING"]),
            _ => s(&["EVAL", "return redis.call('INCR', KEYS[1])", "1", &k]),
        }
    }

    fn commands(&mut self, tagged: bool, lo: usize, hi: usize) -> Vec<Cmd> {
        let n = self.rng.usize(lo..hi);
        (0..n)
            .map(|_| loop {
                let c = self.command(tagged);
                // Inside a transaction on a cluster these are refused by design
                // (they act on every node; README "Scaling out"); on a
                // `key_prefix` database DBSIZE runs over SCAN, refused too.
                if !matches!(c[0].as_str(), "KEYS" | "DBSIZE") {
                    break c;
                }
            })
            .collect()
    }

    fn step(&mut self) -> Step {
        match self.rng.u32(..40) {
            0..=1 => Step::Scan,
            2..=3 => {
                let body = self.commands(self.cluster_safe, 1, 4);
                Step::Multi(body)
            }
            4 => {
                let key = self.pick(TAGGED);
                let before = self.commands(false, 0, 3);
                let body = self.commands(true, 1, 3);
                Step::Watch(key, before, body)
            }
            8..=9 => {
                let n = self.rng.usize(3..12);
                let mut cmds: Vec<Cmd> = (0..n).map(|_| self.loose()).collect();
                cmds.extend([s(&["DISCARD"]), s(&["UNWATCH"])]);
                Step::Loose(cmds)
            }
            5..=7 => {
                let n = self.rng.usize(2..9);
                Step::Pipeline((0..n).map(|_| self.command(false)).collect())
            }
            _ => Step::One(self.command(false)),
        }
    }
}

fn args(c: &Cmd) -> Vec<&[u8]> {
    c.iter().map(|a| a.as_bytes()).collect()
}

/// The elements of an array or set reply (`None`: not one).
fn elements(frame: &[u8]) -> Option<Vec<Vec<u8>>> {
    if !matches!(frame.first(), Some(b'*' | b'~')) {
        return None;
    }
    let nl = frame.iter().position(|&b| b == b'\n')?;
    let n: i64 = std::str::from_utf8(&frame[1..nl - 1]).ok()?.parse().ok()?;
    let mut at = nl + 1;
    let mut out = Vec::new();
    for _ in 0..n.max(0) {
        let len = super::resp_frame_len(&frame[at..]).ok()??;
        out.push(frame[at..at + len].to_vec());
        at += len;
    }
    Some(out)
}

/// A reply as compared: the elements of an unordered one sorted.
fn normal(cmd: &Cmd, reply: Vec<u8>) -> String {
    let unordered = matches!(
        cmd[0].as_str(),
        "KEYS" | "SMEMBERS" | "SINTER" | "SUNION" | "SDIFF"
    );
    match elements(&reply).filter(|_| unordered) {
        Some(mut e) => {
            e.sort();
            String::from_utf8_lossy(&e.concat()).into_owned()
        }
        None => String::from_utf8_lossy(&reply).into_owned(),
    }
}

/// EXEC's reply with each element put as [`normal`] puts its command's.
fn normal_exec(body: &[Cmd], reply: Vec<u8>) -> String {
    match elements(&reply).filter(|e| e.len() == body.len()) {
        Some(e) => body
            .iter()
            .zip(e)
            .map(|(c, r)| normal(c, r))
            .collect::<Vec<_>>()
            .join(""),
        None => String::from_utf8_lossy(&reply).into_owned(),
    }
}

fn scan_all(c: &mut RawClient) -> String {
    let mut cursor = b"0".to_vec();
    let mut keys = Vec::new();
    // (Bounded, but far above what a loop needs with `COUNT 3`: on the shared test
    // cluster a prefixed database's `SCAN` walks other tests' keys too, 10,000 of
    // them while `scan_walks_every_node_and_sees_every_key_once` runs, about 2,900
    // calls; a bound of 1,000 cut the loop short and the keys compared were partial.)
    let mut ended = false;
    for _ in 0..100_000 {
        let r = c.cmd(&[b"SCAN", &cursor, b"COUNT", b"3"]);
        let Some(parts) = elements(&r) else {
            return String::from_utf8_lossy(&r).into_owned();
        };
        // `$N\r\ncursor\r\n`
        let text = String::from_utf8_lossy(&parts[0]).into_owned();
        cursor = text.split("\r\n").nth(1).unwrap_or("0").as_bytes().to_vec();
        keys.extend(elements(&parts[1]).unwrap_or_default());
        if cursor == b"0" {
            ended = true;
            break;
        }
    }
    if !ended {
        return "(the SCAN loop did not end within 100,000 calls)".into();
    }
    // SCAN may return a key more than once (a rehash during the loop); which
    // keys it returns is what is compared (`scan_walks_every_node_and_sees_every_key_once`
    // in tests/cluster.rs checks each key comes once, on a quiet keyspace).
    keys.sort();
    keys.dedup();
    String::from_utf8_lossy(&keys.concat()).into_owned()
}

/// What one step shows on one client.
fn play(c: &mut RawClient, step: &Step) -> Vec<String> {
    let run = |c: &mut RawClient, cmds: &[Cmd]| -> Vec<String> {
        cmds.iter()
            .map(|cmd| normal(cmd, c.cmd(&args(cmd))))
            .collect()
    };
    let queue = |c: &mut RawClient, body: &[Cmd]| -> Vec<String> {
        let mut out = vec![String::from_utf8_lossy(&c.cmd(&[b"MULTI"])).into_owned()];
        for cmd in body {
            out.push(String::from_utf8_lossy(&c.cmd(&args(cmd))).into_owned());
        }
        out.push(normal_exec(body, c.cmd(&[b"EXEC"])));
        out
    };
    match step {
        Step::One(cmd) => run(c, std::slice::from_ref(cmd)),
        Step::Scan => vec![scan_all(c)],
        Step::Pipeline(cmds) => {
            let wire: Vec<u8> = cmds
                .iter()
                .flat_map(|cmd| super::resp_cmd(&args(cmd)))
                .collect();
            c.send(&wire);
            cmds.iter().map(|cmd| normal(cmd, c.read_reply())).collect()
        }
        Step::Multi(body) => queue(c, body),
        Step::Loose(cmds) => cmds
            .iter()
            .map(|cmd| String::from_utf8_lossy(&c.cmd(&args(cmd))).into_owned())
            .collect(),
        Step::Watch(key, before, body) => {
            let mut out =
                vec![String::from_utf8_lossy(&c.cmd(&[b"WATCH", key.as_bytes()])).into_owned()];
            out.extend(run(c, before));
            out.extend(queue(c, body));
            out
        }
    }
}

fn show(step: &Step) -> String {
    let line = |c: &Cmd| c.join(" ");
    match step {
        Step::One(c) => line(c),
        Step::Scan => "SCAN 0 … (whole loop)".into(),
        Step::Loose(cmds) => cmds.iter().map(line).collect::<Vec<_>>().join("; "),
        Step::Pipeline(cmds) => format!(
            "pipelined: {}",
            cmds.iter().map(line).collect::<Vec<_>>().join("; ")
        ),
        Step::Multi(b) => format!(
            "MULTI; {}; EXEC",
            b.iter().map(line).collect::<Vec<_>>().join("; ")
        ),
        Step::Watch(k, before, b) => format!(
            "WATCH {k}; {}; MULTI; {}; EXEC",
            before.iter().map(line).collect::<Vec<_>>().join("; "),
            b.iter().map(line).collect::<Vec<_>>().join("; ")
        ),
    }
}

/// Plays `steps` steps of the sequence of `seed` on each client (the first is
/// the reference Redis), each starting from an empty database (`FLUSHDB`);
/// `Err` names the first step whose replies differ, with every client's.
pub fn differ(
    clients: &mut [RawClient],
    seed: u64,
    steps: usize,
    cluster_safe: bool,
) -> Result<(), String> {
    let mut g = Gen {
        rng: fastrand::Rng::with_seed(seed),
        cluster_safe,
    };
    for c in clients.iter_mut() {
        assert_eq!(c.cmd(&[b"FLUSHDB"]), b"+OK\r\n");
    }
    for i in 0..steps {
        let step = g.step();
        let seen: Vec<Vec<String>> = clients.iter_mut().map(|c| play(c, &step)).collect();
        if seen.iter().any(|s| *s != seen[0]) {
            let mut text = format!("seed {seed} step {i}: {}\n", show(&step));
            for (n, s) in seen.iter().enumerate() {
                text.push_str(&format!("  client {n}: {s:?}\n"));
            }
            return Err(text);
        }
    }
    Ok(())
}
