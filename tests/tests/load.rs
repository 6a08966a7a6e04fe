//! Load, fairness and limits of the real hub (issue 6, item 3), in forms short enough for CI:
//!
//! - a guest over its rate limit has the excess dropped, counted in `drops.rate_limited`, its
//!   fds closed, and one log line for it, while another guest keeps its own budget;
//! - a flooding guest does not hold up a quiet guest's messages on their way to SSE: p50/p99
//!   datagram→SSE latency of the quiet guest alone and during the flood, printed with ratios;
//! - an SSE client that stops reading costs bounded memory while a guest floods, and is
//!   resynced when it reads again;
//! - a registration past `RLIMIT_NOFILE` fails with a clear 503 and leaves nothing behind, the
//!   hub does not spin on accept at the limit, and serves again once the limit is raised;
//! - `notifyhub-soak` in its short form (1000 guests, 100 SSE clients, 50 msg/s for 15 s).
//!
//! The tests take turns (one lock): each measures the hub, not its neighbours.

use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use notifyhub_tests::measure::{RatioTable, Summary, cpu_time, proc_stats};
use notifyhub_tests::{Hub, pipe_closed_within};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::Mutex;

/// One test at a time: they measure the hub's time and memory.
static TURN: Mutex<()> = Mutex::const_new(());

