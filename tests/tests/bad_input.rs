//! Hostile and malformed input against the real `notifyhub` binary: oversize, NUL, non-UTF-8,
//! empty, CRLF, whitespace, unknown guests and conditions, markup in STATUS, and a flood.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use notifyhub_tests::{Hub, SETTLE_TIMEOUT};
use reqwest::StatusCode;
use serde_json::Value;

fn drops(guest: &Value, key: &str) -> u64 {
    guest["drops"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("drops.{key} missing: {guest:#}"))
}

fn drops_total(guest: &Value) -> u64 {
    guest["drops"]
        .as_object()
        .unwrap_or_else(|| panic!("drops is not an object: {guest:#}"))
        .values()
        .map(|v| v.as_u64().expect("drop counter"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_datagram_is_dropped_whole() {
    let hub = Hub::start(&["g"]).await;
    hub.send("g", b"STATUS=kept");
    hub.settle("g", 1).await;

    let mut big = b"READY=1\nSTATUS=".to_vec();
    big.resize(4097, b'a');
    hub.send("g", &big);
    let guest = hub
        .poll_guest("g", "drops.oversize == 1", SETTLE_TIMEOUT, |g| {
            g["drops"]["oversize"] == 1
        })
        .await;
    assert_eq!(guest["status"], "kept", "{guest:#}");
    assert_eq!(
        guest["phase"], "booting",
        "READY=1 of the dropped datagram must not apply"
    );
    assert_eq!(guest["messages"], 1, "{guest:#}");

    // Exactly 4096 bytes is the limit, and is taken.
    let mut max = b"STATUS=".to_vec();
    max.resize(4096, b'b');
    hub.send("g", &max);
    let guest = hub.settle("g", 2).await;
    assert_eq!(guest["status"].as_str().map(str::len), Some(4096 - 7));
    assert_eq!(drops(&guest, "oversize"), 1);
    assert_eq!(drops_total(&guest), 1);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_nul_is_dropped_trailing_nul_tolerated() {
    let hub = Hub::start(&["g"]).await;
    hub.send("g", b"READY=1\0STATUS=x");
    let guest = hub
        .poll_guest("g", "drops.embedded_nul == 1", SETTLE_TIMEOUT, |g| {
            g["drops"]["embedded_nul"] == 1
        })
        .await;
    assert_eq!(guest["phase"], "registered", "{guest:#}");
    assert_eq!(guest["messages"], 0);
    assert!(guest["status"].is_null());

    // One trailing NUL is tolerated (systemd's notify-recv.c).
    hub.send("g", b"READY=1\nSTATUS=trail\0");
    let guest = hub.settle("g", 1).await;
    assert_eq!(guest["phase"], "ready", "{guest:#}");
    assert_eq!(guest["status"], "trail");
    assert_eq!(drops(&guest, "embedded_nul"), 1);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_status_is_ignored_rest_applies() {
    let hub = Hub::start(&["g"]).await;
    hub.send("g", b"STATUS=good");
    hub.settle("g", 1).await;
    hub.send("g", b"STATUS=\xff\xfe bad\nREADY=1");
    let guest = hub.settle("g", 2).await;
    assert_eq!(guest["phase"], "ready", "READY=1 still applies: {guest:#}");
    assert_eq!(guest["status"], "good", "invalid STATUS ignored: {guest:#}");
    assert_eq!(drops_total(&guest), 0);
    // the event log keeps the exact bytes
    let events = hub.events("g").await;
    assert_eq!(
        events[1]["hex"],
        hex::encode(b"STATUS=\xff\xfe bad\nREADY=1")
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_datagram_changes_nothing_but_the_count() {
    let hub = Hub::start(&["g"]).await;
    hub.send(
        "g",
        b"READY=1\nSTATUS=s\nX_SYSTEMD_UNIT_ACTIVE=multi-user.target",
    );
    let before = hub.settle("g", 1).await;
    hub.send("g", b"");
    let after = hub.settle("g", 2).await;
    assert_eq!(after["messages"], 2, "{after:#}");
    for key in [
        "phase",
        "status",
        "hostname",
        "machine_id",
        "active_units",
        "boot_count",
        "ready_seen",
        "failed_boot",
        "main_pid",
        "errno",
        "exit_status",
        "shutdown",
        "drops",
    ] {
        assert_eq!(
            before[key], after[key],
            "{key} changed after an empty datagram"
        );
    }
    assert_eq!(after["phase"], "ready");
    let events = hub.events("g").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["hex"], "");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_and_blank_lines_vanish_leading_space_does_not() {
    let hub = Hub::start(&["crlf", "space"]).await;
    hub.send("crlf", b"\r\nREADY=1\r\n\r\nSTATUS=x\r\n");
    let guest = hub.settle("crlf", 1).await;
    assert_eq!(guest["phase"], "ready", "{guest:#}");
    assert_eq!(guest["status"], "x");

    hub.send("space", b" READY=1");
    hub.send("space", b"READY = 1\nREADY=true\nREADY=0");
    let guest = hub.settle("space", 2).await;
    assert_eq!(
        guest["phase"], "booting",
        "no exact READY=1 line: {guest:#}"
    );
    assert_eq!(guest["ready_seen"], false);
    let (status, body) = hub.wait("space", "ready", 1).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body:#}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_guests_and_bad_conditions() {
    let hub = Hub::start(&["g"]).await;
    let (status, _) = hub.get_text("/api/v1/guests/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = hub.get_text("/api/v1/guests/nope/events").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = hub.wait("nope", "ready", 1).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    for bad in ["bogus", "phase:nope", "unit:", "READY", "unit:not a unit"] {
        let (status, body) = hub.wait("g", bad, 1).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "for={bad}: {body:#}");
    }
    let (status, body) = hub.get_text("/api/v1/guests/g/wait?timeout=1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "missing for=: {body}");
    hub.shutdown().await;
}

/// The names in `GET /api/v1/guests` (`{"guests": [...]}`).
async fn guest_names(hub: &Hub) -> Vec<String> {
    let (status, body) = hub.get_json("/api/v1/guests").await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    body["guests"]
        .as_array()
        .unwrap_or_else(|| panic!("no guests array: {body:#}"))
        .iter()
        .map(|g| g["name"].as_str().expect("guest name").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_added_and_removed_at_run_time() {
    let hub = Hub::start(&[]).await;
    let (status, body) = hub.add_guest("late1").await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    assert_eq!(body["name"], "late1", "{body:#}");
    let socket = hub.socket("late1");
    assert!(socket.exists(), "{} after POST", socket.display());
    assert_eq!(body["notify_socket"], socket.to_str().unwrap(), "{body:#}");

    assert_eq!(guest_names(&hub).await, ["late1"]);

    hub.send("late1", b"READY=1");
    let (status, guest) = hub.wait("late1", "ready", 5).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(guest["phase"], "ready");

    let (status, _) = hub.add_guest("bad/../name").await;
    assert!(status.is_client_error(), "bad name: {status}");

    assert_eq!(hub.remove_guest("late1").await, StatusCode::NO_CONTENT);
    let (status, _) = hub.get_text("/api/v1/guests/late1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(guest_names(&hub).await.is_empty());
    hub.shutdown().await;
}

const XSS: &str = "<script>alert(1)</script>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_in_status_is_escaped_in_html_and_plain_in_sse() {
    let hub = Hub::start(&["xss"]).await;
    let resp = hub
        .client()
        .get(hub.url("/api/v1/events"))
        .send()
        .await
        .expect("GET /api/v1/events");
    assert_eq!(resp.status(), StatusCode::OK);
    let ctype = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        ctype.starts_with("text/event-stream"),
        "content-type {ctype:?}"
    );
    let mut stream = resp.bytes_stream().eventsource();

    hub.send("xss", format!("STATUS={XSS}").as_bytes());

    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = stream.next().await {
            let event = event.expect("SSE stream");
            let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                panic!("SSE data is not JSON: {:?}", event.data);
            };
            if data["guest"] == "xss" && data["snapshot"]["status"] == XSS {
                return (event.event, data);
            }
        }
        panic!("SSE stream ended");
    })
    .await
    .expect("an SSE event with the new status within 10 s");
    assert_eq!(found.0, "guest", "SSE event type: {:#}", found.1);
    assert!(
        found.1["id"].is_u64() || found.1["id"].is_string(),
        "id: {:#}",
        found.1
    );
    drop(stream);

    let (status, html) = hub.get_text("/").await;
    assert_eq!(status, StatusCode::OK);
    // Named (`&lt;`) or numeric (`&#60;`, askama's choice) entities are both correct escaping.
    let escaped = [
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "&#60;script&#62;alert(1)&#60;/script&#62;",
        "&#x3c;script&#x3e;alert(1)&#x3c;/script&#x3e;",
        "&#x3C;script&#x3E;alert(1)&#x3C;/script&#x3E;",
    ];
    assert!(
        escaped.iter().any(|e| html.contains(e)),
        "the dashboard shows the status escaped:\n{html}"
    );
    assert!(
        !html.contains("<script>alert"),
        "unescaped markup in the dashboard:\n{html}"
    );
    hub.shutdown().await;
}

/// What the flood thread did.
#[derive(Debug)]
struct Flood {
    delivered: u64,
    stalled_out: bool,
    would_block: u64,
    elapsed: Duration,
}

/// Sends `count` datagrams to `path` as fast as the socket takes them. On a full receive queue
/// (EAGAIN/ENOBUFS) it retries; a single datagram stalled for 5 s ends the flood.
fn flood(path: PathBuf, count: u64, sent: &AtomicU64) -> Flood {
    let start = Instant::now();
    let socket = UnixDatagram::unbound().expect("socket");
    socket.set_nonblocking(true).expect("nonblocking");
    let mut would_block = 0;
    for i in 0..count {
        let payload = format!("STATUS=flood {i}\nWATCHDOG=1");
        let first_try = Instant::now();
        loop {
            match socket.send_to(payload.as_bytes(), &path) {
                Ok(_) => break,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(rustix::io::Errno::NOBUFS.raw_os_error()) =>
                {
                    would_block += 1;
                    if first_try.elapsed() > Duration::from_secs(5) {
                        return Flood {
                            delivered: i,
                            stalled_out: true,
                            would_block,
                            elapsed: start.elapsed(),
                        };
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(e) => panic!("flood send {i}: {e}"),
            }
        }
        sent.store(i + 1, Ordering::Relaxed);
    }
    Flood {
        delivered: count,
        stalled_out: false,
        would_block,
        elapsed: start.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_does_not_starve_other_guests() {
    const COUNT: u64 = 100_000;
    let hub = Hub::start(&["flood-a", "calm-b"]).await;
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (path, sent, done) = (hub.socket("flood-a"), Arc::clone(&sent), Arc::clone(&done));
        std::thread::spawn(move || {
            let result = flood(path, COUNT, &sent);
            done.store(true, Ordering::SeqCst);
            result
        })
    };

    // Mid-flood: B says READY=1 and a client waits for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent.load(Ordering::Relaxed) < COUNT / 5 && !done.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "flood sent only {} in 60 s",
            sent.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent_at_ready = sent.load(Ordering::Relaxed);
    hub.send("calm-b", b"READY=1\nSTATUS=calm");
    let (status, body) = hub.wait("calm-b", "ready", 10).await;
    let flood_still_running = !done.load(Ordering::SeqCst);
    let sent_at_answer = sent.load(Ordering::Relaxed);
    assert_eq!(
        status,
        StatusCode::OK,
        "wait for B during the flood: {body:#}"
    );
    assert_eq!(body["status"], "calm");
    println!(
        "B ready while flooding: READY sent after {sent_at_ready}, answered after {sent_at_answer} \
         of {COUNT} (flood still running: {flood_still_running})"
    );

    let result = tokio::task::spawn_blocking(move || flooder.join().expect("flood thread"))
        .await
        .expect("join");
    println!(
        "flood: {} of {COUNT} delivered in {:?}, {} EAGAIN/ENOBUFS retries",
        result.delivered, result.elapsed, result.would_block
    );
    assert!(
        !result.stalled_out,
        "the hub stopped draining guest A's socket: {result:?}"
    );

    // Accounting: every delivered datagram is either a message or a drop, nothing more.
    let guest = hub
        .poll_guest(
            "flood-a",
            "messages + drops == delivered",
            Duration::from_secs(30),
            |g| g["messages"].as_u64().unwrap_or(0) + drops_total(g) >= result.delivered,
        )
        .await;
    let messages = guest["messages"].as_u64().unwrap();
    assert!(
        messages <= result.delivered,
        "{messages} messages > {} sent",
        result.delivered
    );
    assert_eq!(
        messages + drops_total(&guest),
        result.delivered,
        "messages + drops vs delivered: {:#}",
        guest["drops"]
    );
    assert_eq!(drops(&guest, "oversize") + drops(&guest, "embedded_nul"), 0);
    if messages == result.delivered {
        assert_eq!(guest["status"], format!("flood {}", COUNT - 1));
    }
    println!("A: {messages} messages, drops {}", guest["drops"]);

    // The hub still answers, and B is unaffected.
    let b = hub.guest("calm-b").await;
    assert_eq!(b["phase"], "ready");
    assert_eq!(b["messages"], 1);
    let (status, _) = hub.get_text("/").await;
    assert_eq!(status, StatusCode::OK);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_reports_registered_changes_and_removed() {
    let hub = Hub::start(&[]).await;
    let resp = hub
        .client()
        .get(hub.url("/api/v1/events"))
        .send()
        .await
        .expect("GET /api/v1/events");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream().eventsource();

    let (status, _) = hub.add_guest("sse1").await;
    assert_eq!(status, StatusCode::CREATED);
    hub.send("sse1", b"READY=1\nSTATUS=up");
    let (status, _) = hub.wait("sse1", "ready", 5).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hub.remove_guest("sse1").await, StatusCode::NO_CONTENT);

    // registered, then guest events (one with the ready snapshot), then removed; ids increase.
    let mut kinds = Vec::new();
    let mut ids = Vec::new();
    let mut saw_ready = false;
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = stream.next().await {
            let event = event.expect("SSE stream");
            let data: Value = serde_json::from_str(&event.data)
                .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", event.data));
            assert_eq!(data["guest"], "sse1", "{data:#}");
            ids.push(
                data["id"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("numeric id: {data:#}")),
            );
            if event.event == "guest" && data["snapshot"]["phase"] == "ready" {
                assert_eq!(data["snapshot"]["status"], "up", "{data:#}");
                saw_ready = true;
            }
            kinds.push(event.event.clone());
            if event.event == "removed" {
                return;
            }
        }
        panic!("SSE stream ended");
    })
    .await
    .unwrap_or_else(|_| panic!("no `removed` event within 10 s; got {kinds:?}"));
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("registered"),
        "{kinds:?}"
    );
    assert!(
        kinds[1..kinds.len() - 1].iter().all(|k| k == "guest"),
        "{kinds:?}"
    );
    assert!(saw_ready, "no guest event with phase ready: {kinds:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    hub.shutdown().await;
}
