//! The read rule, written once for every connection type.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{DropCause, End, ListenerConfig, MAX_DATAGRAM_LEN, Received};

/// Reads one sd_notify message from `reader` by the [read rule](crate#the-read-rule): until EOF,
/// more than 4096 bytes, a quiet gap of `config.idle_timeout` after the last byte, or
/// `config.connection_deadline` after the call, whichever comes first. Never writes.
///
/// Every `read` is offered all the room left up to 4097 bytes, so on a `SOCK_SEQPACKET` socket
/// (where a record longer than the buffer is cut silently) a cut record always counts as
/// [`DropCause::Oversize`]; records are concatenated, and a 0-byte read is EOF (as `recv(2)`
/// reports a shut-down peer). `EINTR` is retried.
///
/// The caller closes `reader` once this returns; the guest's sender is blocked until it does.
/// Not cancel-safe: dropping the future loses the bytes read so far (close the connection
/// then, which releases the guest). Needs a Tokio runtime with the time driver enabled. A `config` that
/// [`ListenerConfig::validate`] refuses is used as is (e.g. an idle timeout at least as long as
/// the deadline makes the deadline win).
pub async fn read_message<R>(reader: &mut R, config: &ListenerConfig) -> Received
where
    R: AsyncRead + Unpin + ?Sized,
{
    // One spare byte: reading it proves the message is too long (rule 2).
    let mut buf = vec![0u8; MAX_DATAGRAM_LEN + 1];
    let mut filled = 0;
    // `sleep` saturates a huge duration instead of overflowing `Instant`.
    let deadline = tokio::time::sleep(config.connection_deadline);
    tokio::pin!(deadline);
    loop {
        // The idle timer runs only once a byte has arrived (rule 3).
        let idle = (filled > 0).then_some(config.idle_timeout);
        let step = tokio::select! {
            // A ready read (bytes or EOF) wins over a deadline that fired at the same time.
            biased;
            step = read_within(reader, &mut buf[filled..], idle) => step,
            () = &mut deadline => {
                return Received::Dropped { reason: DropCause::Deadline, len: filled };
            }
        };
        match step {
            None => return message(buf, filled, End::Idle),
            Some(Ok(0)) if filled == 0 => {
                return Received::Dropped {
                    reason: DropCause::Empty,
                    len: 0,
                };
            }
            Some(Ok(0)) => return message(buf, filled, End::Eof),
            Some(Ok(n)) => {
                filled += n;
                if filled > MAX_DATAGRAM_LEN {
                    return Received::Dropped {
                        reason: DropCause::Oversize,
                        len: filled,
                    };
                }
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Some(Err(e)) => {
                return Received::Dropped {
                    reason: DropCause::Read(e.kind()),
                    len: filled,
                };
            }
        }
    }
}

/// One `read`, bounded by `idle` if given; `None` if `idle` passed first.
async fn read_within<R>(
    reader: &mut R,
    buf: &mut [u8],
    idle: Option<Duration>,
) -> Option<io::Result<usize>>
where
    R: AsyncRead + Unpin + ?Sized,
{
    match idle {
        None => Some(reader.read(buf).await),
        Some(idle) => tokio::time::timeout(idle, reader.read(buf)).await.ok(),
    }
}

fn message(mut buf: Vec<u8>, len: usize, end: End) -> Received {
    buf.truncate(len);
    // Most messages are a few dozen bytes: do not keep 4 KiB each in the event queue.
    buf.shrink_to_fit();
    Received::Message { payload: buf, end }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncWriteExt, ReadBuf};
    use tokio::time::Instant;

    fn config(idle_ms: u64, deadline_ms: u64) -> ListenerConfig {
        ListenerConfig {
            idle_timeout: Duration::from_millis(idle_ms),
            connection_deadline: Duration::from_millis(deadline_ms),
            ..ListenerConfig::default()
        }
    }

    fn msg(payload: &[u8], end: End) -> Received {
        Received::Message {
            payload: payload.to_vec(),
            end,
        }
    }

    /// vsock-stream over kernel vsock: the sender writes, shuts down, and EOF ends the message.
    #[tokio::test]
    async fn whole_message_then_eof() {
        let (mut guest, mut host) = tokio::io::duplex(8192);
        guest.write_all(b"READY=1\nSTATUS=Ready.").await.unwrap();
        guest.shutdown().await.unwrap();
        let got = read_message(&mut host, &ListenerConfig::default()).await;
        assert_eq!(got, msg(b"READY=1\nSTATUS=Ready.", End::Eof));
    }

    /// EOF before any byte is no message (systemd-vmspawn acts on nothing then).
    #[tokio::test]
    async fn eof_before_any_byte_is_no_message() {
        let (guest, mut host) = tokio::io::duplex(64);
        drop(guest);
        let got = read_message(&mut host, &ListenerConfig::default()).await;
        assert_eq!(
            got,
            Received::Dropped {
                reason: DropCause::Empty,
                len: 0
            }
        );
    }

    /// Hybrid vsock loses SHUT_WR: the idle timeout after the last byte ends the message, in
    /// real time close to the idle timeout (bound: 10 × idle).
    #[tokio::test]
    async fn message_without_eof_ends_after_idle_timeout() {
        let (mut guest, mut host) = tokio::io::duplex(8192);
        let config = config(50, 5_000);
        guest.write_all(b"X_SYSTEMD_HOSTNAME=vm1").await.unwrap();
        let written = Instant::now();
        let got = read_message(&mut host, &config).await;
        let took = written.elapsed();
        assert_eq!(got, msg(b"X_SYSTEMD_HOSTNAME=vm1", End::Idle));
        assert!(took >= config.idle_timeout, "closed early: {took:?}");
        assert!(took < 10 * config.idle_timeout, "closed late: {took:?}");
        drop(guest);
    }

    /// A slow sender whose gaps stay below the idle timeout keeps the message open.
    #[tokio::test(start_paused = true)]
    async fn byte_by_byte_within_idle_keeps_reading() {
        let (mut guest, mut host) = tokio::io::duplex(64);
        let config = config(20, 2_000);
        let sender = tokio::spawn(async move {
            for byte in b"STATUS=slow but steady" {
                guest.write_all(&[*byte]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            // Then silence without EOF: the idle timeout ends it.
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(guest);
        });
        let got = read_message(&mut host, &config).await;
        assert_eq!(got, msg(b"STATUS=slow but steady", End::Idle));
        sender.abort();
    }

    /// No byte yet: the idle timer does not run (the guest connects before it writes), so a
    /// first byte after more than the idle timeout is still read.
    #[tokio::test(start_paused = true)]
    async fn idle_timer_waits_for_the_first_byte() {
        let (mut guest, mut host) = tokio::io::duplex(64);
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            guest.write_all(b"READY=1").await.unwrap();
            guest.shutdown().await.unwrap();
        });
        let got = read_message(&mut host, &config(20, 2_000)).await;
        assert_eq!(got, msg(b"READY=1", End::Eof));
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn exactly_4096_bytes_is_a_message() {
        let (mut guest, mut host) = tokio::io::duplex(8192);
        let payload = vec![b'A'; MAX_DATAGRAM_LEN];
        guest.write_all(&payload).await.unwrap();
        guest.shutdown().await.unwrap();
        let got = read_message(&mut host, &ListenerConfig::default()).await;
        assert_eq!(got, msg(&payload, End::Eof));
    }

    /// The 4097th byte drops the message whole (systemd-vmspawn; `NOTIFY_BUFFER_MAX`), at once:
    /// no waiting for EOF or the idle timeout, nothing delivered truncated.
    #[tokio::test(start_paused = true)]
    async fn byte_4097_drops_at_once() {
        let (mut guest, mut host) = tokio::io::duplex(8192);
        guest
            .write_all(&vec![b'A'; MAX_DATAGRAM_LEN + 1])
            .await
            .unwrap();
        let start = Instant::now();
        let got = read_message(&mut host, &ListenerConfig::default()).await;
        assert_eq!(
            got,
            Received::Dropped {
                reason: DropCause::Oversize,
                len: MAX_DATAGRAM_LEN + 1
            }
        );
        assert_eq!(start.elapsed(), Duration::ZERO, "no timer was awaited");
        drop(host);
        assert!(
            guest.write_all(b"more").await.is_err(),
            "peer sees the close"
        );
    }

    /// Silent after connecting: dropped at the deadline with nothing read.
    #[tokio::test(start_paused = true)]
    async fn silence_is_dropped_at_the_deadline() {
        let (_guest, mut host) = tokio::io::duplex(64);
        let start = Instant::now();
        let got = read_message(&mut host, &config(20, 2_000)).await;
        assert_eq!(
            got,
            Received::Dropped {
                reason: DropCause::Deadline,
                len: 0
            }
        );
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    /// Trickling bytes faster than the idle timeout for the whole deadline: dropped, since
    /// the bytes may be a prefix.
    #[tokio::test(start_paused = true)]
    async fn trickle_past_the_deadline_is_dropped() {
        let (mut guest, mut host) = tokio::io::duplex(8192);
        let sender = tokio::spawn(async move {
            loop {
                if guest.write_all(b"A").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let start = Instant::now();
        let got = read_message(&mut host, &config(20, 1_000)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        match got {
            Received::Dropped {
                reason: DropCause::Deadline,
                len,
            } => assert!((95..=101).contains(&len), "{len}"),
            other => panic!("expected a deadline drop, got {other:?}"),
        }
        drop(host);
        sender.await.unwrap();
    }

    /// Yields `data` in one read, then fails with `kind`.
    struct FailAfter {
        data: Option<&'static [u8]>,
        kind: io::ErrorKind,
        interrupted_first: bool,
    }

    impl AsyncRead for FailAfter {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if std::mem::take(&mut self.interrupted_first) {
                return Poll::Ready(Err(io::ErrorKind::Interrupted.into()));
            }
            match self.data.take() {
                Some(data) => {
                    buf.put_slice(data);
                    Poll::Ready(Ok(()))
                }
                None => Poll::Ready(Err(self.kind.into())),
            }
        }
    }

    #[tokio::test]
    async fn read_error_drops_what_arrived_and_eintr_is_retried() {
        let mut reader = FailAfter {
            data: Some(b"READY=1"),
            kind: io::ErrorKind::ConnectionReset,
            interrupted_first: true,
        };
        let got = read_message(&mut reader, &ListenerConfig::default()).await;
        assert_eq!(
            got,
            Received::Dropped {
                reason: DropCause::Read(io::ErrorKind::ConnectionReset),
                len: 7
            }
        );
    }
}
