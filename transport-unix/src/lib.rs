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
//! [`stream`] binds the hub's HTTP UNIX socket with the same care for its file (mode, stale
//! sockets, removal).

mod mmsg;
pub mod send;
pub mod stream;

use std::cell::RefCell;
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

/// Who may send to a notify socket: its file's permission bits and owner.
///
/// Connecting or sending to an `AF_UNIX` socket needs write permission on its file
/// (`unix(7)`), so `mode`, `owner` and `group` decide which users can report as the guest. For a
/// user-namespaced container, whose root is some host uid (e.g. 100000), make that uid the
/// `owner` and keep `mode` 0o600.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketAccess {
    /// Permission bits of the socket file (at most 0o777).
    pub mode: u32,
    /// Owner uid of the socket file; `None`: the hub's own (its effective uid).
    pub owner: Option<u32>,
    /// Group gid of the socket file; `None`: the hub's own (its effective gid).
    pub group: Option<u32>,
}

impl Default for SocketAccess {
    /// [`DEFAULT_SOCKET_MODE`] (0o600), owned by the hub's user and group.
    fn default() -> Self {
        Self {
            mode: DEFAULT_SOCKET_MODE,
            owner: None,
            group: None,
        }
    }
}

/// Most fds one datagram can carry: the kernel's `SCM_MAX_FD` (253, `include/net/scm.h`);
/// `sendmsg()` fails with `EINVAL` for more, so the receive buffer is sized for exactly this many.
pub const MAX_FDS_PER_DATAGRAM: usize = 253;

/// Control buffer size: one `SCM_CREDENTIALS` plus one `SCM_RIGHTS` of [`MAX_FDS_PER_DATAGRAM`].
const CMSG_SPACE: usize = rustix::cmsg_space!(ScmCredentials(1), ScmRights(MAX_FDS_PER_DATAGRAM));

thread_local! {
    /// The receive buffers of [`NotifySocket::recv_batch`] on this thread: one set per thread
    /// that receives (Tokio's workers), not per socket, so idle guests cost no buffer memory.
    /// Borrowed only inside the synchronous readiness closure, which never yields.
    static BATCH_BUFFERS: RefCell<mmsg::Buffers> = RefCell::new(mmsg::Buffers::new());
}

