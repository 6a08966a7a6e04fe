//! Guest registration: each guest's notify socket and the task that receives from it.
//!
//! [`Registry::register`] checks the name (with `notifyhub-core`'s policy), binds
//! `<guests dir>/<name>/notify`, adds the guest to the [`Hub`] and spawns a receive loop that
//! feeds the hub: transport → core → store. [`Registry::unregister`] undoes all of it.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notifyhub_core::{DropReason, GuestNameError, Timestamp, validate_guest_name};
use notifyhub_transport_unix::{MAX_SOCKET_PATH_LEN, NotifySocket, Received, is_transient};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, trace, warn};

use crate::clock;
use crate::store::{GuestDetail, Hub, IngestError};

/// How long a receive loop pauses after a transient error (`ENOBUFS`, `ENOMEM`).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

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
}

#[derive(Debug)]
struct Receiver {
    stop: CancellationToken,
    task: JoinHandle<()>,
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
        Self {
            inner: Arc::new(Inner {
                hub,
                guests_dir,
                stop: shutdown.child_token(),
                receivers: Mutex::new(HashMap::new()),
            }),
        }
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
        let path = self.socket_path(name)?;
        let mut receivers = self.inner.receivers.lock().await;
        if self.inner.stop.is_cancelled() {
            return Err(RegisterError::Closed);
        }
        if receivers.contains_key(name) {
            return Err(RegisterError::Exists(name.to_owned()));
        }
        let socket = NotifySocket::bind(path.as_ref()).map_err(|source| RegisterError::Bind {
            path: path.clone().into(),
            source,
        })?;
        let hub = &self.inner.hub;
        // Names are added and removed together with their receivers, under the lock held here.
        let detail = hub
            .register(name, &path, clock::now())
            .map_err(|_| RegisterError::Exists(name.to_owned()))?;
        let stop = self.inner.stop.child_token();
        let task = tokio::spawn(
            receive(hub.clone(), name.to_owned(), socket, stop.clone())
                .instrument(info_span!("guest", name)),
        );
        receivers.insert(name.to_owned(), Receiver { stop, task });
        info!(guest = name, notify_socket = path, "registered");
        Ok(detail)
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
        let dir = self.inner.guests_dir.join(name);
        if let Err(error) = std::fs::remove_dir(&dir)
            && error.kind() != io::ErrorKind::NotFound
        {
            warn!(dir = %dir.display(), %error, "cannot remove guest directory");
        }
    }
}

/// Receives from `socket` into the hub, and fires the guest's deadlines, until `stop` is
/// cancelled or the socket fails.
async fn receive(hub: Hub, name: String, socket: NotifySocket, stop: CancellationToken) {
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
