//! A real systemd 257 guest (`../shared/guest/real-systemd-guest`) through the scenarios that
//! `tests/vectors/systemd257-*.jsonl` captured, against the real `notifyhub` binary, asserted
//! through the REST API: soft-reboot, kexec, `systemctl exit 3`, a rescue boot, a guest that
//! vanishes without a final message, and one that never becomes ready.
//!
//! Same skip rule as `real_guest.rs`: without root, or with `<target>/real-guest-skip-reason`,
//! each test prints `SKIPPED real guest: <reason>` and passes. Each test has its own hub and
//! guest (names carry the test process's pid), so cargo runs them in parallel; a
//! [`GuestGuard`] stops every guest, pass or fail.

use std::time::Duration;

use notifyhub_tests::Hub;
use notifyhub_tests::real_guest::{GuestGuard, harness, skip, wait_exit};
use reqwest::StatusCode;
use serde_json::Value;

/// Long-poll bound for a guest milestone (READY=1 arrives < 2 s after boot on 2 cores, with
/// several guests booting at once).
const WAIT_SECS: u64 = 60;
/// Bound for `real-systemd-guest wait-exit` after the guest was told to end (< 1 s measured).
const EXIT_SECS: u32 = 30;

fn name(tag: &str) -> String {
    format!("nh-sc-{}-{tag}", std::process::id())
}

/// Boots guest `name` (`real-systemd-guest boot NAME --notify-socket SOCK ARGS...`) against
/// `hub`, after stopping any leftover of that name. The guard is created before the boot.
async fn boot(hub: &Hub, name: &str, args: &[&str]) -> GuestGuard {
    harness(&["stop", name]).await;
    let guard = GuestGuard::new(name);
    let socket = hub.socket(name);
    let mut boot = vec!["boot", name, "--notify-socket", socket.to_str().unwrap()];
    boot.extend_from_slice(args);
    let out = harness(&boot).await;
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(pid.parse::<u32>().is_ok(), "boot printed {pid:?}");
    guard
}

/// Waits for `cond` and asserts 200; returns the guest.
async fn wait_ok(hub: &Hub, name: &str, cond: &str) -> Value {
    let (status, guest) = hub.wait(name, cond, WAIT_SECS).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "wait for {cond}: {guest:#}\n{}",
        hub.log_text()
    );
    guest
}

/// Boots a default guest and waits until it is booted (READY=1 and multi-user.target).
async fn booted(hub: &Hub, name: &str) -> GuestGuard {
    let guard = boot(hub, name, &[]).await;
    let guest = wait_ok(hub, name, "booted").await;
    assert_eq!(
        (guest["phase"].as_str(), guest["boot_count"].as_u64()),
        (Some("ready"), Some(1))
    );
    guard
}

/// Runs `CMD...` in guest `name`.
async fn exec(name: &str, cmd: &[&str]) {
    let mut args = vec!["exec", name];
    args.extend_from_slice(cmd);
    harness(&args).await;
}