fn drops(guest: &Value, reason: &str) -> u64 {
    guest["drops"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no drops.{reason}: {guest:#}"))
}

/// Sends `STATUS=flood N` datagrams to `path` until `stop`, blocking while the hub's queue is
/// full; returns how many the kernel took.
fn flood_until(path: &Path, stop: &AtomicBool, status_len: usize) -> u64 {
    let socket = UnixDatagram::unbound().expect("socket");
    let padding = "x".repeat(status_len);
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        let payload = format!("STATUS=flood {sent} {padding}");
        socket
            .send_to(payload.as_bytes(), path)
            .unwrap_or_else(|e| panic!("flood send {sent}: {e}"));
        sent += 1;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_over_its_rate_limit_is_dropped_counted_and_logged_once() {
    let _turn = TURN.lock().await;
    // 5 at once, then one token per 1000 s: nothing refills while the test runs.
    let hub = Hub::start_with_args(
        &["noisy", "calm"],
        &["--rate-limit", "0.001", "--rate-burst", "5"],
    )
    .await;
    for i in 0..5 {
        hub.send("noisy", format!("STATUS=kept {i}").as_bytes());
    }
    hub.settle("noisy", 5).await;
    // Over the limit, with fds (a BARRIER=1 pipe each): dropped, and the fds closed at once.
    let mut pipes = Vec::new();
    for i in 0..20 {
        pipes.extend(hub.send_with_fds("noisy", format!("STATUS=over {i}").as_bytes(), 1));
    }
    for (i, read_end) in pipes.iter().enumerate() {
        assert!(
            pipe_closed_within(read_end, Duration::from_secs(10)),
            "the fd of rate-limited datagram {i} stayed open"
        );
    }
    let noisy = hub
        .poll_guest(
            "noisy",
            "20 rate-limited drops",
            Duration::from_secs(10),
            |g| g["drops"]["rate_limited"] == 20,
        )
        .await;
    assert_eq!(noisy["messages"], 5, "{noisy:#}");
    assert_eq!(
        noisy["status"], "kept 4",
        "no message over the limit applied"
    );
    let events = hub.events("noisy").await;
    assert_eq!(events.len(), 5);

    // Another guest has its own bucket.
    hub.send("calm", b"READY=1");
    let (status, calm) = hub.wait("calm", "ready", 10).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(drops(&calm, "rate_limited"), 0);

    // The first drop is logged; the other 19, within the log interval, are not.
    let log = hub.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("rate limit") && line.contains("dropped"))
        .collect();
    assert_eq!(lines.len(), 1, "rate-limit log lines:\n{log}");
    assert!(lines[0].contains("noisy"), "{}", lines[0]);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_zero_is_no_limit_and_bad_values_are_refused() {
    let _turn = TURN.lock().await;
    let hub = Hub::start_with_args(&["a"], &["--rate-limit", "0", "--rate-burst", "1"]).await;
    for i in 0..50 {
        hub.send("a", format!("STATUS={i}").as_bytes());
    }
    let guest = hub.settle("a", 50).await;
    assert_eq!(drops(&guest, "rate_limited"), 0);
    hub.shutdown().await;

    for (bad, flag) in [
        ("--rate-limit=-1", "--rate-limit"),
        ("--rate-limit=fast", "--rate-limit"),
        ("--rate-limit=1e10", "--rate-limit"),
        ("--rate-burst=0", "--rate-burst"),
    ] {
        let out = std::process::Command::new(notifyhub_tests::hub_binary())
            .args(["serve", bad])
            .output()
            .expect("run notifyhub");
        assert_eq!(out.status.code(), Some(64), "{bad}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{bad}: {stderr}");
    }
}

/// Each quiet message's time from `sendto` until an SSE client following only that guest has
/// it, in order; `count` messages `interval` apart.
async fn quiet_latencies(hub: &Hub, guest: &str, round: &str, count: usize) -> Vec<Duration> {
    let response = hub
        .client()
        .get(hub.url(&format!("/api/v1/events?guest={guest}")))
        .send()
        .await
        .expect("SSE");
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = response.bytes_stream().eventsource();
    let socket = UnixDatagram::unbound().expect("socket");
    let path = hub.socket(guest);
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let want = format!("{round} {i}");
        let sent = Instant::now();
        socket
            .send_to(format!("STATUS={want}").as_bytes(), &path)
            .expect("quiet send");
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(event) = events.next().await {
                let event = event.expect("SSE stream");
                let data: Value = serde_json::from_str(&event.data).expect("SSE JSON");
                if data["event"]["type"] == "status_changed" && data["event"]["status"] == want {
                    return Instant::now();
                }
            }
            panic!("SSE stream ended");
        })
        .await
        .unwrap_or_else(|_| panic!("quiet message {want:?} not on SSE within 10 s"));
        latencies.push(seen - sent);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_guest_does_not_hold_up_a_quiet_one() {
    const SAMPLES: usize = 100;
    let _turn = TURN.lock().await;
    // The quiet guest sends well under 100/s; the flood, as fast as the socket takes it.
    let hub = Hub::start_with_args(
        &["quiet", "flood"],
        &["--rate-limit", "100", "--rate-burst", "100"],
    )
    .await;
    hub.send("quiet", b"READY=1");
    hub.settle("quiet", 1).await;

    let alone = quiet_latencies(&hub, "quiet", "alone", SAMPLES).await;

    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (path, stop) = (hub.socket("flood"), Arc::clone(&stop));
        std::thread::spawn(move || flood_until(&path, &stop, 0))
    };
    let flood_began = Instant::now();
    // Let the flood use up its burst first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let flooded = quiet_latencies(&hub, "quiet", "flooded", SAMPLES).await;
    stop.store(true, Ordering::Relaxed);
    let sent = tokio::task::spawn_blocking(move || flooder.join().expect("flood thread"))
        .await
        .expect("join");
    let flood_secs = flood_began.elapsed().as_secs_f64();

    // Every flood datagram is accepted or counted; no more were accepted than the bucket
    // allows over the flood's duration.
    let flood = hub
        .poll_guest(
            "flood",
            "every datagram accounted for",
            Duration::from_secs(30),
            |g| g["messages"].as_u64().unwrap_or(0) + drops(g, "rate_limited") == sent,
        )
        .await;
    let accepted = flood["messages"].as_u64().unwrap();
    let allowed = 100 + (100.0 * flood_secs).ceil() as u64;
    assert!(
        accepted <= allowed,
        "{accepted} accepted of {sent}, the bucket allows {allowed} in {flood_secs:.2} s"
    );
    let quiet = hub.guest("quiet").await;
    assert_eq!(drops(&quiet, "rate_limited"), 0, "{quiet:#}");
    assert_eq!(quiet["messages"], 1 + 2 * SAMPLES as u64);

    let (alone, flooded) = (
        Summary::of(&alone).expect("samples"),
        Summary::of(&flooded).expect("samples"),
    );
    let mut table = RatioTable::new(
        "quiet guest's datagram→SSE latency, alone (baseline) vs beside a flood",
        "µs",
        false,
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    table.row("p50", us(alone.p50), us(flooded.p50));
    table.row("p99", us(alone.p99), us(flooded.p99));
    table.print();
    println!(
        "flood: {sent} datagrams in {flood_secs:.2} s ({:.0}/s), {accepted} accepted, {} \
         rate-limited",
        sent as f64 / flood_secs,
        drops(&flood, "rate_limited")
    );
    hub.shutdown().await;
}

/// Opens `GET /api/v1/events` on a raw connection and reads only the response head.
fn stalled_sse_client(hub: &Hub) -> TcpStream {
    let addr = hub.base_url().trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    // A small receive buffer: the hub's writes back up sooner.
    write!(
        stream,
        "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("request");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sse_client_costs_bounded_memory_and_is_resynced() {
    // Events of ~2 KB (a 1000-byte status, twice: the change and the snapshot).
    const STATUS_LEN: usize = 1000;
    const ROUNDS: usize = 3;
    const PER_ROUND: u64 = 20_000;
    let _turn = TURN.lock().await;
    let hub = Hub::start_with_args(&["flood"], &["--rate-limit", "0"]).await;
    let pid = hub.pid();
    let mut stalled = stalled_sse_client(&hub);

    // Each round floods PER_ROUND messages at the stalled client: ~40 MB of events a round.
    let mut rss = vec![proc_stats(pid).expect("proc").rss_bytes];
    let mut total = 0;
    for _ in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let counted = Arc::new(AtomicU64::new(0));
        let path = hub.socket("flood");
        let flooder = {
            let (stop, counted) = (Arc::clone(&stop), Arc::clone(&counted));
            std::thread::spawn(move || {
                let socket = UnixDatagram::unbound().expect("socket");
                let padding = "x".repeat(STATUS_LEN);
                for i in 0..PER_ROUND {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let payload = format!("STATUS={i} {padding}");
                    socket.send_to(payload.as_bytes(), &path).expect("send");
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        tokio::task::spawn_blocking(move || flooder.join().expect("flooder"))
            .await
            .expect("join");
        total += counted.load(Ordering::Relaxed);
        hub.settle("flood", total).await;
        rss.push(proc_stats(pid).expect("proc").rss_bytes);
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "hub RSS with a stalled SSE client, after each {PER_ROUND}-message flood: {}",
        rss.iter()
            .map(|b| format!("{:.1} MiB", mib(*b)))
            .collect::<Vec<_>>()
            .join(" → ")
    );
    // The store keeps 4096 messages of the guest and 8192 events (~25 MB here); buffering for
    // the client would add ~40 MB a round. Memory after the first round may not keep growing.
    let growth = rss[ROUNDS].saturating_sub(rss[1]);
    assert!(
        growth < 32 * 1024 * 1024,
        "RSS grew {:.1} MiB over {} rounds after the first: {rss:?}",
        mib(growth),
        ROUNDS - 1
    );

    // Reading again, the client finds a resync among what the kernel still held for it.
    let mut seen = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    let needle = b"event: resync";
    while !seen.windows(needle.len()).any(|w| w == needle) {
        assert!(Instant::now() < deadline, "no resync within 30 s");
        match stalled.read(&mut buf) {
            Ok(0) => panic!("the hub closed the stalled stream without a resync"),
            Ok(n) => {
                // Keep only a tail long enough to hold the needle across reads.
                seen.extend_from_slice(&buf[..n]);
                let keep = seen.len().saturating_sub(needle.len() + 64 * 1024);
                seen.drain(..keep);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading the stalled stream: {e}"),
        }
    }
    drop(stalled);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_past_the_fd_limit_fails_clearly_without_spinning() {
    use rustix::process::{Pid, Resource, Rlimit, getrlimit, prlimit};
    let _turn = TURN.lock().await;
    let hub = Hub::start(&[]).await;
    let pid = hub.pid();
    // One request first, so the client's connection is open before the limit bites.
    assert_eq!(hub.get_text("/api/v1/guests").await.0, StatusCode::OK);
    let open = proc_stats(pid).expect("proc").open_fds as u64;
    let limit = open + 20;
    // The soft limit only: raising it again later needs no privilege. The hub's hard limit is
    // ours, inherited.
    let hard = getrlimit(Resource::Nofile).maximum;
    let set_limit = |soft: u64| {
        let soft = Rlimit {
            current: Some(soft),
            maximum: hard,
        };
        prlimit(Pid::from_raw(pid as i32), Resource::Nofile, soft).expect("prlimit the hub")
    };
    set_limit(limit);

    let mut registered = Vec::new();
    let refused = loop {
        let name = format!("g{}", registered.len());
        let (status, body) = hub.add_guest(&name).await;
        match status {
            StatusCode::CREATED => registered.push(name),
            _ => break (name, status, body),
        }
        assert!(registered.len() < 100, "{limit} fds took 100 guests");
    };
    let (name, status, body) = refused;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:#}");
    let error = body["error"].as_str().expect("error text");
    assert!(
        error.contains(&format!("RLIMIT_NOFILE {limit}")) && error.contains(&name),
        "{error}"
    );
    assert!(
        registered.len() >= 10,
        "only {} guests fit",
        registered.len()
    );

    // At the limit, a new connection waits in the backlog: the hub must not spin on accept.
    let cpu_before = cpu_time(pid).expect("cpu");
    let waiting = TcpStream::connect(hub.base_url().trim_start_matches("http://"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_time(pid).expect("cpu") - cpu_before;
    assert!(
        spent < Duration::from_millis(1000),
        "the hub used {spent:?} of CPU in 2 s at its fd limit"
    );
    drop(waiting);

    // The operator raises the limit: the connection waiting in the backlog is taken, the hub
    // serves, and the refused guest registers (the failure left nothing in its way).
    let raised = limit + 16;
    set_limit(raised);
    let (status, list) = hub.get_json("/api/v1/guests").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["guests"]
        .as_array()
        .expect("guests")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(names.len(), registered.len());
    assert!(!names.contains(&name.as_str()));
    assert!(
        !hub.socket(&name).exists(),
        "a refused guest leaves no socket"
    );
    let (status, body) = hub.add_guest(&name).await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    hub.send(&name, b"READY=1");
    assert_eq!(hub.wait(&name, "ready", 10).await.0, StatusCode::OK);
    assert_eq!(
        hub.remove_guest(&registered[0]).await,
        StatusCode::NO_CONTENT
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short_form() {
    let _turn = TURN.lock().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_notifyhub-soak"))
        // The full counts at a twentieth of the default rate, for a debug build of both ends.
        .args(["--duration", "15s", "--sample", "5s", "--rate", "50"])
        .output()
        .await
        .expect("run notifyhub-soak");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "notifyhub-soak failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("datagram→SSE latency     p50"), "{stdout}");
}
