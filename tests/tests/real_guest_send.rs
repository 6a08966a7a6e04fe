//! `notifyhub send` judged by systemd itself: in a real systemd 257 guest, a `Type=notify` unit
//! whose `ExecStart=` runs `notifyhub send` becomes active with the status it sent; one whose
//! `notifyhub send` is given an argument with a newline (`STATUS=x\nREADY=1`, an injection of
//! READY=1) is refused by `notifyhub send`, so the unit stays `activating`.

use std::time::Duration;

use notifyhub_tests::real_guest::{boot_with_hub_binary as boot, skip};

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
