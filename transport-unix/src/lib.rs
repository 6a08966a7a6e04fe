//! The `AF_UNIX` side of notifyhub: one `SOCK_DGRAM` notify socket per guest (the path handed
//! out as `$NOTIFY_SOCKET`).
//!
//! This crate turns OS input into `(sender credentials, bytes, fds)` and nothing more: it never
//! writes back to a sender, does no protocol logic (no parsing, see `notifyhub-core`) and reads no
//! clock (the caller stamps each [`Datagram`] with its own time). Receive rules follow systemd's
//! own receiver, `notify_recv_with_fds()` in `src/shared/notify-recv.c`: a buffer of
//! `NOTIFY_BUFFER_MAX` = 4096 bytes ([`MAX_DATAGRAM_LEN`]), a longer datagram is dropped whole,
//! and a datagram whose ancillary data did not fit is dropped with its fds closed.
//!
//! [`send`] is the other side, for tools and tests: it sends like `sd_pid_notify_with_fds()`.

pub mod send;

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use notifyhub_core::{Credentials, DropReason, MAX_DATAGRAM_LEN, Sender};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SocketAddrUnix, SocketFlags, SocketType, UCred,
};
use tokio::io::Interest;

/// Longest socket path [`NotifySocket::bind`] accepts, in bytes: `sun_path` is 108 bytes
/// including the terminating NUL (`unix(7)`). systemd's `sockaddr_un_set_path()`
/// (`src/basic/socket-util.c`) fails longer `$NOTIFY_SOCKET` values with `ENAMETOOLONG` and has
/// no fallback, so a path the sender cannot reach is refused here, before binding.
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// Mode [`NotifySocket::bind`] gives the socket file: owner-only (0o600). Connecting to an
/// `AF_UNIX` socket needs write permission on its file (`unix(7)`), so only the hub's own user
/// (root for a root hub) can send. Use [`NotifySocket::bind_with_mode`] to let a group in.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Most fds one datagram can carry: the kernel's `SCM_MAX_FD` (253, `include/net/scm.h`);
/// `sendmsg()` fails with `EINVAL` for more, so the receive buffer is sized for exactly this many.
pub const MAX_FDS_PER_DATAGRAM: usize = 253;

/// Control buffer size: one `SCM_CREDENTIALS` plus one `SCM_RIGHTS` of [`MAX_FDS_PER_DATAGRAM`].
const CMSG_SPACE: usize = rustix::cmsg_space!(ScmCredentials(1), ScmRights(MAX_FDS_PER_DATAGRAM));

/// A bound `AF_UNIX` `SOCK_DGRAM` notify socket with `SO_PASSCRED` set.
///
/// Dropping it closes the socket and removes its file (best effort) if the file at
/// [`path`](Self::path) is still the socket this value bound (same device and inode); a file
/// somebody else put there since is left alone.
#[derive(Debug)]
pub struct NotifySocket {
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
    /// `(st_dev, st_ino)` of the socket file right after binding.
    file_id: (u64, u64),
}

impl NotifySocket {
    /// Binds a notify socket at `path` with mode [`DEFAULT_SOCKET_MODE`] (0o600, owner only).
    ///
    /// See [`bind_with_mode`](Self::bind_with_mode) for the steps and errors.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime with I/O enabled (as `tokio::net::UnixDatagram::from_std`).
    pub fn bind(path: &Path) -> io::Result<Self> {
        Self::bind_with_mode(path, DEFAULT_SOCKET_MODE)
    }

