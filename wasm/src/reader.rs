//! Folding a whole log, fed in chunks, into per-guest snapshots, timelines and messages.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::mem;

use notifyhub_core::{
    Credentials, DropReason, Guest, MAX_DATAGRAM_LEN, Milestone, ParseError, Sender, Snapshot,
    Timestamp, parse, validate_guest_name,
};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::datagram::to_json;

/// The `format` of a notifyhub event log's header line.
pub const EVENT_LOG_FORMAT: &str = "notifyhub-events";

/// The event log version this reader understands.
pub const EVENT_LOG_VERSION: u64 = 1;

/// The longest line read, in bytes, without its line terminator. A capture or event line of
/// the largest datagram (4096 bytes) is about 33 KiB; a longer line is reported and skipped, so
/// a file without newlines never makes the reader buffer all of it.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// The most messages kept per guest in [`GuestReplay::messages`], the latest ones.
pub const MAX_MESSAGES: usize = 2000;

/// The most milestones kept per guest in [`GuestReplay::timeline`], the latest ones.
pub const MAX_MILESTONES: usize = 10_000;

/// The most bad lines listed in [`Replay::errors`], the first ones.
pub const MAX_ERRORS: usize = 100;

/// A streaming reader of a notifyhub log: feed it the bytes in chunks of any size with
/// [`LogReader::push`], then call [`LogReader::finish`] once.
///
/// Each line's format is detected on its own, so formats may be mixed in one file:
/// - a JSON object with `"format"`: the header of an event log
///   (`{"format":"notifyhub-events","version":1}`);
/// - a JSON object with `"guest"` or `"received_at"`: one message of an event log, for the guest
///   it names;
/// - another JSON object with `"hex"`: one datagram of a capture (`../shared/vectors/`);
/// - otherwise plain text: `KEY=VALUE` lines, one message per block of lines, blocks separated
///   by a blank line; lines starting with `#` are comments.
///
/// Captures and plain text belong to the guest named in [`LogReader::new`]. A bad line is
/// reported with its 1-based number in [`Replay::errors`] and skipped; it never stops the rest.
/// Each message is fed to that guest's [`Guest`] state machine at its time, after firing the
/// deadlines ([`Guest::poll_timeout`]) that passed before it.
#[derive(Debug)]
pub struct LogReader {
    default_guest: String,
    /// The bytes of the line being read, without its `\n`.
    pending: Vec<u8>,
    /// Whether the line being read went over [`MAX_LINE_LEN`]; its bytes are not kept.
    overlong: bool,
    lines: u64,
    block: Option<TextBlock>,
    guests: Vec<GuestLog>,
    by_name: BTreeMap<String, usize>,
    errors: Vec<LineError>,
    errors_total: u64,
    formats: FormatCounts,
}

/// A plain text message being read: its `KEY=VALUE` lines so far.
#[derive(Debug)]
struct TextBlock {
    first_line: u64,
    /// The message's first bytes: at most one more than a datagram may have.
    bytes: Vec<u8>,
    /// The message's whole length.
    len: usize,
}

/// The replay of one guest while the log is read.
#[derive(Debug)]
struct GuestLog {
    guest: Guest,
    /// The time of the last message, for messages that carry none.
    last_at: Timestamp,
    messages: VecDeque<MessageRecord>,
    messages_total: u64,
}

/// One message as the reader received it, before it was fed to its guest.
struct Incoming {
    line: u64,
    seq: Option<u64>,
    at: Option<Timestamp>,
    sender: Sender,
    fds: u32,
    /// The message, or only its first bytes when it is longer than any datagram may be.
    bytes: Vec<u8>,
    /// The message's whole length.
    len: usize,
}

impl Incoming {
    /// A message of `bytes`, whole.
    fn new(
        line: u64,
        seq: Option<u64>,
        at: Option<Timestamp>,
        sender: Sender,
        fds: u32,
        bytes: Vec<u8>,
    ) -> Self {
        let len = bytes.len();
        Self {
            line,
            seq,
            at,
            sender,
            fds,
            bytes,
            len,
        }
    }
}

/// The result of reading a whole log ([`LogReader::finish`]). [`Replay::to_json`] gives
/// `{"guests": [...], "errors": [...], "errors_total": N, "lines": N, "formats": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Replay {
    /// One entry per guest, in the order of their first message.
    pub guests: Vec<GuestReplay>,
    /// The first [`MAX_ERRORS`] bad lines.
    pub errors: Vec<LineError>,
    /// Bad lines in all, listed or not.
    pub errors_total: u64,
    /// Lines read, blank ones included.
    pub lines: u64,
    /// Messages read in each format.
    pub formats: FormatCounts,
}

