//! The accept loop shared by every listener: limits, one task per connection, cancellation.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustix::io::Errno;
use tokio::io::AsyncRead;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{DropCause, Event, ListenerConfig, Received, Sender, read_message};

/// How long the accept loop pauses after running out of fds or memory (`EMFILE`, `ENFILE`,
/// `ENOBUFS`, `ENOMEM`) before it accepts again. Short, because each queued connection is a
/// guest's PID 1 blocked in `connect()`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Who is at the other end of an accepted connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    /// Reported in the connection's [`Event`].
    pub(crate) sender: Sender,
    /// What `max_connections_per_peer` counts by: the peer's CID.
    pub(crate) key: u32,
}

/// A listening socket the accept loop can drive.
pub(crate) trait Acceptor {
    /// An accepted connection; dropping it closes it.
    type Conn: AsyncRead + Unpin + Send + 'static;

    /// Waits for the next connection. Must be cancel-safe (no connection lost when the future
    /// is dropped), as it races cancellation in `select!`.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Conn, Peer)>> + Send;
}

/// Runs the accept loop until `cancel` fires, `events`' receiver is dropped, or accepting fails
/// fatally; then closes every open connection (their messages are lost, their guests released).
pub(crate) async fn serve<A: Acceptor>(
    acceptor: A,
    config: ListenerConfig,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
) -> io::Result<()> {
    config.validate()?;
    let total = Arc::new(Semaphore::new(config.max_connections));
    let peers = Arc::new(PeerSlots::new(config.max_connections_per_peer));
    let mut tasks = JoinSet::new();
    let result = loop {
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => break Ok(()),
            () = events.closed() => break Ok(()),
            Some(joined) = tasks.join_next() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    std::panic::resume_unwind(e.into_panic());
                }
                continue;
            }
            accepted = acceptor.accept() => accepted,
        };
        let (conn, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => match classify_accept_error(&e) {
                AcceptError::Connection => continue,
                AcceptError::Resources => {
                    tracing::warn!(error = %e, backoff = ?ACCEPT_BACKOFF, "vsock notify listener cannot accept");
                    tokio::select! {
                        () = cancel.cancelled() => break Ok(()),
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
                AcceptError::Fatal => break Err(e),
            },
        };
        let slots = match Arc::clone(&total).try_acquire_owned() {
            Err(_) => Err(DropCause::ConnectionLimit),
            Ok(permit) => match PeerSlots::try_acquire(&peers, peer.key) {
                None => Err(DropCause::PeerConnectionLimit),
                Some(slot) => Ok((permit, slot)),
            },
        };
        match slots {
            Ok(slots) => {
                tasks.spawn(handle(conn, peer.sender, config, slots, events.clone()));
            }
            Err(reason) => {
                drop(conn); // Closed unread, at once.
                let event = Event {
                    sender: peer.sender,
                    received: Received::Dropped { reason, len: 0 },
                };
                // Waiting here is backpressure: new guests wait in the listen backlog.
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break Ok(()),
                    sent = events.send(event) => if sent.is_err() { break Ok(()) },
                }
            }
        }
    };
    tasks.shutdown().await;
    result
}

/// Reads one connection, closes it, then reports. The slots are held until the event is in the
/// channel, so a slow consumer bounds how many finished messages wait in memory.
async fn handle<C: AsyncRead + Unpin>(
    mut conn: C,
    sender: Sender,
    config: ListenerConfig,
    slots: (OwnedSemaphorePermit, PeerSlot),
    events: mpsc::Sender<Event>,
) {
    let received = read_message(&mut conn, &config).await;
    // Close before anything else: the guest's PID 1 is blocked until this close. Events of one
    // guest stay in order: its next connection exists only after this close, and `send` below
    // queues on the channel (FIFO) in the same poll.
    drop(conn);
    // A dropped receiver ends the accept loop too; nothing to do here.
    let _ = events.send(Event { sender, received }).await;
    drop(slots);
}

enum AcceptError {
    /// The pending connection failed, not the listener: accept the next one at once.
    Connection,
    /// Out of fds or memory: pause, then accept again.
    Resources,
    /// The listener is unusable.
    Fatal,
}

/// `accept(2)`, "Error handling": network errors of the pending connection are to be treated
/// like `EAGAIN`. `EINTR` and `EAGAIN` also mean "try again".
fn classify_accept_error(e: &io::Error) -> AcceptError {
    let Some(errno) = e.raw_os_error().map(Errno::from_raw_os_error) else {
        return AcceptError::Fatal;
    };
    match errno {
        Errno::INTR
        | Errno::AGAIN
        | Errno::CONNABORTED
        | Errno::CONNRESET
        | Errno::PROTO
        | Errno::PERM
        | Errno::NETDOWN
        | Errno::NOPROTOOPT
        | Errno::HOSTDOWN
        | Errno::NONET
        | Errno::HOSTUNREACH
        | Errno::OPNOTSUPP
        | Errno::NETUNREACH
        | Errno::TIMEDOUT => AcceptError::Connection,
        Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM => AcceptError::Resources,
        _ => AcceptError::Fatal,
    }
}

/// Open connections per peer key, capped at `max`.
#[derive(Debug)]
struct PeerSlots {
    open: Mutex<HashMap<u32, usize>>,
    max: usize,
}

impl PeerSlots {
    fn new(max: usize) -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            max,
        }
    }

    fn try_acquire(this: &Arc<Self>, key: u32) -> Option<PeerSlot> {
        let mut open = this.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= this.max {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            slots: Arc::clone(this),
            key,
        })
    }
}

/// One open connection of a peer; dropping it frees the slot.
#[derive(Debug)]
struct PeerSlot {
    slots: Arc<PeerSlots>,
    key: u32,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_slots_count_per_key_and_free_on_drop() {
        let slots = Arc::new(PeerSlots::new(2));
        let a1 = PeerSlots::try_acquire(&slots, 3).unwrap();
        let _a2 = PeerSlots::try_acquire(&slots, 3).unwrap();
        assert!(
            PeerSlots::try_acquire(&slots, 3).is_none(),
            "third from CID 3"
        );
        let _b = PeerSlots::try_acquire(&slots, 4).expect("other CIDs are not affected");
        drop(a1);
        let _a3 = PeerSlots::try_acquire(&slots, 3).expect("slot freed on drop");
        drop((_a2, _a3, _b));
        assert!(slots.open.lock().unwrap().is_empty(), "no entries leak");
    }

    #[test]
    fn accept_errors() {
        let kind = |errno: Errno| classify_accept_error(&io::Error::from(errno));
        assert!(matches!(kind(Errno::CONNABORTED), AcceptError::Connection));
        assert!(matches!(kind(Errno::INTR), AcceptError::Connection));
        assert!(matches!(kind(Errno::MFILE), AcceptError::Resources));
        assert!(matches!(kind(Errno::NOMEM), AcceptError::Resources));
        assert!(matches!(kind(Errno::BADF), AcceptError::Fatal));
        assert!(matches!(kind(Errno::INVAL), AcceptError::Fatal));
        assert!(matches!(
            classify_accept_error(&io::Error::other("no errno")),
            AcceptError::Fatal
        ));
    }
}
