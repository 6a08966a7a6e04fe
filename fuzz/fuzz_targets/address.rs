//! Arbitrary `$NOTIFY_SOCKET` strings: parsing must not panic, and what parses prints back to a
//! string that parses to the same address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use notifyhub_core::NotifyAddress;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(address) = text.parse::<NotifyAddress>()
    {
        assert_eq!(address.to_string().parse::<NotifyAddress>(), Ok(address));
    }
});
