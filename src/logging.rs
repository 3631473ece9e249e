//! The log level, changeable at run time (`PROXY LOGLEVEL`).
//!
//! The binary installs its `tracing` subscriber with a reloadable filter and hands
//! the setter to [`install`]; `PROXY LOGLEVEL <filter>` calls [`set`]. A proxy
//! embedded in another program (the tests) has no setter, and `PROXY LOGLEVEL`
//! says so.

use std::sync::{Mutex, OnceLock};

/// Applies a new filter directive (`debug`, `info,redis_sidecar=trace` …).
pub type Setter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SETTER: OnceLock<Setter> = OnceLock::new();
static CURRENT: Mutex<String> = Mutex::new(String::new());

/// Makes `setter` the way to change the level; `current` is the filter in force.
pub fn install(setter: Setter, current: &str) {
    let _ = SETTER.set(setter);
    remember(current);
}

fn remember(filter: &str) {
    let mut c = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    filter.clone_into(&mut c);
}

/// The filter in force (empty when the level cannot be changed).
pub fn current() -> String {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Changes the filter: a level (`error` … `trace`) or any `RUST_LOG` directive.
pub fn set(filter: &str) -> Result<(), String> {
    apply(filter, "PROXY LOGLEVEL")
}

/// [`set`], saying what changed it (`PROXY LOGLEVEL`, a configuration reload).
pub fn apply(filter: &str, by: &str) -> Result<(), String> {
    let setter = SETTER
        .get()
        .ok_or_else(|| "the log level cannot be changed in this process".to_string())?;
    setter(filter)?;
    remember(filter);
    tracing::warn!(filter, "log level changed by {by}");
    Ok(())
}
