//! A reader of the one-line JSON objects of the log formats (RFC 8259).
//!
//! It takes the place of serde_json's deserializer, whose generic code was half of the wasm
//! module (75 of 142 KB; the module's budget is 100 KB). The output side still uses
//! serde_json. The reader is a cursor: [`Cursor::object`] walks an object's members and hands
//! each key to the caller, which reads the value with [`Cursor::string`], [`Cursor::integer`],
//! [`Cursor::number`], a nested [`Cursor::object`], or skips it with [`Cursor::skip`]. `null`
//! reads as absent ([`Cursor::null`]). Strings are borrowed unless they hold escapes.
//! Errors name the column: the bytes read up to and including the offending one (the line's
//! length for an early end), as serde_json did.

use std::borrow::Cow;
use std::fmt;

/// How deeply arrays and objects may nest, as in serde_json: deeper input is an error rather
/// than a stack overflow.
const MAX_DEPTH: u32 = 128;

/// Why a JSON line could not be read, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Error {
    /// The column (1-based, in bytes) where reading stopped.
    pub(crate) column: usize,
    pub(crate) message: Cow<'static, str>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid JSON at column {}: {}",
            self.column, self.message
        )
    }
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

/// A position in one line of JSON.
#[derive(Debug)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    depth: u32,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            at: 0,
            depth: 0,
        }
    }

    /// An error about the byte just read (or the end of the line, when there is none).
    pub(crate) fn error(&self, message: impl Into<Cow<'static, str>>) -> Error {
        Error {
            column: self.at.min(self.bytes.len()),
            message: message.into(),
        }
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, consumed; `eof` names what was being read at the end.
    fn next_token(&mut self, eof: &'static str) -> Result<u8> {
        self.skip_whitespace();
        let byte = *self.bytes.get(self.at).ok_or_else(|| self.error(eof))?;
        self.at += 1;
        Ok(byte)
    }

    fn peek_token(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.at).copied()
    }

    /// Reads an object, calling `member(self, key)` for each member; `member` must read or
    /// skip the value.
    pub(crate) fn object(
        &mut self,
        member: &mut dyn FnMut(&mut Self, Cow<'a, str>) -> Result<()>,
    ) -> Result<()> {
        if self.next_token("EOF while parsing a value")? != b'{' {
            return Err(self.error("expected an object"));
        }
        self.nest()?;
        if self.peek_token() == Some(b'}') {
            self.at += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            match self.next_token("EOF while parsing an object")? {
                b'"' => {}
                _ => return Err(self.error("key must be a string")),
            }
            let key = self.string_body()?;
            if self.next_token("EOF while parsing an object")? != b':' {
                return Err(self.error("expected `:`"));
            }
            member(self, key)?;
            match self.next_token("EOF while parsing an object")? {
                b',' => {}
                b'}' => break,
                _ => return Err(self.error("expected `,` or `}`")),
            }
        }
        self.depth -= 1;
        Ok(())
    }

    fn nest(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("recursion limit exceeded"));
        }
        Ok(())
    }

    /// Whether the value is `null`, which is then consumed.
    pub(crate) fn null(&mut self) -> Result<bool> {
        if self.peek_token() != Some(b'n') {
            return Ok(false);
        }
        self.literal(b"null")?;
        Ok(true)
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        for &expected in word {
            match self.bytes.get(self.at) {
                None => return Err(self.error("EOF while parsing a value")),
                Some(&byte) => {
                    self.at += 1;
                    if byte != expected {
                        return Err(self.error("expected ident"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads a string.
    pub(crate) fn string(&mut self) -> Result<Cow<'a, str>> {
        match self.next_token("EOF while parsing a value")? {
            b'"' => self.string_body(),
            _ => Err(self.error("expected a string")),
        }
    }

    /// Reads a string after its opening quote: borrowed when it has no escapes.
    fn string_body(&mut self) -> Result<Cow<'a, str>> {
        let mut owned: Option<Vec<u8>> = None;
        let mut start = self.at;
        loop {
            self.skip_plain_string_bytes();
            match self.string_byte()? {
                b'"' => {
                    let tail = &self.bytes[start..self.at - 1];
                    let bytes = match owned {
                        None => Cow::Borrowed(tail),
                        Some(mut owned) => {
                            owned.extend_from_slice(tail);
                            Cow::Owned(owned)
                        }
                    };
                    return match bytes {
                        Cow::Borrowed(b) => std::str::from_utf8(b).map(Cow::Borrowed).ok(),
                        Cow::Owned(b) => String::from_utf8(b).map(Cow::Owned).ok(),
                    }
                    .ok_or_else(|| self.error("invalid unicode code point"));
                }
                b'\\' => {
                    let owned = owned.get_or_insert_with(Vec::new);
                    owned.extend_from_slice(&self.bytes[start..self.at - 1]);
                    self.escape(owned)?;
                    start = self.at;
                }
                _ => {}
            }
        }
    }

    /// Moves over the string bytes that need no attention: all but `"`, `\\` and control
    /// characters. The hot loop of long `hex` and `text` fields.
    fn skip_plain_string_bytes(&mut self) {
        let rest = &self.bytes[self.at.min(self.bytes.len())..];
        self.at += rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .unwrap_or(rest.len());
    }

    /// The next byte of a string; an unescaped control character is an error.
    fn string_byte(&mut self) -> Result<u8> {
        let byte = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| self.error("EOF while parsing a string"))?;
        self.at += 1;
        if byte < 0x20 {
            return Err(
                self.error("control character (\\u0000-\\u001F) found while parsing a string")
            );
        }
        Ok(byte)
    }

    /// Decodes the escape after a backslash into `out`.
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let decoded = match self.string_byte()? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let mut code = u32::from(self.hex4()?);
                if (0xD800..0xDC00).contains(&code) {
                    // A leading surrogate must be followed by `\u` and a trailing one.
                    if self.string_byte()? != b'\\' || self.string_byte()? != b'u' {
                        return Err(self.error("unexpected end of hex escape"));
                    }
                    let low = u32::from(self.hex4()?);
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(self.error("lone surrogate in hex escape"));
                    }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                }
                let c = char::from_u32(code)
                    .ok_or_else(|| self.error("lone surrogate in hex escape"))?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                return Ok(());
            }
            _ => return Err(self.error("invalid escape")),
        };
        out.push(decoded);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16> {
        let mut value = 0u16;
        for _ in 0..4 {
            let digit = match self.string_byte()? {
                b @ b'0'..=b'9' => b - b'0',
                b @ b'a'..=b'f' => b - b'a' + 10,
                b @ b'A'..=b'F' => b - b'A' + 10,
                _ => return Err(self.error("invalid escape")),
            };
            value = value << 4 | u16::from(digit);
        }
        Ok(value)
    }

    /// Reads a number and returns its text, checked against JSON's number grammar.
    pub(crate) fn number(&mut self) -> Result<Number<'a>> {
        self.skip_whitespace();
        let start = self.at;
        let digits = |cursor: &mut Self| {
            let from = cursor.at;
            while cursor.bytes.get(cursor.at).is_some_and(u8::is_ascii_digit) {
                cursor.at += 1;
            }
            cursor.at - from
        };
        let negative = self.bytes.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        let int_start = self.at;
        match self.bytes.get(self.at) {
            None => return Err(self.error("EOF while parsing a value")),
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            Some(_) if negative => {
                self.at += 1;
                return Err(self.error("invalid number"));
            }
            Some(_) => {
                self.at += 1;
                return Err(self.error("expected a number"));
            }
        }
        let int = &self.bytes[int_start..self.at];
        let mut fraction: &[u8] = b"";
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            let from = self.at;
            if digits(self) == 0 {
                self.at += 1;
                return Err(self.error("invalid number"));
            }
            fraction = &self.bytes[from..self.at];
        }
        let mut exponent = 0i64;
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            let negative = self.bytes.get(self.at) == Some(&b'-');
            if let Some(b'-' | b'+') = self.bytes.get(self.at) {
                self.at += 1;
            }
            let from = self.at;
            if digits(self) == 0 {
                self.at += 1;
                return Err(self.error("invalid number"));
            }
            // Beyond ±10^6 every value rounds to 0 or saturates anyway.
            for &digit in &self.bytes[from..self.at] {
                exponent = (exponent * 10 + i64::from(digit - b'0')).min(1_000_000);
            }
            if negative {
                exponent = -exponent;
            }
        }
        Ok(Number {
            text: &self.bytes[start..self.at],
            negative,
            int,
            fraction,
            exponent,
        })
    }

    /// Reads a non-negative integer no larger than `max`; `name` is the field, for the error.
    pub(crate) fn integer(&mut self, name: &str, max: u64) -> Result<u64> {
        let invalid =
            |cursor: &Self| cursor.error(format!("\"{name}\" must be an integer from 0 to {max}"));
        match self.peek_token() {
            Some(b'-' | b'0'..=b'9') => {}
            None => return Err(self.error("EOF while parsing a value")),
            Some(_) => {
                self.at += 1;
                return Err(invalid(self));
            }
        }
        let number = self.number()?;
        number
            .integer()
            .filter(|&value| value <= max)
            .ok_or_else(|| invalid(self))
    }

    /// Skips one value of any kind.
    pub(crate) fn skip(&mut self) -> Result<()> {
        match self.peek_token() {
            None => Err(self.error("EOF while parsing a value")),
            Some(b'"') => {
                self.at += 1;
                // Unlike a string that is read, a skipped one is not checked to be UTF-8.
                loop {
                    self.skip_plain_string_bytes();
                    match self.string_byte()? {
                        b'"' => return Ok(()),
                        b'\\' => self.escape(&mut Vec::new())?,
                        _ => {}
                    }
                }
            }
            Some(b'{') => self.object(&mut |cursor, _| cursor.skip()),
            Some(b'[') => {
                self.at += 1;
                self.nest()?;
                if self.peek_token() == Some(b']') {
                    self.at += 1;
                } else {
                    loop {
                        self.skip()?;
                        match self.next_token("EOF while parsing a list")? {
                            b',' => {}
                            b']' => break,
                            _ => return Err(self.error("expected `,` or `]`")),
                        }
                    }
                }
                self.depth -= 1;
                Ok(())
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(drop),
            Some(_) => {
                self.at += 1;
                Err(self.error("expected value"))
            }
        }
    }

    /// Checks that only whitespace is left.
    pub(crate) fn end(&mut self) -> Result<()> {
        if self.peek_token().is_some() {
            self.at += 1;
            return Err(self.error("trailing characters"));
        }
        Ok(())
    }
}

