//! Sending one sd_notify message to an `AF_VSOCK` notify socket, exactly as
//! `sd_pid_notify_with_fds()` does (`pid_notify_with_fds_internal()`,
//! `src/libsystemd/sd-daemon/sd-daemon.c`; `../shared/protocol.md` §1–§2):
//!
//! 1. `socket()` of the type the address asks for. Plain `vsock:` tries `SOCK_DGRAM`, then
//!    `SOCK_SEQPACKET` only if `socket()` itself fails as unsupported (or `ENODEV`, what
//!    virtio-vsock answers for datagrams), then `SOCK_STREAM` if that is unsupported too. A failed
//!    `connect()` or send never falls back.
//! 2. `bind()` a privileged source port, 1023 and down while it is taken, so the receiver can
//!    tell the sender was root (`sd_notify(3)`, Notes); without the privilege the kernel refuses
//!    and the socket stays unbound, which is no error.
//! 3. Datagrams: one `sendto()`. Stream and seqpacket: `connect()`, write the message,
//!    `shutdown(SHUT_WR)`, then wait for EOF: the receiver closes once it has the message, and
//!    any byte it writes back fails the send with `EPROTO` ([`send_connected`]).
//!
//! The mirror of `notifyhub_transport_unix::send`; blocking calls, for command-line tools and
//! tests, not the hub.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use notifyhub_core::VsockType;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, Shutdown};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::VMADDR_CID_ANY;

/// The highest privileged port, where the search for a free source port starts.
pub const PRIVILEGED_PORT_MAX: u32 = 1023;

/// How long [`send`] and [`send_connected`] wait for the receiver to close the connection after
/// the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EofWait {
    /// Until it closes, however long: what systemd itself does.
    Forever,
    /// At most this long, then fail with [`io::ErrorKind::TimedOut`].
    Within(Duration),
    /// Not at all: close right after `shutdown(SHUT_WR)`. The message was written, but nothing
    /// shows the receiver took it.
    Skip,
}

/// What a [`send`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The socket type used: for plain `vsock:`, the one the fallback settled on (never
    /// [`VsockType::Auto`]).
    pub socket_type: VsockType,
    /// The privileged source port bound, if the sender was allowed one.
    pub source_port: Option<u32>,
}

/// Sends `payload` as one sd_notify message to `(cid, port)` over `socket_type`, as described in
/// the [module docs](self); `wait` bounds the wait for EOF (stream and seqpacket only).
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] for `cid` [`VMADDR_CID_ANY`] (the sender needs a real peer,
/// as systemd's does); those of `socket()`, `bind()` (other than lacking the privilege),
/// `connect()` and the send; [`send_connected`]'s for stream and seqpacket.
pub fn send(
    socket_type: VsockType,
    cid: u32,
    port: u32,
    payload: &[u8],
    wait: EofWait,
) -> io::Result<Sent> {
    if cid == VMADDR_CID_ANY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "vsock CID any (-1) names no peer; give the host's CID, 2",
        ));
    }
    let (socket, socket_type) = open(socket_type, |kind| Socket::new(Domain::VSOCK, kind, None))?;
    let source_port =
        bind_privileged_port(|port| socket.bind(&SockAddr::vsock(VMADDR_CID_ANY, port)))?;
    let address = SockAddr::vsock(cid, port);
    match socket_type {
        VsockType::Dgram | VsockType::Auto => {
            let sent = socket.send_to(payload, &address)?;
            if sent != payload.len() {
                return Err(short_send(sent, payload.len()));
            }
        }
        VsockType::Stream | VsockType::Seqpacket => {
            socket.connect(&address)?;
            send_connected(socket.as_fd(), payload, wait)?;
        }
    }
    Ok(Sent {
        socket_type,
        source_port,
    })
}

