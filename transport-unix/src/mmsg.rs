//! Batched receive: up to [`SLOTS`] datagrams per `recvmmsg(2)` system call, with their
//! credentials and fds, into buffers allocated once per thread rather than once per socket.
//!
//! This is the one place in the crate with `unsafe` code, in two items: the `recvmmsg()` call
//! itself ([`Buffers::receive`]) and taking ownership of each fd the kernel installed for a
//! message ([`own_fd`]). rustix 1.1 (the safe wrapper used everywhere else) has no `recvmmsg`,
//! and nix 0.31's does not fit: it reuses its `MultiHeaders` without restoring
//! `msg_controllen`, which the kernel shrinks to what each call wrote (so a slot that once
//! received no fds truncates every later datagram's fds, nix-rust/nix#2813), and its `cmsgs()`
//! refuses to parse a `MSG_CTRUNC` message, so the fds that did arrive with one could not be
//! closed. Hence `libc::recvmmsg` directly; the control messages are parsed here from plain
//! bytes in safe code, bounded by the length the kernel wrote.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use notifyhub_core::{Credentials, MAX_DATAGRAM_LEN};

use crate::{CMSG_SPACE, Received};

/// Datagrams one [`Buffers::receive`] takes at most: one `recvmmsg()` call. 64 × 4096 bytes of
/// payload buffer plus 64 control buffers make about 330 KiB per thread.
pub(crate) const SLOTS: usize = 64;

/// `SCM_PIDFD` (`include/linux/socket.h`, Linux 6.5), missing from libc 0.2: sent only to a
/// socket with `SO_PASSPIDFD`, which [`crate::NotifySocket`] never sets (a socket inherited from
/// a service manager might have it); if one comes, its fd is closed at once.
const SCM_PIDFD: libc::c_int = 0x04;

/// Receive buffers for [`SLOTS`] datagrams: payloads of [`MAX_DATAGRAM_LEN`] bytes each,
/// control buffers, and the `mmsghdr`/`iovec` arrays that point at them.
///
/// The headers' pointers are set by [`receive`](Self::receive) right before each call, from
/// this value's own boxed buffers; between calls they are never read. Holds raw pointers, so
/// it is neither `Send` nor `Sync`: one per thread.
pub(crate) struct Buffers {
    payloads: Box<[u8]>,
    controls: Box<[u8]>,
    /// Bytes of control buffer per slot (the `msg_controllen` each call starts from).
    control_len: usize,
    iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::mmsghdr]>,
}

impl Buffers {
    /// Buffers whose control space fits `SCM_CREDENTIALS` plus
    /// [`crate::MAX_FDS_PER_DATAGRAM`] fds per datagram, as [`crate::NotifySocket::recv`]'s.
    pub(crate) fn new() -> Self {
        Self::with_control_len(CMSG_SPACE)
    }

    /// Buffers with `control_len` (at least 1) bytes of control space per slot (tests use
    /// less than [`new`](Self::new), to provoke `MSG_CTRUNC`).
    pub(crate) fn with_control_len(control_len: usize) -> Self {
        let control_len = control_len.max(1);
        // Zeroed allocations: the kernel maps their pages only once a datagram touches them.
        Self {
            payloads: vec![0; SLOTS * MAX_DATAGRAM_LEN].into_boxed_slice(),
            controls: vec![0; SLOTS * control_len].into_boxed_slice(),
            control_len,
            iovecs: vec![
                libc::iovec {
                    iov_base: ptr::null_mut(),
                    iov_len: 0,
                };
                SLOTS
            ]
            .into_boxed_slice(),
            headers: vec![
                libc::mmsghdr {
                    msg_hdr: libc::msghdr {
                        msg_name: ptr::null_mut(),
                        msg_namelen: 0,
                        msg_iov: ptr::null_mut(),
                        msg_iovlen: 0,
                        msg_control: ptr::null_mut(),
                        msg_controllen: 0,
                        msg_flags: 0,
                    },
                    msg_len: 0,
                };
                SLOTS
            ]
            .into_boxed_slice(),
        }
    }

