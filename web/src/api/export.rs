//! The event log export: "notifyhub event log v1" (specified in `wasm/README.md`), JSON Lines
//! of the accepted messages the store still holds, which the browser viewer
//! (`notifyhub-wasm`'s `LogReader`) replays into the same guest states.
//!
//! - `GET /guests/{name}/events?format=jsonl`: one guest's messages, oldest first.
//! - `GET /events/export`: every guest's, merged by receive time, then guest name.
//!
//! The header line comes first, then one line per message:
//!
//! ```text
//! {"format":"notifyhub-events","version":1}
//! {"guest":"web1","seq":1,"received_at":1796083200000000,"sender":{"transport":"unknown"},"fds":0,"hex":"52454144593d31"}
//! ```
//!
//! The body is streamed: the store hands out its records (shared, not copied) and each chunk of
//! about [`CHUNK_LEN`] bytes is written when the client is ready for it, so a long history is
//! never one big string.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use notifyhub_core::{Sender, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiError;
use crate::store::{Hub, Record};

/// The `format` of the header line.
pub const FORMAT: &str = "notifyhub-events";
/// The `version` of the header line.
pub const VERSION: u64 = 1;
/// The media type of JSON Lines (one JSON text per line).
pub const CONTENT_TYPE: &str = "application/x-ndjson";
/// About how many bytes go into one chunk of the response body (a chunk ends with a line).
pub const CHUNK_LEN: usize = 64 * 1024;

/// `?format=` of `GET /guests/{name}/events`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum EventsFormat {
    /// `{"events": [...], "forgotten": N}`, the default.
    #[default]
    Json,
    /// The event log: [`guest`].
    Jsonl,
}

/// The query of `GET /guests/{name}/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// `json` (the default) or `jsonl`, the event log.
    #[serde(default)]
    #[param(inline)]
    pub(super) format: EventsFormat,
}

/// `GET /guests/{name}/events?format=jsonl`: guest `name`'s event log.
pub(super) fn guest(hub: &Hub, name: &str) -> Result<Response, ApiError> {
    let history = hub
        .history(name)
        .ok_or_else(|| ApiError::unknown_guest(name))?;
    Ok(respond(EventLog::new(vec![(
        name.to_owned(),
        history.records,
    )])))
}

/// `GET /events/export`: every guest's event log, merged.
///
/// Each guest's messages are taken whole, one guest after another: a message that arrives
/// meanwhile may be in the export of a guest taken later and not of one taken earlier.
#[utoipa::path(
    get,
    path = "/events/export",
    tag = "events",
    responses((
        status = 200,
        description = "Every guest's kept messages as the event log v1 (JSON Lines: a header \
                       line, then a line per message, by receive time, then guest name)",
        content_type = "application/x-ndjson",
        body = String,
    ))
)]
pub(super) async fn all(State(hub): State<Hub>) -> Response {
    let guests = hub
        .guests()
        .guests
        .into_iter()
        .filter_map(|guest| {
            let name = guest.snapshot().name.clone();
            // A guest removed since the listing has nothing left to export.
            let history = hub.history(&name)?;
            Some((name, history.records))
        })
        .collect();
    respond(EventLog::new(guests))
}

