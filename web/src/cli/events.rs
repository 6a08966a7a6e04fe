//! `notifyhub events NAME [--follow]`: a guest's kept messages, then its changes as they happen.

use std::io::Write as _;

use clap::Args;
use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::Value;

use super::client::{Hub, HubArgs, REQUEST_TIMEOUT};
use super::format::{
    escape_bytes, escape_line, now_micros, phase_line, quote, shutdown_text, str_field, table, utc,
};
use super::{Failure, Result, exit};

/// The exit statuses of `events`.
pub(crate) const EXITS: &[(u8, &str)] = &[
    (0, "success; with --follow, stopped by Ctrl-C"),
    (
        exit::NO_GUEST,
        "no guest of that name, or (--follow) it was removed",
    ),
    (
        exit::HUB,
        "the hub is unreachable, gave an unexpected answer, or (--follow) ended the stream",
    ),
    (exit::USAGE, "usage error"),
];

/// Show a guest's messages; with --follow, then its changes as they happen
///
/// The history is the messages the hub keeps, oldest first. Each line has the message's number (SEQ), when it came (UTC) and its bytes, with line breaks
/// shown as \n, other control characters as \xNN and a backslash as \\; [+N fds] when file
/// descriptors came with it. With --follow, the guest's changes (phase, status, units, boots,
/// ...) are printed as they happen, one line each, until Ctrl-C.
#[derive(Debug, Args)]
#[command(after_long_help = super::exit_help(EXITS))]
pub(crate) struct EventsArgs {
    /// The guest's name.
    name: String,
    /// Then print the guest's changes as they happen, until Ctrl-C.
    #[arg(short, long)]
    follow: bool,
    /// Print the hub's JSON: the history (GET /api/v1/guests/NAME/events) on one line, then
    /// with --follow one line per change, the data of each Server-Sent Event untouched.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(crate) hub: HubArgs,
}

pub(crate) async fn run(args: EventsArgs) -> Result {
    super::check_guest_name(&args.name)?;
    let hub = Hub::new(&args.hub)?;
    // Subscribed before the history is read, so no change falls between the two.
    let stream = if args.follow {
        let mut url = hub.api_url(&["events"]);
        url.query_pairs_mut().append_pair("guest", &args.name);
        Some(hub.open_stream(url).await?)
    } else {
        None
    };
    let answer = hub
        .get(
            hub.api_url(&["guests", &args.name, "events"]),
            REQUEST_TIMEOUT,
        )
        .await?;
    match answer.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Err(answer.no_guest()),
        _ => return Err(answer.unexpected()),
    }
    if args.json {
        writeln!(std::io::stdout().lock(), "{}", answer.body.trim_end())?;
    } else {
        let history = answer.json()?;
        match history_text(&history) {
            Some(text) => std::io::stdout().lock().write_all(text.as_bytes())?,
            None if args.follow => {}
            None => super::note(format_args!("no messages from {} yet", args.name)),
        }
    }
    match stream {
        Some(response) => follow(response, &args).await,
        None => Ok(()),
    }
}

/// The table of a `GET /guests/{name}/events` answer; `None` when it holds no message.
fn history_text(history: &Value) -> Option<String> {
    let events = history.get("events").and_then(Value::as_array)?;
    if events.is_empty() {
        return None;
    }
    let mut out = String::new();
    if let Some(forgotten) = history
        .get("forgotten")
        .and_then(Value::as_u64)
        .filter(|&n| n > 0)
    {
        out.push_str(&format!(
            "({forgotten} earlier messages are no longer kept)\n"
        ));
    }
    let mut rows = vec![vec![
        "SEQ".to_owned(),
        "TIME".to_owned(),
        "MESSAGE".to_owned(),
    ]];
    for event in events {
        let bytes = str_field(event, "hex")
            .and_then(|hex| hex::decode(hex).ok())
            .unwrap_or_else(|| str_field(event, "text").unwrap_or("").as_bytes().to_vec());
        let mut text = escape_bytes(&bytes);
        if let Some(fds) = event.get("fds").and_then(Value::as_u64).filter(|&n| n > 0) {
            text.push_str(&format!(" [+{fds} fd{}]", if fds == 1 { "" } else { "s" }));
        }
        rows.push(vec![
            event
                .get("seq")
                .and_then(Value::as_u64)
                .map_or_else(|| "-".to_owned(), |seq| seq.to_string()),
            event
                .get("received_at")
                .and_then(Value::as_u64)
                .map_or_else(|| "-".to_owned(), utc),
            text,
        ]);
    }
    out.push_str(&table(&rows));
    Some(out)
}

/// Prints the changes of `response`'s event stream until Ctrl-C, the guest's removal or the
/// stream's end.
async fn follow(response: reqwest::Response, args: &EventsArgs) -> Result {
    let mut events = response.bytes_stream().eventsource();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let event = tokio::select! {
            _ = &mut interrupted => return Ok(()),
            event = events.next() => event,
        };
        let event = match event {
            Some(Ok(event)) => event,
            Some(Err(error)) => {
                return Err(Failure::new(
                    exit::HUB,
                    format_args!("the hub's event stream broke: {error}"),
                ));
            }
            None => {
                return Err(Failure::new(
                    exit::HUB,
                    "the hub ended the event stream (is it shutting down?)",
                ));
            }
        };
        let mut stdout = std::io::stdout().lock();
        if args.json {
            writeln!(stdout, "{}", event.data)?;
        } else {
            let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            let text = match event.event.as_str() {
                "resync" => resync_text(&data),
                _ => change_text(&data),
            };
            writeln!(stdout, "{}  {text}", utc(now_micros()))?;
        }
        if event.event == "removed" {
            return Err(Failure::new(
                exit::NO_GUEST,
                format_args!("guest {} was removed", args.name),
            ));
        }
    }
}

