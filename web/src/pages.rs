//! The HTML pages (askama templates in `templates/`, autoescaped) and the static assets they use,
//! embedded in the binary.
//!
//! Every page works without JavaScript; `static/dashboard.js` follows `/api/v1/events` and
//! updates the page in place. Guest-supplied text (STATUS, hostname, unit names, raw messages)
//! only ever reaches the HTML with its control and invisible characters shown as escapes
//! ([`crate::text`]), through askama's escaping, or through the script's `textContent`.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use notifyhub_core::{Drops, Event, Sender, Snapshot, Timestamp};
use tracing::error;

use crate::AppState;
use crate::clock::{Offset, Seconds, Utc};
use crate::launch::{self, Launch};
use crate::registry::Registry;
use crate::store::{GuestDetail, Hub, Record};
use crate::text::{escape_line, escape_lines};

/// The most messages the detail page shows; the API has all that are kept.
const MESSAGES_SHOWN: usize = 100;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/guests/{name}", get(guest))
        .route("/static/style.css", get(style))
        .route("/static/dashboard.js", get(script))
}

/// A page handler's error: a 404 page, or a 500 for a template that failed to render.
#[derive(Debug)]
pub(crate) enum PageError {
    NotFound(String),
    Render(askama::Error),
}

impl From<askama::Error> for PageError {
    fn from(error: askama::Error) -> Self {
        Self::Render(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let what = match self {
            Self::NotFound(what) => what,
            Self::Render(error) => {
                error!(%error, "cannot render page");
                return (StatusCode::INTERNAL_SERVER_ERROR, "cannot render this page")
                    .into_response();
            }
        };
        match (NotFoundPage { what }).render() {
            Ok(page) => (StatusCode::NOT_FOUND, Html(page)).into_response(),
            Err(error) => Self::Render(error).into_response(),
        }
    }
}

/// The 404 handler for everything outside `/api`.
pub(crate) async fn not_found() -> PageError {
    PageError::NotFound("There is no such page.".to_owned())
}

#[derive(Template)]
#[template(path = "not_found.html")]
struct NotFoundPage {
    what: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    last_event_id: u64,
    guests: Vec<GuestRow>,
    /// The readiness warning's text, e.g. `not ready after 90 s`.
    not_ready: String,
}

/// `GET /`: every guest in a table.
async fn dashboard(State(hub): State<Hub>) -> Result<Html<String>, PageError> {
    let overview = hub.guests();
    let page = DashboardPage {
        last_event_id: overview.last_event_id,
        guests: overview
            .guests
            .iter()
            .map(|guest| GuestRow::new(guest.snapshot()))
            .collect(),
        not_ready: not_ready(hub.ready_timeout()),
    };
    Ok(Html(page.render()?))
}

#[derive(Template)]
#[template(path = "guest.html")]
struct GuestPage {
    last_event_id: u64,
    guest: GuestRow,
    notify_socket: String,
    facts: Vec<Fact>,
    timeline: Vec<TimelineRow>,
    messages: Vec<MessageRow>,
    /// Messages kept but not shown, and accepted but no longer kept.
    messages_hidden: usize,
    messages_forgotten: u64,
    not_ready: String,
    /// How to start the guest so that it reports here.
    launch: Launch,
}

/// `GET /guests/{name}`: one guest in detail.
async fn guest(
    State(hub): State<Hub>,
    State(registry): State<Registry>,
    Path(name): Path<String>,
) -> Result<Html<String>, PageError> {
    let unknown = || PageError::NotFound(format!("There is no guest named “{name}”."));
    // Taken before the state: the live feed then resumes with events the page may already
    // show (harmless, a snapshot is applied whole) rather than miss some.
    let last_event_id = hub.last_event_id();
    let detail = hub.guest(&name).ok_or_else(unknown)?;
    let history = hub.history(&name).ok_or_else(unknown)?;
    let summary = &detail.summary;
    let launch = launch::launch(
        &name,
        &summary.notify_socket,
        &summary.reach,
        registry.kernel_ports(),
    );
    let page = GuestPage::new(last_event_id, &detail, &history.records, history.forgotten)
        .with_not_ready(not_ready(hub.ready_timeout()))
        .with_launch(launch);
    Ok(Html(page.render()?))
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../static/style.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../static/dashboard.js"),
    )
}

/// A timestamp as the templates show it.
#[derive(Clone, Copy, Debug)]
struct Moment(Timestamp);

impl Moment {
    fn micros(&self) -> u64 {
        self.0.as_micros()
    }

    fn rfc3339(&self) -> String {
        format!("{:#}", Utc(self.0))
    }
}

impl fmt::Display for Moment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Utc(self.0).fmt(f)
    }
}

/// What the dashboard shows of a guest (and the detail page's header).
struct GuestRow {
    name: String,
    phase: &'static str,
    hostname: String,
    status: String,
    targets: Vec<String>,
    boot_count: u32,
    last_seen: Option<Moment>,
    /// This boot sent no `READY=1` by `ready_deadline` (`--ready-timeout`).
    ready_timed_out: bool,
    ready_deadline: Option<Moment>,
}

