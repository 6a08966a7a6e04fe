//! The OpenAPI 3.1 description of the REST API, served at `GET /api/v1/openapi.json`.
//!
//! It is generated, not written: every route of [`api`](crate::api) is registered through
//! `utoipa_axum`'s `routes!`, which takes the operation from the handler's `#[utoipa::path]`
//! and its schemas from the `ToSchema` derives of the types the handler returns. The core's
//! types (`Snapshot`, `Phase`, `Event`, `Message`, …) derive theirs in `notifyhub-core` behind
//! its `openapi` feature, next to their `serde` attributes, so a renamed field changes both.
//!
//! The types below describe JSON that `vsock` and `launch` write by hand or through private
//! fields; `scripts/schemathesis` checks every answer of the real binary against them.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{OpenApi, ToSchema};

/// The document's skeleton: what `api::routes` fills with the operations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "notifyhub",
        description = "The REST API of notifyhub, a host-side receiver of systemd's sd_notify \
                       protocol for many guests. Times are µs since the Unix epoch. Every error \
                       is JSON: `{\"error\": \"<sentence>\"}`.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    servers((url = "/api/v1", description = "this hub")),
    tags(
        (name = "guests", description = "Registered guests and their state"),
        (name = "events", description = "Raw messages, event logs and Server-Sent Events"),
        (name = "hub", description = "The hub itself"),
    )
)]
pub(crate) struct ApiDoc;

/// The spec of [`crate::api`], built once.
pub fn spec() -> &'static OpenApiDoc {
    static SPEC: LazyLock<OpenApiDoc> = LazyLock::new(|| {
        let mut spec = crate::api::routes().into_openapi();
        add_hub_wide_answers(&mut spec);
        spec
    });
    &SPEC
}

/// Adds what the layers around every route answer (`security`): 401 without the bearer token
/// (when the hub has one, `--token-file`), 414 for a query string over
/// [`MAX_QUERY_LEN`](crate::security::MAX_QUERY_LEN) bytes, 421 for a `Host` a hub without a
/// token does not answer to ([`check_host`](crate::security::check_host)), and 403 for a
/// browser's cross-site POST or DELETE; and the optional bearer scheme.
fn add_hub_wide_answers(spec: &mut OpenApiDoc) {
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    let unauthorized = error(
        "The hub has a bearer token (`--token-file`) and the request does not carry it \
         (`WWW-Authenticate: Bearer`)",
    );
    let too_long = error(&format!(
        "The query string is over {} bytes",
        crate::security::MAX_QUERY_LEN
    ));
    let cross_site = error("A browser sent it from another origin (`Sec-Fetch-Site`, `Origin`)");
    let misdirected = error(
        "The hub has no token and `Host` is not an IP address, `localhost`, `*.localhost` or an \
         `--allowed-host` name (DNS rebinding protection)",
    );
    for item in spec.paths.paths.values_mut() {
        let unsafe_methods = [item.post.as_mut(), item.delete.as_mut()];
        for operation in unsafe_methods.into_iter().flatten() {
            operation
                .responses
                .responses
                .entry("403".into())
                .or_insert_with(|| cross_site.clone().into());
        }
        let all = [
            item.get.as_mut(),
            item.post.as_mut(),
            item.put.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
        ];
        for operation in all.into_iter().flatten() {
            let responses = &mut operation.responses.responses;
            responses.insert("401".into(), unauthorized.clone().into());
            responses.insert("414".into(), too_long.clone().into());
            responses.insert("421".into(), misdirected.clone().into());
            operation.security = Some(vec![
                SecurityRequirement::default(),
                SecurityRequirement::new("bearer", Vec::<String>::new()),
            ]);
        }
    }
    let components = spec.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
}

/// [`spec`] as JSON, built once.
fn spec_json() -> &'static str {
    static JSON: LazyLock<String> =
        LazyLock::new(|| spec().to_pretty_json().expect("the spec serialises"));
    &JSON
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "hub",
    responses((
        status = 200,
        description = "The OpenAPI 3.1 document of this API",
        content_type = "application/json",
        body = Object,
    ))
)]
pub(crate) async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], spec_json())
}

/// How a VM guest reaches the hub over vsock, flattened into the guest's JSON
/// (`vsock::Reach`).
#[derive(Serialize, ToSchema)]
pub(crate) struct ReachFields {
    /// A kernel vsock guest's CID (`--vm NAME=CID`); `null` otherwise.
    #[schema(minimum = 3, maximum = 4_294_967_294_u32)]
    cid: Option<u32>,
    /// A hybrid vsock guest's socket; `null` otherwise.
    hybrid: Option<HybridSocket>,
}

/// A hybrid vsock guest's socket (`vsock::Hybrid`): the VMM listens on `uds_path` and hands
/// each guest connection to host port `port` to `socket`, `<uds_path>_<port>`, which the hub
/// binds.
#[derive(Serialize, ToSchema)]
pub(crate) struct HybridSocket {
    /// The VMM's vsock socket (Firecracker's `uds_path`).
    uds_path: String,
    /// The host port the guest connects to.
    port: u32,
    /// The guest's CID as the VMM knows it.
    cid: u32,
    /// `<uds_path>_<port>`: the socket the hub binds.
    socket: String,
}

/// The `"hybrid"` object of `POST /guests` (`vsock::HybridRequest`).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HybridRequest {
    /// The VMM's vsock socket: an absolute path; `<uds_path>_<port>` at most 107 bytes.
    uds_path: String,
    /// The host port the guest connects to; not 4294967295 (`VMADDR_PORT_ANY`).
    #[schema(maximum = 4_294_967_294_u32)]
    port: u32,
    /// The guest's CID, from 3 to 4294967294; default 3.
    #[schema(minimum = 3, maximum = 4_294_967_294_u32)]
    cid: Option<u32>,
}

