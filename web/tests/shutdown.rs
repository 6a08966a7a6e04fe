//! Graceful shutdown ends open SSE streams and long-polls (axum issue 2673) and removes the
//! guests' sockets; the `notifyhub` binary does it on SIGTERM.

mod common;

use std::process::Stdio;

use common::{TestHub, exists, next_event, soon};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_streams_and_long_polls() {
    let mut hub = TestHub::start(&["web1"]).await;
    let socket = hub.socket("web1");
    let mut stream = hub.sse("/api/v1/events", None).await;
    let waiting = {
        let request = hub
            .client
            .get(hub.url("/api/v1/guests/web1/wait?for=off&timeout=3600"));
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        })
    };
    hub.until_waiters("web1", 1).await;
    hub.send("web1", b"STATUS=still here");
    assert_eq!(
        next_event(&mut stream).await.event,
        "guest",
        "the stream is live"
    );

    hub.stop().await;

    // Events sent before the shutdown may still be in flight; then the stream ends.
    soon("end of stream", async {
        while stream.next().await.is_some() {}
    })
    .await;
    let (status, body) = soon("long-poll", waiting).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["awaited"], "off");
    assert_eq!(body["guest"]["status"], "still here");
    assert!(body["error"].as_str().unwrap().contains("shutting down"));
    assert!(!exists(&socket), "socket removed");
    assert!(
        !exists(&hub.run_dir.join("guests")),
        "guest directories removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_prints_its_sockets_and_address_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_notifyhub"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--guest",
            "web1",
            "--guest",
            "db.2",
            "--state-dir",
            "none",
            "--run-dir",
        ])
        .arg(tmp.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut line = async || {
        soon("stdout line", lines.next_line())
            .await
            .unwrap()
            .expect("a line")
    };

    let guests_dir = tmp.path().join("guests");
    for name in ["web1", "db.2"] {
        let socket = guests_dir.join(name).join("notify");
        assert_eq!(
            line().await,
            format!("guest {name}: NOTIFY_SOCKET={}", socket.display())
        );
        assert!(exists(&socket));
    }
    let listening = line().await;
    let address = listening
        .strip_prefix("notifyhub: listening on http://")
        .unwrap_or_else(|| panic!("{listening:?}"));
    let address: std::net::SocketAddr = address.parse().unwrap();
    assert_ne!(address.port(), 0, "the bound port, not the asked one");

    let guests: Value = reqwest::get(format!("http://{address}/api/v1/guests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(guests["guests"].as_array().unwrap().len(), 2);
    let events = reqwest::Client::new()
        .get(format!("http://{address}/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);

    let pid = rustix::process::Pid::from_raw(child.id().unwrap().try_into().unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = soon("exit after SIGTERM", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !exists(&guests_dir),
        "sockets and their directories removed"
    );
    drop(events);
}

#[tokio::test]
async fn the_binary_refuses_a_socket_path_over_107_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = tmp.path().join("d".repeat(60));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_notifyhub"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--guest",
            &"a".repeat(40),
            "--state-dir",
            "none",
            "--run-dir",
        ])
        .arg(&deep)
        .output();
    let output = soon("exit", output).await.unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "nothing announced");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the limit is 107"), "{stderr}");
}
