//! Every drop a guest's `drops` counts ends up in a log line of the real hub, and only real
//! messages count as messages.
//!
//! - A burst's remainder is summed up when its 10 s window ends, though the guest went quiet:
//!   the `dropped=` of a guest's lines for a reason add up to exactly its API counter, and
//!   reasons are throttled apart (a first `embedded_nul` is not hidden behind an `oversize`).
//! - A hybrid vsock connection that closes before its first byte is no message (systemd-vmspawn
//!   acts on nothing then): it is counted in `drops.incomplete` and logged, never kept in the
//!   history.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use notifyhub_tests::Hub;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The window (`LOG_INTERVAL`, 10 s) and a margin of 3× for a loaded machine.
const SUMMARY_WITHIN: Duration = Duration::from_secs(30);

/// The sum of `dropped=` over the hub's warn lines about `guest`, by `reason=`.
fn logged_drops(hub: &Hub, guest: &str) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    let tag = format!("guest=\"{guest}\"");
    for line in hub.log_text().lines() {
        if !line.contains(" WARN ") || !line.contains(&tag) {
            continue;
        }
        let field = |name: &str| {
            let start = line.find(&format!(" {name}="))? + name.len() + 2;
            let value = &line[start..];
            let end = value.find(' ').unwrap_or(value.len());
            Some(value[..end].trim_matches('"').to_owned())
        };
        let (Some(reason), Some(dropped)) = (field("reason"), field("dropped")) else {
            continue;
        };
        *sums.entry(reason).or_default() += dropped.parse::<u64>().expect("dropped=N");
    }
    sums
}

/// The guest's nonzero `drops` counters.
fn counted_drops(guest: &Value) -> BTreeMap<String, u64> {
    guest["drops"]
        .as_object()
        .expect("drops")
        .iter()
        .map(|(reason, count)| (reason.clone(), count.as_u64().expect("a count")))
        .filter(|(_, count)| *count > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counted_drop_is_in_a_log_line_once_the_window_ends() {
    // 20 messages at once, then one each 1000 s: nothing refills while the test runs.
    let hub = Hub::start_with_args(
        &["flood", "bad"],
        &[
            "--state-dir",
            "none",
            "--rate-limit",
            "0.001",
            "--rate-burst",
            "20",
        ],
    )
    .await;
    for i in 0..500 {
        hub.send("flood", format!("STATUS={i}").as_bytes());
    }
    // Within one second, within its burst: two reasons, each first of its kind.
    for _ in 0..3 {
        hub.send("bad", &vec![b'x'; 5000]);
    }
    hub.send("bad", b"STATUS=a\0b");
    hub.send("bad", b"STATUS=c\0d");
    hub.send("bad", b"READY=1");
    let flood = hub
        .poll_guest("flood", "480 drops", Duration::from_secs(30), |g| {
            g["drops"]["rate_limited"] == 480
        })
        .await;
    assert_eq!(flood["messages"], 20);
    let bad = hub.settle("bad", 1).await;
    let expected_bad = BTreeMap::from([("embedded_nul".to_owned(), 2), ("oversize".to_owned(), 3)]);
    assert_eq!(counted_drops(&bad), expected_bad);
    assert_eq!(
        counted_drops(&flood),
        BTreeMap::from([("rate_limited".to_owned(), 480)])
    );

    // The first of each burst is logged at once (with those that came in the same batch), each
    // reason on a line of its own.
    let first = logged_drops(&hub, "bad");
    assert!(
        first.contains_key("oversize") && first.contains_key("embedded_nul"),
        "{}",
        hub.log_text()
    );

    // The rest once the window ended, though neither guest sent anything since.
    let deadline = Instant::now() + SUMMARY_WITHIN;
    while logged_drops(&hub, "flood") != counted_drops(&flood)
        || logged_drops(&hub, "bad") != expected_bad
    {
        assert!(
            Instant::now() < deadline,
            "logged {:?} and {:?} of {:?} and {expected_bad:?} within {SUMMARY_WITHIN:?}:\n{}",
            logged_drops(&hub, "flood"),
            logged_drops(&hub, "bad"),
            counted_drops(&flood),
            hub.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = hub.log_text();
    assert!(
        log.contains("more messages dropped (rate_limited) in the last")
            && log.contains("dropped=479"),
        "the summary line names the remainder:\n{log}"
    );
    hub.shutdown().await;
}

/// The guest's hybrid socket `<uds>_<port>`: the guest's connections to host port 7371.
fn hybrid_socket(hub_dir: &std::path::Path) -> std::path::PathBuf {
    hub_dir.join("vm1.vsock_7371")
}

/// Connects to the guest's hybrid socket as its VMM would, sends `bytes` (maybe none), shuts
/// down its side and waits for the hub to close.
async fn connect_and_send(socket: &std::path::Path, bytes: &[u8]) {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect to the hybrid socket");
    stream.write_all(bytes).await.expect("write");
    stream.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut back))
        .await
        .expect("the hub closes within 10 s")
        .expect("read");
    assert_eq!(back, b"", "nothing is written back");
}

#[tokio::test]
async fn an_empty_vsock_connection_is_a_drop_not_a_message() {
    let sockets = tempfile::tempdir().expect("tempdir");
    let hybrid = format!("vm1={}:7371", sockets.path().join("vm1.vsock").display());
    let hub = Hub::start_with_args(&[], &["--state-dir", "none", "--hybrid", &hybrid]).await;
    let socket = hybrid_socket(sockets.path());
    for _ in 0..5 {
        connect_and_send(&socket, b"").await;
    }
    let guest = hub
        .poll_guest("vm1", "5 incomplete", Duration::from_secs(10), |g| {
            g["drops"]["incomplete"] == 5
        })
        .await;
    assert_eq!(guest["messages"], 0, "{guest:#}");
    assert_eq!(guest["phase"], "registered");
    assert_eq!(hub.events("vm1").await, Vec::<Value>::new());

    // A real message still is one.
    connect_and_send(&socket, b"READY=1").await;
    let guest = hub.settle("vm1", 1).await;
    assert_eq!(guest["phase"], "ready");
    assert_eq!(guest["drops"]["incomplete"], 5);
    let events = hub.events("vm1").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["text"], "READY=1");
    assert_eq!(
        logged_drops(&hub, "vm1").get("incomplete"),
        Some(&1),
        "the first is logged at once:\n{}",
        hub.log_text()
    );
    hub.shutdown().await;
}
