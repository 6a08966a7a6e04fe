//! The `AF_VSOCK` side of notifyhub: how VM guests reach the hub.
//!
//! A guest's PID 1, given `vmm.notify_socket=vsock-stream:2:PORT` (or `vsock:`/`vsock-seqpacket:`),
//! sends each sd_notify message over a connection of its own (`pid_notify_with_fds_internal()`,
//! `src/libsystemd/sd-daemon/sd-daemon.c`, since v256): it connects, writes the message, calls
//! `shutdown(SHUT_WR)` and **blocks until it reads EOF**; a byte read back fails it with `EPROTO`.
//! So this crate turns each connection into exactly one [`Event`]: it reads the message, closes
//! the connection at once (the guest's PID 1 waits for that close) and never writes a byte.
//!
//! Three listeners, one read rule ([`read_message`]) and one accept loop behind each `run`:
//!
//! | listener | socket | guest address | [`Event::sender`] |
//! |---|---|---|---|
//! | [`VsockStreamListener`] | kernel `AF_VSOCK` `SOCK_STREAM` on `(VMADDR_CID_ANY, port)` | `vsock-stream:2:PORT` | [`Sender::Vsock`] with the peer's CID and source port |
//! | [`VsockSeqpacketListener`] | kernel `AF_VSOCK` `SOCK_SEQPACKET` on `(VMADDR_CID_ANY, port)` | `vsock:2:PORT` on virtio-vsock (no `SOCK_DGRAM` there), `vsock-seqpacket:2:PORT` | as above |
//! | [`HybridListener`] | `AF_UNIX` `SOCK_STREAM` at `<uds_path>_<port>` | `vsock-stream:2:PORT` in a Firecracker, cloud-hypervisor or `vhost-device-vsock` guest ("hybrid vsock") | [`Sender::Vsock`] with the configured guest CID and no port (the bridge hides it) |
//!
//! # The read rule
//!
//! Bytes are read until one of these ends the connection, checked in this order of precedence:
//!
//! 1. **EOF**: the message is complete ([`End::Eof`]). 0 bytes then EOF is **no message**
//!    ([`DropCause::Empty`]): systemd-vmspawn reads such a connection to EOF, splits nothing and
//!    acts on nothing (`src/vmspawn/vmspawn.c`), and a stream connection, unlike a datagram, can
//!    carry no fds or credentials that would make an empty one mean something (PID 1 processes
//!    a 0-byte *datagram* for those, `notify_recv_with_fds_strv()`). So a peer that connects and
//!    closes (a probe, an idle client) never shows up as a guest's message.
//! 2. **More than 4096 bytes** ([`MAX_DATAGRAM_LEN`], systemd's `NOTIFY_BUFFER_MAX`,
//!    `src/basic/constants.h`): the 4097th byte drops the message whole, never truncated
//!    ([`DropCause::Oversize`]), as systemd-vmspawn does (it reads into 4096 + 1 bytes and fails
//!    the connection on more; `src/vmspawn/vmspawn.c`).
//! 3. **Idle timeout** ([`ListenerConfig::idle_timeout`], default 20 ms): once at least one byte
//!    has arrived, a quiet gap that long after the last byte completes the message
//!    ([`End::Idle`]). Needed because VMM vsock bridges lose the guest's half-close: Firecracker's
//!    and `vhost-device-vsock`'s hybrid mode never forward `SHUT_WR`, so EOF never comes and a
//!    read-to-EOF receiver stalls the guest's boot (each message blocks PID 1 until the receiver
//!    closes; a 2 s EOF timeout made one boot take 95 s instead of 23 s). The timer does not run
//!    before the first byte: the guest connects before it writes, and under emulation the gap
//!    between the two can be long.
//! 4. **Connection deadline** ([`ListenerConfig::connection_deadline`], default 2 s) after the
//!    connection was accepted: whatever arrived is **dropped** ([`DropCause::Deadline`]), even if
//!    non-empty. Neither EOF nor a quiet gap showed the sender had finished, so the bytes may be a
//!    prefix (`STATUS=Rea` of `STATUS=Ready.`) and a prefix is not what the guest said. It only
//!    happens to a peer that connects and stays silent, or trickles bytes faster than the idle
//!    timeout for the whole deadline.
//! 5. **Read error** ([`DropCause::Read`]): what arrived is dropped.
//!
//! The connection is closed as soon as the rule has decided, before the [`Event`] is sent.
//!
//! # Limits
//!
//! At most [`ListenerConfig::max_connections`] connections are read at once per listener, and
//! at most [`ListenerConfig::max_connections_per_peer`] from one peer (one CID; for a
//! [`HybridListener`] the whole listener is one peer). A connection over either limit is closed
//! at once, unread, and reported ([`DropCause::ConnectionLimit`],
//! [`DropCause::PeerConnectionLimit`]): a guest's PID 1 sends one message at a time, so only a
//! misbehaving guest reaches them, and closing (rather than queueing) keeps it from stalling.
//! A connection keeps its slot until its event is in the channel, so a slow consumer bounds the
//! memory this crate holds.
//!
//! Like `notifyhub-transport-unix`, this crate does no protocol logic (no parsing: see
//! `notifyhub-core`) and stamps no times: the caller stamps each [`Event`] when it receives it.
//!
//! # Example
//! ```no_run
//! use notifyhub_transport_vsock::{ListenerConfig, VsockStreamListener};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> std::io::Result<()> {
//! let listener = VsockStreamListener::bind(9999)?; // hand out vsock-stream:2:9999
//! let (tx, mut rx) = tokio::sync::mpsc::channel(64);
//! let cancel = CancellationToken::new();
//! let task = tokio::spawn(listener.run(ListenerConfig::default(), tx, cancel.clone()));
//! while let Some(event) = rx.recv().await {
//!     println!("{:?}: {:?}", event.sender, event.received);
//! }
//! cancel.cancel();
//! task.await.expect("listener panicked")?;
//! # Ok(())
//! # }
//! ```

