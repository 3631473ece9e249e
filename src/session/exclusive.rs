//! Transactions on a held connection (MULTI/WATCH bookkeeping) and the
//! `auth_passthrough` login that gives a session a private connection.

use super::local;
use super::mode::Mode;
use super::queue::error_text;
use super::Session;
use crate::cluster::Cluster;
use crate::command::TxOp;
use crate::config::{Secret, UpstreamConfig};
use crate::protocol::reply;
use crate::router::Database;
use crate::upstream::connect::encode_auth;
use crate::upstream::dedicated::{Dedicated, ExclusiveConn};
use crate::upstream::UpstreamError;
use std::sync::Arc;

/// Credentials a client logged in to Redis with (`auth_passthrough`).
pub(super) struct Login {
    pub user: Option<String>,
    pub password: Secret,
    /// On a cluster database: the cluster as this login sees it
    /// ([`Cluster::login`]), made for the first request that needs it.
    pub view: Option<Arc<Cluster>>,
    /// Which login of the session this is (its connections are not another's).
    pub id: u64,
}

impl Session {
    /// Tracks MULTI/EXEC/WATCH for a request sent to the held connection, and
    /// returns whether the connection has no transaction state after it (an
    /// exclusive one can then be given back).
    pub(super) fn transaction_step(&mut self, op: TxOp) -> bool {
        let Some(held) = self.mode.held_mut() else {
            return true;
        };
        let was_multi = held.in_multi;
        match op {
            TxOp::Multi => held.in_multi = true,
            TxOp::End => {
                held.in_multi = false;
                held.watching = false;
                held.dirty = false;
            }
            TxOp::Watch if !held.in_multi => held.watching = true,
            TxOp::Unwatch if !held.in_multi => held.watching = false,
            _ => {}
        }
        let idle = !held.in_multi && !held.watching;
        if was_multi != held.in_multi {
            self.publish();
        }
        idle
    }

    /// The settings for this session's own upstream connections to `db`
    /// (subscriber, private, out of band): the database's, logged in as the
    /// session's user when it authenticated through to Redis.
    pub(super) fn upstream_cfg(&self, db: &Database) -> UpstreamConfig {
        // On a cluster: the node for what does not route by slot (subscribers,
        // out-of-band requests, private connections): `Cluster::home`.
        let cfg = match db.cluster() {
            Some(c) => c.home_config(),
            None => db.config.upstream.clone(),
        };
        self.as_login(cfg)
    }

    /// `cfg` logged in as the session's `auth_passthrough` login, if any.
    pub(super) fn as_login(&self, mut cfg: UpstreamConfig) -> UpstreamConfig {
        if let Some(login) = &self.login {
            cfg.username.clone_from(&login.user);
            cfg.password = Some(login.password.clone());
        }
        cfg
    }

    /// `auth_passthrough`: opens a connection to the current database's server
    /// logged in with `creds`. On success it becomes the session's private
    /// connection (every later request goes there); on failure the reply is
    /// Redis's own error (`-WRONGPASS …`), and the session keeps its login.
    pub(super) async fn log_in(&mut self, creds: local::Credentials) -> Result<(), Vec<u8>> {
        if matches!(self.mode, Mode::Exclusive(_)) || self.mode.in_multi() {
            return Err(
                b"-ERR AUTH inside a transaction is not supported by redis-sidecar\r\n".to_vec(),
            );
        }
        let text = |b: Vec<u8>| String::from_utf8(b).map_err(|_| ());
        let (Ok(user), Ok(password)) = (creds.user.map(text).transpose(), text(creds.password))
        else {
            return Err(
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n".to_vec(),
            );
        };
        self.checkouts += 1;
        let previous = self.login.replace(Login {
            user,
            password: Secret(password),
            view: None,
            id: self.checkouts,
        });
        match self.open_private(creds.resp3).await {
            Ok(()) => {
                self.state.user = Some(
                    self.login
                        .as_ref()
                        .and_then(|l| l.user.clone())
                        .unwrap_or_else(|| "default".into()),
                );
                self.state.authenticated = true;
                Ok(())
            }
            Err(e) => {
                self.login = previous;
                Err(e)
            }
        }
    }

