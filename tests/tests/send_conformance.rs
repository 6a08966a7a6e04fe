//! `notifyhub send` against Debian 12's `/usr/bin/systemd-notify` (v252): for equivalent
//! requests both put byte-identical datagrams on the wire, as seen by our own receiver
//! (`NotifySocket` in a tempdir, or a plain abstract socket). The argument mapping is in
//! `web/CLI.md` (section "Sending from a guest without systemd-notify").
//!
//! Each sender runs to completion with the receiver taking every datagram and closing received
//! fds at once (so the barrier passes); then payloads and fd counts are compared, not fd
//! numbers.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use notifyhub_transport_unix::{NotifySocket, Received};
use tokio::process::{Child, Command};

const SYSTEMD_NOTIFY: &str = "/usr/bin/systemd-notify";
/// Twice the senders' own 5 s barrier timeout.
const RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// After a sender exited, its datagrams are already queued: a recv returns at once.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(300);

/// What one sender put on the wire: `(payload, fd count, whether the credentials name the test
/// process)` per datagram. Sender pids differ from run to run, so only a claimed pid compares.
type Wire = Vec<(String, usize, bool)>;

fn spawn(program: &Path, args: &[String], socket: &str) -> Child {
    Command::new(program)
        .args(args)
        .env("NOTIFY_SOCKET", socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()))
}

fn systemd_notify() -> &'static Path {
    let path = Path::new(SYSTEMD_NOTIFY);
    assert!(
        path.is_file(),
        "{SYSTEMD_NOTIFY} is missing: run scripts/setup (it installs the `systemd` package)"
    );
    path
}

/// Runs `program args` with `NOTIFY_SOCKET` set to a fresh socket; takes every datagram (closing
/// its fds at once) until the program exited and the queue is empty. Asserts exit 0.
async fn capture(program: &Path, args: &[String]) -> Wire {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = NotifySocket::bind(&path).unwrap();
    let mut child = spawn(program, args, path.to_str().unwrap());
    let mut wire = Wire::new();
    let mut status: Option<ExitStatus> = None;
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let received = if status.is_some() {
            match tokio::time::timeout(DRAIN_TIMEOUT, socket.recv()).await {
                Ok(received) => received,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                received = socket.recv() => received,
                exit = child.wait() => {
                    status = Some(exit.unwrap());
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => {
                    panic!("{} {args:?} still running after {RUN_TIMEOUT:?}", program.display())
                }
            }
        };
        match received.unwrap() {
            Received::Datagram(datagram) => wire.push((
                String::from_utf8(datagram.payload).unwrap(),
                datagram.fds.len(),
                datagram
                    .credentials
                    .is_some_and(|c| c.pid == std::process::id()),
            )),
            other => panic!("{} {args:?}: {other:?}", program.display()),
        }
        // The datagram's fds were dropped, so closed: every earlier message is "processed".
    }
    let status = status.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        status.success(),
        "{} {args:?} exited with {status}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    wire
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// One row: what `systemd-notify` is given, what `notifyhub send` is given, and the message
/// both must send. `{pid}` stands for the test process's pid.
struct Row {
    name: &'static str,
    systemd_notify: &'static [&'static str],
    notifyhub_send: &'static [&'static str],
    message: &'static str,
}

