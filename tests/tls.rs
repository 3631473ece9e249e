//! TLS on both sides: the proxy to a TLS Redis (CA verification, client
//! certificates, every kind of upstream connection, clear errors for a wrong CA,
//! an expired certificate and a name mismatch), and clients to the proxy's TLS
//! listener (redis-cli, a rustls client, mTLS, TLS 1.2+ only, certificate reload,
//! `listen: null`), plus the config checks of the TLS keys.
//!
//! Certificates are made with rcgen at run time; the Redis servers are the real
//! `redis-server` with `--tls-port` (its plain port stays open for readiness).

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use redis_sidecar::config::Config;
use redis_sidecar::server::Proxy;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::{free_port, resp_cmd, resp_frame_len, start_proxy, AsyncRawClient, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// A certificate authority that signs leaf certificates into a directory.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate and key for `names`, valid now unless `expired`, for a
    /// client, a server, or both (`None`: a cluster node, which is both to the
    /// other nodes).
    fn leaf(
        &self,
        cn: &str,
        names: &[&str],
        client: Option<bool>,
        expired: bool,
    ) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = match client {
            Some(true) => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Some(false) => vec![ExtendedKeyUsagePurpose::ServerAuth],
            None => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// Every certificate the tests use, written once per test process.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        // Under cargo's per-target temp dir (removed by `cargo clean`).
        let dir = tempfile::Builder::new()
            .prefix("tls-pki")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir")
            .keep();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write");
        let ca = Ca::new("redis-sidecar test CA");
        let other = Ca::new("another CA");
        write("ca.crt", &ca.pem);
        write("other-ca.crt", &other.pem);
        let local = ["localhost", "127.0.0.1"];
        for (name, cn, names, client, expired, by) in [
            ("server", "server", &local[..], Some(false), false, &ca),
            (
                "server2",
                "server reloaded",
                &local[..],
                Some(false),
                false,
                &ca,
            ),
            ("node", "cluster node", &local[..], None, false, &ca),
            ("expired", "expired", &local[..], Some(false), true, &ca),
            (
                "wronghost",
                "wrong host",
                &["wrong.example"][..],
                Some(false),
                false,
                &ca,
            ),
            ("client", "client", &["client"][..], Some(true), false, &ca),
            (
                "other-client",
                "other client",
                &["client"][..],
                Some(true),
                false,
                &other,
            ),
        ] {
            let (cert, key) = by.leaf(cn, names, client, expired);
            write(&format!("{name}.crt"), &cert);
            write(&format!("{name}.key"), &key);
        }
        Pki { dir }
    })
}

/// A `redis-server` whose TLS port serves `cert` (its plain port stays open).
fn tls_redis(cert: &str, auth_clients: bool) -> (RedisServer, u16) {
    let pki = pki();
    let tls_port = free_port().to_string();
    let redis = RedisServer::start_with_args(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &pki.p(&format!("{cert}.crt")),
        "--tls-key-file",
        &pki.p(&format!("{cert}.key")),
        "--tls-ca-cert-file",
        &pki.p("ca.crt"),
        "--tls-auth-clients",
        if auth_clients { "yes" } else { "no" },
    ]);
    let port = tls_port.parse().expect("port");
    (redis, port)
}

fn parse(yaml: &str) -> Config {
    Config::from_yaml_str_with_env(yaml, None, &|_| None)
        .unwrap_or_else(|e| panic!("config rejected: {e}\n{yaml}"))
}