/// A bound `AF_UNIX` `SOCK_DGRAM` notify socket with `SO_PASSCRED` set.
///
/// Dropping it closes the socket and removes its file (best effort) if the file at
/// [`path`](Self::path) is still the socket this value bound (same device and inode); a file
/// somebody else put there since is left alone, and so is the file of an
/// [inherited](Self::from_inherited) socket (its service manager owns it).
#[derive(Debug)]
pub struct NotifySocket {
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
    /// `(st_dev, st_ino)` of the socket file right after binding; `None` for an inherited
    /// socket, whose file is not ours to remove.
    file_id: Option<(u64, u64)>,
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
        Self::bind_with_access(
            path,
            SocketAccess {
                mode,
                ..SocketAccess::default()
            },
        )
    }

    /// As [`bind_with_mode`](Self::bind_with_mode) with `access.mode`, and then, when
    /// `access.owner` or `access.group` is set, `chown`s the socket file (not following a
    /// symlink) before its final `chmod`. Until then the file is the hub's, with at most
    /// `access.mode`: never more open than asked.
    ///
    /// # Errors
    ///
    /// As [`bind_with_mode`](Self::bind_with_mode); `chown`'s error as is (`EPERM`: only root,
    /// or `CAP_CHOWN`, may give a file away); the socket file is removed then.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime with I/O enabled (as `tokio::net::UnixDatagram::from_std`).
    pub fn bind_with_access(path: &Path, access: SocketAccess) -> io::Result<Self> {
        let SocketAccess { mode, owner, group } = access;
        check_path(path)?;
        check_mode(mode)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        remove_stale_socket(path, SocketType::DGRAM)?;

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
            if owner.is_some() || group.is_some() {
                rustix::fs::chownat(
                    rustix::fs::CWD,
                    path,
                    owner.map(rustix::fs::Uid::from_raw),
                    group.map(rustix::fs::Gid::from_raw),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            std::fs::symlink_metadata(path)
        };
        match finish() {
            Ok(meta) => Ok(Self {
                socket,
                path: path.to_path_buf(),
                file_id: Some((meta.dev(), meta.ino())),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Takes over a notify socket bound by someone else: a service manager's socket unit
    /// (`ListenDatagram=/PATH`, socket activation, `sd_listen_fds(3)`).
    ///
    /// Checks that `socket` is bound to a path that [`bind`](Self::bind) would accept (absolute,
    /// at most [`MAX_SOCKET_PATH_LEN`] bytes; not unnamed, not abstract), sets `SO_PASSCRED`
    /// (datagrams queued before this call carry no credentials: systemd's `PassCredentials=yes`
    /// avoids that) and non-blocking mode. The socket file keeps its owner and mode, and is
    /// left in place when this value is dropped: the service manager removes it.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] for an unnamed or abstract socket or a path `bind`
    /// refuses; any error of `getsockname`, `setsockopt` or `fcntl`, as is.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime with I/O enabled (as `tokio::net::UnixDatagram::from_std`).
    pub fn from_inherited(socket: std::os::unix::net::UnixDatagram) -> io::Result<Self> {
        let address = socket.local_addr()?;
        let Some(path) = address.as_pathname() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the inherited notify socket is not bound to a path (unnamed or abstract): \
                 guests need a path as $NOTIFY_SOCKET",
            ));
        };
        check_path(path)?;
        let path = path.to_path_buf();
        rustix::net::sockopt::set_socket_passcred(&socket, true)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket: tokio::net::UnixDatagram::from_std(socket)?,
            path,
            file_id: None,
        })
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

impl NotifySocket {
    /// Waits until at least one datagram is queued, then takes every queued one, up to `max`
    /// (at least 1), appending each to `batch` as [`recv`](Self::recv) would return it.
    ///
    /// One readiness wait per batch instead of one per datagram, and one `recvmmsg()` per 64
    /// datagrams instead of one `recvmsg()` each: the calls run until the queue is empty or
    /// `max` were taken, inside one poll, into buffers allocated once per thread (about
    /// 330 KiB), not per socket. Same rules, drops and fd duties as [`recv`](Self::recv);
    /// cancel-safe likewise (what was taken off the queue is in `batch` when this returns).
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), returned only when nothing was taken: an error after some
    /// datagrams ends the batch, and the next call meets it again (or not, if it was transient).
    pub async fn recv_batch(&self, batch: &mut Vec<Received>, max: usize) -> io::Result<()> {
        let max = max.max(1);
        loop {
            let taken = self
                .socket
                .async_io(Interest::READABLE, || {
                    BATCH_BUFFERS.with_borrow_mut(|buffers| {
                        recv_batch_into(self.socket.as_fd(), buffers, batch, max)
                    })
                })
                .await;
            match taken {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other.map(drop),
            }
        }
    }
}

