//! Kernel `AF_VSOCK` listeners (`vsock(7)`), `SOCK_STREAM` and `SOCK_SEQPACKET`.

use std::io;
use std::os::fd::OwnedFd;

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream};

use crate::serve::{Acceptor, Peer, serve};
use crate::{Event, ListenerConfig, Sender, VMADDR_CID_ANY};

/// `listen(2)` backlog of every listener: 128, what tokio-vsock's `SOCK_STREAM` bind uses (as
/// `std::net::TcpListener::bind`). Guests beyond it wait in `connect()`; a guest's PID 1 has at
/// most one connection open at a time.
pub(crate) const BACKLOG: i32 = 128;

/// A kernel `AF_VSOCK` `SOCK_STREAM` listener on `(VMADDR_CID_ANY, port)`: what a guest given
/// `vmm.notify_socket=vsock-stream:2:PORT` connects to (systemd-vmspawn and mkosi hand out
/// that form), through any VMM whose vsock device uses the host kernel (`vhost-vsock`: QEMU's
/// `vhost-vsock-pci`, crosvm).
///
/// Each connection gives one [`Event`] by the [read rule](crate#the-read-rule), with
/// [`Sender::Vsock`] carrying the peer's CID and source port from `accept()`. Like
/// systemd-vmspawn, it accepts any CID and port; checking them is the caller's policy.
#[derive(Debug)]
pub struct VsockStreamListener {
    inner: KernelListener,
}

impl VsockStreamListener {
    /// Binds and listens on `(VMADDR_CID_ANY, port)`. `port` [`VMADDR_PORT_ANY`](crate::VMADDR_PORT_ANY)
    /// lets the kernel choose a free port (as systemd-vmspawn does); read it back with
    /// [`local_port`](Self::local_port).
    ///
    /// # Errors
    ///
    /// Those of `socket(2)`, `bind(2)` and `listen(2)`, as is; notably `EAFNOSUPPORT` when the
    /// kernel has no `AF_VSOCK`, `EADDRNOTAVAIL` when no vsock transport is loaded (no
    /// `vhost_vsock`, `vsock_loopback`, ...), `EADDRINUSE` ([`io::ErrorKind::AddrInUse`]) when the
    /// port is taken, and `EACCES` for a port below 1024 without `CAP_NET_BIND_SERVICE`.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime with I/O enabled (as `tokio::io::unix::AsyncFd`).
    pub fn bind(port: u32) -> io::Result<Self> {
        Ok(Self {
            inner: KernelListener::bind(Type::STREAM, port)?,
        })
    }

    /// Takes over a listening `AF_VSOCK` `SOCK_STREAM` socket bound by someone else: a service
    /// manager's `ListenStream=vsock::PORT` (socket activation). The caller has checked the
    /// socket's family, type and that it listens (`SO_ACCEPTCONN`).
    ///
    /// # Errors
    ///
    /// Those of `fcntl(2)` and `getsockname(2)`, as is.
    ///
    /// # Panics
    ///
    /// As [`VsockSeqpacketListener::bind`].
    pub fn from_listening(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            inner: KernelListener::from_listening(fd)?,
        })
    }

    /// The port this listener is bound to: the `PORT` to hand out.
    pub fn local_port(&self) -> u32 {
        self.inner.port
    }

    /// Accepts connections until `cancel` is cancelled or `events`' receiver is dropped, and
    /// sends one [`Event`] per connection; spawn it with `tokio::spawn`.
    ///
    /// Every connection is read in a task of its own (a slow guest delays nobody), within the
    /// [limits](crate#limits) of `config`, and closed as soon as its message is read, before
    /// its event is sent; nothing is ever written to a guest. When `run` returns, every
    /// connection still open is closed and its message lost (its guest is released).
    ///
    /// Accept errors of one pending connection (`ECONNABORTED`, `EPROTO`, network errors, as
    /// `accept(2)` advises) are skipped; running out of fds or memory (`EMFILE`, `ENFILE`,
    /// `ENOBUFS`, `ENOMEM`) is logged with `tracing` and retried after 100 ms.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if `config` fails [`ListenerConfig::validate`]; any
    /// other error of `accept(2)` (the listener is unusable). `Ok(())` after cancellation or
    /// when the receiver is gone.
    ///
    /// # Panics
    ///
    /// If a connection task panics (a bug), the panic is resumed here.
    pub async fn run(
        self,
        config: ListenerConfig,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> io::Result<()> {
        serve(self.inner, config, events, cancel).await
    }
}

