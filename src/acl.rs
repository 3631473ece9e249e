//! `redis-sidecar acl`: the Redis `ACL SETUSER` line for a user that cannot run
//! what the configuration's `deny_commands` refuse.
//!
//! The proxy's deny list stops a denied command sent as a command, but not the
//! same command called from a script (`EVAL "return redis.call('flushall')" 0`) or
//! a function: only Redis can check those. Connecting the proxy as an ACL user
//! whose rules mirror the deny list makes Redis refuse them too (`-NOPERM`).
//!
//! Redis's ACL rules do not depend on the selected database, so databases whose
//! deny lists differ need one user each; databases on different servers need the
//! user created on each server. One line is printed per (server, user, deny list).

use crate::config::Config;
use crate::router::PROXY;

/// What `redis-sidecar acl` was asked for.
#[derive(Debug, Clone, Default)]
pub struct AclOptions {
    /// `--user`: the ACL user's name (default: the configured upstream `username`,
    /// else `sidecar`).
    pub user: Option<String>,
    /// `--password`: the password to put in the line.
    pub password: Option<String>,
    /// `--with-password`: put the configured upstream password in the line
    /// (without it, and without `--password`, a `<password>` placeholder).
    pub with_password: bool,
}

/// The placeholder printed instead of a password.
pub const PASSWORD_PLACEHOLDER: &str = "<password>";

/// Default user name when neither `--user` nor the config names one.
pub const DEFAULT_USER: &str = "sidecar";

/// One user to create: its `ACL SETUSER` line, and where it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclUser {
    /// `host:port` of the Redis server to run it on.
    pub server: String,
    /// The user name.
    pub user: String,
    /// The line, e.g. `ACL SETUSER sidecar reset on >pw ~* &* +@all -flushall`.
    pub line: String,
    /// Primary names of the databases that connect as this user.
    pub databases: Vec<String>,
    /// Whether the user's name differs from the `username` those databases are
    /// configured with (so the config must be changed to use it).
    pub rename_needed: bool,
}

/// The ACL rules for one deny list: `-name` for each denied command, `-cmd|sub`
/// for a subcommand (`proxy`, which Redis does not know, is left out).
pub fn deny_rules(deny: &[String]) -> Vec<String> {
    let mut rules: Vec<String> = deny
        .iter()
        .filter(|n| n.as_str() != PROXY)
        .map(|n| format!("-{}", n.to_ascii_lowercase()))
        .collect();
    rules.sort();
    rules.dedup();
    rules
}

/// The users (and their lines) the configuration needs.
pub fn users(config: &Config, opts: &AclOptions) -> Vec<AclUser> {
    struct Group {
        server: String,
        configured_user: Option<String>,
        rules: Vec<String>,
        password: Option<String>,
        databases: Vec<String>,
    }
    let mut groups: Vec<Group> = Vec::new();
    for db in &config.databases {
        let u = &db.upstream;
        let server = u.address();
        let rules = deny_rules(&u.deny_commands);
        match groups
            .iter_mut()
            .find(|g| g.server == server && g.configured_user == u.username && g.rules == rules)
        {
            Some(g) => g.databases.push(db.name().to_string()),
            None => groups.push(Group {
                server,
                configured_user: u.username.clone(),
                rules,
                password: u.password.as_ref().map(|p| p.expose().to_string()),
                databases: vec![db.name().to_string()],
            }),
        }
    }
    let base_name = |g: &Group| {
        opts.user
            .clone()
            .or_else(|| g.configured_user.clone())
            .unwrap_or_else(|| DEFAULT_USER.to_string())
    };
    groups
        .iter()
        .map(|g| {
            let mut user = base_name(g);
            // Two deny lists for one user on one server cannot both hold: each
            // group gets a user of its own, named after its first database.
            let clash = groups
                .iter()
                .filter(|o| o.server == g.server && base_name(o) == user)
                .count()
                > 1;
            if clash {
                user = format!("{user}-{}", g.databases.first().map_or("", String::as_str));
            }
            let password = match (&opts.password, opts.with_password) {
                (Some(p), _) => p.clone(),
                (None, true) => g
                    .password
                    .clone()
                    .unwrap_or_else(|| PASSWORD_PLACEHOLDER.to_string()),
                (None, false) => PASSWORD_PLACEHOLDER.to_string(),
            };
            let mut words = vec![
                "ACL".to_string(),
                "SETUSER".to_string(),
                quote(&user),
                "reset".to_string(),
                "on".to_string(),
                quote(&format!(">{password}")),
                "~*".to_string(),
                "&*".to_string(),
                "+@all".to_string(),
            ];
            words.extend(g.rules.iter().cloned());
            AclUser {
                server: g.server.clone(),
                rename_needed: g.configured_user.as_deref() != Some(user.as_str()),
                user,
                line: words.join(" "),
                databases: g.databases.clone(),
            }
        })
        .collect()
}