fn parse_err(yaml: &str) -> String {
    match Config::from_yaml_str_with_env(yaml, Some(Path::new("tls.yaml")), &|_| None) {
        Ok(_) => panic!("config accepted but should not be:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// A small TLS RESP client
// ---------------------------------------------------------------------------------------

struct TlsClient {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

fn client_config(
    ca: &str,
    cert: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let pki = pki();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.path(ca)).expect("ca file") {
        roots.add(c.expect("ca pem")).expect("add root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots);
    Arc::new(match cert {
        None => builder.with_no_client_auth(),
        Some(name) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(pki.path(&format!("{name}.crt")))
                    .expect("cert")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("cert pem"),
                PrivateKeyDer::from_pem_file(pki.path(&format!("{name}.key"))).expect("key"),
            )
            .expect("client cert"),
    })
}

impl TlsClient {
    async fn try_connect(
        addr: std::net::SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<TlsClient> {
        Self::try_connect_tcp(TcpStream::connect(addr).await?, config).await
    }

    /// Connects with a 64 KiB receive buffer (no autotuning), so a large reply
    /// fills the proxy's socket instead of this side's buffer.
    async fn connect_small_window(addr: std::net::SocketAddr) -> TlsClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
        let tcp = socket.connect(addr).await.expect("connect");
        let config = client_config("ca.crt", None, rustls::DEFAULT_VERSIONS);
        Self::try_connect_tcp(tcp, config).await.expect("TLS")
    }

    async fn try_connect_tcp(
        tcp: TcpStream,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<TlsClient> {
        let name = ServerName::try_from("localhost").expect("name");
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
        Ok(TlsClient {
            stream,
            buf: Vec::new(),
        })
    }

    async fn connect(addr: std::net::SocketAddr) -> TlsClient {
        Self::try_connect(
            addr,
            client_config("ca.crt", None, rustls::DEFAULT_VERSIONS),
        )
        .await
        .expect("TLS connect to the proxy")
    }

    /// The certificate the server presented.
    fn peer_cert(&self) -> Vec<u8> {
        self.stream
            .get_ref()
            .1
            .peer_certificates()
            .expect("peer cert")[0]
            .to_vec()
    }

    fn version(&self) -> rustls::ProtocolVersion {
        self.stream.get_ref().1.protocol_version().expect("version")
    }

    async fn try_cmd(&mut self, args: &[&[u8]]) -> std::io::Result<Vec<u8>> {
        self.send(&resp_cmd(args)).await?;
        self.try_read_reply().await
    }

    /// Writes, then flushes: the last bytes may otherwise stay in the TLS session.
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads one reply in 16 KiB pieces, pausing after each (a slow reader).
    async fn read_reply_slowly(&mut self) -> Vec<u8> {
        let read = async {
            loop {
                if let Ok(Some(n)) = resp_frame_len(&self.buf) {
                    return self.buf.drain(..n).collect::<Vec<u8>>();
                }
                let mut chunk = vec![0u8; 16 * 1024];
                let n = self.stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "closed mid-reply");
                self.buf.extend_from_slice(&chunk[..n]);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let got = tokio::time::timeout(Duration::from_secs(20), read).await;
        got.unwrap_or_else(|_| {
            panic!(
                "reply incomplete after 20 s ({} bytes): the end stayed in the proxy's TLS buffer",
                self.buf.len()
            )
        })
    }

    async fn cmd(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.try_cmd(args).await.expect("reply over TLS")
    }

    async fn try_read_reply(&mut self) -> std::io::Result<Vec<u8>> {
        let read = async {
            loop {
                if let Ok(Some(n)) = resp_frame_len(&self.buf) {
                    return Ok(self.buf.drain(..n).collect());
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .map_err(|_| std::io::Error::other("no reply within 5 s"))?
    }
}

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).into_owned()
}

// ---------------------------------------------------------------------------------------
// Upstream TLS
// ---------------------------------------------------------------------------------------

/// One proxy, three TLS Redis servers, and a database for each case: verified
/// TLS (with every kind of upstream connection), mTLS, and the three verification
/// failures, each a clear error naming the database and the upstream while the
/// other databases keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_the_server_and_carries_every_connection_kind() {
    let pki = pki();
    let (redis, tls_port) = tls_redis("server", false);
    let (_mtls_redis, mtls_port) = tls_redis("server", true);
    let (_expired_redis, expired_port) = tls_redis("expired", false);
    let ca = pki.p("ca.crt");
    let yaml = format!(
        r#"
listen: "127.0.0.1:0"
metrics_listen: null
host: 127.0.0.1
port: {tls_port}
retry_attempts: 0
failure_threshold: 1000
health_check_interval: 0.2
tls: {{ ca_file: "{ca}" }}
redis_databases:
  main: {{ db: 0 }}
  wrongca: {{ db: 1, tls: {{ ca_file: "{other}" }} }}
  wronghost: {{ db: 2, tls: {{ ca_file: "{ca}", server_name: wrong.example }} }}
  expired: {{ db: 3, port: {expired_port} }}
  mtls: {{ db: 4, port: {mtls_port}, tls: {{ ca_file: "{ca}", cert_file: "{ccrt}", key_file: "{ckey}" }} }}
  nocert: {{ db: 5, port: {mtls_port} }}
  plain: {{ db: 6, port: {plain_port}, tls: null }}
  insecure: {{ db: 7, tls: {{ insecure_skip_verify: true }} }}
"#,
        other = pki.p("other-ca.crt"),
        ccrt = pki.p("client.crt"),
        ckey = pki.p("client.key"),
        plain_port = redis.port(),
    );
    let config = parse(&yaml);
    assert!(config.databases[0].upstream.tls.is_some());
    assert!(
        config.databases[6].upstream.tls.is_none(),
        "tls: null is plain"
    );
    let proxy = start_proxy(config).await;
    let addr = proxy.local_addr();

    // (1) Verified TLS: SET/GET, a pipeline (shared connection).
    let mut c = AsyncRawClient::connect(addr).await;
    assert_eq!(c.cmd(&[b"SET", b"k", b"v"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, b"$1\r\nv\r\n");
    let mut pipeline = Vec::new();
    for _ in 0..50 {
        pipeline.extend(resp_cmd(&[b"INCR", b"n"]));
    }
    c.send(&pipeline).await;
    let replies = c.read_replies(50).await;
    assert_eq!(replies.last().map(|r| text(r)), Some(":50\r\n".into()));
    // The value really is on the TLS Redis (read over its plain port).
    assert_eq!(redis.client().cmd(&[b"GET", b"k"]), b"$1\r\nv\r\n");

    // Large requests and replies cross the TLS connection whole (shared and
    // pooled connections), even when the sockets fill up.
    let big = vec![b'y'; 4 << 20];
    assert_eq!(c.cmd(&[b"SET", b"big", &big]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"STRLEN", b"big"]).await, b":4194304\r\n");
    assert_eq!(c.cmd(&[b"GET", b"big"]).await.len(), big.len() + 12);

    // MULTI/EXEC (exclusive pooled connection).
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"t", b"1"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"INCR", b"t"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await, b"*2\r\n+OK\r\n:2\r\n");
    assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"big2", &big]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"GET", b"big2"]).await, b"+QUEUED\r\n");
    assert_eq!(c.cmd(&[b"EXEC"]).await.len(), 4 + 5 + big.len() + 12);
    // An idle pooled TLS connection is found alive and reused (not reopened):
    // five more transactions open no new connection to Redis.
    let connections = |r: &RedisServer| {
        let info = text(&r.client().cmd(&[b"INFO", b"stats"]));
        support::parse_info(&info)["total_connections_received"]
            .parse::<u64>()
            .expect("count")
    };
    let before = connections(&redis);
    for _ in 0..5 {
        assert_eq!(c.cmd(&[b"MULTI"]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&[b"INCR", b"t"]).await, b"+QUEUED\r\n");
        assert!(c.cmd(&[b"EXEC"]).await.starts_with(b"*1\r\n:"));
    }
    // (+1: the INFO client itself)
    assert_eq!(
        connections(&redis),
        before + 1,
        "pooled TLS connections reopened"
    );

    // SUBSCRIBE/PUBLISH (subscriber connection).
    let mut sub = AsyncRawClient::connect(addr).await;
    assert_eq!(
        sub.cmd(&[b"SUBSCRIBE", b"ch"]).await,
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    assert_eq!(c.cmd(&[b"PUBLISH", b"ch", b"hi"]).await, b":1\r\n");
    assert_eq!(
        sub.read_reply().await,
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    );

    // A blocking BLPOP (pooled connection), woken by a push from another client.
    let mut blocked = AsyncRawClient::connect(addr).await;
    blocked.send(&resp_cmd(&[b"BLPOP", b"list", b"5"])).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.cmd(&[b"RPUSH", b"list", b"x"]).await, b":1\r\n");
    assert_eq!(
        blocked.read_reply().await,
        b"*2\r\n$4\r\nlist\r\n$1\r\nx\r\n"
    );

    // FUNCTION STATS goes out of band, on a fresh connection of its own.
    let stats = text(&c.cmd(&[b"FUNCTION", b"STATS"]).await);
    assert!(stats.starts_with("*4\r\n$14\r\nrunning_script"), "{stats}");

    // (2) mTLS: Redis requires a client certificate; the proxy presents one.
    assert_eq!(c.cmd(&[b"SELECT", b"4"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"m", b"1"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"m"]).await, b"$1\r\n1\r\n");
    // Without one, Redis refuses the connection.
    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    let reply = text(&c.cmd(&[b"GET", b"m"]).await);
    assert!(
        reply.starts_with("-UPSTREAM database 'nocert' (db 5)"),
        "{reply}"
    );
    assert!(
        reply.contains("received fatal alert: CertificateRequired"),
        "{reply}"
    );

    // (3) The three verification failures, each naming the database and upstream.
    let cases = [
        (1, "wrongca", tls_port, "UnknownIssuer"),
        (
            2,
            "wronghost",
            tls_port,
            "certificate not valid for name \"wrong.example\"",
        ),
        (3, "expired", expired_port, "certificate expired"),
    ];
    for (db, name, port, why) in cases {
        let mut e = AsyncRawClient::connect(addr).await;
        assert_eq!(
            e.cmd(&[b"SELECT", db.to_string().as_bytes()]).await,
            b"+OK\r\n"
        );
        let reply = text(&e.cmd(&[b"GET", b"k"]).await);
        let want = format!(
            "-UPSTREAM database '{name}' (db {db}): cannot connect to 127.0.0.1:{port}: TLS handshake failed: invalid peer certificate: "
        );
        assert!(reply.starts_with(&want), "{name}: {reply}");
        assert!(reply.contains(why), "{name}: expected {why:?} in {reply}");
        // A pooled connection (taken at MULTI) fails the same way.
        let reply = text(&e.cmd(&[b"MULTI"]).await);
        assert!(reply.starts_with(&want), "{name}: {reply}");
        assert!(reply.contains(why), "{name}: {reply}");
    }

    // `tls: null` in a database: plain TCP to the plain port.
    let mut p = AsyncRawClient::connect(addr).await;
    assert_eq!(p.cmd(&[b"SELECT", b"6"]).await, b"+OK\r\n");
    assert_eq!(p.cmd(&[b"SET", b"k6", b"plain"]).await, b"+OK\r\n");
    let mut direct = redis.client();
    assert_eq!(direct.cmd(&[b"SELECT", b"6"]), b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"k6"]), b"$5\r\nplain\r\n");
    // insecure_skip_verify: encrypted, unverified (server_name would not matter).
    assert_eq!(p.cmd(&[b"SELECT", b"7"]).await, b"+OK\r\n");
    assert_eq!(p.cmd(&[b"SET", b"k7", b"x"]).await, b"+OK\r\n");
    assert_eq!(p.cmd(&[b"GET", b"k7"]).await, b"$1\r\nx\r\n");

    // The proxy kept running: the verified database still answers, and its
    // health probes (over TLS) keep it healthy.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut again = AsyncRawClient::connect(addr).await;
    assert_eq!(again.cmd(&[b"GET", b"k"]).await, b"$1\r\nv\r\n");
    let health = text(&again.cmd(&[b"PROXY", b"HEALTH"]).await);
    let line = |prefix: &str| {
        health
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {health}"))
            .to_string()
    };
    let main = line("db0:name=main,");
    assert!(
        main.contains(",healthy=1,") && !main.contains(",probes=0,"),
        "{main}"
    );
    let wrongca = line("db1:name=wrongca,");
    assert!(wrongca.contains(",healthy=0,"), "{wrongca}");
    assert!(wrongca.contains("UnknownIssuer"), "{wrongca}");
    proxy.shutdown().await;
}