/// A kernel `AF_VSOCK` `SOCK_SEQPACKET` listener on `(VMADDR_CID_ANY, port)`: what a guest given
/// the plain `vmm.notify_socket=vsock:2:PORT` (or `vsock-seqpacket:2:PORT`) connects to over
/// virtio-vsock. systemd tries `SOCK_DGRAM` first and falls back to `SOCK_SEQPACKET` only when
/// `socket()` fails, which it does on virtio-vsock; it never falls back to `SOCK_STREAM`
/// (`src/libsystemd/sd-daemon/sd-daemon.c`). `SOCK_STREAM` and `SOCK_SEQPACKET` share the
/// kernel's vsock port space (`vsock_bind_table`, `net/vmw_vsock/af_vsock.c`): one port cannot
/// have both listeners, so hand out `vsock-stream:2:P` and `vsock-seqpacket:2:Q` (or plain
/// `vsock:2:Q`) with `P != Q`.
///
/// Records are read until EOF (`recv` returning 0) and concatenated; a record that does not fit
/// the 4096 bytes counts as [`DropCause::Oversize`](crate::DropCause::Oversize). Otherwise
/// exactly as [`VsockStreamListener`]: same read rule, limits, [`Event`]s and errors.
#[derive(Debug)]
pub struct VsockSeqpacketListener {
    inner: KernelListener,
}

impl VsockSeqpacketListener {
    /// Binds and listens on `(VMADDR_CID_ANY, port)`; see [`VsockStreamListener::bind`].
    ///
    /// # Errors
    ///
    /// As [`VsockStreamListener::bind`]; also `ESOCKTNOSUPPORT` from a kernel older than 5.14
    /// (no vsock `SOCK_SEQPACKET`).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime with I/O enabled, or if registering the bound socket with the
    /// reactor fails (`epoll_ctl` out of memory or watches): tokio-vsock's `From<OwnedFd>`,
    /// the only sound way in without `unsafe`, unwraps that error.
    pub fn bind(port: u32) -> io::Result<Self> {
        Ok(Self {
            inner: KernelListener::bind(Type::SEQPACKET, port)?,
        })
    }

    /// Takes over a listening `AF_VSOCK` `SOCK_SEQPACKET` socket bound by someone else; see
    /// [`VsockStreamListener::from_listening`].
    ///
    /// # Errors
    ///
    /// As [`VsockStreamListener::from_listening`].
    ///
    /// # Panics
    ///
    /// As [`VsockSeqpacketListener::bind`].
    pub fn from_listening(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            inner: KernelListener::from_listening(fd)?,
        })
    }

    /// The port this listener is bound to: the `PORT` to hand out.
    pub fn local_port(&self) -> u32 {
        self.inner.port
    }

    /// Accepts connections and sends one [`Event`] per connection; see
    /// [`VsockStreamListener::run`].
    ///
    /// # Errors
    ///
    /// As [`VsockStreamListener::run`].
    pub async fn run(
        self,
        config: ListenerConfig,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> io::Result<()> {
        serve(self.inner, config, events, cancel).await
    }
}

/// A listening vsock socket registered with Tokio through `tokio-vsock`, which owns the fd and
/// registers it with the reactor soundly (Tokio 1.54 deprecated the safe `AsyncFd::new` as
/// unsound; this crate has no `unsafe`).
#[derive(Debug)]
struct KernelListener {
    listener: VsockListener,
    port: u32,
}

impl KernelListener {
    fn bind(ty: Type, port: u32) -> io::Result<Self> {
        let addr = VsockAddr::new(VMADDR_CID_ANY, port);
        let listener = if ty == Type::STREAM {
            VsockListener::bind(addr)?
        } else {
            // tokio-vsock binds only SOCK_STREAM, but its listener and streams work on any
            // vsock socket fd (accept(2), read(2)). socket2 adds SOCK_CLOEXEC on Linux.
            let socket = Socket::new(Domain::VSOCK, ty, None)?;
            socket.bind(&SockAddr::vsock(VMADDR_CID_ANY, port))?;
            socket.listen(BACKLOG)?;
            VsockListener::from(OwnedFd::from(socket))
        };
        let port = listener.local_addr()?.port();
        Ok(Self { listener, port })
    }

    fn from_listening(fd: OwnedFd) -> io::Result<Self> {
        let listener = VsockListener::from(fd);
        let port = listener.local_addr()?.port();
        Ok(Self { listener, port })
    }
}

impl Acceptor for KernelListener {
    type Conn = VsockStream;

