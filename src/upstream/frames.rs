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

    /// The bytes of a frame [`Frames::next_frame`] found (until the next `take`).
    pub fn bytes(&self, at: Range<usize>) -> &[u8] {
        &self.buf[at]
    }

    /// Takes every frame found so far off the buffer, back to back.
    pub fn take(&mut self) -> Bytes {
        let n = std::mem::take(&mut self.scanned);
        self.buf.split_to(n).freeze()
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
