//! The pure layer on the host: replays of every capture in `../shared/vectors/` and of the
//! fixtures, in any chunking, checked for real values and against `tests/expected/`, which the
//! wasm tests (`wasm.rs`) compare the wasm32 build with.
//!
//! `NOTIFYHUB_BLESS=1 cargo test -p notifyhub-wasm --test native` rewrites `tests/expected/`.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::{CHUNK_SIZES, DATAGRAMS, INPUTS, Input, PARSE_DATAGRAM, parse_datagrams, pretty};
use notifyhub_core::{
    Credentials, Event, MAX_DATAGRAM_LEN, Milestone, ParseError, Phase, Sender, Timestamp,
};
use notifyhub_wasm::{LogReader, MAX_ERRORS, MAX_LINE_LEN, MAX_MESSAGES, Replay, parse_datagram};

const MACHINE_ID: &str = "5e1f0b7a2c3d4e5f60718293a4b5c6d7";
/// `received_at` of the fixtures' first event: 2026-11-29T00:00:00Z.
const T0: u64 = 1_796_083_200_000_000;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn input(name: &str) -> &'static Input {
    INPUTS
        .iter()
        .find(|input| input.name == name)
        .unwrap_or_else(|| panic!("no input {name}"))
}

/// Replays `text` in chunks of `chunk` bytes for the guest `name`.
fn replay_chunked(name: &str, text: &str, chunk: usize) -> Replay {
    let mut reader = LogReader::new(name);
    common::push_in_chunks(text, chunk, |piece| reader.push(piece));
    reader.finish()
}

fn replay(name: &str) -> Replay {
    replay_chunked(name, input(name).text, usize::MAX)
}

fn read(text: &str) -> Replay {
    replay_chunked("g", text, usize::MAX)
}

fn at_ms(ms: u64) -> Timestamp {
    Timestamp::from_micros(T0 + ms * 1000)
}

