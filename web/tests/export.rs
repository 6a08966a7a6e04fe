//! The event log export ("notifyhub event log v1", `wasm/README.md`): exact lines through the
//! router, and a round trip on a real hub: the captures of `shared/vectors/` go in as datagrams,
//! the export comes out, and the browser viewer's reader (`notifyhub-wasm`, natively) must replay
//! it into the very states the hub reports.

mod common;

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{TestHub, soon};
use notifyhub_core::{Sender, Timestamp};
use notifyhub_wasm::{EVENT_LOG_FORMAT, EVENT_LOG_VERSION, LogReader};
use notifyhub_web::api::export;
use notifyhub_web::registry::Registry;
use notifyhub_web::store::Hub;
use notifyhub_web::{AppState, router};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const HEADER: &str = r#"{"format":"notifyhub-events","version":1}"#;

/// A router over a store with guests `names` (no sockets), the store, and its directory.
fn app(names: &[&str]) -> (axum::Router, Hub, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new();
    let shutdown = CancellationToken::new();
    let registry = Registry::new(hub.clone(), tmp.path().join("guests"), &shutdown);
    for name in names {
        hub.register(name, &format!("/run/{name}"), Timestamp::ZERO)
            .unwrap();
    }
    let state = AppState {
        hub: hub.clone(),
        registry,
        shutdown,
    };
    (router(state), hub, tmp)
}

/// `GET uri`: the response's head, its body, and how many data frames the body came in.
async fn get(app: &axum::Router, uri: &str) -> (axum::http::response::Parts, String, usize) {
    use futures_util::StreamExt as _;
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let mut chunks = body.into_data_stream();
    let (mut bytes, mut frames) = (Vec::new(), 0);
    while let Some(chunk) = chunks.next().await {
        frames += 1;
        bytes.extend_from_slice(&chunk.unwrap());
    }
    (parts, String::from_utf8(bytes).unwrap(), frames)
}

fn at(us: u64) -> Timestamp {
    Timestamp::from_micros(us)
}

#[test]
fn the_header_is_the_one_the_viewer_reads() {
    assert_eq!(export::FORMAT, EVENT_LOG_FORMAT);
    assert_eq!(export::VERSION, EVENT_LOG_VERSION);
    assert_eq!(export::header_line(), format!("{HEADER}\n"));
}

#[tokio::test]
async fn one_guests_export_is_exact() {
    let (app, hub, _tmp) = app(&["web1", "db1"]);
    hub.ingest("web1", at(1_000_000), Sender::Unknown, b"READY=1", 0)
        .unwrap();
    hub.ingest("db1", at(1_500_000), Sender::Unknown, b"STATUS=db", 0)
        .unwrap();
    // Rejected: not exported.
    hub.ingest("web1", at(1_600_000), Sender::Unknown, b"A=\0B", 0)
        .unwrap_err();
    let vsock = Sender::Vsock {
        cid: 3,
        port: Some(1023),
    };
    hub.ingest("web1", at(2_000_000), vsock, b"STATUS=up", 2)
        .unwrap();

    let (head, body, _) = get(&app, "/api/v1/guests/web1/events?format=jsonl").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers[header::CONTENT_TYPE], "application/x-ndjson");
    assert_eq!(
        body,
        [
            HEADER,
            r#"{"guest":"web1","seq":1,"received_at":1000000,"sender":{"transport":"unknown"},"fds":0,"hex":"52454144593d31"}"#,
            r#"{"guest":"web1","seq":2,"received_at":2000000,"sender":{"transport":"vsock","cid":3,"port":1023},"fds":2,"hex":"5354415455533d7570"}"#,
            "",
        ]
        .join("\n")
    );

    let (head, body, _) = get(&app, "/api/v1/events/export").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers[header::CONTENT_TYPE], "application/x-ndjson");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], HEADER);
    let order: Vec<(String, u64)> = lines[1..]
        .iter()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            (value["guest"].to_string(), value["seq"].as_u64().unwrap())
        })
        .collect();
    let expected = [("web1", 1), ("db1", 1), ("web1", 2)].map(|(g, s)| (format!("{g:?}"), s));
    assert_eq!(order, expected);
}

#[tokio::test]
async fn empty_unknown_and_bad_requests() {
    let (app, _hub, _tmp) = app(&["web1"]);
    let (head, body, _) = get(&app, "/api/v1/guests/web1/events?format=jsonl").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(body, format!("{HEADER}\n"));

    let (head, body, _) = get(&app, "/api/v1/guests/nobody/events?format=jsonl").await;
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    assert_eq!(head.headers[header::CONTENT_TYPE], "application/json");
    assert!(body.contains("no guest named"), "{body}");

    let (head, body, _) = get(&app, "/api/v1/guests/web1/events?format=xml").await;
    assert_eq!(head.status, StatusCode::BAD_REQUEST);
    assert!(body.contains("unknown variant"), "{body}");

    // The default, and `format=json`, are the JSON list.
    for uri in [
        "/api/v1/guests/web1/events",
        "/api/v1/guests/web1/events?format=json",
    ] {
        let (head, body, _) = get(&app, uri).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(body, r#"{"events":[],"forgotten":0,"evicted":0}"#);
    }

    let (app, _hub, _tmp) = self::app(&[]);
    let (head, body, _) = get(&app, "/api/v1/events/export").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(body, format!("{HEADER}\n"));
}

#[tokio::test]
async fn a_long_history_is_streamed_in_chunks() {
    let (app, hub, _tmp) = app(&["web1"]);
    let status = format!("STATUS={}", "x".repeat(1000));
    for i in 0..1000 {
        hub.ingest("web1", at(i), Sender::Unknown, status.as_bytes(), 0)
            .unwrap();
    }
    let (head, body, frames) = get(&app, "/api/v1/guests/web1/events?format=jsonl").await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(
        head.headers.get(header::CONTENT_LENGTH).is_none(),
        "a stream has no length up front"
    );
    assert_eq!(body.lines().count(), 1001);
    assert!(body.len() > 2_000_000);
    assert!(
        frames > body.len() / (2 * export::CHUNK_LEN),
        "{} bytes came in {frames} frames",
        body.len()
    );
}

/// The captures of `shared/vectors/` beside the repository, each with its name.
fn vectors() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors");
    let mut vectors: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
        .map(|path| {
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    vectors.sort();
    assert!(vectors.len() >= 12, "{} captures", vectors.len());
    vectors
}

/// A capture's datagrams, exactly.
fn datagrams(capture: &str) -> Vec<Vec<u8>> {
    capture
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            hex::decode(value["hex"].as_str().unwrap()).unwrap()
        })
        .collect()
}