/// The text of the warning badge of a boot that missed its readiness deadline.
fn not_ready(timeout: Option<std::time::Duration>) -> String {
    match timeout {
        Some(timeout) if timeout.subsec_micros() == 0 => {
            format!("not ready after {} s", timeout.as_secs())
        }
        Some(timeout) => format!(
            "not ready after {}",
            Seconds(u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX))
        ),
        None => "not ready in time".to_owned(),
    }
}

impl GuestRow {
    fn new(snapshot: &Snapshot) -> Self {
        Self {
            name: snapshot.name.clone(),
            phase: snapshot.phase.as_str(),
            hostname: escape_line(&or_dash(snapshot.hostname.as_deref())),
            status: escape_line(&or_dash(snapshot.status.as_deref())),
            targets: snapshot
                .active_units
                .iter()
                .map(|unit| escape_line(unit))
                .collect(),
            boot_count: snapshot.boot_count,
            last_seen: snapshot.last_seen.map(Moment),
            ready_timed_out: snapshot.ready_timed_out,
            ready_deadline: snapshot.ready_deadline.map(Moment),
        }
    }
}

/// The value, or `—` for none.
fn or_dash(value: Option<impl fmt::Display>) -> String {
    value.map_or_else(|| "—".to_owned(), |value| value.to_string())
}

/// One line of the detail page's fact list; `field` names the snapshot key the script updates.
struct Fact {
    label: &'static str,
    field: &'static str,
    value: FactValue,
}

enum FactValue {
    Text(String),
    Time(Option<Moment>),
}

struct TimelineRow {
    offset: String,
    boot: u32,
    kind: &'static str,
    text: String,
}

struct MessageRow {
    seq: u64,
    offset: String,
    received_at: Moment,
    sender: String,
    fds: usize,
    text: String,
    hex: String,
}

impl GuestPage {
    fn new(
        last_event_id: u64,
        detail: &GuestDetail,
        records: &[Arc<Record>],
        forgotten: u64,
    ) -> Self {
        let snapshot = detail.snapshot();
        let first = snapshot.first_seen;
        let since_first =
            |at: Timestamp| Offset(first.map_or(0, |first| at.micros_since(first))).to_string();
        let text = |label, field, value: String| Fact {
            label,
            field,
            value: FactValue::Text(escape_line(&value)),
        };
        let time = |label, field, at: Option<Timestamp>| Fact {
            label,
            field,
            value: FactValue::Time(at.map(Moment)),
        };
        let facts = vec![
            text(
                "Hostname",
                "hostname",
                or_dash(snapshot.hostname.as_deref()),
            ),
            text(
                "Machine ID",
                "machine_id",
                or_dash(snapshot.machine_id.as_deref()),
            ),
            text("Boots", "boot_count", snapshot.boot_count.to_string()),
            text(
                "READY=1 this boot",
                "ready_seen",
                yes_no(snapshot.ready_seen),
            ),
            text("Failed boot", "failed_boot", yes_no(snapshot.failed_boot)),
            text("Main PID", "main_pid", or_dash(snapshot.main_pid)),
            text(
                "Signals level",
                "signals_level",
                or_dash(snapshot.signals_level),
            ),
            text("Errno", "errno", or_dash(snapshot.errno)),
            text(
                "Bus error",
                "bus_error",
                or_dash(snapshot.bus_error.as_deref()),
            ),
            text(
                "Varlink error",
                "varlink_error",
                or_dash(snapshot.varlink_error.as_deref()),
            ),
            text(
                "Exit status",
                "exit_status",
                snapshot
                    .exit_status
                    .map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
            ),
            text(
                "Shutdown",
                "shutdown",
                or_dash(snapshot.shutdown.as_ref().map(
                    |shutdown| match &shutdown.reboot_parameter {
                        Some(parameter) => format!("{} ({parameter})", shutdown.verb),
                        None => shutdown.verb.clone(),
                    },
                )),
            ),
            text("Watchdog", "watchdog", watchdog(snapshot)),
            text("Messages", "messages", snapshot.messages.to_string()),
            text("Dropped", "drops", describe_drops(&snapshot.drops)),
            time("Registered", "registered_at", Some(snapshot.registered_at)),
            time("First message", "first_seen", snapshot.first_seen),
            time("Last message", "last_seen", snapshot.last_seen),
            text(
                "Last sender",
                "last_sender",
                or_dash(snapshot.last_sender.map(describe_sender)),
            ),
        ];
        let timeline = detail
            .timeline
            .iter()
            .map(|milestone| {
                let (kind, text) = describe_event(&milestone.event);
                TimelineRow {
                    offset: since_first(milestone.at),
                    boot: milestone.boot,
                    kind,
                    text: escape_line(&text),
                }
            })
            .collect();
        let messages = records
            .iter()
            .rev()
            .take(MESSAGES_SHOWN)
            .map(|record| MessageRow {
                seq: record.seq,
                offset: since_first(record.received_at),
                received_at: Moment(record.received_at),
                sender: describe_sender(record.sender),
                fds: record.fds,
                text: escape_lines(&String::from_utf8_lossy(&record.bytes)),
                hex: spaced_hex(&record.bytes),
            })
            .collect();
        Self {
            last_event_id,
            guest: GuestRow::new(snapshot),
            notify_socket: detail.summary.notify_socket.to_string(),
            facts,
            timeline,
            messages,
            messages_hidden: records.len().saturating_sub(MESSAGES_SHOWN),
            messages_forgotten: forgotten,
            not_ready: not_ready(None),
            launch: Launch {
                guest: snapshot.name.clone(),
                notify_socket: detail.summary.notify_socket.to_string(),
                snippets: Vec::new(),
            },
        }
    }