/// Compares `actual` with `tests/expected/<name>.json`, or writes it there when blessing.
fn check_expected(name: &str, actual: &str) -> Result<(), String> {
    let path = manifest_dir().join(format!("tests/expected/{name}.json"));
    if std::env::var_os("NOTIFYHUB_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return Ok(());
    }
    match std::fs::read_to_string(&path) {
        Ok(expected) if expected == actual => Ok(()),
        Ok(_) => Err(format!("{} is stale", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[test]
fn every_vector_file_is_an_input_of_both_suites() {
    let wasm_tests = std::fs::read_to_string(manifest_dir().join("tests/wasm.rs")).unwrap();
    let dir = manifest_dir().join("../../shared/vectors");
    let mut vectors = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "jsonl") {
            let stem = path.file_stem().unwrap().to_str().unwrap();
            let listed = INPUTS.iter().find(|input| input.name == stem);
            let listed = listed.unwrap_or_else(|| panic!("add vector!(\"{stem}\") to INPUTS"));
            assert_eq!(listed.text, std::fs::read_to_string(&path).unwrap());
            vectors += 1;
        }
    }
    assert_eq!(vectors, 12, "the captures in {}", dir.display());
    for input in INPUTS {
        let entry = format!("expected!(\"{}\")", input.name);
        assert!(wasm_tests.contains(&entry), "add {entry} to tests/wasm.rs");
    }
}

/// The outputs the wasm tests must reproduce, one file per input.
#[test]
fn expected_outputs_are_current() {
    let mut stale = Vec::new();
    let mut names = BTreeSet::new();
    for input in INPUTS {
        let json = replay(input.name).to_json();
        stale.extend(check_expected(input.name, &pretty(&json)).err());
        names.insert(format!("{}.json", input.name));
    }
    let json = parse_datagrams(parse_datagram);
    stale.extend(check_expected(PARSE_DATAGRAM, &pretty(&json)).err());
    names.insert(format!("{PARSE_DATAGRAM}.json"));
    for entry in std::fs::read_dir(manifest_dir().join("tests/expected")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !names.contains(&name) {
            stale.push(format!(
                "tests/expected/{name} belongs to no input: remove it"
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "{}\nrun `NOTIFYHUB_BLESS=1 cargo test -p notifyhub-wasm --test native` and review the diff",
        stale.join("\n")
    );
}

#[test]
fn the_expected_layout_is_serde_jsons_pretty_one() {
    let replay = replay("events-v1");
    assert_eq!(
        pretty(&replay.to_json()),
        serde_json::to_string_pretty(&replay).unwrap() + "\n"
    );
}

#[test]
fn chunking_changes_nothing() {
    for input in INPUTS {
        let whole = replay(input.name).to_json();
        for chunk in CHUNK_SIZES {
            let chunked = replay_chunked(input.name, input.text, chunk).to_json();
            let how = common::chunking(chunk);
            assert_eq!(chunked, whole, "{} read {how}", input.name);
        }
    }
}

/// `(file, verb, reboot parameter, failed boot)` of every systemd 257 boot.
#[test]
fn systemd257_boots_replay_to_off_with_the_right_shutdown() {
    let table = [
        (
            "systemd257-boot-reboot-arg",
            "reboot",
            Some("probe-arg"),
            false,
        ),
        ("systemd257-poweroff", "poweroff", None, false),
        ("systemd257-halt", "halt", None, false),
        ("systemd257-multi-user-unit", "poweroff", None, false),
        ("systemd257-reload-reexec", "poweroff", None, false),
        ("systemd257-emergency-target", "poweroff", None, true),
        ("systemd257-sig-rtmin4-poweroff", "poweroff", None, false),
        (
            "systemd257-sig-rtmin14-immediate-poweroff",
            "poweroff",
            None,
            false,
        ),
    ];
    for (file, verb, parameter, failed) in table {
        let replay = replay(file);
        let lines = input(file).text.lines().count() as u64;
        assert_eq!(replay.lines, lines, "{file}");
        assert!(replay.errors.is_empty(), "{file}: {:?}", replay.errors);
        assert_eq!(replay.formats.capture, lines, "{file}");
        assert_eq!(replay.guests.len(), 1, "{file}");
        let guest = &replay.guests[0];
        let snapshot = &guest.snapshot;
        assert_eq!(snapshot.name, file);
        assert_eq!(snapshot.phase, Phase::Off, "{file}");
        let shutdown = snapshot.shutdown.as_ref().expect("a shutdown");
        assert_eq!(shutdown.verb, verb, "{file}");
        assert_eq!(shutdown.reboot_parameter.as_deref(), parameter, "{file}");
        assert_eq!(snapshot.failed_boot, failed, "{file}");
        assert_eq!(snapshot.exit_status, Some(0), "{file}");
        assert_eq!(snapshot.hostname.as_deref(), Some("probe-guest"), "{file}");
        assert_eq!(snapshot.machine_id.as_deref(), Some(MACHINE_ID), "{file}");
        assert_eq!(snapshot.boot_count, 1, "{file}");
        assert_eq!(snapshot.messages, lines, "{file}");
        assert_eq!(guest.messages_total, lines, "{file}");
        assert_eq!(guest.messages.len() as u64, lines, "{file}");
        // The capture's pid is the sender; its times are ms since the first datagram.
        assert!(matches!(
            snapshot.last_sender,
            Some(Sender::Unix {
                credentials: Some(Credentials { uid: 0, gid: 0, .. })
            })
        ));
        assert_eq!(snapshot.first_seen, Some(Timestamp::ZERO), "{file}");
        let last = guest.messages.last().unwrap();
        assert_eq!(last.line, lines);
        assert_eq!(last.seq, lines);
        assert!(last.rejected.is_none());
        // The timeline ends with the shutdown (then the phase change it causes), in boot 1.
        let end = guest
            .timeline
            .iter()
            .rev()
            .find(|m| !matches!(m.event, Event::PhaseChanged { .. }));
        assert!(
            matches!(
                end,
                Some(Milestone {
                    boot: 1,
                    event: Event::Shutdown {
                        exit_status: Some(0),
                        ..
                    },
                    ..
                })
            ),
            "{file}: {end:?}"
        );
        assert_eq!(guest.timeline_total, guest.timeline.len() as u64);
    }
}

#[test]
fn reboot_with_argument_in_json() {
    let json: serde_json::Value =
        serde_json::from_str(&replay("systemd257-boot-reboot-arg").to_json()).unwrap();
    let snapshot = &json["guests"][0]["snapshot"];
    assert_eq!(snapshot["phase"], "off");
    assert_eq!(snapshot["shutdown"]["verb"], "reboot");
    assert_eq!(snapshot["shutdown"]["reboot_parameter"], "probe-arg");
    assert_eq!(snapshot["last_sender"]["transport"], "unix");
    let messages = json["guests"][0]["messages"].as_array().unwrap();
    let ready = messages
        .iter()
        .find(|m| m["text"] == "READY=1\nSTATUS=Ready.")
        .unwrap();
    assert_eq!(ready["hex"], "52454144593d310a5354415455533d52656164792e");
    assert_eq!(ready["fields"]["ready"], true);
    assert_eq!(ready["fields"]["status"], "Ready.");
    assert_eq!(ready["len"], 21);
    assert_eq!(json["errors"], serde_json::json!([]));
    assert_eq!(json["errors_total"], 0);
}

#[test]
fn systemd_notify_captures_keep_fds_and_errno() {
    let replay = replay("systemd-notify257");
    let guest = &replay.guests[0];
    // Without --no-block, systemd-notify sends BARRIER=1 with one fd.
    let barrier = &guest.messages[1];
    assert_eq!(
        (barrier.fds, barrier.bytes.as_slice()),
        (1, &b"BARRIER=1"[..])
    );
    // systemd-notify has no pid in the capture: the sender is unknown.
    assert_eq!(barrier.sender, Sender::Unknown);
    assert_eq!(guest.snapshot.errno, Some(38));
    assert_eq!(guest.snapshot.exit_status, Some(1));
    // STOPPING=1 is final for the boot: the READY=1 after it does not make it ready again.
    assert_eq!(guest.snapshot.phase, Phase::Stopping);
    assert_eq!(guest.messages[0].at, Timestamp::ZERO);
    assert_eq!(guest.messages[1].at, Timestamp::from_micros(4_100));
}

#[test]
fn event_log_replays_each_guest_by_name() {
    let replay = replay("events-v1");
    assert!(replay.errors.is_empty(), "{:?}", replay.errors);
    assert_eq!(replay.formats.events, 20);
    assert_eq!((replay.formats.capture, replay.formats.text), (0, 0));
    let names: Vec<_> = replay
        .guests
        .iter()
        .map(|g| g.snapshot.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["web1", "db1"],
        "in the order of their first message"
    );

    let web1 = &replay.guests[0];
    assert_eq!(web1.snapshot.phase, Phase::Ready);
    assert_eq!(web1.snapshot.boot_count, 2, "a reboot, then a second boot");
    assert_eq!(web1.snapshot.status.as_deref(), Some("Ready again."));
    assert_eq!(web1.snapshot.registered_at, at_ms(0));
    assert_eq!(
        web1.snapshot.last_sender,
        Some(Sender::Vsock {
            cid: 3,
            port: Some(1023)
        })
    );
    let shutdown = web1
        .timeline
        .iter()
        .find_map(|m| match &m.event {
            Event::Shutdown { shutdown, .. } => Some((m.boot, m.at, shutdown)),
            _ => None,
        })
        .unwrap();
    assert_eq!((shutdown.0, shutdown.1), (1, at_ms(10_500)));
    assert_eq!(shutdown.2.verb, "reboot");
    assert_eq!(shutdown.2.reboot_parameter.as_deref(), Some("again"));
    assert_eq!(web1.timeline.last().unwrap().boot, 2);
    let seqs: Vec<u64> = web1.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=12).collect::<Vec<_>>());

    let db1 = &replay.guests[1];
    assert_eq!(db1.snapshot.phase, Phase::Stopping);
    assert_eq!(db1.snapshot.main_pid, Some(4242));
    assert_eq!(db1.snapshot.drops.embedded_nul, 1);
    assert_eq!(db1.messages_total, 8);
    assert_eq!(
        db1.snapshot.messages, 7,
        "the rejected datagram is not taken"
    );
    // The last WATCHDOG=1 came at 1.5 s with WATCHDOG_USEC=2 s; the next message, at 9 s, finds
    // the deadline passed, and the miss is placed at the deadline.
    let missed: Vec<_> = db1
        .timeline
        .iter()
        .filter(|m| matches!(m.event, Event::WatchdogMissed { .. }))
        .collect();
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0].at, at_ms(3_500));
    assert_eq!(
        missed[0].event,
        Event::WatchdogMissed {
            deadline: at_ms(3_500)
        }
    );
    let rejected = db1.messages.iter().find(|m| m.rejected.is_some()).unwrap();
    assert_eq!(
        rejected.rejected,
        Some(ParseError::EmbeddedNul { offset: 7 })
    );
    assert_eq!(rejected.line, 14);
    let barrier = db1
        .messages
        .iter()
        .find(|m| m.bytes == b"BARRIER=1")
        .unwrap();
    assert_eq!(barrier.fds, 1);
    assert_eq!(
        barrier.sender,
        Sender::Unix {
            credentials: Some(Credentials {
                pid: 4242,
                uid: 0,
                gid: 0
            })
        }
    );
}

#[test]
fn plain_text_blocks_are_messages() {
    let replay = replay("plain");
    assert!(replay.errors.is_empty(), "{:?}", replay.errors);
    assert_eq!(replay.formats.text, 8);
    let guest = &replay.guests[0];
    assert_eq!(guest.snapshot.name, "plain");
    assert_eq!(guest.snapshot.phase, Phase::Off);
    assert_eq!(guest.snapshot.shutdown.as_ref().unwrap().verb, "poweroff");
    assert_eq!(guest.snapshot.hostname.as_deref(), Some("probe-guest"));
    assert_eq!(
        guest.snapshot.bus_error.as_deref(),
        Some("org.freedesktop.DBus.Error.Failed")
    );
    assert_eq!(guest.snapshot.errno, None, "ERRNO=abc is ignored");
    // Each message starts at its block's first line; comments are left out.
    let lines: Vec<u64> = guest.messages.iter().map(|m| m.line).collect();
    assert_eq!(lines, [2, 5, 8, 11, 14, 16, 19, 21]);
    assert_eq!(
        guest.messages[2].bytes,
        b"X_SYSTEMD_UNIT_ACTIVE=basic.target"
    );
    assert_eq!(guest.messages[3].bytes, b"READY=1\nSTATUS=Ready.");
    // No times in plain text.
    assert!(guest.messages.iter().all(|m| m.at == Timestamp::ZERO));
    let json: serde_json::Value = serde_json::from_str(&replay.to_json()).unwrap();
    assert_eq!(
        json["guests"][0]["messages"][5]["fields"]["ignored"],
        serde_json::json!(["ERRNO"])
    );
}

#[test]
fn bad_lines_are_reported_by_number_and_skipped() {
    let replay = replay("bad-lines");
    let errors: Vec<(u64, &str)> = replay
        .errors
        .iter()
        .map(|e| (e.line, e.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            (2, "invalid JSON at column 46: EOF while parsing a string"),
            (3, "\"len\" is 5 but \"hex\" holds 7 bytes"),
            (4, "bad \"hex\": Invalid character 'z' at position 0"),
            (
                5,
                "expected a JSON object, a KEY=VALUE line or a blank line"
            ),
            (
                6,
                "notifyhub-events version 2 is not supported, only version 1"
            ),
            (
                7,
                "event for a bad guest name: guest name must start with an ASCII letter or digit"
            ),
            (8, "\"t_ms\" must be a number of ms, not negative"),
            (
                9,
                "a JSON line needs \"hex\" (a capture line or an event) or \"format\" (a header)"
            ),
            (
                10,
                "expected a JSON object, a KEY=VALUE line or a blank line"
            ),
            (12, "event without \"received_at\""),
            (
                14,
                "unknown log format \"something-else\", expected \"notifyhub-events\""
            ),
        ]
    );
    assert_eq!(replay.errors_total, 11);
    assert_eq!(
        replay.lines, 16,
        "the last line has no newline and is still read"
    );
    let guest = &replay.guests[0];
    let lines: Vec<u64> = guest.messages.iter().map(|m| m.line).collect();
    assert_eq!(lines, [1, 11, 13, 16]);
    // A datagram the guest rejects is a message, not a bad line.
    assert_eq!(
        guest.messages[2].rejected,
        Some(ParseError::EmbeddedNul { offset: 8 })
    );
    assert_eq!(guest.snapshot.drops.embedded_nul, 1);
    assert!(guest.snapshot.is_active("multi-user.target"));
    assert_eq!(guest.snapshot.phase, Phase::Ready);
}

#[test]
fn formats_mix_within_one_file() {
    let replay = replay("mixed");
    assert!(replay.errors.is_empty(), "{:?}", replay.errors);
    assert_eq!(
        (
            replay.formats.capture,
            replay.formats.events,
            replay.formats.text
        ),
        (2, 2, 2)
    );
    let names: Vec<_> = replay
        .guests
        .iter()
        .map(|g| g.snapshot.name.as_str())
        .collect();
    assert_eq!(names, ["web1", "mixed"]);
    let mixed = &replay.guests[1];
    let texts: Vec<&[u8]> = mixed.messages.iter().map(|m| m.bytes.as_slice()).collect();
    assert_eq!(
        texts,
        [
            &b"READY=1"[..],
            b"STATUS=from a text block\nMAINPID=77",
            b"STATUS=from a capture",
            b"READY=1\nSTATUS=a block that ends at the end of the file",
        ]
    );
    // A text block takes the time of the message before it.
    let ats: Vec<u64> = mixed.messages.iter().map(|m| m.at.as_micros()).collect();
    assert_eq!(ats, [0, 0, 250_500, 250_500]);
    assert_eq!(mixed.snapshot.main_pid, Some(77));
}

#[test]
fn crlf_bom_and_whitespace() {
    let replay =
        read("\u{feff}READY=1\r\nSTATUS=x\r\n \t\r\n  {\"hex\": \"5354415455533d79\"}  \r\n");
    assert!(replay.errors.is_empty(), "{:?}", replay.errors);
    let messages = &replay.guests[0].messages;
    assert_eq!(messages[0].bytes, b"READY=1\nSTATUS=x");
    assert_eq!(messages[1].bytes, b"STATUS=y");
    assert_eq!(messages[1].line, 4);
    assert_eq!(replay.lines, 4);
}

#[test]
fn empty_input() {
    for text in ["", "\n", "\n\n# only a comment\n"] {
        let replay = read(text);
        assert!(replay.guests.is_empty());
        assert!(replay.errors.is_empty());
        assert_eq!(replay.lines, text.matches('\n').count() as u64);
        assert_eq!(
            replay.to_json(),
            format!(
                r#"{{"guests":[],"errors":[],"errors_total":0,"lines":{},"formats":{{"capture":0,"events":0,"text":0}}}}"#,
                replay.lines
            )
        );
    }
}

#[test]
fn overlong_lines_are_skipped_without_being_buffered() {
    let long = "A".repeat(MAX_LINE_LEN + 1);
    let limit = "B".repeat(MAX_LINE_LEN - 2);
    for chunk in CHUNK_SIZES.into_iter().filter(|&c| c != 1) {
        let text = format!("{long}\nREADY=1\n\nX={limit}\n\n{long}");
        let replay = replay_chunked("g", &text, chunk);
        let lines: Vec<u64> = replay.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [1, 6], "{}", common::chunking(chunk));
        assert_eq!(
            replay.errors[0].message,
            format!("line is longer than {MAX_LINE_LEN} bytes; skipped")
        );
        let messages = &replay.guests[0].messages;
        assert_eq!(messages.len(), 2);
        // A line of exactly the limit is read; as a datagram it is too large.
        assert_eq!(messages[1].len, MAX_LINE_LEN);
        assert_eq!(messages[1].bytes.len(), MAX_DATAGRAM_LEN);
        assert_eq!(
            messages[1].rejected,
            Some(ParseError::TooLarge { len: MAX_LINE_LEN })
        );
        assert_eq!(replay.guests[0].snapshot.drops.oversize, 1);
    }
}

