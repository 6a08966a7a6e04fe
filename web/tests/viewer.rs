//! The log viewer's routes through `tower::ServiceExt::oneshot`: the page, its script and styles,
//! the WebAssembly bundle, and the standalone file. (The viewer itself runs in a real browser in
//! `tests/browser/`.)

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use notifyhub_core::Timestamp;
use notifyhub_web::registry::Registry;
use notifyhub_web::store::Hub;
use notifyhub_web::viewer::{WASM_GLUE, WASM_MODULE};
use notifyhub_web::{AppState, router};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

fn app() -> (axum::Router, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new();
    let shutdown = CancellationToken::new();
    let registry = Registry::new(hub.clone(), tmp.path().join("guests"), &shutdown);
    hub.register("web1", "/run/web1", Timestamp::ZERO).unwrap();
    let state = AppState {
        hub,
        registry,
        shutdown,
    };
    (router(state), tmp)
}

async fn get(app: &axum::Router, uri: &str) -> (Response, Vec<u8>) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (Response::from_parts(parts, Body::empty()), bytes.to_vec())
}

fn header(response: &Response, name: header::HeaderName) -> &str {
    response
        .headers()
        .get(&name)
        .unwrap_or_else(|| panic!("no {name}"))
        .to_str()
        .unwrap()
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn the_page_loads_its_module_and_may_compile_wasm() {
    let (app, _tmp) = app();
    let (response, body) = get(&app, "/viewer").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    let csp = header(&response, header::CONTENT_SECURITY_POLICY);
    assert!(
        csp.contains("script-src 'self' 'wasm-unsafe-eval';"),
        "{csp}"
    );
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let page = text(body);
    for needle in [
        r#"<script type="module" src="/static/viewer.js"></script>"#,
        r#"<link rel="stylesheet" href="/static/viewer.css">"#,
        r#"<input type="file" id="log-file""#,
        r#"<section id="viewer" class="viewer" data-state="loading">"#,
        r#"href="/viewer/standalone.html" download"#,
    ] {
        assert!(page.contains(needle), "no {needle}");
    }

    // Other pages keep the stricter policy, and link to the viewer.
    let (response, body) = get(&app, "/guests/web1").await;
    let csp = header(&response, header::CONTENT_SECURITY_POLICY);
    assert!(!csp.contains("wasm"), "{csp}");
    let page = text(body);
    assert!(page.contains(r#"<a href="/viewer">Log viewer</a>"#));
    assert!(page.contains(r#"href="/viewer?guest=web1">Open in viewer</a>"#));
    assert!(page.contains(
        r#"href="/api/v1/guests/web1/events?format=jsonl" download="web1.events.jsonl""#
    ));
}

#[tokio::test]
async fn static_assets_have_their_types() {
    let (app, _tmp) = app();
    let cases: [(&str, &str, &[u8]); 4] = [
        (
            "/static/wasm/notifyhub_wasm_bg.wasm",
            "application/wasm",
            b"\0asm\x01\0\0\0",
        ),
        (
            "/static/wasm/notifyhub_wasm.js",
            "text/javascript; charset=utf-8",
            b"/**",
        ),
        (
            "/static/viewer.js",
            "text/javascript; charset=utf-8",
            b"// notifyhub log viewer",
        ),
        (
            "/static/viewer.css",
            "text/css; charset=utf-8",
            b"/* notifyhub log viewer",
        ),
    ];
    for (uri, content_type, start) in cases {
        let (response, body) = get(&app, uri).await;
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        assert_eq!(
            header(&response, header::CONTENT_TYPE),
            content_type,
            "{uri}"
        );
        assert_eq!(header(&response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert!(body.starts_with(start), "{uri}");
    }
    let (_, module) = get(&app, "/static/wasm/notifyhub_wasm_bg.wasm").await;
    assert_eq!(module, WASM_MODULE);
    assert_eq!(
        module,
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets/wasm/notifyhub_wasm_bg.wasm"
        ))
        .unwrap()
    );
    let (_, glue) = get(&app, "/static/wasm/notifyhub_wasm.js").await;
    let glue = text(glue);
    assert_eq!(glue, WASM_GLUE);
    for export in [
        "export class LogReader",
        "export { initSync, __wbg_init as default };",
    ] {
        assert!(glue.contains(export), "the glue has no {export}");
    }
}

#[tokio::test]
async fn the_standalone_file_is_self_contained() {
    let (app, _tmp) = app();
    let (response, body) = get(&app, "/viewer/standalone.html").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, header::CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    assert_eq!(
        header(&response, header::CONTENT_DISPOSITION),
        r#"attachment; filename="notifyhub-viewer.html""#
    );
    let html = text(body);
    let base64 = base64::engine::general_purpose::STANDARD.encode(WASM_MODULE);
    assert!(
        html.contains(&format!("\"{base64}\"")),
        "the module is inlined"
    );
    assert!(
        html.contains("export class LogReader"),
        "the glue is inlined"
    );
    assert!(
        html.contains("globalThis.notifyhubWasm"),
        "and handed to the viewer"
    );
    assert!(
        html.contains("async function loadCore()"),
        "the viewer is inlined"
    );
    assert!(html.contains(r#"<input type="file" id="log-file""#));

    // Nothing to fetch: no external script, stylesheet or image.
    assert_eq!(html.matches("<script").count(), 2);
    assert_eq!(html.matches(r#"<script type="module">"#).count(), 2);
    for needle in [" src=", "<link rel=\"stylesheet\"", "<img", "@import"] {
        assert!(!html.contains(needle), "{needle}");
    }

    // Its own policy, in the file (which has no headers on disk) and on the response.
    let meta = html
        .split(r#"<meta http-equiv="Content-Security-Policy" content=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSP <meta>")
        .replace("&#39;", "'");
    let csp = header(&response, header::CONTENT_SECURITY_POLICY);
    assert_eq!(format!("{meta}; frame-ancestors 'none'"), csp);
    assert!(
        meta.starts_with("default-src 'none'; script-src 'sha256-"),
        "{meta}"
    );
    assert!(meta.contains("'wasm-unsafe-eval'"), "{meta}");
    assert!(!meta.contains("unsafe-inline"), "{meta}");
    assert!(!meta.contains("connect-src"), "no connections: {meta}");
}
