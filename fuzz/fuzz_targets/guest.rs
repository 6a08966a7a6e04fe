//! A sequence of datagrams (split at 0xFF bytes) and timeouts through one guest's state machine:
//! it must not panic, and its counters must add up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use notifyhub_core::{Guest, Phase, Sender, Timestamp};

fuzz_target!(|data: &[u8]| {
    let mut guest = Guest::new("fuzz", Timestamp::ZERO);
    guest.set_ready_timeout(Some(5_000));
    let mut datagrams = 0u64;
    for (i, datagram) in data.split(|&b| b == 0xff).enumerate() {
        let now = Timestamp::from_micros(i as u64 * 1_000);
        let _ = guest.handle_datagram(now, Sender::Unknown, datagram);
        datagrams += 1;
        if let Some(deadline) = guest.poll_timeout() {
            assert!(deadline.as_micros() > 0);
            guest.handle_timeout(now.saturating_add_micros(2_000));
        }
        while guest.poll_event().is_some() {}
        let snapshot = guest.snapshot();
        assert_eq!(snapshot.phase == Phase::Off, snapshot.shutdown.is_some());
        // Only a boot that was ready reloads (core test reloading_counts_only_in_a_ready_boot).
        assert!(snapshot.phase != Phase::Reloading || snapshot.ready_seen);
    }
    let snapshot = guest.snapshot();
    assert_eq!(
        snapshot.messages + snapshot.drops.oversize + snapshot.drops.embedded_nul,
        datagrams
    );
});
