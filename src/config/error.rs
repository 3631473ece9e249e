//! What can go wrong while loading a configuration. [`ConfigError`] is the public error,
//! whose message names the file, the key path and the line; [`Fail`] is what validation
//! returns internally (a key path or an environment variable, no line yet), turned into a
//! [`ConfigError`] at the end by looking the line up in the text; [`Origin`] says where a
//! setting came from, so a failure about it can blame the right place.

use std::fmt;
use std::path::{Path, PathBuf};

use super::yaml::{locate_line, KeyPath};

/// Why a configuration could not be loaded. The message names the file, the key path
/// (e.g. `redis_databases.cache.db`) and, where the YAML gives one, the line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not well-formed YAML.
    #[error("{}: invalid YAML: {message}", file_label(.file))]
    Yaml {
        /// The file, if the text came from one.
        file: Option<PathBuf>,
        /// 1-based line of the problem, if known.
        line: Option<usize>,
        /// The YAML parser's message (it includes the line and column).
        message: String,
    },
    /// A key is unknown, duplicated, missing, wrongly typed or has an invalid value.
    #[error("{}{}: {}{message}", file_label(.file), line_label(.line), key_label(.key))]
    Invalid {
        /// The file, if the text came from one.
        file: Option<PathBuf>,
        /// Dotted key path, e.g. `redis_databases.cache.db` (empty for the whole document).
        key: String,
        /// 1-based line of the key, if known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// An environment override has a bad value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name, e.g. `AUTOBOT_REDIS_PORT`.
        var: String,
        /// What is wrong (never contains a secret).
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the error refers to, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Yaml { line, .. } | ConfigError::Invalid { line, .. } => *line,
            ConfigError::Read { .. } | ConfigError::Env { .. } => None,
        }
    }

    /// The dotted key path (or environment variable name) the error refers to, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } if !key.is_empty() => Some(key),
            ConfigError::Env { var, .. } => Some(var),
            _ => None,
        }
    }
}

fn file_label(file: &Option<PathBuf>) -> String {
    match file {
        Some(p) => p.display().to_string(),
        None => "<config>".to_string(),
    }
}

fn line_label(line: &Option<usize>) -> String {
    match line {
        Some(n) => format!(", line {n}"),
        None => String::new(),
    }
}

fn key_label(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

// ---------------------------------------------------------------------------------
// Validation failures, turned into `ConfigError` (with a line) at the end.

/// A validation failure, before its line is known.
#[derive(Debug)]
pub(super) enum Fail {
    /// A problem with the key at `key`; the line is that of the `occurrence`-th
    /// appearance of `locate` (usually `key` itself).
    At {
        key: KeyPath,
        locate: KeyPath,
        occurrence: usize,
        message: String,
    },
    Env {
        var: &'static str,
        message: String,
    },
}

impl Fail {
    pub(super) fn at(key: &KeyPath, message: impl Into<String>) -> Fail {
        Fail::At {
            key: key.clone(),
            locate: key.clone(),
            occurrence: 0,
            message: message.into(),
        }
    }

    pub(super) fn into_error(self, text: &str, source: Option<&Path>) -> ConfigError {
        match self {
            Fail::At {
                key,
                locate,
                occurrence,
                message,
            } => ConfigError::Invalid {
                file: source.map(Path::to_path_buf),
                line: locate_line(text, &locate.0, occurrence),
                key: key.to_string(),
                message,
            },
            Fail::Env { var, message } => ConfigError::Env {
                var: var.to_string(),
                message,
            },
        }
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone)]
pub(super) enum Origin {
    Key(KeyPath),
    Env(&'static str),
}

impl Origin {
    pub(super) fn fail(&self, message: impl Into<String>) -> Fail {
        match self {
            Origin::Key(k) => Fail::at(k, message),
            Origin::Env(var) => Fail::Env {
                var,
                message: message.into(),
            },
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Key(k) => write!(f, "{k}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}