/// Replays an event log with the viewer's reader, in awkward chunks; the JSON of its replay.
fn replay(log: &str) -> Value {
    let mut reader = LogReader::new("not-in-an-event-log");
    for chunk in log.as_bytes().chunks(4093) {
        reader.push(chunk);
    }
    serde_json::from_str(&reader.finish().to_json()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_export_replays_into_the_hubs_own_states() {
    let vectors = vectors();
    let names: Vec<&str> = vectors.iter().map(|(name, _)| name.as_str()).collect();
    let hub = TestHub::start(&names).await;

    // Round robin over the guests, so that the export interleaves them.
    let all: Vec<Vec<Vec<u8>>> = vectors.iter().map(|(_, text)| datagrams(text)).collect();
    let longest = all.iter().map(Vec::len).max().unwrap();
    for i in 0..longest {
        for (name, datagrams) in names.iter().zip(&all) {
            if let Some(datagram) = datagrams.get(i) {
                hub.send(name, datagram);
            }
        }
    }
    // Not a barrier: `BARRIER=1` is a message too, and after `off` it would start a new boot.
    for (name, datagrams) in names.iter().zip(&all) {
        let sent = datagrams.len() as u64;
        soon("every datagram in the store", async {
            while hub.hub.guest(name).unwrap().snapshot().messages < sent {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    let response = hub
        .client
        .get(hub.url("/api/v1/events/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let log = response.text().await.unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], HEADER);

    // One line per kept message, in receive order.
    let mut kept = 0;
    for name in &names {
        let (_, events) = hub.get(&format!("/api/v1/guests/{name}/events")).await;
        kept += events["events"].as_array().unwrap().len();
    }
    assert_eq!(lines.len(), 1 + kept);
    let times: Vec<u64> = lines[1..]
        .iter()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["received_at"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(times.is_sorted(), "lines are in receive order");

    let replayed = replay(&log);
    assert_eq!(replayed["errors"], serde_json::json!([]), "no bad line");
    assert_eq!(replayed["formats"]["events"], kept);
    let guests = replayed["guests"].as_array().unwrap();
    assert_eq!(guests.len(), names.len());
    for name in &names {
        let (status, live) = hub.get(&format!("/api/v1/guests/{name}")).await;
        assert_eq!(status, StatusCode::OK);
        let replayed = guests
            .iter()
            .find(|guest| guest["snapshot"]["name"] == *name)
            .unwrap_or_else(|| panic!("{name} is not in the replay"));
        let snapshot = &replayed["snapshot"];
        for field in [
            "phase",
            "boot_count",
            "status",
            "active_units",
            "shutdown",
            "hostname",
            "machine_id",
            "exit_status",
            "ready_seen",
            "messages",
            "first_seen",
            "last_seen",
            "last_sender",
        ] {
            assert_eq!(snapshot[field], live[field], "{name}: {field}");
        }
        assert_eq!(replayed["timeline"], live["timeline"], "{name}: timeline");
    }

    // Real values, not only agreement: the reboot capture ends off, rebooting with its argument.
    let (_, reboot) = hub.get("/api/v1/guests/systemd257-boot-reboot-arg").await;
    assert_eq!(reboot["phase"], "off", "{reboot:#}");
    assert_eq!(reboot["boot_count"], 1);
    assert_eq!(reboot["hostname"], "probe-guest");
    assert_eq!(reboot["shutdown"]["verb"], "reboot");
    assert_eq!(reboot["shutdown"]["reboot_parameter"], "probe-arg");

    // One guest's export replays the same as its part of the whole.
    let (status, one) = hub
        .get_text("/api/v1/guests/systemd257-reload-reexec/events?format=jsonl")
        .await;
    assert_eq!(status, StatusCode::OK);
    let alone = replay(&one);
    let snapshot = &alone["guests"][0]["snapshot"];
    assert_eq!(snapshot["name"], "systemd257-reload-reexec");
    assert_eq!(snapshot["phase"], "off");
    assert_eq!(snapshot["shutdown"]["verb"], "poweroff");
    assert_eq!(
        alone["guests"][0]["timeline"],
        guests
            .iter()
            .find(|g| g["snapshot"]["name"] == "systemd257-reload-reexec")
            .unwrap()["timeline"]
    );
}