use std::io;
use std::time::Duration;

pub use notifyhub_core::{MAX_DATAGRAM_LEN, Sender, VMADDR_CID_ANY, VMADDR_PORT_ANY};

mod hybrid;
mod kernel;
mod read;
pub mod send;
mod serve;

pub use hybrid::{DEFAULT_SOCKET_MODE, HybridListener, MAX_SOCKET_PATH_LEN};
pub use kernel::{VsockSeqpacketListener, VsockStreamListener};
pub use read::read_message;

/// Default [`ListenerConfig::idle_timeout`]: 20 ms. A message of at most 4096 bytes arrives in
/// one read over every bridge measured (QEMU + `vhost-device-vsock`, systemd 257); 20 ms adds
/// 20 ms per message to a guest whose bridge loses the half-close.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_millis(20);

/// Default [`ListenerConfig::connection_deadline`]: 2 s.
pub const DEFAULT_CONNECTION_DEADLINE: Duration = Duration::from_secs(2);

/// Default [`ListenerConfig::max_connections`]: 256 connections (each holds one fd and a
/// 4097-byte buffer, about 1 MiB in all).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Default [`ListenerConfig::max_connections_per_peer`]: 8. systemd's PID 1 has at most one
/// connection open (it blocks on each), `systemd-shutdown` one more.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 8;

/// Timeouts and limits of a listener's `run` and of [`read_message`].
///
/// Build it from [`Default`] and set fields (the struct is `#[non_exhaustive]`):
/// ```
/// # use notifyhub_transport_vsock::ListenerConfig;
/// # use std::time::Duration;
/// let mut config = ListenerConfig::default();
/// config.idle_timeout = Duration::from_millis(50);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerConfig {
    /// Quiet gap after the last byte that completes a message whose EOF has not come
    /// (rule 3 of the [crate docs](crate#the-read-rule)). Default [`DEFAULT_IDLE_TIMEOUT`]
    /// (20 ms). Must be non-zero and shorter than `connection_deadline`.
    pub idle_timeout: Duration,
    /// Longest time a connection may stay open, from accept to close (rule 4: what arrived
    /// by then is dropped). Default [`DEFAULT_CONNECTION_DEADLINE`] (2 s). It is also how long
    /// a guest that connects and stays silent blocks before it is closed.
    pub connection_deadline: Duration,
    /// Most connections one listener reads at once. Default [`DEFAULT_MAX_CONNECTIONS`] (256).
    /// Must be at least 1 and at most `tokio::sync::Semaphore::MAX_PERMITS`.
    pub max_connections: usize,
    /// Most connections one peer (one CID) may have open at once. Default
    /// [`DEFAULT_MAX_CONNECTIONS_PER_PEER`] (8). Must be at least 1.
    pub max_connections_per_peer: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connection_deadline: DEFAULT_CONNECTION_DEADLINE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
        }
    }
}

