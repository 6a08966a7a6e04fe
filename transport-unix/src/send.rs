//! Sending sd_notify datagrams to an `AF_UNIX` notify socket, exactly as `sd_pid_notify_with_fds()`
//! does (`pid_notify_with_fds_internal()`, `src/libsystemd/sd-daemon/sd-daemon.c`).
//!
//! Blocking calls: this is the sender side, for command-line tools and tests, not the hub.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
    SocketFlags, SocketType, UCred, sendmsg_addr,
};
use rustix::pipe::{PipeFlags, pipe_with};
use rustix::process::{Pid, getgid, getuid};

/// Where an `AF_UNIX` notify socket is: `$NOTIFY_SOCKET`'s `/path` or `@abstract` forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnixTarget<'a> {
    /// A socket file, e.g. `/run/notifyhub/guests/web1/notify`.
    Path(&'a str),
    /// A name in the abstract namespace, without the leading `@`.
    Abstract(&'a str),
}

/// Sends `payload` as one datagram to `target`, with `fds` as `SCM_RIGHTS`.
///
/// With `pid`, the datagram claims that pid in its `SCM_CREDENTIALS` (with our own uid and gid),
/// as `sd_pid_notify()` does; the kernel allows only a pid the caller may act for, else `EPERM`.
/// Without it the kernel attaches our own credentials (the receiver sets `SO_PASSCRED`).
///
/// # Errors
/// The `sendmsg()` error: `ENOENT`/`ECONNREFUSED` when nobody listens, `EMSGSIZE` above the
/// socket's limit, `EPERM` for a pid we may not claim, `EINVAL` for more than 253 fds.
pub fn send_datagram(
    target: UnixTarget<'_>,
    payload: &[u8],
    pid: Option<u32>,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let address = match target {
        UnixTarget::Path(path) => SocketAddrUnix::new(path)?,
        UnixTarget::Abstract(name) => SocketAddrUnix::new_abstract_name(name.as_bytes())?,
    };
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let mut space = vec![
        std::mem::MaybeUninit::uninit();
        rustix::cmsg_space!(ScmCredentials(1), ScmRights(fds.len()))
    ];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if let Some(pid) = pid {
        let pid = i32::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid must be > 0"))?;
        let credentials = UCred {
            pid,
            uid: getuid(),
            gid: getgid(),
        };
        control.push(SendAncillaryMessage::ScmCredentials(credentials));
    }
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    let sent = sendmsg_addr(
        &socket,
        &address,
        &[io::IoSlice::new(payload)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != payload.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", payload.len()),
        ));
    }
    Ok(())
}

/// Sends `BARRIER=1` with the write end of a fresh pipe and waits until the receiver closed it,
/// proving it processed every earlier message (`sd_notify_barrier(3)`, systemd v246).
///
/// # Errors
/// [`io::ErrorKind::TimedOut`] when the receiver held the fd longer than `timeout`
/// (`systemd-notify` waits 5 s); any error of [`send_datagram`] or `poll()`.
pub fn barrier(target: UnixTarget<'_>, pid: Option<u32>, timeout: Duration) -> io::Result<()> {
    let (read_end, write_end) = pipe_with(PipeFlags::CLOEXEC)?;
    send_datagram(target, b"BARRIER=1", pid, &[write_end.as_fd()])?;
    drop(write_end);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the receiver did not close the barrier fd within {timeout:?}"),
            ));
        }
        let mut fds = [PollFd::new(&read_end, PollFlags::empty())];
        let wait = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        match poll(&mut fds, Some(&wait)) {
            Ok(_) if fds[0].revents().contains(PollFlags::HUP) => return Ok(()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
}
