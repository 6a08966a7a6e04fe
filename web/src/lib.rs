//! The web side of notifyhub: the hub's state store, its HTTP face, and the `notifyhub` binary.
//!
//! This crate owns everything between the transports and the user. Data flows one way: a
//! guest's notify socket ([`registry`], on `notifyhub-transport-unix`), or for a VM its vsock
//! connection ([`vsock`], on `notifyhub-transport-vsock`), hands each message to the
//! [`store`], which folds it with `notifyhub-core` and publishes the result; the [`api`] (REST,
//! long-polls, Server-Sent Events) and the [`pages`] (HTML dashboard) only read the store.
//! With a state directory, each input is committed to the [`journal`] (SQLite) before the store
//! applies it, and a restart replays the journal into the store.
//! No protocol logic lives here: parsing, guest state, wait conditions and name rules are
//! `notifyhub-core`'s.
//!
//! [`server::Server`] puts it together for the binary; [`router`] is the HTTP side alone.
//! [`openapi`] generates the API's OpenAPI spec from the handlers, [`metrics`] serves the
//! Prometheus metrics, and [`logging`] writes the log as the journal wants it under systemd.

pub mod activation;
pub mod api;
pub mod clock;
pub mod config;
pub mod drop_log;
pub mod journal;
pub mod launch;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod registry;
pub mod security;
pub mod server;
pub mod store;
pub mod supervisor;
pub mod text;
pub mod viewer;
pub mod vsock;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::http::{HeaderValue, header};
use tokio_util::sync::CancellationToken;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::registry::Registry;
use crate::store::Hub;

/// What the HTTP handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The state store.
    pub hub: Hub,
    /// Registers and removes guests (`POST` and `DELETE /api/v1/guests`).
    pub registry: Registry,
    /// Cancelled when the hub shuts down: ends every SSE stream and long-poll, without which a
    /// graceful shutdown would wait for them forever.
    pub shutdown: CancellationToken,
}

impl FromRef<AppState> for Hub {
    fn from_ref(state: &AppState) -> Self {
        state.hub.clone()
    }
}

impl FromRef<AppState> for Registry {
    fn from_ref(state: &AppState) -> Self {
        state.registry.clone()
    }
}

/// The content security policy of every response: only this origin's script, styles and
/// connections, no inline script, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// The whole HTTP application: `/api/v1/…`, the pages and their static assets; bodies over
/// [`security::MAX_BODY_LEN`] get 413, query strings over [`security::MAX_QUERY_LEN`] 414, and a
/// browser's cross-site POST or DELETE 403 ([`security::reject_cross_site`]). Without a bearer
/// token; [`router_with_token`] is the one [`server::Server`] serves.
pub fn router(state: AppState) -> Router {
    router_with_token(state, None)
}

/// [`router`] behind a bearer token check ([`security::require_token`]) when `token` is
/// `Some`. The CSP and `X-Content-Type-Options` layers are outermost, so every response carries
/// them, the refusals of the security layers (401, 403, 414) included.
pub fn router_with_token(state: AppState, token: Option<Arc<security::Token>>) -> Router {
    router_with_access(state, token, None)
}

/// [`router_with_token`], and when `hosts` is `Some`, behind the `Host` check
/// ([`security::check_host`]: 421 for a host it does not name) that [`server::Server`] puts in
/// front of a TCP listener without a token.
pub fn router_with_access(
    state: AppState,
    token: Option<Arc<security::Token>>,
    hosts: Option<Arc<security::AllowedHosts>>,
) -> Router {
    let app = Router::new()
        .nest("/api/v1", api::router())
        .merge(pages::router())
        .merge(viewer::router())
        .route("/metrics", axum::routing::get(metrics::serve))
        .fallback(pages::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(security::MAX_BODY_LEN))
        .layer(axum::middleware::from_fn(security::reject_cross_site))
        .layer(axum::middleware::from_fn(security::limit_query))
        .with_state(state);
    let app = match token {
        Some(token) => app.layer(axum::middleware::from_fn_with_state(
            token,
            security::require_token,
        )),
        None => app,
    };
    let app = match hosts {
        Some(hosts) => app.layer(axum::middleware::from_fn_with_state(
            hosts,
            security::check_host,
        )),
        None => app,
    };
    app.layer(TraceLayer::new_for_http().on_failure(log_failure))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
}

/// tower-http's failure log, less the answers the hub gives on purpose: a 503 (shutting down,
/// `--max-guests`, out of descriptors) tells the client why in its body and is no fault of the
/// hub's, so it is logged here at debug only (a refusal worth a warning logs it where it is
/// decided, throttled); any other 5xx and a failed response body are errors.
fn log_failure(
    class: tower_http::classify::ServerErrorsFailureClass,
    latency: std::time::Duration,
    _span: &tracing::Span,
) {
    use tower_http::classify::ServerErrorsFailureClass;
    let latency_ms = latency.as_millis();
    match class {
        ServerErrorsFailureClass::StatusCode(axum::http::StatusCode::SERVICE_UNAVAILABLE) => {
            tracing::debug!(latency_ms, "answered 503")
        }
        class => tracing::error!(classification = %class, latency_ms, "response failed"),
    }
}