/// Takes up to `max` queued datagrams into `batch` with as many `recvmmsg()` calls as it needs;
/// returns how many, or the error of a call that took nothing when nothing was taken (`EAGAIN`
/// then tells Tokio to wait for readiness again).
fn recv_batch_into(
    fd: BorrowedFd<'_>,
    buffers: &mut mmsg::Buffers,
    batch: &mut Vec<Received>,
    max: usize,
) -> io::Result<usize> {
    let mut taken = 0;
    while taken < max {
        let want = (max - taken).min(mmsg::SLOTS);
        match buffers.receive(fd, want, batch) {
            Ok(got) => {
                taken += got;
                if got < want {
                    // The queue ran dry within this call.
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if taken == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(taken)
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        if let Some(file_id) = self.file_id {
            remove_if_same(&self.path, file_id);
        }
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

/// `InvalidInput` for a socket file mode with bits outside 0o777.
fn check_mode(mode: u32) -> io::Result<()> {
    if mode & !0o777 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket mode {mode:#o} has bits outside 0o777"),
        ));
    }
    Ok(())
}

/// Removes a socket file at `path` that nobody listens on (a `connect()` with a socket of type
/// `ty` is refused); refuses anything else.
fn remove_stale_socket(path: &Path, ty: SocketType) -> io::Result<()> {
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
    // Non-blocking: a live stream listener with a full backlog answers EAGAIN, where a
    // blocking connect() would wait until it accepts.
    let probe = rustix::net::socket_with(
        AddressFamily::UNIX,
        ty,
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
        // EPROTOTYPE: a socket of another type lives there, not ours to remove.
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
    recv_into(fd, &mut buf, space)
}

/// [`recv_once`] into `buf` (at least [`MAX_DATAGRAM_LEN`] bytes; a longer one still drops
/// what is over 4096 bytes).
fn recv_into(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    space: &mut [MaybeUninit<u8>],
) -> io::Result<Received> {
    let buf = &mut buf[..MAX_DATAGRAM_LEN];
    let mut control = RecvAncillaryBuffer::new(space);
    let msg = rustix::net::recvmsg(
        fd,
        &mut [IoSliceMut::new(buf)],
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
    Ok(classify(
        buf,
        msg.bytes,
        msg.flags.contains(ReturnFlags::TRUNC),
        msg.flags.contains(ReturnFlags::CTRUNC),
        creds,
        fds,
    ))
}

/// What one received datagram is, by the rules of systemd's `notify_recv_with_fds()`: dropped
/// as [`DropCause::TooManyFds`] if its control data was truncated (checked first), as
/// [`DropCause::Oversize`] if its payload was (`len`, its real length, is over
/// [`MAX_DATAGRAM_LEN`]), with `fds` closed either way; else whole, `buf[..len]` copied out.
fn classify(
    buf: &[u8],
    len: usize,
    truncated: bool,
    control_truncated: bool,
    credentials: Option<Credentials>,
    fds: Vec<OwnedFd>,
) -> Received {
    let reason = if control_truncated {
        Some(DropCause::TooManyFds)
    } else if truncated || len > MAX_DATAGRAM_LEN {
        Some(DropCause::Oversize)
    } else {
        None
    };
    if let Some(reason) = reason {
        drop(fds);
        return Received::Dropped {
            reason,
            credentials,
            len: Some(len),
        };
    }
    Received::Datagram(Datagram {
        payload: buf[..len].to_vec(),
        credentials,
        fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::io::IoSlice;

    /// An inherited socket (as a socket unit's `ListenDatagram=` passes it) receives with
    /// credentials once adopted, and its file stays when it is dropped: the manager owns it.
    #[tokio::test]
    async fn inherited_socket_receives_and_keeps_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager_bound = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let socket = NotifySocket::from_inherited(manager_bound).unwrap();
        assert_eq!(socket.path(), path);
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sender.send_to(b"READY=1", &path).unwrap();
        match socket.recv().await.unwrap() {
            Received::Datagram(datagram) => {
                assert_eq!(datagram.payload, b"READY=1");
                assert_eq!(
                    datagram.credentials.map(|c| c.pid),
                    Some(std::process::id())
                );
            }
            other => panic!("expected a datagram, got {other:?}"),
        }
        drop(socket);
        assert!(path.exists(), "the inherited socket's file was removed");
    }

    /// A batch takes what is queued, in order, up to its cap, drops included; the rest waits
    /// for the next call.
    #[tokio::test]
    async fn recv_batch_drains_the_queue_in_order_up_to_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = NotifySocket::bind(&path).unwrap();
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        for i in 0..5 {
            sender
                .send_to(format!("X_N={i}").as_bytes(), &path)
                .unwrap();
        }
        sender
            .send_to(&vec![b'x'; MAX_DATAGRAM_LEN + 1], &path)
            .unwrap();
        sender.send_to(b"X_N=last", &path).unwrap();
        let payloads = |batch: &[Received]| -> Vec<String> {
            batch
                .iter()
                .map(|received| match received {
                    Received::Datagram(datagram) => {
                        String::from_utf8(datagram.payload.clone()).unwrap()
                    }
                    Received::Dropped { reason, len, .. } => format!("{reason:?} {len:?}"),
                })
                .collect()
        };
        let mut batch = Vec::new();
        socket.recv_batch(&mut batch, 4).await.unwrap();
        assert_eq!(payloads(&batch), ["X_N=0", "X_N=1", "X_N=2", "X_N=3"]);
        batch.clear();
        socket.recv_batch(&mut batch, 64).await.unwrap();
        assert_eq!(
            payloads(&batch),
            ["X_N=4", "Oversize Some(4097)", "X_N=last"]
        );
        // Nothing queued: it waits.
        batch.clear();
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            socket.recv_batch(&mut batch, 64),
        );
        assert!(waiting.await.is_err());
        assert!(batch.is_empty());
    }

    /// An unnamed or abstract socket has no path to hand out as `$NOTIFY_SOCKET`.
    #[tokio::test]
    async fn inherited_socket_without_a_path_is_refused() {
        let unnamed = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let error = NotifySocket::from_inherited(unnamed).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("not bound to a path"), "{error}");
    }

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
