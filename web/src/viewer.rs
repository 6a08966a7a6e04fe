//! The log viewer: a page that replays a log file in the browser with the core compiled to
//! WebAssembly (`notifyhub-wasm`, built by `scripts/wasm-build` into `assets/wasm/`), and the same
//! viewer as one self-contained HTML file.
//!
//! - `GET /viewer`: the page (`templates/viewer.html`, `static/viewer.js`). It reads a picked or
//!   dropped file in 1 MiB slices into `LogReader`; nothing is uploaded. `/viewer?guest=NAME`
//!   replays that guest's event log from this hub instead (`GET /api/v1/guests/NAME/events?format=jsonl`).
//! - `GET /viewer/standalone.html`: the viewer as one file to save and open from disk, where a page
//!   can fetch neither modules nor the `.wasm`: styles, the wasm-bindgen glue, the module (base64)
//!   and the viewer script are inlined, under a `<meta>` content security policy that allows
//!   exactly those inline scripts and styles (by hash) and no connection at all.
//! - `GET /static/viewer.js`, `/static/viewer.css`, `/static/wasm/notifyhub_wasm.js` and
//!   `/static/wasm/notifyhub_wasm_bg.wasm` (`application/wasm`), embedded in the binary.

use askama::Template;
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest as _, Sha256};

use crate::AppState;
use crate::pages::PageError;

/// The wasm-bindgen glue (`--target web`): an ES module exporting `LogReader`, `parseDatagram`,
/// `escapeLine`, `escapeLines`, `initSync` and the async `default` loader.
pub const WASM_GLUE: &str = include_str!("../assets/wasm/notifyhub_wasm.js");
/// The core compiled to WebAssembly.
pub const WASM_MODULE: &[u8] = include_bytes!("../assets/wasm/notifyhub_wasm_bg.wasm");
/// The viewer script, shared by `/viewer` and the standalone file.
pub const VIEWER_JS: &str = include_str!("../static/viewer.js");
/// The viewer's styles, on top of `style.css`.
pub const VIEWER_CSS: &str = include_str!("../static/viewer.css");
/// The site's styles.
const SITE_CSS: &str = include_str!("../static/style.css");

/// The content security policy of `/viewer`: the site's ([`crate::CONTENT_SECURITY_POLICY`])
/// plus `'wasm-unsafe-eval'`, without which the page may not compile WebAssembly.
const VIEWER_CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// The standalone file is a download, saved as `notifyhub-viewer.html`.
const STANDALONE_DISPOSITION: &str = "attachment; filename=\"notifyhub-viewer.html\"";

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/viewer", get(page))
        .route("/viewer/standalone.html", get(standalone))
        .route(
            "/static/viewer.js",
            get(|| async { asset("text/javascript; charset=utf-8", VIEWER_JS.as_bytes()) }),
        )
        .route(
            "/static/viewer.css",
            get(|| async { asset("text/css; charset=utf-8", VIEWER_CSS.as_bytes()) }),
        )
        .route(
            "/static/wasm/notifyhub_wasm.js",
            get(|| async { asset("text/javascript; charset=utf-8", WASM_GLUE.as_bytes()) }),
        )
        .route(
            "/static/wasm/notifyhub_wasm_bg.wasm",
            get(|| async { asset("application/wasm", WASM_MODULE) }),
        )
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "viewer.html")]
struct ViewerPage {}

/// `GET /viewer`
async fn page() -> Result<Response, PageError> {
    let html = ViewerPage {}.render()?;
    Ok((
        [(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(VIEWER_CSP),
        )],
        Html(html),
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "viewer_standalone.html")]
struct StandalonePage<'a> {
    version: &'static str,
    csp: &'a str,
    style: &'a str,
    core_script: &'a str,
    viewer_script: &'a str,
}

/// The standalone viewer: the HTML and its content security policy.
#[derive(Debug)]
pub struct Standalone {
    /// The whole file.
    pub html: String,
    /// The policy in its `<meta>`, also sent as the response's header.
    pub csp: String,
}

