//! What the upstream says it is: the `server`, `version`, `role` and `modules` fields of its
//! `HELLO` reply (asked by the health probe task until known, or read in a RESP3
//! connection's setup) into an
//! [`Identity`]. The proxy answers a client's `HELLO`
//! itself (it changes the session's protocol, name and login), and with these fields
//! the reply names the client's Redis (`redis`, `7.0.15`, its modules), not the
//! proxy: clients decide what to use by them.

use crate::config::UpstreamConfig;
use crate::endpoint::Identity;
use crate::protocol::reply;
use crate::protocol::value::{decode, Value};

use super::dedicated::ExclusiveConn;

/// Asks the upstream what it is (`HELLO 2` on a connection of its own, closed
/// after) and records it in the database's endpoint. Best effort, within the
/// connect and command timeouts: a Redis without `HELLO`, or a proxy in between that
/// closes a connection on a command it does not know (twemproxy does), leaves it
/// unknown, and nothing else used that connection. (RESP3 connections learn it
/// from their setup's `HELLO 3`.)
pub async fn ask(cfg: &UpstreamConfig) {
    let asked = async {
        let mut conn = ExclusiveConn::open(cfg, false, false).await.ok()?;
        let reply = conn
            .round_trip(b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n", 1)
            .await
            .ok()?;
        parse(&reply)
    };
    let limit = cfg.connect_timeout + cfg.command_timeout;
    if let Ok(Some(identity)) = tokio::time::timeout(limit, asked).await {
        cfg.endpoint.learn(identity);
    }
}

/// The identity in a `HELLO` reply (a RESP2 array or a RESP3 map); `None` for an
/// error (a Redis before 6.0 has no `HELLO`) or a reply without `server`/`version`.
pub fn parse(hello: &[u8]) -> Option<Identity> {
    let Ok(Some((Value::Array(Some(fields)), _))) = decode(hello, 0) else {
        return None;
    };
    let mut server = None;
    let mut version = None;
    let mut role = None;
    let mut modules: &[Value] = &[];
    for pair in fields.chunks_exact(2) {
        let name = pair[0].text()?;
        match (name.as_str(), &pair[1]) {
            ("server", v) => server = v.text(),
            ("version", v) => version = v.text(),
            ("role", v) => role = v.text(),
            ("modules", Value::Array(Some(list))) => modules = list,
            _ => {}
        }
    }
    let mut resp2 = Vec::new();
    let mut resp3 = Vec::new();
    reply::array_header(&mut resp2, modules.len());
    reply::array_header(&mut resp3, modules.len());
    for module in modules {
        // Each module is a map (`name`, `ver`, `path`, `args`): flat in RESP2.
        let Value::Array(Some(entries)) = module else {
            return None;
        };
        module.encode(&mut resp2);
        resp3.push(b'%');
        resp3.extend_from_slice((entries.len() / 2).to_string().as_bytes());
        resp3.extend_from_slice(b"\r\n");
        for entry in entries {
            entry.encode(&mut resp3);
        }
    }
    Some(Identity {
        server: server?.into_bytes(),
        version: version?.into_bytes(),
        role: role.unwrap_or_else(|| "master".into()).into_bytes(),
        modules: [resp2, resp3],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESP2: &[u8] = b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";

    #[test]
    fn a_resp2_reply_without_modules() {
        let id = parse(RESP2).expect("identity");
        assert_eq!(id.server, b"redis");
        assert_eq!(id.version, b"7.0.15");
        assert_eq!(id.role, b"master");
        assert_eq!(id.modules, [b"*0\r\n".to_vec(), b"*0\r\n".to_vec()]);
    }

    #[test]
    fn a_resp3_reply_with_a_module_gives_it_in_both_protocols() {
        let module = |open: &str| {
            format!(
                "{open}\r\n$4\r\nname\r\n$6\r\nsearch\r\n$3\r\nver\r\n:20811\r\n$4\r\npath\r\n$8\r\n/x/rs.so\r\n$4\r\nargs\r\n*1\r\n$3\r\nFOO\r\n"
            )
        };
        let reply = format!(
            "%7\r\n$6\r\nserver\r\n$6\r\nvalkey\r\n$7\r\nversion\r\n$5\r\n8.1.0\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:9\r\n$4\r\nmode\r\n$7\r\ncluster\r\n$4\r\nrole\r\n$7\r\nreplica\r\n$7\r\nmodules\r\n*1\r\n{}",
            module("%4")
        );
        let id = parse(reply.as_bytes()).expect("identity");
        assert_eq!(id.server, b"valkey");
        assert_eq!(id.version, b"8.1.0");
        assert_eq!(id.role, b"replica");
        assert_eq!(
            id.modules[0],
            format!("*1\r\n{}", module("*8")).into_bytes()
        );
        assert_eq!(
            id.modules[1],
            format!("*1\r\n{}", module("%4")).into_bytes()
        );
    }

    #[test]
    fn errors_and_incomplete_or_odd_replies_give_nothing() {
        assert_eq!(parse(b"-ERR unknown command 'HELLO'\r\n"), None);
        assert_eq!(parse(&RESP2[..RESP2.len() - 3]), None);
        assert_eq!(parse(b"*2\r\n$6\r\nserver\r\n$5\r\nredis\r\n"), None);
        // A module that is not a map.
        assert_eq!(
            parse(b"*6\r\n$6\r\nserver\r\n$1\r\nr\r\n$7\r\nversion\r\n$1\r\n7\r\n$7\r\nmodules\r\n*1\r\n:1\r\n"),
            None
        );
    }
}