/// A JSON number as written, split into its parts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Number<'a> {
    /// The whole number, as written.
    pub(crate) text: &'a [u8],
    negative: bool,
    /// The digits before the point.
    int: &'a [u8],
    /// The digits after the point, if any.
    fraction: &'a [u8],
    /// The exponent after `e`, clamped to ±10^6.
    exponent: i64,
}

impl Number<'_> {
    /// The number as a `u64`, if it is written as an integer (no point, no exponent, no sign)
    /// that fits.
    pub(crate) fn integer(&self) -> Option<u64> {
        if self.negative || !self.fraction.is_empty() || self.text.len() != self.int.len() {
            return None;
        }
        self.int.iter().try_fold(0u64, |value, &digit| {
            value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
        })
    }

    /// Whether the number is below zero (`-0` is not).
    pub(crate) fn is_negative(&self) -> bool {
        self.negative && self.digits().any(|digit| digit != b'0')
    }

    fn digits(&self) -> impl Iterator<Item = u8> + '_ {
        self.int.iter().chain(self.fraction).copied()
    }

    /// The number's magnitude times `10^shift`, rounded to the nearest integer (halves up) and
    /// saturated at `u64::MAX`: exact decimal arithmetic, with no binary floating point.
    pub(crate) fn scaled_magnitude(&self, shift: i64) -> u64 {
        let count = (self.int.len() + self.fraction.len()) as i64;
        // The digits are d[0] d[1] …; d[i]'s place value is 10^(point - 1 - i).
        let point = self.int.len() as i64 + self.exponent + shift;
        let whole = point.clamp(0, count);
        let mut value = 0u64;
        for digit in self.digits().take(whole as usize) {
            value = value
                .saturating_mul(10)
                .saturating_add(u64::from(digit - b'0'));
        }
        if point > count {
            for _ in 0..(point - count).min(20) {
                value = value.saturating_mul(10);
            }
        }
        // A point before the first digit drops only implied zeros.
        let first_dropped = usize::try_from(point)
            .ok()
            .and_then(|at| self.digits().nth(at));
        if first_dropped.is_some_and(|digit| digit >= b'5') {
            value = value.saturating_add(1);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(text: &str) -> Number<'_> {
        let mut cursor = Cursor::new(text.as_bytes());
        let number = cursor.number().unwrap();
        cursor.end().unwrap();
        number
    }

    fn error(text: &str) -> String {
        let mut cursor = Cursor::new(text.as_bytes());
        let result = cursor
            .object(&mut |cursor, _| cursor.skip())
            .and_then(|()| cursor.end());
        result.unwrap_err().to_string()
    }

    /// Every member of a flat object, strings as themselves and other values skipped.
    fn members(text: &str) -> Vec<(String, Option<String>)> {
        let mut cursor = Cursor::new(text.as_bytes());
        let mut out = Vec::new();
        cursor
            .object(&mut |cursor, key| {
                let value = match cursor.peek_token() {
                    Some(b'"') => Some(cursor.string()?.into_owned()),
                    _ => cursor.skip().map(|()| None)?,
                };
                out.push((key.into_owned(), value));
                Ok(())
            })
            .unwrap();
        cursor.end().unwrap();
        out
    }

    #[test]
    fn strings_decode_escapes_and_borrow_without_them() {
        let mut cursor =
            Cursor::new(br#""plain" "a\"b\\c\/d\b\f\n\r\t" "\u00e9\u20AC\ud83d\ude00""#);
        assert!(matches!(cursor.string().unwrap(), Cow::Borrowed("plain")));
        assert_eq!(cursor.string().unwrap(), "a\"b\\c/d\u{8}\u{c}\n\r\t");
        assert_eq!(cursor.string().unwrap(), "é€😀");
        cursor.end().unwrap();
        assert_eq!(members(r#"{"k": "ü"}"#), [("k".into(), Some("ü".into()))]);
    }

    #[test]
    fn skipped_values_of_every_kind() {
        let line =
            r#"{"a": [1, -2.5e+3, "x\"]", {"b": [[], {}]}, true, false, null], "c": {}, "d": "e"}"#;
        assert_eq!(
            members(line),
            [
                ("a".into(), None),
                ("c".into(), None),
                ("d".into(), Some("e".into()))
            ]
        );
        assert_eq!(members("{}"), []);
        assert_eq!(members(" { } "), []);
    }

    #[test]
    fn errors_say_what_and_where() {
        // The column counts the bytes read, the offending one included; at the end, all of them.
        for (line, expected) in [
            (
                r#"{"seq": 2, "hex": "5245"#,
                "invalid JSON at column 23: EOF while parsing a string",
            ),
            (
                r#"{"a": 1"#,
                "invalid JSON at column 7: EOF while parsing an object",
            ),
            (r#"{"a" 1}"#, "invalid JSON at column 6: expected `:`"),
            (
                r#"{"a": 1 "b": 2}"#,
                "invalid JSON at column 9: expected `,` or `}`",
            ),
            (
                r#"{a: 1}"#,
                "invalid JSON at column 2: key must be a string",
            ),
            (r#"{"a": tru}"#, "invalid JSON at column 10: expected ident"),
            (
                r#"{"a": 01}"#,
                "invalid JSON at column 8: expected `,` or `}`",
            ),
            (r#"{"a": 1.}"#, "invalid JSON at column 9: invalid number"),
            (r#"{"a": -x}"#, "invalid JSON at column 8: invalid number"),
            (r#"{"a": 1e}"#, "invalid JSON at column 9: invalid number"),
            (r#"{"a": x}"#, "invalid JSON at column 7: expected value"),
            (r#"{"a": "\q"}"#, "invalid JSON at column 9: invalid escape"),
            (
                r#"{"a": "\u12g4"}"#,
                "invalid JSON at column 12: invalid escape",
            ),
            (
                r#"{"a": "\ud800x"}"#,
                "invalid JSON at column 14: unexpected end of hex escape",
            ),
            (
                r#"{"a": "\udc00"}"#,
                "invalid JSON at column 13: lone surrogate in hex escape",
            ),
        ] {
            assert_eq!(error(line), expected, "{line}");
        }
        assert_eq!(
            error("{\"a\": \"x\ty\"}"),
            "invalid JSON at column 9: control character (\\u0000-\\u001F) found while parsing a string"
        );
        for (line, expected) in [
            (
                r#"{"a": [1 2]}"#,
                "invalid JSON at column 10: expected `,` or `]`",
            ),
            (
                r#"{"a": [1, "#,
                "invalid JSON at column 10: EOF while parsing a value",
            ),
            (
                r#"{"a": 1} x"#,
                "invalid JSON at column 10: trailing characters",
            ),
        ] {
            assert_eq!(error(line), expected, "{line}");
        }
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            error(&deep),
            "invalid JSON at column 134: recursion limit exceeded"
        );
        // A read string must be UTF-8; a skipped one need not be.
        let mut cursor = Cursor::new(b"\"\xff\"");
        assert_eq!(
            cursor.string().unwrap_err().message,
            "invalid unicode code point"
        );
        let mut cursor = Cursor::new(b"\"\xff\"");
        cursor.skip().unwrap();
    }

    #[test]
    fn integers_are_exact_and_bounded() {
        assert_eq!(number("0").integer(), Some(0));
        assert_eq!(number("18446744073709551615").integer(), Some(u64::MAX));
        assert_eq!(number("18446744073709551616").integer(), None);
        assert_eq!(number("-1").integer(), None);
        assert_eq!(number("1.0").integer(), None);
        assert_eq!(number("1e3").integer(), None);
        let mut cursor = Cursor::new(b"4294967296");
        assert_eq!(
            cursor
                .integer("pid", u32::MAX.into())
                .unwrap_err()
                .to_string(),
            "invalid JSON at column 10: \"pid\" must be an integer from 0 to 4294967295"
        );
    }

    #[test]
    fn milliseconds_to_microseconds_exactly() {
        let us = |text: &str| number(text).scaled_magnitude(3);
        assert_eq!(us("0"), 0);
        assert_eq!(us("0.0"), 0);
        assert_eq!(us("1.5"), 1500);
        assert_eq!(us("12345.6"), 12_345_600);
        assert_eq!(us("0.0004"), 0);
        assert_eq!(us("0.0005"), 1);
        assert_eq!(us("0.0015"), 2);
        assert_eq!(us("2.0004999"), 2000);
        assert_eq!(us("1.5e3"), 1_500_000);
        assert_eq!(us("15E-1"), 1500);
        assert_eq!(us("5e-4"), 1);
        assert_eq!(us("4e-4"), 0);
        assert_eq!(us("1e-400"), 0);
        assert_eq!(us("1e400"), u64::MAX);
        assert_eq!(us("18446744073709551.615"), u64::MAX);
        assert_eq!(us("18446744073709552"), u64::MAX);
        assert_eq!(us("-0.0"), 0);
        assert!(!number("-0.0").is_negative());
        assert!(number("-0.001").is_negative());
        // As the f64 arithmetic it replaces gave for the vectors' times.
        for ms in ["0.0", "0.1", "2.2", "1234.5", "99999.9", "3.05", "0.001"] {
            let float: f64 = ms.parse().unwrap();
            assert_eq!(us(ms), (float * 1000.0).round() as u64, "{ms}");
        }
    }
}
