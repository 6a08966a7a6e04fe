//! `notifyhub status [NAME]`: every guest as a table, or one guest in detail.

use std::io::Write as _;

use clap::Args;
use reqwest::StatusCode;
use serde_json::Value;

use super::client::{Hub, HubArgs, REQUEST_TIMEOUT};
use super::format::{
    ago, escape_line, now_micros, quote, sender_text, shutdown_text, str_field, table,
    text_or_dash, time_and_ago, truncate,
};
use super::{CLIENT_EXITS, Result};

/// The widest status shown in the table; `status NAME` shows it whole.
const STATUS_WIDTH: usize = 48;

/// Show every guest as a table, or one guest in detail.
///
/// The table has one row per guest: NAME, PHASE, BOOTS, SEEN (when the last message came),
/// HOSTNAME and STATUS (cut to 48 characters). Text the guests sent is printed with control
/// characters escaped (\n, \x1b, ...).
#[derive(Debug, Args)]
#[command(after_long_help = super::exit_help(CLIENT_EXITS))]
pub(crate) struct StatusArgs {
    /// Show this guest only, in detail.
    name: Option<String>,
    /// Print the hub's JSON untouched (GET /api/v1/guests or /api/v1/guests/NAME).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(crate) hub: HubArgs,
}

pub(crate) async fn run(args: StatusArgs) -> Result {
    if let Some(name) = &args.name {
        super::check_guest_name(name)?;
    }
    let hub = Hub::new(&args.hub)?;
    let url = match &args.name {
        Some(name) => hub.api_url(&["guests", name]),
        None => hub.api_url(&["guests"]),
    };
    let answer = hub.get(url, REQUEST_TIMEOUT).await?;
    match answer.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND if args.name.is_some() => return Err(answer.no_guest()),
        _ => return Err(answer.unexpected()),
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", answer.body.trim_end())?;
        return Ok(());
    }
    let body = answer.json()?;
    let now = now_micros();
    if args.name.is_some() {
        stdout.write_all(detail(&body, now).as_bytes())?;
        return Ok(());
    }
    let guests = body
        .get("guests")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if guests.is_empty() {
        super::note(
            "the hub has no guests (add one with `notifyhub serve --guest NAME` or POST /api/v1/guests)",
        );
        return Ok(());
    }
    stdout.write_all(overview(guests, now).as_bytes())?;
    Ok(())
}

/// The table of `guests`.
fn overview(guests: &[Value], now: u64) -> String {
    let mut rows = vec![
        ["NAME", "PHASE", "BOOTS", "SEEN", "HOSTNAME", "STATUS"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for guest in guests {
        rows.push(vec![
            text_or_dash(guest, "name"),
            text_or_dash(guest, "phase"),
            guest
                .get("boot_count")
                .and_then(Value::as_u64)
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            guest
                .get("last_seen")
                .and_then(Value::as_u64)
                .map_or_else(|| "never".to_owned(), |at| ago(now, at)),
            text_or_dash(guest, "hostname"),
            str_field(guest, "status").map_or_else(String::new, |status| {
                escape_line(&truncate(status, STATUS_WIDTH))
            }),
        ]);
    }
    table(&rows)
}

/// One guest, a field per line.
fn detail(guest: &Value, now: u64) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("name", text_or_dash(guest, "name")),
        ("phase", text_or_dash(guest, "phase")),
    ];
    let mut optional = |label, value: Option<String>| {
        if let Some(value) = value {
            rows.push((label, value));
        }
    };
    optional("boots", number(guest, "boot_count"));
    optional("status", str_field(guest, "status").map(quote));
    optional("hostname", str_field(guest, "hostname").map(escape_line));
    optional(
        "machine id",
        str_field(guest, "machine_id").map(escape_line),
    );
    let units: Vec<String> = guest
        .get("active_units")
        .and_then(Value::as_array)
        .map(|units| {
            units
                .iter()
                .filter_map(Value::as_str)
                .map(escape_line)
                .collect()
        })
        .unwrap_or_default();
    optional("active units", (!units.is_empty()).then(|| units.join(" ")));
    optional(
        "shutdown",
        guest
            .get("shutdown")
            .filter(|s| !s.is_null())
            .map(shutdown_text),
    );
    optional("exit status", number(guest, "exit_status"));
    optional("main pid", number(guest, "main_pid"));
    optional("errno", number(guest, "errno"));
    optional("bus error", str_field(guest, "bus_error").map(escape_line));
    optional(
        "varlink error",
        str_field(guest, "varlink_error").map(escape_line),
    );
    if guest.get("failed_boot").and_then(Value::as_bool) == Some(true) {
        optional(
            "failed boot",
            Some("yes: emergency.target or rescue.target".to_owned()),
        );
    }
    optional("watchdog", watchdog(guest, now));
    if guest.get("ready_timed_out").and_then(Value::as_bool) == Some(true) {
        optional("readiness", Some("missed its READY=1 deadline".to_owned()));
    }
    let drops = guest
        .get("drops")
        .and_then(Value::as_object)
        .map_or(0, |drops| {
            drops.values().filter_map(Value::as_u64).sum::<u64>()
        });
    optional(
        "messages",
        number(guest, "messages").map(|n| format!("{n} ({drops} dropped)")),
    );
    optional(
        "registered",
        guest.get("registered_at").map(|at| time_and_ago(at, now)),
    );
    optional(
        "first seen",
        guest.get("first_seen").map(|at| time_and_ago(at, now)),
    );
    optional(
        "last seen",
        guest.get("last_seen").map(|at| time_and_ago(at, now)),
    );
    optional(
        "last sender",
        guest
            .get("last_sender")
            .filter(|s| !s.is_null())
            .map(sender_text),
    );
    optional(
        "notify socket",
        str_field(guest, "notify_socket").map(escape_line),
    );

    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (label, value) in rows {
        out.push_str(&format!("{:<width$} {value}\n", format!("{label}:")));
    }
    out
}

