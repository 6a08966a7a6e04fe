//! The REST API and its Server-Sent Events, under `/api/v1`. Every error is JSON:
//! `{"error": "<sentence>"}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Router, response};
use futures_util::{Stream, StreamExt, stream};
use notifyhub_core::{Message, Sender, Timestamp, WaitCondition, parse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi as _, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::extract::{Json, Path, Query};
use crate::AppState;
use crate::registry::{RegisterError, Registry};
use crate::store::{FeedItem, GuestDetail, Hub, Record, WaitEnd};
use crate::{launch, vsock};

/// The longest long-poll, in seconds.
pub const MAX_WAIT_SECS: f64 = 3600.0;
/// The long-poll timeout without `timeout=`, in seconds.
pub const DEFAULT_WAIT_SECS: f64 = 60.0;

/// The API's routes, each registered with its OpenAPI operation (`#[utoipa::path]` on the
/// handler): a route cannot be served without being in the spec ([`crate::openapi`]).
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(list_guests, create_guest))
        .routes(routes!(get_guest, delete_guest))
        .routes(routes!(guest_events))
        .routes(routes!(wait))
        .routes(routes!(launch))
        .routes(routes!(vsock_status))
        .routes(routes!(events))
        .routes(routes!(export::all))
        .routes(routes!(crate::openapi::serve))
}

pub(crate) fn router() -> Router<AppState> {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
}

pub mod export;

/// An error response: `status` with `{"error": message}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(error: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error.to_string())
    }

    fn unknown_guest(name: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no guest named {name:?}"))
    }
}

/// Every error's body.
#[derive(Serialize, ToSchema)]
struct ErrorBody {
    /// What went wrong, as a sentence.
    error: String,
}

/// The `{name}` of a guest's routes.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct GuestName {
    /// The guest's name: 1 to 64 ASCII letters, digits, `-`, `_` and `.`, starting with a
    /// letter or digit.
    #[allow(dead_code)] // The handlers take the name as a plain `Path<String>`.
    #[param(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", example = "web1")]
    name: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = response::Json(ErrorBody {
            error: self.message,
        });
        (self.status, body).into_response()
    }
}

impl From<RegisterError> for ApiError {
    fn from(error: RegisterError) -> Self {
        let status = match &error {
            RegisterError::InvalidName(_)
            | RegisterError::PathTooLong { .. }
            | RegisterError::InvalidVsock(_)
            | RegisterError::HybridPath { .. } => StatusCode::BAD_REQUEST,
            RegisterError::Exists(_)
            | RegisterError::CidTaken { .. }
            | RegisterError::SocketTaken { .. } => StatusCode::CONFLICT,
            RegisterError::Bind { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AlreadyExists
                ) =>
            {
                StatusCode::CONFLICT
            }
            RegisterError::Bind { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                StatusCode::FORBIDDEN
            }
            RegisterError::Bind { .. } | RegisterError::NotUtf8 { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            RegisterError::Closed
            | RegisterError::NotStored(_)
            | RegisterError::TooManyGuests(_)
            | RegisterError::OutOfFiles { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, error.to_string())
    }
}

/// axum's own extractors, with their rejections (400, 415, 422, …) as JSON [`ApiError`]s.
mod extract {
    use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
    use axum::extract::{FromRequest, FromRequestParts, Request};
    use axum::http::request::Parts;
    use serde::de::DeserializeOwned;

    use super::ApiError;

    macro_rules! json_rejection {
        ($($rejection:ty),*) => {$(
            impl From<$rejection> for ApiError {
                fn from(rejection: $rejection) -> Self {
                    Self::new(rejection.status(), rejection.body_text())
                }
            }
        )*};
    }
    json_rejection!(JsonRejection, PathRejection, QueryRejection);

    /// [`axum::Json`] as a request body.
    pub(crate) struct Json<T>(pub(crate) T);

    impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
        type Rejection = ApiError;

        async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
            let axum::Json(value) = axum::Json::from_request(req, state).await?;
            Ok(Self(value))
        }
    }

    /// [`axum::extract::Path`].
    pub(crate) struct Path<T>(pub(crate) T);

    impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
        type Rejection = ApiError;

        async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
            let axum::extract::Path(value) =
                axum::extract::Path::from_request_parts(parts, state).await?;
            Ok(Self(value))
        }
    }

    /// [`axum::extract::Query`].
    pub(crate) struct Query<T>(pub(crate) T);

    impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
        type Rejection = ApiError;

        async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
            let axum::extract::Query(value) =
                axum::extract::Query::from_request_parts(parts, state).await?;
            Ok(Self(value))
        }
    }
}

