//! TLS configurations built from PEM files, for both sides: the client listener's
//! server configuration ([`ServerTls`], which re-reads its files when they change)
//! and the upstream connections' client configuration ([`client_config`]).
//!
//! rustls with the `ring` provider (no OpenSSL, no cmake): TLS 1.2 and 1.3 only.
//! Nothing here knows about the YAML; failures say which file ([`File`]) they are
//! about, so the config loader can blame the right key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The protocol versions offered and accepted: TLS 1.3 and 1.2, nothing older.
pub const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Where the CA bundle of the system is looked for when no `ca_file` is given.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Which of the configured files a failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum File {
    /// `ca_file`.
    Ca,
    /// `cert_file`.
    Cert,
    /// `key_file`.
    Key,
}

/// A TLS setup failure: the file it is about and what is wrong.
pub type Failure = (File, String);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: File) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| (what, format!("cannot read {}: {e}", path.display())))
}

/// The certificates of a PEM file (at least one).
pub fn load_certs(path: &Path, what: File) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let bytes = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (what, format!("{}: invalid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err((
            what,
            format!(
                "{}: no certificate in it (expected PEM \"-----BEGIN CERTIFICATE-----\")",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Failure> {
    let bytes = read(path, File::Key)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        (
            File::Key,
            format!("{}: no usable private key in it: {e}", path.display()),
        )
    })
}

fn roots(path: &Path) -> Result<RootCertStore, Failure> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(path, File::Ca)? {
        store.add(cert).map_err(|e| {
            (
                File::Ca,
                format!("{}: not a usable CA certificate: {e}", path.display()),
            )
        })?;
    }
    Ok(store)
}

/// The client configuration for upstream connections. Without `ca_file` the
/// system's CA bundle is used; `client_cert` is `(cert_file, key_file)` for
/// servers that require client certificates; `insecure_skip_verify` accepts any
/// server certificate (for tests only: it defeats TLS's protection).
pub fn client_config(
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
    insecure_skip_verify: bool,
) -> Result<Arc<ClientConfig>, Failure> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| (File::Ca, e.to_string()))?;
    let builder = if insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let store = match ca_file {
            Some(p) => roots(p)?,
            None => system_roots()?,
        };
        builder.with_root_certificates(store)
    };
    let config = match client_cert {
        Some((cert, key)) => {
            let certs = load_certs(cert, File::Cert)?;
            let key = load_key(key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| (File::Key, format!("does not match cert_file: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn system_roots() -> Result<RootCertStore, Failure> {
    match SYSTEM_CA_BUNDLES.iter().map(Path::new).find(|p| p.exists()) {
        Some(p) => roots(p),
        None => Err((
            File::Ca,
            format!(
                "no ca_file given and no system CA bundle found (looked for {})",
                SYSTEM_CA_BUNDLES.join(", ")
            ),
        )),
    }
}

/// The server configuration for the client listener: our certificate chain and
/// key, and with `ca_file` client certificates signed by that CA are required.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    ca_file: Option<&Path>,
) -> Result<Arc<ServerConfig>, Failure> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| (File::Cert, e.to_string()))?;
    let builder = match ca_file {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
                    .build()
                    .map_err(|e| (File::Ca, format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let certs = load_certs(cert_file, File::Cert)?;
    let key = load_key(key_file)?;
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        (
            File::Key,
            format!(
                "{} does not go with cert_file {}: {e}",
                key_file.display(),
                cert_file.display()
            ),
        )
    })?;
    Ok(Arc::new(config))
}

/// What identifies a version of a file: its modification time and length
/// (`None`: it cannot be read now).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The client listener's TLS configuration, re-read when its files change: each
/// [`ServerTls::acceptor`] call compares the files' modification times and sizes
/// with those of the loaded version (a few `stat` calls) and, if one differs,
/// loads them again. New files that fail to load are logged and the configuration
/// in use is kept (and retried when the files change again).
#[derive(Debug)]
pub struct ServerTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_file: Option<PathBuf>,
    current: Mutex<(Vec<Stamp>, Arc<ServerConfig>)>,
}

impl ServerTls {
    /// Loads the files (an error if they cannot be used).
    pub fn new(
        cert_file: &Path,
        key_file: &Path,
        ca_file: Option<&Path>,
    ) -> Result<ServerTls, Failure> {
        let tls = ServerTls {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            ca_file: ca_file.map(Path::to_path_buf),
            current: Mutex::new((Vec::new(), server_config(cert_file, key_file, ca_file)?)),
        };
        let stamps = tls.stamps();
        tls.lock().0 = stamps;
        Ok(tls)
    }

    fn stamps(&self) -> Vec<Stamp> {
        let mut s = vec![stamp(&self.cert_file), stamp(&self.key_file)];
        if let Some(ca) = &self.ca_file {
            s.push(stamp(ca));
        }
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<Stamp>, Arc<ServerConfig>)> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration for a new connection, reloaded first if the files changed.
    pub fn config(&self) -> Arc<ServerConfig> {
        let stamps = self.stamps();
        let mut current = self.lock();
        if current.0 != stamps {
            // Remember these stamps either way: a bad file is reported once, not
            // on every connection, and tried again when it changes.
            current.0 = stamps;
            match server_config(&self.cert_file, &self.key_file, self.ca_file.as_deref()) {
                Ok(config) => {
                    current.1 = config;
                    tracing::info!(cert_file = %self.cert_file.display(), "client TLS certificate reloaded");
                }
                Err((_, e)) => {
                    tracing::error!(error = %e, "client TLS files changed but cannot be used; keeping the previous certificate");
                }
            }
        }
        current.1.clone()
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config())
    }
}

/// Parses a TLS server name (a DNS name or an IP address).
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string()).map_err(|_| {
        format!("{name:?} is not a valid TLS server name (a DNS name or an IP address)")
    })
}

/// Accepts every server certificate (`insecure_skip_verify`), still checking the
/// handshake signatures so the session itself is well formed.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