impl Replay {
    /// The replay as compact JSON: the shape documented in the crate's README.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

/// How many messages came in each format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FormatCounts {
    /// Capture lines (`../shared/vectors/*.jsonl`).
    pub capture: u64,
    /// Event log lines ("notifyhub event log v1").
    pub events: u64,
    /// Plain text `KEY=VALUE` blocks.
    pub text: u64,
}

/// The replay of one guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GuestReplay {
    /// The guest's state after its last message.
    pub snapshot: Snapshot,
    /// Its last [`MAX_MILESTONES`] milestones, oldest first ([`Guest::timeline`]).
    pub timeline: Vec<Milestone>,
    /// Milestones in all, listed or not.
    pub timeline_total: u64,
    /// Its last [`MAX_MESSAGES`] messages, oldest first, rejected ones included.
    pub messages: Vec<MessageRecord>,
    /// Messages in all, listed or not.
    pub messages_total: u64,
}

/// One message of a guest as it was read.
///
/// Serialised as `{"line", "seq", "at", "sender", "fds", "len", "hex", "text"}` plus either
/// `"fields"` (the serialised [`notifyhub_core::Message`]) or, when the datagram was rejected,
/// `"error"`. `hex` and `text` hold at most the first [`MAX_DATAGRAM_LEN`] bytes; `len` is the
/// whole length.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageRecord {
    /// The 1-based line of the log where the message is (its first line for plain text).
    pub line: u64,
    /// Its sequence number: the log's `seq`, or else its 1-based position in the guest's
    /// messages.
    pub seq: u64,
    /// When it was received: µs since the Unix epoch for event logs, since the first datagram
    /// for captures; plain text has no times and repeats the previous message's (0 at first).
    pub at: Timestamp,
    /// Who sent it, when the log says.
    pub sender: Sender,
    /// File descriptors that came with it.
    pub fds: u32,
    /// Its length in bytes.
    pub len: usize,
    /// Its first [`MAX_DATAGRAM_LEN`] bytes.
    pub bytes: Vec<u8>,
    /// Why the guest rejected it, if it did (counted in the snapshot's `drops`).
    pub rejected: Option<ParseError>,
}

impl Serialize for MessageRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(9))?;
        map.serialize_entry("line", &self.line)?;
        map.serialize_entry("seq", &self.seq)?;
        map.serialize_entry("at", &self.at)?;
        map.serialize_entry("sender", &self.sender)?;
        map.serialize_entry("fds", &self.fds)?;
        map.serialize_entry("len", &self.len)?;
        map.serialize_entry("hex", &hex::encode(&self.bytes))?;
        map.serialize_entry("text", &String::from_utf8_lossy(&self.bytes))?;
        // Parsing is pure: parsing the kept bytes again gives what the guest was fed.
        let parsed = match self.rejected {
            Some(error) => Err(error),
            None => parse(&self.bytes),
        };
        match parsed {
            Ok(fields) => map.serialize_entry("fields", &fields)?,
            Err(error) => map.serialize_entry("error", &error.to_string())?,
        }
        map.end()
    }
}

/// A line that could not be read; it was skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LineError {
    /// The 1-based line number.
    pub line: u64,
    /// What is wrong with it.
    pub message: String,
}

/// Every field any JSON line format uses; which ones are present tells the format.
#[derive(Deserialize)]
struct JsonLine<'a> {
    #[serde(borrow)]
    format: Option<Cow<'a, str>>,
    version: Option<u64>,
    #[serde(borrow)]
    guest: Option<Cow<'a, str>>,
    seq: Option<u64>,
    received_at: Option<u64>,
    t_ms: Option<f64>,
    pid: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    sender: Option<Sender>,
    len: Option<usize>,
    fds: Option<u32>,
    #[serde(borrow)]
    hex: Option<Cow<'a, str>>,
}

impl LogReader {
    /// A reader whose captures and plain text messages belong to the guest `guest` (a file
    /// name, say). Event logs name their guests themselves.
    pub fn new(guest: impl Into<String>) -> Self {
        Self {
            default_guest: guest.into(),
            pending: Vec::new(),
            overlong: false,
            lines: 0,
            block: None,
            guests: Vec::new(),
            by_name: BTreeMap::new(),
            errors: Vec::new(),
            errors_total: 0,
            formats: FormatCounts::default(),
        }
    }

    /// Reads the next `chunk` of the log. Chunks may split lines, and UTF-8 characters,
    /// anywhere; only complete lines are processed, the rest waits for the next chunk.
    pub fn push(&mut self, mut chunk: &[u8]) {
        while let Some(newline) = chunk.iter().position(|&b| b == b'\n') {
            self.append(&chunk[..newline]);
            self.end_line();
            chunk = &chunk[newline + 1..];
        }
        self.append(chunk);
    }

