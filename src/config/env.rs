//! Environment overrides: `AUTOBOT_REDIS_HOST`, `AUTOBOT_REDIS_PORT` and
//! `AUTOBOT_REDIS_PASSWORD` replace the top-level `host`, `port` and `password` (they
//! go into the top-level [`Layer`] with an environment [`Origin`], so a failure they
//! cause names the variable), and `REDIS_SIDECAR_LISTEN` and
//! `REDIS_SIDECAR_CLIENT_PASSWORD` replace `listen` and `client_password`. Variables are
//! read through a lookup function, the process environment unless a test gives another.

use std::net::SocketAddr;

use super::error::{Fail, Origin};
use super::fields::Set;
use super::layer::Layer;
use super::types::Secret;

/// Environment variable overriding the top-level upstream `host`.
pub const ENV_HOST: &str = "AUTOBOT_REDIS_HOST";
/// Environment variable overriding the top-level upstream `port`.
pub const ENV_PORT: &str = "AUTOBOT_REDIS_PORT";
/// Environment variable overriding the top-level upstream `password` (empty: none).
pub const ENV_PASSWORD: &str = "AUTOBOT_REDIS_PASSWORD";
/// Environment variable overriding `listen`.
pub const ENV_LISTEN: &str = "REDIS_SIDECAR_LISTEN";
/// Environment variable overriding `client_password` (empty: none).
pub const ENV_CLIENT_PASSWORD: &str = "REDIS_SIDECAR_CLIENT_PASSWORD";

/// Looks `name` up in the process environment (non-UTF-8 bytes are replaced).
pub(super) fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// Applies the environment overrides to the top-level layer; returns the overridden
/// `listen` and `client_password`.
#[allow(clippy::type_complexity)]
pub(super) fn apply_env(
    top: &mut Layer,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Option<SocketAddr>, Option<Option<Secret>>), Fail> {
    if let Some(host) = env(ENV_HOST) {
        let host = host.trim();
        if host.is_empty() {
            return Err(Fail::Env {
                var: ENV_HOST,
                message: "must not be empty (unset it to use the file's host)".into(),
            });
        }
        top.host = Some(Set {
            value: host.to_string(),
            origin: Origin::Env(ENV_HOST),
        });
    }
    if let Some(port) = env(ENV_PORT) {
        let value = match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(Fail::Env {
                    var: ENV_PORT,
                    message: format!("expected a port number 1-65535, got {port:?}"),
                })
            }
        };
        top.port = Some(Set {
            value,
            origin: Origin::Env(ENV_PORT),
        });
    }
    if let Some(password) = env(ENV_PASSWORD) {
        top.password = Some(Set {
            value: (!password.is_empty()).then_some(Secret(password)),
            origin: Origin::Env(ENV_PASSWORD),
        });
    }
    let listen = match env(ENV_LISTEN) {
        None => None,
        Some(text) => Some(text.trim().parse::<SocketAddr>().map_err(|_| Fail::Env {
            var: ENV_LISTEN,
            message: format!(
                "invalid listen address {text:?}: expected IP:port, e.g. \"127.0.0.1:6380\""
            ),
        })?),
    };
    let client_password = env(ENV_CLIENT_PASSWORD).map(|p| (!p.is_empty()).then_some(Secret(p)));
    Ok((listen, client_password))
}