/// The binary logs a failed upstream handshake with the database, the upstream
/// and the reason, and warns at start about `insecure_skip_verify`.
#[test]
fn upstream_tls_failures_are_logged_with_database_and_upstream() {
    let pki = pki();
    let (_redis, tls_port) = tls_redis("server", false);
    let yaml = format!(
        "host: 127.0.0.1\nport: {tls_port}\nretry_attempts: 0\nredis_databases:\n  main: {{ db: 0, tls: {{ ca_file: \"{}\" }} }}\n  lab: {{ db: 1, tls: {{ insecure_skip_verify: true }} }}\n",
        pki.p("other-ca.crt")
    );
    let proxy = support::BinaryProxy::start_with(&yaml, &[], &[]);
    let mut c = proxy.client();
    let reply = text(&c.cmd(&[b"GET", b"k"]));
    assert!(reply.contains("UnknownIssuer"), "{reply}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let want = "upstream TLS handshake failed database=main upstream=127.0.0.1:";
    while !proxy.log().contains(want) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = proxy.log();
    assert!(log.contains(want), "{log}");
    assert!(log.contains("UnknownIssuer"), "{log}");
    assert!(
        log.contains("tls.insecure_skip_verify is true") && log.contains("database=\"lab\""),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------
// Client TLS
// ---------------------------------------------------------------------------------------

fn client_tls_yaml(redis: &RedisServer, cert: &Path, key: &Path, ca: Option<&str>) -> String {
    let ca = ca.map_or(String::new(), |c| format!(", ca_file: \"{c}\""));
    format!(
        r#"
listen: "127.0.0.1:0"
metrics_listen: null
host: 127.0.0.1
port: {port}
client_tls: {{ listen: "127.0.0.1:0", cert_file: "{cert}", key_file: "{key}"{ca} }}
redis_databases:
  main: {{ db: 0 }}
"#,
        port = redis.port(),
        cert = cert.display(),
        key = key.display(),
    )
}

/// [`client_tls_yaml`] with the proxy's certificate `server.crt`.
fn server_yaml(redis: &RedisServer, ca: Option<&str>) -> String {
    let pki = pki();
    client_tls_yaml(redis, &pki.path("server.crt"), &pki.path("server.key"), ca)
}

async fn tls_proxy(yaml: &str) -> (Proxy, std::net::SocketAddr) {
    let proxy = start_proxy(parse(yaml)).await;
    let tls = proxy.tls_addr().expect("a TLS listener");
    (proxy, tls)
}

/// The real redis-cli over TLS, a rustls client (TLS 1.3, and TLS 1.2 only), and
/// a plain client on the plain listener, all at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_listener_serves_redis_cli_and_runs_beside_the_plain_one() {
    let pki = pki();
    let redis = RedisServer::start();
    let yaml = server_yaml(&redis, None);
    let (proxy, tls_addr) = tls_proxy(&yaml).await;
    assert_ne!(tls_addr, proxy.local_addr());

    let mut tls = TlsClient::connect(tls_addr).await;
    assert_eq!(tls.version(), rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(tls.cmd(&[b"SET", b"via", b"tls"]).await, b"+OK\r\n");
    let mut plain = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(plain.cmd(&[b"GET", b"via"]).await, b"$3\r\ntls\r\n");
    // A pipeline over TLS keeps its order.
    let mut pipeline = Vec::new();
    for i in 0..100u32 {
        pipeline.extend(resp_cmd(&[b"SET", b"p", i.to_string().as_bytes()]));
        pipeline.extend(resp_cmd(&[b"GET", b"p"]));
    }
    tls.send(&pipeline).await.expect("write");
    for i in 0..100u32 {
        assert_eq!(tls.try_read_reply().await.expect("reply"), b"+OK\r\n");
        let v = i.to_string();
        assert_eq!(
            tls.try_read_reply().await.expect("reply"),
            format!("${}\r\n{v}\r\n", v.len()).into_bytes()
        );
    }

    // An 8 MiB reply to a slow reader arrives whole: when the socket is full, the
    // TLS session keeps the last bytes, and the proxy must flush them.
    let big = vec![b'x'; 8 << 20];
    assert_eq!(tls.cmd(&[b"SET", b"big", &big]).await, b"+OK\r\n");
    let mut slow = TlsClient::connect_small_window(tls_addr).await;
    slow.send(&resp_cmd(&[b"GET", b"big"]))
        .await
        .expect("write");
    let reply = slow.read_reply_slowly().await;
    assert_eq!(reply.len(), big.len() + 12, "$8388608\r\n, the value, \r\n");

    // A client offering only TLS 1.2 is served, with TLS 1.2.
    let cfg12 = client_config("ca.crt", None, &[&rustls::version::TLS12]);
    let mut tls12 = TlsClient::try_connect(tls_addr, cfg12)
        .await
        .expect("TLS 1.2");
    assert_eq!(tls12.version(), rustls::ProtocolVersion::TLSv1_2);
    assert_eq!(tls12.cmd(&[b"PING"]).await, b"+PONG\r\n");

    // A plain client on the TLS port gets no RESP reply (the bytes are not TLS).
    let mut confused = AsyncRawClient::connect(tls_addr).await;
    let _ = confused.try_send(&resp_cmd(&[b"PING"])).await;
    let got = confused.read_until_closed().await;
    assert!(!got.starts_with(b"+PONG"), "{}", text(&got));

    // redis-cli --tls through the proxy (a blocking child process).
    let cacert = pki.p("ca.crt");
    let port = tls_addr.port();
    let (out, status) = tokio::task::spawn_blocking(move || {
        support::redis_cli(port, &["--tls", "--cacert", &cacert, "GET", "via"])
    })
    .await
    .expect("redis-cli");
    assert!(status.success(), "redis-cli failed: {out}");
    assert_eq!(out.trim(), "tls");
    // Without --tls, redis-cli cannot talk to the TLS port.
    let (out, _) = tokio::task::spawn_blocking(move || {
        support::redis_cli_with_timeout(port, &["GET", "via"], Duration::from_secs(3))
    })
    .await
    .expect("redis-cli");
    assert_ne!(out.trim(), "tls");

    // A client that fails its handshake concerns no one else.
    assert_eq!(tls.cmd(&[b"GET", b"via"]).await, b"$3\r\ntls\r\n");
    proxy.shutdown().await;
}

/// A ClientHello without `supported_versions` (the pre-TLS 1.3 form), with
/// `client_version` set to `version`.
fn legacy_client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut hello = version.to_vec();
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // no session id
                   // ECDHE-ECDSA/RSA-AES128-GCM-SHA256 (TLS 1.2) and AES128-SHA (TLS 1.0+).
    hello.extend_from_slice(&[0x00, 0x06, 0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x2f]);
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    let extensions: &[u8] = &[
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, // groups x25519, P-256
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // point formats: uncompressed
        0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04, // signature algorithms
    ];
    hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    hello.extend_from_slice(extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(hello.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// The first 7 bytes the server answers `hello` with.
async fn answer_to(addr: std::net::SocketAddr, hello: &[u8]) -> [u8; 7] {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(hello).await.expect("write");
    let mut reply = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut reply))
        .await
        .expect("an answer within 5 s")
        .expect("a record");
    reply
}

/// TLS 1.1 is refused with a fatal `protocol_version` alert, while the same
/// ClientHello saying TLS 1.2 gets a ServerHello: nothing older is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_and_older_are_refused() {
    let redis = RedisServer::start();
    let (proxy, tls_addr) = tls_proxy(&server_yaml(&redis, None)).await;
    let tls12 = answer_to(tls_addr, &legacy_client_hello([0x03, 0x03])).await;
    // Handshake record, TLS 1.2, starting with a ServerHello (type 2).
    assert_eq!(&tls12[..3], &[0x16, 0x03, 0x03], "{tls12:?}");
    assert_eq!(tls12[5], 2, "{tls12:?}");
    for old in [[0x03, 0x02], [0x03, 0x01]] {
        let reply = answer_to(tls_addr, &legacy_client_hello(old)).await;
        // Alert record, 2 bytes: fatal (2), protocol_version (70).
        assert_eq!(reply[0], 0x15, "{old:?}: not an alert: {reply:?}");
        assert_eq!(&reply[3..], &[0, 2, 2, 70], "{old:?}: {reply:?}");
    }
    proxy.shutdown().await;
}

/// `listen: null` turns the plain listener off; the TLS one serves alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_null_serves_tls_only() {
    let redis = RedisServer::start();
    let yaml = server_yaml(&redis, None)
        .replace("listen: \"127.0.0.1:0\"\nmetrics", "listen: null\nmetrics");
    let config = parse(&yaml);
    assert!(!config.plain_listener);
    assert!(config.render_masked().contains("\nlisten: null\n"));
    let (proxy, tls_addr) = tls_proxy(&yaml).await;
    // The only address is the TLS listener's, and it speaks TLS.
    assert_eq!(proxy.local_addr(), tls_addr);
    let mut tls = TlsClient::connect(tls_addr).await;
    assert_eq!(tls.cmd(&[b"PING"]).await, b"+PONG\r\n");
    proxy.shutdown().await;
}

/// With `ca_file`, clients need a certificate signed by that CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mtls_requires_a_certificate_signed_by_the_ca() {
    let pki = pki();
    let redis = RedisServer::start();
    let ca = pki.p("ca.crt");
    let yaml = server_yaml(&redis, Some(&ca));
    let (proxy, tls_addr) = tls_proxy(&yaml).await;

    // No certificate: refused (in TLS 1.3 the refusal arrives with the first read).
    let refused = async {
        let mut c = TlsClient::try_connect(
            tls_addr,
            client_config("ca.crt", None, rustls::DEFAULT_VERSIONS),
        )
        .await?;
        c.try_cmd(&[b"PING"]).await
    };
    let r = refused.await;
    assert!(
        r.is_err(),
        "a client without a certificate was served: {r:?}"
    );

    // A certificate from another CA: refused.
    let other = async {
        let cfg = client_config("ca.crt", Some("other-client"), rustls::DEFAULT_VERSIONS);
        let mut c = TlsClient::try_connect(tls_addr, cfg).await?;
        c.try_cmd(&[b"PING"]).await
    };
    let r = other.await;
    assert!(
        r.is_err(),
        "a certificate from another CA was accepted: {r:?}"
    );

    // Signed by the CA: served.
    let cfg = client_config("ca.crt", Some("client"), rustls::DEFAULT_VERSIONS);
    let mut ok = TlsClient::try_connect(tls_addr, cfg).await.expect("mTLS");
    assert_eq!(ok.cmd(&[b"PING"]).await, b"+PONG\r\n");

    // The refused handshakes affected nothing: the plain listener serves too, and
    // they hold no client slot (connected: this one and `ok`).
    let mut plain = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(plain.cmd(&[b"PING"]).await, b"+PONG\r\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let info = text(&plain.cmd(&[b"PROXY", b"INFO", b"clients"]).await);
        if info.contains("connected_clients:2\r\n") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ok.cmd(&[b"PING"]).await, b"+PONG\r\n");
    proxy.shutdown().await;
}

