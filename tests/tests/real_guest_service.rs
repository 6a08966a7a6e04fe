//! The units of `contrib/systemd` in a real systemd 257 guest: every unit file passes
//! `systemd-analyze verify`; inside the guest `notifyhub.service` starts, becomes active through
//! the hub's own READY=1 (Type=notify, with its hardening options on), reports a STATUS=, pings
//! the watchdog, reloads its configuration file on `systemctl reload`, serves the API, and stops
//! cleanly; and with `notifyhub.socket` and `notifyhub-guest@web1.socket`
//! it is socket-activated: an API request starts it, a guest registered through its passed
//! notify socket reports to it, and a guest's datagram starts it again once stopped.

use std::path::PathBuf;
use std::time::Duration;

use notifyhub_tests::real_guest::{Booted, boot_with_hub_binary, skip};

/// The unit files of `contrib/systemd`, installed as they are named.
const UNITS: [&str; 4] = [
    "notifyhub.service",
    "notifyhub.socket",
    "notifyhub-vsock.socket",
    "notifyhub-guest@.socket",
];

fn unit_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib/systemd")
        .join(name)
}

/// Unit `name` with `ExecStart=` pointing at `binary` (the service; the sockets have none).
fn unit_for(name: &str, binary: &str) -> String {
    let unit = std::fs::read_to_string(unit_file(name)).unwrap();
    if name.ends_with(".service") {
        assert!(unit.contains("ExecStart=/usr/bin/notifyhub serve"));
    }
    unit.replace("/usr/bin/notifyhub", binary)
}

