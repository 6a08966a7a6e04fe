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
use crate::supervisor;
use crate::vsock::{KernelListeners, VmGuest, VsockConfig, VsockSettings, VsockTasks};
use crate::{AppState, launch, router};

/// What `notifyhub serve` was asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to serve HTTP; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The run directory; guest sockets go to `<run_dir>/guests/<name>/notify`.
    pub run_dir: PathBuf,
    /// Guests to register at start.
    pub guests: Vec<String>,
    /// VM guests and the vsock listeners (`--vsock-port`, `--vm`, `--hybrid`, …).
    pub vsock: VsockConfig,
    /// How long each boot of every guest may take from its first message to `READY=1`
    /// (`--ready-timeout`); `None`: no limit. See [`Hub::set_ready_timeout`].
    pub ready_timeout: Option<std::time::Duration>,
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
    /// The kernel vsock listeners and their router, running from `bind` on.
    vsock: VsockTasks,
}

impl Server {
    /// Binds the kernel vsock listeners `config.vsock` asks for and starts routing their
    /// messages, registers `config.guests` and the VM guests (binding their sockets), and binds
    /// the HTTP listener. The hub shuts down when `shutdown` is cancelled.
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
        hub.set_ready_timeout(config.ready_timeout);
        let kernel = KernelListeners::bind(&config.vsock)?;
        let vsock_settings = VsockSettings {
            ports: kernel.ports(),
            ..config.vsock.settings
        };
        let registry = Registry::with_vsock(
            hub.clone(),
            run_dir.join("guests"),
            &shutdown,
            vsock_settings,
        );
        let vsock = kernel.spawn(registry.clone(), shutdown.child_token());
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
                vsock,
            }),
            Err(error) => {
                vsock.stop().await;
                state.registry.close().await;
                Err(error)
            }
        }
    }

    async fn start(
        config: &Config,
        state: &AppState,
    ) -> anyhow::Result<(TcpListener, Vec<(String, String)>)> {
        let mut notify_sockets =
            Vec::with_capacity(config.guests.len() + config.vsock.guests.len());
        for name in &config.guests {
            let guest = state
                .registry
                .register(name)
                .await
                .with_context(|| format!("cannot register guest {name:?}"))?;
            notify_sockets.push((name.clone(), guest.summary.notify_socket.to_string()));
        }
        for VmGuest { name, reach } in &config.vsock.guests {
            let guest = state
                .registry
                .register_with(name, reach.clone())
                .await
                .with_context(|| format!("cannot register guest {name:?}"))?;
            // What the VM's PID 1 will have as $NOTIFY_SOCKET: its vsock address.
            let ports = state.registry.kernel_ports();
            let summary = &guest.summary;
            let launch = launch::launch(name, &summary.notify_socket, reach, ports);
            notify_sockets.push((name.clone(), launch.notify_socket));
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

    /// The guests registered at start, in order, with what each is handed as `$NOTIFY_SOCKET`:
    /// its socket's absolute path, or for a VM guest its vsock address (`vsock-stream:2:PORT`,
    /// given as the credential `vmm.notify_socket`).
    pub fn notify_sockets(&self) -> &[(String, String)] {
        &self.notify_sockets
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves HTTP until the shutdown token is cancelled, lets open requests finish (every SSE
    /// stream and long-poll ends on that token), then closes the vsock listeners and removes
    /// every guest socket (hybrid vsock sockets too).
    ///
    /// # Errors
    /// What `axum::serve` returns.
    pub async fn run(self) -> io::Result<()> {
        let Self {
            listener,
            state,
            vsock,
            ..
        } = self;
        let shutdown = state.shutdown.clone();
        let registry = state.registry.clone();
        // Every listener and guest socket is bound by now: the service manager may hear READY=1.
        let supervisor = tokio::spawn(supervisor::report(state.hub.clone(), shutdown.clone()));
        let served = axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        info!("stopped serving; removing the guests' sockets");
        vsock.stop().await;
        registry.close().await;
        // It has sent STOPPING=1 once shutdown began.
        let _ = supervisor.await;
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