    /// One non-blocking `recvmmsg()` of up to `max` (at most [`SLOTS`], at least 1) datagrams
    /// with `MSG_CMSG_CLOEXEC | MSG_TRUNC`, each appended to `out` as
    /// [`crate::NotifySocket::recv`] would return it (whole, or dropped with its fds closed).
    /// Returns how many were taken off the queue.
    ///
    /// # Errors
    ///
    /// The call's error when it took nothing: `EAGAIN` (queue empty), `EINTR`, or a fatal one.
    /// An error after some datagrams is not lost: the kernel returns it on the next call.
    pub(crate) fn receive(
        &mut self,
        fd: BorrowedFd<'_>,
        max: usize,
        out: &mut Vec<Received>,
    ) -> io::Result<usize> {
        let slots = max.clamp(1, SLOTS);
        let payloads = self.payloads.chunks_exact_mut(MAX_DATAGRAM_LEN);
        let controls = self.controls.chunks_exact_mut(self.control_len);
        for (((header, iovec), payload), control) in self.headers[..slots]
            .iter_mut()
            .zip(self.iovecs.iter_mut())
            .zip(payloads)
            .zip(controls)
        {
            iovec.iov_base = payload.as_mut_ptr().cast();
            iovec.iov_len = payload.len();
            // In and out: the kernel overwrites these with what it wrote, so each call
            // restores the full capacities.
            header.msg_hdr = libc::msghdr {
                msg_name: ptr::null_mut(),
                msg_namelen: 0,
                msg_iov: iovec,
                msg_iovlen: 1,
                msg_control: control.as_mut_ptr().cast(),
                msg_controllen: self.control_len,
                msg_flags: 0,
            };
            header.msg_len = 0;
        }
        let flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC | libc::MSG_DONTWAIT;
        #[allow(unsafe_code)]
        // SAFETY: `headers[..slots]` were filled just above: each points at its own `iovec`
        // (one, of `MAX_DATAGRAM_LEN` bytes of `payloads`) and at `control_len` bytes of
        // `controls`, with no address buffer (null, length 0). All of
        // it belongs to `self`, which `&mut self` keeps alive and unaliased for the whole call;
        // the kernel writes only within those lengths. `slots` ≤ `SLOTS` = the array's length
        // (so the cast cannot truncate), and a null timeout is allowed.
        let taken = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.headers.as_mut_ptr(),
                slots as libc::c_uint,
                flags,
                ptr::null_mut(),
            )
        };
        // Negative: the error; else how many headers the kernel filled (≤ `slots`).
        let taken = usize::try_from(taken).map_err(|_| io::Error::last_os_error())?;
        for (i, header) in self.headers[..taken].iter().enumerate() {
            let control_start = i * self.control_len;
            let control_len = header.msg_hdr.msg_controllen.min(self.control_len);
            let control = &self.controls[control_start..control_start + control_len];
            let (credentials, fds) = parse_control(control);
            let payload = &self.payloads[i * MAX_DATAGRAM_LEN..(i + 1) * MAX_DATAGRAM_LEN];
            let msg_flags = header.msg_hdr.msg_flags;
            out.push(crate::classify(
                payload,
                header.msg_len as usize,
                msg_flags & libc::MSG_TRUNC != 0,
                msg_flags & libc::MSG_CTRUNC != 0,
                credentials,
                fds,
            ));
        }
        Ok(taken)
    }
}

/// Bytes of a `cmsghdr` before its data: `CMSG_ALIGN(sizeof(struct cmsghdr))` (16 on 64-bit).
const HEADER_LEN: usize = align(size_of::<libc::cmsghdr>());

/// `CMSG_ALIGN`: control messages start at multiples of `sizeof(size_t)` from the buffer's
/// start (the kernel's `put_cmsg()` and glibc's `CMSG_NXTHDR` both step by this relative to
/// the buffer, so reading by offsets needs no alignment of the buffer itself).
const fn align(len: usize) -> usize {
    len.next_multiple_of(size_of::<libc::size_t>())
}

/// Reads the control messages the kernel wrote for one datagram: its `SCM_CREDENTIALS` and
/// every fd of its `SCM_RIGHTS`, each owned from here on (closed when dropped). Stops at the
/// first header that does not fit `control` (the kernel writes none; `MSG_CTRUNC` shortens the
/// last message's `cmsg_len` to what it wrote, and the fds it installed are all within it).
fn parse_control(mut control: &[u8]) -> (Option<Credentials>, Vec<OwnedFd>) {
    let mut credentials = None;
    let mut fds = Vec::new();
    let field =
        |bytes: &[u8], at: usize| -> [u8; 4] { bytes[at..at + 4].try_into().expect("4 bytes") };
    while control.len() >= HEADER_LEN {
        let len_bytes = &control[offset_of!(libc::cmsghdr, cmsg_len)..][..size_of::<usize>()];
        let len = usize::from_ne_bytes(len_bytes.try_into().expect("size_t"));
        let level = i32::from_ne_bytes(field(control, offset_of!(libc::cmsghdr, cmsg_level)));
        let kind = i32::from_ne_bytes(field(control, offset_of!(libc::cmsghdr, cmsg_type)));
        if len < HEADER_LEN || len > control.len() {
            break;
        }
        let data = &control[HEADER_LEN..len];
        match (level, kind) {
            (libc::SOL_SOCKET, libc::SCM_RIGHTS) => fds.extend(
                data.chunks_exact(size_of::<RawFd>())
                    .map(|fd| own_fd(RawFd::from_ne_bytes(fd.try_into().expect("int")))),
            ),
            (libc::SOL_SOCKET, SCM_PIDFD) => {
                for fd in data.chunks_exact(size_of::<RawFd>()) {
                    drop(own_fd(RawFd::from_ne_bytes(fd.try_into().expect("int"))));
                }
            }
            // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
            (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) if data.len() >= 12 => {
                let pid = i32::from_ne_bytes(field(data, 0));
                credentials = Some(Credentials {
                    // 0 for a sender outside our pid namespace.
                    pid: u32::try_from(pid).unwrap_or(0),
                    uid: u32::from_ne_bytes(field(data, 4)),
                    gid: u32::from_ne_bytes(field(data, 8)),
                });
            }
            _ => {}
        }
        control = &control[align(len).min(control.len())..];
    }
    (credentials, fds)
}

