//! The real `systemd-notify` (Debian's `systemd` package) as the sender.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use notifyhub_transport_unix::{NotifySocket, Received};
use tokio::sync::mpsc;

const SYSTEMD_NOTIFY: &str = "/usr/bin/systemd-notify";

/// `systemd-notify` waits at most 5 s on its barrier (`sd_notify_barrier(0, 5 * USEC_PER_SEC)`
/// in `src/notify/notify.c`), then fails: finishing within that proves we closed the fd.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

fn systemd_notify() -> tokio::process::Command {
    assert!(
        Path::new(SYSTEMD_NOTIFY).exists(),
        "{SYSTEMD_NOTIFY} is missing: run the project's setup script (under scripts/), \
         which installs Debian's `systemd` package"
    );
    let mut cmd = tokio::process::Command::new(SYSTEMD_NOTIFY);
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Loops `recv()` in a task and reports `(payload, fd count)` of each datagram; each datagram
/// (so its fds) is dropped `hold` after it arrived.
fn receiver(
    sock: NotifySocket,
    hold: Duration,
) -> (
    mpsc::UnboundedReceiver<(Vec<u8>, usize)>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match sock.recv().await.expect("recv failed") {
                Received::Datagram(d) => {
                    let _ = tx.send((d.payload.clone(), d.fds.len()));
                    tokio::time::sleep(hold).await;
                    drop(d);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    (rx, task)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(Vec<u8>, usize)>) -> (Vec<u8>, usize) {
    tokio::time::timeout(BARRIER_TIMEOUT, rx.recv())
        .await
        .expect("no datagram within 5 s")
        .expect("receiver task ended")
}

#[tokio::test]
async fn systemd_notify_ready_status_and_barrier() {
    let dir = tempfile::tempdir().unwrap();
    let sock = NotifySocket::bind(&dir.path().join("notify")).unwrap();
    let path = sock.path().to_path_buf();
    let (mut rx, task) = receiver(sock, Duration::ZERO);

    let started = Instant::now();
    let mut child = systemd_notify()
        .args(["--ready", "--status=hello"])
        .env("NOTIFY_SOCKET", &path)
        .spawn()
        .unwrap();
    assert_eq!(next(&mut rx).await, (b"READY=1\nSTATUS=hello".to_vec(), 0));
    assert_eq!(next(&mut rx).await, (b"BARRIER=1".to_vec(), 1));
    let status = tokio::time::timeout(BARRIER_TIMEOUT, child.wait())
        .await
        .expect("systemd-notify still waits on its barrier after 5 s")
        .unwrap();
    assert!(status.success(), "systemd-notify failed: {status}");
    assert!(started.elapsed() < BARRIER_TIMEOUT);
    task.abort();
}

/// The barrier really waits for our close: while the BARRIER fd is held, systemd-notify keeps
/// waiting; it exits successfully right after the fd is dropped.
#[tokio::test]
async fn systemd_notify_waits_until_the_barrier_fd_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let sock = NotifySocket::bind(&dir.path().join("notify")).unwrap();
    let path = sock.path().to_path_buf();
    let hold = Duration::from_millis(1500);
    let (mut rx, task) = receiver(sock, hold);

    let mut child = systemd_notify()
        .arg("STATUS=held")
        .env("NOTIFY_SOCKET", &path)
        .spawn()
        .unwrap();
    // The first datagram is held too, so the barrier arrives up to `hold` later.
    assert_eq!(next(&mut rx).await, (b"STATUS=held".to_vec(), 0));
    assert_eq!(next(&mut rx).await, (b"BARRIER=1".to_vec(), 1));
    let barrier_seen = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "systemd-notify must still wait while we hold the barrier fd"
    );
    let status = tokio::time::timeout(BARRIER_TIMEOUT, child.wait())
        .await
        .expect("systemd-notify still waits on its barrier after 5 s")
        .unwrap();
    assert!(status.success(), "systemd-notify failed: {status}");
    let waited = barrier_seen.elapsed();
    assert!(
        waited >= hold - Duration::from_millis(100) && waited < BARRIER_TIMEOUT,
        "exit {waited:?} after the barrier arrived, expected about {hold:?}"
    );
    task.abort();
}

/// Credentials are the sender's at send time, here another user: uid/gid 65534 (`nobody`),
/// and the pid of a process that has exited by the time we read the datagram.
#[tokio::test]
async fn credentials_of_another_user_at_send_time() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED credentials_of_another_user_at_send_time: needs root to switch uid");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = NotifySocket::bind_with_mode(&dir.path().join("notify"), 0o666).unwrap();

    let mut child = systemd_notify()
        .args(["--no-block", "STATUS=from nobody"])
        .env("NOTIFY_SOCKET", sock.path())
        .uid(65534)
        .gid(65534)
        .spawn()
        .unwrap();
    let child_pid = child.id().unwrap();
    let status = tokio::time::timeout(BARRIER_TIMEOUT, child.wait())
        .await
        .expect("systemd-notify --no-block hung")
        .unwrap();
    assert!(status.success(), "systemd-notify failed: {status}");

    let got = tokio::time::timeout(Duration::from_secs(5), sock.recv())
        .await
        .expect("recv timed out")
        .unwrap();
    let Received::Datagram(d) = got else {
        panic!("expected a datagram, got {got:?}")
    };
    assert_eq!(d.payload, b"STATUS=from nobody");
    let creds = d.credentials.expect("SO_PASSCRED attaches credentials");
    assert_eq!((creds.uid, creds.gid), (65534, 65534));
    assert_eq!(
        creds.pid, child_pid,
        "the sender's pid, although it has exited"
    );
    assert!(d.fds.is_empty());
}
