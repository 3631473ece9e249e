//! The one reader of an upstream connection's reply stream, shared by every loop
//! that reads replies (shared slots, exclusive connections, subscribers,
//! connection setup).
//!
//! It keeps the bytes read so far and where the frame being read has got to (a
//! resumable [`Scanner`]), so a large reply arriving over many reads is scanned
//! once in total: the cost is linear in its size. Frames are found one at a time
//! and handed out in runs ([`Frames::take`]), as the bytes Redis sent, never
//! decoded.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::protocol::reply::{Frame, ReplyError, Scanner};

/// Free space kept in the buffer before a read.
const MIN_FREE: usize = 16 * 1024;

/// Buffered replies of one connection.
#[derive(Debug)]
pub struct Frames {
    buf: BytesMut,
    scanner: Scanner,
    /// Bytes at the front of `buf` that form complete frames not yet taken.
    scanned: usize,
    /// How much to grow the buffer by when it runs low.
    grow: usize,
}

impl Frames {
    /// An empty reader that grows its buffer `grow` bytes at a time.
    pub fn new(grow: usize) -> Frames {
        Frames {
            buf: BytesMut::with_capacity(grow),
            scanner: Scanner::new(),
            scanned: 0,
            grow,
        }
    }

    /// The next complete frame after those already found, if it is buffered, and
    /// where it lies in the buffer.
    pub fn next_frame(&mut self) -> Result<Option<(Frame, Range<usize>)>, ReplyError> {
        let Some(frame) = self.scanner.scan(&self.buf[self.scanned..])? else {
            return Ok(None);
        };
        let at = self.scanned..self.scanned + frame.len;
        self.scanned = at.end;
        Ok(Some((frame, at)))
    }

    /// The complete push at the start of the buffer, taken off it (`None`: no
    /// frame found yet, and none there that is complete and a push).
    pub fn take_push(&mut self) -> Option<Bytes> {
        if self.scanned != 0 || self.buf.first() != Some(&b'>') {
            return None;
        }
        match self.next_frame() {
            Ok(Some((frame, _))) if frame.is_push => Some(self.take()),
            // (A frame that is not a push after all stays found, for the reader
            // to judge.)
            _ => None,
        }
    }

    /// The bytes of a frame [`Frames::next_frame`] found (until the next `take`).
    pub fn bytes(&self, at: Range<usize>) -> &[u8] {
        &self.buf[at]
    }

    /// Takes every frame found so far off the buffer, back to back.
    pub fn take(&mut self) -> Bytes {
        let n = std::mem::take(&mut self.scanned);
        self.buf.split_to(n).freeze()
    }

    /// Takes, once at least `min` bytes are ready, every frame found so far and
    /// the scanned part of the frame being read, so a large reply can be passed on
    /// while the rest of it arrives. The rest of the frame is found as usual.
    pub fn take_partial(&mut self, min: usize) -> Option<Bytes> {
        let partial = self.scanner.scanned(self.buf.len() - self.scanned);
        let n = self.scanned + partial;
        if n < min.max(1) {
            return None;
        }
        if partial > 0 {
            let first = self.buf[self.scanned];
            self.scanner.consume(partial, first);
        }
        self.scanned = 0;
        Some(self.buf.split_to(n).freeze())
    }

    /// The first byte after the frames found (the type of the frame being read).
    pub fn first_unread(&self) -> Option<u8> {
        self.buf.get(self.scanned).copied()
    }

    /// Whether [`Frames::take_partial`] with `min` would take something now.
    pub fn take_ready(&self, min: usize) -> bool {
        self.scanned + self.scanner.scanned(self.buf.len() - self.scanned) >= min.max(1)
    }

    /// Whether bytes beyond the frames found are buffered (part of a frame, or
    /// frames not looked at yet).
    pub fn has_unread(&self) -> bool {
        self.buf.len() > self.scanned
    }

    /// Reads more bytes from `rd`: `Ok(0)` at the end of the stream.
    /// Cancellation-safe (nothing is lost if the future is dropped).
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < MIN_FREE.min(self.grow) {
            self.buf.reserve(self.grow);
        }
        rd.read_buf(&mut self.buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply stream read in small pieces, with parts taken whenever the reader
    /// offers them: parts plus the rest are exactly the stream, and every frame
    /// still ends where it ends.
    #[tokio::test]
    async fn parts_taken_mid_frame_add_up_to_the_frames() {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        let mut rng = fastrand::Rng::with_seed(3);
        for i in 0..40 {
            match i % 4 {
                0 => {
                    let n = rng.usize(0..2000);
                    stream.extend_from_slice(format!("*{n}\r\n").as_bytes());
                    for j in 0..n {
                        let item = format!("item-{j}");
                        stream
                            .extend_from_slice(format!("${}\r\n{item}\r\n", item.len()).as_bytes());
                    }
                }
                1 => {
                    let body = vec![b'b'; rng.usize(0..50_000)];
                    stream.extend_from_slice(format!("${}\r\n", body.len()).as_bytes());
                    stream.extend_from_slice(&body);
                    stream.extend_from_slice(b"\r\n");
                }
                2 => stream.extend_from_slice(b"%1\r\n+k\r\n*2\r\n:1\r\n$3\r\nabc\r\n"),
                _ => stream.extend_from_slice(b"-ERR x\r\n"),
            }
            ends.push(stream.len());
        }
        let (mut wr, mut rd) = tokio::io::duplex(1 << 20);
        let data = stream.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut rng = fastrand::Rng::with_seed(4);
            let mut at = 0;
            while at < data.len() {
                let n = rng.usize(1..3000).min(data.len() - at);
                wr.write_all(&data[at..at + n]).await.expect("write");
                at += n;
            }
        });
        let mut frames = Frames::new(1024);
        let mut out = Vec::new();
        let mut found = Vec::new();
        while found.len() < ends.len() {
            match frames.next_frame().expect("valid") {
                Some(_) => {
                    out.extend_from_slice(&frames.take());
                    found.push(out.len());
                }
                None => {
                    if let Some(part) = frames.take_partial(rng.usize(1..4096)) {
                        out.extend_from_slice(&part);
                    }
                    assert!(frames.fill(&mut rd).await.expect("read") > 0);
                }
            }
        }
        writer.await.expect("writer");
        assert_eq!(found, ends);
        assert!(out == stream);
    }
}
