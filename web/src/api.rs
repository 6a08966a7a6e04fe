//! The REST API and its Server-Sent Events, under `/api/v1`. Every error is JSON:
//! `{"error": "<sentence>"}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, response};
use futures_util::{Stream, StreamExt, stream};
use notifyhub_core::{Message, Sender, Timestamp, WaitCondition, parse};
use serde::{Deserialize, Serialize};

use self::extract::{Json, Path, Query};
use crate::AppState;
use crate::registry::{RegisterError, Registry};
use crate::store::{FeedItem, GuestDetail, Hub, Record, WaitEnd};
use crate::{launch, vsock};

/// The longest long-poll, in seconds.
pub const MAX_WAIT_SECS: f64 = 3600.0;
/// The long-poll timeout without `timeout=`, in seconds.
pub const DEFAULT_WAIT_SECS: f64 = 60.0;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/guests", get(list_guests).post(create_guest))
        .route("/guests/{name}", get(get_guest).delete(delete_guest))
        .route("/guests/{name}/events", get(guest_events))
        .route("/guests/{name}/wait", get(wait))
        .route("/guests/{name}/launch", get(launch))
        .route("/vsock", get(vsock_status))
        .route("/events", get(events))
        .route("/events/export", get(export::all))
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

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = response::Json(ErrorBody {
            error: &self.message,
        });
        (self.status, body).into_response()
    }
}

impl From<RegisterError> for ApiError {
    fn from(error: RegisterError) -> Self {
        let status = match &error {
            RegisterError::InvalidName(_)
            | RegisterError::PathTooLong { .. }
            | RegisterError::InvalidVsock(_) => StatusCode::BAD_REQUEST,
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
            RegisterError::Bind { .. } | RegisterError::NotUtf8 { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            RegisterError::Closed | RegisterError::TooManyGuests(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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

#[derive(Serialize)]
struct GuestList {
    guests: Vec<GuestDetail>,
}

/// `GET /guests`: every guest, sorted by name.
async fn list_guests(State(hub): State<Hub>) -> response::Json<GuestList> {
    response::Json(GuestList {
        guests: hub.guests().guests,
    })
}

/// `GET /guests/{name}`
async fn get_guest(
    State(hub): State<Hub>,
    Path(name): Path<String>,
) -> Result<response::Json<GuestDetail>, ApiError> {
    hub.guest(&name)
        .map(response::Json)
        .ok_or_else(|| ApiError::unknown_guest(&name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGuest {
    name: String,
    /// A kernel vsock guest's CID.
    #[serde(default)]
    cid: Option<serde_json::Number>,
    /// A hybrid vsock guest's socket.
    #[serde(default)]
    hybrid: Option<vsock::HybridRequest>,
}

/// `POST /guests` `{"name": "web1"}`: 201 with the guest and its `Location`. A VM guest also
/// has `"cid": 5` (kernel vsock) or `"hybrid": {"uds_path": "/run/fc1.vsock", "port": 9999}`:
/// 400 for a CID out of 3..=4294967294 or a bad socket path, 409 for a CID or socket taken.
async fn create_guest(
    State(registry): State<Registry>,
    Json(new): Json<NewGuest>,
) -> Result<impl IntoResponse, ApiError> {
    let reach = vsock::requested_reach(new.cid.as_ref(), new.hybrid.as_ref())
        .map_err(ApiError::bad_request)?;
    let name = new.name;
    let guest = registry.register_with(&name, reach).await?;
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
async fn delete_guest(
    State(registry): State<Registry>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    match registry.unregister(&name).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(_) => Err(ApiError::unknown_guest(&name)),
    }
}

#[derive(Serialize)]
struct MessageList {
    events: Vec<MessageView>,
    forgotten: u64,
}

/// One kept message: as received, and as the core reads it.
struct MessageView(Arc<Record>);

impl Serialize for MessageView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            seq: u64,
            received_at: Timestamp,
            sender: Sender,
            fds: usize,
            hex: String,
            text: std::borrow::Cow<'a, str>,
            fields: Option<Message<'a>>,
        }
        let record = &self.0;
        View {
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
    })
    .into_response())
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(rename = "for")]
    condition: String,
    timeout: Option<String>,
}

/// The body of every wait answer but 200 (and 400, 404).
#[derive(Serialize)]
struct WaitFailure {
    error: String,
    awaited: String,
    guest: Option<GuestDetail>,
}

/// `GET /guests/{name}/wait?for=<condition>&timeout=<seconds>`: a long-poll. 200 with the guest
/// once the condition holds; 408 on timeout; 409 once it cannot hold in this boot; 410 if the
/// guest is removed; 503 if the hub shuts down.
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

#[derive(Deserialize)]
struct EventsQuery {
    guest: Option<String>,
    /// For clients that cannot send the `Last-Event-ID` header on their first request
    /// (`EventSource`); the header wins when both are present.
    last_event_id: Option<u64>,
}

/// `GET /events[?guest=NAME]`: Server-Sent Events, one per hub event (`event: guest`,
/// `registered` or `removed`, `id:` the hub event id), `event: resync` when the client must
/// start over. Honours `Last-Event-ID`; ends when the hub shuts down.
async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<sse::Event, Infallible>>>, ApiError> {
    if let Some(guest) = &query.guest {
        notifyhub_core::validate_guest_name(guest).map_err(ApiError::bad_request)?;
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
    let feed = state.hub.subscribe(query.guest.as_deref(), last_event_id);
    let items = stream::unfold(feed, |mut feed| async move {
        let item = feed.next().await;
        Some((Ok(sse_event(&item)), feed))
    });
    let ended = state.shutdown.clone().cancelled_owned();
    Ok(Sse::new(items.take_until(ended)).keep_alive(KeepAlive::default()))
}

fn sse_event(item: &FeedItem) -> sse::Event {
    let (id, name, data) = match item {
        FeedItem::Event(event) => (
            event.id,
            event.event.name(),
            serde_json::to_string(&**event),
        ),
        FeedItem::Resync(resync) => (resync.id, "resync", serde_json::to_string(resync)),
    };
    // Plain data of strings and numbers: serialising it cannot fail.
    let data = data.expect("hub events serialise");
    sse::Event::default()
        .id(id.to_string())
        .event(name)
        .data(data)
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