/// Replacing the certificate files changes the certificate new connections see,
/// without a restart; files that cannot be used keep the previous certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_is_reloaded_when_the_files_change() {
    let pki = pki();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(pki.path("server.crt"), &cert).expect("copy");
    std::fs::copy(pki.path("server.key"), &key).expect("copy");
    let (proxy, tls_addr) = tls_proxy(&client_tls_yaml(&redis, &cert, &key, None)).await;
    let der = |name: &str| {
        CertificateDer::from_pem_file(pki.path(name))
            .expect("pem")
            .to_vec()
    };
    let first = TlsClient::connect(tls_addr).await;
    assert_eq!(first.peer_cert(), der("server.crt"));

    // New certificate and key (written as a deployment would: both files).
    std::fs::copy(pki.path("server2.key"), &key).expect("copy");
    std::fs::copy(pki.path("server2.crt"), &cert).expect("copy");
    let mut second = TlsClient::connect(tls_addr).await;
    assert_eq!(
        second.peer_cert(),
        der("server2.crt"),
        "new cert not served"
    );
    assert_eq!(second.cmd(&[b"PING"]).await, b"+PONG\r\n");

    // A broken certificate file: the previous certificate stays in use.
    std::fs::write(&cert, "not a certificate").expect("write");
    let mut third = TlsClient::connect(tls_addr).await;
    assert_eq!(third.peer_cert(), der("server2.crt"));
    assert_eq!(third.cmd(&[b"PING"]).await, b"+PONG\r\n");
    // A certificate that does not match the key: still the previous one.
    std::fs::copy(pki.path("server.crt"), &cert).expect("copy");
    let third = TlsClient::connect(tls_addr).await;
    assert_eq!(third.peer_cert(), der("server2.crt"));
    // Fixed: the key follows, and the pair is used.
    std::fs::copy(pki.path("server.key"), &key).expect("copy");
    let fourth = TlsClient::connect(tls_addr).await;
    assert_eq!(fourth.peer_cert(), der("server.crt"));
    // The connection made before the change still works.
    drop(first);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Config checks
