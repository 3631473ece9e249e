//! `PROXY SLOWLOG`: the proxy's own slow log, as Redis's `SLOWLOG`.
//!
//! A batch of commands forwarded on a shared connection whose reply took at least
//! `slowlog_threshold_ms` (default 10 ms; 0 logs everything) is kept, newest first,
//! up to `slowlog_max_len` entries (default 128). The time is what the client waited
//! for the proxy: from sending the batch upstream to its reply (retries included).
//! Commands on exclusive connections (transactions, blocking commands) are not
//! logged: their time includes waiting by design, as Redis keeps blocking time out
//! of its own slow log.
//!
//! An entry names the commands, never their arguments (keys and values stay out of
//! the proxy's memory and of the reply), with the database, the client's address and
//! name.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::protocol::reply;

/// Command names kept per entry (a longer pipeline shows the first ones and a count).
const NAMES_KEPT: usize = 8;

/// One slow batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Unique, increasing.
    pub id: u64,
    /// When it was logged (Unix seconds).
    pub at: u64,
    /// How long the client waited.
    pub duration: Duration,
    /// The database's label (`'main' (db 0)`).
    pub database: String,
    /// The first command names of the batch, lower case.
    pub commands: Vec<&'static str>,
    /// How many commands the batch held.
    pub count: u32,
    /// The client's address.
    pub addr: String,
    /// `CLIENT SETNAME`, if any.
    pub name: Vec<u8>,
}

/// The log: a bounded list, newest first.
#[derive(Debug)]
pub struct SlowLog {
    threshold: Duration,
    max_len: usize,
    next_id: AtomicU64,
    entries: Mutex<VecDeque<Entry>>,
}

impl SlowLog {
    /// A log keeping batches slower than `threshold`, at most `max_len` of them.
    pub fn new(threshold: Duration, max_len: usize) -> SlowLog {
        SlowLog {
            threshold,
            max_len,
            next_id: AtomicU64::new(0),
            entries: Mutex::new(VecDeque::new()),
        }
    }

    /// Whether a batch that took `took` belongs in the log.
    #[inline]
    pub fn is_slow(&self, took: Duration) -> bool {
        self.max_len > 0 && took >= self.threshold
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs a slow batch.
    pub fn push(
        &self,
        duration: Duration,
        database: String,
        commands: impl Iterator<Item = &'static str>,
        count: u32,
        addr: &str,
        name: Option<&[u8]>,
    ) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let entry = Entry {
            id: self.next_id.fetch_add(1, Relaxed),
            at,
            duration,
            database,
            commands: commands.take(NAMES_KEPT).collect(),
            count,
            addr: addr.to_string(),
            name: name.unwrap_or_default().to_vec(),
        };
        let mut entries = self.lock();
        entries.push_front(entry);
        entries.truncate(self.max_len);
    }

    /// The newest `n` entries.
    pub fn get(&self, n: usize) -> Vec<Entry> {
        self.lock().iter().take(n).cloned().collect()
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Forgets every entry.
    pub fn reset(&self) {
        self.lock().clear();
    }
}

/// `PROXY SLOWLOG GET` as RESP: an array of entries, each Redis's six fields (id,
/// Unix time, microseconds, the commands, client address, client name) and the
/// database. A batch of more commands than shown ends its list with `+N more`.
pub fn render(entries: &[Entry]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", entries.len()).into_bytes();
    for e in entries {
        out.extend_from_slice(b"*7\r\n");
        reply::integer(&mut out, e.id as i64);
        reply::integer(&mut out, e.at as i64);
        reply::integer(
            &mut out,
            e.duration.as_micros().min(i64::MAX as u128) as i64,
        );
        let more = (e.count as usize).saturating_sub(e.commands.len());
        let shown = e.commands.len() + usize::from(more > 0);
        out.extend_from_slice(format!("*{shown}\r\n").as_bytes());
        for c in &e.commands {
            reply::bulk(&mut out, c.as_bytes());
        }
        if more > 0 {
            reply::bulk(&mut out, format!("+{more} more").as_bytes());
        }
        reply::bulk(&mut out, e.addr.as_bytes());
        reply::bulk(&mut out, &e.name);
        reply::bulk(&mut out, e.database.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(log: &SlowLog, ms: u64, cmds: &[&'static str]) {
        log.push(
            Duration::from_millis(ms),
            "'main' (db 0)".into(),
            cmds.iter().copied(),
            cmds.len() as u32,
            "127.0.0.1:5000",
            Some(b"app"),
        );
    }

    #[test]
    fn keeps_the_newest_up_to_its_length() {
        let log = SlowLog::new(Duration::from_millis(10), 2);
        assert!(!log.is_slow(Duration::from_millis(9)));
        assert!(log.is_slow(Duration::from_millis(10)));
        push(&log, 11, &["get"]);
        push(&log, 12, &["set"]);
        push(&log, 13, &["incr"]);
        let got = log.get(10);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].id, got[0].commands.clone()), (2, vec!["incr"]));
        assert_eq!((got[1].id, got[1].commands.clone()), (1, vec!["set"]));
        log.reset();
        assert!(log.is_empty());
    }

    #[test]
    fn a_long_pipeline_shows_its_first_commands_and_a_count() {
        let log = SlowLog::new(Duration::ZERO, 8);
        let names = ["get"; 20];
        push(&log, 1, &names);
        let out = String::from_utf8(render(&log.get(1))).unwrap();
        assert!(out.starts_with("*1\r\n*7\r\n:0\r\n:"), "{out}");
        assert!(out.contains(":1000\r\n*9\r\n"), "{out}");
        assert!(
            out.contains("$8\r\n+12 more\r\n$14\r\n127.0.0.1:5000\r\n$3\r\napp\r\n"),
            "{out}"
        );
    }

    #[test]
    fn a_zero_length_log_keeps_nothing() {
        let log = SlowLog::new(Duration::ZERO, 0);
        assert!(!log.is_slow(Duration::from_secs(1)));
    }
}
