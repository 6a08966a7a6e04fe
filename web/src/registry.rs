//! Guest registration: each guest's notify socket and the task that receives from it.
//!
//! [`Registry::register`] checks the name (with `notifyhub-core`'s policy), binds
//! `<guests dir>/<name>/notify`, adds the guest to the [`Hub`] and spawns a receive loop that
//! feeds the hub: transport → core → store. [`Registry::unregister`] undoes all of it.
//!
//! A VM guest ([`Registry::register_with`], see [`crate::vsock`]) gets the same, plus its vsock
//! identity: a CID, which the hub-wide kernel vsock listeners route by ([`crate::vsock::route`]),
//! or a hybrid socket `<uds_path>_<port>` of its own, bound here and read by its receive loop.
//! Either way the guest's receive loop stays the one task that fires its deadlines: the router
//! wakes it after feeding the guest, so it recomputes them.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use notifyhub_core::{DropReason, GuestNameError, Timestamp, validate_guest_name};
use notifyhub_transport_unix::{
    MAX_SOCKET_PATH_LEN, NotifySocket, Received, SocketAccess, is_transient,
};
use notifyhub_transport_vsock::HybridListener;
use tokio::sync::{Mutex, Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, trace, warn};

use crate::clock;
use crate::journal::Arrival;
use crate::limit::{GuestLimiter, RateLimit, nofile_limit};
use crate::store::{GuestDetail, Hub, IngestError};
use crate::vsock::{self, KernelPorts, Reach, Routed, VsockError, VsockSettings, VsockStats};

/// How long a receive loop pauses after a transient error (`ENOBUFS`, `ENOMEM`).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Datagrams a receive loop takes off its socket per wake-up at most, and hands on as one batch.
const RECV_BATCH: usize = 256;

/// Events a hybrid vsock listener may queue for its guest's receive loop before it waits
/// (each holds a connection slot, so the listener's limits bound the rest).
const HYBRID_QUEUE: usize = 16;

/// The guests' notify sockets and receive loops. Cheap to clone: all clones share one registry.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    hub: Hub,
    guests_dir: PathBuf,
    /// Cancelled by [`Registry::close`], or with the token the registry was made with.
    stop: CancellationToken,
    /// Held across a whole registration or removal, so those of one name never interleave.
    receivers: Mutex<HashMap<String, Receiver>>,
    /// The kernel vsock listeners and the policy of `notifyhub serve`.
    vsock: VsockSettings,
    /// Kernel vsock guests by CID, for [`vsock::route`]. Changed only under `receivers`' lock;
    /// a `std` lock, as the router only looks up.
    routes: std::sync::Mutex<HashMap<u32, CidRoute>>,
    /// Vsock messages that no guest could be charged with.
    stats: VsockStats,
    /// The bucket each guest registered from now on gets ([`Registry::set_rate_limit`]).
    rate_limit: std::sync::Mutex<Option<RateLimit>>,
    /// Mode and owner of the notify sockets bound from now on, unless a guest has its own
    /// ([`Registry::set_socket_access`]).
    socket_access: std::sync::Mutex<SocketAccess>,
}

#[derive(Debug)]
struct Receiver {
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// The hybrid vsock listener's task; it removes the socket file when it ends.
    listener: Option<JoinHandle<io::Result<()>>>,
    /// The kernel vsock CID it is routed by.
    cid: Option<u32>,
    /// Its hybrid vsock socket, `<uds_path>_<port>`.
    hybrid_socket: Option<String>,
}

/// Where [`vsock::route`] takes the events of one CID: the guest, and the receive loop to wake
/// once they are in the store.
#[derive(Clone, Debug)]
pub(crate) struct CidRoute {
    pub(crate) name: String,
    pub(crate) wake: Arc<Notify>,
    /// The guest's rate limit, shared with its receive loop.
    pub(crate) limiter: Option<Arc<GuestLimiter>>,
}