// ---------------------------------------------------------------------------------------

#[test]
fn tls_config_errors_name_the_key_and_line() {
    let pki = pki();
    let (ca, crt, key) = (pki.p("ca.crt"), pki.p("client.crt"), pki.p("client.key"));
    let db = "redis_databases:\n  main: { db: 0 }\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{db}tls:\n  ca_file: /nonexistent/ca.crt\n"),
            "tls.yaml, line 4: tls.ca_file: cannot read /nonexistent/ca.crt",
        ),
        (
            format!("{db}tls:\n  ca_file: \"{key}\"\n"),
            "tls.yaml, line 4: tls.ca_file: ",
        ),
        (
            format!("{db}tls:\n  ca_file: \"{ca}\"\n  cert_file: \"{crt}\"\n"),
            "tls.yaml, line 5: tls.cert_file: cert_file needs key_file",
        ),
        (
            format!(
                "{db}tls:\n  ca_file: \"{ca}\"\n  cert_file: \"{crt}\"\n  key_file: \"{}\"\n",
                pki.p("server.key")
            ),
            "tls.yaml, line 6: tls.key_file: does not match cert_file",
        ),
        (
            format!("{db}tls:\n  ca_file: \"{ca}\"\n  insecure_skip_verify: true\n"),
            "tls.yaml, line 5: tls.insecure_skip_verify: cannot be true together with ca_file",
        ),
        (
            format!("{db}tls:\n  ca_fle: \"{ca}\"\n"),
            "tls.ca_fle: unknown key `ca_fle` (did you mean `ca_file`?)",
        ),
        (
            format!("redis_databases:\n  main:\n    db: 0\n    tls: {{ ca_file: \"{ca}\", server_name: \"not a name!\" }}\n"),
            "redis_databases.main.tls.server_name: \"not a name!\" is not a valid TLS server name",
        ),
        (
            format!("{db}listen: null\n"),
            "tls.yaml, line 3: listen: null turns the plain listener off, but neither client_tls nor unixsocket is set: there would be nothing to listen on",
        ),
        (
            format!("{db}client_tls:\n  cert_file: \"{crt}\"\n"),
            "client_tls.cert_file: cert_file needs key_file",
        ),
        (
            format!("{db}client_tls:\n  cert_file: \"{ca}\"\n  key_file: \"{ca}\"\n"),
            "client_tls.key_file: ",
        ),
        (
            format!(
                "{db}client_tls:\n  cert_file: \"{crt}\"\n  key_file: \"{key}\"\n  ca_file: /nonexistent\n"
            ),
            "tls.yaml, line 6: client_tls.ca_file: cannot read /nonexistent",
        ),
    ];
    for (yaml, want) in cases {
        let err = parse_err(&yaml);
        assert!(
            err.contains(want),
            "expected {want:?} in:\n{err}\nfor:\n{yaml}"
        );
    }
}