/// Sends `payload` over a connected stream or seqpacket socket the sd_notify way: writes it
/// (a seqpacket socket must take it in one packet), calls `shutdown(SHUT_WR)`, then waits for
/// EOF as `wait` says. Works on any such socket, so it also speaks to a hybrid vsock UNIX socket
/// (`<uds_path>_PORT`) and can be tested over a `UnixStream` pair.
///
/// # Errors
/// Those of `send()` and `shutdown()`; [`io::ErrorKind::InvalidData`] (systemd: `EPROTO`) when
/// the receiver writes a byte back; [`io::ErrorKind::TimedOut`] when it has not closed within
/// [`EofWait::Within`]; `EIO` when a seqpacket socket took part of the message.
pub fn send_connected(socket: BorrowedFd<'_>, payload: &[u8], wait: EofWait) -> io::Result<()> {
    let seqpacket =
        rustix::net::sockopt::socket_type(socket)? == rustix::net::SocketType::SEQPACKET;
    let mut rest = payload;
    // A 0-byte message is a valid empty list: it is sent as EOF alone.
    while !rest.is_empty() {
        match rustix::net::send(socket, rest, SendFlags::NOSIGNAL) {
            Ok(sent) if seqpacket && sent != rest.len() => {
                return Err(short_send(sent, payload.len()));
            }
            Ok(0) => return Err(short_send(payload.len() - rest.len(), payload.len())),
            Ok(sent) => rest = &rest[sent..],
            Err(Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
    rustix::net::shutdown(socket, Shutdown::Write)?;
    let deadline = match wait {
        EofWait::Skip => return Ok(()),
        EofWait::Forever => None,
        EofWait::Within(timeout) => Some((Instant::now() + timeout, timeout)),
    };
    loop {
        let left = deadline.map(|(at, _)| at.saturating_duration_since(Instant::now()));
        if let (Some(left), Some((_, timeout))) = (left, deadline)
            && left.is_zero()
        {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the receiver did not close the connection within {timeout:?}"),
            ));
        }
        let left = left.map(|left| {
            Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            })
        });
        let mut fds = [PollFd::new(&socket, PollFlags::IN)];
        match poll(&mut fds, left.as_ref()) {
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => {}
            Err(error) => return Err(error.into()),
        }
        let mut byte = [0_u8; 1];
        match rustix::net::recv(socket, &mut byte, RecvFlags::DONTWAIT) {
            Ok((0, _)) => return Ok(()),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the receiver wrote back on the notify connection (EPROTO): an sd_notify \
                     receiver must only read, then close",
                ));
            }
            Err(Errno::INTR | Errno::AGAIN) => {}
            Err(error) => return Err(error.into()),
        }
    }
}

/// Opens the socket for `socket_type` with `create`, falling back for [`VsockType::Auto`] the
/// way systemd does; returns it with the type it has.
fn open<S>(
    socket_type: VsockType,
    mut create: impl FnMut(Type) -> io::Result<S>,
) -> io::Result<(S, VsockType)> {
    let explicit = match socket_type {
        VsockType::Stream => Some(Type::STREAM),
        VsockType::Dgram => Some(Type::DGRAM),
        VsockType::Seqpacket => Some(Type::SEQPACKET),
        VsockType::Auto => None,
    };
    if let Some(kind) = explicit {
        return Ok((create(kind)?, socket_type));
    }
    match create(Type::DGRAM) {
        Ok(socket) => return Ok((socket, VsockType::Dgram)),
        Err(error) if is_not_supported(&error) || errno(&error) == Some(Errno::NODEV) => {}
        Err(error) => return Err(error),
    }
    match create(Type::SEQPACKET) {
        Ok(socket) => return Ok((socket, VsockType::Seqpacket)),
        Err(error) if is_not_supported(&error) => {}
        Err(error) => return Err(error),
    }
    Ok((create(Type::STREAM)?, VsockType::Stream))
}

