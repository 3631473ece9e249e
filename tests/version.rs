//! Version and build commit (issue 11, part 4): `redis-sidecar --version` prints
//! `redis-sidecar <version> (commit <12 hex digits>)` and `PROXY INFO server` has
//! `proxy_version:` and `git_commit:`, both the commit `build.rs` recorded: in a git
//! checkout (CI runs in a fresh clone) that is `git rev-parse --short=12 HEAD`.

mod support;

use std::path::Path;
use std::process::Command;

use support::{parse_info_section, proxy_config, start_proxy, AsyncRawClient, RedisServer};

/// `git rev-parse --short=12 HEAD` when the crate is the top of a git checkout.
fn git_head() -> Option<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let top = git(&["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}

/// What the commit must be: git's HEAD in a checkout; otherwise the build
/// environment's REDIS_SIDECAR_GIT_COMMIT, else `unknown`.
fn expected_commit() -> String {
    git_head()
        .or_else(|| option_env!("REDIS_SIDECAR_GIT_COMMIT").map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

#[test]
fn version_flag_prints_version_and_git_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_redis-sidecar"))
        .arg("--version")
        .output()
        .expect("run redis-sidecar --version");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let want = format!(
        "redis-sidecar {} (commit {})",
        env!("CARGO_PKG_VERSION"),
        expected_commit()
    );
    assert_eq!(stdout.trim_end(), want);
    if git_head().is_some() {
        let commit = stdout
            .trim_end()
            .rsplit_once("(commit ")
            .and_then(|(_, c)| c.strip_suffix(')'))
            .unwrap_or_default();
        assert_eq!(commit.len(), 12, "{stdout}");
        assert!(commit.chars().all(|c| c.is_ascii_hexdigit()), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_info_server_shows_version_and_git_commit() {
    let redis = RedisServer::start();
    let proxy = start_proxy(proxy_config(&redis)).await;
    let mut c = AsyncRawClient::connect(proxy.local_addr()).await;
    let reply = c.cmd(&[b"PROXY", b"INFO", b"server"]).await;
    let text = String::from_utf8_lossy(&reply);
    let server = parse_info_section(&text, "Server");
    assert_eq!(
        server.get("proxy_version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION")),
        "{text}"
    );
    assert_eq!(
        server.get("git_commit").cloned(),
        Some(expected_commit()),
        "{text}"
    );
    assert_eq!(redis_sidecar::admin::GIT_COMMIT, expected_commit());
    proxy.shutdown().await;
}
