//! Busy polling (`busy_poll_us`, src/busy_poll.rs), as the binary runs it by
//! default: after reads it keeps polling for a short window, an idle proxy does
//! not spin, and `busy_poll_us: 0` turns it off.
//! The latency it buys is measured in BENCHMARKS.md, not here. One test per
//! binary on purpose: the figures are process-wide and the CPU time is read
//! from the proxy's process.

mod support;

use std::time::Duration;

use redis_sidecar::busy_poll::{decide, Decision, Host, DEFAULT_WINDOW_US};
use support::{databases_yaml, BinaryProxy, RawClient, RedisServer};

/// `PROXY INFO server` as field -> value.
fn server_info(c: &mut RawClient) -> std::collections::HashMap<String, String> {
    let reply = c.cmd(&[b"PROXY", b"INFO", b"server"]);
    String::from_utf8_lossy(&reply)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim_end().to_string()))
        .collect()
}

fn number(info: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    info.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing or not a number in {info:?}"))
}

/// CPU time (user + system) of process `pid`, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// Sends `n` GETs one at a time (a single client waiting for each reply).
fn one_at_a_time(c: &mut RawClient, n: usize) {
    for i in 0..n {
        let key = format!("bp:{}", i % 10);
        assert_eq!(c.cmd(&[b"GET", key.as_bytes()]), b"$-1\r\n");
    }
}

#[test]
fn the_proxy_polls_after_reads_and_not_while_idle() {
    let redis = RedisServer::start();
    // The binary runs on a current-thread runtime (`--threads 1`, the default).
    let expected = decide(
        DEFAULT_WINDOW_US,
        Host {
            current_thread: true,
            ..Host::probe()
        },
    );

    let proxy = BinaryProxy::start(&redis);
    let mut c = proxy.client();
    one_at_a_time(&mut c, 2000);
    let after = server_info(&mut c);
    let pid = number(&after, "process_id");
    match expected {
        Decision::On(window) => {
            assert_eq!(after["busy_poll"], "on", "{after:?}");
            assert_eq!(number(&after, "busy_poll_us"), window.as_micros() as u64);
            assert!(number(&after, "busy_poll_spins") > 0, "{after:?}");
        }
        Decision::Off(why) => {
            // This host cannot (one CPU, a CPU quota, no schedstat): it says why.
            assert_eq!(after["busy_poll"], "off", "{after:?}");
            assert_eq!(after["busy_poll_off_reason"], why, "{after:?}");
            assert_eq!(number(&after, "busy_poll_spins"), 0, "{after:?}");
        }
    }

    // Idle: no spinning (it would take a whole CPU: 100 ticks a second).
    std::thread::sleep(Duration::from_millis(100));
    let before = server_info(&mut c);
    let t0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - t0;
    let idle = server_info(&mut c);
    assert!(used <= 10, "an idle proxy used {used} ticks in 1 s");
    // What the two INFO requests started, at most: two windows.
    assert!(
        number(&idle, "busy_poll_spins") <= number(&before, "busy_poll_spins") + 2,
        "{before:?} -> {idle:?}"
    );
    drop(proxy);

    // `busy_poll_us: 0` turns it off.
    let yaml = format!(
        "{}busy_poll_us: 0\n",
        databases_yaml("127.0.0.1", redis.port())
    );
    let proxy = BinaryProxy::start_with(&yaml, &[], &[]);
    let mut c = proxy.client();
    one_at_a_time(&mut c, 200);
    let off = server_info(&mut c);
    assert_eq!(off["busy_poll"], "off", "{off:?}");
    assert_eq!(off["busy_poll_off_reason"], "busy_poll_us is 0", "{off:?}");
    assert_eq!(number(&off, "busy_poll_spins"), 0, "{off:?}");
}
