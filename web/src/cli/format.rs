//! Turning the hub's JSON into lines for people: escaped guest text, times, phase lines.
//!
//! Everything here reads `serde_json::Value`s leniently: a field this client does not know, or
//! one a newer hub left out, prints as `-` rather than failing.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub(crate) use notifyhub_web::text::{escape_bytes, escape_line};

/// `text` cut to at most `max` characters, ending in `…` when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `text` in double quotes, escaped for one line.
pub(crate) fn quote(text: &str) -> String {
    format!("\"{}\"", escape_line(text).replace('"', "\\\""))
}

/// Now, in µs since the Unix epoch, the unit of the hub's times.
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}

/// A time of the hub (µs since the Unix epoch) in UTC, RFC 3339 with milliseconds:
/// `2026-01-02T03:04:05.678Z`.
pub(crate) fn utc(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let millis = (micros % 1_000_000) / 1000;
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// How long before `now` the time `then` was, both in µs: `now`, `12s ago`, `5m ago`, `3h ago`,
/// `2d ago`. A time after `now` (clocks differ) is `now`.
pub(crate) fn ago(now: u64, then: u64) -> String {
    let secs = now.saturating_sub(then) / 1_000_000;
    match secs {
        0 => "now".to_owned(),
        1..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// A time of the hub as `2026-01-02T03:04:05.678Z (5m ago)`, or `-` for none.
pub(crate) fn time_and_ago(value: &Value, now: u64) -> String {
    value.as_u64().map_or_else(
        || "-".to_owned(),
        |at| format!("{} ({})", utc(at), ago(now, at)),
    )
}

/// A string field of `object`, if it is a string.
pub(crate) fn str_field<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

/// A string field escaped for one line, or `-`.
pub(crate) fn text_or_dash(object: &Value, key: &str) -> String {
    str_field(object, key).map_or_else(|| "-".to_owned(), escape_line)
}

/// A guest's state in one sentence, from its JSON (`GET /api/v1/guests/{name}`):
/// `web1 is ready (boot 1, status "Ready.")`, `web1 is off (boot 2, reboot "probe-arg", exit
/// status 0)`, `web1 is registered (no message yet)`.
pub(crate) fn phase_line(guest: &Value) -> String {
    let name = text_or_dash(guest, "name");
    let phase = text_or_dash(guest, "phase");
    let mut details = Vec::new();
    match guest.get("boot_count").and_then(Value::as_u64) {
        Some(0) => details.push("no message yet".to_owned()),
        Some(boot) => details.push(format!("boot {boot}")),
        None => {}
    }
    if let Some(shutdown) = guest.get("shutdown").filter(|s| !s.is_null()) {
        details.push(shutdown_text(shutdown));
    }
    if let Some(code) = guest.get("exit_status").and_then(Value::as_u64) {
        details.push(format!("exit status {code}"));
    }
    if let Some(status) = str_field(guest, "status") {
        details.push(format!("status {}", quote(status)));
    }
    if details.is_empty() {
        format!("{name} is {phase}")
    } else {
        format!("{name} is {phase} ({})", details.join(", "))
    }
}

/// A `shutdown` object: `reboot`, or `reboot "probe-arg"` with a reboot parameter.
pub(crate) fn shutdown_text(shutdown: &Value) -> String {
    let verb = text_or_dash(shutdown, "verb");
    match str_field(shutdown, "reboot_parameter") {
        Some(parameter) => format!("{verb} {}", quote(parameter)),
        None => verb,
    }
}

/// A `sender` object: `unix pid 42 uid 0 gid 0`, `unix (no credentials)`, `vsock cid 3 port
/// 1023`, `vsock cid 3`, `unknown`.
pub(crate) fn sender_text(sender: &Value) -> String {
    match str_field(sender, "transport") {
        Some("unix") => match sender.get("credentials").filter(|c| !c.is_null()) {
            Some(credentials) => format!(
                "unix pid {} uid {} gid {}",
                number(credentials, "pid"),
                number(credentials, "uid"),
                number(credentials, "gid")
            ),
            None => "unix (no credentials)".to_owned(),
        },
        Some("vsock") => match sender.get("port").and_then(Value::as_u64) {
            Some(port) => format!("vsock cid {} port {port}", number(sender, "cid")),
            None => format!("vsock cid {}", number(sender, "cid")),
        },
        Some(other) => escape_line(other),
        None => "unknown".to_owned(),
    }
}

fn number(object: &Value, key: &str) -> String {
    object
        .get(key)
        .and_then(Value::as_u64)
        .map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// Lays out `rows` as left-aligned columns separated by two spaces, the last column unpadded.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|row| row.get(i))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("exactly10!", 10), "exactly10!");
        assert_eq!(truncate("ééééééééééé", 10), "ééééééééé…");
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc(1_767_323_045_678_999), "2026-01-02T03:04:05.678Z");
        assert_eq!(utc(4_102_444_799_000_000), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn relative_times() {
        let s = 1_000_000;
        assert_eq!(ago(100 * s, 100 * s), "now");
        assert_eq!(ago(100 * s, 200 * s), "now");
        assert_eq!(ago(100 * s, 88 * s), "12s ago");
        assert_eq!(ago(1000 * s, 700 * s), "5m ago");
        assert_eq!(ago(20_000 * s, 9_000 * s), "3h ago");
        assert_eq!(ago(200_000 * s, 0), "2d ago");
    }

    #[test]
    fn phase_lines() {
        let ready = json!({"name": "web1", "phase": "ready", "boot_count": 1, "status": "Ready.",
            "shutdown": null, "exit_status": null});
        assert_eq!(
            phase_line(&ready),
            r#"web1 is ready (boot 1, status "Ready.")"#
        );
        let off = json!({"name": "web1", "phase": "off", "boot_count": 2, "status": null,
            "shutdown": {"verb": "reboot", "reboot_parameter": "probe-arg"}, "exit_status": 0});
        assert_eq!(
            phase_line(&off),
            r#"web1 is off (boot 2, reboot "probe-arg", exit status 0)"#
        );
        let new = json!({"name": "web1", "phase": "registered", "boot_count": 0});
        assert_eq!(phase_line(&new), "web1 is registered (no message yet)");
        let hostile = json!({"name": "web1", "phase": "ready", "status": "\u{1b}]0;pwned\u{7}\"x"});
        assert_eq!(
            phase_line(&hostile),
            r#"web1 is ready (status "\x1b]0;pwned\x07\"x")"#
        );
    }

    #[test]
    fn senders() {
        let unix = json!({"transport": "unix", "credentials": {"pid": 42, "uid": 0, "gid": 5}});
        assert_eq!(sender_text(&unix), "unix pid 42 uid 0 gid 5");
        let anonymous = json!({"transport": "unix", "credentials": null});
        assert_eq!(sender_text(&anonymous), "unix (no credentials)");
        let vsock = json!({"transport": "vsock", "cid": 3, "port": 1023});
        assert_eq!(sender_text(&vsock), "vsock cid 3 port 1023");
        let hybrid = json!({"transport": "vsock", "cid": 3, "port": null});
        assert_eq!(sender_text(&hybrid), "vsock cid 3");
        assert_eq!(sender_text(&json!({"transport": "unknown"})), "unknown");
    }

    #[test]
    fn tables_pad_all_but_the_last_column() {
        let rows = vec![
            vec!["NAME".into(), "PHASE".into(), "STATUS".into()],
            vec!["web1".into(), "ready".into(), "Ready.".into()],
            vec!["a-longer-name".into(), "off".into(), String::new()],
        ];
        assert_eq!(
            table(&rows),
            "NAME           PHASE  STATUS\nweb1           ready  Ready.\na-longer-name  off\n"
        );
    }
}