/// `GET /guests`.
#[derive(Serialize, ToSchema)]
struct GuestList {
    /// Every guest, sorted by name.
    guests: Vec<GuestDetail>,
}

/// `GET /guests`: every guest, sorted by name.
#[utoipa::path(
    get,
    path = "/guests",
    tag = "guests",
    responses((status = 200, description = "Every guest, sorted by name", body = GuestList))
)]
async fn list_guests(State(hub): State<Hub>) -> response::Json<GuestList> {
    response::Json(GuestList {
        guests: hub.guests().guests,
    })
}

/// `GET /guests/{name}`
#[utoipa::path(
    get,
    path = "/guests/{name}",
    tag = "guests",
    params(GuestName),
    responses(
        (status = 200, description = "The guest, with its boot timeline", body = GuestDetail),
        (status = 400, description = "The name is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "No guest has that name", body = ErrorBody),
    )
)]
async fn get_guest(
    State(hub): State<Hub>,
    Path(name): Path<String>,
) -> Result<response::Json<GuestDetail>, ApiError> {
    hub.guest(&name)
        .map(response::Json)
        .ok_or_else(|| ApiError::unknown_guest(&name))
}

/// The body of `POST /guests`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewGuest {
    /// The guest's name: 1 to 64 ASCII letters, digits, `-`, `_` and `.`, starting with a
    /// letter or digit.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", example = "web2")]
    name: String,
    /// A kernel vsock guest's CID, from 3 to 4294967294.
    #[serde(default)]
    #[schema(value_type = Option<u32>, minimum = 3, maximum = 4_294_967_294_u32)]
    cid: Option<serde_json::Number>,
    /// A hybrid vsock guest's socket.
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::HybridRequest>)]
    hybrid: Option<vsock::HybridRequest>,
    /// Permission bits of its notify socket, octal (`"0660"`); else `--socket-mode`.
    #[serde(default)]
    #[schema(pattern = r"^(0o)?0*[0-7]{1,3}$", example = "0660")]
    socket_mode: Option<String>,
    /// Owner of its notify socket, `"USER[:GROUP]"` (`"100000:100000"`); else `--socket-owner`.
    #[serde(default)]
    #[schema(pattern = r"^([^:]+(:[^:]*)?|:[^:]+)$", example = "100000:100000")]
    socket_owner: Option<String>,
}

/// `POST /guests` `{"name": "web1"}`: 201 with the guest and its `Location`. A VM guest also
/// has `"cid": 5` (kernel vsock) or `"hybrid": {"uds_path": "/run/fc1.vsock", "port": 9999}`:
/// 400 for a CID out of 3..=4294967294 or a bad socket path, 409 for a CID or socket taken.
/// `"socket_mode": "0660"` and `"socket_owner": "USER[:GROUP]"` set its notify socket's mode
/// and owner (400 if malformed or unknown, 403 if the hub may not give the file away), kept
/// with the guest across restarts.
#[utoipa::path(
    post,
    path = "/guests",
    tag = "guests",
    request_body = NewGuest,
    responses(
        (
            status = 201,
            description = "Registered; its notify socket is bound",
            body = GuestDetail,
            headers(("Location" = String, description = "`/api/v1/guests/{name}`")),
        ),
        (status = 400, description = "A bad name, CID, socket path, mode or owner (a hybrid `uds_path` in a directory that does not exist), or malformed JSON", body = ErrorBody),
        (status = 403, description = "The hub may not give the socket to that owner, or a browser sent it from another origin", body = ErrorBody),
        (status = 409, description = "The name, CID or socket is taken", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 422, description = "The JSON does not have the fields above", body = ErrorBody),
        (status = 500, description = "The socket cannot be bound", body = ErrorBody),
        (status = 503, description = "The hub is shutting down, holds `--max-guests` guests (registrations through the API count against it), or is out of file descriptors", body = ErrorBody),
    )
)]
async fn create_guest(
    State(registry): State<Registry>,
    Json(new): Json<NewGuest>,
) -> Result<impl IntoResponse, ApiError> {
    let reach = vsock::requested_reach(new.cid.as_ref(), new.hybrid.as_ref())
        .map_err(ApiError::bad_request)?;
    let access = crate::security::socket_access(
        registry.socket_access(),
        new.socket_mode.as_deref(),
        new.socket_owner.as_deref(),
    )
    .map_err(ApiError::bad_request)?;
    let name = new.name;
    // A guest with a mode or owner of its own keeps them (the journal stores them); one
    // without follows the hub's options, also after a restart with other ones.
    let own_access = new.socket_mode.is_some() || new.socket_owner.is_some();
    let guest = registry
        .register_requested(&name, reach, own_access.then_some(access))
        .await
        .inspect_err(|error| {
            if let RegisterError::TooManyGuests(max_guests) = error {
                static LOG: crate::security::RefusalLog = crate::security::RefusalLog::new();
                if let Some(refused) = LOG.note() {
                    tracing::warn!(max_guests, refused, "registration refused: --max-guests");
                }
            }
        })?;
    // The name passed validate_guest_name: ASCII letters, digits, '-', '_', '.' only.
    let location = HeaderValue::try_from(format!("/api/v1/guests/{name}"))
        .expect("a valid guest name is a valid header value");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        response::Json(guest),
    ))
}

