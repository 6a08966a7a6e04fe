//! The JavaScript interface, through wasm-bindgen: a thin layer over [`crate::parse_datagram`]
//! and [`crate::LogReader`] that takes bytes (`Uint8Array`) and returns JSON strings, and the
//! hub's rule for showing guest text ([`notifyhub_core::text`]): `escapeLine`, `escapeLines`.
//!
//! ```js
//! import init, { parseDatagram, LogReader, escapeLine } from './notifyhub_wasm.js';
//! await init();
//! const reader = new LogReader(file.name);
//! for (let at = 0; at < file.size; at += 1 << 20) {
//!     reader.push(new Uint8Array(await file.slice(at, at + (1 << 20)).arrayBuffer()));
//! }
//! const replay = JSON.parse(reader.finish()); // frees the reader
//! cell.textContent = escapeLine(replay.guests[0].snapshot.status ?? '');
//! ```
//!
//! Strings rather than JS objects keep the interface small and its output byte-for-byte the
//! same as the native one, which the tests compare. It compiles on every target, so host builds
//! check it; only a wasm32 build exports it.

use wasm_bindgen::prelude::wasm_bindgen;

/// Parses one sd_notify datagram and returns JSON: `{"ok": true, "len", "lines", "fields"}` or
/// `{"ok": false, "len", "error", "reason"}`. See [`crate::parse_datagram`].
#[wasm_bindgen(js_name = parseDatagram)]
pub fn parse_datagram(datagram: &[u8]) -> String {
    crate::parse_datagram(datagram)
}

/// Guest text for one line of a page, as the hub's own pages show it: control, bidirectional
/// and invisible format characters as visible escapes (`\x1b`, `\u{202e}`, `\n`). See
/// [`notifyhub_core::text::escape_line`].
#[wasm_bindgen(js_name = escapeLine)]
pub fn escape_line(text: &str) -> String {
    notifyhub_core::text::escape_line(text)
}

/// As [`escape_line`], but a `\n` stays a line break: a message's `KEY=value` lines in a
/// `<pre>`. See [`notifyhub_core::text::escape_lines`].
#[wasm_bindgen(js_name = escapeLines)]
pub fn escape_lines(text: &str) -> String {
    notifyhub_core::text::escape_lines(text)
}

/// A streaming reader of a notifyhub log (exported to JavaScript as `LogReader`): feed it the
/// file's bytes in slices of any size, then call `finish()` once. See [`crate::LogReader`].
#[wasm_bindgen(js_name = LogReader)]
#[derive(Debug)]
pub struct JsLogReader(crate::LogReader);

#[wasm_bindgen(js_class = LogReader)]
impl JsLogReader {
    /// `new LogReader(guest)`: captures and plain text messages belong to the guest `guest`
    /// (e.g. the file's name); event logs name their guests themselves.
    #[wasm_bindgen(constructor)]
    pub fn new(guest: &str) -> Self {
        Self(crate::LogReader::new(guest))
    }

    /// Reads the next slice of the log; slices may split lines anywhere.
    pub fn push(&mut self, chunk: &[u8]) {
        self.0.push(chunk);
    }

    /// Reads the last line and returns the whole replay as JSON (see [`crate::Replay`]). The
    /// reader is consumed: its memory is freed and it cannot be used again.
    pub fn finish(self) -> String {
        self.0.finish().to_json()
    }
}
