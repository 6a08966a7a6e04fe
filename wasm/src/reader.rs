//! Folding a whole log, fed in chunks, into per-guest snapshots, timelines and messages.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::mem;

use notifyhub_core::{
    Credentials, DropReason, Guest, MAX_DATAGRAM_LEN, Milestone, ParseError, Sender, Snapshot,
    Timestamp, parse, validate_guest_name,
};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::datagram::to_json;
use crate::json::{self, Cursor, Number};

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
    /// Indices into `guests`, sorted by guest name.
    by_name: Vec<usize>,
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
#[derive(Debug, Default)]
struct JsonLine<'a> {
    format: Option<Cow<'a, str>>,
    version: Option<u64>,
    guest: Option<Cow<'a, str>>,
    seq: Option<u64>,
    received_at: Option<u64>,
    t_ms: Option<Number<'a>>,
    pid: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    sender: Option<Sender>,
    len: Option<u64>,
    fds: Option<u32>,
    hex: Option<Cow<'a, str>>,
}

impl<'a> JsonLine<'a> {
    /// Reads one line. Unknown fields are skipped, `null` counts as absent, and a field given
    /// twice is an error.
    fn read(text: &'a [u8]) -> json::Result<Self> {
        let mut line = Self::default();
        let mut cursor = Cursor::new(text);
        cursor.object(&mut |cursor, key| match &*key {
            "format" => field(cursor, "format", &mut line.format, |c, _| c.string()),
            "version" => field(cursor, "version", &mut line.version, integer_u64),
            "guest" => field(cursor, "guest", &mut line.guest, |c, _| c.string()),
            "seq" => field(cursor, "seq", &mut line.seq, integer_u64),
            "received_at" => field(cursor, "received_at", &mut line.received_at, integer_u64),
            "t_ms" => field(cursor, "t_ms", &mut line.t_ms, |c, _| c.number()),
            "pid" => field(cursor, "pid", &mut line.pid, integer_u32),
            "uid" => field(cursor, "uid", &mut line.uid, integer_u32),
            "gid" => field(cursor, "gid", &mut line.gid, integer_u32),
            "sender" => field(cursor, "sender", &mut line.sender, |c, _| read_sender(c)),
            "len" => field(cursor, "len", &mut line.len, integer_u64),
            "fds" => field(cursor, "fds", &mut line.fds, integer_u32),
            "hex" => field(cursor, "hex", &mut line.hex, |c, _| c.string()),
            _ => cursor.skip(),
        })?;
        cursor.end()?;
        Ok(line)
    }
}

/// Reads the value of the field `name` into `slot` with `read`, unless it is `null`.
fn field<'a, T>(
    cursor: &mut Cursor<'a>,
    name: &str,
    slot: &mut Option<T>,
    read: fn(&mut Cursor<'a>, &str) -> json::Result<T>,
) -> json::Result<()> {
    if slot.is_some() {
        return Err(cursor.error(format!("duplicate field \"{name}\"")));
    }
    if !cursor.null()? {
        *slot = Some(read(cursor, name)?);
    }
    Ok(())
}

fn integer_u64(cursor: &mut Cursor<'_>, name: &str) -> json::Result<u64> {
    cursor.integer(name, u64::MAX)
}

fn integer_u32(cursor: &mut Cursor<'_>, name: &str) -> json::Result<u32> {
    // In range: `integer` checked it.
    cursor
        .integer(name, u32::MAX.into())
        .map(|value| value as u32)
}

/// Reads a [`Sender`] as `notifyhub_core` serialises it: `{"transport": "unix", "credentials":
/// {"pid", "uid", "gid"} | null}`, `{"transport": "vsock", "cid", "port": N | null}` or
/// `{"transport": "unknown"}`; absent optional fields are `null`, unknown ones are skipped.
fn read_sender(cursor: &mut Cursor<'_>) -> json::Result<Sender> {
    let (mut transport, mut credentials, mut cid, mut port) = (None, None, None, None);
    cursor.object(&mut |cursor, key| match &*key {
        "transport" => field(cursor, "transport", &mut transport, |c, _| c.string()),
        "credentials" => field(cursor, "credentials", &mut credentials, |c, _| {
            read_credentials(c)
        }),
        "cid" => field(cursor, "cid", &mut cid, integer_u32),
        "port" => field(cursor, "port", &mut port, integer_u32),
        _ => cursor.skip(),
    })?;
    match transport.as_deref() {
        Some("unix") => Ok(Sender::Unix { credentials }),
        Some("vsock") => Ok(Sender::Vsock {
            cid: cid.ok_or_else(|| cursor.error("vsock sender without \"cid\""))?,
            port,
        }),
        Some("unknown") => Ok(Sender::Unknown),
        Some(other) => Err(cursor.error(format!(
            "unknown sender transport \"{other}\", expected \"unix\", \"vsock\" or \"unknown\""
        ))),
        None => Err(cursor.error("sender without \"transport\"")),
    }
}

