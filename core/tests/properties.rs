//! Properties over arbitrary input: nothing a guest sends makes the core panic or lose count.

use notifyhub_core::{Guest, MAX_DATAGRAM_LEN, ParseError, Phase, Sender, Timestamp, parse};
use proptest::prelude::*;

/// Datagrams made of protocol-like pieces, so that the interesting paths are reached often.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"READY=1".to_vec()),
        Just(b"RELOADING=1".to_vec()),
        Just(b"STOPPING=1".to_vec()),
        Just(b"X_SYSTEMD_HOSTNAME=h".to_vec()),
        Just(b"X_SYSTEMD_UNIT_ACTIVE=soft-reboot.target".to_vec()),
        Just(b"X_SYSTEMD_UNIT_ACTIVE=emergency.target".to_vec()),
        Just(b"X_SYSTEMD_UNIT_ACTIVE=shutdown.target".to_vec()),
        Just(b"X_SYSTEMD_UNIT_INACTIVE=emergency.target".to_vec()),
        Just(b"X_SYSTEMD_SHUTDOWN=reboot".to_vec()),
        Just(b"STATUS=".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"=".to_vec()),
        Just(b"\0".to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn parse_never_panics_and_keeps_every_byte(bytes in prop::collection::vec(any::<u8>(), 0..5000)) {
        match parse(&bytes) {
            Ok(message) => {
                prop_assert!(bytes.len() <= MAX_DATAGRAM_LEN);
                let payload = message.payload();
                prop_assert!(payload == &bytes[..] || (bytes.last() == Some(&0) && payload == &bytes[..bytes.len() - 1]));
                // The lines are the payload minus separators, in order.
                let joined: Vec<u8> = message.lines().flatten().copied().collect();
                let expected: Vec<u8> = payload.iter().copied().filter(|b| *b != b'\n' && *b != b'\r').collect();
                prop_assert_eq!(joined, expected);
                prop_assert!(message.lines().all(|l| !l.is_empty()));
            }
            Err(ParseError::TooLarge { len }) => prop_assert_eq!(len, bytes.len()),
            Err(ParseError::EmbeddedNul { offset }) => prop_assert_eq!(bytes[offset], 0),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn the_state_machine_never_panics_and_counts_everything(datagrams in prop::collection::vec(datagram(), 0..40)) {
        let mut guest = Guest::new("g", Timestamp::ZERO);
        let mut accepted = 0u64;
        for (i, datagram) in datagrams.iter().enumerate() {
            if guest.handle_datagram(Timestamp::from_micros(i as u64), Sender::Unknown, datagram).is_ok() {
                accepted += 1;
            }
            while guest.poll_event().is_some() {}
            let snapshot = guest.snapshot();
            prop_assert_eq!(snapshot.phase, guest.phase());
            prop_assert_eq!(snapshot.phase == Phase::Off, snapshot.shutdown.is_some());
            prop_assert_eq!(snapshot.phase == Phase::Registered, snapshot.boot_count == 0);
            // Only a boot that was ready reloads (reloading_counts_only_in_a_ready_boot).
            prop_assert!(snapshot.phase != Phase::Reloading || snapshot.ready_seen);
            prop_assert!(snapshot.active_units.windows(2).all(|w| w[0] < w[1]));
        }
        let snapshot = guest.snapshot();
        prop_assert_eq!(snapshot.messages, accepted);
        prop_assert_eq!(snapshot.messages + snapshot.drops.oversize + snapshot.drops.embedded_nul, datagrams.len() as u64);
    }
}