/// Renders the standalone viewer.
///
/// # Errors
/// A template that fails to render.
pub fn render_standalone() -> askama::Result<Standalone> {
    // Each part is inlined raw: none may close its element early, which the tests check (the
    // assets are fixed at build time).
    let style = format!("{SITE_CSS}\n{VIEWER_CSS}");
    // The glue is an ES module; inlined, its exports cannot be imported, so the same module
    // hands the viewer script what it needs (see `loadCore` in viewer.js).
    let core_script = format!(
        "{WASM_GLUE}\n\
         // notifyhub: the module, inlined, since a page opened from disk cannot fetch it.\n\
         const NOTIFYHUB_WASM_BASE64 = \"{}\";\n\
         globalThis.notifyhubWasm = {{\n\
         \x20   LogReader,\n\
         \x20   escapeLine,\n\
         \x20   escapeLines,\n\
         \x20   initSync,\n\
         \x20   bytes: () => Uint8Array.from(atob(NOTIFYHUB_WASM_BASE64), (c) => c.charCodeAt(0)),\n\
         }};\n",
        BASE64.encode(WASM_MODULE)
    );
    let viewer_script = VIEWER_JS;
    let csp = format!(
        "default-src 'none'; script-src {} {} 'wasm-unsafe-eval'; style-src {}; \
         img-src data:; base-uri 'none'; form-action 'none'",
        csp_hash(&core_script),
        csp_hash(viewer_script),
        csp_hash(&style),
    );
    let html = StandalonePage {
        version: env!("CARGO_PKG_VERSION"),
        csp: &csp,
        style: &style,
        core_script: &core_script,
        viewer_script,
    }
    .render()?;
    Ok(Standalone { html, csp })
}

/// `GET /viewer/standalone.html`: the standalone viewer, as a download.
async fn standalone() -> Result<Response, PageError> {
    let Standalone { html, csp } = render_standalone()?;
    let csp = HeaderValue::try_from(format!("{csp}; frame-ancestors 'none'"))
        .expect("the policy is ASCII");
    Ok((
        [
            (header::CONTENT_SECURITY_POLICY, csp),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static(STANDALONE_DISPOSITION),
            ),
        ],
        Html(html),
    )
        .into_response())
}

/// `'sha256-…'`: a CSP source that allows an inline element with exactly this text.
fn csp_hash(text: &str) -> String {
    format!(
        "'sha256-{}'",
        BASE64.encode(Sha256::digest(text.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `text` can be the raw text of a `<tag>` element: no `</tag` (in any case) to end it
    /// early, and no `<!--`, which can make the HTML parser look past the end tag.
    fn inlinable(text: &str, tag: &str) -> bool {
        let lower = text.to_ascii_lowercase();
        !lower.contains(&format!("</{tag}")) && !lower.contains("<!--")
    }

    #[test]
    fn viewer_policy_is_the_sites_plus_wasm() {
        assert_eq!(
            VIEWER_CSP.replace(" 'wasm-unsafe-eval'", ""),
            crate::CONTENT_SECURITY_POLICY
        );
    }

    #[test]
    fn inlined_assets_cannot_end_their_element() {
        assert!(inlinable(WASM_GLUE, "script"));
        assert!(inlinable(VIEWER_JS, "script"));
        assert!(inlinable(SITE_CSS, "style"));
        assert!(inlinable(VIEWER_CSS, "style"));
        assert!(!inlinable("x = '</SCRIPT>'", "script"));
        assert!(!inlinable("<!-- x", "style"));
    }

    #[test]
    fn the_standalone_policy_hashes_what_is_inlined() {
        let Standalone { html, csp } = render_standalone().unwrap();
        for (open, close) in [
            ("<style>", "</style>"),
            ("<script type=\"module\">", "</script>"),
        ] {
            let mut rest = html.as_str();
            while let Some(start) = rest.find(open) {
                let body = &rest[start + open.len()..];
                let end = body.find(close).unwrap();
                assert!(
                    csp.contains(&csp_hash(&body[..end])),
                    "{open} is not in the policy"
                );
                rest = &body[end..];
            }
        }
        assert_eq!(html.matches("<script").count(), 2);
        assert!(!html.contains("<script src"));
    }
}
