//! The hub as a `Type=notify` service: it tells its own service manager READY=1 with a status
//! once it is bound, pings the watchdog, and says STOPPING=1 on SIGTERM (`sd_notify(3)`).
//! The service manager here is our own notify socket, given to the real binary.

use std::process::Stdio;
use std::time::Duration;

use notifyhub_transport_unix::{NotifySocket, Received};
use tokio::io::{AsyncBufReadExt, BufReader};

const LIVENESS: Duration = Duration::from_secs(10);

async fn next(socket: &NotifySocket) -> String {
    match tokio::time::timeout(LIVENESS, socket.recv())
        .await
        .expect("a notification")
        .unwrap()
    {
        Received::Datagram(datagram) => String::from_utf8(datagram.payload).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_ready_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let manager = NotifySocket::bind(&dir.path().join("manager")).unwrap();
    let mut hub = tokio::process::Command::new(notifyhub_tests::hub_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--guest",
            "g1",
            "--guest",
            "g2",
        ])
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("NOTIFY_SOCKET", manager.path())
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(hub.stdout.take().unwrap()).lines();

    // READY=1 only once the HTTP listener is bound: the address line is out by then.
    let ready = next(&manager).await;
    assert_eq!(ready, "READY=1\nSTATUS=2 guests: 2 registered\n");
    let mut printed = Vec::new();
    while let Some(line) = stdout.next_line().await.unwrap() {
        let listening = line.starts_with("notifyhub: listening on http://");
        printed.push(line);
        if listening {
            break;
        }
    }
    assert_eq!(printed.len(), 3, "{printed:?}");

    // WATCHDOG_USEC=400000: a ping every 200 ms, so a few within the bound.
    assert_eq!(next(&manager).await, "WATCHDOG=1\n");
    assert_eq!(next(&manager).await, "WATCHDOG=1\n");

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(hub.id().unwrap() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let mut last = String::new();
    while last != "STOPPING=1\nSTATUS=stopping\n" {
        last = next(&manager).await;
        assert!(
            last == "WATCHDOG=1\n" || last.starts_with("STOPPING=1"),
            "{last:?}"
        );
    }
    let status = tokio::time::timeout(LIVENESS, hub.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}