/// `DELETE /guests/{name}`: 204.
#[utoipa::path(
    delete,
    path = "/guests/{name}",
    tag = "guests",
    params(GuestName),
    responses(
        (status = 204, description = "Removed; its socket is gone and its waits end with 410"),
        (status = 400, description = "The name is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "No guest has that name", body = ErrorBody),
    )
)]
async fn delete_guest(
    State(registry): State<Registry>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    match registry.unregister(&name).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(_) => Err(ApiError::unknown_guest(&name)),
    }
}

/// `GET /guests/{name}/events`.
#[derive(Serialize, ToSchema)]
struct MessageList {
    /// The kept messages, oldest first.
    #[schema(value_type = Vec<KeptMessage<'static>>)]
    events: Vec<MessageView>,
    /// How many older messages were accepted but are no longer kept.
    forgotten: u64,
    /// How many of the `forgotten` went for the hub-wide `--history-memory` rather than the
    /// guest's own limit.
    evicted: u64,
}

/// One kept message: as received, and as the core reads it.
struct MessageView(Arc<Record>);

/// One kept message as JSON.
#[derive(Serialize, ToSchema)]
struct KeptMessage<'a> {
    /// Its number among the guest's accepted messages, from 1.
    seq: u64,
    /// When it was received.
    received_at: Timestamp,
    /// Who sent it.
    sender: Sender,
    /// How many file descriptors came with it (all closed at once).
    fds: usize,
    /// The datagram's bytes, as lowercase hex.
    hex: String,
    /// The datagram as UTF-8, invalid bytes replaced with U+FFFD.
    #[schema(value_type = String)]
    text: std::borrow::Cow<'a, str>,
    /// The datagram as the core reads it: the keys that were set.
    fields: Option<Message<'a>>,
}

impl Serialize for MessageView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let record = &self.0;
        KeptMessage {
            seq: record.seq,
            received_at: record.received_at,
            sender: record.sender,
            fds: record.fds,
            hex: hex::encode(&record.bytes),
            text: String::from_utf8_lossy(&record.bytes),
            // Kept messages were accepted, so they parse.
            fields: parse(&record.bytes).ok(),
        }
        .serialize(serializer)
    }
}

/// `GET /guests/{name}/events`: the kept messages, oldest first; with `?format=jsonl`, as the
/// event log ([`export`]).
#[utoipa::path(
    get,
    path = "/guests/{name}/events",
    tag = "events",
    params(GuestName, export::EventsQuery),
    responses(
        (
            status = 200,
            description = "The kept messages, oldest first: as JSON, or with `format=jsonl` as \
                           the event log v1 (JSON Lines: a header line, then a line per message)",
            content(
                (MessageList = "application/json"),
                (String = "application/x-ndjson"),
            ),
        ),
        (status = 400, description = "A bad name or query", body = ErrorBody),
        (status = 404, description = "No guest has that name", body = ErrorBody),
    )
)]
async fn guest_events(
    State(hub): State<Hub>,
    Path(name): Path<String>,
    Query(query): Query<export::EventsQuery>,
) -> Result<Response, ApiError> {
    if query.format == export::EventsFormat::Jsonl {
        return export::guest(&hub, &name);
    }
    let history = hub
        .history(&name)
        .ok_or_else(|| ApiError::unknown_guest(&name))?;
    Ok(response::Json(MessageList {
        events: history.records.into_iter().map(MessageView).collect(),
        forgotten: history.forgotten,
        evicted: history.evicted,
    })
    .into_response())
}

