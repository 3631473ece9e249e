//! One level of upstream settings. The same upstream keys (`host`, `port`, credentials,
//! timeouts, pool sizes, resilience, `deny_commands`) may be given at the top level, as
//! defaults for every database, and inside each `redis_databases` entry, as overrides.
//! A [`Layer`] is what one level sets, each value with its origin; layers are parsed,
//! merged across aliases of one database (which must agree), and stacked
//! (a database's own layer over the top level's).

use std::sync::Arc;
use std::time::Duration;

use super::cluster::parse_cluster;
use super::error::Fail;
use super::fields::{
    nonnegative_secs, parse_command_list, parse_host, parse_key_prefix, parse_port, parse_secret,
    parse_u32, parse_username, positive_secs, set_nullable, Map, Set,
};
use super::sentinel::parse_sentinel;
use super::tls::parse_upstream_tls;
use super::types::{ClusterConfig, Secret, SentinelConfig, UpstreamTls};

/// The keys of a [`Layer`], allowed at the top level and in each database.
pub(super) const UPSTREAM_KEYS: &[&str] = &[
    "deny_commands",
    "host",
    "port",
    "username",
    "password",
    "timeout",
    "connect_timeout",
    "command_timeout",
    "max_connections",
    "pool_size",
    "mux_connections",
    "retry_attempts",
    "retry_delay",
    "retry_base_delay",
    "retry_max_delay",
    "failure_threshold",
    "recovery_timeout",
    "success_threshold",
    "health_check_interval",
    "tls",
    "key_prefix",
    "sentinel",
    "cluster",
];

/// One level's upstream settings (`None`: not set at this level).
#[derive(Debug, Clone, Default)]
pub(super) struct Layer {
    pub(super) host: Option<Set<String>>,
    pub(super) port: Option<Set<u16>>,
    pub(super) username: Option<Set<Option<String>>>,
    pub(super) password: Option<Set<Option<Secret>>>,
    pub(super) timeout: Option<Set<Duration>>,
    pub(super) connect_timeout: Option<Set<Duration>>,
    pub(super) command_timeout: Option<Set<Duration>>,
    pub(super) pool_size: Option<Set<u32>>,
    pub(super) mux_connections: Option<Set<u32>>,
    pub(super) retry_attempts: Option<Set<u32>>,
    pub(super) retry_base_delay: Option<Set<Duration>>,
    pub(super) retry_max_delay: Option<Set<Duration>>,
    pub(super) failure_threshold: Option<Set<u32>>,
    pub(super) recovery_timeout: Option<Set<Duration>>,
    pub(super) success_threshold: Option<Set<u32>>,
    pub(super) health_check_interval: Option<Set<Duration>>,
    pub(super) deny_commands: Option<Set<Vec<String>>>,
    pub(super) tls: Option<Set<Option<Arc<UpstreamTls>>>>,
    pub(super) key_prefix: Option<Set<String>>,
    pub(super) sentinel: Option<Set<Option<Arc<SentinelConfig>>>>,
    pub(super) cluster: Option<Set<Option<Arc<ClusterConfig>>>>,
}

/// Applies `$m!(field)` to every field of `Layer`.
macro_rules! layer_fields {
    ($m:ident) => {
        $m!(host);
        $m!(port);
        $m!(username);
        $m!(password);
        $m!(timeout);
        $m!(connect_timeout);
        $m!(command_timeout);
        $m!(pool_size);
        $m!(mux_connections);
        $m!(retry_attempts);
        $m!(retry_base_delay);
        $m!(retry_max_delay);
        $m!(failure_threshold);
        $m!(recovery_timeout);
        $m!(success_threshold);
        $m!(health_check_interval);
        $m!(deny_commands);
        $m!(tls);
        $m!(key_prefix);
        $m!(sentinel);
        $m!(cluster);
    };
}

impl Layer {
    pub(super) fn parse(map: &Map<'_>) -> Result<Layer, Fail> {
        Ok(Layer {
            host: map.set("host", parse_host)?,
            port: map.set("port", parse_port)?,
            username: set_nullable(map, "username", parse_username)?,
            password: set_nullable(map, "password", parse_secret)?,
            timeout: map.set("timeout", positive_secs)?,
            connect_timeout: map.set("connect_timeout", positive_secs)?,
            command_timeout: map.set("command_timeout", positive_secs)?,
            pool_size: map.set_either("max_connections", "pool_size", parse_u32(1))?,
            mux_connections: map.set("mux_connections", parse_u32(1))?,
            retry_attempts: map.set("retry_attempts", parse_u32(0))?,
            retry_base_delay: map.set_either(
                "retry_base_delay",
                "retry_delay",
                nonnegative_secs,
            )?,
            retry_max_delay: map.set("retry_max_delay", nonnegative_secs)?,
            failure_threshold: map.set("failure_threshold", parse_u32(1))?,
            recovery_timeout: map.set("recovery_timeout", positive_secs)?,
            success_threshold: map.set("success_threshold", parse_u32(1))?,
            health_check_interval: map.set("health_check_interval", positive_secs)?,
            deny_commands: map.set("deny_commands", parse_command_list)?,
            tls: set_nullable(map, "tls", parse_upstream_tls)?,
            key_prefix: map.set("key_prefix", parse_key_prefix)?,
            sentinel: set_nullable(map, "sentinel", parse_sentinel)?,
            cluster: set_nullable(map, "cluster", parse_cluster)?,
        })
    }

    /// Folds an alias's settings into this one; both setting a key differently is an error.
    pub(super) fn merge_alias(
        &mut self,
        other: Layer,
        primary: &str,
        index: u32,
    ) -> Result<(), Fail> {
        macro_rules! merge {
            ($field:ident) => {
                match (&self.$field, other.$field) {
                    (_, None) => {}
                    (None, Some(theirs)) => self.$field = Some(theirs),
                    (Some(ours), Some(theirs)) => {
                        if ours.value != theirs.value {
                            return Err(theirs.origin.fail(format!(
                                "conflicts with {}: names sharing db {index} are aliases of \
                                 `{primary}` and must agree on per-database settings",
                                ours.origin
                            )));
                        }
                    }
                }
            };
        }
        layer_fields!(merge);
        Ok(())
    }

    /// This layer with `fallback`'s settings filling the gaps.
    pub(super) fn over(&self, fallback: &Layer) -> Layer {
        let mut out = self.clone();
        macro_rules! fill {
            ($field:ident) => {
                if out.$field.is_none() {
                    out.$field = fallback.$field.clone();
                }
            };
        }
        layer_fields!(fill);
        out
    }
}
