//! Guest text as shown to people, in the terminal (the `notifyhub` client commands) and in the
//! HTML pages: every character that would act rather than show — C0 and C1 controls, Unicode's
//! bidirectional controls (which reorder what follows, UAX #9), and the other invisible format
//! characters (zero-width space, word joiner, BOM, line separators, tag characters) — becomes a
//! visible escape: `\n`, `\t`, `\x1b`, `\u{202e}`. The JSON API gives the text as it is: JSON
//! escaping keeps it data.
//!
//! The rule lives in [`notifyhub_core::text`], so that the browser's log viewer (through
//! `notifyhub-wasm`) shows guest text exactly as these pages and commands do.

pub use notifyhub_core::text::{escape_bytes, escape_line, escape_lines};

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