/// Takes ownership of `fd`, a number from an `SCM_RIGHTS` (or `SCM_PIDFD`) message the kernel
/// just wrote into our control buffer.
#[allow(unsafe_code)]
fn own_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process's fd table while delivering this
    // message (`scm_detach_fds()`), with `FD_CLOEXEC` (`MSG_CMSG_CLOEXEC`), and handed its
    // number to us alone, in a buffer only this thread reads; `parse_control` reads each
    // message of a call's filled slots exactly once, so each number is owned exactly once.
    // Nothing in this process knew the number before, so nothing else will close it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DropCause, MAX_FDS_PER_DATAGRAM};
    use rustix::io::Errno;
    use rustix::net::{
        AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags,
        SocketType,
    };
    use std::io::IoSlice;
    use std::mem::MaybeUninit;
    use std::os::fd::AsFd;

    /// A datagram socket pair; the second end has `SO_PASSCRED`, as a notify socket.
    fn pair() -> (OwnedFd, OwnedFd) {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        rustix::net::sockopt::set_socket_passcred(&b, true).unwrap();
        (a, b)
    }

    fn send(to: &OwnedFd, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        let sent = rustix::net::sendmsg(
            to,
            &[IoSlice::new(payload)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        assert_eq!(sent, payload.len());
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::NONBLOCK | rustix::pipe::PipeFlags::CLOEXEC,
        )
        .unwrap()
    }

    /// `Ok(0)`: every write end is closed; `Err(AGAIN)`: one is still open somewhere.
    fn read_end(r: &OwnedFd) -> Result<usize, Errno> {
        rustix::io::read(r, &mut [0u8; 16])
    }

    fn own_pid() -> Option<u32> {
        Some(std::process::id())
    }

    /// One `recvmmsg()` takes whole datagrams, with and without fds, next to an oversize one
    /// and one whose fds did not fit, in order; the two dropped ones have every fd that
    /// arrived closed, the kept fds are the live pipe ends that were sent.
    #[test]
    fn a_batch_mixes_whole_oversize_and_truncated_control_datagrams() {
        let (a, b) = pair();
        // Room for the credentials (a 12-byte ucred) and exactly two fds: with three the
        // kernel installs two, discards one and sets MSG_CTRUNC.
        let mut buffers = Buffers::with_control_len(align(HEADER_LEN + 12) + HEADER_LEN + 2 * 4);
        let (r1, w1) = pipe();
        let (r2, w2) = pipe();
        let (r3, w3) = pipe();
        let (r4, w4) = pipe();
        send(&a, b"A=1", &[]);
        send(&a, b"B=2", &[w1.as_fd()]);
        send(&a, &[b'x'; MAX_DATAGRAM_LEN + 1], &[w2.as_fd()]);
        send(&a, b"C=3", &[w3.as_fd(), w3.as_fd(), w3.as_fd()]);
        send(&a, b"D=4", &[w4.as_fd(), w4.as_fd()]);
        drop((w1, w2, w3, w4));

        let mut out = Vec::new();
        assert_eq!(buffers.receive(b.as_fd(), SLOTS, &mut out).unwrap(), 5);
        assert_eq!(out.len(), 5);
        let whole = |received: &Received| match received {
            Received::Datagram(d) => (d.payload.clone(), d.credentials.map(|c| c.pid), d.fds.len()),
            other => panic!("expected a whole datagram, got {other:?}"),
        };
        let dropped = |received: &Received| match received {
            Received::Dropped {
                reason,
                credentials,
                len,
            } => (*reason, credentials.map(|c| c.pid), *len),
            other => panic!("expected a drop, got {other:?}"),
        };
        assert_eq!(whole(&out[0]), (b"A=1".to_vec(), own_pid(), 0));
        assert_eq!(whole(&out[1]), (b"B=2".to_vec(), own_pid(), 1));
        assert_eq!(
            dropped(&out[2]),
            (DropCause::Oversize, own_pid(), Some(MAX_DATAGRAM_LEN + 1))
        );
        assert_eq!(
            dropped(&out[3]),
            (DropCause::TooManyFds, own_pid(), Some(3))
        );
        assert_eq!(whole(&out[4]), (b"D=4".to_vec(), own_pid(), 2));
        let own = Credentials {
            pid: std::process::id(),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        };
        let Received::Datagram(d) = &out[0] else {
            unreachable!()
        };
        assert_eq!(d.credentials, Some(own));

        // Dropped datagrams: every fd that arrived is closed already.
        assert_eq!(read_end(&r2), Ok(0), "the oversize datagram's fd is open");
        assert_eq!(
            read_end(&r3),
            Ok(0),
            "an fd of the truncated datagram is open"
        );
        // Kept ones are the very pipe ends sent, open until the batch is dropped.
        let Received::Datagram(d) = &out[1] else {
            unreachable!()
        };
        assert_eq!(rustix::io::write(&d.fds[0], b"via B").unwrap(), 5);
        let mut got = [0u8; 8];
        assert_eq!(rustix::io::read(&r1, &mut got), Ok(5));
        assert_eq!(&got[..5], b"via B");
        assert_eq!(read_end(&r4), Err(Errno::AGAIN));
        drop(out);
        assert_eq!(read_end(&r1), Ok(0));
        assert_eq!(read_end(&r4), Ok(0));

        // Nothing left: EAGAIN, nothing appended.
        let mut out = Vec::new();
        let error = buffers.receive(b.as_fd(), SLOTS, &mut out).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        assert!(out.is_empty());
    }

    /// The kernel shrinks each header's `msg_controllen` to what it wrote; a slot that last
    /// held a datagram without fds must still take the most fds a datagram can carry.
    #[test]
    fn every_call_gets_the_whole_control_space_again() {
        let (a, b) = pair();
        let mut buffers = Buffers::new();
        for i in 0..SLOTS {
            send(&a, format!("X_N={i}").as_bytes(), &[]);
        }
        let mut out = Vec::new();
        assert_eq!(buffers.receive(b.as_fd(), SLOTS, &mut out).unwrap(), SLOTS);

        let (r, w) = pipe();
        let fds = [w.as_fd(); MAX_FDS_PER_DATAGRAM];
        send(&a, b"FIRST=1", &fds);
        send(&a, b"SECOND=1", &fds[..1]);
        drop(w);
        out.clear();
        assert_eq!(buffers.receive(b.as_fd(), SLOTS, &mut out).unwrap(), 2);
        let fd_counts: Vec<_> = out
            .iter()
            .map(|received| match received {
                Received::Datagram(d) => d.fds.len(),
                other => panic!("expected a whole datagram, got {other:?}"),
            })
            .collect();
        assert_eq!(fd_counts, [MAX_FDS_PER_DATAGRAM, 1]);
        assert_eq!(read_end(&r), Err(Errno::AGAIN));
        drop(out);
        assert_eq!(read_end(&r), Ok(0));
    }

    /// `max` caps one call; what is left stays queued, in order.
    #[test]
    fn a_call_takes_at_most_max_and_leaves_the_rest_in_order() {
        let (a, b) = pair();
        let mut buffers = Buffers::new();
        for i in 0..5 {
            send(&a, format!("X_N={i}").as_bytes(), &[]);
        }
        let payloads = |out: &[Received]| -> Vec<Vec<u8>> {
            out.iter()
                .map(|received| match received {
                    Received::Datagram(d) => d.payload.clone(),
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let mut out = Vec::new();
        assert_eq!(buffers.receive(b.as_fd(), 2, &mut out).unwrap(), 2);
        assert_eq!(payloads(&out), [b"X_N=0".to_vec(), b"X_N=1".to_vec()]);
        out.clear();
        assert_eq!(buffers.receive(b.as_fd(), SLOTS, &mut out).unwrap(), 3);
        assert_eq!(
            payloads(&out),
            [b"X_N=2".to_vec(), b"X_N=3".to_vec(), b"X_N=4".to_vec()]
        );
    }

    /// A zero-byte datagram is an empty payload, not the end of anything.
    #[test]
    fn an_empty_datagram_is_an_empty_payload() {
        let (a, b) = pair();
        let mut buffers = Buffers::new();
        send(&a, b"", &[]);
        let mut out = Vec::new();
        assert_eq!(buffers.receive(b.as_fd(), SLOTS, &mut out).unwrap(), 1);
        match &out[0] {
            Received::Datagram(d) => assert!(d.payload.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}