/// The query of `GET /guests/{name}/wait`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct WaitQuery {
    /// What to wait for: `ready`, `booted` (ready and `multi-user.target` or
    /// `graphical.target` active), `unit:NAME` (e.g. `unit:ssh-access.target`), `off`, or
    /// `phase:PHASE`.
    #[serde(rename = "for")]
    #[param(
        rename = "for",
        max_length = 260,
        pattern = r"^(ready|booted|off|phase:(registered|booting|ready|reloading|stopping|off|failed)|unit:[A-Za-z0-9:_\\@-][A-Za-z0-9:_.\\@-]*\.[A-Za-z0-9:_\\@-]+)$",
        example = "unit:ssh-access.target"
    )]
    condition: String,
    /// How long to wait, in seconds (decimals allowed), from 0 (judge once) to 3600; default 60.
    #[param(value_type = Option<f64>, minimum = 0, maximum = 3600)]
    timeout: Option<String>,
}

/// The body of every wait answer but 200 (and 400, 404).
#[derive(Serialize, ToSchema)]
struct WaitFailure {
    /// Why the wait ended without the condition.
    error: String,
    /// The condition, as given.
    awaited: String,
    /// The guest now; `null` once it was removed.
    guest: Option<GuestDetail>,
}

/// `GET /guests/{name}/wait?for=<condition>&timeout=<seconds>`: a long-poll. 200 with the guest
/// once the condition holds; 408 on timeout; 409 once it cannot hold in this boot; 410 if the
/// guest is removed; 503 if the hub shuts down.
#[utoipa::path(
    get,
    path = "/guests/{name}/wait",
    tag = "guests",
    params(GuestName, WaitQuery),
    responses(
        (status = 200, description = "The condition holds", body = GuestDetail),
        (status = 400, description = "A bad condition or timeout", body = ErrorBody),
        (status = 404, description = "No guest has that name", body = ErrorBody),
        (status = 408, description = "The timeout passed first", body = WaitFailure),
        (
            status = 409,
            description = "It can no longer hold in this boot: the guest is `failed`, `off`, or \
                           `stopping` while waiting for `ready` or `booted`",
            body = WaitFailure,
        ),
        (status = 410, description = "The guest was removed while waiting", body = WaitFailure),
        (status = 503, description = "The hub is shutting down", body = WaitFailure),
    )
)]
async fn wait(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    let condition: WaitCondition = query.condition.parse().map_err(ApiError::bad_request)?;
    let timeout = wait_timeout(query.timeout.as_deref())?;
    let awaited = condition.to_string();
    let end = state
        .hub
        .wait(&name, condition, timeout, &state.shutdown)
        .await
        .map_err(|_| ApiError::unknown_guest(&name))?;
    let guest = match end {
        WaitEnd::Removed => None,
        _ => state.hub.guest(&name),
    };
    let (status, error) = match (end, &guest) {
        (WaitEnd::Met, Some(_)) => return Ok(response::Json(guest).into_response()),
        (WaitEnd::Removed, _) | (_, None) => (
            StatusCode::GONE,
            format!("guest {name} was removed while waiting for {awaited}"),
        ),
        (WaitEnd::TimedOut, Some(_)) => (
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "guest {name} did not reach {awaited} within {} s",
                timeout.as_secs_f64()
            ),
        ),
        (WaitEnd::Unreachable, Some(guest)) => (
            StatusCode::CONFLICT,
            format!(
                "guest {name} cannot reach {awaited} in this boot: it is {}",
                guest.snapshot().phase
            ),
        ),
        (WaitEnd::Cancelled, Some(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the hub is shutting down".to_owned(),
        ),
    };
    let body = WaitFailure {
        error,
        awaited,
        guest,
    };
    Ok((status, response::Json(body)).into_response())
}

/// `GET /guests/{name}/launch`: how to start the guest so that it reports here
/// ([`launch::Launch`]).
#[utoipa::path(
    get,
    path = "/guests/{name}/launch",
    tag = "guests",
    params(GuestName),
    responses(
        (status = 200, description = "The lines to start the guest with", body = crate::openapi::Launch),
        (status = 400, description = "The name is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "No guest has that name", body = ErrorBody),
    )
)]
async fn launch(
    State(registry): State<Registry>,
    Path(name): Path<String>,
) -> Result<response::Json<launch::Launch>, ApiError> {
    let guest = registry
        .hub()
        .guest(&name)
        .ok_or_else(|| ApiError::unknown_guest(&name))?;
    let summary = &guest.summary;
    let ports = registry.kernel_ports();
    Ok(response::Json(launch::launch(
        &name,
        &summary.notify_socket,
        &summary.reach,
        ports,
    )))
}

