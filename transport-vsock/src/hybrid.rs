//! Hybrid vsock: guest connections arriving on a host `AF_UNIX` stream socket.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use notifyhub_transport_unix::stream::{SocketFile, bind_listener};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::serve::{Acceptor, Peer, serve};
use crate::{Event, ListenerConfig, Sender};

/// Longest socket path [`HybridListener::bind`] accepts, in bytes: `sun_path` is 108 bytes
/// including the terminating NUL (`unix(7)`).
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// Mode [`HybridListener::bind`] gives the socket file: owner-only (0o600). The VMM must be
/// able to connect, which needs write permission on the file (`unix(7)`): if it runs as another
/// user, use [`HybridListener::bind_with_mode`] and `chown` [`HybridListener::path`].
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// A hybrid-vsock listener: the `AF_UNIX` `SOCK_STREAM` socket `<uds_path>_<port>` on which a
/// user-space vsock device delivers each guest connection to host port `port` (CID 2).
///
/// Firecracker (`docs/vsock.md`, "guest-initiated connections"), cloud-hypervisor and
/// `vhost-device-vsock` in hybrid mode (`--vm guest-cid=C,uds-path=UDS_PATH`) work this way;
/// the VMM itself listens on `<uds_path>` for host-initiated connections, which this crate does
/// not make. Only `SOCK_STREAM` exists there, so hand the guest `vsock-stream:2:PORT`: the plain
/// `vsock:` form picks `SOCK_SEQPACKET` and delivers nothing (systemd does not fall back). These
/// bridges do not forward the guest's `SHUT_WR`, so messages end by the idle timeout
/// ([`End::Idle`](crate::End::Idle)), not EOF.
///
/// **Identity:** the socket belongs to one VM, so its guest is known from the listener, not from
/// the connection: every [`Event`] carries `Sender::Vsock { cid: guest_cid, port: None }`, the
/// CID given to [`bind`](Self::bind) and no port, because the guest's **source port is not
/// known** (the bridge does not pass it on), so whether the sender was root in the guest
/// (port < 1024) cannot be told. All its connections count as one peer for
/// [`ListenerConfig::max_connections_per_peer`].
///
/// Dropping it closes the socket and removes its file (best effort) if the file at
/// [`path`](Self::path) is still the socket this value bound (same device and inode).
#[derive(Debug)]
pub struct HybridListener {
    listener: UnixListener,
    /// Removes the socket file when dropped, if it is still this socket.
    file: SocketFile,
    guest_cid: u32,
}

impl HybridListener {
    /// Binds `<uds_path>_<port>` (e.g. `/run/vm1.vsock_9999` for `uds_path` `/run/vm1.vsock` and
    /// port 9999) for the guest with context ID `guest_cid`, with mode [`DEFAULT_SOCKET_MODE`]
    /// (0o600). See [`bind_with_mode`](Self::bind_with_mode).
    ///
    /// # Errors
    ///
    /// As [`bind_with_mode`](Self::bind_with_mode).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime with I/O enabled (as `tokio::net::UnixListener::from_std`).
    pub fn bind(uds_path: &Path, port: u32, guest_cid: u32) -> io::Result<Self> {
        Self::bind_with_mode(uds_path, port, guest_cid, DEFAULT_SOCKET_MODE)
    }

