//! notifyhub's protocol core for the browser: parse sd_notify datagrams and replay whole logs
//! with the same code the hub runs ([`notifyhub_core`]).
//!
//! Two layers:
//! - a pure Rust layer, native-testable and free of wasm-bindgen types: [`parse_datagram`] and
//!   the streaming [`LogReader`], whose [`LogReader::finish`] gives a typed [`Replay`];
//! - a thin JavaScript layer over it, [`js`]: `parseDatagram(bytes)` and the class `LogReader`
//!   (`new LogReader(guest)`, `push(chunk)`, `finish()`), which return JSON strings.
//!
//! The log formats (captures of `../shared/vectors/`, the hub's "notifyhub event log v1" and
//! plain `KEY=VALUE` blocks) and the JSON shapes are described in this crate's `README.md`.
//!
//! ```
//! use notifyhub_core::Phase;
//! use notifyhub_wasm::LogReader;
//!
//! let mut reader = LogReader::new("web1");
//! // Chunks may split lines anywhere: here, a capture line is cut in the middle.
//! reader.push(br#"{"seq": 1, "t_ms": 0.0, "len": 21, "fds": 0, "hex": "5245414459"#);
//! reader.push(b"3d310a5354415455533d52656164792e\"}\n");
//! let replay = reader.finish();
//! assert!(replay.errors.is_empty());
//! assert_eq!(replay.guests[0].snapshot.phase, Phase::Ready);
//! assert_eq!(replay.guests[0].snapshot.status.as_deref(), Some("Ready."));
//! ```
#![warn(missing_docs)]

mod datagram;
pub mod js;
mod json;
mod reader;

pub use datagram::parse_datagram;
pub use reader::{
    EVENT_LOG_FORMAT, EVENT_LOG_VERSION, FormatCounts, GuestReplay, LineError, LogReader,
    MAX_ERRORS, MAX_LINE_LEN, MAX_MESSAGES, MAX_MILESTONES, MessageRecord, Replay,
};
