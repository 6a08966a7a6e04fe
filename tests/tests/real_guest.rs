//! A real systemd 257 guest (`../shared/guest/real-systemd-guest`: Debian trixie's systemd as
//! PID 1 of an unshare(1) container) reporting to the real `notifyhub` binary.
//!
//! Needs root and a guest prepared by `scripts/setup`. When setup could not prepare it, it wrote
//! the reason to `<target>/real-guest-skip-reason`; these tests then print
//! `SKIPPED real guest: <reason>` and pass, and `scripts/test`'s summary says so.

use notifyhub_tests::Hub;
use notifyhub_tests::real_guest::{GuestGuard, harness, harness_unchecked, skip};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::process::Command;

/// Long-poll bound for a guest milestone (READY=1 arrives < 2 s after boot on 2 cores).
const WAIT_SECS: u64 = 60;

/// The machine ID the harness gives guest `name`: the first 32 hex digits of sha256(name).
async fn expected_machine_id(name: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", "printf %s \"$1\" | sha256sum", "sh", name])
        .output()
        .await
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..32].to_string()
}

fn active(guest: &Value) -> Vec<&str> {
    guest["active_units"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Boots guest `name` against a fresh hub and waits until it is booted and connectible by SSH.
async fn boot(name: &str) -> (Hub, GuestGuard) {
    let hub = Hub::start(&[name]).await;
    let socket = hub.socket(name);
    // Stop a leftover of an earlier run with the same name first (idempotent).
    harness(&["stop", name]).await;
    let guard = GuestGuard::new(name);
    let out = harness(&["boot", name, "--notify-socket", socket.to_str().unwrap()]).await;
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        pid.parse::<u32>().is_ok(),
        "boot printed {pid:?}, expected the guest's host PID"
    );

    let (status, guest) = hub.wait(name, "unit:ssh-access.target", WAIT_SECS).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "wait for ssh-access.target: {guest:#}\n{}",
        hub.log_text()
    );
    assert!(active(&guest).contains(&"ssh-access.target"), "{guest:#}");
    assert_eq!(guest["hostname"], name, "{guest:#}");
    assert_eq!(
        guest["machine_id"],
        expected_machine_id(name).await,
        "{guest:#}"
    );
    assert_eq!(guest["signals_level"], 2, "{guest:#}");
    assert_eq!(guest["boot_count"], 1, "{guest:#}");

    let (status, guest) = hub.wait(name, "booted", WAIT_SECS).await;
    assert_eq!(status, StatusCode::OK, "wait for booted: {guest:#}");
    assert_eq!(guest["phase"], "ready", "{guest:#}");
    assert_eq!(guest["ready_seen"], true);
    assert_eq!(guest["failed_boot"], false);
    assert!(
        active(&guest)
            .iter()
            .any(|u| *u == "multi-user.target" || *u == "graphical.target"),
        "{guest:#}"
    );
    // The sender is the guest's PID 1, seen by its host PID.
    let events = hub.events(name).await;
    assert!(
        events.iter().any(|e| e["sender"]["credentials"]["pid"]
            .as_u64()
            .map(|p| p.to_string())
            == Some(pid.clone())),
        "no event from the guest's PID 1 ({pid}): {:#}",
        events.first().map(|e| &e["sender"]).unwrap_or(&Value::Null)
    );
    (hub, guard)
}

/// Runs `systemctl ARGS` in the guest, waits for `off` and checks how the boot ended.
async fn shut_down(hub: &Hub, name: &str, systemctl: &[&str], verb: &str, param: Option<&str>) {
    let mut args = vec!["exec", name, "systemctl"];
    args.extend_from_slice(systemctl);
    harness(&args).await;

    let (status, guest) = hub.wait(name, "off", WAIT_SECS).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "wait for off: {guest:#}\n{}",
        hub.log_text()
    );
    assert_eq!(guest["phase"], "off", "{guest:#}");
    assert_eq!(guest["shutdown"]["verb"], verb, "{guest:#}");
    assert_eq!(
        guest["shutdown"]["reboot_parameter"].as_str(),
        param,
        "{guest:#}"
    );
    assert_eq!(guest["exit_status"], 0, "{guest:#}");
    assert_eq!(guest["boot_count"], 1, "{guest:#}");
    assert_eq!(guest["failed_boot"], false, "{guest:#}");
    assert!(active(&guest).contains(&"shutdown.target"), "{guest:#}");
    assert!(!active(&guest).contains(&"ssh-access.target"), "{guest:#}");

    // The container itself ended the same way.
    let out = harness_unchecked(&["wait-exit", name, "30"]).await;
    let how = String::from_utf8_lossy(&out.stdout);
    let expected = if verb == "reboot" {
        "reboot"
    } else {
        "poweroff"
    };
    assert!(
        how.starts_with(expected),
        "wait-exit said {how:?}, expected {expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_boot_and_reboot_with_argument() {
    if skip() {
        return;
    }
    let name = format!("nh-e2e-{}-rb", std::process::id());
    let (hub, guard) = boot(&name).await;
    shut_down(
        &hub,
        &name,
        &["reboot", "--reboot-argument=e2e-arg"],
        "reboot",
        Some("e2e-arg"),
    )
    .await;
    drop(guard);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_boot_and_poweroff() {
    if skip() {
        return;
    }
    let name = format!("nh-e2e-{}-po", std::process::id());
    let (hub, guard) = boot(&name).await;
    shut_down(&hub, &name, &["poweroff"], "poweroff", None).await;
    drop(guard);
    hub.shutdown().await;
}
