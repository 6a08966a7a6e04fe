//! `GET /api/v1/events`: Server-Sent Events read with reqwest + eventsource-stream.

mod common;

use common::{TestHub, data, events_until, next_event};
use serde_json::Value;

fn id(event: &eventsource_stream::Event) -> u64 {
    event.id.parse().expect("every event has a numeric id")
}

fn is_status(event: &eventsource_stream::Event, status: &str) -> bool {
    let data = data(event);
    data["event"]["type"] == "status_changed" && data["event"]["status"] == status
}

#[tokio::test(flavor = "multi_thread")]
async fn events_carry_increasing_ids_and_resume_replays_exactly_the_missed_ones() {
    let hub = TestHub::start(&["web1"]).await;
    let mut first = hub.sse("/api/v1/events", None).await;
    let mut witness = hub.sse("/api/v1/events", None).await;

    hub.send("web1", b"X_SYSTEMD_HOSTNAME=probe-guest");
    hub.send("web1", b"STATUS=one");
    let seen = events_until(&mut first, |event| is_status(event, "one")).await;
    assert!(seen.len() >= 4, "boot, hostname, phase, status: {seen:?}");
    for pair in seen.windows(2) {
        assert_eq!(id(&pair[1]), id(&pair[0]) + 1, "consecutive ids");
    }
    for event in &seen {
        assert_eq!(event.event, "guest");
        let data = data(event);
        assert_eq!(data["id"], id(event));
        assert_eq!(data["guest"], "web1");
        assert!(data["event"]["type"].is_string());
        assert_eq!(data["snapshot"]["name"], "web1");
        assert_eq!(
            data["snapshot"]["notify_socket"],
            hub.socket("web1").to_str().unwrap()
        );
        assert!(
            data["snapshot"].get("timeline").is_none(),
            "a snapshot without timeline"
        );
    }
    assert_eq!(
        data(&seen[1])["event"],
        serde_json::json!({"type": "hostname", "hostname": "probe-guest"})
    );
    let last_seen = id(seen.last().unwrap());
    drop(first); // the client goes away…

    // …and misses these.
    hub.send("web1", b"X_SYSTEMD_UNIT_ACTIVE=ssh-access.target");
    hub.send("web1", b"READY=1\nSTATUS=Ready.");
    // READY=1 and STATUS= in one message: the status change, then the phase change.
    let all = events_until(&mut witness, |event| data(event)["event"]["to"] == "ready").await;
    let missed: Vec<_> = all
        .into_iter()
        .filter(|event| id(event) > last_seen)
        .collect();
    assert!(missed.len() >= 3, "unit, phase, status: {missed:?}");

    let mut resumed = hub.sse("/api/v1/events", Some(last_seen)).await;
    for expected in &missed {
        let event = next_event(&mut resumed).await;
        assert_eq!(
            (&event.id, &event.event, &event.data),
            (&expected.id, &expected.event, &expected.data)
        );
    }
    // Then live, with nothing repeated or skipped.
    hub.send("web1", b"STATUS=live");
    let event = next_event(&mut resumed).await;
    assert_eq!(id(&event), id(missed.last().unwrap()) + 1);
    assert!(is_status(&event, "live"), "{event:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_and_removals_are_events_and_a_guest_filter_applies() {
    let hub = TestHub::start(&["web1"]).await;
    let mut all = hub.sse("/api/v1/events", None).await;
    let mut only_web1 = hub.sse("/api/v1/events?guest=web1", None).await;

    assert_eq!(hub.post_guest("web2").await.0, reqwest::StatusCode::CREATED);
    let event = next_event(&mut all).await;
    assert_eq!(event.event, "registered");
    let registered = data(&event);
    assert_eq!(registered["guest"], "web2");
    assert_eq!(
        registered["event"],
        serde_json::json!({"type": "registered"})
    );
    assert_eq!(registered["snapshot"]["phase"], "registered");

    hub.send("web2", b"STATUS=two");
    hub.send("web1", b"STATUS=one");
    let event = events_until(&mut only_web1, |_| true).await.remove(0);
    assert_eq!(
        data(&event)["guest"],
        "web1",
        "web2's events are filtered out"
    );

    let response = hub
        .client
        .delete(hub.url("/api/v1/guests/web2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::NO_CONTENT);
    let removed = events_until(&mut all, |event| event.event == "removed").await;
    let removed = data(removed.last().unwrap());
    assert_eq!(removed["guest"], "web2");
    assert_eq!(removed["event"]["type"], "removed");
    assert_eq!(
        removed["snapshot"]["status"], "two",
        "the guest's last state"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_last_event_id_starts_with_a_resync() {
    let hub = TestHub::start(&["web1", "web2"]).await;
    hub.send_all("web1", &[b"READY=1"]).await;
    let last = hub.hub.last_event_id();

    // An id from the future: the hub restarted since the client saw it.
    let mut stream = hub.sse("/api/v1/events", Some(last + 1000)).await;
    let event = next_event(&mut stream).await;
    assert_eq!(event.event, "resync");
    assert_eq!(id(&event), last);
    let guests = data(&event)["guests"].as_array().unwrap().clone();
    let names: Vec<&str> = guests.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["web1", "web2"]);
    assert_eq!(guests[0]["phase"], "ready");
    assert!(guests[0].get("timeline").is_none());

    // The query parameter serves clients that cannot set the header (EventSource).
    let mut stream = hub
        .sse(
            &format!("/api/v1/events?guest=web2&last_event_id={}", last + 1),
            None,
        )
        .await;
    let event = next_event(&mut stream).await;
    assert_eq!(event.event, "resync");
    assert_eq!(data(&event)["guests"].as_array().map(Vec::len), Some(1));

    let (status, body) = hub.get("/api/v1/events?guest=../etc").await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert!(body["error"].is_string());
    let response = hub
        .client
        .get(hub.url("/api/v1/events"))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
    assert!(response.json::<Value>().await.unwrap()["error"].is_string());
}
