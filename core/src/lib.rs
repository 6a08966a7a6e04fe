//! The sd_notify protocol core of notifyhub: a parser of one datagram and a per-guest state
//! machine, fully deterministic and free of I/O.
//!
//! This crate owns the protocol: what the bytes of an sd_notify datagram mean
//! ([`parse`], [`Message`]), how a guest's messages fold into its state ([`Guest`], [`Phase`],
//! [`Snapshot`]), and the policies built on that state (what a client may wait for, [`Wait`];
//! what a guest may be named, [`validate_guest_name`]; what a `$NOTIFY_SOCKET` may say,
//! [`NotifyAddress`]). It has no networking code and never
//! reads a clock: the driver (a transport, a log replay, the browser) passes the bytes, who sent
//! them ([`Sender`]) and the time ([`Timestamp`], µs). It builds for `wasm32` and `no_std` + alloc
//! (disable the default `std` feature); the `serde` feature derives `Serialize` for the outputs,
//! and `openapi` (std only) their OpenAPI schemas (utoipa `ToSchema`) for the hub's REST API spec.
//!
//! The rules follow systemd's own receivers; `../shared/protocol.md` in the project lists each
//! with its source file.
//!
//! # The drive loop
//! ```
//! use notifyhub_core::{Event, Guest, Phase, Sender, Timestamp};
//!
//! let mut guest = Guest::new("web1", Timestamp::from_micros(0));
//! // Bytes exactly as systemd 257 sends them as PID 1 (see `../shared/vectors/`).
//! let datagrams: [&[u8]; 3] = [
//!     b"X_SYSTEMD_HOSTNAME=probe-guest",
//!     b"X_SYSTEMD_UNIT_ACTIVE=ssh-access.target",
//!     b"READY=1\nSTATUS=Ready.",
//! ];
//! for (i, datagram) in datagrams.into_iter().enumerate() {
//!     let now = Timestamp::from_micros(1_000 * i as u64);
//!     if let Err(error) = guest.handle_datagram(now, Sender::Unknown, datagram) {
//!         eprintln!("dropped: {error}"); // counted in the snapshot's `drops`
//!     }
//!     while let Some(event) = guest.poll_event() {
//!         println!("{event:?}");
//!     }
//! }
//! let snapshot = guest.snapshot();
//! assert_eq!(snapshot.phase, Phase::Ready);
//! assert_eq!(snapshot.hostname.as_deref(), Some("probe-guest"));
//! assert!(snapshot.is_active("ssh-access.target"));
//! ```
// utoipa's derives (`openapi`, which implies `std`) expand to std's prelude: `Vec`, `vec!`, …
#![cfg_attr(not(feature = "openapi"), no_std)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod address;
mod compose;
mod guest;
mod message;
mod name;
mod sender;
pub mod text;
mod time;
mod wait;

pub use address::{
    AddressError, MAX_UNIX_ADDRESS_LEN, NotifyAddress, VMADDR_CID_ANY, VMADDR_PORT_ANY, VsockType,
};
pub use compose::{ComposeError, compose};
pub use guest::{
    DropReason, Drops, Event, Guest, MAX_ACTIVE_UNITS, MAX_PENDING_EVENTS, MAX_TIMELINE, Milestone,
    Phase, Shutdown, Snapshot, UnknownPhase,
};
pub use message::{
    Key, KeySet, MAX_DATAGRAM_LEN, MAX_STATUS_LEN, Message, NotifyAccess, ParseError, Watchdog,
    is_valid_unit_name, lines, parse, split_assignment,
};
pub use name::{GuestNameError, MAX_GUEST_NAME_LEN, validate_guest_name};
pub use sender::{Credentials, Sender};
pub use time::Timestamp;
pub use wait::{BadCondition, Wait, WaitCondition, WaitOutcome};