    /// Opens a connection logged in as `self.login` to the current database and
    /// makes it the session's private connection (replacing any before it). On a
    /// cluster, only checks the login on the home node: the session's requests
    /// then go by slot over the login's own connections ([`Session::login_view`]),
    /// and it holds no private connection.
    ///
    /// A login whose connection may not `SELECT` its database (`-NOPERM` in the
    /// setup, a standalone database other than 0) gets one that selects it with
    /// the proxy's own credentials and only then logs in (`AUTH`): as on Redis,
    /// where a connection keeps across `AUTH` the database selected before.
    pub(super) async fn open_private(&mut self, resp3: bool) -> Result<(), Vec<u8>> {
        let db = self.state.db.clone();
        let mut opened = ExclusiveConn::open_own(&self.upstream_cfg(&db), resp3).await;
        let may_not_select = matches!(&opened, Err(UpstreamError::Handshake { reply, .. })
            if reply.starts_with("NOPERM") && db.config.upstream.db != 0);
        let login = self.login.as_ref();
        if let Some(login) = login.filter(|_| may_not_select && db.cluster().is_none()) {
            let mut auth = Vec::new();
            encode_auth(login.user.as_deref(), login.password.expose(), &mut auth);
            opened = ExclusiveConn::open_own_then_auth(&db.config.upstream, resp3, &auth).await;
        }
        match opened {
            Ok(_) if db.cluster().is_some() => {
                if matches!(self.mode, Mode::Private(_)) {
                    self.release(false);
                }
                Ok(())
            }
            Ok(conn) => {
                let conn = Dedicated::private(
                    conn,
                    db.label(),
                    db.config.upstream.command_timeout,
                    self.live.config.limits.pubsub_buffer_limit,
                );
                self.hold_private(conn, db, resp3);
                Ok(())
            }
            Err(UpstreamError::Handshake { reply, .. }) => {
                let mut out = Vec::new();
                reply::error(&mut out, &reply);
                Err(out)
            }
            Err(e) => {
                let mut out = Vec::new();
                reply::error(&mut out, &error_text(&db, &e, 1));
                Err(out)
            }
        }
    }

    /// The cluster as the session's login sees it, on a cluster database with
    /// an `auth_passthrough` login (`None` otherwise).
    pub(super) fn login_view(&mut self) -> Option<Arc<Cluster>> {
        let db = self.state.db.clone();
        let cluster = db.cluster()?;
        let login = self.login.as_mut()?;
        match &login.view {
            Some(v) if v.is_view_of(cluster) => Some(v.clone()),
            _ => {
                let v = cluster.login(login.user.clone(), login.password.clone());
                login.view = Some(v.clone());
                Some(v)
            }
        }
    }

    /// Whether the session's shared connection is held up (`Database::detour`;
    /// an `auth_passthrough` login on a cluster: its own connections').
    pub(super) fn held_up(&mut self) -> bool {
        let (id, resp3) = (self.state.id, self.state.resp3);
        if self.login.is_some() && self.state.db.cluster().is_some() {
            return self.login_view().is_some_and(|v| v.detour(id, resp3));
        }
        self.state.db.detour(id, resp3)
    }

    /// After a local command: a private connection must speak the session's
    /// protocol and live on its database's server; if not, it is opened again
    /// (and a login on a cluster database that SELECTs a standalone one gets one).
    /// `Err` closes the client (its own connection to Redis is gone).
    pub(super) async fn follow_private(&mut self) -> Result<(), Vec<u8>> {
        let stale = match &self.mode {
            Mode::Private(p) => !p.db.same_server(&self.state.db) || p.resp3 != self.state.resp3,
            Mode::Shared => self.login.is_some() && self.state.db.cluster().is_none(),
            _ => false,
        };
        if stale && self.tracking.is_some() {
            return self.tracking_switch_protocol().await;
        }
        if stale {
            let resp3 = self.state.resp3;
            self.open_private(resp3).await?;
        }
        Ok(())
    }
}
