//! Hybrid vsock: guest connections arriving on a host `AF_UNIX` stream socket.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::kernel::BACKLOG;
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
    path: PathBuf,
    /// `(st_dev, st_ino)` of the socket file right after binding.
    file_id: (u64, u64),
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
    /// Steps: checks the path; if a **stale** socket file is there (connecting to it is
    /// refused: nobody listens) removes it; creates the socket (`SOCK_CLOEXEC | SOCK_NONBLOCK`),
    /// sets the socket inode's mode to `mode` before `bind()` (so the file is never more open
    /// than asked), binds, listens (backlog 128), then `chmod`s the file to exactly `mode`.
    /// The parent directory must exist.
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
        if mode & !0o777 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket mode {mode:#o} has bits outside 0o777"),
            ));
        }
        remove_stale_socket(&path)?;

        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        // Linux's unix_bind() creates the file with the socket inode's mode less the umask.
        rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(mode))?;
        rustix::net::bind(&fd, &SocketAddrUnix::new(&path)?)?;
        // The file exists from here on: removed again on an error, or a panic outside a runtime.
        let file = BoundFile(Some(&path));
        rustix::net::listen(&fd, BACKLOG)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        let meta = std::fs::symlink_metadata(&path)?;
        // Registered with Tokio only once it listens: before listen() a stream socket polls as
        // hung up (EPOLLHUP in TCP_CLOSE, `unix_poll()`), Tokio keeps a hang-up for good, and
        // accept() would then spin on EAGAIN within one poll, should the I/O driver of another
        // thread have seen the socket in between.
        let listener = UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))?;
        file.keep();
        Ok(Self {
            listener,
            path,
            file_id: (meta.dev(), meta.ino()),
            guest_cid,
        })
    }

    /// The socket file's path, `<uds_path>_<port>`.
    pub fn path(&self) -> &Path {
        &self.path
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

impl Drop for HybridListener {
    fn drop(&mut self) {
        remove_if_same(&self.path, self.file_id);
    }
}

/// A socket file just bound: removed when dropped, unless kept.
struct BoundFile<'a>(Option<&'a Path>);

impl BoundFile<'_> {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for BoundFile<'_> {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
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

/// Removes a socket file at `path` that nobody listens on; refuses anything else.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        ));
    }
    // Non-blocking: a live listener with a full backlog answers EAGAIN instead of blocking.
    let probe = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    match rustix::net::connect(&probe, &SocketAddrUnix::new(path)?) {
        Err(Errno::CONNREFUSED) => std::fs::remove_file(path),
        Ok(()) | Err(Errno::AGAIN) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is a socket somebody is listening on; refusing to replace it",
                path.display()
            ),
        )),
        // EPROTOTYPE: a datagram or seqpacket socket lives there, not ours to remove.
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "cannot tell whether socket {} is stale: {e}",
                path.display()
            ),
        )),
    }
}

fn remove_if_same(path: &Path, (dev, ino): (u64, u64)) {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
        && meta.dev() == dev
        && meta.ino() == ino
    {
        let _ = std::fs::remove_file(path);
    }
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
