//! Connection limits and the connection deadline over `HybridListener`, under load.
//!
//! A hybrid listener belongs to one VM, so all its connections count as **one peer**
//! (`max_connections_per_peer`, default 8, below `max_connections`, default 256): a storm from
//! one guest is cut by the per-peer limit, and another guest (another listener) is unaffected.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notifyhub_transport_vsock::{
    DEFAULT_MAX_CONNECTIONS_PER_PEER, DropCause, End, Event, HybridListener, ListenerConfig,
    Received, Sender,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PORT: u32 = 9999;
/// Nothing may take longer than this: a bound against hangs, not a timing assertion.
const BOUND: Duration = Duration::from_secs(10);
const STORM: usize = 1000;

struct Hub {
    _dir: tempfile::TempDir,
    path: PathBuf,
    cid: u32,
    events: mpsc::Receiver<Event>,
    cancel: CancellationToken,
    task: JoinHandle<io::Result<()>>,
}

impl Hub {
    fn start(cid: u32, config: ListenerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listener = HybridListener::bind(&dir.path().join("vm.vsock"), PORT, cid).unwrap();
        let path = listener.path().to_path_buf();
        let (tx, events) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(listener.run(config, tx, cancel.clone()));
        Self {
            _dir: dir,
            path,
            cid,
            events,
            cancel,
            task,
        }
    }

    fn sender(&self) -> Sender {
        Sender::Vsock {
            cid: self.cid,
            port: None,
        }
    }

    async fn next(&mut self) -> Event {
        tokio::time::timeout(BOUND, self.events.recv())
            .await
            .expect("an event within the bound")
            .expect("listener alive")
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(BOUND, self.task)
            .await
            .expect("listener stops within the bound")
            .unwrap()
            .unwrap();
    }
}

/// 1000 sockets plus the hub's side need more than a 1024 soft limit.
fn raise_fd_limit(want: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.current.is_some_and(|c| c < want) {
        let new = cur.maximum.map_or(want, |m| m.min(want));
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(new),
                maximum: cur.maximum,
            },
        )
        .expect("raise RLIMIT_NOFILE");
    }
}

/// Connects, retrying while the listen backlog is full (`EAGAIN` on a non-blocking connect).
async fn connect(path: &Path) -> UnixStream {
    let start = Instant::now();
    loop {
        match UnixStream::connect(path).await {
            Ok(conn) => return conn,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && start.elapsed() < BOUND => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
}

/// Did this error mean "the hub closed the connection"? Closing with unread bytes resets the
/// peer on `AF_UNIX`; writing after the close gives `EPIPE`.
fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// Holds `conn` open, writing `b'x'` every `every` if given, until the hub closes it. Fails if
/// the hub writes anything back. Returns the bytes written.
async fn hold_until_closed(mut conn: UnixStream, every: Option<Duration>) -> usize {
    let mut written = 0;
    let mut buf = [0u8; 16];
    let mut tick = every.map(tokio::time::interval);
    loop {
        let tick_fut = async {
            match tick.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = conn.read(&mut buf) => match read {
                Ok(0) => return written,
                Ok(n) => panic!("the hub wrote {:?} back", &buf[..n]),
                Err(e) if is_closed(&e) => return written,
                Err(e) => panic!("read: {e}"),
            },
            () = tick_fut => match conn.write(b"x").await {
                Ok(n) => written += n,
                Err(e) if is_closed(&e) => return written,
                Err(e) => panic!("write: {e}"),
            },
        }
    }
}

/// 1000 connections at once from one guest, half silent, half trickling faster than the idle
/// timeout: all closed, each reported once, nothing hangs; meanwhile another guest's message
/// on another listener is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_from_one_guest_is_cut_and_another_guest_is_delivered() {
    raise_fd_limit(4 * STORM as u64);
    let config = ListenerConfig::default();
    let mut storm_hub = Hub::start(40, config);
    let mut other = Hub::start(41, config);
    let started = Instant::now();

    let path = storm_hub.path.clone();
    let clients: Vec<JoinHandle<usize>> = (0..STORM)
        .map(|i| {
            let path = path.clone();
            tokio::spawn(async move {
                let conn = connect(&path).await;
                let every = (i % 2 == 1).then_some(Duration::from_millis(5));
                hold_until_closed(conn, every).await
            })
        })
        .collect();

    // Collect the storm's events while it runs; a full channel would stall the accept loop.
    let mut storm_events = Vec::with_capacity(STORM);
    while storm_events.len() < STORM / 2 {
        storm_events.push(storm_hub.next().await);
    }

    // Another guest, mid-storm: its message goes through at once.
    let collector = tokio::spawn(async move {
        while storm_events.len() < STORM {
            storm_events.push(storm_hub.next().await);
        }
        (storm_hub, storm_events)
    });
    let well_behaved = tokio::time::timeout(BOUND, async {
        let mut conn = connect(&other.path).await;
        conn.write_all(b"READY=1\nSTATUS=Ready.").await.unwrap();
        conn.shutdown().await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            conn.read(&mut buf).await.unwrap(),
            0,
            "nothing written back"
        );
        other.next().await
    })
    .await
    .expect("the other guest's message is delivered within the bound");
    assert_eq!(well_behaved.sender, other.sender());
    assert_eq!(
        well_behaved.received,
        Received::Message {
            payload: b"READY=1\nSTATUS=Ready.".to_vec(),
            end: End::Eof,
        }
    );

    for client in clients {
        tokio::time::timeout(BOUND, client)
            .await
            .expect("every storm connection is closed within the bound")
            .expect("client task");
    }
    let (mut storm_hub, storm_events) = tokio::time::timeout(BOUND, collector)
        .await
        .expect("every storm connection is reported within the bound")
        .unwrap();
    assert!(started.elapsed() < BOUND);

    let (mut limit, mut deadline, mut idle) = (0, 0, 0);
    for event in &storm_events {
        assert_eq!(event.sender, storm_hub.sender());
        match &event.received {
            Received::Dropped {
                reason: DropCause::PeerConnectionLimit,
                len: 0,
            } => limit += 1,
            Received::Dropped {
                reason: DropCause::Deadline,
                ..
            } => deadline += 1,
            // A trickler descheduled for longer than the idle timeout ends as a message.
            Received::Message {
                payload,
                end: End::Idle,
            } => {
                assert!(payload.iter().all(|&b| b == b'x'), "{payload:?}");
                idle += 1;
            }
            other => panic!("unexpected outcome in the storm: {other:?}"),
        }
    }
    eprintln!("storm: {limit} over the per-peer limit, {deadline} deadline, {idle} idle");
    assert_eq!(limit + deadline + idle, STORM, "one event per connection");
    assert!(
        deadline + idle >= DEFAULT_MAX_CONNECTIONS_PER_PEER,
        "the first {DEFAULT_MAX_CONNECTIONS_PER_PEER} were read"
    );
    assert!(
        limit >= STORM / 2,
        "the storm was cut by the per-peer limit"
    );
    assert!(
        storm_hub.events.try_recv().is_err(),
        "no event beyond one per connection"
    );
    storm_hub.stop().await;
    other.stop().await;
}