    /// The readiness warning's text ([`not_ready`]).
    fn with_not_ready(self, not_ready: String) -> Self {
        Self { not_ready, ..self }
    }

    /// The launch snippets; what the guest is handed as `$NOTIFY_SOCKET` is theirs (a VM's is
    /// its vsock address).
    fn with_launch(self, launch: Launch) -> Self {
        Self {
            notify_socket: launch.notify_socket.clone(),
            launch,
            ..self
        }
    }
}

fn watchdog(snapshot: &Snapshot) -> String {
    match (
        snapshot.watchdog_usec.filter(|&usec| usec > 0),
        snapshot.watchdog_expired,
    ) {
        (None, false) => "—".to_owned(),
        (None, true) => "triggered".to_owned(),
        (Some(usec), expired) => {
            format!(
                "every {}{}",
                Seconds(usec),
                if expired { ", missed" } else { "" }
            )
        }
    }
}

/// `none`, or the total and its non-zero counters: `2 (oversize 1, embedded NUL 1)`.
fn describe_drops(drops: &Drops) -> String {
    let counters = [
        ("oversize", drops.oversize),
        ("embedded NUL", drops.embedded_nul),
        ("too many fds", drops.too_many_fds),
        ("rate limited", drops.rate_limited),
        ("targets over limit", drops.units_over_limit),
        ("incomplete", drops.incomplete),
        ("connection limit", drops.connection_limit),
        ("unprivileged port", drops.unprivileged),
    ];
    let nonzero: Vec<String> = counters
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(what, count)| format!("{what} {count}"))
        .collect();
    if nonzero.is_empty() {
        "none".to_owned()
    } else {
        format!("{} ({})", drops.total(), nonzero.join(", "))
    }
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_owned()
}

fn describe_sender(sender: Sender) -> String {
    match sender {
        Sender::Unix {
            credentials: Some(credentials),
        } => format!(
            "unix pid {} uid {} gid {}",
            credentials.pid, credentials.uid, credentials.gid
        ),
        Sender::Unix { credentials: None } => "unix, no credentials".to_owned(),
        Sender::Vsock {
            cid,
            port: Some(port),
        } => {
            // sd_notify(3): a port below 1024 needs root in the guest (systemd binds 1023 down).
            let who = match sender.privileged_port() {
                Some(true) => "root in guest",
                _ => "not root in guest",
            };
            format!("vsock from CID {cid} port {port} ({who})")
        }
        // Hybrid vsock: the VMM's bridge does not pass the port on.
        Sender::Vsock { cid, port: None } => format!("vsock from CID {cid}, port unknown"),
        Sender::Unknown => "unknown".to_owned(),
        other => format!("{other:?}"),
    }
}

/// A timeline entry as a short kind and a sentence.
fn describe_event(event: &Event) -> (&'static str, String) {
    match event {
        Event::BootStarted { number } => ("boot", format!("boot {number} started")),
        Event::PhaseChanged { from, to } => ("phase", format!("{from} → {to}")),
        Event::StatusChanged { status } => ("status", or_dash(status.as_deref())),
        Event::Hostname { hostname } => ("hostname", hostname.clone()),
        Event::MachineId { machine_id } => ("machine ID", machine_id.clone()),
        Event::UnitActive { unit } => ("active", unit.clone()),
        Event::UnitInactive { unit } => ("inactive", unit.clone()),
        Event::Shutdown {
            shutdown,
            exit_status,
        } => {
            let mut text = shutdown.verb.clone();
            if let Some(parameter) = &shutdown.reboot_parameter {
                let _ = write!(text, " ({parameter})");
            }
            if let Some(code) = exit_status {
                let _ = write!(text, ", exit status {code}");
            }
            ("shutdown", text)
        }
        Event::WatchdogMissed { deadline } => (
            "watchdog",
            format!("missed the deadline of {}", Utc(*deadline)),
        ),
        Event::ReadyTimedOut { deadline } => {
            ("timeout", format!("no READY=1 by {}", Utc(*deadline)))
        }
        Event::Errno { errno } => ("errno", errno.to_string()),
        other => ("event", format!("{other:?}")),
    }
}

/// `52 45 41 44 59`: one byte pair per byte, so long lines can wrap between bytes.
fn spaced_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(bytes.len() * 3);
    for (i, byte) in bytes.iter().enumerate() {
        if i > 0 {
            hex.push(' ');
        }
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}
