//! Out-of-band commands: the few that Redis runs while it is busy with a script or
//! function (`SCRIPT KILL`, `FUNCTION KILL`, `FUNCTION STATS`, `SHUTDOWN`), sent at
//! once on a connection of their own.
//!
//! On a shared connection such a command would wait behind the very script it is
//! meant to stop (Redis does not read a connection while running its script), and
//! an exclusive connection may be all in use; so each gets a fresh connection,
//! closed after the reply, and bypasses the circuit breaker (a busy server is
//! exactly when it is needed).

use bytes::Bytes;
use tokio::sync::oneshot;

use super::dedicated::ExclusiveConn;
use super::error::UpstreamError;
use super::mux::Answer;
use crate::config::UpstreamConfig;

/// Sends `request` (one complete multibulk request) to `cfg`'s upstream on a new
/// connection and answers through the returned channel, within the connect and
/// command timeouts.
pub fn call(mut cfg: UpstreamConfig, resp3: bool, request: Bytes) -> oneshot::Receiver<Answer> {
    // These commands are server-wide: no SELECT, which a Redis busy with a script
    // refuses (`-BUSY`), failing the setup exactly when the kill is needed. (AUTH
    // and HELLO run while busy; the setup's PING and a Sentinel's ROLE may be refused.)
    cfg.db = 0;
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let limit = cfg.connect_timeout + cfg.command_timeout;
        let exchange = async {
            let mut conn = ExclusiveConn::open(&cfg, resp3, false).await?;
            conn.round_trip(&request, 1).await
        };
        let reply = match tokio::time::timeout(limit, exchange).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout {
                addr: cfg.address(),
                after: limit,
            }),
        };
        let _ = tx.send(reply.into());
    });
    rx
}

/// [`call`] on each of `cfgs` at once (`SCRIPT KILL`/`FUNCTION KILL` on a
/// cluster: the script runs on one primary, which the proxy does not track).
/// The answer is the first `+OK` (the one that stopped it); else the first
/// other than `-NOTBUSY` (e.g. `-UNKILLABLE`, or a failure to reach a node);
/// else the first, as one server with nothing running answers.
pub fn call_each(
    cfgs: Vec<UpstreamConfig>,
    resp3: bool,
    request: Bytes,
) -> oneshot::Receiver<Answer> {
    let calls: Vec<_> = cfgs
        .into_iter()
        .map(|cfg| call(cfg, resp3, request.clone()))
        .collect();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut answers = Vec::with_capacity(calls.len());
        // (Each call ends within its own time bound.)
        for c in calls {
            if let Ok(a) = c.await {
                answers.push(a);
            }
        }
        let rank = |a: &Answer| match &a.reply {
            Ok(r) if r.starts_with(b"+") => 0,
            Ok(r) if r.starts_with(b"-NOTBUSY") => 2,
            _ => 1,
        };
        let best = (0..answers.len()).min_by_key(|&i| (rank(&answers[i]), i));
        if let Some(i) = best {
            let _ = tx.send(answers.swap_remove(i));
        }
    });
    rx
}