    /// Reads the last line (which needs no `\n`) and returns the replay of the whole log.
    pub fn finish(mut self) -> Replay {
        if !self.pending.is_empty() || self.overlong {
            self.end_line();
        }
        self.end_block();
        Replay {
            guests: self.guests.into_iter().map(GuestLog::finish).collect(),
            errors: self.errors,
            errors_total: self.errors_total,
            lines: self.lines,
            formats: self.formats,
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.overlong {
            return;
        }
        if self.pending.len() + bytes.len() > MAX_LINE_LEN {
            self.overlong = true;
            self.pending = Vec::new();
        } else {
            self.pending.extend_from_slice(bytes);
        }
    }

    fn end_line(&mut self) {
        self.lines += 1;
        let line_no = self.lines;
        if mem::take(&mut self.overlong) {
            self.error(
                line_no,
                format!("line is longer than {MAX_LINE_LEN} bytes; skipped"),
            );
            return;
        }
        // Take the buffer to borrow it next to `self`, then give it back to reuse its capacity.
        let mut buffer = mem::take(&mut self.pending);
        let mut line = buffer.as_slice();
        if line_no == 1 {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        line = line.strip_suffix(b"\r").unwrap_or(line);
        self.line(line_no, line);
        buffer.clear();
        self.pending = buffer;
    }

    fn line(&mut self, line_no: u64, line: &[u8]) {
        let content = line.trim_ascii();
        if content.is_empty() {
            self.end_block();
        } else if content.starts_with(b"{") {
            self.end_block();
            if let Err(message) = self.json_line(line_no, content) {
                self.error(line_no, message);
            }
        } else if content.starts_with(b"#") {
            // A comment, inside a block or not.
        } else if !line.contains(&b'=') {
            self.error(
                line_no,
                "expected a JSON object, a KEY=VALUE line or a blank line".to_string(),
            );
        } else {
            let block = self.block.get_or_insert_with(|| TextBlock {
                first_line: line_no,
                bytes: Vec::new(),
                len: 0,
            });
            // However long the block grows, only what shows that it is too large is kept.
            let separator: &[u8] = if block.len == 0 { b"" } else { b"\n" };
            for part in [separator, line] {
                let room = (MAX_DATAGRAM_LEN + 1).saturating_sub(block.bytes.len());
                block.bytes.extend_from_slice(&part[..part.len().min(room)]);
                block.len += part.len();
            }
        }
    }

    fn end_block(&mut self) {
        let Some(block) = self.block.take() else {
            return;
        };
        self.formats.text += 1;
        self.deliver(
            None,
            Incoming {
                line: block.first_line,
                seq: None,
                at: None,
                sender: Sender::Unknown,
                fds: 0,
                bytes: block.bytes,
                len: block.len,
            },
        );
    }

    fn json_line(&mut self, line_no: u64, text: &[u8]) -> Result<(), String> {
        let record: JsonLine<'_> = serde_json::from_slice(text).map_err(json_error)?;
        if let Some(format) = &record.format {
            if format != EVENT_LOG_FORMAT {
                return Err(format!(
                    "unknown log format {format:?}, expected {EVENT_LOG_FORMAT:?}"
                ));
            }
            return match record.version {
                Some(EVENT_LOG_VERSION) => Ok(()),
                Some(version) => Err(format!(
                    "{EVENT_LOG_FORMAT} version {version} is not supported, only version {EVENT_LOG_VERSION}"
                )),
                None => Err("event log header without \"version\"".to_string()),
            };
        }
        if record.guest.is_some() || record.received_at.is_some() {
            let guest = record.guest.as_deref().ok_or("event without \"guest\"")?;
            validate_guest_name(guest).map_err(|e| format!("event for a bad guest name: {e}"))?;
            let at = record.received_at.ok_or("event without \"received_at\"")?;
            let bytes = decode_hex(record.hex.as_deref(), record.len)?;
            self.formats.events += 1;
            self.deliver(
                Some(guest),
                Incoming::new(
                    line_no,
                    record.seq,
                    Some(Timestamp::from_micros(at)),
                    record.sender.unwrap_or(Sender::Unknown),
                    record.fds.unwrap_or(0),
                    bytes,
                ),
            );
            return Ok(());
        }
        if record.hex.is_none() {
            return Err(
                "a JSON line needs \"hex\" (a capture line or an event) or \"format\" (a header)"
                    .to_string(),
            );
        }
        let at = match record.t_ms {
            None => None,
            Some(ms) if ms.is_finite() && ms >= 0.0 => {
                // `as` saturates: a time past u64::MAX µs becomes the largest timestamp.
                Some(Timestamp::from_micros((ms * 1000.0).round() as u64))
            }
            Some(_) => return Err("\"t_ms\" must be a number of ms, not negative".to_string()),
        };
        let sender = match (record.pid, record.uid, record.gid) {
            (Some(pid), Some(uid), Some(gid)) => Sender::Unix {
                credentials: Some(Credentials { pid, uid, gid }),
            },
            _ => Sender::Unknown,
        };
        let bytes = decode_hex(record.hex.as_deref(), record.len)?;
        self.formats.capture += 1;
        self.deliver(
            None,
            Incoming::new(
                line_no,
                record.seq,
                at,
                sender,
                record.fds.unwrap_or(0),
                bytes,
            ),
        );
        Ok(())
    }

    /// Feeds `incoming` to the guest `guest` (`None`: the reader's own), registering the guest
    /// at its first message.
    fn deliver(&mut self, guest: Option<&str>, incoming: Incoming) {
        let name = guest.unwrap_or(&self.default_guest);
        let index = match self.by_name.get(name) {
            Some(&index) => index,
            None => {
                let registered = incoming.at.unwrap_or(Timestamp::ZERO);
                self.guests.push(GuestLog::new(name, registered));
                self.by_name.insert(name.to_string(), self.guests.len() - 1);
                self.guests.len() - 1
            }
        };
        self.guests[index].receive(incoming);
    }

    fn error(&mut self, line: u64, message: String) {
        self.errors_total += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(LineError { line, message });
        }
    }
}

impl GuestLog {
    fn new(name: &str, registered: Timestamp) -> Self {
        Self {
            guest: {
                let mut guest = Guest::new(name, registered);
                guest.set_timeline_capacity(MAX_MILESTONES);
                guest
            },
            last_at: registered,
            messages: VecDeque::new(),
            messages_total: 0,
        }
    }

