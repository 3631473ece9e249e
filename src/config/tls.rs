//! The TLS keys: `tls` (an upstream key, top level or per database) and the
//! top-level `client_tls`. The files are loaded here, at config load, so a missing
//! file, unreadable PEM or a key that does not match its certificate is an error
//! naming the key (`redis_databases.main.tls.ca_file`) and its line.

use std::path::PathBuf;
use std::sync::Arc;

use super::error::Fail;
use super::fields::{parse_bool, parse_listen, parse_string, Map};
use super::types::{ClientTls, UpstreamTls, DEFAULT_TLS_LISTEN};
use super::yaml::{KeyPath, Node};
use crate::tls::File;

/// The keys of `tls`.
const UPSTREAM_TLS_KEYS: &[&str] = &[
    "ca_file",
    "cert_file",
    "key_file",
    "server_name",
    "insecure_skip_verify",
];

/// The keys of `client_tls`.
const CLIENT_TLS_KEYS: &[&str] = &["listen", "cert_file", "key_file", "ca_file"];

fn parse_path(path: &KeyPath, node: &Node) -> Result<PathBuf, Fail> {
    let text = parse_string(path, node)?;
    if text.trim().is_empty() {
        return Err(Fail::at(path, "must not be empty (a PEM file's path)"));
    }
    Ok(PathBuf::from(text))
}

/// A file key of `map`, if set.
fn file(map: &Map<'_>, key: &str) -> Result<Option<PathBuf>, Fail> {
    Ok(map.set(key, parse_path)?.map(|s| s.value))
}

/// The key (under `path`) a failure about `which` file is blamed on.
fn blame(path: &KeyPath, map: &Map<'_>, which: File, message: String) -> Fail {
    let key = match which {
        File::Ca => "ca_file",
        File::Cert => "cert_file",
        File::Key => "key_file",
    };
    if map.get(key).is_some() {
        Fail::at(&path.child(key), message)
    } else {
        Fail::at(path, message)
    }
}

/// `cert_file` and `key_file`, which go together.
fn cert_and_key(path: &KeyPath, map: &Map<'_>) -> Result<Option<(PathBuf, PathBuf)>, Fail> {
    match (file(map, "cert_file")?, file(map, "key_file")?) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(Fail::at(
            &path.child("cert_file"),
            "cert_file needs key_file (the certificate's private key)",
        )),
        (None, Some(_)) => Err(Fail::at(
            &path.child("key_file"),
            "key_file needs cert_file (the certificate it is the key of)",
        )),
    }
}

/// `tls: { ca_file, cert_file, key_file, server_name, insecure_skip_verify }`
/// (`null`: plain TCP).
pub(super) fn parse_upstream_tls(
    path: &KeyPath,
    node: &Node,
) -> Result<Option<Arc<UpstreamTls>>, Fail> {
    let map = Map::new(
        node,
        path,
        "a mapping like { ca_file: /etc/redis/ca.crt }",
        Some(UPSTREAM_TLS_KEYS),
    )?;
    let ca_file = file(&map, "ca_file")?;
    let client_cert = cert_and_key(path, &map)?;
    let server_name = match map.get("server_name") {
        None => None,
        Some((p, n)) => {
            let name = parse_string(&p, n)?;
            crate::tls::server_name(&name).map_err(|e| Fail::at(&p, e))?;
            Some(name)
        }
    };
    let insecure = map
        .set("insecure_skip_verify", parse_bool)?
        .is_some_and(|s| s.value);
    if insecure && ca_file.is_some() {
        return Err(Fail::at(
            &path.child("insecure_skip_verify"),
            "cannot be true together with ca_file: either the server's certificate is verified against ca_file or not at all",
        ));
    }
    UpstreamTls::new(ca_file, client_cert, server_name, insecure)
        .map(|t| Some(Arc::new(t)))
        .map_err(|(which, message)| blame(path, &map, which, message))
}

/// `client_tls: { listen, cert_file, key_file, ca_file }` (`null`: no TLS listener).
pub(super) fn parse_client_tls(path: &KeyPath, node: &Node) -> Result<Option<ClientTls>, Fail> {
    let map = Map::new(
        node,
        path,
        "a mapping like { listen: \"127.0.0.1:6390\", cert_file: server.crt, key_file: server.key }",
        Some(CLIENT_TLS_KEYS),
    )?;
    let listen = map
        .set("listen", parse_listen)?
        .map_or(DEFAULT_TLS_LISTEN, |s| s.value);
    let Some((cert_file, key_file)) = cert_and_key(path, &map)? else {
        return Err(Fail::at(
            path,
            "needs cert_file and key_file (the proxy's certificate and its private key)",
        ));
    };
    let ca_file = file(&map, "ca_file")?;
    crate::tls::server_config(&cert_file, &key_file, ca_file.as_deref())
        .map_err(|(which, message)| blame(path, &map, which, message))?;
    Ok(Some(ClientTls {
        listen,
        cert_file,
        key_file,
        ca_file,
    }))
}