fn respond(log: EventLog) -> Response {
    let body = Body::from_stream(stream::iter(log.map(Ok::<_, Infallible>)));
    (
        [
            (header::CONTENT_TYPE, CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The header line, with its `\n`.
pub fn header_line() -> String {
    #[derive(Serialize)]
    struct Header {
        format: &'static str,
        version: u64,
    }
    let mut line = serde_json::to_string(&Header {
        format: FORMAT,
        version: VERSION,
    })
    .expect("plain data serialises");
    line.push('\n');
    line
}

/// One message line, in the field order of the specification.
#[derive(Serialize)]
struct Line<'a> {
    guest: &'a str,
    seq: u64,
    received_at: Timestamp,
    sender: Sender,
    fds: usize,
    hex: String,
}

/// The event log as chunks of whole lines: the header, then the guests' records merged by
/// `(received_at, guest name)`.
///
/// The merge only ever compares the next record of each guest, so a guest's own records keep
/// their order (their `seq`) even where its receive times go backwards (the wall clock was set
/// back).
struct EventLog {
    /// Guest names, sorted: an index into this list orders guests by name.
    names: Vec<String>,
    records: Vec<Vec<Arc<Record>>>,
    /// The next record of each guest that has one left: (time, guest index, position).
    next: BinaryHeap<Reverse<(Timestamp, usize, usize)>>,
    header_sent: bool,
}

impl EventLog {
    fn new(mut guests: Vec<(String, Vec<Arc<Record>>)>) -> Self {
        guests.sort_by(|(a, _), (b, _)| a.cmp(b));
        let (names, records): (Vec<_>, Vec<_>) = guests.into_iter().unzip();
        let next = records
            .iter()
            .enumerate()
            .filter_map(|(guest, records)| Some(Reverse((records.first()?.received_at, guest, 0))))
            .collect();
        Self {
            names,
            records,
            next,
            header_sent: false,
        }
    }

    /// Writes the next record's line to `out`; false when there is none left.
    fn write_next(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(Reverse((_, guest, position))) = self.next.pop() else {
            return false;
        };
        let records = &self.records[guest];
        let record = &records[position];
        if let Some(following) = records.get(position + 1) {
            self.next
                .push(Reverse((following.received_at, guest, position + 1)));
        }
        let line = Line {
            guest: &self.names[guest],
            seq: record.seq,
            received_at: record.received_at,
            sender: record.sender,
            fds: record.fds,
            hex: hex::encode(&record.bytes),
        };
        serde_json::to_writer(&mut *out, &line).expect("plain data serialises");
        out.push(b'\n');
        true
    }
}

impl Iterator for EventLog {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let mut chunk = Vec::with_capacity(CHUNK_LEN + 512);
        if !self.header_sent {
            self.header_sent = true;
            chunk.extend_from_slice(header_line().as_bytes());
        }
        while chunk.len() < CHUNK_LEN && self.write_next(&mut chunk) {}
        (!chunk.is_empty()).then(|| Bytes::from(chunk))
    }
}

#[cfg(test)]
mod tests {
    use notifyhub_core::Credentials;

    use super::*;

    fn record(seq: u64, at: u64, bytes: &[u8]) -> Arc<Record> {
        Arc::new(Record {
            seq,
            received_at: Timestamp::from_micros(at),
            sender: Sender::Unknown,
            fds: 0,
            bytes: bytes.into(),
        })
    }

    fn text(log: EventLog) -> String {
        let bytes: Vec<u8> = log.flat_map(|chunk| chunk.to_vec()).collect();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn lines_follow_the_specification() {
        let mut with_fds = Arc::unwrap_or_clone(record(1, 1_796_083_200_000_000, b"READY=1"));
        with_fds.fds = 1;
        with_fds.sender = Sender::Unix {
            credentials: Some(Credentials {
                pid: 4242,
                uid: 0,
                gid: 0,
            }),
        };
        let vsock = Arc::new(Record {
            sender: Sender::Vsock { cid: 3, port: None },
            ..Arc::unwrap_or_clone(record(2, 1_796_083_200_000_001, b"X=1"))
        });
        let log = EventLog::new(vec![("web1".into(), vec![Arc::new(with_fds), vsock])]);
        assert_eq!(
            text(log),
            concat!(
                r#"{"format":"notifyhub-events","version":1}"#,
                "\n",
                r#"{"guest":"web1","seq":1,"received_at":1796083200000000,"sender":{"transport":"unix","credentials":{"pid":4242,"uid":0,"gid":0}},"fds":1,"hex":"52454144593d31"}"#,
                "\n",
                r#"{"guest":"web1","seq":2,"received_at":1796083200000001,"sender":{"transport":"vsock","cid":3,"port":null},"fds":0,"hex":"583d31"}"#,
                "\n",
            )
        );
    }

    #[test]
    fn an_empty_log_is_its_header() {
        assert_eq!(text(EventLog::new(Vec::new())), header_line());
        assert_eq!(
            text(EventLog::new(vec![("web1".into(), Vec::new())])),
            header_line()
        );
    }

    /// `(guest, seq)` of each message line.
    fn order(log: EventLog) -> Vec<(String, u64)> {
        text(log)
            .lines()
            .skip(1)
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                (
                    value["guest"].as_str().unwrap().to_owned(),
                    value["seq"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn guests_merge_by_time_then_name_and_keep_their_own_order() {
        let b = vec![record(1, 10, b"A=1"), record(2, 20, b"A=2")];
        let a = vec![
            record(1, 20, b"A=1"),
            // The clock went back: still after seq 1 of its guest.
            record(2, 5, b"A=2"),
            record(3, 30, b"A=3"),
        ];
        let log = EventLog::new(vec![("b".into(), b), ("a".into(), a)]);
        let pairs = |list: &[(&str, u64)]| -> Vec<(String, u64)> {
            list.iter().map(|(g, s)| ((*g).to_owned(), *s)).collect()
        };
        assert_eq!(
            order(log),
            pairs(&[("b", 1), ("a", 1), ("a", 2), ("b", 2), ("a", 3)])
        );
    }

    #[test]
    fn chunks_end_with_whole_lines() {
        let records = (1..=2000)
            .map(|seq| record(seq, seq, &[b'X'; 100]))
            .collect();
        let chunks: Vec<Bytes> = EventLog::new(vec![("big".into(), records)]).collect();
        assert!(chunks.len() > 2, "{} chunks", chunks.len());
        for chunk in &chunks {
            assert!(chunk.len() <= CHUNK_LEN + 1024);
            assert_eq!(chunk.last(), Some(&b'\n'));
        }
        let lines: usize = chunks
            .iter()
            .map(|chunk| chunk.iter().filter(|&&b| b == b'\n').count())
            .sum();
        assert_eq!(lines, 2001);
    }
}
