//! Exclusive upstream connections for commands that change a connection's state
//! (MULTI … EXEC, WATCH, blocking pops), taken from a per-database bb8 pool.
//!
//! A session that needs one starts a [`Dedicated`] task and sends it batches just as
//! it would to a shared slot. The task checks a connection out of the pool, runs the
//! batches one after another (write, then read exactly that many replies), and when
//! the session lets go it returns the connection:
//!
//! * released cleanly ([`Dedicated::release`]) after EXEC/DISCARD/UNWATCH or a
//!   blocking command's reply: returned to the pool as it is;
//! * dropped without release (client gone mid-transaction, RESET, QUIT): the task
//!   sends `DISCARD` and `UNWATCH` and returns the connection only if both answer;
//! * client gone while a command is still waiting for its reply (a blocked BLPOP):
//!   the connection's state is unknown, so it is discarded, never reused.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::connect::connect;
use super::error::UpstreamError;
use super::mux::{Batch, BatchReply};
use crate::command::Block;
use crate::config::UpstreamConfig;
use crate::protocol::reply;

/// A connection owned by one session at a time.
#[derive(Debug)]
pub struct ExclusiveConn {
    stream: TcpStream,
    buf: BytesMut,
    broken: bool,
    addr: String,
}

impl ExclusiveConn {
    /// Writes `bytes` and reads `count` complete replies, returned back to back.
    async fn round_trip(&mut self, bytes: &[u8], count: u32) -> BatchReply {
        let lost = |sent| UpstreamError::Lost {
            addr: self.addr.clone(),
            sent,
        };
        if self.stream.write_all(bytes).await.is_err() {
            self.broken = true;
            return Err(lost(true));
        }
        let mut scanned = 0;
        let mut done = 0;
        while done < count {
            match reply::scan(&self.buf[scanned..]) {
                Ok(Some(frame)) => {
                    scanned += frame.len;
                    done += 1;
                }
                Ok(None) => match self.stream.read_buf(&mut self.buf).await {
                    Ok(n) if n > 0 => {}
                    _ => {
                        self.broken = true;
                        return Err(lost(true));
                    }
                },
                Err(_) => {
                    self.broken = true;
                    return Err(UpstreamError::Protocol {
                        addr: self.addr.clone(),
                    });
                }
            }
        }
        Ok(self.buf.split_to(scanned).freeze())
    }
}

/// bb8 manager: opens connections with AUTH/SELECT done; a connection that failed
/// mid-command is reported broken and dropped by the pool.
#[derive(Debug, Clone)]
pub struct Manager {
    cfg: UpstreamConfig,
    resp3: bool,
}

impl Manager {
    /// A manager for `cfg`'s upstream, speaking RESP2 or (after `HELLO 3`) RESP3.
    pub fn new(cfg: UpstreamConfig, resp3: bool) -> Manager {
        Manager { cfg, resp3 }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = ExclusiveConn;
    type Error = UpstreamError;

    async fn connect(&self) -> Result<ExclusiveConn, UpstreamError> {
        let stream = connect(&self.cfg, self.resp3).await?;
        Ok(ExclusiveConn {
            stream,
            buf: BytesMut::with_capacity(4096),
            broken: false,
            addr: self.cfg.address(),
        })
    }

    async fn is_valid(&self, conn: &mut ExclusiveConn) -> Result<(), UpstreamError> {
        let r = conn.round_trip(b"*1\r\n$4\r\nPING\r\n", 1).await?;
        if r.as_ref() == b"+PONG\r\n" {
            Ok(())
        } else {
            conn.broken = true;
            Err(UpstreamError::Protocol {
                addr: conn.addr.clone(),
            })
        }
    }

    fn has_broken(&self, conn: &mut ExclusiveConn) -> bool {
        conn.broken
    }
}

/// A per-database bb8 pool of exclusive connections.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: bb8::Pool<Manager>,
    manager: Manager,
    max: u32,
}

impl Pool {
    /// Open and idle connections.
    pub fn state(&self) -> bb8::State {
        self.inner.state()
    }
}