    /// Binds `<uds_path>_<port>` whose file gets permission bits `mode` (at most 0o777).
    ///
    /// Checks the path, then binds it with the UNIX transport's
    /// [`bind_listener`]: a **stale** socket file there (connecting to it is refused: nobody
    /// listens) is replaced; the socket inode gets `mode` before `bind()` (so the file is never
    /// more open than asked), and the file exactly `mode` after `listen()`. The parent
    /// directory must exist.
    ///
    /// # Errors
    ///
    /// - [`io::ErrorKind::InvalidInput`]: the path is empty, longer than
    ///   [`MAX_SOCKET_PATH_LEN`] (107) bytes, contains a NUL byte, or `mode` has bits outside
    ///   0o777.
    /// - [`io::ErrorKind::AlreadyExists`]: something other than a socket is at the path (a
    ///   regular file, a directory, a symlink); it is left untouched.
    /// - [`io::ErrorKind::AddrInUse`]: a live socket is at the path (a connect to it succeeded
    ///   or its backlog is full); it is left untouched. The probe connection is closed at once:
    ///   its owner sees an empty connection.
    /// - Any error of `unlink`, `socket`, `bind`, `listen` or `chmod`, as is (a socket of
    ///   another type at the path gives `EPROTOTYPE`, left untouched).
    ///
    /// The check of what is at the path and its removal are not atomic: do not point two hubs
    /// at one path.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime with I/O enabled (as `tokio::net::UnixListener::from_std`).
    pub fn bind_with_mode(
        uds_path: &Path,
        port: u32,
        guest_cid: u32,
        mode: u32,
    ) -> io::Result<Self> {
        let path = socket_path(uds_path, port);
        check_path(&path)?;
        let (listener, file) = bind_listener(&path, mode)?;
        Ok(Self {
            listener,
            file,
            guest_cid,
        })
    }

    /// The socket file's path, `<uds_path>_<port>`.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The guest CID given to [`bind`](Self::bind), reported in every [`Event`].
    pub fn guest_cid(&self) -> u32 {
        self.guest_cid
    }

    /// Accepts connections and sends one [`Event`] per connection; see
    /// [`VsockStreamListener::run`](crate::VsockStreamListener::run) for the contract. The
    /// socket file stays until `self` is dropped, which happens when `run` returns.
    ///
    /// # Errors
    ///
    /// As [`VsockStreamListener::run`](crate::VsockStreamListener::run).
    pub async fn run(
        self,
        config: ListenerConfig,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> io::Result<()> {
        serve(self, config, events, cancel).await
    }
}

impl Acceptor for HybridListener {
    type Conn = UnixStream;

    async fn accept(&self) -> io::Result<(UnixStream, Peer)> {
        let (stream, _) = self.listener.accept().await?;
        let peer = Peer {
            sender: Sender::Vsock {
                cid: self.guest_cid,
                port: None,
            },
            key: self.guest_cid,
        };
        Ok((stream, peer))
    }
}

/// `<uds_path>_<port>`, the naming of Firecracker and `vhost-device-vsock`.
fn socket_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut path = OsString::from(uds_path.as_os_str());
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

fn check_path(path: &Path) -> io::Result<()> {
    let bytes = path.as_os_str().as_bytes();
    let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    // `socket_path` appends "_PORT", so the empty path cannot reach here; checked anyway.
    if bytes.is_empty() {
        return invalid("hybrid vsock socket path is empty".to_owned());
    }
    if bytes.len() > MAX_SOCKET_PATH_LEN {
        return invalid(format!(
            "hybrid vsock socket path is {} bytes, the limit is {MAX_SOCKET_PATH_LEN} \
             (AF_UNIX sun_path is 108 bytes including the NUL): {}",
            bytes.len(),
            path.display()
        ));
    }
    if bytes.contains(&0) {
        return invalid("hybrid vsock socket path contains a NUL byte".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_uds_path_underscore_port() {
        assert_eq!(
            socket_path(Path::new("/run/vm1.vsock"), 9999),
            Path::new("/run/vm1.vsock_9999")
        );
    }

    #[test]
    fn path_checks() {
        let ok = format!("/{}", "a".repeat(MAX_SOCKET_PATH_LEN - 1));
        assert!(check_path(Path::new(&ok)).is_ok());
        let long = format!("/{}", "a".repeat(MAX_SOCKET_PATH_LEN));
        let err = check_path(Path::new(&long)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("107"), "{err}");
        let nul = Path::new(std::ffi::OsStr::from_bytes(b"/a\0b"));
        assert_eq!(
            check_path(nul).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