/// Why a guest could not be registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The name breaks [`validate_guest_name`]'s rules.
    #[error(transparent)]
    InvalidName(#[from] GuestNameError),
    /// The socket path would be longer than `$NOTIFY_SOCKET` allows.
    #[error(
        "notify socket path {} is {len} bytes long, the limit is {MAX_SOCKET_PATH_LEN} \
         (AF_UNIX sun_path); use a shorter guest name or run directory",
        path.display()
    )]
    PathTooLong {
        /// The path the guest would get.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The socket path is not UTF-8 (the run directory's fault): guests get it as text.
    #[error("notify socket path {} is not valid UTF-8", path.display())]
    NotUtf8 {
        /// The path the guest would get.
        path: PathBuf,
    },
    /// A guest of that name is registered already.
    #[error("guest {0:?} is already registered")]
    Exists(String),
    /// The vsock identity is invalid, or cannot work with this hub.
    #[error(transparent)]
    InvalidVsock(#[from] VsockError),
    /// Another guest has that CID.
    #[error("CID {cid} is guest {guest:?}'s already")]
    CidTaken {
        /// The CID.
        cid: u32,
        /// The guest that has it.
        guest: String,
    },
    /// Another guest has that hybrid vsock socket.
    #[error("hybrid vsock socket {socket} is guest {guest:?}'s already")]
    SocketTaken {
        /// `<uds_path>_<port>`.
        socket: String,
        /// The guest that has it.
        guest: String,
    },
    /// The hub has as many files open as `RLIMIT_NOFILE` allows, so the guest's socket cannot
    /// be made: raise the limit (`LimitNOFILE=`) or remove guests.
    #[error(
        "cannot make notify socket {}: the hub has all the files open that its limit allows \
         (RLIMIT_NOFILE {}); raise it (LimitNOFILE=) or remove guests",
        path.display(),
        limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
    )]
    OutOfFiles {
        /// The socket path.
        path: PathBuf,
        /// The soft `RLIMIT_NOFILE` (`None`: unlimited, the system-wide table is full).
        limit: Option<u64>,
    },
    /// Registration through the API or by auto-registration stops at `--max-guests` guests.
    #[error(
        "the hub holds {0} guests, its --max-guests: remove guests, or restart it with a higher \
         --max-guests"
    )]
    TooManyGuests(usize),
    /// The hybrid vsock socket cannot be bound where the request asked for it: its directory
    /// does not exist or is not a directory (the client's mistake, not the hub's).
    #[error("cannot bind hybrid vsock socket {}: {source}; its directory must exist", path.display())]
    HybridPath {
        /// The socket path, `<uds_path>_<port>`.
        path: PathBuf,
        /// What `bind` said (`NotFound`, `NotADirectory`).
        source: io::Error,
    },
    /// The socket could not be bound; `source` says why (`AddrInUse`: another process serves
    /// that path; `AlreadyExists`: a file that is not a socket is in the way).
    #[error("cannot bind notify socket {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What `bind` said.
        source: io::Error,
    },
    /// The registry was closed: the hub is shutting down.
    #[error("the hub is shutting down")]
    Closed,
    /// The journal could not store the registration.
    #[error("cannot store the registration: {0}")]
    NotStored(#[from] crate::journal::NotStored),
}

/// No guest of that name is registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no guest named {0:?}")]
pub struct NotRegistered(pub String);

impl Registry {
    /// A registry that puts each guest's socket at `<guests_dir>/<name>/notify` (`guests_dir`
    /// should be absolute: the path is what guests get as `$NOTIFY_SOCKET`), feeds `hub`, and
    /// stops every receive loop when `shutdown` is cancelled.
    pub fn new(hub: Hub, guests_dir: PathBuf, shutdown: &CancellationToken) -> Self {
        Self::with_vsock(hub, guests_dir, shutdown, VsockSettings::default())
    }

