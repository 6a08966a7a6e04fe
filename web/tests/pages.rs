//! The HTML pages and static assets, through `tower::ServiceExt::oneshot` on the router, and
//! escaping of guest text on a real hub.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use common::TestHub;
use notifyhub_core::{Sender, Timestamp};
use notifyhub_web::registry::Registry;
use notifyhub_web::store::Hub;
use notifyhub_web::{AppState, router};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A router over a hub with guest `web1`, registered straight in the store (no socket).
fn app() -> (axum::Router, Hub, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new();
    let shutdown = CancellationToken::new();
    let registry = Registry::new(hub.clone(), tmp.path().join("guests"), &shutdown);
    hub.register(
        "web1",
        tmp.path().join("guests/web1/notify").to_str().unwrap(),
        Timestamp::from_micros(1_000_000),
    )
    .unwrap();
    let state = AppState {
        hub: hub.clone(),
        registry,
        shutdown,
    };
    (router(state), hub, tmp)
}

async fn get(app: &axum::Router, uri: &str) -> (Response, String) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (
        Response::from_parts(parts, Body::empty()),
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

fn content_type(response: &Response) -> &str {
    response.headers()[header::CONTENT_TYPE].to_str().unwrap()
}

#[tokio::test]
async fn dashboard_lists_guests() {
    let (app, hub, _tmp) = app();
    let now = Timestamp::from_micros(1_796_072_584_000_000);
    for datagram in [
        &b"X_SYSTEMD_HOSTNAME=probe-guest"[..],
        b"X_SYSTEMD_UNIT_ACTIVE=ssh-access.target",
        b"READY=1\nSTATUS=Ready.",
    ] {
        hub.ingest("web1", now, Sender::Unknown, datagram, 0)
            .unwrap();
    }
    let (response, html) = get(&app, "/").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_type(&response), "text/html; charset=utf-8");
    assert!(
        response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(
        html.contains(r#"<a data-field="name" href="/guests/web1">web1</a>"#),
        "{html}"
    );
    assert!(html.contains(r#"<span class="badge phase-ready" data-field="phase">ready</span>"#));
    assert!(html.contains("probe-guest"));
    assert!(html.contains(r#"<span class="chip">ssh-access.target</span>"#));
    assert!(
        html.contains("2026-11-30 21:03:04 UTC"),
        "last seen, readable without JS"
    );
    assert!(html.contains(r#"<script src="/static/dashboard.js" defer></script>"#));
    assert!(html.contains(r#"<tr id="no-guests" class="empty" hidden>"#));
}

#[tokio::test]
async fn dashboard_without_guests_says_so() {
    let (app, hub, _tmp) = app();
    hub.remove("web1");
    let (response, html) = get(&app, "/").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        html.contains(r#"<tr id="no-guests" class="empty">"#),
        "{html}"
    );
}

#[tokio::test]
async fn guest_page_shows_detail_timeline_and_messages() {
    let (app, hub, tmp) = app();
    let at = |s: u64| Timestamp::from_micros(2_000_000 + s * 1_000_000);
    hub.ingest(
        "web1",
        at(0),
        Sender::Unknown,
        b"X_SYSTEMD_HOSTNAME=probe-guest",
        0,
    )
    .unwrap();
    hub.ingest("web1", at(3), Sender::Unknown, b"READY=1\nSTATUS=Ready.", 0)
        .unwrap();

    let (response, html) = get(&app, "/guests/web1").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_type(&response), "text/html; charset=utf-8");
    let socket = tmp.path().join("guests/web1/notify");
    assert!(
        html.contains(&format!("NOTIFY_SOCKET={}", socket.display())),
        "{html}"
    );
    assert!(
        html.contains("+3.000 s"),
        "timeline relative to the first message"
    );
    assert!(html.contains("booting → ready"));
    assert!(html.contains("READY=1\nSTATUS=Ready."), "the raw message");
    assert!(html.contains("52 45 41 44 59 3d 31 0a"), "and its hex");
    assert!(html.contains(r#"data-guest="web1""#));
}

#[tokio::test]
async fn unknown_pages_are_404_html_and_unknown_api_paths_404_json() {
    let (app, _hub, _tmp) = app();
    let (response, html) = get(&app, "/guests/nope").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(content_type(&response), "text/html; charset=utf-8");
    assert!(html.contains("There is no guest named “nope”."), "{html}");

    let (response, html) = get(&app, "/no/such/page").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(html.contains("There is no such page."));

    let (response, json) = get(&app, "/api/v1/guests/nope").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(content_type(&response), "application/json");
    assert_eq!(json, r#"{"error":"no guest named \"nope\""}"#);
}

#[tokio::test]
async fn static_assets_are_served_from_the_binary() {
    let (app, _hub, _tmp) = app();
    let (response, css) = get(&app, "/static/style.css").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_type(&response), "text/css; charset=utf-8");
    assert!(css.contains("prefers-color-scheme: dark"));
    let (response, js) = get(&app, "/static/dashboard.js").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_type(&response), "text/javascript; charset=utf-8");
    assert!(js.contains("new EventSource"));
    assert!(
        !js.contains("innerHTML"),
        "guest text goes through textContent only"
    );
}

/// A STATUS with markup, sent by a real guest over its socket, is escaped on every page.
#[tokio::test(flavor = "multi_thread")]
async fn guest_text_is_escaped() {
    let hub = TestHub::start(&["web1"]).await;
    hub.send_all(
        "web1",
        &[
            b"STATUS=<script>alert(1)</script>",
            b"X_SYSTEMD_HOSTNAME=<b>host</b>",
        ],
    )
    .await;
    for page in ["/", "/guests/web1"] {
        let (status, html) = hub.get_text(page).await;
        assert_eq!(status, StatusCode::OK);
        // askama writes numeric entities (`&#60;`); named ones would do as well.
        let escaped = [
            "&#60;script&#62;alert(1)&#60;/script&#62;",
            "&lt;script&gt;alert(1)&lt;/script&gt;",
        ];
        assert!(escaped.iter().any(|e| html.contains(e)), "{page}: {html}");
        assert!(!html.contains("<script>alert(1)"), "{page}: raw markup");
        assert!(!html.contains("<b>host</b>"), "{page}: raw markup");
    }
}

/// Control characters, bidi overrides and invisible characters a guest sends are shown as
/// visible escapes (as the CLI shows them), never written raw into the HTML: a NUL is a parse
/// error, U+202E reorders the text after it.
#[tokio::test]
async fn guest_control_characters_are_shown_escaped() {
    let (app, hub, _tmp) = app();
    let now = Timestamp::from_micros(1_796_072_584_000_000);
    for datagram in [
        "STATUS=trailingnul\0".as_bytes(),
        "X_SYSTEMD_HOSTNAME=ho\u{202e}st\u{200b}".as_bytes(),
        "STATUS=\x1b[31mred\x1b[0m\u{202e}gpj.exe\u{2066}".as_bytes(),
    ] {
        hub.ingest("web1", now, Sender::Unknown, datagram, 0)
            .unwrap();
    }
    for page in ["/", "/guests/web1"] {
        let (response, html) = get(&app, page).await;
        assert_eq!(response.status(), StatusCode::OK, "{page}");
        for raw in ['\0', '\x1b', '\u{202e}', '\u{2066}', '\u{200b}'] {
            assert!(!html.contains(raw), "{page} holds {raw:?} raw:\n{html}");
        }
        assert!(html.contains("ho\\u{202e}st\\u{200b}"), "{page}: {html}");
        assert!(
            html.contains("\\x1b[31mred\\x1b[0m\\u{202e}gpj.exe\\u{2066}"),
            "{page}: {html}"
        );
    }
    let (_, html) = get(&app, "/guests/web1").await;
    assert!(
        html.contains(r#"<p class="status-line" data-field="status">\x1b[31mred"#),
        "{html}"
    );
    assert!(
        html.contains("<pre class=\"payload\">STATUS=trailingnul\\x00</pre>"),
        "{html}"
    );
    // The API keeps the text as sent: it is data, and JSON escapes it.
    let (_, json) = get(&app, "/api/v1/guests/web1").await;
    let snapshot: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(snapshot["hostname"], "ho\u{202e}st\u{200b}");
}
