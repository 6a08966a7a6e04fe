//! The whole path through a `HybridListener`: a guest's connection as a vsock bridge
//! (Firecracker, `vhost-device-vsock`) delivers it to `<uds_path>_<port>`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notifyhub_transport_vsock::{
    DropCause, End, Event, HybridListener, ListenerConfig, MAX_DATAGRAM_LEN, Received, Sender,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const CID: u32 = 42;
const PORT: u32 = 9999;

struct Hub {
    _dir: tempfile::TempDir,
    path: PathBuf,
    events: mpsc::Receiver<Event>,
    cancel: CancellationToken,
    task: JoinHandle<io::Result<()>>,
}

impl Hub {
    fn start(config: ListenerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listener = HybridListener::bind(&dir.path().join("vm.vsock"), PORT, CID).unwrap();
        let path = listener.path().to_path_buf();
        assert_eq!(path, dir.path().join(format!("vm.vsock_{PORT}")));
        let (tx, events) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(listener.run(config, tx, cancel.clone()));
        Self {
            _dir: dir,
            path,
            events,
            cancel,
            task,
        }
    }

    async fn next(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(5), self.events.recv())
            .await
            .expect("an event within 5 s")
            .expect("listener alive")
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap().unwrap();
        assert!(!self.path.exists(), "socket file removed when run ends");
    }
}

fn sender() -> Sender {
    Sender::Vsock {
        cid: CID,
        port: None,
    }
}

fn message(payload: &[u8], end: End) -> Received {
    Received::Message {
        payload: payload.to_vec(),
        end,
    }
}

/// What systemd's sender does after writing: wait for the receiver's close. Returns the time
/// it waited; fails if any byte comes back (systemd would fail with EPROTO).
async fn wait_for_close(conn: &mut UnixStream) -> io::Result<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = conn.read(&mut buf).await?;
    assert_eq!(n, 0, "the receiver wrote {:?} back", &buf[..n]);
    Ok(start.elapsed())
}

#[tokio::test]
async fn message_with_eof() {
    let mut hub = Hub::start(ListenerConfig::default());
    let mut guest = UnixStream::connect(&hub.path).await.unwrap();
    guest.write_all(b"READY=1\nSTATUS=Ready.").await.unwrap();
    guest.shutdown().await.unwrap();
    wait_for_close(&mut guest).await.unwrap();
    let event = hub.next().await;
    assert_eq!(event.sender, sender());
    assert_eq!(event.received, message(b"READY=1\nSTATUS=Ready.", End::Eof));
    hub.stop().await;
}

/// The bridge loses SHUT_WR: the guest waits only about the idle timeout for the close.
#[tokio::test]
async fn message_without_eof_is_closed_after_idle_timeout() {
    let mut config = ListenerConfig::default();
    config.idle_timeout = Duration::from_millis(50);
    let mut hub = Hub::start(config);
    let mut guest = UnixStream::connect(&hub.path).await.unwrap();
    guest.write_all(b"X_SYSTEMD_HOSTNAME=vm1").await.unwrap();
    let waited = wait_for_close(&mut guest).await.unwrap();
    assert!(
        waited < 10 * config.idle_timeout,
        "closed {waited:?} after the last byte"
    );
    let event = hub.next().await;
    assert_eq!(
        event.received,
        message(b"X_SYSTEMD_HOSTNAME=vm1", End::Idle)
    );
    hub.stop().await;
}

#[tokio::test]
async fn empty_connection_is_no_message() {
    let mut hub = Hub::start(ListenerConfig::default());
    let mut guest = UnixStream::connect(&hub.path).await.unwrap();
    guest.shutdown().await.unwrap();
    wait_for_close(&mut guest).await.unwrap();
    assert_eq!(
        hub.next().await.received,
        Received::Dropped {
            reason: DropCause::Empty,
            len: 0
        }
    );
    hub.stop().await;
}