    /// Binds a notify socket at `path` whose file gets permission bits `mode` (at most 0o777).
    ///
    /// Steps: checks the path; creates missing parent directories with mode 0o755 (less the
    /// umask); if a **stale** socket file is at `path` (connecting to it is refused: nobody
    /// listens) removes it; creates the socket (`SOCK_CLOEXEC | SOCK_NONBLOCK`), sets
    /// `SO_PASSCRED` *before* binding so every datagram carries `SCM_CREDENTIALS`, sets the
    /// socket inode's mode to `mode` before `bind()` (Linux creates the file with that mode less
    /// the umask, so the file is never more open than asked), binds, then `chmod`s the file to
    /// exactly `mode`.
    ///
    /// # Errors
    ///
    /// - [`io::ErrorKind::InvalidInput`]: `path` is empty, not absolute (`$NOTIFY_SOCKET` must
    ///   start with `/`), longer than [`MAX_SOCKET_PATH_LEN`] (107) bytes, contains a NUL byte,
    ///   or `mode` has bits outside 0o777.
    /// - [`io::ErrorKind::AlreadyExists`]: something other than a socket is at `path` (a
    ///   regular file, a directory, a symlink); it is left untouched.
    /// - [`io::ErrorKind::AddrInUse`]: a live socket is at `path` (a connect to it succeeded);
    ///   it is left untouched.
    /// - Any error of `mkdir`, `unlink`, `socket`, `setsockopt`, `bind` or `chmod`, as is.
    ///
    /// The check of what is at `path` and its removal are not atomic: do not point two hubs at
    /// one directory.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime with I/O enabled (as `tokio::net::UnixDatagram::from_std`).
    pub fn bind_with_mode(path: &Path, mode: u32) -> io::Result<Self> {
        check_path(path)?;
        if mode & !0o777 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket mode {mode:#o} has bits outside 0o777"),
            ));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        remove_stale_socket(path)?;

        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        rustix::net::sockopt::set_socket_passcred(&fd, true)?;
        // Linux's unix_bind() creates the file with the socket inode's mode less the umask.
        rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(mode))?;
        // Registered with Tokio before bind(), so a panic outside a runtime leaves no file behind.
        let socket =
            tokio::net::UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(fd))?;
        rustix::net::bind(&socket, &SocketAddrUnix::new(path)?)?;
        let finish = || {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            std::fs::symlink_metadata(path)
        };
        match finish() {
            Ok(meta) => Ok(Self {
                socket,
                path: path.to_path_buf(),
                file_id: (meta.dev(), meta.ino()),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// The path this socket was bound to, as given to [`bind`](Self::bind): the value to hand
    /// out as `$NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next datagram and returns it whole, or reports that it was dropped.
    ///
    /// One `recvmsg()` per call with `MSG_CMSG_CLOEXEC | MSG_TRUNC` into a buffer of exactly
    /// [`MAX_DATAGRAM_LEN`] (4096) bytes and room for `SCM_CREDENTIALS` plus
    /// [`MAX_FDS_PER_DATAGRAM`] fds. As in systemd's `notify_recv_with_fds()`
    /// (`src/shared/notify-recv.c`, via `recvmsg_safe()`): truncated ancillary data
    /// (`MSG_CTRUNC`) gives [`DropCause::TooManyFds`] (checked first), a longer datagram
    /// (`MSG_TRUNC`) gives [`DropCause::Oversize`]; either way every fd that arrived is closed
    /// before this returns and nothing is truncated.
    ///
    /// Cancel-safe: a datagram is taken off the queue only by a call that then returns it, so
    /// dropping the future (e.g. in `tokio::select!`) loses nothing.
    ///
    /// # Errors
    ///
    /// `EINTR` is retried here and `EAGAIN` means "wait again" (Tokio's readiness loop); neither
    /// is returned. `ENOBUFS` and `ENOMEM` are transient (the kernel was short of memory): the
    /// caller should log them and call `recv` again ([`is_transient`] says so). Any other error
    /// (e.g. `EBADF`, `ENOTSOCK`) means the socket is unusable and is fatal for this socket.
    pub async fn recv(&self) -> io::Result<Received> {
        loop {
            match self
                .socket
                .async_io(Interest::READABLE, || {
                    let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
                    recv_once(self.socket.as_fd(), &mut space)
                })
                .await
            {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        remove_if_same(&self.path, self.file_id);
    }
}

/// Whether an error from [`NotifySocket::recv`] is transient: `ENOBUFS`, `ENOMEM` (the kernel
/// was short of memory), `EINTR` or `EAGAIN`. After such an error, call `recv` again; after any
/// other error the socket is unusable.
pub fn is_transient(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
        || err.kind() == io::ErrorKind::WouldBlock
        || err
            .raw_os_error()
            .is_some_and(|e| e == Errno::NOBUFS.raw_os_error() || e == Errno::NOMEM.raw_os_error())
}

/// What one [`NotifySocket::recv`] produced.
#[derive(Debug)]
pub enum Received {
    /// A whole datagram: payload (≤ [`MAX_DATAGRAM_LEN`] = 4096 bytes), credentials, and every
    /// fd that came with it.
    Datagram(Datagram),
    /// A datagram that was dropped whole (never truncated, as systemd does); every fd that came
    /// with it is already closed.
    Dropped {
        /// Why it was dropped.
        reason: DropCause,
        /// `SCM_CREDENTIALS` of the dropped datagram, when the kernel attached them.
        credentials: Option<Credentials>,
        /// The datagram's real length in bytes (Linux returns it for `MSG_TRUNC` on `AF_UNIX`
        /// datagram sockets since 3.4, `recv(2)`); `None` if unknown.
        len: Option<usize>,
    },
}

/// One datagram, received whole.
#[derive(Debug)]
pub struct Datagram {
    /// The bytes sent, exactly (0 to [`MAX_DATAGRAM_LEN`] bytes; a 0-byte datagram is an
    /// empty message, not an end of stream).
    pub payload: Vec<u8>,
    /// `SCM_CREDENTIALS` as the kernel attached them at send time; `None` if there were none
    /// (e.g. sent before `SO_PASSCRED` was set, which [`NotifySocket::bind`] never allows).
    /// `pid` is 0 when the sender is outside the receiver's pid namespace; systemd ignores
    /// such messages (`notify_recv_with_fds()`), which is the caller's decision here.
    pub credentials: Option<Credentials>,
    /// Every fd sent with the datagram (`SCM_RIGHTS`, ≤ [`MAX_FDS_PER_DATAGRAM`]), with
    /// `FD_CLOEXEC` set.
    ///
    /// **Duty:** drop these (which closes them) once this message *and every message received
    /// before it* has been processed, and not before: `BARRIER=1` arrives with exactly one fd,
    /// the write end of a pipe, and its sender (`sd_notify_barrier()`, used by `systemd-notify`
    /// by default) blocks until that fd is closed (protocol.md §2). Keeping them open stalls the
    /// sender until its timeout; closing them early breaks the barrier's promise.
    pub fds: Vec<OwnedFd>,
}

impl Datagram {
    /// The sender as the core sees it: [`Sender::Unix`] with this datagram's credentials.
    pub fn sender(&self) -> Sender {
        Sender::Unix {
            credentials: self.credentials,
        }
    }
}

/// Why a datagram was dropped whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropCause {
    /// Longer than [`MAX_DATAGRAM_LEN`] (4096) bytes (`MSG_TRUNC`; systemd:
    /// "Got message with truncated payload data, ignoring.").
    Oversize,
    /// Its ancillary data did not fit (`MSG_CTRUNC`), i.e. more fds than the buffer holds
    /// (systemd: "Got message with truncated control data (too many fds sent?), ignoring.").
    TooManyFds,
}

impl From<DropCause> for DropReason {
    /// The counter a drop goes to in the guest's state.
    fn from(cause: DropCause) -> Self {
        match cause {
            DropCause::Oversize => Self::Oversize,
            DropCause::TooManyFds => Self::TooManyFds,
        }
    }
}

fn check_path(path: &Path) -> io::Result<()> {
    let bytes = path.as_os_str().as_bytes();
    let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    if bytes.is_empty() {
        return invalid("notify socket path is empty".to_owned());
    }
    if !path.is_absolute() {
        return invalid(format!(
            "notify socket path {} is not absolute ($NOTIFY_SOCKET must start with '/')",
            path.display()
        ));
    }
    if bytes.len() > MAX_SOCKET_PATH_LEN {
        return invalid(format!(
            "notify socket path is {} bytes, the limit is {MAX_SOCKET_PATH_LEN} \
             (AF_UNIX sun_path is 108 bytes including the NUL): {}",
            bytes.len(),
            path.display()
        ));
    }
    if bytes.contains(&0) {
        return invalid("notify socket path contains a NUL byte".to_owned());
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
    let probe = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    match rustix::net::connect(&probe, &SocketAddrUnix::new(path)?) {
        Err(Errno::CONNREFUSED) => std::fs::remove_file(path),
        Ok(()) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is a socket somebody is listening on; refusing to replace it",
                path.display()
            ),
        )),
        // EPROTOTYPE: a stream or seqpacket socket lives there, not ours to remove.
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

fn credentials(c: UCred) -> Credentials {
    Credentials {
        // The kernel reports 0 for a sender outside our pid namespace. Caveat: rustix 1.1 reads
        // that value straight into `Pid(NonZeroI32)` (`cvt_msg` in `net/send_recv/msg.rs`),
        // formally an invalid value inside rustix. It reads back as 0 today (tests/pidns.rs
        // checks it); replace rustix's cmsg parsing if a rustix or rustc release breaks that.
        pid: u32::try_from(c.pid.as_raw_pid()).unwrap_or(0),
        uid: c.uid.as_raw(),
        gid: c.gid.as_raw(),
    }
}

/// One non-blocking `recvmsg()`; `space` is the control buffer (its size decides how many fds
/// fit before `MSG_CTRUNC`).
fn recv_once(fd: BorrowedFd<'_>, space: &mut [MaybeUninit<u8>]) -> io::Result<Received> {
    let mut buf = [0u8; MAX_DATAGRAM_LEN];
    let mut control = RecvAncillaryBuffer::new(space);
    let msg = rustix::net::recvmsg(
        fd,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::TRUNC,
    )?;
    let mut creds = None;
    let mut fds = Vec::new();
    for m in control.drain() {
        match m {
            RecvAncillaryMessage::ScmCredentials(c) => creds = Some(credentials(c)),
            RecvAncillaryMessage::ScmRights(iter) => fds.extend(iter),
            // Other messages own no fds (rustix closes any it does not return).
            _ => {}
        }
    }
    let reason = if msg.flags.contains(ReturnFlags::CTRUNC) {
        Some(DropCause::TooManyFds)
    } else if msg.flags.contains(ReturnFlags::TRUNC) || msg.bytes > MAX_DATAGRAM_LEN {
        Some(DropCause::Oversize)
    } else {
        None
    };
    if let Some(reason) = reason {
        drop(fds);
        return Ok(Received::Dropped {
            reason,
            credentials: creds,
            len: Some(msg.bytes),
        });
    }
    Ok(Received::Datagram(Datagram {
        payload: buf[..msg.bytes].to_vec(),
        credentials: creds,
        fds,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::io::IoSlice;

    /// With a control buffer too small for the fds (the real one fits `SCM_MAX_FD`, so this
    /// needs a smaller one), the datagram is dropped as TooManyFds and
    /// every fd that arrived is closed (the pipe's read end sees EOF).
    #[test]
    fn ctrunc_drops_and_closes_fds() {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::sockopt::set_socket_passcred(&b, true).unwrap();
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).unwrap();
        {
            // The receive buffer below has some alignment slack: 10 fds surely overflow it.
            let fds = [w.as_fd(); 10];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(10))];
            let mut anc = SendAncillaryBuffer::new(&mut space);
            assert!(anc.push(SendAncillaryMessage::ScmRights(&fds)));
            let n = rustix::net::sendmsg(&a, &[IoSlice::new(b"X=1")], &mut anc, SendFlags::empty())
                .unwrap();
            assert_eq!(n, 3);
        }
        drop(w);
        let mut space =
            [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1), ScmRights(1))];
        let got = recv_once(b.as_fd(), &mut space).unwrap();
        match got {
            Received::Dropped {
                reason,
                credentials,
                len,
            } => {
                assert_eq!(reason, DropCause::TooManyFds);
                assert_eq!(len, Some(3));
                assert_eq!(
                    credentials.map(|c| c.pid),
                    Some(std::process::id()),
                    "credentials precede SCM_RIGHTS and still fit"
                );
            }
            other => panic!("expected TooManyFds, got {other:?}"),
        }
        let mut byte = [0u8; 1];
        assert_eq!(
            rustix::io::read(&r, &mut byte).unwrap(),
            0,
            "all fds closed"
        );
    }

    #[test]
    fn path_checks() {
        assert_eq!(
            check_path(Path::new("")).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            check_path(Path::new("relative/notify")).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let ok = format!("/{}", "a".repeat(MAX_SOCKET_PATH_LEN - 1));
        assert!(check_path(Path::new(&ok)).is_ok());
        let long = format!("/{}", "a".repeat(MAX_SOCKET_PATH_LEN));
        let err = check_path(Path::new(&long)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("107"), "{err}");
    }

    #[test]
    fn transient_errors() {
        assert!(is_transient(&io::Error::from(Errno::NOBUFS)));
        assert!(is_transient(&io::Error::from(Errno::NOMEM)));
        assert!(is_transient(&io::Error::from(Errno::INTR)));
        assert!(!is_transient(&io::Error::from(Errno::BADF)));
        assert!(!is_transient(&io::Error::from(Errno::NOTSOCK)));
    }
}
