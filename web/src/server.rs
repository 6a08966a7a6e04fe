//! The hub as a whole: registers the configured guests, serves HTTP until shutdown, and cleans
//! up its sockets.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use axum::serve::{Listener, ListenerExt as _};
use notifyhub_transport_unix::stream::SocketFile;
use notifyhub_transport_unix::{NotifySocket, SocketAccess};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::activation::{Inherited, InheritedHttp};
use crate::journal::{Journal, JournalConfig};
use crate::limit::HttpLimits;
use crate::registry::Registry;
use crate::security::{HttpAuth, Listen, Token};
use crate::store::Hub;
use crate::supervisor;
use crate::vsock::{KernelListeners, VmGuest, VsockConfig, VsockSettings, VsockTasks};
use crate::{AppState, launch, router_with_access};

/// What `notifyhub serve` was asked to do.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to serve HTTP: a TCP address (port 0 picks a free one) or a UNIX socket.
    pub listen: Listen,
    /// Who may use HTTP (`--token-file`, `--insecure-no-auth`); a non-loopback `listen` needs a
    /// token or `insecure_no_auth` ([`HttpAuth::check`]).
    pub http_auth: HttpAuth,
    /// Permission bits of the HTTP UNIX socket (`--listen-mode`; default
    /// [`crate::security::DEFAULT_HTTP_SOCKET_MODE`], 0600).
    pub http_socket_mode: u32,
    /// Mode and owner of every guest's notify socket unless the guest has its own
    /// (`--socket-mode`, `--socket-owner`).
    pub socket_access: SocketAccess,
    /// The run directory; guest sockets go to `<run_dir>/guests/<name>/notify`.
    pub run_dir: PathBuf,
    /// Guests to register at start.
    pub guests: Vec<String>,
    /// VM guests and the vsock listeners (`--vsock-port`, `--vm`, `--hybrid`, …).
    pub vsock: VsockConfig,
    /// How long each boot of every guest may take from its first message to `READY=1`
    /// (`--ready-timeout`); `None`: no limit. See [`Hub::set_ready_timeout`].
    pub ready_timeout: Option<std::time::Duration>,
    /// Every guest's rate limit (`--rate-limit`, `--rate-burst`); `None`: no limit. See
    /// [`crate::limit`].
    pub rate_limit: Option<crate::limit::RateLimit>,
    /// The journal (`--state-dir`); `None`: the state lives in memory only.
    pub journal: Option<JournalConfig>,
    /// Bytes of kept messages hub-wide (`--history-memory`); see
    /// [`Limits::history_memory`](crate::store::Limits::history_memory).
    pub history_memory: usize,
    /// How many HTTP connections at once, and how long one may idle (`--max-connections`,
    /// `--http-idle-timeout`).
    pub http_limits: HttpLimits,
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

/// Where HTTP is served: TCP (`--listen`, or a passed `http` socket), or a UNIX stream socket
/// passed as `http` (socket activation, [`crate::activation`]).
#[derive(Debug)]
pub enum HttpListener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A UNIX stream listener.
    Unix(UnixListener),
}

impl HttpListener {
    /// Takes over a passed listener (made non-blocking here).
    ///
    /// # Errors
    /// Those of `fcntl` and of registering it with the runtime.
    fn from_inherited(http: InheritedHttp) -> io::Result<Self> {
        Ok(match http {
            InheritedHttp::Tcp(listener) => {
                listener.set_nonblocking(true)?;
                Self::Tcp(TcpListener::from_std(listener)?)
            }
            InheritedHttp::Unix(listener) => {
                listener.set_nonblocking(true)?;
                Self::Unix(UnixListener::from_std(listener)?)
            }
        })
    }
}

/// Opens the journal and replays it into `hub`, on a blocking thread.
async fn open_journal(config: JournalConfig, hub: &Hub) -> anyhow::Result<Journal> {
    let hub = hub.clone();
    let (journal, _) =
        tokio::task::spawn_blocking(move || Journal::open(&config.dir, config.retention, &hub))
            .await
            .context("the journal's replay failed")??;
    Ok(journal)
}