    async fn accept(&self) -> io::Result<(VsockStream, Peer)> {
        let (stream, addr) = self.listener.accept().await?;
        let peer = Peer {
            sender: Sender::Vsock {
                cid: addr.cid(),
                port: Some(addr.port()),
            },
            key: addr.cid(),
        };
        Ok((stream, peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DropCause, End, MAX_DATAGRAM_LEN, Received, read_message};
    use std::io::Read;
    use std::net::Shutdown;

    /// A connected `AF_UNIX` pair standing in for vsock (this machine has no vsock loopback
    /// transport): ours is the very type an accepted connection is, the guest's end blocking.
    fn pair(ty: Type) -> (VsockStream, Socket) {
        let (ours, guest) = Socket::pair(Domain::UNIX, ty, None).unwrap();
        (VsockStream::from(OwnedFd::from(ours)), guest)
    }

    /// `SOCK_SEQPACKET` (here `AF_UNIX`, same record semantics as vsock): records are
    /// concatenated and a 0-byte `recv` is EOF.
    #[tokio::test]
    async fn seqpacket_records_until_eof() {
        let (mut conn, guest) = pair(Type::SEQPACKET);
        guest.send(b"READY=1\n").unwrap();
        guest.send(b"STATUS=Ready.").unwrap();
        guest.shutdown(Shutdown::Write).unwrap();
        let got = read_message(&mut conn, &ListenerConfig::default()).await;
        assert_eq!(
            got,
            Received::Message {
                payload: b"READY=1\nSTATUS=Ready.".to_vec(),
                end: End::Eof
            }
        );
        drop(conn);
        let mut byte = [0u8; 1];
        assert_eq!((&guest).read(&mut byte).unwrap(), 0, "nothing written back");
    }

    /// One 4096-byte record fits; a longer record, which `recv` would cut silently, is dropped.
    #[tokio::test]
    async fn seqpacket_record_sizes() {
        let (mut conn, guest) = pair(Type::SEQPACKET);
        guest.send(&[b'A'; MAX_DATAGRAM_LEN]).unwrap();
        guest.shutdown(Shutdown::Write).unwrap();
        match read_message(&mut conn, &ListenerConfig::default()).await {
            Received::Message { payload, end } => {
                assert_eq!(payload.len(), MAX_DATAGRAM_LEN);
                assert_eq!(end, End::Eof);
            }
            other => panic!("{other:?}"),
        }

        let (mut conn, guest) = pair(Type::SEQPACKET);
        guest.send(&[b'A'; 5000]).unwrap();
        let got = read_message(&mut conn, &ListenerConfig::default()).await;
        assert_eq!(
            got,
            Received::Dropped {
                reason: DropCause::Oversize,
                len: MAX_DATAGRAM_LEN + 1
            }
        );

        // Two records that together pass the limit, the second cut by the buffer.
        let (mut conn, guest) = pair(Type::SEQPACKET);
        guest.send(&[b'A'; 4000]).unwrap();
        guest.send(&[b'B'; 200]).unwrap();
        let got = read_message(&mut conn, &ListenerConfig::default()).await;
        assert!(
            matches!(
                got,
                Received::Dropped {
                    reason: DropCause::Oversize,
                    ..
                }
            ),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn stream_through_socket_conn() {
        let (mut conn, guest) = pair(Type::STREAM);
        std::io::Write::write_all(&mut &guest, b"X_SYSTEMD_HOSTNAME=vm1").unwrap();
        let got = read_message(&mut conn, &ListenerConfig::default()).await;
        assert_eq!(
            got,
            Received::Message {
                payload: b"X_SYSTEMD_HOSTNAME=vm1".to_vec(),
                end: End::Idle
            }
        );
    }

    /// The whole accept loop over a kernel listener, with an `AF_UNIX` `SOCK_SEQPACKET` socket
    /// standing in for vsock (this machine has no vsock loopback transport).
    #[tokio::test]
    async fn serve_seqpacket_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seq");
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        socket.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        socket.listen(BACKLOG).unwrap();
        let listener = KernelListener {
            listener: VsockListener::from(OwnedFd::from(socket)),
            port: 0,
        };
        let (tx, mut rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            ListenerConfig::default(),
            tx,
            cancel.clone(),
        ));

        let guest = tokio::task::spawn_blocking(move || {
            let guest = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
            guest.connect(&SockAddr::unix(&path).unwrap()).unwrap();
            guest.send(b"READY=1").unwrap();
            guest.shutdown(Shutdown::Write).unwrap();
            // systemd blocks here until the receiver closes.
            let mut byte = [0u8; 1];
            (&guest).read(&mut byte).unwrap()
        });
        let event = rx.recv().await.unwrap();
        // An unnamed AF_UNIX peer fills no `sockaddr_vm` field.
        assert_eq!(
            event.sender,
            Sender::Vsock {
                cid: 0,
                port: Some(0)
            }
        );
        assert_eq!(
            event.received,
            Received::Message {
                payload: b"READY=1".to_vec(),
                end: End::Eof
            }
        );
        assert_eq!(guest.await.unwrap(), 0, "EOF, no byte written back");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
}
