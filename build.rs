//! Records the git commit the binary was built from, for `redis-sidecar --version`
//! and `PROXY INFO server` (`git_commit:`), as `REDIS_SIDECAR_BUILD_COMMIT`.
//!
//! Source, in order: `git rev-parse --short=12 HEAD` when the crate is the top of a
//! git checkout; else the build environment's `REDIS_SIDECAR_GIT_COMMIT` (the
//! Dockerfile passes its `GIT_COMMIT` build argument there, since a build context
//! may not include `.git`); else `unknown`. Never fails the build.
//!
//! Reruns only when HEAD moves (HEAD, the branch's ref file, packed-refs) or the
//! environment variable changes, so ordinary edits do not rerun it. No `-dirty`
//! marker: it would need a rerun on every file change to stay true.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `git -C dir args…`; its trimmed stdout when it succeeds and is non-empty.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The commit, when `dir` is the top of a git work tree (not a crate unpacked
/// somewhere inside an unrelated repository). Emits the rerun triggers.
fn commit_from_git(dir: &Path) -> Option<String> {
    let top = PathBuf::from(git(dir, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    // Paths git itself resolves (a worktree keeps HEAD apart from the refs).
    let mut watch = vec![git(dir, &["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watch.push(git(dir, &["rev-parse", "--git-path", &branch]));
    }
    watch.push(git(dir, &["rev-parse", "--git-path", "packed-refs"]));
    for path in watch.into_iter().flatten() {
        let path = dir.join(path); // relative paths are relative to `dir`
                                   // A missing path would make cargo rerun this script on every build.
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    git(dir, &["rev-parse", "--short=12", "HEAD"])
}

/// Keeps what a commit id or tag may hold (no newline can reach cargo's directives).
fn sanitize(s: &str) -> String {
    s.trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
        .take(64)
        .collect()
}

fn main() {
    println!("cargo:rerun-if-env-changed=REDIS_SIDECAR_GIT_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into()));
    let commit = commit_from_git(&dir)
        .or_else(|| {
            std::env::var("REDIS_SIDECAR_GIT_COMMIT")
                .ok()
                .map(|s| sanitize(&s))
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=REDIS_SIDECAR_BUILD_COMMIT={commit}");
}
