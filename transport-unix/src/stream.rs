//! A listening `AF_UNIX` `SOCK_STREAM` socket at a path, for serving HTTP on a UNIX socket
//! (`notifyhub serve --listen unix:PATH`): its file mode is the access control.

use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// Connections the kernel queues before `accept()`.
const BACKLOG: i32 = 1024;

/// The file of a bound [`bind_listener`] socket: dropping this removes it, if the file at
/// [`path`](Self::path) is still that socket (same device and inode).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// `(st_dev, st_ino)` right after binding.
    file_id: (u64, u64),
}

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        crate::remove_if_same(&self.path, self.file_id);
    }
}

/// Binds a listening `SOCK_STREAM` socket at `path` whose file has permission bits `mode` (at
/// most 0o777) and the caller's owner and group.
///
/// As [`NotifySocket::bind_with_mode`](crate::NotifySocket::bind_with_mode): a **stale** socket
/// at `path` (a connect is refused) is replaced, anything else is left alone; the socket inode
/// gets `mode` before `bind()`, so the file is never more open than asked, and exactly `mode`
/// after. Does not create parent directories.
///
/// # Errors
///
/// - [`io::ErrorKind::InvalidInput`]: `mode` has bits outside 0o777, or `path` does not fit
///   `sun_path`.
/// - [`io::ErrorKind::AlreadyExists`]: something other than a socket is at `path`.
/// - [`io::ErrorKind::AddrInUse`]: somebody listens at `path`.
/// - Any error of `socket`, `bind`, `listen` or `chmod`, as is; the file is removed then.
///
/// # Panics
///
/// Outside a Tokio runtime with I/O enabled (as `tokio::net::UnixListener::from_std`).
pub fn bind_listener(path: &Path, mode: u32) -> io::Result<(tokio::net::UnixListener, SocketFile)> {
    crate::check_mode(mode)?;
    let address = SocketAddrUnix::new(path)?;
    crate::remove_stale_socket(path, SocketType::STREAM)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    // Linux's unix_bind() creates the file with the socket inode's mode less the umask.
    rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(mode))?;
    rustix::net::bind(&fd, &address)?;
    let finish = || {
        rustix::net::listen(&fd, BACKLOG)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        std::fs::symlink_metadata(path)
    };
    match finish() {
        Ok(meta) => {
            let file = SocketFile {
                path: path.to_owned(),
                file_id: (meta.dev(), meta.ino()),
            };
            // Registered with Tokio only once it listens; an error drops `file`, removing it.
            let listener =
                tokio::net::UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))?;
            Ok((listener, file))
        }
        Err(error) => {
            let _ = std::fs::remove_file(path);
            Err(error)
        }
    }
}