/// Reads `{"pid", "uid", "gid"}`, all required.
fn read_credentials(cursor: &mut Cursor<'_>) -> json::Result<Credentials> {
    let (mut pid, mut uid, mut gid) = (None, None, None);
    cursor.object(&mut |cursor, key| match &*key {
        "pid" => field(cursor, "pid", &mut pid, integer_u32),
        "uid" => field(cursor, "uid", &mut uid, integer_u32),
        "gid" => field(cursor, "gid", &mut gid, integer_u32),
        _ => cursor.skip(),
    })?;
    match (pid, uid, gid) {
        (Some(pid), Some(uid), Some(gid)) => Ok(Credentials { pid, uid, gid }),
        _ => Err(cursor.error("credentials need \"pid\", \"uid\" and \"gid\"")),
    }
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
            by_name: Vec::new(),
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
        let record = JsonLine::read(text).map_err(|error| error.to_string())?;
        if let Some(format) = &record.format {
            if format != EVENT_LOG_FORMAT {
                // Quoted as JSON rather than with `{:?}`, whose escaping is more code in the
                // wasm module; the two agree on printable text.
                return Err(format!(
                    "unknown log format {}, expected \"{EVENT_LOG_FORMAT}\"",
                    to_json(format)
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
            Some(ms) if ms.is_negative() => {
                return Err("\"t_ms\" must be a number of ms, not negative".to_string());
            }
            // Exact decimal arithmetic; a time past u64::MAX µs becomes the largest timestamp.
            Some(ms) => Some(Timestamp::from_micros(ms.scaled_magnitude(3))),
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
        // A sorted Vec, not a BTreeMap: guests are few, and it is less code in the wasm module.
        let guests = &self.guests;
        let index = match self
            .by_name
            .binary_search_by(|&index| guests[index].guest.name().cmp(name))
        {
            Ok(at) => self.by_name[at],
            Err(at) => {
                let registered = incoming.at.unwrap_or(Timestamp::ZERO);
                self.guests.push(GuestLog::new(name, registered));
                self.by_name.insert(at, self.guests.len() - 1);
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
fn decode_hex(hex: Option<&str>, len: Option<u64>) -> Result<Vec<u8>, String> {
    let hex = hex.ok_or("no \"hex\" field")?;
    let bytes = hex::decode(hex).map_err(|e| format!("bad \"hex\": {e}"))?;
    match len {
        Some(len) if len != bytes.len() as u64 => Err(format!(
            "\"len\" is {len} but \"hex\" holds {} bytes",
            bytes.len()
        )),
        _ => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    /// What serde_json's derived `Deserialize` read before `JsonLine::read` replaced it.
    #[derive(Debug, Deserialize)]
    struct SerdeLine<'a> {
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
        len: Option<u64>,
        fds: Option<u32>,
        #[serde(borrow)]
        hex: Option<Cow<'a, str>>,
    }

    /// Reads `line` both ways and requires the same fields.
    fn same_as_serde_json(line: &str) {
        let ours = JsonLine::read(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
        let theirs: SerdeLine<'_> = serde_json::from_str(line).unwrap();
        assert_eq!(ours.format, theirs.format, "{line}");
        assert_eq!(ours.version, theirs.version, "{line}");
        assert_eq!(ours.guest, theirs.guest, "{line}");
        assert_eq!(ours.seq, theirs.seq, "{line}");
        assert_eq!(ours.received_at, theirs.received_at, "{line}");
        assert_eq!(
            ours.t_ms.map(|ms| ms.scaled_magnitude(3)),
            theirs.t_ms.map(|ms| (ms * 1000.0).round() as u64),
            "{line}"
        );
        assert_eq!(
            (ours.pid, ours.uid, ours.gid),
            (theirs.pid, theirs.uid, theirs.gid)
        );
        assert_eq!(ours.sender, theirs.sender, "{line}");
        assert_eq!((ours.len, ours.fds), (theirs.len, theirs.fds), "{line}");
        assert_eq!(ours.hex, theirs.hex, "{line}");
    }

    #[test]
    fn json_lines_read_as_serde_json_read_them() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<_> = std::fs::read_dir(root.join("../../shared/vectors"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        assert!(files.len() >= 12, "{files:?}");
        files.push(root.join("tests/fixtures/events-v1.jsonl"));
        files.push(root.join("tests/fixtures/mixed.log"));
        let mut read = 0;
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines().map(str::trim).filter(|l| l.starts_with('{')) {
                same_as_serde_json(line);
                read += 1;
            }
        }
        assert!(read > 300, "{read}");
        for line in [
            r#"{"format":"notifyhub-events","version":1}"#,
            r#"{"guest":"web1","seq":1,"received_at":1796083200000000,"sender":{"transport":"vsock","cid":3,"port":1023},"fds":0,"hex":"52"}"#,
            r#"{"guest":"web1","received_at":1,"sender":{"transport":"vsock","cid":3,"port":null},"hex":""}"#,
            r#"{"guest":"web1","received_at":1,"sender":{"transport":"vsock","cid":4294967295},"hex":""}"#,
            r#"{"guest":"db1","received_at":2,"sender":{"transport":"unix","credentials":{"pid":4242,"uid":0,"gid":0}},"hex":""}"#,
            r#"{"guest":"db1","received_at":2,"sender":{"credentials":null,"transport":"unix"},"hex":""}"#,
            r#"{"guest":"db1","received_at":2,"sender":{"transport":"unix"},"hex":""}"#,
            r#"{"guest":"db1","received_at":2,"sender":{"transport":"unknown","extra":[1,{"a":null}]},"hex":""}"#,
            r#"{"guest":"db1","received_at":2,"sender":null,"fds":null,"seq":null,"hex":"5a"}"#,
            r#" { "seq" : 18446744073709551615 , "t_ms" : 1.5e3 , "hex" : "\u0035\u0061" , "text" : "\ud83d\ude00\n\"" } "#,
            r#"{"t_ms": 0.0005, "hex": "", "unknown": {"deep": [[[]]], "x": -1.25E-7, "y": true}}"#,
            r#"{"t_ms": 12345.678, "pid": 1, "uid": 2, "gid": 3, "len": 0, "hex": ""}"#,
            r#"{"guest":"w\u00e9b","hex":"","received_at":0}"#,
        ] {
            same_as_serde_json(line);
        }
    }

    #[test]
    fn bad_json_lines_are_errors_with_columns() {
        let error = |line: &str| JsonLine::read(line.as_bytes()).unwrap_err().to_string();
        for (line, expected) in [
            (
                r#"{"seq": 1, "seq": 2}"#,
                "invalid JSON at column 17: duplicate field \"seq\"",
            ),
            (
                r#"{"seq": 1.0}"#,
                "invalid JSON at column 11: \"seq\" must be an integer from 0 to 18446744073709551615",
            ),
            (
                r#"{"pid": -1}"#,
                "invalid JSON at column 10: \"pid\" must be an integer from 0 to 4294967295",
            ),
            (
                r#"{"pid": "1"}"#,
                "invalid JSON at column 9: \"pid\" must be an integer from 0 to 4294967295",
            ),
            (
                r#"{"hex": 5}"#,
                "invalid JSON at column 9: expected a string",
            ),
            (
                r#"{"t_ms": "1"}"#,
                "invalid JSON at column 10: expected a number",
            ),
            (
                r#"{"sender": {"transport": "tcp"}}"#,
                "invalid JSON at column 31: unknown sender transport \"tcp\", expected \"unix\", \"vsock\" or \"unknown\"",
            ),
            (
                r#"{"sender": {"transport": "vsock"}}"#,
                "invalid JSON at column 33: vsock sender without \"cid\"",
            ),
            (
                r#"{"sender": {"cid": 3}}"#,
                "invalid JSON at column 21: sender without \"transport\"",
            ),
            (
                r#"{"sender": {"transport": "unix", "credentials": {"pid": 1}}}"#,
                "invalid JSON at column 58: credentials need \"pid\", \"uid\" and \"gid\"",
            ),
            (
                r#"{"sender": 3}"#,
                "invalid JSON at column 12: expected an object",
            ),
        ] {
            assert_eq!(error(line), expected, "{line}");
        }
        let not_utf8 = JsonLine::read(b"{\"guest\": \"\xff\"}").unwrap_err();
        assert_eq!(
            not_utf8.to_string(),
            "invalid JSON at column 13: invalid unicode code point"
        );
    }
}
