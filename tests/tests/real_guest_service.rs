//! `contrib/systemd/notifyhub.service` in a real systemd 257 guest: the unit file passes
//! `systemd-analyze verify`, and inside the guest the service starts, becomes active through the
//! hub's own READY=1 (Type=notify, with its hardening options on), reports a STATUS=, serves
//! the API, and stops cleanly.

use std::path::PathBuf;

use notifyhub_tests::real_guest::{boot_with_hub_binary, skip};

fn unit_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd/notifyhub.service")
}

/// The unit with `ExecStart=` pointing at the binary under test.
fn unit_for(binary: &str) -> String {
    let unit = std::fs::read_to_string(unit_file()).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/notifyhub serve"));
    unit.replace("/usr/bin/notifyhub", binary)
}

#[test]
fn the_unit_file_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notifyhub.service");
    let binary = notifyhub_tests::hub_binary();
    std::fs::write(&path, unit_for(binary.to_str().unwrap())).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
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
        &unit_for("/usr/bin/notifyhub"),
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
    let status = guest.run(&["notifyhub", "status", "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json["guests"], serde_json::json!([]));
    // Its run directory came from RuntimeDirectory=.
    assert_eq!(
        guest.run(&["ls", "-d", "/run/notifyhub"]).await,
        "/run/notifyhub"
    );

    guest.run(&["systemctl", "stop", "notifyhub.service"]).await;
    assert_eq!(guest.show("Result", "notifyhub.service").await, "success");
    guest.stop().await;
}
