//! `--history-memory` of the real binary: one budget for every guest's kept messages. Flooding
//! guests keep the newest messages the budget holds, a quiet guest's old messages go first but
//! its state stays, the `/metrics` gauge stays within the budget, and the hub's RSS grows by
//! about the budget, not by what the per-guest limit (4096 messages each) would keep. A restart
//! replays the journal through the same budget.

use notifyhub_tests::Hub;
use notifyhub_tests::measure::proc_stats;
use serde_json::Value;

/// Guests that flood, each with more messages than the per-guest limit keeps.
const FLOODERS: [&str; 6] = ["flood1", "flood2", "flood3", "flood4", "flood5", "flood6"];
/// Messages each flooder sends: past the per-guest limit of 4096.
const FLOOD: u64 = 4500;
/// Bytes of each flooded datagram (the largest the hub takes is 4096).
const DATAGRAM: usize = 4000;

/// A datagram of exactly [`DATAGRAM`] bytes that names the guest and the message. An unknown
/// key changes no state, so the flood causes no hub events: the event log (8192 events, each
/// with the guest's state, a 4 KB `STATUS=` included) would grow too and hide what is measured.
fn datagram(name: &str, n: u64) -> Vec<u8> {
    let mut bytes = format!("X_FLOOD={name} {n} ").into_bytes();
    bytes.resize(DATAGRAM, b'.');
    bytes
}

/// `GET /api/v1/guests/{name}/events` as JSON.
async fn kept(hub: &Hub, name: &str) -> Value {
    let (status, body) = hub.get_json(&format!("/api/v1/guests/{name}/events")).await;
    assert!(status.is_success(), "events of {name}: {status} {body}");
    body
}

fn seqs(events: &Value) -> Vec<u64> {
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["seq"].as_u64().unwrap())
        .collect()
}

