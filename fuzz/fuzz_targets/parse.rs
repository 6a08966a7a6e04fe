//! One datagram of arbitrary bytes through the parser: it must not panic, what it accepts must
//! be at most 4096 bytes with no NUL before the end, and it must agree with the parser as it was
//! before the rewrite of issue #8 (`core/tests/reference/mod.rs`, the same reference as the
//! differential proptest): the same `Message`, field for field, or the same error.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../core/tests/reference/mod.rs"]
mod reference;

fuzz_target!(|data: &[u8]| {
    let parsed = notifyhub_core::parse(data);
    match (&parsed, reference::parse(data)) {
        (Ok(message), Ok(expected)) => {
            assert_eq!(reference::from_current(message), expected);
            assert!(data.len() <= notifyhub_core::MAX_DATAGRAM_LEN);
            assert!(!message.payload().contains(&0));
            for line in message.lines() {
                assert!(!line.is_empty());
            }
        }
        (current, expected) => assert_eq!(current.as_ref().err(), expected.err().as_ref()),
    }
});