/// 4096 bytes pass; 4097 are dropped and the connection closed without waiting for EOF.
#[tokio::test]
async fn size_limit() {
    let mut hub = Hub::start(ListenerConfig::default());
    let mut guest = UnixStream::connect(&hub.path).await.unwrap();
    guest.write_all(&[b'A'; MAX_DATAGRAM_LEN]).await.unwrap();
    guest.shutdown().await.unwrap();
    wait_for_close(&mut guest).await.unwrap();
    assert_eq!(
        hub.next().await.received,
        message(&[b'A'; MAX_DATAGRAM_LEN], End::Eof)
    );

    let mut guest = UnixStream::connect(&hub.path).await.unwrap();
    guest
        .write_all(&[b'A'; MAX_DATAGRAM_LEN + 1])
        .await
        .unwrap();
    // No EOF sent: the drop alone closes it. Closing with unread bytes may reset instead.
    match wait_for_close(&mut guest).await {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert_eq!(
        hub.next().await.received,
        Received::Dropped {
            reason: DropCause::Oversize,
            len: MAX_DATAGRAM_LEN + 1
        }
    );
    hub.stop().await;
}

/// Over either limit a connection is closed at once, unread, and reported; the open one is
/// unaffected and its slot comes back when it ends.
#[tokio::test]
async fn connection_limits() {
    for (max_connections, max_connections_per_peer, reason) in [
        (1, 8, DropCause::ConnectionLimit),
        (8, 1, DropCause::PeerConnectionLimit),
    ] {
        let mut config = ListenerConfig::default();
        config.max_connections = max_connections;
        config.max_connections_per_peer = max_connections_per_peer;
        let mut hub = Hub::start(config);
        let mut first = UnixStream::connect(&hub.path).await.unwrap();
        first.write_all(b"A=1").await.unwrap(); // Holds its slot until the idle timeout.
        let mut second = UnixStream::connect(&hub.path).await.unwrap();
        let start = Instant::now();
        wait_for_close(&mut second).await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
        let event = hub.next().await;
        assert_eq!(event.sender, sender());
        assert_eq!(event.received, Received::Dropped { reason, len: 0 });
        assert_eq!(hub.next().await.received, message(b"A=1", End::Idle));
        wait_for_close(&mut first).await.unwrap();

        let mut third = UnixStream::connect(&hub.path).await.unwrap();
        third.write_all(b"B=2").await.unwrap();
        third.shutdown().await.unwrap();
        assert_eq!(hub.next().await.received, message(b"B=2", End::Eof));
        hub.stop().await;
    }
}

/// Many connections at once, each blocked until its own close: all heard, none stalled.
#[tokio::test]
async fn concurrent_connections() {
    // A hybrid listener is one peer: raise the per-peer limit (default 8) above 32.
    let mut config = ListenerConfig::default();
    config.max_connections_per_peer = 64;
    let mut hub = Hub::start(config);
    let mut guests = Vec::new();
    for i in 0..32 {
        let path = hub.path.clone();
        guests.push(tokio::spawn(async move {
            let mut guest = UnixStream::connect(&path).await.unwrap();
            guest.write_all(format!("N={i}").as_bytes()).await.unwrap();
            wait_for_close(&mut guest).await.unwrap()
        }));
    }
    let mut seen = Vec::new();
    for _ in 0..32 {
        match hub.next().await.received {
            Received::Message { payload, .. } => seen.push(String::from_utf8(payload).unwrap()),
            other => panic!("{other:?}"),
        }
    }
    for guest in guests {
        assert!(guest.await.unwrap() < Duration::from_secs(1));
    }
    seen.sort();
    let mut want: Vec<_> = (0..32).map(|i| format!("N={i}")).collect();
    want.sort();
    assert_eq!(seen, want);
    hub.stop().await;
}

/// Cancelling closes the open connections (their guests are released) and ends `run`.
#[tokio::test]
async fn cancel_closes_open_connections() {
    let mut config = ListenerConfig::default();
    config.connection_deadline = Duration::from_secs(60);
    let hub = Hub::start(config);
    let mut guest = UnixStream::connect(&hub.path).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await; // Let it be accepted.
    let path = hub.path.clone();
    hub.stop().await;
    tokio::time::timeout(Duration::from_secs(1), wait_for_close(&mut guest))
        .await
        .expect("released at once")
        .unwrap();
    assert!(UnixStream::connect(&path).await.is_err());
}

#[tokio::test]
async fn run_ends_when_the_receiver_is_dropped() {
    let hub = Hub::start(ListenerConfig::default());
    drop(hub.events);
    tokio::time::timeout(Duration::from_secs(1), hub.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn run_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let listener = HybridListener::bind(&dir.path().join("vm.vsock"), PORT, CID).unwrap();
    let mut config = ListenerConfig::default();
    config.max_connections = 0;
    let (tx, _rx) = mpsc::channel(1);
    let err = listener
        .run(config, tx, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn bind_replaces_only_stale_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vm.vsock");
    let path = dir.path().join(format!("vm.vsock_{PORT}"));

    // A stale socket (its listener is gone) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let live = HybridListener::bind(&uds, PORT, CID).unwrap();

    // A live one is refused and left alone.
    let err = HybridListener::bind(&uds, PORT, CID).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    drop(live);
    assert!(!path.exists(), "drop removes the file");

    // A regular file is never replaced.
    std::fs::write(&path, b"data").unwrap();
    let err = HybridListener::bind(&uds, PORT, CID).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
}

#[tokio::test]
async fn bind_mode_and_path_length() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let listener =
        HybridListener::bind_with_mode(&dir.path().join("vm.vsock"), PORT, CID, 0o660).unwrap();
    let mode = std::fs::metadata(listener.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    assert_eq!(listener.guest_cid(), CID);

    let err = HybridListener::bind_with_mode(&dir.path().join("x"), PORT, CID, 0o1777).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

    // "_9999" makes 108 bytes out of a 103-byte uds path.
    let long = Path::new("/tmp").join("a".repeat(103 - 5));
    assert_eq!(long.as_os_str().len(), 103);
    let err = HybridListener::bind(&long, PORT, CID).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("107"), "{err}");
}

/// Bound while another thread's I/O driver sits in `epoll_wait`, a listener still accepts.
/// (Registered with Tokio before `listen()`, a stream socket polls as hung up, `unix_poll()`;
/// Tokio keeps a hang-up for good, and `accept()` then spun on `EAGAIN` within one poll.)
#[test]
fn accepts_when_bound_while_the_driver_polls() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let all_accepted = runtime.block_on(async {
        for _ in 0..50 {
            let mut hub = Hub::start(ListenerConfig::default());
            let mut conn = UnixStream::connect(&hub.path).await.unwrap();
            conn.write_all(b"READY=1").await.unwrap();
            conn.shutdown().await.unwrap();
            match tokio::time::timeout(Duration::from_secs(5), hub.events.recv()).await {
                Ok(Some(event)) => assert_eq!(event.received, message(b"READY=1", End::Eof)),
                _ => return false,
            }
            hub.stop().await;
        }
        true
    });
    if !all_accepted {
        // Its worker spins inside one poll, which would hang the runtime's drop.
        std::mem::forget(runtime);
        panic!("a listener did not accept within 5 s");
    }
}

/// A live socket whose listen backlog is full is refused at once, not waited on: the probe that
/// tells a stale socket from a live one does not block (a blocking `connect()` to a full UNIX
/// stream listener waits until it accepts, here never).
#[tokio::test]
async fn bind_refuses_a_live_socket_with_a_full_backlog_without_waiting() {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vm.vsock");
    let path = dir.path().join(format!("vm.vsock_{PORT}"));
    let socket = || {
        rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap()
    };
    let address = SocketAddrUnix::new(&path).unwrap();
    // Somebody listens with a backlog of one connection and never accepts.
    let live = socket();
    rustix::net::bind(&live, &address).unwrap();
    rustix::net::listen(&live, 0).unwrap();
    let mut queued = Vec::new();
    loop {
        let client = socket();
        match rustix::net::connect(&client, &address) {
            Ok(()) => queued.push(client),
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => panic!("connect: {e}"),
        }
        assert!(queued.len() < 100, "the backlog never filled");
    }
    assert!(!queued.is_empty());

    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = std::sync::mpsc::channel();
    let probe_uds = uds.clone();
    std::thread::spawn(move || {
        let _runtime = runtime.enter();
        let _ = tx.send(HybridListener::bind(&probe_uds, PORT, CID).map(drop));
    });
    // A liveness bound: the answer takes microseconds.
    let err = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("bind blocked on the full backlog")
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    assert!(path.exists(), "the live socket is left alone");
}
