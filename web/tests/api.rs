//! The REST API against a real hub: real sockets, real datagrams, real HTTP.

mod common;

use common::{TestHub, exists, soon};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn register_get_list_and_delete() {
    let hub = TestHub::start(&["web1"]).await;

    let (status, location, guest) = hub.post_guest("db-2.prod").await;
    assert_eq!(status, StatusCode::CREATED, "{guest}");
    assert_eq!(location.as_deref(), Some("/api/v1/guests/db-2.prod"));
    assert_eq!(guest["name"], "db-2.prod");
    assert_eq!(guest["phase"], "registered");
    let socket = hub.socket("db-2.prod");
    assert_eq!(guest["notify_socket"], socket.to_str().unwrap());
    assert!(socket.is_absolute() && exists(&socket));
    assert_eq!(guest["timeline"], json!([]));

    let (status, _, body) = hub.post_guest("db-2.prod").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("already registered"),
        "{body}"
    );

    let (status, list) = hub.get("/api/v1/guests").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["guests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|guest| guest["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db-2.prod", "web1"], "sorted by name");

    let (status, guest) = hub.get("/api/v1/guests/web1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(guest["notify_socket"], hub.socket("web1").to_str().unwrap());

    let delete = |name: &str| {
        hub.client
            .delete(hub.url(&format!("/api/v1/guests/{name}")))
            .send()
    };
    let response = delete("db-2.prod").await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(!exists(&socket), "socket removed");
    assert!(!exists(socket.parent().unwrap()), "guest directory removed");
    let (status, body) = hub.get("/api/v1/guests/db-2.prod").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
    let response = delete("db-2.prod").await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.json::<Value>().await.unwrap()["error"].is_string());

    // The name is free again.
    assert_eq!(hub.post_guest("db-2.prod").await.0, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_names_are_refused_with_a_reason() {
    // A run directory deep enough that a valid 40-byte name overflows the 107-byte limit.
    let deep = "d".repeat(50);
    let hub = TestHub::start_in(&deep, &[]).await;
    let long_path_name = "a".repeat(40);
    let cases = [
        ("../x", "must start with an ASCII letter or digit"),
        ("a/b", "'/'"),
        ("", "empty"),
        (&*"a".repeat(200), "the limit is 64"),
        (&*long_path_name, "the limit is 107"),
    ];
    for (name, reason) in cases {
        let (status, _, body) = hub.post_guest(name).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(reason), "{name:?}: {error}");
    }
    let (_, list) = hub.get("/api/v1/guests").await;
    assert_eq!(list["guests"], json!([]));
    assert!(!exists(&hub.run_dir.join("guests").join(&long_path_name)));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_json_errors() {
    let hub = TestHub::start(&[]).await;
    let post = |body: &'static str, content_type: &'static str| {
        hub.client
            .post(hub.url("/api/v1/guests"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (body, content_type, status) in [
        (
            r#"{"name": "web1"}"#,
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (r#"{"name": "#, "application/json", StatusCode::BAD_REQUEST),
        (
            r#"{"nom": "web1"}"#,
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let response = post(body, content_type).await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: Value = response.json().await.unwrap();
        assert!(!body["error"].as_str().unwrap().is_empty());
    }
    let response = hub
        .client
        .put(hub.url("/api/v1/guests"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(response.json::<Value>().await.unwrap()["error"].is_string());
    let (status, body) = hub.get("/api/v1/nothing/here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn datagrams_fold_into_the_guest() {
    let hub = TestHub::start(&["web1"]).await;
    hub.send_all(
        "web1",
        &[
            b"X_SYSTEMD_HOSTNAME=probe-guest",
            b"X_SYSTEMD_UNIT_ACTIVE=ssh-access.target",
            b"READY=1\nSTATUS=Ready.",
        ],
    )
    .await;

    let (status, guest) = hub.get("/api/v1/guests/web1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(guest["phase"], "ready");
    assert_eq!(guest["hostname"], "probe-guest");
    assert_eq!(guest["status"], "Ready.");
    assert_eq!(guest["active_units"], json!(["ssh-access.target"]));
    assert_eq!(guest["ready_seen"], true);
    assert_eq!(guest["boot_count"], 1);
    assert_eq!(guest["messages"], 4, "three messages and the barrier");
    assert_eq!(guest["drops"]["oversize"], 0);
    assert_eq!(guest["shutdown"], Value::Null);
    let sender = &guest["last_sender"];
    assert_eq!(sender["transport"], "unix");
    assert_eq!(sender["credentials"]["pid"], std::process::id());
    let types: Vec<&str> = guest["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|milestone| milestone["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "boot_started",
            "hostname",
            "phase_changed",
            "unit_active",
            "phase_changed"
        ]
    );
    assert_eq!(guest["timeline"][4]["to"], "ready");
    assert_eq!(guest["timeline"][4]["boot"], 1);
    assert!(guest["timeline"][0]["at"].as_u64().unwrap() > 0);

    let (status, history) = hub.get("/api/v1/guests/web1/events").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history["forgotten"], 0);
    let events = history["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    let ready = &events[2];
    assert_eq!(ready["text"], "READY=1\nSTATUS=Ready.");
    assert_eq!(ready["hex"], hex::encode("READY=1\nSTATUS=Ready."));
    assert_eq!(ready["fds"], 0);
    assert_eq!(ready["fields"], json!({"ready": true, "status": "Ready."}));
    assert_eq!(ready["sender"]["transport"], "unix");
    assert!(ready["received_at"].as_u64().unwrap() >= guest["first_seen"].as_u64().unwrap());
    assert_eq!(events[0]["fields"]["hostname"], "probe-guest");
    assert_eq!(events[3]["fields"], json!({"barrier": true}));
    assert_eq!(events[3]["fds"], 1, "the barrier's pipe");

    let (status, body) = hub.get("/api/v1/guests/nope/events").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_datagrams_are_dropped_and_counted() {
    let hub = TestHub::start(&["web1"]).await;
    hub.send("web1", b"X_SYSTEMD_HOSTNAME=probe-guest");
    let mut oversize = b"STATUS=".to_vec();
    oversize.resize(4097, b'x');
    hub.send("web1", &oversize);
    hub.send("web1", b"X_SYSTEMD_UNIT_ACTIVE=embedded\0nul.target");
    hub.barrier("web1").await;

    let (_, guest) = hub.get("/api/v1/guests/web1").await;
    assert_eq!(guest["drops"]["oversize"], 1);
    assert_eq!(guest["drops"]["embedded_nul"], 1);
    assert_eq!(
        guest["hostname"], "probe-guest",
        "the earlier message still counts"
    );
    assert_eq!(guest["status"], Value::Null);
    let (_, history) = hub.get("/api/v1/guests/web1/events").await;
    let texts: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["X_SYSTEMD_HOSTNAME=probe-guest", "BARRIER=1"]);
}

/// `GET /api/v1/guests/web1/wait?…` as a task, so the test can act while it waits.
fn wait(hub: &TestHub, query: &str) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let request = hub
        .client
        .get(hub.url(&format!("/api/v1/guests/web1/wait?{query}")));
    tokio::spawn(async move {
        let response = request.send().await.unwrap();
        (response.status(), response.json().await.unwrap())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_answers_at_once_when_met_or_unknown_or_malformed() {
    let hub = TestHub::start(&["web1"]).await;
    hub.send_all("web1", &[b"READY=1"]).await;

    let (status, guest) = soon("wait", wait(&hub, "for=ready")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(guest["phase"], "ready");
    assert!(guest["timeline"].is_array());

    let (status, body) = hub.get("/api/v1/guests/nope/wait?for=ready").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("nope"));

    for (query, reason) in [
        ("for=bogus", "unknown condition"),
        ("for=unit:", "not a unit name"),
        ("for=phase:sleeping", "unknown phase"),
        ("for=ready&timeout=soon", "timeout"),
        ("for=ready&timeout=-1", "timeout"),
        ("for=ready&timeout=3601", "timeout"),
        ("timeout=1", "for"),
    ] {
        let (status, body) = hub.get(&format!("/api/v1/guests/web1/wait?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(reason), "{query}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_is_met_by_a_later_message() {
    let hub = TestHub::start(&["web1"]).await;
    let waiting = wait(&hub, "for=unit:ssh-access.target&timeout=60");
    hub.until_waiters("web1", 1).await;
    hub.send("web1", b"X_SYSTEMD_UNIT_ACTIVE=sysinit.target");
    hub.send("web1", b"X_SYSTEMD_UNIT_ACTIVE=ssh-access.target");
    let (status, guest) = soon("wait", waiting).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{guest}");
    assert_eq!(
        guest["active_units"],
        json!(["ssh-access.target", "sysinit.target"])
    );
    assert_eq!(hub.hub.waiters("web1"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_times_out_with_408() {
    let hub = TestHub::start(&["web1"]).await;
    hub.send_all("web1", &[b"X_SYSTEMD_HOSTNAME=probe-guest"])
        .await;
    let (status, body) = soon("wait", wait(&hub, "for=booted&timeout=0.2"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(body["awaited"], "booted");
    assert_eq!(body["guest"]["phase"], "booting");
    assert_eq!(body["guest"]["hostname"], "probe-guest");
    assert!(body["error"].as_str().unwrap().contains("0.2 s"), "{body}");

    // timeout=0 checks once.
    let (status, body) = soon("wait", wait(&hub, "for=off&timeout=0")).await.unwrap();
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_gives_up_with_409_when_the_boot_fails() {
    let hub = TestHub::start(&["web1"]).await;
    hub.send_all("web1", &[b"X_SYSTEMD_UNIT_ACTIVE=sysinit.target"])
        .await;
    let waiting = wait(&hub, "for=ready&timeout=60");
    hub.until_waiters("web1", 1).await;
    hub.send("web1", b"X_SYSTEMD_UNIT_ACTIVE=emergency.target");
    let (status, body) = soon("wait", waiting).await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["awaited"], "ready");
    assert_eq!(body["guest"]["phase"], "failed");
    assert!(body["error"].as_str().unwrap().contains("failed"), "{body}");

    // Already unreachable: at once.
    let (status, _) = soon("wait", wait(&hub, "for=booted")).await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_ends_with_410_when_the_guest_is_removed() {
    let hub = TestHub::start(&["web1"]).await;
    let waiting = wait(&hub, "for=ready&timeout=60");
    hub.until_waiters("web1", 1).await;
    let response = hub
        .client
        .delete(hub.url("/api/v1/guests/web1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, body) = soon("wait", waiting).await.unwrap();
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert_eq!(body["awaited"], "ready");
    assert_eq!(body["guest"], Value::Null);
    assert!(body["error"].as_str().unwrap().contains("removed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn barrier_is_released_after_the_messages_before_it() {
    let hub = TestHub::start(&["web1"]).await;
    for i in 0..50 {
        hub.send("web1", format!("STATUS=step {i}").as_bytes());
    }
    // Returns only once the hub closed the fd, i.e. after it ingested all 50.
    soon("barrier", hub.barrier("web1")).await;
    let (_, guest) = hub.get("/api/v1/guests/web1").await;
    assert_eq!(guest["status"], "step 49");
    assert_eq!(guest["messages"], 51);
}
