//! The real binary against the OpenAPI spec it serves at `GET /api/v1/openapi.json`: every
//! documented operation answers with a documented status and media type (the SSE stream and
//! the long-poll too, which `scripts/schemathesis` leaves out or pins), every outcome of the
//! long-poll is documented, and the guest JSON has exactly the documented fields.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use notifyhub_tests::{Hub, SETTLE_TIMEOUT};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn spec(hub: &Hub) -> Value {
    let response = hub
        .client()
        .get(hub.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

/// The documented operation `method path` (`path` as in the spec, e.g. `/guests/{name}`).
fn operation<'a>(spec: &'a Value, method: &Method, path: &str) -> &'a Value {
    let operation = &spec["paths"][path][method.as_str().to_lowercase()];
    assert!(operation.is_object(), "{method} {path} is not in the spec");
    operation
}

/// Asserts that `status` with `content_type` is a documented answer of `method path`.
fn assert_documented(
    spec: &Value,
    method: &Method,
    path: &str,
    status: StatusCode,
    content_type: Option<&str>,
) {
    let responses = &operation(spec, method, path)["responses"];
    let response = &responses[status.as_str()];
    assert!(
        response.is_object(),
        "{method} {path} answered {status}, which the spec does not list: {:?}",
        responses.as_object().unwrap().keys().collect::<Vec<_>>()
    );
    let documented: Vec<&String> = response["content"]
        .as_object()
        .map(|content| content.keys().collect())
        .unwrap_or_default();
    match content_type {
        Some(media) if !documented.is_empty() => {
            let media = media.split(';').next().unwrap().trim();
            assert!(
                documented.iter().any(|d| *d == media),
                "{method} {path} {status} is {media}, documented: {documented:?}"
            );
        }
        None => assert!(
            documented.is_empty(),
            "{method} {path} {status} has no body, documented: {documented:?}"
        ),
        Some(_) => {}
    }
}

