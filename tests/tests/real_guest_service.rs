//! `contrib/systemd/notifyhub.service` in a real systemd 257 guest: the unit file passes
//! `systemd-analyze verify`, and inside the guest the service starts, becomes active through the
//! hub's own READY=1 (Type=notify, with its hardening options on), reports a STATUS=, serves
//! the API, and stops cleanly.

use std::path::PathBuf;

use notifyhub_tests::Hub;
use notifyhub_tests::real_guest::{GuestGuard, harness, skip};
use reqwest::StatusCode;

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
    let name = format!("nhsvc{}", std::process::id());
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
    let (status, _) = hub.wait(&name, "booted", 60).await;
    assert_eq!(status, StatusCode::OK);

    // Install the binary under test and the unit, as a package would.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    std::fs::copy(
        notifyhub_tests::hub_binary(),
        root.join("usr/bin/notifyhub"),
    )
    .unwrap();
    std::fs::write(
        root.join("etc/systemd/system/notifyhub.service"),
        unit_for("/usr/bin/notifyhub"),
    )
    .unwrap();
    let exec = |args: &[&str]| {
        let mut all = vec!["exec", guard.name()];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        String::from_utf8_lossy(&harness(&args).await.stdout)
            .trim()
            .to_string()
    };
    run(exec(&["systemctl", "daemon-reload"])).await;
    // Type=notify: `systemctl start` returns once the hub sent READY=1.
    run(exec(&["systemctl", "start", "notifyhub.service"])).await;
    assert_eq!(
        run(exec(&["systemctl", "is-active", "notifyhub.service"])).await,
        "active"
    );
    assert_eq!(
        run(exec(&[
            "systemctl",
            "show",
            "-p",
            "StatusText",
            "--value",
            "notifyhub.service"
        ]))
        .await,
        "0 guests"
    );
    // The hub in the guest answers on its default address.
    let status = run(exec(&["notifyhub", "status", "--json"])).await;
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json["guests"], serde_json::json!([]));
    // Its run directory came from RuntimeDirectory=.
    assert_eq!(
        run(exec(&["ls", "-d", "/run/notifyhub"])).await,
        "/run/notifyhub"
    );

    run(exec(&["systemctl", "stop", "notifyhub.service"])).await;
    assert_eq!(
        run(exec(&[
            "systemctl",
            "show",
            "-p",
            "Result",
            "--value",
            "notifyhub.service"
        ]))
        .await,
        "success"
    );
    hub.shutdown().await;
}