const TABLE: &[Row] = &[
    Row {
        name: "--ready",
        systemd_notify: &["--ready"],
        notifyhub_send: &["--ready"],
        message: "READY=1",
    },
    Row {
        name: "READY=1 as an assignment",
        systemd_notify: &["--ready"],
        notifyhub_send: &["READY=1"],
        message: "READY=1",
    },
    Row {
        name: "--status",
        systemd_notify: &["--status=Hello"],
        notifyhub_send: &["--status", "Hello"],
        message: "STATUS=Hello",
    },
    Row {
        name: "--status with spaces and UTF-8",
        systemd_notify: &["--status=Serving 3 clients: ünïcode ✓"],
        notifyhub_send: &["--status=Serving 3 clients: ünïcode ✓"],
        message: "STATUS=Serving 3 clients: ünïcode ✓",
    },
    Row {
        name: "--ready --status and an assignment",
        systemd_notify: &["--ready", "--status=x", "FOO=bar"],
        notifyhub_send: &["--ready", "--status", "x", "FOO=bar"],
        message: "READY=1\nSTATUS=x\nFOO=bar",
    },
    Row {
        name: "--pid: systemd-notify adds MAINPID=, notifyhub send takes it explicitly",
        systemd_notify: &["--ready", "--pid={pid}"],
        notifyhub_send: &["--ready", "--pid={pid}", "MAINPID={pid}"],
        message: "READY=1\nMAINPID={pid}",
    },
    Row {
        name: "STOPPING=1",
        systemd_notify: &["STOPPING=1"],
        notifyhub_send: &["STOPPING=1"],
        message: "STOPPING=1",
    },
    Row {
        name: "RELOADING=1",
        systemd_notify: &["RELOADING=1"],
        notifyhub_send: &["RELOADING=1"],
        message: "RELOADING=1",
    },
    Row {
        name: "WATCHDOG=1",
        systemd_notify: &["WATCHDOG=1"],
        notifyhub_send: &["WATCHDOG=1"],
        message: "WATCHDOG=1",
    },
    Row {
        name: "several assignments in order",
        systemd_notify: &["RELOADING=1", "MONOTONIC_USEC=123", "STATUS=Reloading"],
        notifyhub_send: &["RELOADING=1", "MONOTONIC_USEC=123", "STATUS=Reloading"],
        message: "RELOADING=1\nMONOTONIC_USEC=123\nSTATUS=Reloading",
    },
];

fn expand(args: &[&str], extra: &[&str]) -> Vec<String> {
    let pid = std::process::id().to_string();
    args.iter()
        .chain(extra)
        .map(|a| a.replace("{pid}", &pid))
        .collect()
}

/// Payloads and fd counts, without the credentials.
fn bytes(wire: &Wire) -> Vec<(&str, usize)> {
    wire.iter().map(|(p, n, _)| (p.as_str(), *n)).collect()
}

/// With `--no-block`, the message alone: its bytes and fd count agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_alone_is_byte_identical() {
    let hub = notifyhub_tests::hub_binary();
    for row in TABLE {
        let expected = row
            .message
            .replace("{pid}", &std::process::id().to_string());
        let theirs = capture(
            systemd_notify(),
            &expand(row.systemd_notify, &["--no-block"]),
        )
        .await;
        let mut send = strings(&["send", "--no-block"]);
        send.extend(expand(row.notifyhub_send, &[]));
        let ours = capture(&hub, &send).await;
        assert_eq!(
            theirs.len(),
            1,
            "{}: systemd-notify sent {theirs:?}",
            row.name
        );
        assert_eq!(
            (theirs[0].0.as_str(), theirs[0].1),
            (expected.as_str(), 0),
            "{}: systemd-notify",
            row.name
        );
        assert_eq!(
            bytes(&ours),
            bytes(&theirs),
            "{}: notifyhub send vs systemd-notify",
            row.name
        );
    }
}

/// Without `--no-block`: the message, then `BARRIER=1` with exactly one fd, from both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_barrier_both_send_the_same_two_datagrams() {
    let hub = notifyhub_tests::hub_binary();
    for row in &TABLE[..5] {
        let theirs = capture(systemd_notify(), &expand(row.systemd_notify, &[])).await;
        let mut send = strings(&["send"]);
        send.extend(expand(row.notifyhub_send, &[]));
        let ours = capture(&hub, &send).await;
        assert_eq!(
            bytes(&theirs),
            [(row.message, 0), ("BARRIER=1", 1)],
            "{}: systemd-notify",
            row.name
        );
        assert_eq!(
            bytes(&ours),
            bytes(&theirs),
            "{}: notifyhub send vs systemd-notify",
            row.name
        );
    }
}