impl ListenerConfig {
    /// Checks the constraints documented on each field.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] naming the first field that breaks its constraint.
    pub fn validate(&self) -> io::Result<()> {
        let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if self.idle_timeout.is_zero() {
            return invalid("idle_timeout must be non-zero".to_owned());
        }
        if self.idle_timeout >= self.connection_deadline {
            return invalid(format!(
                "idle_timeout ({:?}) must be shorter than connection_deadline ({:?})",
                self.idle_timeout, self.connection_deadline
            ));
        }
        if !(1..=tokio::sync::Semaphore::MAX_PERMITS).contains(&self.max_connections) {
            return invalid(format!(
                "max_connections must be between 1 and {}, not {}",
                tokio::sync::Semaphore::MAX_PERMITS,
                self.max_connections
            ));
        }
        if self.max_connections_per_peer == 0 {
            return invalid("max_connections_per_peer must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// What one connection produced, with who made it. Sent by every listener's `run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Who connected: for kernel vsock the peer's CID and source port as `accept()` reported
    /// them (a port below 1024 means the sender was root in the guest, `sd_notify(3)`); for a
    /// [`HybridListener`] see there.
    pub sender: Sender,
    /// The message, or why there is none.
    pub received: Received,
}

/// The outcome of reading one connection ([`read_message`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A whole message: the bytes sent, exactly.
    Message {
        /// 1 to [`MAX_DATAGRAM_LEN`] (4096) bytes (0 bytes is [`DropCause::Empty`]).
        payload: Vec<u8>,
        /// What showed the message was complete.
        end: End,
    },
    /// No message: the connection's bytes were dropped whole.
    Dropped {
        /// Why.
        reason: DropCause,
        /// Bytes read before the drop: 0 for the connection limits, 4097 for
        /// [`DropCause::Oversize`] (the rest is never read, so the real length is unknown).
        len: usize,
    },
}

/// What completed a [`Received::Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum End {
    /// The peer shut down its side (EOF): the normal end over kernel vsock.
    Eof,
    /// No byte came for [`ListenerConfig::idle_timeout`] after the last one: the normal end
    /// over a bridge that loses the half-close (hybrid vsock).
    Idle,
}

/// Why a connection produced no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropCause {
    /// More than [`MAX_DATAGRAM_LEN`] (4096) bytes: dropped whole, as systemd-vmspawn does.
    Oversize,
    /// [`ListenerConfig::connection_deadline`] passed with neither EOF nor a quiet gap of
    /// [`ListenerConfig::idle_timeout`]; what arrived may be a prefix.
    Deadline,
    /// Reading failed (e.g. the peer reset the connection); the kind of the error.
    Read(io::ErrorKind),
    /// EOF before the first byte: the peer connected and closed without a message.
    Empty,
    /// [`ListenerConfig::max_connections`] connections were already open; closed unread.
    ConnectionLimit,
    /// The peer already had [`ListenerConfig::max_connections_per_peer`] connections open;
    /// closed unread.
    PeerConnectionLimit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        ListenerConfig::default().validate().unwrap();
    }

    #[test]
    fn config_constraints() {
        let check = |f: fn(&mut ListenerConfig), field: &str| {
            let mut config = ListenerConfig::default();
            f(&mut config);
            let err = config.validate().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains(field), "{err}");
        };
        check(|c| c.idle_timeout = Duration::ZERO, "idle_timeout");
        check(|c| c.idle_timeout = c.connection_deadline, "idle_timeout");
        check(|c| c.max_connections = 0, "max_connections");
        check(
            |c| c.max_connections = tokio::sync::Semaphore::MAX_PERMITS + 1,
            "max_connections",
        );
        check(
            |c| c.max_connections_per_peer = 0,
            "max_connections_per_peer",
        );
    }
}