/// `GET /vsock`: the vsock listeners, the policy, and the messages dropped hub-wide.
#[utoipa::path(
    get,
    path = "/vsock",
    tag = "hub",
    responses((status = 200, description = "The vsock listeners, policy and hub-wide drops", body = crate::openapi::VsockStatus))
)]
async fn vsock_status(State(registry): State<Registry>) -> response::Json<serde_json::Value> {
    let settings = registry.vsock_settings();
    let status = vsock::VsockStatus::new(&settings, registry.vsock_stats());
    // Plain data of numbers and strings: serialising it cannot fail.
    response::Json(serde_json::to_value(status).expect("vsock status serialises"))
}

/// Parses `timeout=`: seconds, decimals allowed, 0 to [`MAX_WAIT_SECS`].
fn wait_timeout(seconds: Option<&str>) -> Result<Duration, ApiError> {
    let Some(text) = seconds else {
        return Ok(Duration::from_secs_f64(DEFAULT_WAIT_SECS));
    };
    text.parse::<f64>()
        .ok()
        .filter(|secs| (0.0..=MAX_WAIT_SECS).contains(secs))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "timeout must be a number of seconds from 0 to {MAX_WAIT_SECS}, not {text:?}"
            ))
        })
}

/// The query of `GET /events`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Follow this guest only; every guest without it.
    guest: Option<String>,
    /// For clients that cannot send the `Last-Event-ID` header on their first request
    /// (`EventSource`); the header wins when both are present.
    last_event_id: Option<u64>,
}

/// `GET /events[?guest=NAME]`: Server-Sent Events, one per hub event (`event: guest`,
/// `registered` or `removed`, `id:` the hub event id), `event: resync` when the client must
/// start over. Honours `Last-Event-ID`; ends when the hub shuts down.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    params(
        EventsQuery,
        (
            "Last-Event-ID" = Option<u64>,
            Header,
            description = "Resume after this hub event id (wins over `last_event_id`)",
        ),
    ),
    responses(
        (
            status = 200,
            description = "Server-Sent Events until the hub shuts down: `event: guest`, \
                           `registered` or `removed` with `id:` the hub event id and data \
                           `{id, guest, event, snapshot}` (a `HubEvent`); `event: resync` with \
                           data `{guests: [...]}` when the client must start over",
            content_type = "text/event-stream",
            body = String,
        ),
        (status = 400, description = "A bad guest name or event id", body = ErrorBody),
        (status = 404, description = "No guest of that name", body = ErrorBody),
        (
            status = 503,
            description = "The hub serves `--max-sse-clients` streams already",
            body = ErrorBody
        ),
    )
)]
async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<sse::Event, Infallible>>>, ApiError> {
    if let Some(guest) = &query.guest {
        notifyhub_core::validate_guest_name(guest).map_err(ApiError::bad_request)?;
        if state.hub.watch(guest).is_none() {
            return Err(ApiError::unknown_guest(guest));
        }
    }
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|id| id.trim().parse().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event id"))?,
        ),
        None => query.last_event_id,
    };
    // Held, like the count in `notifyhub_sse_clients`, until the stream is dropped.
    let slot = state.hub.sse_slot().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the hub serves --max-sse-clients event streams already; try again later",
        )
    })?;
    let feed = state.hub.subscribe(query.guest.as_deref(), last_event_id);
    let client = (state.hub.metrics().sse_client(), slot);
    let items = stream::unfold((feed, client), |(mut feed, client)| async move {
        let item = feed.next().await;
        Some((Ok(sse_event(&item)), (feed, client)))
    });
    let ended = state.shutdown.clone().cancelled_owned();
    Ok(Sse::new(items.take_until(ended)).keep_alive(KeepAlive::default()))
}

fn sse_event(item: &FeedItem) -> sse::Event {
    let (id, name, data) = match item {
        // Serialised once, for all clients.
        FeedItem::Event(event) => (event.id, event.event.name(), event.json()),
        // Plain data of strings and numbers: serialising it cannot fail.
        FeedItem::Resync(resync) => (
            resync.id,
            "resync",
            serde_json::to_string(resync)
                .expect("resyncs serialise")
                .into(),
        ),
    };
    sse::Event::default()
        .id(id.to_string())
        .event(name)
        .data(&*data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_timeouts() {
        assert_eq!(wait_timeout(None).unwrap(), Duration::from_secs(60));
        assert_eq!(wait_timeout(Some("0")).unwrap(), Duration::ZERO);
        assert_eq!(
            wait_timeout(Some("0.5")).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            wait_timeout(Some("3600")).unwrap(),
            Duration::from_secs(3600)
        );
        for bad in ["-1", "3600.5", "NaN", "inf", "", "5s", "1e9"] {
            let error = wait_timeout(Some(bad)).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }
}
