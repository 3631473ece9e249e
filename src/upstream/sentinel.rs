//! Sentinel-backed upstreams: finding the primary and following failovers.
//!
//! * [`primary`]: the address connection setup uses. The database's
//!   [`Endpoint`](crate::endpoint::Endpoint) holds the current primary; when none
//!   is known (at start, or after setup found that the address is no longer the
//!   primary) the sentinels are asked, in the configured order, with
//!   `SENTINEL GET-MASTER-ADDR-BY-NAME <master>`: the first that answers wins.
//!   Concurrent connects wait for one resolution. The whole resolution is bounded by
//!   the connect timeout.
//! * [`spawn_watcher`]: one task per Sentinel-backed database. It subscribes to
//!   `+switch-master` on a sentinel (the next one when that connection is lost, with
//!   backoff) and asks again every `health_check_interval` and whenever a data
//!   connection suspects the primary moved (`-READONLY`, a refused connect, a
//!   `ROLE` that is not `master`). A change of address bumps the endpoint's
//!   generation: shared connections then finish what they have in flight on the old
//!   primary and reconnect (see `mux.rs`), pooled connections of older generations
//!   are dropped at checkout and return (see `dedicated.rs`).
//!
//! Sentinel connections are plain TCP with the sentinels' own `username`/`password`;
//! the upstream's credentials, `tls` and `upstream_db` apply to the data connections.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::error::UpstreamError;
use super::Observer;
use crate::config::{SentinelConfig, UpstreamConfig};
use crate::protocol::request::encode_command;
use crate::protocol::value::{decode, Value};
use crate::transport::Stream;

/// A connection to one sentinel.
struct Conn {
    stream: Stream,
    buf: BytesMut,
}

impl Conn {
    /// Connects (in TLS with the sentinel's `tls`) and logs in (`AUTH` when the
    /// sentinels have a password).
    async fn open(host: &str, port: u16, s: &SentinelConfig) -> Result<Conn, String> {
        let addr = format!("{host}:{port}");
        let stream = super::connect::dial(host, port, &addr, s.tls.as_deref())
            .await
            .map_err(|e| match e {
                UpstreamError::Connect { reason, .. } => reason,
                e => e.to_string(),
            })?;
        let mut conn = Conn {
            stream,
            buf: BytesMut::with_capacity(512),
        };
        if let Some(pw) = &s.password {
            let reply = match &s.username {
                Some(user) => {
                    conn.call(&[b"AUTH", user.as_bytes(), pw.expose().as_bytes()])
                        .await?
                }
                None => conn.call(&[&b"AUTH"[..], pw.expose().as_bytes()]).await?,
            };
            if let Value::Error(e) = reply {
                return Err(format!("AUTH refused: {e}"));
            }
        }
        Ok(conn)
    }