/// `systemd-analyze verify --man=no` of every unit (the guest template as instance `web1`),
/// with the binary under test at `ExecStart=`: no error, no warning.
#[test]
fn the_unit_files_verify() {
    let dir = tempfile::tempdir().unwrap();
    let binary = notifyhub_tests::hub_binary();
    for name in UNITS {
        let text = unit_for(name, binary.to_str().unwrap());
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(UNITS.map(|name| dir.path().join(name.replace("@.", "@web1."))))
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/setup installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_runs_the_hub_as_a_type_notify_service() {
    if skip() {
        return;
    }
    let guest = boot_with_hub_binary("nhsvc").await;
    guest.write(
        "etc/systemd/system/notifyhub.service",
        &unit_for("notifyhub.service", "/usr/bin/notifyhub"),
        0o644,
    );
    guest.run(&["systemctl", "daemon-reload"]).await;
    // Type=notify: `systemctl start` returns once the hub sent READY=1.
    guest
        .run(&["systemctl", "start", "notifyhub.service"])
        .await;
    assert_eq!(
        guest
            .run(&["systemctl", "is-active", "notifyhub.service"])
            .await,
        "active"
    );
    assert_eq!(
        guest.show("StatusText", "notifyhub.service").await,
        "0 guests"
    );
    // The hub in the guest answers on its default address.
    assert_eq!(status(&guest, &[]).await["guests"], serde_json::json!([]));
    // Its run directory came from RuntimeDirectory=.
    assert_eq!(
        guest.run(&["ls", "-d", "/run/notifyhub"]).await,
        "/run/notifyhub"
    );
    assert_eq!(guest.show("WatchdogUSec", "notifyhub.service").await, "30s");

    // WATCHDOG=1: with WatchdogSec=4s (a drop-in) the hub pings every 2 s, and systemd stamps
    // each ping; the stamp moves on within 10× that.
    guest.write(
        "etc/systemd/system/notifyhub.service.d/watchdog.conf",
        "[Service]\nWatchdogSec=4s\n",
        0o644,
    );
    guest.run(&["systemctl", "daemon-reload"]).await;
    guest
        .run(&["systemctl", "restart", "notifyhub.service"])
        .await;
    let first = guest
        .show("WatchdogTimestampMonotonic", "notifyhub.service")
        .await;
    let mut pinged = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = guest
            .show("WatchdogTimestampMonotonic", "notifyhub.service")
            .await;
        if now != first {
            pinged = true;
            break;
        }
    }
    assert!(pinged, "no WATCHDOG=1 within 20 s (stamp {first})");
    // Not a new stamp from a watchdog kill and restart.
    assert_eq!(guest.show("NRestarts", "notifyhub.service").await, "0");

    // ExecReload=: `systemctl reload` sends SIGHUP, and the hub reads its default configuration
    // file again (here a new one), registering the guest it names, without a restart.
    guest.write(
        "etc/notifyhub/notifyhub.toml",
        "guest = [\"web9\"]\n",
        0o644,
    );
    guest
        .run(&["systemctl", "reload", "notifyhub.service"])
        .await;
    let mut names = serde_json::Value::Null;
    for _ in 0..100 {
        names = status(&guest, &[]).await["guests"].clone();
        if names != serde_json::json!([]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(names[0]["name"], "web9", "{names:#}");
    assert_eq!(
        names[0]["notify_socket"],
        "/run/notifyhub/guests/web9/notify"
    );
    assert_eq!(guest.show("NRestarts", "notifyhub.service").await, "0");
    assert_eq!(
        guest
            .run(&["systemctl", "is-active", "notifyhub.service"])
            .await,
        "active"
    );

    guest.run(&["systemctl", "stop", "notifyhub.service"]).await;
    assert_eq!(guest.show("Result", "notifyhub.service").await, "success");
    guest.stop().await;
}

/// `notifyhub status --json [NAME]` in the guest: the hub's own client, over TCP to the
/// default 127.0.0.1:7370, which `notifyhub.socket` listens on.
async fn status(guest: &Booted, args: &[&str]) -> serde_json::Value {
    let mut command = vec!["notifyhub", "status", "--json"];
    command.extend_from_slice(args);
    let out = guest.run(&command).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Polls `systemctl show -p StatusText` until it is `want` (the hub refreshes it every 2 s);
/// the bound is 10× that.
async fn wait_status_text(guest: &Booted, want: &str) {
    let mut seen = String::new();
    for _ in 0..100 {
        seen = guest.show("StatusText", "notifyhub.service").await;
        if seen == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("StatusText is {seen:?}, not {want:?}");
}

/// Guest web1 reports `READY=1` and `STATUS=` with `systemd-notify` (which waits on its
/// `BARRIER=1` until the hub read both) through the socket of `notifyhub-guest@web1.socket`.
async fn report_ready(guest: &Booted, status: &str) {
    guest
        .run(&[
            "env",
            "NOTIFY_SOCKET=/run/notifyhub-guest/web1",
            "systemd-notify",
            "--ready",
            status,
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_socket_activates_the_hub() {
    if skip() {
        return;
    }
    let guest = boot_with_hub_binary("nhsock").await;
    for name in [
        "notifyhub.service",
        "notifyhub.socket",
        "notifyhub-guest@.socket",
    ] {
        guest.write(
            &format!("etc/systemd/system/{name}"),
            &unit_for(name, "/usr/bin/notifyhub"),
            0o644,
        );
    }
    guest.run(&["systemctl", "daemon-reload"]).await;
    guest
        .run(&[
            "systemctl",
            "start",
            "notifyhub.socket",
            "notifyhub-guest@web1.socket",
        ])
        .await;
    // systemd holds the sockets; nothing runs yet.
    assert_eq!(
        guest
            .run_unchecked(&["systemctl", "is-active", "notifyhub.service"])
            .await,
        "inactive"
    );
    assert_eq!(
        guest
            .run(&["stat", "-c", "%F %a", "/run/notifyhub-guest/web1"])
            .await,
        "socket 600"
    );

    // The first API request starts the service and is answered by it. Type=notify: active
    // means the hub's own READY=1 came.
    let all = status(&guest, &[]).await;
    assert_eq!(all["guests"][0]["name"], "web1", "{all:#}");
    assert_eq!(
        all["guests"][0]["notify_socket"],
        "/run/notifyhub-guest/web1"
    );
    assert_eq!(all["guests"][0]["phase"], "registered");
    assert_eq!(
        guest
            .run(&["systemctl", "is-active", "notifyhub.service"])
            .await,
        "active"
    );
    let mut triggers: Vec<String> = guest
        .show("TriggeredBy", "notifyhub.service")
        .await
        .split(' ')
        .map(str::to_owned)
        .collect();
    triggers.sort();
    assert_eq!(
        triggers,
        ["notifyhub-guest@web1.socket", "notifyhub.socket"]
    );
    wait_status_text(&guest, "1 guest: 1 registered").await;

    // A guest reports through the passed socket; the hub's STATUS= follows.
    report_ready(&guest, "--status=up through the socket unit").await;
    let web1 = status(&guest, &["web1"]).await;
    assert_eq!(web1["phase"], "ready", "{web1:#}");
    assert_eq!(web1["status"], "up through the socket unit");
    wait_status_text(&guest, "1 guest: 1 ready").await;

    // Stopped, it sends STOPPING=1 and exits cleanly; the sockets stay, and a guest's datagram
    // starts it again, which reads that datagram.
    guest.run(&["systemctl", "stop", "notifyhub.service"]).await;
    assert_eq!(guest.show("Result", "notifyhub.service").await, "success");
    assert_eq!(
        guest
            .run(&["systemctl", "is-active", "notifyhub-guest@web1.socket"])
            .await,
        "active"
    );
    report_ready(&guest, "--status=woke the hub").await;
    assert_eq!(
        guest
            .run(&["systemctl", "is-active", "notifyhub.service"])
            .await,
        "active"
    );
    let web1 = status(&guest, &["web1"]).await;
    assert_eq!(web1["phase"], "ready", "{web1:#}");
    assert_eq!(web1["status"], "woke the hub");

    guest
        .run(&[
            "systemctl",
            "stop",
            "notifyhub.service",
            "notifyhub.socket",
            "notifyhub-guest@web1.socket",
        ])
        .await;
    assert_eq!(guest.show("Result", "notifyhub.service").await, "success");
    // RemoveOnStop=yes: systemd removed the socket file the hub left alone.
    assert_eq!(
        guest
            .run_unchecked(&["sh", "-c", "test -e /run/notifyhub-guest/web1 && echo left"])
            .await,
        ""
    );
    guest.stop().await;
}