    /// As [`new`](Self::new), for a hub whose kernel vsock listeners and policy are `vsock`.
    pub fn with_vsock(
        hub: Hub,
        guests_dir: PathBuf,
        shutdown: &CancellationToken,
        vsock: VsockSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                hub,
                guests_dir,
                stop: shutdown.child_token(),
                receivers: Mutex::new(HashMap::new()),
                vsock,
                routes: std::sync::Mutex::new(HashMap::new()),
                stats: VsockStats::default(),
                rate_limit: std::sync::Mutex::new(Some(RateLimit::default())),
                socket_access: std::sync::Mutex::new(SocketAccess::default()),
            }),
        }
    }

    /// The store this registry feeds.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The kernel vsock listeners and the vsock policy.
    pub fn vsock_settings(&self) -> VsockSettings {
        self.inner.vsock
    }

    /// The kernel vsock listeners' ports.
    pub fn kernel_ports(&self) -> KernelPorts {
        self.inner.vsock.ports
    }

    /// Vsock messages dropped hub-wide.
    pub fn vsock_stats(&self) -> &VsockStats {
        &self.inner.stats
    }

    /// Sets the rate limit of every guest registered from now on (`--rate-limit`,
    /// `--rate-burst`); `None` is no limit. The default is [`RateLimit::default`].
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        *self
            .inner
            .rate_limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = limit;
    }

    /// The rate limit given to newly registered guests.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        *self
            .inner
            .rate_limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the mode and owner of every notify socket bound from now on, unless its guest has
    /// its own (`--socket-mode`, `--socket-owner`); the default is [`SocketAccess::default`]
    /// (0600, the hub's user).
    pub fn set_socket_access(&self, access: SocketAccess) {
        *self
            .inner
            .socket_access
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = access;
    }

    /// The mode and owner given to notify sockets of guests without their own.
    pub fn socket_access(&self) -> SocketAccess {
        *self
            .inner
            .socket_access
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn routes(&self) -> MutexGuard<'_, HashMap<u32, CidRoute>> {
        // Every critical section is a single map operation: a poisoned map is still consistent.
        self.inner
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The guest with kernel vsock CID `cid`, if any.
    pub(crate) fn cid_route(&self, cid: u32) -> Option<CidRoute> {
        self.routes().get(&cid).cloned()
    }

    /// The notify socket path of guest `name`, after checking the name and the path.
    ///
    /// # Errors
    /// [`RegisterError::InvalidName`], [`RegisterError::PathTooLong`] or
    /// [`RegisterError::NotUtf8`].
    pub fn socket_path(&self, name: &str) -> Result<String, RegisterError> {
        validate_guest_name(name)?;
        let path = self.inner.guests_dir.join(name).join("notify");
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH_LEN {
            return Err(RegisterError::PathTooLong { path, len });
        }
        path.into_os_string()
            .into_string()
            .map_err(|path| RegisterError::NotUtf8 { path: path.into() })
    }

    /// Registers guest `name`: binds its notify socket, adds it to the hub, and starts
    /// receiving.
    ///
    /// # Errors
    /// See [`RegisterError`]; nothing is left behind on error.
    pub async fn register(&self, name: &str) -> Result<GuestDetail, RegisterError> {
        self.register_with(name, Reach::Unix).await
    }

    /// Registers guest `name` reached as `reach`: as [`register`](Self::register), and for
    /// [`Reach::Cid`] routes the CID's kernel vsock messages to it (the CID must be unique and
    /// the hub must have a kernel vsock listener), for [`Reach::Hybrid`] binds its hybrid
    /// socket (removed with the guest).
    ///
    /// # Errors
    /// See [`RegisterError`]; nothing is left behind on error.
    pub async fn register_with(
        &self,
        name: &str,
        reach: Reach,
    ) -> Result<GuestDetail, RegisterError> {
        let (detail, _) = self.register_within(name, reach, None, None, None).await?;
        Ok(detail)
    }

    /// As [`register_with`](Self::register_with), with the notify socket's mode and owner
    /// `access` instead of the registry's ([`socket_access`](Self::socket_access)).
    ///
    /// # Errors
    /// See [`RegisterError`] (`Bind` with `EPERM` when the hub may not give the file away);
    /// nothing is left behind on error.
    pub async fn register_with_access(
        &self,
        name: &str,
        reach: Reach,
        access: SocketAccess,
    ) -> Result<GuestDetail, RegisterError> {
        let (detail, _) = self
            .register_within(name, reach, None, None, Some(access))
            .await?;
        Ok(detail)
    }

    /// Registers guest `name` with a notify socket its service manager bound (socket
    /// activation, [`crate::activation`]) instead of binding `<guests dir>/<name>/notify`: the
    /// guest's `notify_socket` is that socket's path. Its file stays when the guest is removed.
    ///
    /// # Errors
    /// As [`register`](Self::register) (less binding); [`RegisterError::NotUtf8`] for a path
    /// that is not UTF-8.
    pub async fn register_inherited(
        &self,
        name: &str,
        socket: NotifySocket,
    ) -> Result<GuestDetail, RegisterError> {
        let (detail, _) = self
            .register_within(name, Reach::Unix, None, Some(socket), None)
            .await?;
        Ok(detail)
    }

    /// Binds the sockets of the guests the hub holds without them (those its journal restored at
    /// start), each reached as it was registered, and starts receiving. Returns the guests that
    /// failed, with why: they stay in the hub, without a socket.
    pub async fn restore(&self) -> Vec<(String, RegisterError)> {
        let mut failed = Vec::new();
        for guest in self.inner.hub.guests().guests {
            let name = guest.summary.snapshot.name.clone();
            if self.inner.receivers.lock().await.contains_key(&name) {
                continue;
            }
            let reach = Reach::clone(&guest.summary.reach);
            // With the socket mode and owner it was registered with, if it had its own.
            let access = self.inner.hub.socket_access(&name);
            let registered = self.register_within(&name, reach, None, None, access).await;
            if let Err(error) = registered {
                failed.push((name, error));
            }
        }
        failed
    }

    /// Registers guest `name` for `POST /api/v1/guests`: as
    /// [`register_with`](Self::register_with), with `access` as in
    /// [`register_with_access`](Self::register_with_access) when `Some`, refused with
    /// [`RegisterError::TooManyGuests`] when the hub holds `--max-guests` guests already.
    ///
    /// # Errors
    /// See [`RegisterError`]; nothing is left behind on error.
    pub async fn register_requested(
        &self,
        name: &str,
        reach: Reach,
        access: Option<SocketAccess>,
    ) -> Result<GuestDetail, RegisterError> {
        let limit = self.inner.vsock.max_guests;
        let (detail, _) = self
            .register_within(name, reach, Some(limit), None, access)
            .await?;
        Ok(detail)
    }

    /// Registers guest `cid-<cid>` for a kernel vsock message from an unknown CID
    /// (`--auto-register`), unless the hub holds `--max-guests` guests already.
    pub(crate) async fn register_auto(&self, cid: u32) -> Result<CidRoute, RegisterError> {
        let name = format!("cid-{cid}");
        let limit = self.inner.vsock.max_guests;
        let (_, route) = self
            .register_within(&name, Reach::cid(cid)?, Some(limit), None, None)
            .await?;
        info!(
            guest = name,
            cid, "auto-registered for a message from an unknown CID"
        );
        Ok(route)
    }

    /// Registers, refusing with [`RegisterError::TooManyGuests`] when `limit` guests are
    /// registered already; with the `inherited` notify socket instead of binding one; binding
    /// one with `access`, else the registry's [`socket_access`](Self::socket_access).
    async fn register_within(
        &self,
        name: &str,
        reach: Reach,
        limit: Option<usize>,
        inherited: Option<NotifySocket>,
        access: Option<SocketAccess>,
    ) -> Result<(GuestDetail, CidRoute), RegisterError> {
        let path = match &inherited {
            Some(socket) => {
                validate_guest_name(name)?;
                let path = socket.path();
                path.to_str()
                    .ok_or_else(|| RegisterError::NotUtf8 { path: path.into() })?
                    .to_owned()
            }
            None => self.socket_path(name)?,
        };
        let settings = self.inner.vsock;
        if let Reach::Cid(cid) = reach {
            Reach::cid(cid)?;
            if !settings.ports.any() {
                return Err(VsockError::NoKernelListener(cid).into());
            }
        }
        let mut receivers = self.inner.receivers.lock().await;
        if self.inner.stop.is_cancelled() {
            return Err(RegisterError::Closed);
        }
        if receivers.contains_key(name) {
            return Err(RegisterError::Exists(name.to_owned()));
        }
        if let Some(limit) = limit
            && receivers.len() >= limit
        {
            return Err(RegisterError::TooManyGuests(limit));
        }
        let cid = reach.kernel_cid();
        if let Some(cid) = cid
            && let Some(taken) = self.routes().get(&cid)
        {
            return Err(RegisterError::CidTaken {
                cid,
                guest: taken.name.clone(),
            });
        }
        // Checked here, not left to the bind: its probe of a live socket would reach that guest
        // as an empty message.
        if let Some(hybrid) = reach.hybrid()
            && let Some((guest, _)) = receivers
                .iter()
                .find(|(_, receiver)| receiver.hybrid_socket.as_deref() == Some(hybrid.socket()))
        {
            return Err(RegisterError::SocketTaken {
                socket: hybrid.socket().to_owned(),
                guest: guest.clone(),
            });
        }
        // Binding makes the guest's directory: a failure from here on removes it again.
        let made_dir = RemoveOnFailure(Some(self.inner.guests_dir.join(name)));
        // The hybrid socket first: should the notify socket fail, dropping it removes its file.
        let hybrid = reach
            .hybrid()
            .map(|hybrid| {
                HybridListener::bind(Path::new(hybrid.uds_path()), hybrid.port(), hybrid.cid())
                    .map_err(|source| match source.kind() {
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
                            RegisterError::HybridPath {
                                path: hybrid.socket().into(),
                                source,
                            }
                        }
                        _ => bind_error(hybrid.socket().into(), source),
                    })
            })
            .transpose()?;
        let socket = match inherited {
            Some(socket) => socket,
            None => NotifySocket::bind_with_access(
                path.as_ref(),
                access.unwrap_or_else(|| self.socket_access()),
            )
            .map_err(|source| bind_error(path.clone().into(), source))?,
        };
        let hub = &self.inner.hub;
        // Names are added and removed together with their receivers, under the lock held here.
        let detail = match hub.guest(name) {
            // Restored from the journal (`restore`): it keeps its state and history, and gets
            // its socket bound anew, at this run's path.
            Some(_) => {
                hub.set_notify_socket(name, &path);
                hub.guest(name)
                    .ok_or_else(|| RegisterError::Exists(name.to_owned()))?
            }
            None => hub
                .accept_registration_with_access(name, &path, reach.clone(), access, clock::now())
                .await?
                .map_err(|_| RegisterError::Exists(name.to_owned()))?,
        };
        let stop = self.inner.stop.child_token();
        let span = info_span!("receive", guest = name);
        let (hybrid_events, listener) = match hybrid {
            Some(listener) => {
                let (events, queue) = mpsc::channel(HYBRID_QUEUE);
                let run = listener.run(settings.listener, events, stop.clone());
                (
                    Some(queue),
                    Some(tokio::spawn(run.instrument(span.clone()))),
                )
            }
            None => (None, None),
        };
        let wake = Arc::new(Notify::new());
        let limiter = self
            .rate_limit()
            .map(|limit| Arc::new(GuestLimiter::new(limit)));
        let inputs = VsockInputs {
            wake: Arc::clone(&wake),
            hybrid: hybrid_events,
            ignore_unprivileged: settings.ignore_unprivileged,
        };
        let task = tokio::spawn(
            receive(
                hub.clone(),
                name.to_owned(),
                socket,
                inputs,
                limiter.clone(),
                stop.clone(),
            )
            .instrument(span),
        );
        let route = CidRoute {
            name: name.to_owned(),
            wake,
            limiter,
        };
        if let Some(cid) = cid {
            self.routes().insert(cid, route.clone());
        }
        receivers.insert(
            name.to_owned(),
            Receiver {
                stop,
                task,
                listener,
                cid,
                hybrid_socket: reach.hybrid().map(|hybrid| hybrid.socket().to_owned()),
            },
        );
        match &reach {
            Reach::Unix => info!(guest = name, notify_socket = path, "registered"),
            Reach::Cid(cid) => info!(guest = name, notify_socket = path, cid, "registered"),
            Reach::Hybrid(hybrid) => info!(
                guest = name,
                notify_socket = path,
                hybrid_socket = hybrid.socket(),
                "registered"
            ),
        }
        made_dir.keep();
        Ok((detail, route))
    }

    /// Removes guest `name`: stops its receive loop, removes its socket and directory, and
    /// removes it from the hub (which ends its waits).
    ///
    /// # Errors
    /// [`NotRegistered`].
    pub async fn unregister(&self, name: &str) -> Result<(), NotRegistered> {
        let mut receivers = self.inner.receivers.lock().await;
        let receiver = receivers
            .remove(name)
            .ok_or_else(|| NotRegistered(name.to_owned()))?;
        if let Some(cid) = receiver.cid {
            self.routes().remove(&cid);
        }
        self.stop(name, receiver).await;
        self.inner.hub.accept_removal(name).await;
        info!(guest = name, "removed");
        Ok(())
    }

    /// Stops every receive loop and removes every socket and guest directory (and the guests
    /// directory, if that leaves it empty). Guests stay in the hub. Registering fails from now
    /// on.
    pub async fn close(&self) {
        self.inner.stop.cancel();
        let receivers = std::mem::take(&mut *self.inner.receivers.lock().await);
        self.routes().clear();
        // All at once: with 10 000 guests, one after the other takes seconds.
        futures_util::future::join_all(
            receivers
                .into_iter()
                .map(|(name, receiver)| async move { self.stop(&name, receiver).await }),
        )
        .await;
        // Fails, as it should, while anything else is in there.
        let _ = std::fs::remove_dir(&self.inner.guests_dir);
    }

    async fn stop(&self, name: &str, receiver: Receiver) {
        receiver.stop.cancel();
        // The loop drops its socket on the way out, which removes the socket file.
        if let Err(error) = receiver.task.await {
            error!(guest = name, %error, "receive loop failed");
        }
        // So does the hybrid listener.
        if let Some(listener) = receiver.listener {
            match listener.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => warn!(guest = name, %error, "hybrid vsock listener had failed"),
                Err(error) => error!(guest = name, %error, "hybrid vsock listener failed"),
            }
        }
        let dir = self.inner.guests_dir.join(name);
        if let Err(error) = std::fs::remove_dir(&dir)
            && error.kind() != io::ErrorKind::NotFound
        {
            warn!(dir = %dir.display(), %error, "cannot remove guest directory");
        }
    }
}

