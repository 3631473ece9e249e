//! Micro-benchmarks of the hot-path protocol code: the request parser, the reply
//! scanner, and a cluster key's hash slot. Run with `cargo bench --bench parser`.
//!
//! The `big` groups parse one huge frame (a 1M-argument MSET, 1M- and 3M-element
//! array replies like LRANGE's) in one buffer and fed in 1 KiB / 16 KiB reads
//! through the resumable API: the chunked times must stay close to the one-shot
//! ones (linear time; re-parsing from the start on every read would be quadratic).

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use redis_sidecar::config::Limits;
use redis_sidecar::protocol::{reply, request};

fn pipeline(n: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    for i in 0..n {
        let key = format!("key:{i:06}");
        request::encode_command(
            &[&b"SET"[..], key.as_bytes(), b"value-of-moderate-size"],
            &mut buf,
        );
    }
    buf
}

fn bench_parse(c: &mut Criterion) {
    let limits = Limits::default();
    let buf = pipeline(1000);
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("parse_set_pipeline_1000", |b| {
        let mut args = Vec::new();
        b.iter(|| {
            let mut pos = 0;
            while let Ok(Some(r)) = request::parse(&buf[pos..], &limits, &mut args) {
                pos += r.len;
            }
            black_box(pos)
        })
    });
    let inline = b"SET key:000001 \"value with spaces\"\r\n".repeat(1000);
    g.bench_function("parse_inline_1000", |b| {
        let mut args = Vec::new();
        b.iter(|| {
            let mut pos = 0;
            while let Ok(Some(r)) = request::parse(&inline[pos..], &limits, &mut args) {
                pos += r.len;
            }
            black_box(pos)
        })
    });
    g.finish();

    let mut replies = Vec::new();
    for i in 0..1000 {
        if i % 2 == 0 {
            replies.extend_from_slice(b"+OK\r\n");
        } else {
            reply::bulk(&mut replies, b"value-of-moderate-size");
        }
    }
    let mut g = c.benchmark_group("reply");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("scan_mixed_1000", |b| {
        b.iter(|| {
            let mut pos = 0;
            while let Ok(Some(f)) = reply::scan(&replies[pos..]) {
                pos += f.len;
            }
            black_box(pos)
        })
    });
    g.finish();
}

/// `MSET key:0 v0 key:1 v1 ...` with `args` arguments in all.
fn big_mset(args: usize) -> Vec<u8> {
    let mut v: Vec<Vec<u8>> = Vec::with_capacity(args);
    v.push(b"MSET".to_vec());
    for i in 0..(args - 1) / 2 {
        v.push(format!("key:{i}").into_bytes());
        v.push(format!("v{i}").into_bytes());
    }
    let mut buf = Vec::new();
    request::encode_command(&v, &mut buf);
    buf
}

/// An array reply of `n` bulk strings, like LRANGE's.
fn big_array(n: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    reply::array_header(&mut buf, n);
    for i in 0..n {
        reply::bulk(&mut buf, format!("element:{i}").as_bytes());
    }
    buf
}

/// Bytes per read for the chunked variants (0: the whole frame in one buffer).
const CHUNKS: [usize; 3] = [0, 1024, 16 * 1024];

fn chunk_name(chunk: usize) -> String {
    match chunk {
        0 => "one_buffer".into(),
        c => format!("{}KiB_reads", c / 1024),
    }
}

fn bench_big(c: &mut Criterion) {
    let limits = Limits::default();
    let mset = big_mset(1_000_001);
    let mut g = c.benchmark_group("big_request");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(mset.len() as u64));
    for chunk in CHUNKS {
        g.bench_function(BenchmarkId::new("mset_1M_args", chunk_name(chunk)), |b| {
            let mut parser = request::Parser::default();
            let mut args = Vec::new();
            let step = if chunk == 0 { mset.len() } else { chunk };
            b.iter(|| {
                let mut end = 0;
                loop {
                    end = (end + step).min(mset.len());
                    if let Some(r) = parser.parse(&mset[..end], &limits, &mut args).unwrap() {
                        break black_box((r.len, args.len()));
                    }
                }
            })
        });
    }
    g.finish();

    for n in [1_000_000, 3_000_000] {
        let array = big_array(n);
        let mut g = c.benchmark_group("big_reply");
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        g.throughput(Throughput::Bytes(array.len() as u64));
        for chunk in CHUNKS {
            let name = format!("array_{}M", n / 1_000_000);
            g.bench_function(BenchmarkId::new(name, chunk_name(chunk)), |b| {
                let mut scanner = reply::Scanner::new();
                let step = if chunk == 0 { array.len() } else { chunk };
                b.iter(|| {
                    let mut end = 0;
                    loop {
                        end = (end + step).min(array.len());
                        if let Some(f) = scanner.scan(&array[..end]).unwrap() {
                            break black_box(f.len);
                        }
                    }
                })
            });
        }
        g.finish();
    }
}

/// The hash slot of 1,000 keys as `redis-benchmark -r 100000` names them
/// (`key:000000012345`, 16 bytes): once per request routed to a cluster.
fn bench_key_slot(c: &mut Criterion) {
    let keys: Vec<String> = (0..1000).map(|i| format!("key:{:012}", i * 97)).collect();
    let mut g = c.benchmark_group("key_slot");
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("16_byte_keys", |b| {
        b.iter(|| {
            keys.iter()
                .map(|k| redis_sidecar::cluster::slot::key_slot(black_box(k.as_bytes())))
                .fold(0u32, |a, s| a.wrapping_add(u32::from(s)))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_parse, bench_big, bench_key_slot);
criterion_main!(benches);