/// Credentials (not bytes, so not in the table): systemd-notify 252, run as root here, sends the
/// message as its parent (the caller; `sd_pid_notify(getppid(), …)`) and the barrier as itself.
/// `notifyhub send` sends as itself unless told `--pid=parent` (or `--pid=PID`), and then sends
/// the barrier with the claimed pid too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_match_with_pid_parent() {
    assert!(
        rustix::process::geteuid().is_root(),
        "claiming another pid needs root; the test suite runs as root (scripts/test)"
    );
    let hub = notifyhub_tests::hub_binary();
    let theirs = capture(systemd_notify(), &strings(&["--ready"])).await;
    let parent = capture(&hub, &strings(&["send", "--pid=parent", "--ready"])).await;
    let own = capture(&hub, &strings(&["send", "--ready"])).await;
    let claimed = |wire: &Wire| wire.iter().map(|(_, _, c)| *c).collect::<Vec<_>>();
    assert_eq!(
        claimed(&theirs),
        [true, false],
        "systemd-notify: {theirs:?}"
    );
    assert_eq!(claimed(&parent), [true, true], "--pid=parent: {parent:?}");
    assert_eq!(claimed(&own), [false, false], "notifyhub send: {own:?}");
    assert_eq!(bytes(&parent), bytes(&theirs));
    assert_eq!(bytes(&own), bytes(&theirs));
}

async fn take(socket: &NotifySocket) -> notifyhub_transport_unix::Datagram {
    match tokio::time::timeout(RUN_TIMEOUT, socket.recv())
        .await
        .expect("a datagram")
        .unwrap()
    {
        Received::Datagram(datagram) => datagram,
        other => panic!("{other:?}"),
    }
}

/// Both wait on the barrier's fd, and return (exit 0) once the receiver closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_return_once_the_barrier_fd_is_closed() {
    let hub = notifyhub_tests::hub_binary();
    let senders: [(&Path, Vec<String>); 2] = [
        (systemd_notify(), strings(&["--ready"])),
        (&hub, strings(&["send", "--ready"])),
    ];
    for (program, args) in &senders {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = NotifySocket::bind(&path).unwrap();
        let mut child = spawn(program, args, path.to_str().unwrap());
        let message = take(&socket).await;
        assert_eq!(message.payload, b"READY=1");
        let barrier = take(&socket).await;
        assert_eq!(barrier.payload, b"BARRIER=1");
        assert_eq!(barrier.fds.len(), 1, "{}", program.display());
        // While we hold the fd, the sender waits (its timeout is 5 s).
        let early = tokio::time::timeout(Duration::from_millis(500), child.wait()).await;
        assert!(
            early.is_err(),
            "{} {args:?} returned while the barrier fd was open: {early:?}",
            program.display()
        );
        drop(barrier);
        let status = tokio::time::timeout(RUN_TIMEOUT, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not return after the close", program.display()))
            .unwrap();
        assert!(status.success(), "{} {args:?}: {status}", program.display());
        drop(message);
    }
}

/// `NOTIFY_SOCKET=@name`: an abstract AF_UNIX address; both reach it with the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let hub = notifyhub_tests::hub_binary();
    let name = format!("notifyhub-send-conformance-{}", std::process::id());
    let receiver =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    receiver.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
    let address = format!("@{name}");
    let senders: [(&Path, Vec<String>); 2] = [
        (
            systemd_notify(),
            strings(&["--no-block", "--ready", "--status=abstract"]),
        ),
        (
            &hub,
            strings(&["send", "--no-block", "--ready", "--status", "abstract"]),
        ),
    ];
    let mut payloads = Vec::new();
    for (program, args) in &senders {
        let out = tokio::time::timeout(
            RUN_TIMEOUT,
            spawn(program, args, &address).wait_with_output(),
        )
        .await
        .expect("the sender returns")
        .unwrap();
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut buf = [0u8; 4097];
        let n = receiver.recv(&mut buf).unwrap();
        payloads.push(buf[..n].to_vec());
    }
    assert_eq!(payloads[0], b"READY=1\nSTATUS=abstract");
    assert_eq!(payloads[1], payloads[0]);
}