/// Sends `method uri` (and `body` as JSON) and checks the answer against `path` in the spec;
/// returns the status.
async fn check(
    hub: &Hub,
    spec: &Value,
    method: Method,
    path: &str,
    uri: &str,
    body: Option<Value>,
) -> StatusCode {
    let mut request = hub
        .client()
        .request(method.clone(), hub.url(&format!("/api/v1{uri}")));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned());
    // An SSE stream never ends: its head is enough.
    drop(response);
    assert_documented(spec, &method, path, status, content_type.as_deref());
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_documented() {
    let hub = Hub::start(&["web1", "gone"]).await;
    hub.send("web1", b"X_SYSTEMD_HOSTNAME=probe-guest");
    hub.send("web1", b"READY=1\nSTATUS=up");
    hub.settle("web1", 2).await;
    let spec = spec(&hub).await;
    assert_eq!(spec["openapi"], "3.1.0");

    let calls: [(Method, &str, &str, Option<Value>, StatusCode); 18] = [
        (Method::GET, "/guests", "/guests", None, StatusCode::OK),
        (
            Method::POST,
            "/guests",
            "/guests",
            Some(json!({"name": "web2"})),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            "/guests",
            "/guests",
            Some(json!({"name": "web2"})),
            StatusCode::CONFLICT,
        ),
        (
            Method::POST,
            "/guests",
            "/guests",
            Some(json!({"name": "-bad"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/guests",
            "/guests",
            Some(json!({"nom": "web9"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::GET,
            "/guests/{name}",
            "/guests/web1",
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/guests/{name}",
            "/guests/nobody",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            "/guests/{name}",
            "/guests/gone",
            None,
            StatusCode::NO_CONTENT,
        ),
        (
            Method::GET,
            "/guests/{name}/events",
            "/guests/web1/events",
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/guests/{name}/events",
            "/guests/web1/events?format=jsonl",
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/guests/{name}/events",
            "/guests/web1/events?format=xml",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/guests/{name}/wait",
            "/guests/web1/wait?for=ready&timeout=5",
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/guests/{name}/launch",
            "/guests/web1/launch",
            None,
            StatusCode::OK,
        ),
        (Method::GET, "/vsock", "/vsock", None, StatusCode::OK),
        (Method::GET, "/events", "/events", None, StatusCode::OK),
        (
            Method::GET,
            "/events",
            "/events?guest=no/such",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/events/export",
            "/events/export",
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "/openapi.json",
            "/openapi.json",
            None,
            StatusCode::OK,
        ),
    ];
    let mut covered = BTreeSet::new();
    for (method, path, uri, body, expected) in calls {
        let status = check(&hub, &spec, method.clone(), path, uri, body).await;
        assert_eq!(status, expected, "{method} {uri}");
        covered.insert((method.to_string().to_lowercase(), path.to_owned()));
    }
    // Every documented operation was called.
    let documented: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    assert_eq!(covered, documented);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_long_poll_outcome_is_documented() {
    let hub = Hub::start(&["web1", "doomed", "broken"]).await;
    let spec = spec(&hub).await;
    let path = "/guests/{name}/wait";
    let wait = |guest: &str, condition: &str, timeout: &str| {
        format!("/guests/{guest}/wait?for={condition}&timeout={timeout}")
    };

    for (uri, expected) in [
        (wait("web1", "ready", "0"), StatusCode::REQUEST_TIMEOUT),
        (wait("nobody", "ready", "0"), StatusCode::NOT_FOUND),
        (wait("web1", "sometime", "0"), StatusCode::BAD_REQUEST),
        (wait("web1", "ready", "3601"), StatusCode::BAD_REQUEST),
    ] {
        let status = check(&hub, &spec, Method::GET, path, &uri, None).await;
        assert_eq!(status, expected, "{uri}");
    }
    hub.send("broken", b"X_SYSTEMD_UNIT_ACTIVE=emergency.target");
    hub.settle("broken", 1).await;
    let uri = wait("broken", "ready", "5");
    let status = check(&hub, &spec, Method::GET, path, &uri, None).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // 410: removed while waiting; 503: the hub stops while waiting.
    let pending = |uri: String| {
        let client = hub.client().clone();
        let url = hub.url(&format!("/api/v1{uri}"));
        tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            let status = response.status();
            let content_type = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            let body: Value = response.json().await.unwrap();
            (status, content_type, body)
        })
    };
    let removed = pending(wait("doomed", "off", "60"));
    wait_for_waiters(&hub, 1).await;
    assert_eq!(hub.remove_guest("doomed").await, StatusCode::NO_CONTENT);
    let (status, content_type, body) = removed.await.unwrap();
    assert_eq!(status, StatusCode::GONE);
    assert_documented(&spec, &Method::GET, path, status, Some(&content_type));
    assert_eq!(body["awaited"], "off");
    assert_eq!(body["guest"], Value::Null);

    let stopped = pending(wait("web1", "off", "60"));
    wait_for_waiters(&hub, 1).await;
    hub.shutdown().await;
    let (status, content_type, body) = stopped.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_documented(&spec, &Method::GET, path, status, Some(&content_type));
    assert_eq!(body["guest"]["name"], "web1");
}

/// Polls `/metrics` until `notifyhub_wait_requests` is `n`: the long-poll has started.
async fn wait_for_waiters(hub: &Hub, n: u32) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let line = format!("notifyhub_wait_requests {n}");
    loop {
        let (_, text) = hub.get_text("/metrics").await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no `{line}` in:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The property names a schema allows, through `$ref` and `allOf`.
fn properties(spec: &Value, schema: &Value) -> BTreeSet<String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return properties(spec, &spec["components"]["schemas"][name]);
    }
    let mut names: BTreeSet<String> = schema["properties"]
        .as_object()
        .map(|props| props.keys().cloned().collect())
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        names.extend(properties(spec, part));
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_json_has_exactly_the_documented_fields() {
    let hub = Hub::start(&["web1"]).await;
    hub.send(
        "web1",
        b"X_SYSTEMD_HOSTNAME=probe-guest\nX_SYSTEMD_UNIT_ACTIVE=multi-user.target",
    );
    hub.send("web1", b"READY=1\nSTATUS=up\nMAINPID=42");
    let guest = hub.settle("web1", 2).await;
    let spec = spec(&hub).await;

    let documented = properties(&spec, &json!({"$ref": "#/components/schemas/GuestDetail"}));
    let served: BTreeSet<String> = guest.as_object().unwrap().keys().cloned().collect();
    assert_eq!(served, documented);

    let events = hub.events("web1").await;
    let documented = properties(&spec, &json!({"$ref": "#/components/schemas/KeptMessage"}));
    let served: BTreeSet<String> = events[1].as_object().unwrap().keys().cloned().collect();
    assert_eq!(served, documented);
    // `fields` holds the keys that were set, each a documented property of `Message`.
    let message = properties(&spec, &json!({"$ref": "#/components/schemas/Message"}));
    for key in events[1]["fields"].as_object().unwrap().keys() {
        assert!(message.contains(key), "fields.{key} is not documented");
    }
    hub.shutdown().await;
}
