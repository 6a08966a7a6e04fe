//! The wasm32 build against the native one: every input of `common` replayed through the
//! JavaScript-facing layer ([`notifyhub_wasm::js`]) in any chunking, and every datagram parsed,
//! must give byte for byte the JSON that the native tests wrote to `tests/expected/`.
//!
//! Run by `scripts/wasm-build --test` with wasm-bindgen-test, in Node and in headless Chromium.
#![cfg(target_arch = "wasm32")]

mod common;

use common::{CHUNK_SIZES, INPUTS, PARSE_DATAGRAM, parse_datagrams, pretty, push_in_chunks};
use notifyhub_wasm::js::{JsLogReader, escape_line, escape_lines, parse_datagram};
use wasm_bindgen_test::wasm_bindgen_test;

/// The native output of an input, `tests/expected/<name>.json`.
macro_rules! expected {
    ($name:literal) => {
        ($name, include_str!(concat!("expected/", $name, ".json")))
    };
}

/// One entry per input of `common::INPUTS`, in the same order (`native.rs` checks the names).
const EXPECTED: &[(&str, &str)] = &[
    expected!("systemd-notify252-abstract"),
    expected!("systemd-notify252"),
    expected!("systemd-notify257-live-pid"),
    expected!("systemd-notify257"),
    expected!("systemd257-boot-reboot-arg"),
    expected!("systemd257-emergency-target"),
    expected!("systemd257-halt"),
    expected!("systemd257-multi-user-unit"),
    expected!("systemd257-poweroff"),
    expected!("systemd257-reload-reexec"),
    expected!("systemd257-sig-rtmin14-immediate-poweroff"),
    expected!("systemd257-sig-rtmin4-poweroff"),
    expected!("events-v1"),
    expected!("plain"),
    expected!("bad-lines"),
    expected!("mixed"),
    expected!("parse-datagram"),
];

fn expected(name: &str) -> &'static str {
    EXPECTED
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("add expected!(\"{name}\") to EXPECTED"))
        .1
}

#[wasm_bindgen_test]
fn every_input_replays_as_natively_in_any_chunking() {
    assert_eq!(EXPECTED.len(), INPUTS.len() + 1);
    for input in INPUTS {
        for chunk in CHUNK_SIZES {
            let mut reader = JsLogReader::new(input.name);
            push_in_chunks(input.text, chunk, |piece| reader.push(piece));
            let json = reader.finish();
            assert!(
                pretty(&json) == expected(input.name),
                "{} read {} differs from tests/expected/{}.json",
                input.name,
                common::chunking(chunk),
                input.name
            );
        }
    }
}

#[wasm_bindgen_test]
fn every_datagram_parses_as_natively() {
    let json = parse_datagrams(parse_datagram);
    assert!(
        pretty(&json) == expected(PARSE_DATAGRAM),
        "parse_datagram differs from tests/expected/{PARSE_DATAGRAM}.json"
    );
}

/// The viewer shows guest text through these, as the hub's pages do (`notifyhub_core::text`).
#[wasm_bindgen_test]
fn guest_text_is_shown_with_the_hubs_escapes() {
    assert_eq!(
        escape_line("a\x1b[31m\u{202e}b\x07\u{9b}\n"),
        "a\\x1b[31m\\u{202e}b\\x07\\u{9b}\\n"
    );
    assert_eq!(
        escape_lines("READY=1\nSTATUS=\u{202e}x\r\n"),
        "READY=1\nSTATUS=\\u{202e}x\\r\n"
    );
    assert_eq!(escape_line("héllo ✓ <b>"), "héllo ✓ <b>");
}
