//! Opening an upstream connection: TCP connect, the TLS handshake when the
//! upstream has `tls`, then AUTH and SELECT once, all within the connect timeout.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::error::UpstreamError;
use super::frames::Frames;
use crate::config::UpstreamConfig;
use crate::protocol::request::encode_command;
use crate::transport::Stream;

/// How long a connection may be silent before the kernel probes it, as Redis's
/// default `tcp-keepalive 300`: a peer that vanished (a crashed host, a dropped
/// NAT entry) is noticed instead of holding the connection forever.
pub const TCP_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(300);

/// Turns TCP keepalive on for a client or upstream socket (best effort).
pub fn keepalive(stream: &TcpStream) {
    let ka = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot turn TCP keepalive on");
    }
}

/// Connects to the upstream and prepares the connection (AUTH, `HELLO 3` for RESP3
/// connections, SELECT), then checks with a PING that the server is not still
/// loading its data (`-LOADING` fails the setup, to be retried like any connect
/// failure).
pub async fn connect(cfg: &UpstreamConfig, resp3: bool) -> Result<Stream, UpstreamError> {
    connect_at(cfg, resp3).await.map(|(stream, _)| stream)
}

/// [`connect`], also returning the generation of the database's
/// [`Endpoint`](crate::endpoint::Endpoint) the connection was opened for (0 for a
/// standalone upstream). For a Sentinel-backed upstream the address is the current
/// primary (asked of the sentinels when none is known), and the setup checks with
/// `ROLE` that it still is the primary: a server that says otherwise fails the
/// setup as a transient connect failure and is forgotten, so the next attempt asks
/// the sentinels again.
pub async fn connect_at(cfg: &UpstreamConfig, resp3: bool) -> Result<(Stream, u64), UpstreamError> {
    let attempt = async {
        let (host, port, generation) = super::sentinel::primary(cfg).await?;
        let addr = format!("{host}:{port}");
        let stream = connect_inner(cfg, &host, port, &addr, resp3, generation).await;
        if cfg.sentinel.is_some() && matches!(stream, Err(UpstreamError::Connect { .. })) {
            // Refused or unreachable: perhaps it failed over; the watcher asks.
            cfg.endpoint.suspect();
        }
        stream.map(|s| (s, generation))
    };
    match tokio::time::timeout(cfg.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Connect {
            addr: cfg.address(),
            reason: format!("timed out after {:?}", cfg.connect_timeout),
        }),
    }
}

/// The start of `ROLE`'s reply on a primary (RESP2 and RESP3 alike).
const ROLE_MASTER: &[u8] = b"*3\r\n$6\r\nmaster\r\n";

/// How [`dial`]'s error for a failed TLS handshake starts.
const HANDSHAKE_FAILED: &str = "TLS handshake failed";

/// A TCP connection to `host:port` (no delay, keepalive), in TLS when `tls` is
/// given (the certificate checked for `tls.server_name`, else `host`).
pub async fn dial(
    host: &str,
    port: u16,
    addr: &str,
    tls: Option<&crate::config::UpstreamTls>,
) -> Result<Stream, UpstreamError> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| UpstreamError::connect_io(addr, &e))?;
    if self_connected(&tcp) {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        return Err(UpstreamError::connect_io(addr, &refused));
    }
    let _ = tcp.set_nodelay(true);
    keepalive(&tcp);
    let Some(tls) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    let failed = |reason: String| UpstreamError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let name =
        crate::tls::server_name(tls.server_name.as_deref().unwrap_or(host)).map_err(failed)?;
    let connector = tokio_rustls::TlsConnector::from(tls.client_config.clone());
    let session = connector
        .connect(name, tcp)
        .await
        .map_err(|e| failed(format!("{HANDSHAKE_FAILED}: {e}")))?;
    Ok(Stream::Tls(Box::new(session.into())))
}

/// A connection to a local port that nothing listens on can get that very port as
/// its own (it is in the ephemeral range): TCP's simultaneous open then connects
/// the socket to itself, and every command would come back as its own reply (a
/// handshake that waits for its timeout, a command echoed as an array). It is
/// refused, as the port is, and the next attempt gets another local port.
fn self_connected(tcp: &TcpStream) -> bool {
    matches!((tcp.local_addr(), tcp.peer_addr()), (Ok(l), Ok(p)) if l == p)
}

/// `AUTH [user] password`, encoded onto `out`.
pub fn encode_auth(user: Option<&str>, password: &str, out: &mut Vec<u8>) {
    match user {
        Some(user) => encode_command(&[b"AUTH", user.as_bytes(), password.as_bytes()], out),
        None => encode_command(&[&b"AUTH"[..], password.as_bytes()], out),
    }
}

