//! `notifyhub send` judged by systemd itself: in a real systemd 257 guest, a `Type=notify` unit
//! whose `ExecStart=` runs `notifyhub send` becomes active with the status it sent; one whose
//! `notifyhub send` is given an argument with a newline (`STATUS=x\nREADY=1`, an injection of
//! READY=1) is refused by `notifyhub send`, so the unit stays `activating`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notifyhub_tests::Hub;
use notifyhub_tests::real_guest::{GuestGuard, harness, harness_unchecked, skip};
use reqwest::StatusCode;

const READY_UNIT: &str = "\
[Unit]
Description=notifyhub send test: READY=1 and a status

[Service]
Type=notify
NotifyAccess=all
TimeoutStartSec=30
ExecStart=/bin/sh -c 'notifyhub send --ready --status=\"sent by notifyhub\" && exec sleep infinity'
";

/// Sends `STATUS=x<newline>READY=1` as one argument, records the exit status, then stays.
const INJECT_SCRIPT: &str = "\
#!/bin/sh
notifyhub send \"$(printf 'STATUS=x\\nREADY=1')\" 2>/run/nh-inject.err
echo $? >/run/nh-inject.rc
exec sleep infinity
";

const INJECT_UNIT: &str = "\
[Unit]
Description=notifyhub send test: a newline in an argument must not inject READY=1

[Service]
Type=notify
NotifyAccess=all
TimeoutStartSec=60
ExecStart=/usr/local/bin/nh-inject
";

/// A booted guest with `notifyhub` at /usr/bin/notifyhub and the test units installed.
struct Booted {
    hub: Hub,
    guard: GuestGuard,
    root: PathBuf,
}

async fn boot(prefix: &str) -> Booted {
    let name = format!("{prefix}{}", std::process::id());
    let hub = Hub::start(&[&name]).await;
    let guard = GuestGuard::new(&name);
    let socket = hub.socket(&name);
    let out = harness(&[
        "boot",
        guard.name(),
        "--notify-socket",
        socket.to_str().unwrap(),
    ])
    .await;
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let (status, guest) = hub.wait(&name, "booted", 60).await;
    assert_eq!(status, StatusCode::OK, "{guest:#}");
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    std::fs::copy(
        notifyhub_tests::hub_binary(),
        root.join("usr/bin/notifyhub"),
    )
    .unwrap();
    Booted { hub, guard, root }
}

impl Booted {
    fn write(&self, path: &str, text: &str, mode: u32) {
        let path = self.root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// `real-systemd-guest exec NAME ARGS...`, asserting exit 0; its stdout, trimmed.
    async fn run(&self, args: &[&str]) -> String {
        let mut all = vec!["exec", self.guard.name()];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&harness(&all).await.stdout)
            .trim()
            .to_string()
    }

    /// As [`Booted::run`], whatever the exit status (`systemctl is-active` exits 3 unless
    /// active).
    async fn run_unchecked(&self, args: &[&str]) -> String {
        let mut all = vec!["exec", self.guard.name()];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&harness_unchecked(&all).await.stdout)
            .trim()
            .to_string()
    }

    async fn show(&self, property: &str, unit: &str) -> String {
        self.run(&["systemctl", "show", "-p", property, "--value", unit])
            .await
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.root.join(path))
            .unwrap_or_else(|e| panic!("{}: {e}", Path::new(path).display()))
    }

    async fn stop(self) {
        self.hub.shutdown().await;
        drop(self.guard);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_type_notify_unit_becomes_active_through_notifyhub_send() {
    if skip() {
        return;
    }
    let guest = boot("nhsend").await;
    guest.write("etc/systemd/system/nh-send-test.service", READY_UNIT, 0o644);
    guest.run(&["systemctl", "daemon-reload"]).await;
    // Type=notify: `systemctl start` returns once PID 1 accepted READY=1 (bounded by the
    // harness timeout, and by TimeoutStartSec=30 in the guest).
    guest
        .run(&["systemctl", "start", "nh-send-test.service"])
        .await;
    assert_eq!(
        guest
            .run(&["systemctl", "is-active", "nh-send-test.service"])
            .await,
        "active"
    );
    assert_eq!(
        guest.show("StatusText", "nh-send-test.service").await,
        "sent by notifyhub"
    );
    guest
        .run(&["systemctl", "stop", "nh-send-test.service"])
        .await;
    assert_eq!(
        guest.show("Result", "nh-send-test.service").await,
        "success"
    );
    guest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_newline_in_an_argument_does_not_inject_ready() {
    if skip() {
        return;
    }
    let guest = boot("nhinj").await;
    guest.write("usr/local/bin/nh-inject", INJECT_SCRIPT, 0o755);
    guest.write(
        "etc/systemd/system/nh-inject-test.service",
        INJECT_UNIT,
        0o644,
    );
    guest.run(&["systemctl", "daemon-reload"]).await;
    guest
        .run(&["systemctl", "start", "--no-block", "nh-inject-test.service"])
        .await;
    // The script records notifyhub send's exit status, then sleeps.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !guest.root.join("run/nh-inject.rc").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "nh-inject never ran notifyhub send"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rc = guest.read("run/nh-inject.rc");
    let err = guest.read("run/nh-inject.err");
    assert_eq!(
        rc.trim(),
        "64",
        "notifyhub send must refuse a line break (usage error); stderr: {err}"
    );
    assert!(err.contains("line break"), "{err}");
    // Had READY=1 got through, the unit would be active by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        guest
            .run_unchecked(&["systemctl", "is-active", "nh-inject-test.service"])
            .await,
        "activating"
    );
    assert_eq!(
        guest.show("StatusText", "nh-inject-test.service").await,
        "",
        "no STATUS=x either"
    );
    guest
        .run(&["systemctl", "stop", "nh-inject-test.service"])
        .await;
    assert_eq!(
        guest
            .run_unchecked(&["systemctl", "is-active", "nh-inject-test.service"])
            .await,
        "inactive"
    );
    guest.stop().await;
}