/// How to start a guest so that it reports here (`launch::Launch`).
#[derive(Serialize, ToSchema)]
pub(crate) struct Launch {
    /// The guest's name.
    guest: String,
    /// What the guest's PID 1 gets as `$NOTIFY_SOCKET`: its unix socket's path, or for a VM
    /// the vsock address it is handed as `vmm.notify_socket`.
    notify_socket: String,
    /// One per way to start the guest, for the way it reaches the hub.
    snippets: Vec<Snippet>,
}

/// How to start the guest with one VMM or container manager (`launch::Snippet`).
#[derive(Serialize, ToSchema)]
pub(crate) struct Snippet {
    /// `qemu`, `systemd-vmspawn`, `systemd-nspawn`, `podman`, `firecracker` or
    /// `cloud-hypervisor`.
    vmm: String,
    /// What to add to its command line (or configuration).
    text: String,
    /// Why it looks like this, and what else it needs.
    note: String,
}

/// The vsock listeners, the policy and the hub-wide drops (`vsock::VsockStatus`).
#[derive(Serialize, ToSchema)]
pub(crate) struct VsockStatus {
    /// The kernel listeners' ports.
    ports: KernelPorts,
    /// What to hand a kernel vsock guest as `vmm.notify_socket`, if any listener runs.
    notify_socket: Option<String>,
    /// `--vsock-idle-ms`: how long a connection may stay silent before its message counts as
    /// whole, in ms.
    idle_ms: u64,
    /// `--auto-register`.
    auto_register: bool,
    /// `--max-guests`.
    max_guests: u64,
    /// `--ignore-unprivileged`.
    ignore_unprivileged: bool,
    /// Vsock messages no guest can be charged with.
    drops: VsockDrops,
}

/// The ports of the hub-wide kernel vsock listeners (`vsock::KernelPorts`).
#[derive(Serialize, ToSchema)]
pub(crate) struct KernelPorts {
    /// `SOCK_STREAM` listener (`--vsock-port`).
    stream: Option<u32>,
    /// `SOCK_SEQPACKET` listener (`--vsock-seqpacket-port`).
    seqpacket: Option<u32>,
}

/// Vsock messages dropped hub-wide (`vsock::VsockStats`).
#[derive(Serialize, ToSchema)]
pub(crate) struct VsockDrops {
    /// From a CID no guest has.
    unknown_cid: u64,
    /// From an unknown CID while the hub held `--max-guests` guests.
    over_guest_limit: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt as _;

    use super::*;
    use crate::AppState;
    use crate::registry::Registry;
    use crate::store::Hub;

    const METHODS: [Method; 5] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];

    fn spec_value() -> serde_json::Value {
        serde_json::from_str(spec_json()).unwrap()
    }

    /// Every (method, path) of the spec, with `{name}` as a path parameter.
    fn operations() -> BTreeSet<(String, String)> {
        let spec = spec_value();
        let paths = spec["paths"].as_object().unwrap();
        paths
            .iter()
            .flat_map(|(path, item)| {
                let item = item.as_object().unwrap();
                item.keys()
                    .filter(|key| METHODS.iter().any(|m| m.as_str().eq_ignore_ascii_case(key)))
                    .map(|method| (method.to_uppercase(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn the_spec_lists_the_api_routes() {
        let documented = operations();
        let expected: BTreeSet<(String, String)> = [
            ("GET", "/guests"),
            ("POST", "/guests"),
            ("GET", "/guests/{name}"),
            ("DELETE", "/guests/{name}"),
            ("GET", "/guests/{name}/events"),
            ("GET", "/guests/{name}/wait"),
            ("GET", "/guests/{name}/launch"),
            ("GET", "/vsock"),
            ("GET", "/events"),
            ("GET", "/events/export"),
            ("GET", "/openapi.json"),
        ]
        .into_iter()
        .map(|(method, path)| (method.to_owned(), path.to_owned()))
        .collect();
        assert_eq!(documented, expected);
        let json = spec_value();
        assert_eq!(json["openapi"], "3.1.0");
        assert_eq!(json["servers"][0]["url"], "/api/v1");
    }

    /// Both ways: each documented (method, path) reaches a handler of the API router, and each
    /// other method on a documented path gets the router's 405; an undocumented path gets its
    /// 404. The router is `api::router()`, what the binary serves.
    #[tokio::test]
    async fn the_router_serves_exactly_the_documented_operations() {
        let hub = Hub::new();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(hub.clone(), dir.path().join("guests"), &shutdown);
        let state = AppState {
            hub,
            registry,
            shutdown: shutdown.clone(),
        };
        // The SSE stream ends at once.
        shutdown.cancel();
        let router = crate::api::router().with_state(state);
        let documented = operations();
        let paths: BTreeSet<&String> = documented.iter().map(|(_, path)| path).collect();
        for path in paths {
            let uri = path.replace("{name}", "nobody");
            for method in &METHODS {
                let request = Request::builder()
                    .method(method.clone())
                    .uri(&uri)
                    .body(Body::empty())
                    .unwrap();
                let response = router.clone().oneshot(request).await.unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let body = String::from_utf8_lossy(&body);
                let key = (method.to_string(), path.clone());
                if documented.contains(&key) {
                    assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{key:?}: {body}");
                    assert!(
                        !body.contains("no such API endpoint"),
                        "{key:?} is documented but not routed: {status} {body}"
                    );
                } else {
                    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{key:?}: {body}");
                }
            }
        }
        let request = Request::builder()
            .uri("/no-such-route")
            .body(Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