fn number(object: &Value, key: &str) -> Option<String> {
    object
        .get(key)
        .and_then(Value::as_u64)
        .map(|n| n.to_string())
}

/// `every 30 s, next ping due 2026-...Z`, `every 30 s, missed`, or nothing without a watchdog.
fn watchdog(guest: &Value, now: u64) -> Option<String> {
    let usec = guest
        .get("watchdog_usec")
        .and_then(Value::as_u64)
        .filter(|&usec| usec > 0)?;
    let every = format!("every {} s", usec as f64 / 1e6);
    if guest.get("watchdog_expired").and_then(Value::as_bool) == Some(true) {
        return Some(format!("{every}, missed"));
    }
    Some(
        match guest.get("watchdog_deadline").and_then(Value::as_u64) {
            Some(due) if due >= now => {
                format!("{every}, next ping due {}", super::format::utc(due))
            }
            Some(due) => format!("{every}, ping overdue since {}", super::format::utc(due)),
            None => format!("{every}, no ping yet"),
        },
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn overview_rows() {
        let now = 1_767_323_045 * S;
        let guests = [
            json!({"name": "web1", "phase": "ready", "boot_count": 2, "last_seen": now - 90 * S,
                "hostname": "web1.example", "status": "Ready."}),
            json!({"name": "db", "phase": "registered", "boot_count": 0, "last_seen": null,
                "hostname": null, "status": null}),
            json!({"name": "x", "phase": "booting", "boot_count": 1, "last_seen": now,
                "hostname": "evil\u{1b}[2J", "status": "a very long status text that goes on and on and on and on"}),
        ];
        assert_eq!(
            overview(&guests, now),
            "NAME  PHASE       BOOTS  SEEN    HOSTNAME      STATUS\n\
             web1  ready       2      1m ago  web1.example  Ready.\n\
             db    registered  0      never   -\n\
             x     booting     1      now     evil\\x1b[2J   a very long status text that goes on and on and…\n"
        );
    }

    #[test]
    fn detail_lines() {
        let now = 1_767_323_045 * S;
        let guest = json!({
            "name": "web1", "phase": "off", "status": null, "hostname": "probe-guest",
            "machine_id": "5e1f0b7a2c3d4e5f60718293a4b5c6d7", "active_units": [],
            "exit_status": 0, "shutdown": {"verb": "reboot", "reboot_parameter": "probe-arg"},
            "boot_count": 1, "failed_boot": false, "messages": 14,
            "drops": {"oversize": 1, "embedded_nul": 0}, "registered_at": now - 120 * S,
            "first_seen": now - 60 * S, "last_seen": now - 5 * S,
            "last_sender": {"transport": "unix", "credentials": {"pid": 1, "uid": 0, "gid": 0}},
            "watchdog_usec": null, "notify_socket": "/run/notifyhub/guests/web1/notify"
        });
        let text = detail(&guest, now);
        assert!(
            text.starts_with(
                "name:          web1\n\
                 phase:         off\n\
                 boots:         1\n\
                 hostname:      probe-guest\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\nshutdown:      reboot \"probe-arg\"\n"),
            "{text}"
        );
        assert!(text.contains("\nmessages:      14 (1 dropped)\n"), "{text}");
        assert!(
            text.contains("\nlast seen:     2026-01-02T03:04:00.000Z (5s ago)\n"),
            "{text}"
        );
        assert!(
            text.contains("\nlast sender:   unix pid 1 uid 0 gid 0\n"),
            "{text}"
        );
        assert!(
            text.ends_with("notify socket: /run/notifyhub/guests/web1/notify\n"),
            "{text}"
        );
        assert!(!text.contains("watchdog"), "{text}");
    }

    #[test]
    fn watchdog_lines() {
        let now = 100 * S;
        let guest = |deadline: Option<u64>, expired: bool| {
            json!({"watchdog_usec": 30 * S, "watchdog_deadline": deadline,
                "watchdog_expired": expired})
        };
        assert_eq!(
            watchdog(&guest(Some(110 * S), false), now).unwrap(),
            "every 30 s, next ping due 1970-01-01T00:01:50.000Z"
        );
        assert_eq!(
            watchdog(&guest(Some(90 * S), true), now).unwrap(),
            "every 30 s, missed"
        );
        assert_eq!(
            watchdog(&guest(None, false), now).unwrap(),
            "every 30 s, no ping yet"
        );
        assert_eq!(watchdog(&json!({"watchdog_usec": 0}), now), None);
    }
}
