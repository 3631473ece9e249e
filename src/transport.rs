//! The byte stream under a client session or an upstream connection: plain TCP,
//! TLS over TCP, or (clients only) a Unix domain socket. An enum rather than a boxed trait object, so the plain path stays a
//! direct call on the `TcpStream` (no allocation, no dynamic dispatch), and
//! [`Stream::into_split`] keeps tokio's lock-free `into_split` for plain TCP (TLS
//! halves share the session through `tokio::io::split`).
//!
//! Socket options (`TCP_NODELAY`, keepalive) and addresses are read from the TCP
//! socket underneath, whichever variant wraps it (a Unix socket has neither).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{unix, TcpStream, UnixStream};

/// A TLS session over TCP, either side (client or server).
pub type TlsStream = tokio_rustls::TlsStream<TcpStream>;

/// Plain TCP, TLS over TCP, or a Unix domain socket.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (boxed: a rustls session is large, and the plain variant stays small).
    Tls(Box<TlsStream>),
    /// A client on the Unix socket listener (`unixsocket`; boxed: a third
    /// unboxed variant would add a tag to every idle client's task).
    Unix(Box<UnixStream>),
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Stream {
        Stream::Plain(s)
    }
}

impl Stream {
    /// The TCP socket underneath (`None` for a Unix socket).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(s.get_ref().0),
            Stream::Unix(_) => None,
        }
    }

    /// The peer's address (an error for a Unix socket, whose peer is unnamed).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().ok_or_else(not_tcp)?.peer_addr()
    }

    /// The local address (an error for a Unix socket: see [`Stream::socket_path`]).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().ok_or_else(not_tcp)?.local_addr()
    }

    /// The path of the Unix socket the client connected to.
    pub fn socket_path(&self) -> Option<std::path::PathBuf> {
        match self {
            Stream::Unix(s) => s.local_addr().ok()?.as_pathname().map(|p| p.to_path_buf()),
            _ => None,
        }
    }

    /// Sets `TCP_NODELAY` on the socket underneath (nothing to do on a Unix socket).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self.tcp() {
            Some(t) => t.set_nodelay(on),
            None => Ok(()),
        }
    }

    /// Whether the client has sent something (or closed, or an error is
    /// pending), waiting for it; a TLS stream is always ready (its records are
    /// read by the session).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => s.poll_read_ready(cx),
            Stream::Tls(_) => Poll::Ready(Ok(())),
            Stream::Unix(s) => s.poll_read_ready(cx),
        }
    }

    /// Whether the peer closed the connection (or it failed), asked of the socket
    /// itself with a peek that waits for nothing. [`Stream::try_read`] trusts the
    /// runtime's last word on readiness, which has not yet seen a close that
    /// arrived since the reactor last turned (a busy runtime lags by
    /// milliseconds): an idle connection Redis just closed would pass for alive.
    /// `false` when bytes are waiting (they say nothing of the end) or nothing is.
    pub fn peer_closed(&self) -> bool {
        let tcp = match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
            Stream::Unix(_) => return false,
        };
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(tcp).peek(&mut probe) {
            Ok(n) => n == 0,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    /// Reads without waiting: `Ok(0)` at end of stream, `WouldBlock` when nothing
    /// is there. For TLS, records that carry no data (a TLS 1.3 session ticket) are
    /// consumed and do not count as bytes.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.try_read(buf),
            Stream::Unix(s) => s.try_read(buf),
            Stream::Tls(s) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut rb = ReadBuf::new(buf);
                match Pin::new(s.as_mut()).poll_read(&mut cx, &mut rb) {
                    Poll::Ready(Ok(())) => Ok(rb.filled().len()),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// Splits into a read half and a write half that can move to different tasks.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
            Stream::Unix(s) => {
                let (r, w) = (*s).into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
        }
    }
}

fn not_tcp() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "a Unix socket has no IP address",
    )
}

/// The read half of a [`Stream`].
#[derive(Debug)]
pub enum ReadHalf {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS.
    Tls(tokio::io::ReadHalf<Box<TlsStream>>),
    /// A Unix socket.
    Unix(unix::OwnedReadHalf),
}

/// The write half of a [`Stream`].
#[derive(Debug)]
pub enum WriteHalf {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// TLS.
    Tls(tokio::io::WriteHalf<Box<TlsStream>>),
    /// A Unix socket.
    Unix(unix::OwnedWriteHalf),
}

/// `AsyncRead` for an enum whose variants all implement it.
macro_rules! delegate_read {
    ($ty:ty) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

/// `AsyncWrite` for an enum whose variants all implement it.
macro_rules! delegate_write {
    ($ty:ty) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    Self::Plain(s) => s.is_write_vectored(),
                    Self::Tls(s) => s.is_write_vectored(),
                    Self::Unix(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_flush(cx),
                    Self::Tls(s) => Pin::new(s).poll_flush(cx),
                    Self::Unix(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_read!(Stream);
delegate_write!(Stream);
delegate_read!(ReadHalf);
delegate_write!(WriteHalf);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    /// A close that arrived while the runtime did not turn: `try_read` still goes
    /// by the last readiness it saw ("would block": alive), the socket knows.
    #[tokio::test]
    async fn a_close_the_runtime_has_not_seen_yet_is_seen_by_the_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut peer, _) = listener.accept().expect("accept");
        let mut stream = Stream::Plain(tcp);
        peer.write_all(b"+OK\r\n").expect("write");
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.expect("read");
        assert!(!stream.peer_closed(), "open, nothing to read");
        let mut probe = [0u8; 1];
        let e = stream.try_read(&mut probe).expect_err("nothing to read");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // Closed while this (current-thread) runtime does not turn.
        drop(peer);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let e = stream.try_read(&mut probe).expect_err("unseen close");
        assert_eq!(
            e.kind(),
            io::ErrorKind::WouldBlock,
            "the runtime has not turned"
        );
        assert!(stream.peer_closed());
    }
}
