//! One datagram of arbitrary bytes through the parser: it must not panic, and what it accepts
//! must be at most 4096 bytes with no NUL before the end.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = notifyhub_core::parse(data) {
        assert!(data.len() <= notifyhub_core::MAX_DATAGRAM_LEN);
        assert!(!message.payload().contains(&0));
        for line in message.lines() {
            assert!(!line.is_empty());
        }
    }
});
