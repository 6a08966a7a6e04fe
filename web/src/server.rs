//! The hub as a whole: registers the configured guests, serves HTTP until shutdown, and cleans
//! up its sockets.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::registry::Registry;
use crate::store::Hub;
use crate::{AppState, router};

/// What `notifyhub serve` was asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to serve HTTP; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The run directory; guest sockets go to `<run_dir>/guests/<name>/notify`.
    pub run_dir: PathBuf,
    /// Guests to register at start.
    pub guests: Vec<String>,
}

/// No run directory was given and none could be derived.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "no run directory: $RUNTIME_DIRECTORY and $XDG_RUNTIME_DIR are unset and not running as root; \
     pass --run-dir DIR"
)]
pub struct NoRunDir;

/// The default run directory: `$RUNTIME_DIRECTORY` (the first, if systemd set several), else
/// `$XDG_RUNTIME_DIR/notifyhub`, else `/run/notifyhub` for root. `var` reads the environment.
///
/// # Errors
/// [`NoRunDir`] when none applies.
pub fn default_run_dir(
    var: impl Fn(&str) -> Option<OsString>,
    is_root: bool,
) -> Result<PathBuf, NoRunDir> {
    let set = |name| var(name).filter(|value| !value.is_empty());
    if let Some(dirs) = set("RUNTIME_DIRECTORY") {
        // systemd joins several RuntimeDirectory= paths with ':'.
        let first = std::env::split_paths(&dirs).next().unwrap_or_default();
        return Ok(first);
    }
    if let Some(dir) = set("XDG_RUNTIME_DIR") {
        return Ok(Path::new(&dir).join("notifyhub"));
    }
    if is_root {
        return Ok(PathBuf::from("/run/notifyhub"));
    }
    Err(NoRunDir)
}

/// A hub with its guests registered and its HTTP port bound, ready to [`run`](Self::run).
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    state: AppState,
    notify_sockets: Vec<(String, String)>,
}

impl Server {
    /// Registers `config.guests` (binding their sockets) and binds the HTTP listener. The hub
    /// shuts down when `shutdown` is cancelled.
    ///
    /// # Errors
    /// A guest that cannot be registered, or a listener that cannot be bound; nothing is left
    /// behind then.
    pub async fn bind(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let run_dir = std::path::absolute(&config.run_dir).with_context(|| {
            format!(
                "cannot make the run directory {} absolute",
                config.run_dir.display()
            )
        })?;
        let hub = Hub::new();
        let registry = Registry::new(hub.clone(), run_dir.join("guests"), &shutdown);
        let state = AppState {
            hub,
            registry,
            shutdown,
        };
        match Self::start(&config, &state).await {
            Ok((listener, notify_sockets)) => Ok(Self {
                listener,
                state,
                notify_sockets,
            }),
            Err(error) => {
                state.registry.close().await;
                Err(error)
            }
        }
    }

    async fn start(
        config: &Config,
        state: &AppState,
    ) -> anyhow::Result<(TcpListener, Vec<(String, String)>)> {
        let mut notify_sockets = Vec::with_capacity(config.guests.len());
        for name in &config.guests {
            let guest = state
                .registry
                .register(name)
                .await
                .with_context(|| format!("cannot register guest {name:?}"))?;
            notify_sockets.push((name.clone(), guest.summary.notify_socket.to_string()));
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        Ok((listener, notify_sockets))
    }

    /// The address HTTP is served on.
    ///
    /// # Errors
    /// As [`TcpListener::local_addr`].
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The guests registered at start, in order, with their absolute socket paths.
    pub fn notify_sockets(&self) -> &[(String, String)] {
        &self.notify_sockets
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves HTTP until the shutdown token is cancelled, lets open requests finish (every SSE
    /// stream and long-poll ends on that token), then removes every guest socket.
    ///
    /// # Errors
    /// What `axum::serve` returns.
    pub async fn run(self) -> io::Result<()> {
        let Self {
            listener, state, ..
        } = self;
        let shutdown = state.shutdown.clone();
        let registry = state.registry.clone();
        let served = axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        info!("stopped serving; removing the guests' sockets");
        registry.close().await;
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.into())
        }
    }

    #[test]
    fn run_dir_defaults() {
        let both = [
            ("RUNTIME_DIRECTORY", "/run/hub:/run/other"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ];
        assert_eq!(default_run_dir(env(&both), false), Ok("/run/hub".into()));
        let xdg = [
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
            ("RUNTIME_DIRECTORY", ""),
        ];
        assert_eq!(
            default_run_dir(env(&xdg), true),
            Ok("/run/user/1000/notifyhub".into())
        );
        assert_eq!(default_run_dir(env(&[]), true), Ok("/run/notifyhub".into()));
        assert_eq!(default_run_dir(env(&[]), false), Err(NoRunDir));
        assert!(NoRunDir.to_string().contains("--run-dir"));
    }
}
