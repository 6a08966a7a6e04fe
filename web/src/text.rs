//! Guest text as shown to people, in the terminal (the `notifyhub` client commands) and in the
//! HTML pages: every character that would act rather than show — C0 and C1 controls, Unicode's
//! bidirectional controls (which reorder what follows, UAX #9), and the other invisible format
//! characters (zero-width space, word joiner, BOM, line separators, tag characters) — becomes a
//! visible escape: `\n`, `\t`, `\x1b`, `\u{202e}`. The JSON API gives the text as it is: JSON
//! escaping keeps it data.

use std::fmt::Write as _;

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
    use super::*;

    #[test]
    fn guest_text_cannot_drive_the_terminal() {
        assert_eq!(escape_line("Ready."), "Ready.");
        assert_eq!(escape_line("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(escape_line("tab\there\r\n"), "tab\\there\\r\\n");
        assert_eq!(escape_line("\u{7f}\u{9b}"), "\\x7f\\u{9b}");
        assert_eq!(escape_line("abc\u{202e}def"), "abc\\u{202e}def");
        assert_eq!(escape_line("C:\\dir héllo ✓"), "C:\\dir héllo ✓");
    }

    #[test]
    fn invisible_characters_are_shown() {
        assert_eq!(escape_line("a\u{2067}b\u{2069}"), "a\\u{2067}b\\u{2069}");
        assert_eq!(
            escape_line("zero\u{200b}width\u{feff}"),
            "zero\\u{200b}width\\u{feff}"
        );
        assert_eq!(escape_line("line\u{2028}sep"), "line\\u{2028}sep");
        assert_eq!(escape_line("tag\u{e0041}"), "tag\\u{e0041}");
        // A family emoji is joined by U+200D.
        assert_eq!(escape_line("👩\u{200d}👧"), "👩\u{200d}👧");
    }

    #[test]
    fn lines_keep_their_breaks() {
        assert_eq!(
            escape_lines("READY=1\nSTATUS=a\0\x1b[31m\u{202e}\r\n"),
            "READY=1\nSTATUS=a\\x00\\x1b[31m\\u{202e}\\r\n"
        );
    }

    #[test]
    fn message_bytes_are_exact() {
        assert_eq!(
            escape_bytes(b"READY=1\nSTATUS=Ready."),
            "READY=1\\nSTATUS=Ready."
        );
        assert_eq!(escape_bytes(b"X=C:\\n"), "X=C:\\\\n");
        assert_eq!(escape_bytes(b"X=\xff\xfe\0"), "X=\\xff\\xfe\\x00");
        assert_eq!(escape_bytes("X=é".as_bytes()), "X=é");
    }
}
