//! Replays the fuzz targets' checked-in corpus (`fuzz/corpus/`) through the same
//! property checks the targets run (`tests/fuzz_props/mod.rs`) on stable Rust, so
//! CI checks every input the fuzzers kept without needing nightly or libFuzzer.
//! Also: parsing allocates in proportion to the bytes received, never to a length
//! a request claims (measured with a counting allocator).
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seed_corpus` writes the seed
//! inputs below into `fuzz/corpus/` (see fuzz/README.md).

mod fuzz_props;

use std::alloc::{GlobalAlloc, Layout, System};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use redis_sidecar::config::Limits;
use redis_sidecar::protocol::request::Parser;

/// Counts the bytes allocated (not freed) by the thread that enabled it.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
            ALLOCATED.fetch_add(new_size.saturating_sub(layout.size()), Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated by `f` on this thread.
fn allocated_by(f: impl FnOnce()) -> usize {
    ALLOCATED.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATED.load(Ordering::Relaxed)
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read corpus file");
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "fuzz/corpus/{target} has only {} files",
        files.len()
    );
    files
}

/// Runs `check` on every file, reporting which file failed. On a thread with a
/// large stack: redis-protocol's decoder is recursive (200 nested aggregates, the
/// most the checks give it, overflow a test thread's 2 MiB in a debug build).
fn replay(target: &str, check: fn(&[u8])) {
    let files = corpus(target);
    let run = move || {
        for (path, bytes) in files {
            if let Err(e) = std::panic::catch_unwind(|| check(&bytes)) {
                panic!(
                    "{}: {:?}\ninput: {:?}",
                    path.display(),
                    e.downcast_ref::<String>()
                        .map(String::as_str)
                        .or(e.downcast_ref::<&str>().copied()),
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    };
    let replay = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(run)
        .expect("spawn");
    if let Err(e) = replay.join() {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn request_parser_corpus_keeps_its_properties() {
    replay("request_parser", fuzz_props::check_requests);
}

#[test]
fn reply_framer_corpus_keeps_its_properties() {
    replay("reply_framer", fuzz_props::check_replies);
}

/// Parsing a request, in one piece or byte by byte, allocates in proportion to
/// the bytes received: a claimed count or length (`*2147483647`, `$536870912`)
/// reserves nothing.
#[test]
fn parsing_allocates_by_bytes_received_not_by_claimed_lengths() {
    let mut inputs: Vec<Vec<u8>> = corpus("request_parser")
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    inputs.extend(
        [
            &b"*2147483647\r\n"[..],
            b"*1048576\r\n$536870912\r\n",
            b"*1048576\r\n$3\r\nGET\r\n$536870912\r\nabc",
            b"*3\r\n$9223372036854775807\r\n",
        ]
        .map(<[u8]>::to_vec),
    );
    let limits = Limits::default();
    for input in inputs {
        let mut args: Vec<Range<usize>> = Vec::with_capacity(16);
        let one = allocated_by(|| {
            let _ = Parser::new().parse(&input, &limits, &mut args);
        });
        let mut parser = Parser::new();
        args.clear();
        let pieces = allocated_by(|| {
            for end in 1..=input.len().min(4096) {
                if !matches!(parser.parse(&input[..end], &limits, &mut args), Ok(None)) {
                    break;
                }
            }
        });
        // At most an argument range per 4 bytes (`$0\r\n`, 16 bytes a range, with
        // Vec doubling) and an inline split's copies, plus a constant.
        let bound = 64 * input.len() + 4096;
        assert!(
            one <= bound && pieces <= bound,
            "{one} / {pieces} bytes allocated parsing {} bytes: {:?}",
            input.len(),
            String::from_utf8_lossy(&input[..input.len().min(80)])
        );
    }
}

/// Writes the seed inputs (cases from the unit and incremental tests, and the
/// requests and replies Redis really exchanges) into `fuzz/corpus/`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand (fuzz/README.md)"]
fn write_seed_corpus() {
    let requests: &[&[u8]] = &[
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b"*1\r\n$4\r\n\r\n\r\n\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n*1\r\n$4\r\nPING\r\n",
        b"*x\r\n",
        b"*1\r\n+OK\r\n",
        b"*1\r\n$-5\r\n",
        b"*1\r\n$999999999999\r\n",
        b"*0\r\n*-1\r\n\r\n\n*-7\r\n",
        b"*-0\r\n",
        b"*1\r\n$-0\r\n",
        b"*+1\r\n$4\r\nPING\r\n",
        b"*01\r\n$4\r\nPING\r\n",
        b"*1\r\n$04\r\nPING\r\n",
        b"*1\r\n$+4\r\nPING\r\n",
        b"*1\r\n$-1\r\n",
        b"*2147483647\r\n",
        b"*2147483648\r\n",
        b"*9223372036854775807\r\n",
        b"*-9223372036854775808\r\n",
        b"*11\r\n$1\r\na\r\n",
        b"*1\r\n$16385\r\n",
        b"*1\r\n$3\r\nabcXY*1\r\n$4\r\nPING\r\n",
        b"SET k \"a b\\x41\\n\" 'it\\'s'\r\nrest",
        b"PING\n",
        b"SET \"a\r\n",
        b"SET \"a\"b\r\n",
        b"ECHO 'x' \"y\"\r\nPING\r\n",
        b"  \t PING  \r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n",
        b"*1\r\n$4\r\nPI",
        b"*4\r\n$4\r\nHSET\r\n$1\r\nh\r\n$1\r\nf\r\n$1\r\nv\r\nQUIT\r\n",
    ];
    let replies: &[&[u8]] = &[
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
        b",3.14\r\n,inf\r\n,-inf\r\n,nan\r\n",
        b"#t\r\n#f\r\n",
        b"(12345678901234567890\r\n",
        b"=15\r\ntxt:Some string\r\n",
        b"!8\r\nSYNTAX x\r\n",
        b"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n:2\r\n",
        b"~2\r\n+a\r\n+b\r\n",
        b">3\r\n+message\r\n+ch\r\n$2\r\nhi\r\n",
        b"|1\r\n+ttl\r\n:3\r\n$2\r\nhi\r\n",
        b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n%1\r\n$1\r\nk\r\n~1\r\n#t\r\n",
        b"hello\r\n",
        b"$x\r\n",
        b"+OK\n",
        b"*-0\r\n:1\r\n",
        b"$-0\r\n\r\n",
        b"*01\r\n:1\r\n",
        b"$+1\r\na\r\n",
        b"*?\r\n:1\r\n.\r\n",
        b"$?\r\n;3\r\nabc\r\n;0\r\n",
        b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        b"$9223372036854775807\r\n",
        b"*9223372036854775807\r\n",
        b"%9223372036854775807\r\n",
        b"+PONG\r\n$5\r\nhello\r\n*2\r\n$7\r\nmessage\r\n$2\r\nch\r\n",
    ];
    for (target, seeds) in [("request_parser", requests), ("reply_framer", replies)] {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write seed");
        }
    }
}
