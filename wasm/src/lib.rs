//! WebAssembly bindings of notifyhub's protocol core, for parsing and replaying logs in the
//! browser with the same code the hub runs.
//!
//! Not built yet: the wasm-bindgen exports and their build come with the viewer. What exists is
//! the pure function they will wrap, so that its native behaviour is pinned by tests now.

use notifyhub_core::{Guest, Sender, Snapshot, Timestamp};

/// Folds `datagrams` (µs since the Unix epoch, raw bytes), in order, into the snapshot of one
/// guest named `name`. Datagrams that fail to parse are counted in the snapshot's `drops`.
pub fn fold<'a>(
    name: &str,
    datagrams: impl IntoIterator<Item = (Timestamp, &'a [u8])>,
) -> Snapshot {
    let mut guest = Guest::new(name, Timestamp::ZERO);
    for (now, datagram) in datagrams {
        // A rejected datagram is already counted in the snapshot's drops.
        let _ = guest.handle_datagram(now, Sender::Unknown, datagram);
        while guest.poll_event().is_some() {}
    }
    guest.snapshot()
}