fn short_deadline(idle_ms: u64, deadline_ms: u64) -> ListenerConfig {
    let mut config = ListenerConfig::default();
    config.idle_timeout = Duration::from_millis(idle_ms);
    config.connection_deadline = Duration::from_millis(deadline_ms);
    config
}

/// A guest that connects and never writes is closed at the deadline and reported.
#[tokio::test]
async fn silent_connection_is_closed_at_the_deadline() {
    let config = short_deadline(20, 300);
    let mut hub = Hub::start(42, config);
    let start = Instant::now();
    let conn = connect(&hub.path).await;
    let written = tokio::time::timeout(BOUND, hold_until_closed(conn, None))
        .await
        .expect("closed within the bound");
    let waited = start.elapsed();
    assert_eq!(written, 0);
    assert!(
        waited >= config.connection_deadline,
        "closed after {waited:?}"
    );
    let event = hub.next().await;
    assert_eq!(event.sender, hub.sender());
    assert_eq!(
        event.received,
        Received::Dropped {
            reason: DropCause::Deadline,
            len: 0
        }
    );
    hub.stop().await;
}

/// A byte every 50 ms, below the idle timeout, never completes a message: at the deadline the
/// bytes (a possible prefix) are dropped, the connection closed and the drop reported.
#[tokio::test]
async fn trickle_past_the_deadline_is_dropped() {
    // The idle timeout must exceed the 50 ms gap, or each byte would be a message of its own.
    let config = short_deadline(150, 500);
    let mut hub = Hub::start(43, config);
    let start = Instant::now();
    let conn = connect(&hub.path).await;
    let written = tokio::time::timeout(
        BOUND,
        hold_until_closed(conn, Some(Duration::from_millis(50))),
    )
    .await
    .expect("closed within the bound");
    let waited = start.elapsed();
    assert!(
        waited >= config.connection_deadline,
        "closed after {waited:?}"
    );
    let event = hub.next().await;
    assert_eq!(event.sender, hub.sender());
    let Received::Dropped {
        reason: DropCause::Deadline,
        len,
    } = event.received
    else {
        panic!("not a deadline drop: {:?}", event.received);
    };
    assert!(len >= 2 && len <= written, "read {len} of {written} bytes");
    hub.stop().await;
}