/// A guest's directory that a failed registration removes again (if it is empty: a directory
/// with anything in it is not the failed registration's), so that it leaves nothing behind.
/// Removed when dropped on a failure path; [`keep`](Self::keep) on success.
struct RemoveOnFailure(Option<PathBuf>);

impl RemoveOnFailure {
    /// The registration succeeded: the directory stays.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnFailure {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else { return };
        match std::fs::remove_dir(&dir) {
            Ok(()) => debug!(dir = %dir.display(), "failed registration's directory removed"),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                ) => {}
            Err(error) => warn!(dir = %dir.display(), %error, "cannot remove guest directory"),
        }
    }
}

/// [`RegisterError::OutOfFiles`] when `bind` ran out of descriptors (`EMFILE`, `ENFILE`),
/// else [`RegisterError::Bind`].
fn bind_error(path: PathBuf, source: io::Error) -> RegisterError {
    match source.raw_os_error() {
        Some(code)
            if code == rustix::io::Errno::MFILE.raw_os_error()
                || code == rustix::io::Errno::NFILE.raw_os_error() =>
        {
            RegisterError::OutOfFiles {
                path,
                limit: nofile_limit(),
            }
        }
        _ => RegisterError::Bind { path, source },
    }
}

/// A guest's vsock inputs, for its receive loop.
struct VsockInputs {
    /// Notified once [`vsock::route`] has fed the guest: its deadlines may have changed.
    wake: Arc<Notify>,
    /// The events of its hybrid vsock socket, if it has one.
    hybrid: Option<mpsc::Receiver<vsock::Event>>,
    /// `--ignore-unprivileged`.
    ignore_unprivileged: bool,
}

