//! What the native tests (`native.rs`) and the wasm tests (`wasm.rs`) share: the logs and
//! datagrams they replay, embedded so that wasm32 needs no file system, and the JSON layout of
//! the expected outputs in `tests/expected/`.

/// One log replayed by both test suites; `name` is also its guest's name and the stem of its
/// expected output, `tests/expected/<name>.json`.
#[derive(Debug)]
pub(crate) struct Input {
    pub(crate) name: &'static str,
    pub(crate) text: &'static str,
}

/// A capture of `../shared/vectors/`.
macro_rules! vector {
    ($name:literal) => {
        Input {
            name: $name,
            text: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/vectors/",
                $name,
                ".jsonl"
            )),
        }
    };
}

/// A hand-written log of `tests/fixtures/`.
macro_rules! fixture {
    ($name:literal, $file:literal) => {
        Input {
            name: $name,
            text: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/",
                $file
            )),
        }
    };
}

/// Every capture of `../shared/vectors/` (`native.rs` checks that none is missing) and every
/// fixture.
pub(crate) const INPUTS: &[Input] = &[
    vector!("systemd-notify252-abstract"),
    vector!("systemd-notify252"),
    vector!("systemd-notify257-live-pid"),
    vector!("systemd-notify257"),
    vector!("systemd257-boot-reboot-arg"),
    vector!("systemd257-emergency-target"),
    vector!("systemd257-halt"),
    vector!("systemd257-multi-user-unit"),
    vector!("systemd257-poweroff"),
    vector!("systemd257-reload-reexec"),
    vector!("systemd257-sig-rtmin14-immediate-poweroff"),
    vector!("systemd257-sig-rtmin4-poweroff"),
    fixture!("events-v1", "events-v1.jsonl"),
    fixture!("plain", "plain.txt"),
    fixture!("bad-lines", "bad-lines.jsonl"),
    fixture!("mixed", "mixed.log"),
];

/// The stem of the expected output of [`DATAGRAMS`].
pub(crate) const PARSE_DATAGRAM: &str = "parse-datagram";

/// Datagrams for `parse_datagram`, one per rule worth showing.
pub(crate) const DATAGRAMS: &[&[u8]] = &[
    // PID 1's readiness, as systemd 257 sends it.
    b"READY=1\nSTATUS=Ready.",
    // One trailing NUL is tolerated and not part of the payload.
    b"READY=1\0",
    // A NUL anywhere else rejects the datagram.
    b"READY=1\0STATUS=x",
    // Longer than 4096 bytes: rejected whole.
    &[b'A'; 4097],
    // Empty: no lines, no fields.
    b"",
    // Empty lines and CRLF vanish; READY=0 sets nothing; the first ERRNO= wins; unknown keys
    // and lines without '=' are kept as lines only.
    b"\n\nREADY=0\nWATCHDOG=trigger\nERRNO=12\nERRNO=13\nFOO=bar\nno equals\r\n",
    // A STATUS= that is not UTF-8 is ignored; the lines show U+FFFD.
    b"STATUS=\xff\xfe caf\xc3\xa9",
    // systemd-shutdown's last message.
    b"EXIT_STATUS=0\nX_SYSTEMD_SHUTDOWN=reboot\nX_SYSTEMD_REBOOT_PARAMETER=probe-arg",
    // Invalid values are listed in "ignored"; the largest u64 fits.
    b"MAINPID=0\nMAINPIDFDID=18446744073709551615\nWATCHDOG_USEC=30000000\nNOTIFYACCESS=any",
];

/// The outputs of `parse_datagram` for every datagram, as one JSON array.
pub(crate) fn parse_datagrams(parse: impl Fn(&[u8]) -> String) -> String {
    let outputs: Vec<String> = DATAGRAMS.iter().map(|d| parse(d)).collect();
    format!("[{}]", outputs.join(","))
}

/// Indents compact JSON as `serde_json::to_string_pretty` does, keeping the order of keys
/// (which parsing into a `serde_json::Value` would not), so that the expected outputs are
/// readable and still compared byte for byte. `native.rs` checks it against serde_json.
pub(crate) fn pretty(compact: &str) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    }
    let mut out = String::with_capacity(compact.len() * 2);
    let mut depth = 0;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = compact.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                if let Some(close) = chars.next_if(|&next| next == '}' || next == ']') {
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth -= 1;
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            _ => out.push(c),
        }
    }
    out.push('\n');
    out
}

/// Feeds `text` to a reader in chunks of `chunk` bytes (all at once for `usize::MAX`), through
/// `push`.
pub(crate) fn push_in_chunks(text: &str, chunk: usize, mut push: impl FnMut(&[u8])) {
    for piece in text.as_bytes().chunks(chunk.max(1)) {
        push(piece);
    }
}

/// The chunk sizes every replay is tried with: whole, one byte, a prime and a page.
pub(crate) const CHUNK_SIZES: [usize; 4] = [usize::MAX, 1, 7, 4096];

/// How a replay in chunks of `chunk` bytes was fed, for messages.
pub(crate) fn chunking(chunk: usize) -> String {
    if chunk == usize::MAX {
        "whole".to_string()
    } else {
        format!("in chunks of {chunk} bytes")
    }
}
