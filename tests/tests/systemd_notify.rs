//! The real `/usr/bin/systemd-notify` (Debian 12: v252; installed by `scripts/setup`) against a
//! guest socket of the real `notifyhub` binary.
//!
//! Without `--no-block`, systemd-notify sends a second datagram `BARRIER=1` carrying one pipe
//! end and waits (5 s, its own timeout) until the receiver closes it; it exits non-zero when the
//! barrier times out. So "exits 0" proves the hub closes received fds once it has processed
//! every earlier message.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use notifyhub_tests::Hub;
use serde_json::Value;
use tokio::process::Command;

const SYSTEMD_NOTIFY: &str = "/usr/bin/systemd-notify";
/// Twice systemd-notify's own 5 s barrier timeout.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs systemd-notify with `args` and `NOTIFY_SOCKET=socket`; asserts it exits 0.
async fn systemd_notify(socket: &Path, args: &[&str]) {
    assert!(
        Path::new(SYSTEMD_NOTIFY).is_file(),
        "{SYSTEMD_NOTIFY} is missing: run scripts/setup (it installs the `systemd` package)"
    );
    let child = Command::new(SYSTEMD_NOTIFY)
        .args(args)
        .env("NOTIFY_SOCKET", socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn systemd-notify");
    let out = tokio::time::timeout(NOTIFY_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!("systemd-notify {args:?} still running after {NOTIFY_TIMEOUT:?}")
        })
        .expect("wait for systemd-notify");
    assert!(
        out.status.success(),
        "systemd-notify {args:?} exited with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

fn texts(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["text"].as_str().expect("event text"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_status_with_barrier() {
    let hub = Hub::start(&["svc"]).await;
    let socket = hub.socket("svc");
    systemd_notify(&socket, &["--ready", "--status=Serving 3 clients: ünïcode"]).await;

    let guest = hub.settle("svc", 2).await;
    assert_eq!(guest["phase"], "ready", "{guest:#}");
    assert_eq!(guest["ready_seen"], true);
    assert_eq!(guest["status"], "Serving 3 clients: ünïcode");
    assert_eq!(guest["messages"], 2, "the message and BARRIER=1: {guest:#}");
    assert_eq!(guest["boot_count"], 1);
    assert!(guest["main_pid"].is_null(), "{guest:#}");

    let events = hub.events("svc").await;
    assert_eq!(
        texts(&events),
        ["READY=1\nSTATUS=Serving 3 clients: ünïcode", "BARRIER=1"]
    );
    assert_eq!(events[0]["fds"], 0);
    assert_eq!(
        events[1]["fds"], 1,
        "BARRIER=1 carries one fd: {:#}",
        events[1]
    );
    // Without --pid, systemd-notify sends its parent's pid (this test process) as credentials;
    // only root may name another process's pid, else the kernel puts systemd-notify's own.
    let sender_pid = events[0]["sender"]["credentials"]["pid"].as_u64();
    if rustix::process::geteuid().is_root() {
        assert_eq!(
            sender_pid,
            Some(u64::from(std::process::id())),
            "sender: {:#}",
            events[0]["sender"]
        );
    } else {
        assert!(
            sender_pid.is_some_and(|p| p > 0),
            "sender: {:#}",
            events[0]["sender"]
        );
    }

    // The barrier again, a few times in a row: each returns.
    for i in 0..3 {
        systemd_notify(&socket, &[&format!("--status=round {i}")]).await;
    }
    let guest = hub.settle("svc", 8).await;
    assert_eq!(guest["status"], "round 2");
    assert_eq!(guest["messages"], 8);
    assert_eq!(guest["phase"], "ready");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_of_a_live_process() {
    let hub = Hub::start(&["svc"]).await;
    let mut sleeper = Command::new("sleep")
        .arg("60")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sleep");
    let pid = sleeper.id().expect("sleep pid");
    systemd_notify(&hub.socket("svc"), &["--ready", &format!("--pid={pid}")]).await;

    let guest = hub.settle("svc", 2).await;
    assert_eq!(
        guest["main_pid"].as_u64(),
        Some(u64::from(pid)),
        "{guest:#}"
    );
    assert_eq!(guest["phase"], "ready");
    let events = hub.events("svc").await;
    assert_eq!(texts(&events)[0], format!("READY=1\nMAINPID={pid}"));
    sleeper.kill().await.expect("kill sleep");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_assignments_are_kept_as_data() {
    let hub = Hub::start(&["svc"]).await;
    systemd_notify(
        &hub.socket("svc"),
        &[
            "READY=1",
            "STATUS=extra",
            "FOO=bar",
            "X_CUSTOM_KEY=hello world",
            "A=b=c",
        ],
    )
    .await;

    let guest = hub.settle("svc", 2).await;
    assert_eq!(guest["phase"], "ready", "{guest:#}");
    assert_eq!(guest["status"], "extra");
    let events = hub.events("svc").await;
    let first = events[0]["text"].as_str().unwrap();
    assert_eq!(
        first,
        "READY=1\nSTATUS=extra\nFOO=bar\nX_CUSTOM_KEY=hello world\nA=b=c"
    );
    for unknown in ["FOO=bar", "X_CUSTOM_KEY=hello world", "A=b=c"] {
        assert!(
            first.lines().any(|l| l == unknown),
            "{unknown} in {first:?}"
        );
    }
    assert_eq!(
        events[0]["hex"].as_str().unwrap(),
        hex::encode(first.as_bytes()),
        "hex is the exact payload"
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_block_sends_one_datagram() {
    let hub = Hub::start(&["svc"]).await;
    let socket = hub.socket("svc");
    systemd_notify(&socket, &["--no-block", "--status=starting up"]).await;
    let guest = hub.settle("svc", 1).await;
    assert_eq!(guest["phase"], "booting", "{guest:#}");
    assert_eq!(guest["status"], "starting up");

    systemd_notify(&socket, &["--no-block", "--ready", "--status=up"]).await;
    let guest = hub.settle("svc", 2).await;
    assert_eq!(guest["phase"], "ready", "{guest:#}");
    assert_eq!(guest["status"], "up");
    let (status, body) = hub.wait("svc", "ready", 5).await;
    assert_eq!(status, 200, "{body:#}");

    systemd_notify(&socket, &["--no-block", "STOPPING=1"]).await;
    let guest = hub.settle("svc", 3).await;
    assert_eq!(guest["phase"], "stopping", "{guest:#}");
    assert_eq!(
        guest["messages"], 3,
        "--no-block sends no BARRIER=1: {guest:#}"
    );

    let events = hub.events("svc").await;
    assert_eq!(
        texts(&events),
        ["STATUS=starting up", "READY=1\nSTATUS=up", "STOPPING=1"]
    );
    assert!(events.iter().all(|e| e["fds"] == 0));
    hub.shutdown().await;
}