/// Receives from `socket` (and the guest's hybrid vsock socket) into the hub, each message
/// within the guest's rate limit (`limiter`), and fires the guest's deadlines, until `stop` is
/// cancelled or the socket fails.
async fn receive(
    hub: Hub,
    name: String,
    socket: NotifySocket,
    mut vsock: VsockInputs,
    limiter: Option<Arc<GuestLimiter>>,
    stop: CancellationToken,
) {
    let limiter = limiter.as_deref();
    let mut deadline = None;
    // Grows with the first batch and keeps its room: a guest that never sent holds none.
    let mut received = Vec::new();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = sleep_until(deadline) => {
                if hub.accept_timeout(&name, clock::now()).await.is_err() {
                    return;
                }
            }
            taken = socket.recv_batch(&mut received, RECV_BATCH) => match taken {
                Ok(()) => {
                    if let Next::Stop = take(&hub, &name, &mut received, limiter, &vsock.wake).await {
                        return;
                    }
                }
                Err(error) if is_transient(&error) => {
                    warn!(%error, "receive failed, retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(RETRY_PAUSE) => {}
                    }
                }
                Err(error) => {
                    error!(%error, "receive failed; no more messages from this guest");
                    return;
                }
            },
            event = next_event(&mut vsock.hybrid) => match event {
                Some(event) => {
                    let routed = if limiter.is_none_or(|limiter| limiter.admit(&name)) {
                        vsock::deliver(&hub, &name, event, vsock.ignore_unprivileged).await
                    } else {
                        // Its connection is closed already: nothing to release.
                        drop(event);
                        vsock::rate_limited(&hub, &name, &vsock.wake).await
                    };
                    // `Gone` also stands for a message the journal could not store; the
                    // guest is still there then.
                    if let Routed::Gone { .. } = routed
                        && hub.watch(&name).is_none()
                    {
                        warn!("guest vanished under its receive loop");
                        return;
                    }
                }
                None => {
                    error!("hybrid vsock listener stopped; no more vsock messages from this guest");
                    vsock.hybrid = None;
                }
            },
            () = vsock.wake.notified() => {}
        }
        // After every input, as core's drive loop asks.
        deadline = match hub.poll_timeout(&name) {
            Ok(deadline) => deadline,
            Err(_) => return,
        };
    }
}