/// Binds the first free port from [`PRIVILEGED_PORT_MAX`] down to 1 with `bind`, as
/// `vsock_bind_privileged_port()` does: `Ok(None)` when the privilege is lacking (`EPERM`,
/// `EACCES`); an error for anything else, including every port taken.
fn bind_privileged_port(mut bind: impl FnMut(u32) -> io::Result<()>) -> io::Result<Option<u32>> {
    let mut port = PRIVILEGED_PORT_MAX;
    loop {
        match bind(port) {
            Ok(()) => return Ok(Some(port)),
            Err(error) if error.kind() == io::ErrorKind::AddrInUse && port > 1 => port -= 1,
            Err(error) if matches!(errno(&error), Some(Errno::PERM | Errno::ACCESS)) => {
                return Ok(None);
            }
            Err(error) => return Err(error),
        }
    }
}

fn errno(error: &io::Error) -> Option<Errno> {
    error.raw_os_error().map(Errno::from_raw_os_error)
}

/// systemd's `ERRNO_IS_NOT_SUPPORTED()` (`src/basic/errno-util.h`).
fn is_not_supported(error: &io::Error) -> bool {
    matches!(
        errno(error),
        Some(
            Errno::OPNOTSUPP
                | Errno::NOTTY
                | Errno::NOSYS
                | Errno::AFNOSUPPORT
                | Errno::PFNOSUPPORT
                | Errno::PROTONOSUPPORT
                | Errno::SOCKTNOSUPPORT
                | Errno::NOPROTOOPT
        )
    )
}