/// One sample of the `/metrics` exposition, e.g. `notifyhub_history_bytes`.
async fn metric(hub: &Hub, series: &str) -> u64 {
    let (_, text) = hub.get_text("/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

/// Floods every flooder with [`FLOOD`] messages after `quiet` said READY=1; returns the hub's
/// RSS growth in bytes from before the flood to after it.
async fn flood(hub: &Hub) -> u64 {
    hub.send("quiet", b"READY=1\nSTATUS=up");
    hub.settle("quiet", 1).await;
    let before = proc_stats(hub.pid()).unwrap().rss_bytes;
    for n in 1..=FLOOD {
        for name in FLOODERS {
            hub.send(name, &datagram(name, n));
        }
    }
    for name in FLOODERS {
        hub.settle(name, FLOOD).await;
    }
    let after = proc_stats(hub.pid()).unwrap().rss_bytes;
    after.saturating_sub(before)
}

/// A hub with `quiet` and the [`FLOODERS`], `--history-memory budget`, no rate limit, and no
/// journal (its SQLite cache would be in the RSS measured).
async fn start_in_memory(budget: &str) -> Hub {
    let mut guests = vec!["quiet"];
    guests.extend(FLOODERS);
    let args = [
        "--history-memory",
        budget,
        "--rate-limit",
        "0",
        "--state-dir",
        "none",
    ];
    Hub::start_with_args(&guests, &args).await
}

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_guests_keep_the_newest_within_the_budget() {
    let budget = 2 * MIB;
    let hub = start_in_memory("2MiB").await;
    let growth = flood(&hub).await;

    // The quiet guest's one message was the oldest: the budget took it, not its state.
    let quiet = kept(&hub, "quiet").await;
    assert_eq!(seqs(&quiet), [] as [u64; 0]);
    assert_eq!(
        (&quiet["forgotten"], &quiet["evicted"]),
        (&1.into(), &1.into())
    );
    let state = hub.guest("quiet").await;
    assert_eq!(
        (&state["phase"], &state["status"]),
        (&"ready".into(), &"up".into())
    );

    // Each flooder keeps its newest messages, without a gap, the last one last; the budget
    // evicted everything older (long before the per-guest limit of 4096 was reached).
    let mut kept_messages = 0;
    for name in FLOODERS {
        let events = kept(&hub, name).await;
        let seqs = seqs(&events);
        let count = seqs.len() as u64;
        assert!(count > 0, "{name} keeps its newest message");
        assert_eq!(
            seqs,
            (FLOOD - count + 1..=FLOOD).collect::<Vec<_>>(),
            "{name}"
        );
        let last = events["events"].as_array().unwrap().last().unwrap();
        assert_eq!(last["hex"], hex::encode(datagram(name, FLOOD)));
        assert_eq!(events["forgotten"], FLOOD - count);
        assert_eq!(events["evicted"], FLOOD - count);
        assert_eq!(hub.guest(name).await["messages"], FLOOD);
        kept_messages += count;
    }
    // Kept: as many as fit, and no more (each costs its 4000 bytes plus the same overhead).
    let bytes = metric(&hub, "notifyhub_history_bytes").await;
    assert!(bytes <= budget, "{bytes} kept bytes");
    let per_message = bytes / kept_messages;
    assert!(
        bytes + per_message > budget,
        "{bytes} kept bytes leave room for another"
    );
    let evicted = metric(&hub, "notifyhub_history_evictions_total").await;
    assert_eq!(evicted, 1 + FLOODERS.len() as u64 * FLOOD - kept_messages);

    hub.shutdown().await;

    // The same flood with a budget larger than the per-guest limits can fill (6 × 4096 ×
    // 4000 bytes ≈ 94 MiB): what the budget saves.
    let hub = start_in_memory("1GiB").await;
    let baseline = flood(&hub).await;
    let without = metric(&hub, "notifyhub_history_bytes").await;
    hub.shutdown().await;
    println!(
        "RSS growth over the flood: {:.1} MiB with --history-memory 2MiB, {:.1} MiB with 1GiB \
         ({:.1} MiB kept); ratio {:.3}",
        growth as f64 / MIB as f64,
        baseline as f64 / MIB as f64,
        without as f64 / MIB as f64,
        growth as f64 / baseline as f64
    );
    assert!(
        without > 90 * MIB,
        "{without} bytes kept without a tight budget"
    );
    assert!(
        growth < 10 * budget,
        "RSS grew by {growth} bytes with a budget of {budget}"
    );
}

/// A restart replays the journal through the store, so the budget holds then too: the newest
/// messages come back, no more than the budget, and the state is the fold of all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replays_within_the_budget() {
    let state_dir = tempfile::tempdir().unwrap();
    let state_dir = state_dir.path().to_str().unwrap().to_owned();
    let args = ["--history-memory", "64KiB", "--state-dir", &state_dir];
    let messages = 200;
    let mut before = Vec::new();
    {
        // A budget as large as the per-guest limit: all 200 are kept before the restart.
        let hub = Hub::start_with_args(&["a"], &["--state-dir", &state_dir]).await;
        for n in 1..=messages {
            let mut bytes = format!("STATUS={n} ").into_bytes();
            bytes.resize(1000, b'.');
            hub.send("a", &bytes);
            before.push(hex::encode(&bytes));
        }
        hub.settle("a", messages).await;
        assert_eq!(seqs(&kept(&hub, "a").await).len() as u64, messages);
        hub.shutdown().await;
    }
    let hub = Hub::start_with_args(&["a"], &args).await;
    let events = kept(&hub, "a").await;
    let seqs = seqs(&events);
    let count = seqs.len() as u64;
    assert!(0 < count && count < messages, "{count} of {messages} kept");
    assert_eq!(seqs, (messages - count + 1..=messages).collect::<Vec<_>>());
    let hexes: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["hex"].as_str().unwrap())
        .collect();
    assert_eq!(hexes, before[(messages - count) as usize..]);
    assert_eq!(events["forgotten"], messages - count);
    let bytes = metric(&hub, "notifyhub_history_bytes").await;
    assert!(bytes <= 64 << 10, "{bytes} kept bytes");
    let state = hub.guest("a").await;
    assert_eq!(state["messages"], messages);
    assert!(state["status"].as_str().unwrap().starts_with("200 "));
    hub.shutdown().await;
}
