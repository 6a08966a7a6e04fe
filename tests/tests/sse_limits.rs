//! What Server-Sent Events clients may cost the real hub: a client that stops reading holds
//! hyper's bounded buffer (16 KiB) besides its kernel socket buffers, never the events it
//! misses (measured against the hub's RSS after its store's own bounded memory filled up); `--max-sse-clients` caps the streams (503 beyond); `?guest=` must name a guest (404).

use std::time::{Duration, Instant};

use notifyhub_tests::Hub;
use notifyhub_tests::measure::proc_stats;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The hub's resident set in bytes.
fn rss_bytes(pid: u32) -> u64 {
    proc_stats(pid).expect("the hub's /proc stats").rss_bytes
}

/// Opens `GET path` on a connection with a 4 KiB receive buffer and reads the response head;
/// returns the status line and the stream, which the caller then leaves unread.
async fn open_stream(hub: &Hub, path: &str) -> (String, TcpStream) {
    let addr = hub.base_url().trim_start_matches("http://");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket
        .connect(addr.parse().expect("address"))
        .await
        .expect("connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut byte))
            .await
            .expect("a response head within 10 s")
            .expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_sse_clients_cost_a_bounded_buffer_each() {
    const CLIENTS: usize = 400;
    const MESSAGES: u64 = 3000;
    let hub = Hub::start_with_args(
        &["flood"],
        &[
            "--state-dir",
            "none",
            "--rate-limit",
            "0",
            "--history-memory",
            "4MiB",
            // Kept open however long the machine takes: what they hold is the point.
            "--http-idle-timeout",
            "300s",
        ],
    )
    .await;
    let pid = hub.pid();
    // Events of ~6 KB (a 3000-byte status, in the change and in the state it carries).
    let padding = "Z".repeat(3000);
    let mut sent = 0;
    let mut flood = |hub: &Hub| {
        for _ in 0..MESSAGES {
            hub.send("flood", format!("STATUS={sent}-{padding}").as_bytes());
            sent += 1;
        }
        sent
    };
    // First without clients: the store's own bounded memory (4 MiB of history, 8 MiB of event
    // log) fills up.
    hub.settle("flood", flood(&hub)).await;
    let before = rss_bytes(pid);
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (status, stream) = open_stream(&hub, "/api/v1/events").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        clients.push(stream);
    }
    // Then at the clients, which never read: some 18 MB each.
    hub.settle("flood", flood(&hub)).await;
    let after = rss_bytes(pid);
    let per_client = after.saturating_sub(before) / CLIENTS as u64;
    println!(
        "hub RSS with {CLIENTS} stalled SSE clients: {:.1} → {:.1} MiB over {MESSAGES} events \
         ({:.1} KiB per client)",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per_client as f64 / 1024.0
    );
    // hyper's buffer is 16 KiB (and one event more), besides the connection and its stream
    // (about 50 KiB in all in a debug build, 12 KB in a release build). Unbounded, each client
    // held 200-500 KiB.
    assert!(
        per_client < 128 * 1024,
        "{per_client} bytes per stalled client ({before} → {after} bytes of RSS)"
    );
    drop(clients);
    hub.shutdown().await;
}

#[tokio::test]
async fn sse_streams_over_the_cap_get_503_until_one_ends() {
    let hub = Hub::start_with_args(
        &["web1"],
        &["--state-dir", "none", "--max-sse-clients", "2"],
    )
    .await;
    let (first, stream) = open_stream(&hub, "/api/v1/events").await;
    let (second, _kept) = open_stream(&hub, "/api/v1/events?guest=web1").await;
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("HTTP/1.1 200 OK", "HTTP/1.1 200 OK")
    );
    let (status, body) = hub.get_text("/api/v1/events").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("--max-sse-clients"), "{body}");
    // Other requests are served as before.
    assert_eq!(hub.get_json("/api/v1/guests/web1").await.0, StatusCode::OK);

    // Once a stream ends (its client went away), its place is free again.
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _stream) = open_stream(&hub, "/api/v1/events").await;
        if status == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no place within 10 s of a client leaving: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn the_events_of_an_unknown_guest_are_404() {
    let hub = Hub::start_with_args(&["web1"], &["--state-dir", "none"]).await;
    let (status, body) = hub.get_json("/api/v1/events?guest=nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "no guest named \"nope\"");
    let (status, _) = open_stream(&hub, "/api/v1/events?guest=web1").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    hub.shutdown().await;
}

/// A client that stopped reading, with the hub's buffers for it full, does not keep SIGTERM
/// from stopping the hub with status 0 (a connection that cannot finish is cut after the
/// shutdown grace period, 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sse_client_does_not_hold_up_shutdown() {
    let hub = Hub::start_with_args(&["g"], &["--state-dir", "none", "--rate-limit", "0"]).await;
    let (status, _stalled) = open_stream(&hub, "/api/v1/events?guest=g").await;
    assert!(status.contains(" 200 "), "{status}");
    // Enough events to fill the client's 4 KiB receive buffer, the hub's send buffer and
    // hyper's: the hub can write nothing more to it.
    let status_text = "x".repeat(3000);
    for i in 0..2000 {
        hub.send("g", format!("STATUS={i}{status_text}").as_bytes());
    }
    hub.settle("g", 2000).await;
    // Exits 0 within the fixture's bound (`SHUTDOWN_TIMEOUT`, 10 s; the grace is 5 s).
    hub.shutdown().await;
}