/// What the receive loop does after a batch.
enum Next {
    Receive,
    Stop,
}

/// Hands a batch of [`NotifySocket::recv_batch`] results to the hub (and its journal) as one,
/// emptying `received`, without waiting for the journal's commit: the journal closes each
/// datagram's fds once that datagram, and every one before it, is stored and published (which
/// releases a `BARRIER=1` sender, `systemd-notify` waits for it), then notifies `wake`.
///
/// Every datagram, whole or dropped by the transport, takes a token from `limiter` first;
/// without one it is dropped (its fds closed at once) and counted as rate-limited, a run of
/// them as one input.
async fn take(
    hub: &Hub,
    name: &str,
    received: &mut Vec<Received>,
    limiter: Option<&GuestLimiter>,
    wake: &Arc<Notify>,
) -> Next {
    let now = clock::now();
    let mut batch = Vec::with_capacity(received.len());
    let dropped = |batch: &mut Vec<Arrival>, why: DropReason| match batch.last_mut() {
        Some(Arrival::Dropped { reason, count, .. }) if *reason == why => *count += 1,
        _ => batch.push(Arrival::Dropped {
            at: now,
            reason: why,
            count: 1,
        }),
    };
    for item in received.drain(..) {
        if limiter.is_some_and(|limiter| !limiter.admit(name)) {
            // Closes its fds at once.
            drop(item);
            dropped(&mut batch, DropReason::RateLimited);
            continue;
        }
        match item {
            Received::Datagram(datagram) => batch.push(Arrival::Datagram {
                at: now,
                sender: datagram.sender(),
                bytes: datagram.payload,
                fds: datagram.fds.len(),
                // Only the first fd is held until the datagram is applied (a `BARRIER=1`
                // sender waits for it); the others close here.
                held: datagram.fds.into_iter().next(),
            }),
            Received::Dropped { reason, len, .. } => {
                debug!(?reason, len, "datagram dropped by the transport");
                dropped(&mut batch, DropReason::from(reason));
            }
        }
    }
    trace!(inputs = batch.len(), "batch");
    match hub.accept_batch(name, batch, wake).await {
        Ok(()) => Next::Receive,
        Err(IngestError::NotStored(error)) => {
            warn!(%error, "datagrams refused");
            Next::Receive
        }
        Err(error) => {
            warn!(%error, "guest vanished under its receive loop");
            Next::Stop
        }
    }
}

