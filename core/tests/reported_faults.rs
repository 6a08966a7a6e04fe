//! Faults users reported against notifyhub, one named row each, so that none comes back; plus
//! the round trip `compose` → `parse` that `notifyhub send` relies on.

use notifyhub_core::{Guest, Phase, Sender, Snapshot, Timestamp, compose, parse};
use proptest::prelude::*;

/// A guest fed `datagrams` (one message each) 1 ms apart; its snapshot.
fn fed(datagrams: &[&[u8]]) -> Snapshot {
    let mut guest = Guest::new("g", Timestamp::ZERO);
    for (i, datagram) in datagrams.iter().enumerate() {
        let now = Timestamp::from_micros(1_000 * (i as u64 + 1));
        let _ = guest.handle_datagram(now, Sender::Unknown, datagram);
        while guest.poll_event().is_some() {}
    }
    guest.snapshot()
}

/// Each row: the fault as reported, the datagrams, and a check of the snapshot.
type Row = (
    &'static str,
    &'static [&'static [u8]],
    fn(&Snapshot) -> bool,
);

const SNAPSHOT_FAULTS: &[Row] = &[
    (
        "MAINPID= in one datagram and READY=1 in the next: the first was lost",
        &[b"MAINPID=4242", b"READY=1"],
        |s| s.main_pid == Some(4242) && s.ready_seen && s.phase == Phase::Ready,
    ),
    (
        "READY=1 with STATUS= and an unknown X_ key: the status was dropped",
        &[b"READY=1\nSTATUS=Running\nX_FOO=1"],
        |s| s.status.as_deref() == Some("Running") && s.ready_seen,
    ),
    (
        "a non-ASCII STATUS= came back mangled",
        &[b"STATUS=ok \xe2\x9c\x93"],
        |s| s.status.as_deref() == Some("ok ✓"),
    ),
    (
        "invalid UTF-8 in STATUS= threw away READY=1 of the same datagram",
        &[b"STATUS=before", b"READY=1\nSTATUS=bad \xff\xfe"],
        |s| s.ready_seen && s.phase == Phase::Ready && s.status.as_deref() == Some("before"),
    ),
];

#[test]
fn reported_faults_stay_fixed_in_the_snapshot() {
    for (fault, datagrams, check) in SNAPSHOT_FAULTS {
        let snapshot = fed(datagrams);
        assert!(check(&snapshot), "{fault}: {snapshot:#?}");
        assert_eq!(snapshot.messages, datagrams.len() as u64, "{fault}");
    }
}

/// The same faults, seen by the parser alone.
#[test]
fn reported_faults_stay_fixed_in_the_parser() {
    let message = parse(b"READY=1\nSTATUS=Running\nX_FOO=1").unwrap();
    assert_eq!(
        (message.ready, message.status),
        (true, Some("Running")),
        "READY=1 with STATUS= and an unknown X_ key"
    );
    assert_eq!(
        message.lines().collect::<Vec<_>>(),
        [&b"READY=1"[..], b"STATUS=Running", b"X_FOO=1"],
        "an unknown X_ key is still data in lines()"
    );

    let message = parse("STATUS=ok ✓".as_bytes()).unwrap();
    assert_eq!(
        message.status,
        Some("ok ✓"),
        "a non-ASCII STATUS= kept exactly"
    );

    let message = parse(b"READY=1\nSTATUS=bad \xff\xfe").unwrap();
    assert_eq!(
        (message.ready, message.status),
        (true, None),
        "invalid UTF-8 STATUS= ignored, READY=1 of the same datagram applies"
    );

    let message = parse(b"MAINPID=4242").unwrap();
    assert_eq!(message.main_pid, Some(4242), "MAINPID= alone");
}

/// A valid assignment: key `[A-Z_]{1,12}`, value without `\n`, `\r` or NUL.
fn assignment() -> impl Strategy<Value = String> {
    ("[A-Z_]{1,12}", "[^\n\r\0]{0,40}").prop_map(|(key, value)| format!("{key}={value}"))
}

proptest! {
    #[test]
    fn compose_then_parse_gives_back_the_assignments(
        list in prop::collection::vec(assignment(), 1..12)
    ) {
        let message = compose(list.iter().map(String::as_str)).unwrap();
        prop_assert!(!message.ends_with('\n'));
        let parsed = parse(message.as_bytes()).unwrap();
        let lines: Vec<&[u8]> = parsed.lines().collect();
        let expected: Vec<&[u8]> = list.iter().map(String::as_bytes).collect();
        prop_assert_eq!(lines, expected);
    }

    #[test]
    fn parse_never_panics_on_composed_or_raw_bytes(
        list in prop::collection::vec(assignment(), 0..12),
        raw in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = list.join("\n").into_bytes();
        bytes.extend_from_slice(&raw);
        let _ = parse(&bytes);
    }
}
