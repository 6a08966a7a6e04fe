//! A sender outside the receiver's pid namespace arrives with pid 0 (uid/gid still real).
//!
//! The receiver must run in a child pid namespace, so this test re-runs its own binary under
//! `unshare --pid --fork` with only the ignored helper test selected.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use notifyhub_transport_unix::{NotifySocket, Received};

const ENV_SOCKET: &str = "NOTIFYHUB_TEST_PIDNS_SOCKET";

#[tokio::test]
async fn sender_outside_our_pid_namespace_has_pid_0() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED sender_outside_our_pid_namespace_has_pid_0: unshare --pid needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let exe = std::env::current_exe().unwrap();
    let child = tokio::process::Command::new("unshare")
        .args(["--pid", "--fork", "--"])
        .arg(&exe)
        .args([
            "pidns_receiver_helper",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_SOCKET, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot run unshare (util-linux)");

    // Binding takes milliseconds; allow 10 s for the child to start.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "helper never bound {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"READY=1", &path)
        .unwrap();

    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("helper did not finish")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helper failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let want = format!("RESULT pid=0 uid={uid} gid={gid} payload=READY=1");
    assert!(
        stdout.lines().any(|l| l == want),
        "want {want:?} in:\n{stdout}"
    );
}

/// Runs inside the child pid namespace (see above); not a test on its own.
#[tokio::test]
#[ignore = "helper, run by sender_outside_our_pid_namespace_has_pid_0 under unshare --pid"]
async fn pidns_receiver_helper() {
    let path = PathBuf::from(std::env::var_os(ENV_SOCKET).expect("run by the pidns test only"));
    let sock = NotifySocket::bind(&path).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), sock.recv())
        .await
        .expect("nothing received")
        .unwrap();
    let Received::Datagram(d) = got else {
        panic!("expected a datagram, got {got:?}")
    };
    let c = d.credentials.expect("credentials");
    println!(
        "\nRESULT pid={} uid={} gid={} payload={}",
        c.pid,
        c.uid,
        c.gid,
        String::from_utf8_lossy(&d.payload)
    );
}