/// An argument as `redis-cli` reads it from a line: as is, or double-quoted with
/// `\` and `"` escaped when it holds spaces, quotes or control characters.
fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\'');
    if plain {
        return arg.to_string();
    }
    let mut out = String::from("\"");
    for c in arg.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The report `redis-sidecar acl` prints: `(stdout, stderr)`, the lines on
/// stdout (so `redis-sidecar acl | redis-cli` works) and the notes on stderr.
pub fn report(config: &Config, opts: &AclOptions) -> (String, String) {
    let users = users(config, opts);
    let mut out = String::new();
    let mut notes = String::new();
    let servers: std::collections::BTreeSet<&str> =
        users.iter().map(|u| u.server.as_str()).collect();
    for u in &users {
        out.push_str(&u.line);
        out.push('\n');
        let mut note = format!(
            "# user {} on {}: databases {}",
            u.user,
            u.server,
            u.databases.join(", ")
        );
        if u.rename_needed {
            note.push_str(&format!(
                "; set `username: {}` and its password for them in the config",
                u.user
            ));
        }
        notes.push_str(&note);
        notes.push('\n');
    }
    if servers.len() > 1 {
        notes.push_str("# run each line on the server it names\n");
    }
    if !opts.with_password && opts.password.is_none() {
        notes.push_str(&format!(
            "# replace {PASSWORD_PLACEHOLDER} with the password (or pass --password, or --with-password to print the configured one)\n"
        ));
    }
    if config
        .databases
        .iter()
        .any(|d| d.upstream.deny_commands.iter().any(|n| n == PROXY))
    {
        notes.push_str(
            "# `proxy` in deny_commands is the proxy's own command: Redis has no rule for it\n",
        );
    }
    (out, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(lists: &[&[&str]]) -> Config {
        let mut c = Config::for_upstream("127.0.0.1", 6379);
        c.databases.truncate(lists.len());
        for (d, list) in c.databases.iter_mut().zip(lists) {
            d.upstream.deny_commands = list.iter().map(|s| s.to_string()).collect();
        }
        c
    }

    #[test]
    fn one_deny_list_gives_one_user() {
        let c = config(&[
            &["flushall", "config|set", "proxy"],
            &["flushall", "config|set"],
        ]);
        let users = users(&c, &AclOptions::default());
        assert_eq!(users.len(), 1);
        assert_eq!(
            users[0].line,
            "ACL SETUSER sidecar reset on ><password> ~* &* +@all -config|set -flushall"
        );
        assert_eq!(users[0].databases, ["main", "knowledge"]);
    }

    #[test]
    fn differing_deny_lists_give_a_user_each() {
        let c = config(&[&["flushall"], &["flushdb"]]);
        let opts = AclOptions {
            password: Some("pw".into()),
            ..Default::default()
        };
        let users = users(&c, &opts);
        assert_eq!(users.len(), 2);
        assert_eq!(
            users[0].line,
            "ACL SETUSER sidecar-main reset on >pw ~* &* +@all -flushall"
        );
        assert_eq!(users[1].user, "sidecar-knowledge");
        assert!(users[1].rename_needed);
    }

    #[test]
    fn the_configured_password_is_printed_only_when_asked() {
        let mut c = config(&[&[]]);
        c.databases[0].upstream.password = Some(crate::config::Secret("s3cret".into()));
        c.databases[0].upstream.username = Some("app".into());
        let plain = users(&c, &AclOptions::default());
        assert!(!plain[0].line.contains("s3cret"));
        assert!(!plain[0].rename_needed);
        let shown = users(
            &c,
            &AclOptions {
                with_password: true,
                ..Default::default()
            },
        );
        assert_eq!(
            shown[0].line,
            "ACL SETUSER app reset on >s3cret ~* &* +@all"
        );
    }
}