#[test]
fn tls_keys_are_layered_like_the_other_upstream_keys() {
    let pki = pki();
    let ca = pki.p("ca.crt");
    let yaml = format!(
        "tls: {{ ca_file: \"{ca}\", server_name: redis.internal }}\nredis_databases:\n  main: {{ db: 0 }}\n  plain: {{ db: 1, tls: null }}\n  own: {{ db: 2, tls: {{ insecure_skip_verify: true }} }}\n"
    );
    let config = parse(&yaml);
    let main = config.databases[0]
        .upstream
        .tls
        .as_ref()
        .expect("inherited");
    assert_eq!(main.ca_file.as_deref(), Some(Path::new(&ca)));
    assert_eq!(main.server_name.as_deref(), Some("redis.internal"));
    assert!(config.databases[1].upstream.tls.is_none());
    let own = config.databases[2].upstream.tls.as_ref().expect("own");
    assert!(own.insecure_skip_verify && own.ca_file.is_none());
    let report = config.render_masked();
    assert!(report.contains("    tls: null"), "{report}");
    assert!(
        report.contains("      server_name: redis.internal"),
        "{report}"
    );
}

/// `sentinel.tls`: the proxy asks a sentinel that listens only in TLS for the
/// primary (and subscribes to it) over TLS, checked against `ca_file`; without
/// `tls` it cannot, and the client is told which sentinel failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_are_reached_over_tls() {
    let pki = pki();
    let primary = RedisServer::start();
    let tls_port = free_port();
    let sentinel = support::sentinel::Sentinel::start_with(
        primary.port(),
        None,
        &format!(
            "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\n",
            pki.p("server.crt"),
            pki.p("server.key"),
            pki.p("ca.crt")
        ),
    );
    let yaml = |tls: &str| {
        format!(
            "listen: 127.0.0.1:0\nmetrics_listen: null\nredis_databases:\n  main:\n    db: 0\n    sentinel:\n      nodes: [\"127.0.0.1:{tls_port}\"]\n      master: {}\n{tls}",
            support::sentinel::MASTER
        )
    };
    let with_tls = yaml(&format!(
        "      tls: {{ ca_file: \"{}\" }}\n",
        pki.p("ca.crt")
    ));
    let proxy = start_proxy(parse(&with_tls)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(
        c.cmd(&[b"SET", b"via-tls-sentinel", b"1"]).await,
        b"+OK\r\n"
    );
    let mut direct = AsyncRawClient::connect(primary.addr()).await;
    assert_eq!(
        direct.cmd(&[b"GET", b"via-tls-sentinel"]).await,
        b"$1\r\n1\r\n"
    );
    // Plain TCP to the sentinel's TLS port: no answer it can read.
    let plain = start_proxy(parse(&yaml(""))).await;
    let mut p = AsyncRawClient::connect(plain.local_addr()).await;
    let reply = String::from_utf8_lossy(&p.cmd(&[b"GET", b"via-tls-sentinel"]).await).into_owned();
    assert!(
        reply.starts_with("-UPSTREAM") && reply.contains(&format!("127.0.0.1:{tls_port}")),
        "{reply}"
    );
    drop(sentinel);
}