/// A hub with its guests registered and its HTTP port bound, ready to [`run`](Self::run).
#[derive(Debug)]
pub struct Server {
    listener: HttpListener,
    /// The UNIX socket file of `--listen unix:PATH`, removed when this is dropped.
    http_socket: Option<SocketFile>,
    /// The bearer token every request must carry.
    token: Option<Arc<Token>>,
    /// The names a TCP listener without a token answers to (`--allowed-host`).
    allowed_hosts: crate::security::AllowedHosts,
    http_limits: HttpLimits,
    state: AppState,
    notify_sockets: Vec<(String, String)>,
    /// The kernel vsock listeners and their router, running from `bind` on.
    vsock: VsockTasks,
    /// The journal the hub was restored from and stores into; closed last.
    journal: Option<Journal>,
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
        Self::bind_with(config, Inherited::default(), shutdown).await
    }

    /// As [`bind`](Self::bind), with the sockets a service manager passed (socket activation,
    /// [`crate::activation`]): `inherited.http` replaces `config.listen`, its vsock listeners
    /// replace `config.vsock`'s ports, and each of `inherited.guests` is registered, before
    /// `config.guests`, with its passed notify socket.
    ///
    /// # Errors
    /// As [`bind`](Self::bind); also a passed socket that cannot be taken over.
    pub async fn bind_with(
        config: Config,
        inherited: Inherited,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let Inherited {
            http,
            vsock_stream,
            vsock_seqpacket,
            guests: inherited_guests,
        } = inherited;
        if http.is_none() {
            config.http_auth.check(&config.listen)?;
        }
        let run_dir = std::path::absolute(&config.run_dir).with_context(|| {
            format!(
                "cannot make the run directory {} absolute",
                config.run_dir.display()
            )
        })?;
        let hub = Hub::with_limits(crate::store::Limits {
            history_memory: config.history_memory,
            ..crate::store::Limits::default()
        });
        hub.set_ready_timeout(config.ready_timeout);
        hub.set_max_sse_clients(config.http_limits.max_sse_clients.get());
        let journal = match &config.journal {
            Some(journal) => Some(open_journal(journal.clone(), &hub).await?),
            None => None,
        };
        let kernel = KernelListeners::bind_or_adopt(&config.vsock, vsock_stream, vsock_seqpacket)?;
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
        registry.set_rate_limit(config.rate_limit);
        registry.set_socket_access(config.socket_access);
        let vsock = kernel.spawn(registry.clone(), shutdown.child_token());
        let state = AppState {
            hub,
            registry,
            shutdown,
        };
        match Self::start(&config, &state, http, inherited_guests).await {
            Ok((listener, http_socket, notify_sockets)) => Ok(Self {
                listener,
                http_socket,
                token: config.http_auth.token.clone(),
                allowed_hosts: config.http_auth.allowed_hosts.clone(),
                http_limits: config.http_limits,
                state,
                notify_sockets,
                vsock,
                journal,
            }),
            Err(error) => {
                vsock.stop().await;
                state.registry.close().await;
                if let Some(journal) = journal {
                    journal.close().await;
                }
                Err(error)
            }
        }
    }

    async fn start(
        config: &Config,
        state: &AppState,
        http: Option<InheritedHttp>,
        inherited_guests: Vec<(String, std::os::unix::net::UnixDatagram)>,
    ) -> anyhow::Result<(HttpListener, Option<SocketFile>, Vec<(String, String)>)> {
        let mut notify_sockets = Vec::with_capacity(
            inherited_guests.len() + config.guests.len() + config.vsock.guests.len(),
        );
        for (name, socket) in inherited_guests {
            let socket = NotifySocket::from_inherited(socket).with_context(|| {
                format!("cannot take over the passed notify socket of {name:?}")
            })?;
            let guest = state
                .registry
                .register_inherited(&name, socket)
                .await
                .with_context(|| format!("cannot register guest {name:?}"))?;
            notify_sockets.push((name, guest.summary.notify_socket.to_string()));
        }
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
        // The journal's other guests: restored with their state, their sockets bound anew.
        let named = notify_sockets.len();
        for (name, error) in state.registry.restore().await {
            warn!(guest = name, %error, "restored guest gets no socket");
        }
        for guest in state.hub.guests().guests {
            let summary = &guest.summary;
            let name = &summary.snapshot.name;
            if notify_sockets[..named]
                .iter()
                .any(|(taken, _)| taken == name)
            {
                continue;
            }
            let ports = state.registry.kernel_ports();
            let launch = launch::launch(name, &summary.notify_socket, &summary.reach, ports);
            notify_sockets.push((name.clone(), launch.notify_socket));
        }
        let cannot_listen = || format!("cannot listen on {}", config.listen);
        let (listener, http_socket) = match (http, &config.listen) {
            (Some(http), _) => {
                let listener = HttpListener::from_inherited(http)
                    .context("cannot take over the passed \"http\" listener")?;
                if let HttpListener::Tcp(tcp) = &listener {
                    config.http_auth.check(&Listen::Tcp(tcp.local_addr()?))?;
                }
                (listener, None)
            }
            (None, Listen::Tcp(addr)) => {
                let listener = TcpListener::bind(addr).await.with_context(cannot_listen)?;
                (HttpListener::Tcp(listener), None)
            }
            (None, Listen::Unix(path)) => {
                let (listener, file) =
                    notifyhub_transport_unix::stream::bind_listener(path, config.http_socket_mode)
                        .with_context(cannot_listen)?;
                (HttpListener::Unix(listener), Some(file))
            }
        };
        Ok((listener, http_socket, notify_sockets))
    }

    /// The address HTTP is served on.
    ///
    /// # Errors
    /// As [`TcpListener::local_addr`]; [`io::ErrorKind::Unsupported`] when HTTP is served on a
    /// UNIX socket (see [`http_address`](Self::http_address)).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            HttpListener::Tcp(listener) => listener.local_addr(),
            HttpListener::Unix(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "HTTP is served on a UNIX socket",
            )),
        }
    }

    /// Where HTTP is served, for people: `http://127.0.0.1:7370`, or `unix:/PATH` for a passed
    /// UNIX stream socket (`curl --unix-socket /PATH http://localhost/`).
    ///
    /// # Errors
    /// Those of `getsockname`.
    pub fn http_address(&self) -> io::Result<String> {
        Ok(match &self.listener {
            HttpListener::Tcp(listener) => format!("http://{}", listener.local_addr()?),
            HttpListener::Unix(listener) => match listener.local_addr()?.as_pathname() {
                Some(path) => format!("unix:{}", path.display()),
                None => "unix:(unnamed)".to_owned(),
            },
        })
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
    /// HTTP/1.1 by hyper, at most [`HttpLimits::connections`] connections at once, each closed
    /// when it sends no whole request head within [`HttpLimits::idle_timeout`] ([`serve_http`]).
    /// A TCP listener without a token answers only the hosts [`crate::security::check_host`]
    /// allows; on a UNIX socket `Host` means nothing (curl sends `localhost`) and any passes.
    ///
    /// # Errors
    /// None today; the signature leaves room for a listener that fails for good.
    pub async fn run(self) -> io::Result<()> {
        let Self {
            listener,
            http_socket,
            token,
            allowed_hosts,
            http_limits,
            state,
            vsock,
            journal,
            ..
        } = self;
        let shutdown = state.shutdown.clone();
        let registry = state.registry.clone();
        // Every listener and guest socket is bound by now: the service manager may hear READY=1.
        let supervisor = tokio::spawn(supervisor::report(state.hub.clone(), shutdown.clone()));
        let hosts = (token.is_none() && matches!(listener, HttpListener::Tcp(_)))
            .then(|| Arc::new(allowed_hosts));
        let app = router_with_access(state, token, hosts);
        match listener {
            HttpListener::Tcp(listener) => {
                // Without TCP_NODELAY an SSE event waits for the client's delayed ACK of the
                // one before (Nagle): up to 40 ms on Linux.
                let listener = listener.tap_io(|stream| {
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(%error, "cannot set TCP_NODELAY on a connection");
                    }
                });
                serve_http(listener, app, http_limits, shutdown).await;
            }
            HttpListener::Unix(listener) => {
                serve_http(listener, app, http_limits, shutdown).await;
            }
        }
        info!("stopped serving; removing the guests' sockets");
        drop(http_socket);
        vsock.stop().await;
        registry.close().await;
        if let Some(journal) = journal {
            journal.close().await;
        }
        // Nothing drops any more: what the drop log still holds back goes out now.
        crate::drop_log::flush();
        // It has sent STOPPING=1 once shutdown began.
        let _ = supervisor.await;
        Ok(())
    }
}

