//! Per-database routing: `SELECT n` sends a session's commands to database n's
//! upstream (host, port and upstream db index from the config).

mod support;

use std::time::Duration;

use bb8_redis::redis::{self, AsyncCommands};
use support::{
    bb8_pool, printable, proxy_config, resp_bulk, resp_cmd, start_proxy, AsyncRawClient,
    RedisServer,
};

fn idx(i: usize) -> Vec<u8> {
    i.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_eleven_databases_are_isolated() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;

    // A fresh session is in database 0.
    assert_eq!(c.cmd(&[b"SET", b"k", b"value-0"]).await, b"+OK\r\n");
    for i in 1..=10 {
        assert_eq!(c.cmd(&[b"SELECT", &idx(i)]).await, b"+OK\r\n", "SELECT {i}");
        assert_eq!(
            c.cmd(&[b"GET", b"k"]).await,
            b"$-1\r\n",
            "db {i} starts empty"
        );
        let v = format!("value-{i}");
        assert_eq!(c.cmd(&[b"SET", b"k", v.as_bytes()]).await, b"+OK\r\n");
        assert_eq!(c.cmd(&[b"DBSIZE"]).await, b":1\r\n", "db {i}");
    }
    // Read back in another order, through the same and through a new session.
    let mut other = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(
        other.cmd(&[b"GET", b"k"]).await,
        resp_bulk(b"value-0"),
        "a new session starts in db 0"
    );
    for i in (0..=10).rev() {
        let want = resp_bulk(format!("value-{i}").as_bytes());
        for s in [&mut c, &mut other] {
            assert_eq!(s.cmd(&[b"SELECT", &idx(i)]).await, b"+OK\r\n");
            assert_eq!(s.cmd(&[b"GET", b"k"]).await, want, "db {i}");
        }
    }
    // And directly on Redis: each upstream db holds exactly its own value.
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    for i in 0..=10 {
        assert_eq!(direct.cmd(&[b"SELECT", &idx(i)]).await, b"+OK\r\n");
        assert_eq!(
            direct.cmd(&[b"GET", b"k"]).await,
            resp_bulk(format!("value-{i}").as_bytes()),
            "upstream db {i}"
        );
        assert_eq!(direct.cmd(&[b"DBSIZE"]).await, b":1\r\n", "upstream db {i}");
    }
    for i in 11..16 {
        assert_eq!(direct.cmd(&[b"SELECT", &idx(i)]).await, b"+OK\r\n");
        assert_eq!(direct.cmd(&[b"DBSIZE"]).await, b":0\r\n", "upstream db {i}");
    }

    // FLUSHDB in db 4 empties only db 4.
    assert_eq!(c.cmd(&[b"SELECT", b"4"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"FLUSHDB"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"DBSIZE"]).await, b":0\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"DBSIZE"]).await, b":1\r\n");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_pools_per_database_are_isolated() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut tasks = Vec::new();
    for db in 0..=10u32 {
        // redis-rs sends SELECT <db> when it opens each pooled connection.
        let pool = bb8_pool(proxy.local_addr(), db, 2).await;
        tasks.push(tokio::spawn(async move {
            for n in 0..20 {
                let mut conn = pool.get().await.expect("pool.get");
                let () = conn.set("shared", format!("db{db}-{n}")).await.unwrap();
                let v: String = conn.get("shared").await.unwrap();
                assert_eq!(v, format!("db{db}-{n}"));
                let size: i64 = redis::cmd("DBSIZE").query_async(&mut *conn).await.unwrap();
                assert_eq!(size, 1, "db {db}");
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("task timed out")
            .expect("task panicked");
    }
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    for db in 0..=10 {
        assert_eq!(direct.cmd(&[b"SELECT", &idx(db)]).await, b"+OK\r\n");
        assert_eq!(
            direct.cmd(&[b"GET", b"shared"]).await,
            resp_bulk(format!("db{db}-19").as_bytes())
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_relocated_to_another_server() {
    let first = RedisServer::start();
    let second = RedisServer::start();
    let mut config = proxy_config(&first);
    config.databases[5].upstream.port = second.port();
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;

    assert_eq!(c.cmd(&[b"SET", b"where", b"db0"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"where", b"db5"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"where"]).await, resp_bulk(b"db5"));
    assert_eq!(c.cmd(&[b"SELECT", b"6"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"where", b"db6"]).await, b"+OK\r\n");
    // A pipeline that switches servers mid-way is still answered in order.
    let mut p = Vec::new();
    for db in [b"5", b"0", b"5", b"6"] {
        p.extend(resp_cmd(&[b"SELECT", db]));
        p.extend(resp_cmd(&[b"GET", b"where"]));
    }
    c.send(&p).await;
    let replies = c.read_replies(8).await;
    let gets: Vec<Vec<u8>> = replies.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(
        gets,
        [
            resp_bulk(b"db5"),
            resp_bulk(b"db0"),
            resp_bulk(b"db5"),
            resp_bulk(b"db6")
        ]
    );

    // The second server's db 5 has it; the first server's db 5 does not.
    let mut on_second = AsyncRawClient::connect(second.addr()).await;
    assert_eq!(on_second.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(on_second.cmd(&[b"GET", b"where"]).await, resp_bulk(b"db5"));
    let mut on_first = AsyncRawClient::connect(first.addr()).await;
    assert_eq!(on_first.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(on_first.cmd(&[b"GET", b"where"]).await, b"$-1\r\n");
    assert_eq!(on_first.cmd(&[b"SELECT", b"6"]).await, b"+OK\r\n");
    assert_eq!(on_first.cmd(&[b"GET", b"where"]).await, resp_bulk(b"db6"));
    // Nothing else reached the second server.
    let info = on_second.cmd(&[b"INFO", b"keyspace"]).await;
    let text = String::from_utf8_lossy(&info).into_owned();
    assert!(text.contains("db5:keys=1,"), "{text}");
    assert!(!text.contains("db0:") && !text.contains("db6:"), "{text}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_db_index_other_than_the_client_index() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.databases[2].upstream.db = 12;
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    assert_eq!(c.cmd(&[b"SELECT", b"2"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"mapped", b"yes"]).await, b"+OK\r\n");
    let mut direct = AsyncRawClient::connect(redis.addr()).await;
    assert_eq!(direct.cmd(&[b"SELECT", b"12"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"mapped"]).await, resp_bulk(b"yes"));
    assert_eq!(direct.cmd(&[b"SELECT", b"2"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"mapped"]).await, b"$-1\r\n");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_databases_are_errors_and_the_session_stays_usable() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;

    assert_eq!(c.cmd(&[b"SELECT", b"3"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"k", b"three"]).await, b"+OK\r\n");

    let out_of_range = b"-ERR DB index is out of range\r\n".to_vec();
    let not_int = b"-ERR value is not an integer or out of range\r\n".to_vec();
    for (arg, want) in [
        (&b"11"[..], &out_of_range),
        (b"99", &out_of_range),
        (b"-1", &out_of_range),
        (b"x", &not_int),
        (b"", &not_int),
        (b"1.5", &not_int),
    ] {
        let got = c.cmd(&[b"SELECT", arg]).await;
        assert_eq!(
            printable(&got),
            printable(want),
            "SELECT {:?}",
            String::from_utf8_lossy(arg)
        );
        // The session is still in db 3.
        assert_eq!(c.cmd(&[b"GET", b"k"]).await, resp_bulk(b"three"));
    }
    // Same wording as Redis itself for the cases Redis also rejects.
    assert_eq!(
        printable(&direct.cmd(&[b"SELECT", b"99"]).await),
        printable(&out_of_range)
    );
    assert_eq!(
        printable(&direct.cmd(&[b"SELECT", b"x"]).await),
        printable(&not_int)
    );
    // Wrong arity, like Redis.
    let got = c.cmd(&[b"SELECT"]).await;
    assert_eq!(printable(&got), printable(&direct.cmd(&[b"SELECT"]).await));
    let got = c.cmd(&[b"SELECT", b"1", b"2"]).await;
    assert_eq!(
        printable(&got),
        printable(&direct.cmd(&[b"SELECT", b"1", b"2"]).await)
    );
    assert_eq!(c.cmd(&[b"PING"]).await, b"+PONG\r\n");
    assert_eq!(c.cmd(&[b"GET", b"k"]).await, resp_bulk(b"three"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_and_copy_translate_database_indexes() {
    let redis = RedisServer::start();
    let mut config = proxy_config(&redis);
    config.databases[3].upstream.db = 7;
    // Client db 7 must then live elsewhere on the server, or it would alias db 3.
    config.databases[7].upstream.db = 13;
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let mut direct = AsyncRawClient::connect(redis.addr()).await;

    assert_eq!(c.cmd(&[b"SET", b"mv", b"payload"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"MOVE", b"mv", b"3"]).await, b":1\r\n");
    assert_eq!(c.cmd(&[b"EXISTS", b"mv"]).await, b":0\r\n");
    // It landed in upstream db 7 (client db 3), not upstream db 3.
    assert_eq!(direct.cmd(&[b"SELECT", b"7"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"mv"]).await, resp_bulk(b"payload"));
    assert_eq!(direct.cmd(&[b"SELECT", b"3"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"EXISTS", b"mv"]).await, b":0\r\n");
    // Through the proxy it is in client db 3.
    assert_eq!(c.cmd(&[b"SELECT", b"3"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"GET", b"mv"]).await, resp_bulk(b"payload"));
    // And back to client db 0 (upstream db 0).
    assert_eq!(c.cmd(&[b"MOVE", b"mv", b"0"]).await, b":1\r\n");
    assert_eq!(direct.cmd(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"mv"]).await, resp_bulk(b"payload"));
    // MOVE to client db 7 lands in upstream db 13.
    assert_eq!(c.cmd(&[b"SELECT", b"0"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"MOVE", b"mv", b"7"]).await, b":1\r\n");
    assert_eq!(direct.cmd(&[b"SELECT", b"13"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"mv"]).await, resp_bulk(b"payload"));
    // MOVE to a database that does not exist, or to itself.
    assert_eq!(c.cmd(&[b"SET", b"x", b"1"]).await, b"+OK\r\n");
    let got = c.cmd(&[b"MOVE", b"x", b"42"]).await;
    assert!(got.starts_with(b"-ERR"), "{}", printable(&got));
    let got = c.cmd(&[b"MOVE", b"x", b"0"]).await;
    assert!(
        got.starts_with(b"-ERR"),
        "MOVE to the same db: {}",
        printable(&got)
    );
    assert_eq!(c.cmd(&[b"GET", b"x"]).await, resp_bulk(b"1"));

    // COPY … DB 3 copies into upstream db 7.
    assert_eq!(
        c.cmd(&[b"COPY", b"x", b"xcopy", b"DB", b"3"]).await,
        b":1\r\n"
    );
    assert_eq!(direct.cmd(&[b"SELECT", b"7"]).await, b"+OK\r\n");
    assert_eq!(direct.cmd(&[b"GET", b"xcopy"]).await, resp_bulk(b"1"));
    assert_eq!(c.cmd(&[b"GET", b"x"]).await, resp_bulk(b"1"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_to_a_database_on_another_server_is_refused() {
    let first = RedisServer::start();
    let second = RedisServer::start();
    let mut config = proxy_config(&first);
    config.databases[5].upstream.port = second.port();
    let proxy = start_proxy(config).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;

    assert_eq!(c.cmd(&[b"SET", b"stay", b"here"]).await, b"+OK\r\n");
    let got = c.cmd(&[b"MOVE", b"stay", b"5"]).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(
        text.starts_with("-ERR MOVE across upstream servers is not supported"),
        "{text}"
    );
    assert!(
        text.contains("'cache'"),
        "names the target database: {text}"
    );
    assert!(
        text.contains(&second.port().to_string()),
        "names the other server: {text}"
    );
    assert!(text.ends_with("\r\n") && !text[..text.len() - 2].contains('\n'));
    // Nothing moved anywhere.
    assert_eq!(c.cmd(&[b"GET", b"stay"]).await, resp_bulk(b"here"));
    let mut on_second = AsyncRawClient::connect(second.addr()).await;
    assert_eq!(on_second.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(on_second.cmd(&[b"DBSIZE"]).await, b":0\r\n");
    // COPY … DB 5 likewise; MOVE between two databases on the first server still works.
    let got = c.cmd(&[b"COPY", b"stay", b"c", b"DB", b"5"]).await;
    assert!(
        got.starts_with(b"-ERR COPY across upstream servers"),
        "{}",
        printable(&got)
    );
    assert_eq!(c.cmd(&[b"MOVE", b"stay", b"4"]).await, b":1\r\n");
    // From the relocated database back to the first server: refused too.
    assert_eq!(c.cmd(&[b"SELECT", b"5"]).await, b"+OK\r\n");
    assert_eq!(c.cmd(&[b"SET", b"there", b"1"]).await, b"+OK\r\n");
    let got = c.cmd(&[b"MOVE", b"there", b"0"]).await;
    assert!(
        got.starts_with(b"-ERR MOVE across upstream servers"),
        "{}",
        printable(&got)
    );
    assert_eq!(c.cmd(&[b"GET", b"there"]).await, resp_bulk(b"1"));
    proxy.shutdown().await;
}
