//! Guest text as shown to people: every character that would act rather than show — C0 and C1
//! controls, Unicode's bidirectional controls (which reorder what follows, UAX #9), and the
//! other invisible format characters (zero-width space, word joiner, BOM, line separators, tag
//! characters) — becomes a visible escape: `\n`, `\t`, `\x1b`, `\u{202e}`.
//!
//! One rule for every place a guest's text reaches a person: the hub's terminal commands and
//! HTML pages (`notifyhub-web`'s `text` module) and the browser's log viewer (exported by
//! `notifyhub-wasm`). Data formats (JSON, the event log) keep the text as it is.

use alloc::string::String;
use core::fmt::Write as _;

/// `text` for one line: control and invisible format characters as `\n`, `\t`, `\x1b`,
/// `\u{202e}`; everything else as is, a backslash too.
pub fn escape_line(text: &str) -> String {
    escape(text, Keep::Nothing)
}

/// `text` over several lines (a message's `KEY=value` assignments in a `<pre>`): as
/// [`escape_line`], but a `\n` stays a line break.
pub fn escape_lines(text: &str) -> String {
    escape(text, Keep::Newlines)
}

/// A message's exact bytes on one line: as [`escape_line`], plus `\\` for a backslash and `\xNN`
/// for each byte that is not UTF-8, so that the line tells the bytes apart (a `\n` separator
/// from a backslash followed by `n`).
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_char(&mut out, c, Keep::Nothing, true);
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Nothing,
    Newlines,
}

fn escape(text: &str, keep: Keep) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_char(&mut out, c, keep, false);
    }
    out
}

fn push_char(out: &mut String, c: char, keep: Keep, exact: bool) {
    match c {
        '\n' if keep == Keep::Newlines => out.push('\n'),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\\' if exact => out.push_str("\\\\"),
        c if c.is_ascii_control() => {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        }
        c if c.is_control() || is_invisible_format(c) => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// Unicode's bidirectional controls (UAX #9: U+061C, U+200E–U+200F, U+202A–U+202E,
/// U+2066–U+2069) and the other invisible format and separator characters (general categories
/// Cf, Zl, Zp) a person cannot see. Zero-width (non-)joiners stay: scripts and emoji need them.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}' | '\u{200e}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}'
        | '\u{fff9}'..='\u{fffb}' | '\u{e0000}'..='\u{e007f}')
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString as _;

    use super::*;

    #[test]
    fn every_c0_and_c1_control_is_escaped() {
        for c in (0..=0x1f).chain(0x7f..=0x9f).filter_map(char::from_u32) {
            let shown = escape_line(&c.to_string());
            assert!(
                shown.starts_with('\\'),
                "{:#x} shown as {shown:?}",
                u32::from(c)
            );
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
        }
        assert_eq!(escape_line("\0\x01\x1b\x7f"), "\\x00\\x01\\x1b\\x7f");
        assert_eq!(escape_line("\u{80}\u{9b}"), "\\u{80}\\u{9b}");
    }

    #[test]
    fn bidi_controls_are_escaped() {
        assert_eq!(escape_line("\u{061c}"), "\\u{61c}");
        for c in [
            '\u{200e}', '\u{200f}', '\u{202a}', '\u{202e}', '\u{2066}', '\u{2069}',
        ] {
            assert_eq!(
                escape_line(&c.to_string()),
                alloc::format!("\\u{{{:x}}}", u32::from(c))
            );
        }
    }

    #[test]
    fn printable_text_is_untouched() {
        let text = "Ready. héllo ✓ 日本語 👩\u{200d}👧 C:\\dir \"quoted\" <b>";
        assert_eq!(escape_line(text), text);
        assert_eq!(escape_lines(text), text);
    }
}