fn short_send(sent: usize, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::WriteZero,
        format!("sent {sent} of {len} bytes (EIO)"),
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::os::unix::net::UnixStream;
    use std::thread;

    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

    use super::*;

    /// Bounds liveness, not speed.
    const LIVENESS: Duration = Duration::from_secs(10);

    fn errno_error(errno: Errno) -> io::Error {
        io::Error::from_raw_os_error(errno.raw_os_error())
    }

    #[test]
    fn stream_receiver_reads_to_eof_then_closes() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let receiver = thread::spawn(move || {
            let mut message = Vec::new();
            theirs.read_to_end(&mut message).unwrap();
            message
        });
        send_connected(
            ours.as_fd(),
            b"READY=1\nSTATUS=up",
            EofWait::Within(LIVENESS),
        )
        .unwrap();
        assert_eq!(receiver.join().unwrap(), b"READY=1\nSTATUS=up");
    }

    #[test]
    fn a_byte_written_back_is_eproto() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let receiver = thread::spawn(move || {
            let mut message = Vec::new();
            theirs.read_to_end(&mut message).unwrap();
            theirs.write_all(b"x").unwrap();
            message
        });
        let error =
            send_connected(ours.as_fd(), b"READY=1", EofWait::Within(LIVENESS)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("EPROTO"), "{error}");
        assert_eq!(receiver.join().unwrap(), b"READY=1");
    }

    #[test]
    fn a_receiver_that_never_closes_times_out() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let error =
            send_connected(ours.as_fd(), b"READY=1", EofWait::Within(Duration::ZERO)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(theirs);
    }

    #[test]
    fn skip_returns_after_the_half_close() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        send_connected(ours.as_fd(), b"WATCHDOG=1", EofWait::Skip).unwrap();
        let mut message = Vec::new();
        theirs.read_to_end(&mut message).unwrap();
        assert_eq!(message, b"WATCHDOG=1");
    }

    #[test]
    fn an_empty_message_is_eof_alone() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let receiver = thread::spawn(move || {
            let mut message = Vec::new();
            theirs.read_to_end(&mut message).unwrap();
            message
        });
        send_connected(ours.as_fd(), b"", EofWait::Forever).unwrap();
        assert_eq!(receiver.join().unwrap(), b"");
    }

    #[test]
    fn seqpacket_sends_one_packet() {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let receiver = thread::spawn(move || {
            let mut packet = [0_u8; 64];
            let (len, _) = rustix::net::recv(&theirs, &mut packet, RecvFlags::empty()).unwrap();
            let (eof, _) = rustix::net::recv(&theirs, &mut [0_u8; 1], RecvFlags::empty()).unwrap();
            assert_eq!(eof, 0, "EOF after the one packet");
            packet[..len].to_vec()
        });
        send_connected(ours.as_fd(), b"READY=1", EofWait::Within(LIVENESS)).unwrap();
        assert_eq!(receiver.join().unwrap(), b"READY=1");
    }

    #[test]
    fn plain_vsock_falls_back_only_when_socket_fails_unsupported() {
        // virtio-vsock (QEMU): no datagrams, ENODEV; seqpacket is there.
        let mut tried = Vec::new();
        let (_, used) = open(VsockType::Auto, |kind| {
            tried.push(kind);
            if kind == Type::DGRAM {
                Err(errno_error(Errno::NODEV))
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(
            (tried, used),
            (vec![Type::DGRAM, Type::SEQPACKET], VsockType::Seqpacket)
        );

        // Neither datagrams nor seqpacket: stream.
        let mut tried = Vec::new();
        let (_, used) = open(VsockType::Auto, |kind| {
            tried.push(kind);
            if kind == Type::STREAM {
                Ok(())
            } else {
                Err(errno_error(Errno::AFNOSUPPORT))
            }
        })
        .unwrap();
        assert_eq!(
            (tried, used),
            (
                vec![Type::DGRAM, Type::SEQPACKET, Type::STREAM],
                VsockType::Stream
            )
        );

        // ENODEV for seqpacket is not "unsupported": no stream then.
        let mut tried = Vec::new();
        let error = open(VsockType::Auto, |kind| {
            tried.push(kind);
            Err::<(), _>(errno_error(Errno::NODEV))
        })
        .unwrap_err();
        assert_eq!(errno(&error), Some(Errno::NODEV));
        assert_eq!(tried, vec![Type::DGRAM, Type::SEQPACKET]);

        // Datagrams work: nothing else is tried.
        let mut tried = Vec::new();
        let (_, used) = open(VsockType::Auto, |kind| {
            tried.push(kind);
            Ok(())
        })
        .unwrap();
        assert_eq!((tried, used), (vec![Type::DGRAM], VsockType::Dgram));

        // Any other error of socket() ends it.
        let error = open(VsockType::Auto, |_| Err::<(), _>(errno_error(Errno::MFILE))).unwrap_err();
        assert_eq!(errno(&error), Some(Errno::MFILE));
    }

    #[test]
    fn explicit_types_never_fall_back() {
        for (socket_type, kind) in [
            (VsockType::Stream, Type::STREAM),
            (VsockType::Dgram, Type::DGRAM),
            (VsockType::Seqpacket, Type::SEQPACKET),
        ] {
            let mut tried = Vec::new();
            let error = open(socket_type, |kind| {
                tried.push(kind);
                Err::<(), _>(errno_error(Errno::AFNOSUPPORT))
            })
            .unwrap_err();
            assert_eq!(errno(&error), Some(Errno::AFNOSUPPORT));
            assert_eq!(tried, vec![kind]);
        }
    }

    #[test]
    fn source_port_search() {
        // 1023 and 1022 taken: 1021.
        let mut tried = Vec::new();
        let port = bind_privileged_port(|port| {
            tried.push(port);
            if port > 1021 {
                Err(errno_error(Errno::ADDRINUSE))
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!((port, tried), (Some(1021), vec![1023, 1022, 1021]));

        // Not root: unbound, no error.
        for errno in [Errno::ACCESS, Errno::PERM] {
            assert_eq!(
                bind_privileged_port(|_| Err(errno_error(errno))).unwrap(),
                None
            );
        }

        // Every port taken: the error, as systemd's.
        let error = bind_privileged_port(|_| Err(errno_error(Errno::ADDRINUSE))).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);

        // Anything else: the error.
        let error = bind_privileged_port(|_| Err(errno_error(Errno::ADDRNOTAVAIL))).unwrap_err();
        assert_eq!(errno(&error), Some(Errno::ADDRNOTAVAIL));
    }

    #[test]
    fn cid_any_is_refused() {
        let error = send(
            VsockType::Stream,
            VMADDR_CID_ANY,
            1234,
            b"READY=1",
            EofWait::Skip,
        )
        .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
