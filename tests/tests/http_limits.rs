//! The HTTP side holds against local clients that misuse it, on the real binary:
//!
//! - connections that never send a request, or stop halfway through one, are closed after
//!   `--http-idle-timeout`, while SSE streams and long-polls (answers in progress) are not cut;
//! - at most `--max-connections` are served at once: more connections cost the hub no
//!   descriptor (they wait in the kernel's backlog), the API answers again as soon as one
//!   closes, and a guest's `BARRIER=1` fd finds room meanwhile;
//! - without a token, a request whose `Host` is not an IP literal, `localhost` or an
//!   `--allowed-host` name (a DNS-rebound page) gets 421; with a token, or on a UNIX socket, any
//!   `Host` passes;
//! - refusals are logged once per burst with what the client sent cut to 200 bytes, and the
//!   503s the hub gives on purpose are not logged as errors;
//! - `--max-guests` caps registrations through the API, and a hybrid socket in a directory that
//!   does not exist is the client's mistake (400).
//!
//! Bounds are liveness bounds ([`LIVENESS`], 10 s, for what takes well under a second).

use std::os::fd::AsFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;
use std::time::Duration;

use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use notifyhub_tests::{Hub, pipe, pipe_closed_within};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How long something that takes well under a second may take here.
const LIVENESS: Duration = Duration::from_secs(10);

/// `host:port` of the hub.
fn authority(hub: &Hub) -> String {
    hub.base_url().trim_start_matches("http://").to_owned()
}

/// Sends `request` as it is on a new connection and reads the answer to EOF: its status code
/// and body.
async fn raw(hub: &Hub, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(authority(hub)).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(LIVENESS, stream.read_to_end(&mut answer))
        .await
        .expect("an answer and EOF")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    (status, body)
}