/// A Redis Cluster with `tls-cluster yes` (every node also on a `tls-port`): with
/// `tls` the proxy learns the map from a seed's TLS port, takes the nodes'
/// `tls-port`s from it and routes, splits and fans out over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_reached_over_tls() {
    let pki = pki();
    let (cert, key, ca) = (pki.p("node.crt"), pki.p("node.key"), pki.p("ca.crt"));
    let nodes: Vec<(RedisServer, u16)> = (0..3)
        .map(|_| {
            // With `tls-cluster yes` the bus port is the TLS port + 10000.
            let tls = support::cluster::cluster_port();
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--tls-port",
                &tls.to_string(),
                "--tls-cluster",
                "yes",
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "no",
            ]
            .map(str::to_string);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            (RedisServer::start_with_args(&args), tls)
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|(n, _)| format!("127.0.0.1:{}", n.port()))
        .collect();
    let mut args = vec!["--cluster", "create"];
    args.extend(addrs.iter().map(String::as_str));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    let (out, status) =
        support::redis_cli_with_timeout(nodes[0].0.port(), &args, Duration::from_secs(30));
    assert!(status.success(), "redis-cli --cluster create: {out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|(n, _)| {
        support::redis_cli(n.port(), &["CLUSTER", "INFO"])
            .0
            .contains("cluster_state:ok")
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the TLS cluster did not form"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let yaml = format!(
        "listen: 127.0.0.1:0\nmetrics_listen: null\ncluster:\n  nodes: [\"127.0.0.1:{}\"]\ntls: {{ ca_file: \"{ca}\" }}\nredis_databases:\n  main: {{ db: 0 }}\n",
        nodes[0].1
    );
    let proxy = start_proxy(parse(&yaml)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let keys: Vec<String> = (0..30).map(|i| format!("tls-cluster:{i}")).collect();
    for k in &keys {
        assert_eq!(
            c.cmd(&[b"SET", k.as_bytes(), k.as_bytes()]).await,
            b"+OK\r\n"
        );
    }
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(keys.iter().map(|k| k.as_bytes()));
    let mut expected = b"*30\r\n".to_vec();
    for k in &keys {
        expected.extend(format!("${}\r\n{k}\r\n", k.len()).into_bytes());
    }
    assert_eq!(c.cmd(&mget).await, expected, "MGET split over the nodes");
    assert_eq!(c.cmd(&[b"DBSIZE"]).await, b":30\r\n");
    // Every node was used, at its TLS port.
    let info = String::from_utf8_lossy(&c.cmd(&[b"PROXY", b"INFO", b"cluster"]).await).into_owned();
    for (_, tls) in &nodes {
        let line = info
            .lines()
            .find(|l| l.starts_with(&format!("node_db0_127.0.0.1:{tls}:")))
            .unwrap_or_else(|| panic!("node at TLS port {tls} in {info}"));
        assert!(!line.contains("requests=0,"), "{line}");
    }
}