    async fn send(&mut self, args: &[&[u8]]) -> Result<(), String> {
        let mut out = Vec::new();
        encode_command(args, &mut out);
        self.stream.write_all(&out).await.map_err(|e| e.to_string())
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<Value, String> {
        self.send(args).await?;
        self.next().await
    }

    /// The next reply (or pub/sub message).
    async fn next(&mut self) -> Result<Value, String> {
        loop {
            match decode(&self.buf, 0) {
                Err(e) => return Err(e.to_string()),
                Ok(Some((v, used))) => {
                    self.buf.advance(used);
                    return Ok(v);
                }
                Ok(None) => {}
            }
            if self.buf.len() > 1 << 20 {
                return Err("reply too large".into());
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => return Err("connection closed".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME <master>`.
    async fn master_addr(&mut self, master: &str) -> Result<(String, u16), String> {
        let reply = self
            .call(&[b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", master.as_bytes()])
            .await?;
        match reply {
            Value::Array(Some(items)) if items.len() == 2 => {
                let host = items[0].text();
                let port = items[1].text().and_then(|p| p.parse::<u16>().ok());
                match (host, port) {
                    (Some(h), Some(p)) if !h.is_empty() => Ok((h, p)),
                    _ => Err("unexpected reply to GET-MASTER-ADDR-BY-NAME".into()),
                }
            }
            Value::Array(None) | Value::Bulk(None) => {
                Err(format!("does not know a master named {master:?}"))
            }
            Value::Error(e) => Err(e),
            other => Err(format!(
                "unexpected reply to GET-MASTER-ADDR-BY-NAME: {other:?}"
            )),
        }
    }
}

/// `sentinel master <name>`: the address in errors before a primary is known.
fn label(s: &SentinelConfig) -> String {
    format!("sentinel master {}", s.master)
}

/// Asks the sentinels in order, the first answer wins; all within `limit`. A
/// sentinel that does not answer gets its share of the time left, so one hung
/// sentinel cannot use up the time of the others.
async fn ask(s: &SentinelConfig, limit: Duration) -> Result<(String, u16), UpstreamError> {
    let deadline = Instant::now() + limit;
    let mut why = Vec::new();
    for (i, (host, port)) in s.nodes.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / (s.nodes.len() - i) as u32;
        let attempt = async {
            let mut conn = Conn::open(host, *port, s).await?;
            conn.master_addr(&s.master).await
        };
        match tokio::time::timeout(share, attempt).await {
            Ok(Ok(addr)) => return Ok(addr),
            Ok(Err(e)) => why.push(format!("{host}:{port}: {e}")),
            Err(_) => why.push(format!("{host}:{port}: no answer within {share:?}")),
        }
    }
    Err(UpstreamError::Connect {
        addr: label(s),
        reason: format!("no sentinel could name the primary ({})", why.join("; ")),
    })
}

/// Records `host:port` as the primary of `cfg`'s database, logging a change.
fn record(cfg: &UpstreamConfig, s: &SentinelConfig, host: &str, port: u16, how: &str) {
    let known = cfg.endpoint.current().is_some();
    if let Some((old_host, old_port)) = cfg.endpoint.set(host, port) {
        tracing::warn!(
            database = %cfg.database,
            master = %s.master,
            from = %format!("{old_host}:{old_port}"),
            to = %format!("{host}:{port}"),
            via = how,
            failovers = cfg.endpoint.failovers(),
            "sentinel: the primary changed; moving connections to the new one"
        );
    } else if !known {
        tracing::info!(database = %cfg.database, master = %s.master, primary = %format!("{host}:{port}"), via = how, "sentinel: primary found");
    }
}

/// The address to connect to, and its generation: the current primary, or (when
/// none is known) the one the sentinels name now. Standalone upstreams get their
/// `host`/`port` (generation 0).
pub async fn primary(cfg: &UpstreamConfig) -> Result<(String, u16, u64), UpstreamError> {
    let Some(s) = &cfg.sentinel else {
        return Ok((cfg.host.clone(), cfg.port, 0));
    };
    if let Some(current) = cfg.endpoint.current() {
        return Ok(current);
    }
    let _one = cfg.endpoint.resolving().await;
    if let Some(current) = cfg.endpoint.current() {
        return Ok(current);
    }
    let (host, port) = ask(s, cfg.connect_timeout).await?;
    record(cfg, s, &host, port, "lookup");
    cfg.endpoint
        .current()
        .ok_or_else(|| UpstreamError::Connect {
            addr: label(s),
            reason: "the primary was forgotten while being looked up".into(),
        })
}

/// Asks the sentinels again (for the watcher) and records the answer.
async fn refresh(cfg: &UpstreamConfig, s: &SentinelConfig, how: &str) {
    let _one = cfg.endpoint.resolving().await;
    match ask(s, cfg.connect_timeout).await {
        Ok((host, port)) => record(cfg, s, &host, port, how),
        Err(e) => {
            tracing::warn!(database = %cfg.database, error = %e, "sentinel: cannot ask for the primary")
        }
    }
}

/// The least time between two lookups made because a connection suspected a move
/// (a burst of `-READONLY` replies asks once).
const SUSPECT_SPACING: Duration = Duration::from_millis(200);
/// Backoff between attempts to subscribe when no sentinel can be reached.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(5);

/// Starts the watcher of a Sentinel-backed database (nothing for a standalone
/// one). `observer` hears of every new primary (the circuit breaker starts afresh).
/// The watcher ends at `shutdown` or when the returned guard is dropped (with its
/// database).
pub fn spawn_watcher(
    cfg: Arc<UpstreamConfig>,
    observer: Arc<dyn Observer>,
    shutdown: &CancellationToken,
) -> Option<DropGuard> {
    let s = cfg.sentinel.clone()?;
    let shutdown = shutdown.child_token();
    let guard = shutdown.clone().drop_guard();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = watch(&cfg, &s) => {}
            _ = replaced(&cfg, &*observer) => {}
        }
    });
    Some(guard)
}

/// Tells `observer` whenever a new primary is recorded.
async fn replaced(cfg: &UpstreamConfig, observer: &dyn Observer) {
    let mut moved = cfg.endpoint.subscribe();
    while moved.changed().await.is_ok() {
        if cfg.endpoint.current().is_some() {
            observer.upstream_replaced();
        }
    }
}

async fn watch(cfg: &UpstreamConfig, s: &SentinelConfig) {
    if s.nodes.is_empty() {
        // Only a configuration built in code can get here (loading refuses it).
        return std::future::pending().await;
    }
    let mut next = 0usize;
    let mut pause = RESUBSCRIBE_MIN;
    let mut last_suspect = Instant::now() - SUSPECT_SPACING;
    loop {
        let (host, port) = s.nodes[next % s.nodes.len()].clone();
        next += 1;
        let opened = tokio::time::timeout(cfg.connect_timeout, async {
            let mut conn = Conn::open(&host, port, s).await?;
            let (h, p) = conn.master_addr(&s.master).await?;
            record(cfg, s, &h, p, "sentinel");
            match conn.call(&[b"SUBSCRIBE", b"+switch-master"]).await? {
                Value::Error(e) => Err(format!("SUBSCRIBE refused: {e}")),
                _ => Ok(conn),
            }
        })
        .await
        .unwrap_or_else(|_| Err("no answer within connect_timeout".into()));
        let mut conn = match opened {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(database = %cfg.database, sentinel = %format!("{host}:{port}"), error = %e, "sentinel: cannot subscribe to +switch-master; trying the next sentinel");
                // Between tries, a suspicion is still answered (by the other sentinels).
                let wait = tokio::time::sleep(jitter(pause));
                tokio::pin!(wait);
                tokio::select! {
                    _ = &mut wait => {}
                    _ = cfg.endpoint.suspected() => {
                        refresh(cfg, s, "suspicion").await;
                        wait.await;
                    }
                }
                pause = (pause * 2).min(RESUBSCRIBE_MAX);
                continue;
            }
        };
        pause = RESUBSCRIBE_MIN;
        tracing::debug!(database = %cfg.database, sentinel = %format!("{host}:{port}"), "sentinel: watching +switch-master");
        let mut tick = tokio::time::interval(cfg.resilience.health_check_interval);
        tick.reset();
        // A PING sent on the subscription at each tick must be answered by the
        // next: a sentinel that went silent (its host gone without a reset) is
        // left for the next one.
        let mut unanswered = false;
        loop {
            let lost = tokio::select! {
                msg = conn.next() => match msg {
                    Ok(v) => {
                        unanswered = false;
                        if let Some((h, p)) = switch_master(&v, &s.master) {
                            record(cfg, s, &h, p, "+switch-master");
                        }
                        None
                    }
                    Err(e) => Some(e),
                },
                _ = tick.tick() => {
                    refresh(cfg, s, "periodic").await;
                    if std::mem::replace(&mut unanswered, true) {
                        Some("no answer to PING within health_check_interval".to_string())
                    } else {
                        conn.send(&[b"PING"]).await.err()
                    }
                }
                _ = cfg.endpoint.suspected() => {
                    let since = last_suspect.elapsed();
                    if since < SUSPECT_SPACING {
                        tokio::time::sleep(SUSPECT_SPACING - since).await;
                    }
                    last_suspect = Instant::now();
                    refresh(cfg, s, "suspicion").await;
                    None
                }
            };
            match lost {
                None => {}
                Some(e) => {
                    tracing::warn!(database = %cfg.database, sentinel = %format!("{host}:{port}"), error = %e, "sentinel: lost the +switch-master subscription; trying the next sentinel");
                    next = s
                        .nodes
                        .iter()
                        .position(|n| *n == (host.clone(), port))
                        .map_or(0, |i| i + 1);
                    break;
                }
            }
        }
    }
}

/// Between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// The new primary in a `+switch-master` message for `master`:
/// `<master> <old-ip> <old-port> <new-ip> <new-port>`.
fn switch_master(v: &Value, master: &str) -> Option<(String, u16)> {
    let Value::Array(Some(items)) = v else {
        return None;
    };
    if items.len() != 3 || items[0].text()? != "message" {
        return None;
    }
    let payload = items[2].text()?;
    let words: Vec<&str> = payload.split_whitespace().collect();
    match words[..] {
        [name, _, _, host, port] if name == master => Some((host.to_string(), port.parse().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_replies() {
        let (v, n) = decode(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n", 0)
            .unwrap()
            .unwrap();
        assert_eq!(n, 29);
        assert_eq!(
            v,
            Value::Array(Some(vec![
                Value::Bulk(Some(b"127.0.0.1".to_vec())),
                Value::Bulk(Some(b"6379".to_vec()))
            ]))
        );
        assert_eq!(decode(b"*2\r\n$9\r\n127.0.", 0), Ok(None));
        assert_eq!(decode(b"*-1\r\n", 0), Ok(Some((Value::Array(None), 5))));
        assert!(decode(b"?x\r\n", 0).is_err());
        assert_eq!(
            decode(b"-ERR no\r\n", 0),
            Ok(Some((Value::Error("ERR no".into()), 9)))
        );
    }

    #[test]
    fn reads_switch_master() {
        let msg = Value::Array(Some(vec![
            Value::Bulk(Some(b"message".to_vec())),
            Value::Bulk(Some(b"+switch-master".to_vec())),
            Value::Bulk(Some(b"mymaster 127.0.0.1 6379 127.0.0.1 6380".to_vec())),
        ]));
        assert_eq!(
            switch_master(&msg, "mymaster"),
            Some(("127.0.0.1".into(), 6380))
        );
        assert_eq!(switch_master(&msg, "other"), None);
    }
}