#[test]
fn a_text_block_too_large_for_a_datagram_is_counted_not_buffered() {
    let line = "X_LOG=0123456789abcdef";
    let lines = 100_000;
    let mut text = vec![line; lines].join("\n");
    text.push_str("\n\nREADY=1\n");
    let replay = read(&text);
    let guest = &replay.guests[0];
    let big = &guest.messages[0];
    let len = lines * (line.len() + 1) - 1;
    assert_eq!(big.len, len);
    assert_eq!(big.bytes.len(), MAX_DATAGRAM_LEN);
    assert_eq!(big.rejected, Some(ParseError::TooLarge { len }));
    assert_eq!(guest.snapshot.drops.oversize, 1);
    assert_eq!(guest.messages[1].bytes, b"READY=1");
    assert_eq!(guest.snapshot.phase, Phase::Ready);
    let json: serde_json::Value = serde_json::from_str(&replay.to_json()).unwrap();
    assert_eq!(
        json["guests"][0]["messages"][0]["error"],
        format!("datagram of {len} bytes exceeds the 4096-byte limit")
    );
}

#[test]
fn messages_and_errors_are_capped() {
    let mut text = String::new();
    for i in 0..MAX_MESSAGES + 500 {
        text.push_str(&format!("STATUS=message {i}\n\n"));
    }
    for _ in 0..MAX_ERRORS + 50 {
        text.push_str("garbage\n");
    }
    let replay = read(&text);
    let guest = &replay.guests[0];
    assert_eq!(guest.messages.len(), MAX_MESSAGES);
    assert_eq!(guest.messages_total, (MAX_MESSAGES + 500) as u64);
    assert_eq!(guest.messages[0].seq, 501, "the latest are kept");
    assert_eq!(guest.messages[0].bytes, b"STATUS=message 500");
    assert_eq!(guest.snapshot.messages, (MAX_MESSAGES + 500) as u64);
    assert_eq!(replay.errors.len(), MAX_ERRORS);
    assert_eq!(replay.errors_total, (MAX_ERRORS + 50) as u64);
    let first_bad = 2 * (MAX_MESSAGES + 500) as u64 + 1;
    assert_eq!(replay.errors[0].line, first_bad, "the first are kept");
    assert_eq!(
        replay.errors[MAX_ERRORS - 1].line,
        first_bad + MAX_ERRORS as u64 - 1
    );
}

#[test]
fn parse_datagram_reports_fields_or_the_error() {
    let json = |bytes: &[u8]| -> serde_json::Value {
        serde_json::from_str(&parse_datagram(bytes)).unwrap()
    };
    assert_eq!(
        json(b"READY=1\0"),
        serde_json::json!({"ok": true, "len": 8, "lines": ["READY=1"], "fields": {"ready": true}})
    );
    assert_eq!(
        json(b"READY=1\0STATUS=x"),
        serde_json::json!({
            "ok": false, "len": 16, "error": "embedded NUL byte at offset 7", "reason": "embedded_nul"
        })
    );
    let oversize = json(&[b'A'; MAX_DATAGRAM_LEN + 1]);
    assert_eq!(oversize["reason"], "oversize");
    assert_eq!(oversize["len"], 4097);
    let odd = json(b"STATUS=\xff\xfe caf\xc3\xa9");
    assert_eq!(odd["lines"][0], "STATUS=\u{fffd}\u{fffd} café");
    assert_eq!(odd["fields"], serde_json::json!({"ignored": ["STATUS"]}));
    assert_eq!(DATAGRAMS.len(), 9);
}