/// The next event of a hybrid vsock listener; never, without one. `None` once it stopped.
async fn next_event(events: &mut Option<mpsc::Receiver<vsock::Event>>) -> Option<vsock::Event> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline` on the hub's clock, or forever without one.
async fn sleep_until(deadline: Option<Timestamp>) {
    match deadline {
        Some(deadline) => {
            let wait = deadline.micros_since(clock::now());
            tokio::time::sleep(Duration::from_micros(wait)).await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_are_checked() {
        let hub = Hub::new();
        let registry = Registry::new(
            hub,
            "/run/notifyhub/guests".into(),
            &CancellationToken::new(),
        );
        assert_eq!(
            registry.socket_path("web1").unwrap(),
            "/run/notifyhub/guests/web1/notify"
        );
        for bad in ["", "../x", "a/b", ".hidden", &"a".repeat(200)] {
            assert!(
                matches!(
                    registry.socket_path(bad),
                    Err(RegisterError::InvalidName(_))
                ),
                "{bad:?}"
            );
        }
        // 23 bytes of directory, "/", the name, "/notify": 64 bytes of name make 95 bytes.
        assert!(registry.socket_path(&"a".repeat(64)).is_ok());

        let deep = Registry::new(
            Hub::new(),
            format!("/{}", "d".repeat(60)).into(),
            &CancellationToken::new(),
        );
        let err = deep.socket_path(&"a".repeat(40)).unwrap_err();
        assert!(
            matches!(err, RegisterError::PathTooLong { len: 109, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("the limit is 107"), "{err}");
    }
}
