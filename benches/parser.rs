//! Micro-benchmarks of the hot-path protocol code: the request parser and the reply
//! scanner. Run with `cargo bench --bench parser`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
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

criterion_group!(benches, bench_parse);
criterion_main!(benches);