/// Serves `app` on `listener` (HTTP/1.1, hyper) until `shutdown` is cancelled, then stops
/// accepting and waits for the open connections: idle ones close at once, answers in progress
/// finish (SSE streams and long-polls end on `shutdown` themselves).
///
/// - **Connections**: at most `limits.connections()` at once. At the cap the hub stops calling
///   `accept` until one closes, so further clients wait in the kernel's listen backlog (and
///   beyond it get no answer) instead of taking descriptors the guests need. Logged when the cap
///   is first reached, then at most once per [`LOG_INTERVAL`](crate::limit::LOG_INTERVAL) with
///   the count of times since.
/// - **Idle and slow clients**: hyper's `header_read_timeout` with a tokio timer, started when
///   a connection opens and again when an answer ends: a client that sends no whole request
///   head within `limits.idle_timeout` is disconnected (a connection that only `connect()`s, a
///   kept-alive one left idle, a head sent a byte at a time). A request being answered is never
///   cut.
/// - `accept` errors (`EMFILE` and the like) are axum's [`Listener`]'s to handle: logged, and
///   retried a second later without spinning.
async fn serve_http<L>(
    mut listener: L,
    app: axum::Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) where
    L: Listener,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tokio::sync::Semaphore;

    let max = limits.connections();
    info!(
        max_connections = max,
        idle_timeout_ms = limits.idle_timeout.as_millis(),
        "serving HTTP"
    );
    let permits = Arc::new(Semaphore::new(max));
    let at_cap = crate::security::RefusalLog::new();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_buf_size(crate::limit::HTTP_MAX_BUFFER);
    loop {
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if let Some(times) = at_cap.note() {
                    warn!(
                        max_connections = max,
                        times,
                        "at --max-connections: new HTTP connections wait in the listen backlog \
                         until one closes"
                    );
                }
                tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => {
                        permit.expect("the semaphore is never closed")
                    }
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // A client that went away, sent garbage, or idled past the timeout.
                debug!(%error, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    // A client that stopped reading keeps its connection from finishing (the end of its SSE
    // stream cannot be written): past the grace period such connections are cut.
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            grace_ms = SHUTDOWN_GRACE.as_millis(),
            "HTTP connections still open after the grace period: closing them"
        );
    }
}

/// How long shutdown waits for open HTTP connections to finish their answers.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

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