/// The phases the timeline entered in boot `boot`, in order.
fn phases_of_boot(guest: &Value, boot: u64) -> Vec<String> {
    guest["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|m| m["boot"] == boot && m["type"] == "phase_changed")
        .map(|m| m["to"].as_str().unwrap().to_string())
        .collect()
}

/// Runs `systemctl ARGS` in the guest, waits for `off`, checks the verb and exit status, and
/// that the container ended as `ended` says (`wait-exit`'s first word).
async fn ends_with(hub: &Hub, name: &str, systemctl: &[&str], verb: &str, code: u64, ended: &str) {
    let mut cmd = vec!["systemctl"];
    cmd.extend_from_slice(systemctl);
    exec(name, &cmd).await;
    let guest = wait_ok(hub, name, "off").await;
    assert_eq!(guest["phase"], "off", "{guest:#}");
    assert_eq!(guest["shutdown"]["verb"], verb, "{guest:#}");
    assert_eq!(guest["exit_status"], code, "{guest:#}");
    assert_eq!(guest["boot_count"], 1, "{guest:#}");
    assert_eq!(guest["failed_boot"], false, "{guest:#}");
    let how = wait_exit(name, EXIT_SECS).await;
    assert!(
        how.as_deref().is_some_and(|how| how.starts_with(ended)),
        "wait-exit said {how:?}, expected {ended}"
    );
}

// soft-reboot: shutdown.target, soft-reboot.target, RELOADING=1, then the same PID 1 boots
// again (hostname and machine ID again, no X_SYSTEMD_SHUTDOWN): one more boot, ready again, and
// never `reloading` before its READY=1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_soft_reboot_is_a_second_boot() {
    if skip() {
        return;
    }
    let name = name("soft");
    let hub = Hub::start(&[&name]).await;
    let guard = booted(&hub, &name).await;
    exec(&name, &["systemctl", "soft-reboot"]).await;
    // The second boot starts at soft-reboot.target; a wait begun then is for that boot.
    hub.poll_guest(&name, "boot 2", Duration::from_secs(WAIT_SECS), |g| {
        g["boot_count"] == 2
    })
    .await;
    let guest = wait_ok(&hub, &name, "booted").await;
    assert_eq!(guest["boot_count"], 2, "{guest:#}");
    assert_eq!(guest["phase"], "ready", "{guest:#}");
    assert_eq!(
        guest["shutdown"],
        Value::Null,
        "no X_SYSTEMD_SHUTDOWN: {guest:#}"
    );
    assert_eq!(guest["exit_status"], Value::Null, "{guest:#}");
    assert_eq!(guest["hostname"], name.as_str());
    assert_eq!(phases_of_boot(&guest, 1), ["booting", "ready", "stopping"]);
    assert_eq!(phases_of_boot(&guest, 2), ["booting", "ready"], "{guest:#}");
    let boots: Vec<&Value> = guest["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "boot_started")
        .collect();
    assert_eq!(
        boots.len(),
        2,
        "the hostname sent again is not a third boot"
    );
    drop(guard);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_kexec_ends_with_verb_kexec() {
    if skip() {
        return;
    }
    let name = name("kexec");
    let hub = Hub::start(&[&name]).await;
    let guard = booted(&hub, &name).await;
    // `systemctl kexec` needs a kexec binary the guest lacks (harness README).
    let kexec = [
        "start",
        "kexec.target",
        "--job-mode=replace-irreversibly",
        "--no-block",
    ];
    ends_with(&hub, &name, &kexec, "kexec", 0, "reboot").await;
    drop(guard);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_exit_3_reports_its_exit_status() {
    if skip() {
        return;
    }
    let name = name("exit");
    let hub = Hub::start(&[&name]).await;
    let guard = booted(&hub, &name).await;
    ends_with(&hub, &name, &["exit", "3"], "exit", 3, "exit 3").await;
    drop(guard);
    hub.shutdown().await;
}

// rescue.target becomes active just before READY=1: the boot fails, and a `ready` waiter that
// began before the boot learns it with 409 rather than waiting out its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_rescue_boot_fails_and_ready_waiters_get_409() {
    if skip() {
        return;
    }
    let name = name("rescue");
    let hub = Hub::start(&[&name]).await;
    let (status, _) = hub.wait(&name, "ready", 0).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "registered, not ready");
    let (ready, guard) = tokio::join!(
        hub.wait(&name, "ready", WAIT_SECS),
        boot(&hub, &name, &["--unit", "rescue.target"]),
    );
    let (status, body) = ready;
    assert_eq!(status, StatusCode::CONFLICT, "{body:#}\n{}", hub.log_text());
    assert_eq!(body["awaited"], "ready", "{body:#}");
    assert_eq!(body["guest"]["phase"], "failed", "{body:#}");
    let guest = wait_ok(&hub, &name, "unit:rescue.target").await;
    assert_eq!(guest["phase"], "failed", "{guest:#}");
    assert_eq!(guest["failed_boot"], true, "{guest:#}");
    assert_eq!(
        phases_of_boot(&guest, 1),
        ["booting", "failed"],
        "{guest:#}"
    );
    let (status, _) = hub.wait(&name, "booted", 5).await;
    assert_eq!(status, StatusCode::CONFLICT);
    drop(guard);
    hub.shutdown().await;
}

// SIGKILL to PID 1, or `real-systemd-guest stop`, while it runs: no final message. The hub
// cannot tell (a datagram socket has no hang-up): the phase stays `ready` and the exit status is
// unknown (null), never 0; no shutdown is invented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_that_vanishes_keeps_its_phase_and_an_unknown_exit_status() {
    if skip() {
        return;
    }
    let killed = name("kill");
    let stopped = name("stop");
    let hub = Hub::start(&[&killed, &stopped]).await;
    let (guard_killed, guard_stopped) = tokio::join!(booted(&hub, &killed), booted(&hub, &stopped));
    harness(&["signal", &killed, "KILL"]).await;
    let how = wait_exit(&killed, EXIT_SECS).await;
    assert!(how.is_some(), "the killed guest did not end");
    drop(guard_stopped); // `stop` while running
    for name in [&killed, &stopped] {
        let guest = hub.guest(name).await;
        assert_eq!(guest["phase"], "ready", "{name}: {guest:#}");
        assert_eq!(guest["exit_status"], Value::Null, "{name}: {guest:#}");
        assert_eq!(guest["shutdown"], Value::Null, "{name}: {guest:#}");
        assert_eq!(guest["boot_count"], 1, "{name}: {guest:#}");
    }
    drop(guard_killed);
    hub.shutdown().await;
}

// A start job that never ends (`systemd.run=/bin/sleep infinity`, a oneshot without a time
// limit): PID 1 never sends READY=1, only `STATUS=User job … running`. With --ready-timeout 1
// the hub says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_that_never_becomes_ready_times_out() {
    if skip() {
        return;
    }
    let name = name("never");
    let hub = Hub::start_with_args(&[&name], &["--ready-timeout", "1"]).await;
    let guard = boot(&hub, &name, &["--", "systemd.run=/bin/sleep infinity"]).await;
    let guest = hub
        .poll_guest(
            &name,
            "ready_timed_out",
            Duration::from_secs(WAIT_SECS),
            |g| g["ready_timed_out"] == true,
        )
        .await;
    assert_eq!(guest["phase"], "booting", "{guest:#}");
    assert_eq!(guest["ready_seen"], false, "{guest:#}");
    assert!(guest["ready_deadline"].is_u64(), "{guest:#}");
    // PID 1 explains why, 2 s into the stuck job.
    let guest = hub
        .poll_guest(
            &name,
            "a User job status",
            Duration::from_secs(WAIT_SECS),
            |g| {
                g["status"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("User job kernel-command-line.service/start"))
            },
        )
        .await;
    assert_eq!(guest["phase"], "booting", "{guest:#}");
    assert_eq!(guest["ready_timed_out"], true, "{guest:#}");
    drop(guard);
    hub.shutdown().await;
}
