//! One datagram in, its meaning out as JSON.

use notifyhub_core::{DropReason, Message, lines, parse};
use serde::Serialize;

/// What [`parse_datagram`] reports, serialised as its JSON: `lines` and `fields` for a parsed
/// datagram, `error` and `reason` for a rejected one.
#[derive(Serialize)]
struct Parsed<'a> {
    ok: bool,
    len: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    lines: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<Message<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<DropReason>,
}

/// Parses one sd_notify datagram with [`notifyhub_core::parse`] and returns the result as JSON.
///
/// On success: `{"ok": true, "len": <bytes>, "lines": [...], "fields": {...}}`, where `lines`
/// are the datagram's non-empty lines as text (invalid UTF-8 replaced by U+FFFD) and `fields` is
/// the serialised [`Message`]: the keys that were set, plus `ignored`.
/// When the datagram is rejected: `{"ok": false, "len": <bytes>, "error": "<message>",
/// "reason": "oversize" | "embedded_nul"}`.
///
/// ```
/// let json = notifyhub_wasm::parse_datagram(b"READY=1\nSTATUS=Ready.");
/// assert_eq!(
///     json,
///     r#"{"ok":true,"len":21,"lines":["READY=1","STATUS=Ready."],"fields":{"ready":true,"status":"Ready."}}"#
/// );
/// ```
pub fn parse_datagram(datagram: &[u8]) -> String {
    let len = datagram.len();
    let parsed = match parse(datagram) {
        Ok(message) => Parsed {
            ok: true,
            len,
            lines: Some(
                lines(message.payload())
                    .map(|line| String::from_utf8_lossy(line).into_owned())
                    .collect(),
            ),
            fields: Some(message),
            error: None,
            reason: None,
        },
        Err(error) => Parsed {
            ok: false,
            len,
            lines: None,
            fields: None,
            error: Some(error.to_string()),
            reason: Some(DropReason::from(error)),
        },
    };
    to_json(&parsed)
}

/// Serialises `value` as compact JSON.
///
/// Only used on types whose serialisation cannot fail: plain structs and sequences with string
/// keys and no non-finite floats.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("serialising plain data to JSON cannot fail")
}
