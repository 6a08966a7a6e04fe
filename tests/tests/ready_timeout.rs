//! `notifyhub serve --ready-timeout SECONDS`: a boot that sends no READY=1 within SECONDS of its
//! first message is flagged `ready_timed_out`, with a reason on the dashboard and guest page.
//! A plain sender stands in for the guest (the real one: `real_guest_scenarios.rs`).

use std::time::Duration;

use notifyhub_tests::{Hub, SETTLE_TIMEOUT};
use serde_json::Value;

/// The opening tag of the page's readiness warning badge(s), e.g.
/// `<span class="badge warn" data-field="ready_timed_out" title="…" hidden>`, and their text.
fn warnings(page: &str) -> Vec<(String, String)> {
    page.match_indices("data-field=\"ready_timed_out\"")
        .map(|(at, _)| {
            let start = page[..at].rfind('<').unwrap();
            let end = at + page[at..].find('>').unwrap();
            let text_end = end + page[end..].find("</span>").unwrap();
            (
                page[start..=end].to_string(),
                page[end + 1..text_end].to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_without_ready_within_the_timeout_is_flagged_with_a_reason() {
    let hub = Hub::start_with_args(&["slow", "quick"], &["--ready-timeout", "1"]).await;
    hub.send("slow", b"X_SYSTEMD_HOSTNAME=<b>slow</b>");
    hub.send("quick", b"X_SYSTEMD_HOSTNAME=quick");
    hub.send("quick", b"READY=1");
    let slow = hub.settle("slow", 1).await;
    let deadline = slow["ready_deadline"].as_u64().expect("a ready_deadline");
    let first = slow["first_seen"].as_u64().unwrap();
    assert_eq!(deadline - first, 1_000_000, "{slow:#}");
    assert_eq!(slow["ready_timed_out"], false, "not yet");

    // The deadline is 1 s away; SETTLE_TIMEOUT bounds how late the hub may notice.
    let slow = hub
        .poll_guest(
            "slow",
            "ready_timed_out",
            Duration::from_secs(1) + SETTLE_TIMEOUT,
            |g| g["ready_timed_out"] == true,
        )
        .await;
    assert_eq!(
        slow["phase"], "booting",
        "it may still become ready: {slow:#}"
    );
    let timeline: Vec<&Value> = slow["timeline"].as_array().unwrap().iter().collect();
    assert!(
        timeline
            .iter()
            .any(|m| m["type"] == "ready_timed_out" && m["deadline"] == deadline),
        "{slow:#}"
    );
    let quick = hub.settle("quick", 2).await;
    assert_eq!(
        (quick["phase"].as_str(), &quick["ready_timed_out"]),
        (Some("ready"), &Value::Bool(false))
    );

    // The guest page: one visible warning with the reason and the deadline.
    let (status, page) = hub.get_text("/guests/slow").await;
    assert_eq!(status, 200);
    let badges = warnings(&page);
    assert_eq!(badges.len(), 1, "{badges:?}");
    let (tag, text) = &badges[0];
    assert_eq!(text, "not ready after 1 s");
    assert!(!tag.contains(" hidden"), "{tag}");
    assert!(tag.contains("title=\"no READY=1 by "), "{tag}");
    // The guest's hostname is text, escaped like all guest text.
    assert!(
        page.contains("b&#62;slow&#60;/b"),
        "the hostname is escaped"
    );
    assert!(!page.contains("<b>slow</b>"));
    let (_, page) = hub.get_text("/guests/quick").await;
    assert!(
        warnings(&page)
            .iter()
            .all(|(tag, _)| tag.contains(" hidden"))
    );

    // The dashboard: slow's row warns, quick's does not, and the row template (for guests the
    // script adds) carries the same text, hidden.
    let (_, page) = hub.get_text("/").await;
    let badges = warnings(&page);
    assert_eq!(badges.len(), 3, "{badges:?}");
    assert!(badges.iter().all(|(_, text)| text == "not ready after 1 s"));
    let shown: Vec<bool> = badges
        .iter()
        .map(|(tag, _)| !tag.contains(" hidden"))
        .collect();
    // Rows are sorted by name (quick, slow), then the template.
    assert_eq!(shown, [false, true, false]);

    // READY=1 after the deadline: ready, and the flag stays for this boot; a new boot clears it.
    hub.send("slow", b"READY=1");
    let slow = hub.settle("slow", 2).await;
    assert_eq!(
        (slow["phase"].as_str(), &slow["ready_timed_out"]),
        (Some("ready"), &Value::Bool(true))
    );
    hub.send("slow", b"X_SYSTEMD_HOSTNAME=slow");
    let slow = hub.settle("slow", 3).await;
    assert_eq!(slow["boot_count"], 2);
    assert_eq!(slow["ready_timed_out"], false, "{slow:#}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_there_is_no_deadline() {
    let hub = Hub::start(&["g"]).await;
    hub.send("g", b"X_SYSTEMD_HOSTNAME=g");
    let guest = hub.settle("g", 1).await;
    assert_eq!(guest["ready_deadline"], Value::Null, "{guest:#}");
    assert_eq!(guest["ready_timed_out"], false);
    let (_, page) = hub.get_text("/guests/g").await;
    let badges = warnings(&page);
    assert_eq!(badges.len(), 1);
    assert!(badges[0].0.contains(" hidden"), "{badges:?}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ready_timeout_is_refused() {
    // 1.5 is a duration now (1.5 s); 1.5x is none.
    for bad in ["0", "-1", "soon", "1.5x"] {
        let out = tokio::process::Command::new(notifyhub_tests::hub_binary())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--run-dir",
                "/nonexistent",
                "--state-dir",
                "none",
                &format!("--ready-timeout={bad}"),
            ])
            .output()
            .await
            .unwrap();
        // 64: EX_USAGE, the binary's exit code for any command-line error.
        assert_eq!(out.status.code(), Some(64), "--ready-timeout {bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--ready-timeout"), "{stderr}");
    }
}
