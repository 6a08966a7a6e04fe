//! A guest registered through `POST /api/v1/guests` with a socket mode and owner of its own gets
//! them back after a restart (the journal keeps them with its registration, and in a checkpoint
//! once retention deleted that row); a guest without them follows the hub's `--socket-mode` of
//! the run. The real binary, restarted on the same `--state-dir`.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use notifyhub_tests::Hub;
use reqwest::StatusCode;
use serde_json::json;

/// `(uid, gid, mode)` of the guest's notify socket file.
fn access(hub: &Hub, name: &str) -> (u32, u32, u32) {
    let meta = std::fs::symlink_metadata(hub.socket(name)).unwrap();
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

async fn start(state: &Path, socket_mode: &str, retain_messages: &str) -> Hub {
    let state = state.to_str().unwrap();
    Hub::start_with_args(
        &[],
        &[
            "--state-dir",
            state,
            "--socket-mode",
            socket_mode,
            "--retain-messages",
            retain_messages,
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_guest_keeps_its_own_socket_mode_and_owner() {
    let hub_user = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    // As root: a host group no process here has; unprivileged: our own, the only one allowed.
    let group = if rustix::process::geteuid().is_root() {
        100_000
    } else {
        hub_user.1
    };
    let state = tempfile::tempdir().unwrap();
    let hub = start(state.path(), "0600", "0").await;
    for body in [
        json!({"name": "own", "socket_mode": "0640", "socket_owner": format!(":{group}")}),
        json!({"name": "plain"}),
    ] {
        let resp = hub
            .client()
            .post(hub.url("/api/v1/guests"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{body}");
    }
    let own = (hub_user.0, group, 0o640);
    assert_eq!(access(&hub, "own"), own);
    assert_eq!(access(&hub, "plain"), (hub_user.0, hub_user.1, 0o600));
    for status in ["one", "two", "three"] {
        hub.send("own", format!("STATUS={status}").as_bytes());
    }
    hub.settle("own", 3).await;
    hub.shutdown().await;

    // Restored from the registration row; `plain` follows this run's --socket-mode. Retention
    // (at start, after the replay) then checkpoints `own` and deletes its registration row.
    let hub = start(state.path(), "0620", "1").await;
    assert_eq!(access(&hub, "own"), own);
    assert_eq!(access(&hub, "plain"), (hub_user.0, hub_user.1, 0o620));
    assert_eq!(hub.guest("own").await["status"], "three");
    hub.shutdown().await;

    // Restored from the checkpoint.
    let hub = start(state.path(), "0620", "1").await;
    assert_eq!(access(&hub, "own"), own);
    assert_eq!(access(&hub, "plain"), (hub_user.0, hub_user.1, 0o620));
    let (status, events) = hub.get_json("/api/v1/guests/own/events").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        events["events"].as_array().unwrap().len(),
        1,
        "retention kept the newest: the state came from the checkpoint: {events}"
    );
    hub.send("own", b"READY=1");
    hub.settle("own", 4).await;
    hub.shutdown().await;
}
