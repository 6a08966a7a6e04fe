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
use notifyhub_transport_unix::{MAX_SOCKET_PATH_LEN, NotifySocket, Received, is_transient};
use notifyhub_transport_vsock::HybridListener;
use tokio::sync::{Mutex, Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, trace, warn};

use crate::clock;
use crate::store::{GuestDetail, Hub, IngestError};
use crate::vsock::{self, KernelPorts, Reach, Routed, VsockError, VsockSettings, VsockStats};

/// How long a receive loop pauses after a transient error (`ENOBUFS`, `ENOMEM`).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

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
    /// Auto-registration stops at `--max-guests` guests.
    #[error("the hub holds {0} guests, its --max-guests")]
    TooManyGuests(usize),
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
        let (detail, _) = self.register_within(name, reach, None).await?;
        Ok(detail)
    }

    /// Registers guest `cid-<cid>` for a kernel vsock message from an unknown CID
    /// (`--auto-register`), unless the hub holds `--max-guests` guests already.
    pub(crate) async fn register_auto(&self, cid: u32) -> Result<CidRoute, RegisterError> {
        let name = format!("cid-{cid}");
        let limit = self.inner.vsock.max_guests;
        let (_, wake) = self
            .register_within(&name, Reach::cid(cid)?, Some(limit))
            .await?;
        info!(
            guest = name,
            cid, "auto-registered for a message from an unknown CID"
        );
        Ok(CidRoute { name, wake })
    }

    /// Registers, refusing with [`RegisterError::TooManyGuests`] when `limit` guests are
    /// registered already.
    async fn register_within(
        &self,
        name: &str,
        reach: Reach,
        limit: Option<usize>,
    ) -> Result<(GuestDetail, Arc<Notify>), RegisterError> {
        let path = self.socket_path(name)?;
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
        // The hybrid socket first: should the notify socket fail, dropping it removes its file.
        let hybrid = reach
            .hybrid()
            .map(|hybrid| {
                HybridListener::bind(Path::new(hybrid.uds_path()), hybrid.port(), hybrid.cid())
                    .map_err(|source| RegisterError::Bind {
                        path: hybrid.socket().into(),
                        source,
                    })
            })
            .transpose()?;
        let socket = NotifySocket::bind(path.as_ref()).map_err(|source| RegisterError::Bind {
            path: path.clone().into(),
            source,
        })?;
        let hub = &self.inner.hub;
        // Names are added and removed together with their receivers, under the lock held here.
        let detail = hub
            .register_with(name, &path, reach.clone(), clock::now())
            .map_err(|_| RegisterError::Exists(name.to_owned()))?;
        let stop = self.inner.stop.child_token();
        let span = info_span!("guest", name);
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
        let inputs = VsockInputs {
            wake: Arc::clone(&wake),
            hybrid: hybrid_events,
            ignore_unprivileged: settings.ignore_unprivileged,
        };
        let task = tokio::spawn(
            receive(hub.clone(), name.to_owned(), socket, inputs, stop.clone()).instrument(span),
        );
        if let Some(cid) = cid {
            let route = CidRoute {
                name: name.to_owned(),
                wake: Arc::clone(&wake),
            };
            self.routes().insert(cid, route);
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
        Ok((detail, wake))
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
        self.inner.hub.remove(name);
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
        for (name, receiver) in receivers {
            self.stop(&name, receiver).await;
        }
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

/// A guest's vsock inputs, for its receive loop.
struct VsockInputs {
    /// Notified once [`vsock::route`] has fed the guest: its deadlines may have changed.
    wake: Arc<Notify>,
    /// The events of its hybrid vsock socket, if it has one.
    hybrid: Option<mpsc::Receiver<vsock::Event>>,
    /// `--ignore-unprivileged`.
    ignore_unprivileged: bool,
}

/// Receives from `socket` (and the guest's hybrid vsock socket) into the hub, and fires the
/// guest's deadlines, until `stop` is cancelled or the socket fails.
async fn receive(
    hub: Hub,
    name: String,
    socket: NotifySocket,
    mut vsock: VsockInputs,
    stop: CancellationToken,
) {
    let mut deadline = None;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = sleep_until(deadline) => {
                if hub.handle_timeout(&name, clock::now()).is_err() {
                    return;
                }
            }
            received = socket.recv() => match take(&hub, &name, received) {
                Next::Receive => {}
                Next::Pause => tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                },
                Next::Stop => return,
            },
            event = next_event(&mut vsock.hybrid) => match event {
                Some(event) => {
                    let routed = vsock::deliver(&hub, &name, event, vsock.ignore_unprivileged);
                    if let Routed::Gone { .. } = routed {
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

/// What the receive loop does after an input.
enum Next {
    Receive,
    /// Receive again after [`RETRY_PAUSE`].
    Pause,
    Stop,
}

/// Hands one [`NotifySocket::recv`] result to the hub.
fn take(hub: &Hub, name: &str, received: io::Result<Received>) -> Next {
    match received {
        Ok(Received::Datagram(datagram)) => {
            let ingested = hub.ingest(
                name,
                clock::now(),
                datagram.sender(),
                &datagram.payload,
                datagram.fds.len(),
            );
            // Closes the fds only now that the datagram, and every one before it, is in the
            // store: this releases a `BARRIER=1` sender (`systemd-notify` waits for it).
            drop(datagram);
            match ingested {
                Ok(seq) => trace!(seq, "message"),
                Err(IngestError::Rejected(error)) => debug!(%error, "datagram rejected"),
                Err(error) => {
                    warn!(%error, "guest vanished under its receive loop");
                    return Next::Stop;
                }
            }
        }
        Ok(Received::Dropped { reason, len, .. }) => {
            debug!(?reason, len, "datagram dropped by the transport");
            if hub.record_drop(name, DropReason::from(reason)).is_err() {
                return Next::Stop;
            }
        }
        Err(error) if is_transient(&error) => {
            warn!(%error, "receive failed, retrying");
            return Next::Pause;
        }
        Err(error) => {
            error!(%error, "receive failed; no more messages from this guest");
            return Next::Stop;
        }
    }
    Next::Receive
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