    fn receive(&mut self, incoming: Incoming) {
        let at = incoming.at.unwrap_or(self.last_at);
        self.last_at = at;
        // The deadlines that passed before this message fire first, as they would have live.
        // Each fires once; the loop also stops if one did not, rather than spin.
        let mut fired = None;
        while let Some(deadline) = self.guest.poll_timeout().filter(|&t| t < at) {
            if fired == Some(deadline) {
                break;
            }
            fired = Some(deadline);
            self.guest.handle_timeout(deadline);
            self.drain();
        }
        let rejected = if incoming.len > incoming.bytes.len() {
            // Only the start was kept; the whole would be rejected as too large, so it is
            // counted the way `Guest::handle_datagram` counts it.
            let error = ParseError::TooLarge { len: incoming.len };
            self.guest.record_drop(DropReason::from(error));
            Some(error)
        } else {
            self.guest
                .handle_datagram(at, incoming.sender, &incoming.bytes)
                .err()
        };
        self.drain();

        self.messages_total += 1;
        if self.messages.len() == MAX_MESSAGES {
            self.messages.pop_front();
        }
        let len = incoming.len;
        let mut bytes = incoming.bytes;
        bytes.truncate(MAX_DATAGRAM_LEN);
        self.messages.push_back(MessageRecord {
            line: incoming.line,
            seq: incoming.seq.unwrap_or(self.messages_total),
            at,
            sender: incoming.sender,
            fds: incoming.fds,
            len,
            bytes,
            rejected,
        });
    }

    /// Drops the guest's events: the timeline is the guest's own ([`Guest::timeline`]).
    fn drain(&mut self) {
        while self.guest.poll_event().is_some() {}
    }

    fn finish(self) -> GuestReplay {
        GuestReplay {
            snapshot: self.guest.snapshot(),
            timeline: self.guest.timeline().cloned().collect(),
            timeline_total: self.guest.milestones_recorded(),
            messages: self.messages.into(),
            messages_total: self.messages_total,
        }
    }
}

/// The bytes of a `"hex"` field, checked against `"len"` when the line has one.
fn decode_hex(hex: Option<&str>, len: Option<usize>) -> Result<Vec<u8>, String> {
    let hex = hex.ok_or("no \"hex\" field")?;
    let bytes = hex::decode(hex).map_err(|e| format!("bad \"hex\": {e}"))?;
    match len {
        Some(len) if len != bytes.len() => Err(format!(
            "\"len\" is {len} but \"hex\" holds {} bytes",
            bytes.len()
        )),
        _ => Ok(bytes),
    }
}

/// A serde_json error without its "at line 1" position, which means nothing for one line.
fn json_error(error: serde_json::Error) -> String {
    let message = error.to_string();
    let message = message
        .rfind(" at line ")
        .map_or(message.as_str(), |at| &message[..at]);
    format!("invalid JSON at column {}: {message}", error.column())
}