/// One hub event (`{"id", "guest", "event": {"type", ...}, "snapshot"}`) in a few words.
fn change_text(data: &Value) -> String {
    let Some(event) = data.get("event") else {
        return format!("unreadable event: {}", escape_line(&data.to_string()));
    };
    let field = |key| str_field(event, key).map_or_else(|| "-".to_owned(), escape_line);
    let number = |key| {
        event
            .get(key)
            .and_then(Value::as_u64)
            .map_or_else(|| "?".to_owned(), |n| n.to_string())
    };
    match str_field(event, "type").unwrap_or("") {
        "registered" => "registered".to_owned(),
        "removed" => "removed".to_owned(),
        "boot_started" => format!("boot {} started", number("number")),
        "phase_changed" => format!("phase {} -> {}", field("from"), field("to")),
        "status_changed" => match str_field(event, "status") {
            Some(status) => format!("status {}", quote(status)),
            None => "status cleared".to_owned(),
        },
        "hostname" => format!("hostname {}", field("hostname")),
        "machine_id" => format!("machine id {}", field("machine_id")),
        "unit_active" => format!("unit {} active", field("unit")),
        "unit_inactive" => format!("unit {} inactive", field("unit")),
        "shutdown" => {
            let mut text = format!(
                "shutdown: {}",
                event
                    .get("shutdown")
                    .map_or_else(|| "-".to_owned(), shutdown_text)
            );
            if let Some(code) = event.get("exit_status").and_then(Value::as_u64) {
                text.push_str(&format!(", exit status {code}"));
            }
            text
        }
        "watchdog_missed" => format!(
            "watchdog missed (deadline {})",
            event
                .get("deadline")
                .and_then(Value::as_u64)
                .map_or_else(|| "?".to_owned(), utc)
        ),
        "ready_timed_out" => format!(
            "no READY=1 by its deadline {}",
            event
                .get("deadline")
                .and_then(Value::as_u64)
                .map_or_else(|| "?".to_owned(), utc)
        ),
        "errno" => format!("ERRNO={}", number("errno")),
        _ => escape_line(&event.to_string()),
    }
}

/// A `resync` event: the state the stream starts over from.
fn resync_text(data: &Value) -> String {
    let guests = data
        .get("guests")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    match guests {
        [guest] => format!("resync: {}", phase_line(guest)),
        _ => "resync: the guest is gone".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn history_table() {
        let history = json!({"forgotten": 0, "events": [
            {"seq": 1, "received_at": 0, "fds": 0, "hex": hex::encode("X_SYSTEMD_HOSTNAME=h")},
            {"seq": 2, "received_at": 1_000, "fds": 1, "hex": hex::encode("READY=1\nSTATUS=a\\b")},
            {"seq": 3, "received_at": 2_000, "fds": 2, "hex": hex::encode("X=\u{1b}[1m")},
        ]});
        assert_eq!(
            history_text(&history).unwrap(),
            "SEQ  TIME                      MESSAGE\n\
             1    1970-01-01T00:00:00.000Z  X_SYSTEMD_HOSTNAME=h\n\
             2    1970-01-01T00:00:00.001Z  READY=1\\nSTATUS=a\\\\b [+1 fd]\n\
             3    1970-01-01T00:00:00.002Z  X=\\x1b[1m [+2 fds]\n"
        );
        assert_eq!(history_text(&json!({"forgotten": 0, "events": []})), None);
        let forgetful =
            json!({"forgotten": 7, "events": [{"seq": 8, "received_at": 0, "hex": ""}]});
        assert!(
            history_text(&forgetful)
                .unwrap()
                .starts_with("(7 earlier messages are no longer kept)\nSEQ")
        );
    }

    #[test]
    fn changes() {
        let change = |event: Value| change_text(&json!({"id": 1, "guest": "g", "event": event}));
        assert_eq!(
            change(json!({"type": "phase_changed", "from": "booting", "to": "ready"})),
            "phase booting -> ready"
        );
        assert_eq!(
            change(json!({"type": "status_changed", "status": "Ready."})),
            "status \"Ready.\""
        );
        assert_eq!(
            change(json!({"type": "status_changed", "status": null})),
            "status cleared"
        );
        assert_eq!(
            change(json!({"type": "boot_started", "number": 2})),
            "boot 2 started"
        );
        assert_eq!(
            change(json!({"type": "unit_active", "unit": "multi-user.target"})),
            "unit multi-user.target active"
        );
        assert_eq!(
            change(json!({"type": "shutdown", "exit_status": 0,
                "shutdown": {"verb": "reboot", "reboot_parameter": "probe-arg"}})),
            "shutdown: reboot \"probe-arg\", exit status 0"
        );
        assert_eq!(change(json!({"type": "registered"})), "registered");
        assert_eq!(
            change(json!({"type": "hostname", "hostname": "a\u{1b}b"})),
            "hostname a\\x1bb"
        );
        assert_eq!(
            change(json!({"type": "new_kind", "x": 1})),
            r#"{"type":"new_kind","x":1}"#
        );
    }
}