async fn connect_inner(
    cfg: &UpstreamConfig,
    host: &str,
    port: u16,
    addr: &str,
    resp3: bool,
    generation: u64,
) -> Result<Stream, UpstreamError> {
    let mut stream = dial(host, port, addr, cfg.tls.as_deref())
        .await
        .inspect_err(|e| {
            if let UpstreamError::Connect { reason, .. } = e {
                if reason.starts_with(HANDSHAKE_FAILED) {
                    // Always logged: a wrong CA, an expired certificate or a name
                    // mismatch is a setup problem on any kind of connection.
                    tracing::warn!(database = %cfg.database, upstream = %addr, upstream_db = cfg.db, error = %reason, "upstream TLS handshake failed");
                }
            }
        })?;

    let mut setup = Vec::new();
    let mut expected = 0;
    if let Some(pw) = &cfg.password {
        encode_auth(cfg.username.as_deref(), pw.expose(), &mut setup);
        expected += 1;
    }
    // Its reply also says what the server is (`Endpoint::learn`). (RESP2
    // connections send no HELLO: a proxy in between, such as twemproxy, closes a
    // connection on a command it does not know; `identity::ask` asks apart.)
    let mut hello_at = 0;
    if resp3 {
        encode_command(&[&b"HELLO"[..], b"3"], &mut setup);
        expected += 1;
        hello_at = expected;
    }
    if cfg.db != 0 {
        encode_command(
            &[b"SELECT".to_vec(), cfg.db.to_string().into_bytes()],
            &mut setup,
        );
        expected += 1;
    }
    // A cluster replica serving reads: READONLY (else it redirects them).
    if cfg.replica_reads {
        encode_command(&[&b"READONLY"[..]], &mut setup);
        expected += 1;
    }
    // For a Sentinel-backed upstream, ROLE: the sentinels' answer may be stale (a
    // failover in progress, a demoted primary not yet reconfigured).
    let role_at = cfg.sentinel.as_ref().map(|_| {
        encode_command(&[&b"ROLE"[..]], &mut setup);
        expected += 1;
        expected
    });
    // Last, a PING: a server still loading its data answers `-LOADING` (while
    // AUTH and SELECT succeed), and a connection to it must not be handed out as
    // ready — its commands would be refused. Failing the setup instead makes the
    // normal connect-failure path wait and retry, in order. Any other answer to
    // the PING (a user not allowed PING: `-NOPERM`) does not stop the connection.
    // Not on a client's own login (`client_login`): its user may not be allowed
    // PING, and the refusal would land in Redis's ACL LOG, where a client
    // connected directly leaves none; its commands meet Redis as it is.
    let ping_at = (!cfg.client_login).then(|| {
        encode_command(&[&b"PING"[..]], &mut setup);
        expected += 1;
        expected
    });
    let lost = || UpstreamError::Connect {
        addr: addr.to_string(),
        reason: "connection closed during setup".into(),
    };
    // With TLS the cause is worth showing (e.g. Redis refused the handshake
    // after it completed on our side: `received fatal alert: CertificateRequired`).
    let broke = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::InvalidData => UpstreamError::Connect {
            addr: addr.to_string(),
            reason: format!("connection closed during setup: {e}"),
        },
        _ => lost(),
    };
    stream.write_all(&setup).await.map_err(broke)?;
    stream.flush().await.map_err(broke)?;
    let mut frames = Frames::new(256);
    let mut seen = 0;
    while seen < expected {
        match frames.next_frame() {
            Ok(Some((frame, _))) => {
                let bytes = frames.take();
                let ping = ping_at == Some(seen + 1);
                if role_at == Some(seen + 1) {
                    // A user not allowed ROLE (`-NOPERM`) cannot check it: the
                    // sentinels' word is taken.
                    if !frame.is_error && !bytes.starts_with(ROLE_MASTER) {
                        cfg.endpoint.forget(generation);
                        return Err(UpstreamError::Connect {
                            addr: addr.to_string(),
                            reason: format!(
                                "not the primary (ROLE: {}); asking the sentinels again",
                                role_name(&bytes)
                            ),
                        });
                    }
                    seen += 1;
                    continue;
                }
                // (Not from a cluster replica serving reads: the database's
                // role is its primaries'.)
                if hello_at == seen + 1 && !frame.is_error && !cfg.replica_reads {
                    if let Some(identity) = super::identity::parse(&bytes) {
                        cfg.endpoint.learn(identity);
                    }
                }
                // Nor a connection Redis refused past `maxclients` (its error
                // comes first, whatever was sent, then the connection closes):
                // else it would be handed out, and its first command reported
                // as one that may have run.
                let refused = super::is_loading(&bytes) || super::is_max_clients(&bytes);
                if frame.is_error && (!ping || refused) {
                    let text = String::from_utf8_lossy(&bytes[1..bytes.len() - 2]).into_owned();
                    return Err(UpstreamError::Handshake {
                        addr: addr.to_string(),
                        reply: text,
                    });
                }
                seen += 1;
            }
            Ok(None) => {
                if frames.fill(&mut stream).await.map_err(broke)? == 0 {
                    return Err(lost());
                }
            }
            Err(_) => {
                return Err(UpstreamError::Protocol {
                    addr: addr.to_string(),
                })
            }
        }
    }
    Ok(stream)
}

/// The role named in a `ROLE` reply (`slave`, `sentinel` …), for messages.
fn role_name(reply: &[u8]) -> String {
    reply
        .split(|&b| b == b'\n')
        .nth(2)
        .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_connected_to_itself_is_seen() {
        // Bound and connected to its own address: Linux's simultaneous open.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let own = socket.local_addr().expect("local addr");
        let looped = socket.connect(own).await.expect("self-connect");
        assert!(self_connected(&looped));
        // An ordinary connection is not.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let tcp = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        assert!(!self_connected(&tcp));
    }
}