/// `METHOD path` with `Host: host` and `extra` header lines, `Connection: close`.
fn request(method: &str, path: &str, host: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

/// Whether the hub closes `stream` within [`LIVENESS`] (EOF or a reset), reading and
/// discarding what it sends before.
async fn closed_by_hub(stream: &mut TcpStream) -> bool {
    let mut buf = [0; 4096];
    tokio::time::timeout(LIVENESS, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// Log lines of `hub` that contain `what`.
fn log_lines<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    log.lines().filter(|line| line.contains(what)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_but_streams_and_long_polls_are_not() {
    let hub = Hub::start_with_args(&["web1"], &["--http-idle-timeout", "1s"]).await;
    // Connected, never a byte.
    let mut idle = TcpStream::connect(authority(&hub)).await.unwrap();
    // Half a request head, then silence.
    let mut slow = TcpStream::connect(authority(&hub)).await.unwrap();
    slow.write_all(b"GET /api/v1/guests HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    // One request answered, then kept alive and idle.
    let mut kept = TcpStream::connect(authority(&hub)).await.unwrap();
    kept.write_all(b"GET /api/v1/guests/web1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0; 12];
    kept.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // An SSE stream and a long-poll, each open for 3 s: three idle timeouts.
    let events = hub
        .client()
        .get(hub.url("/api/v1/events?guest=web1"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let mut events = events.bytes_stream().eventsource();
    let wait = tokio::spawn({
        let (client, url) = (
            hub.client().clone(),
            hub.url("/api/v1/guests/web1/wait?for=ready&timeout=30"),
        );
        async move { client.get(url).send().await }
    });

    for (what, stream) in [
        ("idle", &mut idle),
        ("slow", &mut slow),
        ("kept", &mut kept),
    ] {
        assert!(
            closed_by_hub(stream).await,
            "the {what} connection stays open"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    hub.send("web1", b"READY=1\nSTATUS=after three timeouts");
    let answer = tokio::time::timeout(LIVENESS, wait)
        .await
        .expect("the long-poll answers")
        .unwrap()
        .expect("the long-poll was not cut");
    assert_eq!(answer.status(), StatusCode::OK);
    let guest: Value = answer.json().await.unwrap();
    assert_eq!(guest["status"], "after three timeouts");
    let seen = tokio::time::timeout(LIVENESS, async {
        while let Some(event) = events.next().await {
            let event = event.expect("the SSE stream was not cut");
            if event.data.contains("after three timeouts") {
                return true;
            }
        }
        false
    })
    .await
    .expect("the SSE event");
    assert!(seen, "the SSE stream ended");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_cost_no_descriptor_and_guests_keep_theirs() {
    const CAP: usize = 4;
    // Within the listen backlog (128), where connections beyond the cap wait.
    const IDLE: usize = 100;
    let hub = Hub::start_with_args(
        &["web1"],
        &["--max-connections", "4", "--http-idle-timeout", "60s"],
    )
    .await;
    let before = open_fds(hub.pid());
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        let connect = TcpStream::connect(authority(&hub));
        let stream = tokio::time::timeout(LIVENESS, connect)
            .await
            .expect("connected");
        idle.push(stream.unwrap());
    }
    // Once the hub has accepted the first CAP, a request waits in the backlog.
    let mut waiting = TcpStream::connect(authority(&hub)).await.unwrap();
    waiting
        .write_all(request("GET", "/api/v1/guests/web1", "127.0.0.1", "").as_bytes())
        .await
        .unwrap();
    let capped = tokio::time::Instant::now();
    let deadline = capped + LIVENESS;
    while !hub.log_text().contains("at --max-connections") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line at the cap:\n{}",
            hub.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = open_fds(hub.pid());
    // CAP connections, and a few for the journal's files opened meanwhile.
    assert!(
        during <= before + CAP + 4,
        "{IDLE} idle connections took {} descriptors (cap {CAP})",
        during - before
    );
    // A guest's BARRIER=1 fd still finds room, and its message is applied.
    let (read, write) = pipe();
    notifyhub_tests::send_datagram(&hub.socket("web1"), b"READY=1", &[write.as_fd()]).unwrap();
    drop(write);
    assert!(
        pipe_closed_within(&read, LIVENESS),
        "the barrier was not released"
    );
    // One idle connection closes: the backlog moves, the waiting request is answered (the
    // other idle ones, accepted after it or not, still hold the rest).
    idle.clear();
    let mut answer = Vec::new();
    tokio::time::timeout(LIVENESS, waiting.read_to_end(&mut answer))
        .await
        .expect("the waiting request is answered once connections close")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""phase":"ready""#), "{answer}");
    // Logged once for the episode, not once per waiting connection (and should the test take
    // longer than the log interval, 10 s, a line per interval).
    let log = hub.log_text();
    let lines = log_lines(&log, "at --max-connections").len();
    let intervals = capped.elapsed().as_secs() as usize / 10;
    assert!(
        (1..=1 + intervals).contains(&lines),
        "{lines} lines:\n{log}"
    );
    // Connections that never send a request do not hold up a shutdown (exit within 10 s).
    for _ in 0..2 * CAP {
        idle.push(TcpStream::connect(authority(&hub)).await.unwrap());
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_this_hubs_host_names_are_answered() {
    let hub = Hub::start_with_args(&["victim"], &["--allowed-host", "hub.example"]).await;
    let port = authority(&hub).rsplit_once(':').unwrap().1.to_owned();
    let evil = format!("evil.example:{port}");
    // The tester's DNS-rebinding request: same-origin by every browser header.
    let delete = request(
        "DELETE",
        "/api/v1/guests/victim",
        &evil,
        &format!("Origin: http://{evil}\r\nSec-Fetch-Site: same-origin\r\n"),
    );
    let (status, body) = raw(&hub, &delete).await;
    assert_eq!(status, 421, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    let error = error["error"].as_str().unwrap();
    assert!(
        error.contains("evil.example") && error.contains("--allowed-host"),
        "{error}"
    );
    let (status, body) = raw(&hub, &request("GET", "/api/v1/guests", &evil, "")).await;
    assert_eq!(status, 421, "{body}");
    assert!(!body.contains("victim"), "{body}");
    let (status, _) = raw(&hub, &request("GET", "/", "evil.example", "")).await;
    assert_eq!(status, 421, "the pages too");
    assert!(hub.socket("victim").exists());

    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_owned(),
        format!("localhost:{port}"),
        "LocalHost.".to_owned(),
        format!("dev.localhost:{port}"),
        "[::1]:1".to_owned(),
        format!("hub.example:{port}"),
        "HUB.example.".to_owned(),
    ] {
        let (status, body) = raw(&hub, &request("GET", "/api/v1/guests", &host, "")).await;
        assert_eq!(status, 200, "Host: {host}: {body}");
        assert!(body.contains("victim"), "{body}");
    }
    for host in [
        "hub.example.evil",
        "localhost.evil.example",
        "127.0.0.1.evil.example",
        "[::1",
        "127.0.0.1:http",
    ] {
        let (status, body) = raw(&hub, &request("GET", "/api/v1/guests", host, "")).await;
        assert_eq!(status, 421, "Host: {host}: {body}");
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_or_on_a_unix_socket_any_host_passes() {
    const TOKEN: &str = "host-test-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, TOKEN).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let hub = Hub::start_with_args(&["web1"], &["--token-file", file.to_str().unwrap()]).await;
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let (status, body) = raw(
        &hub,
        &request("GET", "/api/v1/guests", "evil.example", &auth),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = raw(&hub, &request("GET", "/api/v1/guests", "evil.example", "")).await;
    assert_eq!(status, 401, "the token, not the host, decides");
    hub.shutdown().await;

    // On a UNIX socket `Host` names nothing: curl sends what it is given.
    let socket = dir.path().join("http.sock");
    let mut child = tokio::process::Command::new(notifyhub_tests::hub_binary())
        .args(["serve", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .args(["--state-dir", "none", "--guest", "web1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + LIVENESS;
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "no HTTP socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = tokio::process::Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "--unix-socket",
        ])
        .arg(&socket)
        .args([
            "-H",
            "Host: evil.example",
            "http://evil.example/api/v1/guests",
        ])
        .output()
        .await
        .expect("curl");
    assert!(output.status.success(), "{output:?}");
    let guests: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(guests["guests"][0]["name"], "web1");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_once_per_burst_and_cut_short() {
    const REFUSALS: usize = 50;
    let hub = Hub::start_with_args(&["web1"], &["--max-guests", "1"]).await;
    // 10 KB: hyper refuses heads much larger than that with 431 before the hub sees them.
    let origin = format!("http://{}", "o".repeat(10_000));
    for i in 0..REFUSALS {
        let resp = hub
            .client()
            .post(hub.url("/api/v1/guests"))
            .header("origin", &origin)
            .json(&json!({ "name": format!("x{i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let body: Value = resp.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(error.len() < 1000, "{} bytes", error.len());
        assert!(error.contains("(10007 bytes)"), "{error}");
    }
    for _ in 0..REFUSALS {
        let (status, _) = raw(&hub, &request("GET", "/", "evil.example", "")).await;
        assert_eq!(status, 421);
    }
    // A 503 on purpose: the hub holds --max-guests guests.
    let (status, body) = hub.add_guest("over").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // The log is written as the answers go out; let the last lines arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = hub.log_text();
    assert_eq!(
        log_lines(&log, "cross-site request refused").len(),
        1,
        "{log}"
    );
    assert_eq!(
        log_lines(&log, "request for another host refused").len(),
        1,
        "{log}"
    );
    assert_eq!(
        log_lines(&log, "registration refused: --max-guests").len(),
        1,
        "{log}"
    );
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2000, "a log line of {longest} bytes");
    assert!(log_lines(&log, "ERROR").is_empty(), "{log}");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_guests_caps_the_api_and_a_missing_hybrid_directory_is_a_bad_request() {
    let hub = Hub::start_with_args(&["web1"], &["--max-guests", "2"]).await;
    assert_eq!(hub.add_guest("api1").await.0, StatusCode::CREATED);
    let (status, body) = hub.add_guest("api2").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("holds 2 guests") && error.contains("--max-guests"),
        "{error}"
    );
    assert!(!hub.socket("api2").exists());
    assert_eq!(hub.remove_guest("api1").await, StatusCode::NO_CONTENT);
    assert_eq!(hub.add_guest("api2").await.0, StatusCode::CREATED);
    assert_eq!(hub.remove_guest("api2").await, StatusCode::NO_CONTENT);

    let missing = hub.run_dir().join("no-such-dir/fc.vsock");
    let resp = hub
        .client()
        .post(hub.url("/api/v1/guests"))
        .json(&json!({
            "name": "fc1",
            "hybrid": { "uds_path": missing.to_str().unwrap(), "port": 7371 },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("{}_7371", missing.display()))
            && error.contains("directory must exist"),
        "{error}"
    );
    assert_eq!(
        hub.get_json("/api/v1/guests/fc1").await.0,
        StatusCode::NOT_FOUND
    );
    hub.shutdown().await;
}