/// Builds a pool (no connection is opened until one is needed).
pub fn pool(cfg: &UpstreamConfig, resp3: bool) -> Pool {
    let manager = Manager::new(cfg.clone(), resp3);
    let max = cfg.pool_size.max(1);
    let inner = bb8::Pool::builder()
        .max_size(max)
        .min_idle(None)
        .connection_timeout(cfg.connect_timeout)
        .test_on_check_out(true)
        .retry_connection(false)
        .build_unchecked(manager.clone());
    Pool {
        inner,
        manager,
        max,
    }
}

enum Msg {
    Batch(Batch),
    Release,
}

/// A session's handle to its exclusive connection.
#[derive(Debug)]
pub struct Dedicated {
    tx: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Batch(_) => "Batch",
            Msg::Release => "Release",
        })
    }
}

impl Dedicated {
    /// Starts the task that checks out a connection and serves this session.
    pub fn start(pool: Pool, label: String, command_timeout: std::time::Duration) -> Dedicated {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, rx, label, command_timeout));
        Dedicated { tx }
    }

    /// Queues a batch for the exclusive connection.
    pub fn send(&self, batch: Batch) {
        if let Err(mpsc::error::SendError(Msg::Batch(b))) = self.tx.send(Msg::Batch(batch)) {
            drop(b);
        }
    }

    /// The connection's state is clean after the queued batches: return it as is.
    pub fn release(self) {
        let _ = self.tx.send(Msg::Release);
    }
}

/// Checks out a connection. When none is idle and the pool has room, the new
/// connection is opened here, so a refused connect or a rejected AUTH is reported
/// at once with its cause (bb8 would only report a checkout timeout).
async fn checkout(
    pool: &Pool,
) -> Result<bb8::PooledConnection<'_, Manager>, bb8::RunError<UpstreamError>> {
    let state = pool.inner.state();
    if state.idle_connections == 0 && state.connections < pool.max {
        let conn = bb8::ManageConnection::connect(&pool.manager)
            .await
            .map_err(bb8::RunError::User)?;
        // If the pool filled up meanwhile, the connection is dropped and we wait.
        let _ = pool.inner.add(conn);
    }
    pool.inner.get().await
}

async fn run(
    pool: Pool,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    label: String,
    command_timeout: std::time::Duration,
) {
    let mut conn = match checkout(&pool).await {
        Ok(c) => c,
        Err(e) => {
            let err = match e {
                bb8::RunError::User(e) => e,
                bb8::RunError::TimedOut => UpstreamError::Connect {
                    addr: label,
                    reason: "no exclusive connection free in the pool (all in use by transactions or blocking commands) before the timeout".into(),
                },
            };
            while let Some(msg) = rx.recv().await {
                if let Msg::Batch(b) = msg {
                    let _ = b.reply.send(Err(err.clone()));
                }
            }
            return;
        }
    };
    let mut clean = false;
    while let Some(msg) = rx.recv().await {
        let batch = match msg {
            Msg::Batch(b) => b,
            Msg::Release => {
                clean = true;
                break;
            }
        };
        if conn.broken {
            let _ = batch.reply.send(Err(UpstreamError::Lost {
                addr: conn.addr.clone(),
                sent: false,
            }));
            continue;
        }
        let Batch {
            bytes,
            count,
            mut reply,
            block,
        } = batch;
        let limit = match block {
            Block::No => Some(command_timeout),
            Block::For(d) => Some(command_timeout + d),
            Block::Forever => None,
        };
        let sleep = async {
            match limit {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = conn.round_trip(&bytes, count) => {
                let _ = reply.send(r);
            }
            _ = sleep => {
                // Its place in the reply stream is unknown now: never reuse it.
                conn.broken = true;
                let _ = reply.send(Err(UpstreamError::Timeout {
                    addr: conn.addr.clone(),
                    after: limit.unwrap_or_default(),
                }));
                return;
            }
            _ = reply.closed() => {
                // The client left while its command was running (e.g. blocked).
                conn.broken = true;
                return;
            }
        }
    }
    if !clean && !conn.broken {
        let reset = b"*1\r\n$7\r\nDISCARD\r\n*1\r\n$7\r\nUNWATCH\r\n";
        match tokio::time::timeout(command_timeout, conn.round_trip(reset, 2)).await {
            Ok(Ok(_)) => {}
            _ => conn.broken = true,
        }
    }
}
