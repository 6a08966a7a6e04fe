//! Receiving: payloads, credentials, size limit and fds, over real sockets in a temp dir.

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use notifyhub_core::{Credentials, MAX_DATAGRAM_LEN, Sender};
use notifyhub_transport_unix::{Datagram, DropCause, MAX_FDS_PER_DATAGRAM, NotifySocket, Received};
use rustix::io::{Errno, FdFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use rustix::pipe::PipeFlags;

/// A local recv takes well under a millisecond; 5 s is far beyond 10× that.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

async fn recv(sock: &NotifySocket) -> Received {
    tokio::time::timeout(RECV_TIMEOUT, sock.recv())
        .await
        .expect("recv timed out")
        .expect("recv failed")
}

async fn recv_datagram(sock: &NotifySocket) -> Datagram {
    match recv(sock).await {
        Received::Datagram(d) => d,
        other => panic!("expected a datagram, got {other:?}"),
    }
}

fn own_credentials() -> Credentials {
    Credentials {
        pid: std::process::id(),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
    }
}

fn send(path: &Path, bytes: &[u8]) {
    let client = UnixDatagram::unbound().unwrap();
    assert_eq!(client.send_to(bytes, path).unwrap(), bytes.len());
}

/// Sends `bytes` with `fds` as `SCM_RIGHTS`.
fn send_with_fds(path: &Path, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) {
    let client = UnixDatagram::unbound().unwrap();
    client.connect(path).unwrap();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    assert!(anc.push(SendAncillaryMessage::ScmRights(fds)));
    let n = rustix::net::sendmsg(
        &client,
        &[IoSlice::new(bytes)],
        &mut anc,
        SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(n, bytes.len());
}

/// A pipe whose read end does not block, so "still open" shows as EAGAIN and "all write ends
/// closed" as a 0-byte read.
fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).unwrap()
}

fn read_end_state(r: &OwnedFd) -> Result<usize, Errno> {
    let mut byte = [0u8; 1];
    rustix::io::read(r, &mut byte)
}

fn bind(dir: &tempfile::TempDir) -> NotifySocket {
    NotifySocket::bind(&dir.path().join("notify")).unwrap()
}

#[tokio::test]
async fn ready_arrives_with_own_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let sock = bind(&dir);
    send(sock.path(), b"READY=1");
    let d = recv_datagram(&sock).await;
    assert_eq!(d.payload, b"READY=1");
    assert_eq!(d.credentials, Some(own_credentials()));
    assert!(d.fds.is_empty());
    assert_eq!(
        d.sender(),
        Sender::Unix {
            credentials: Some(own_credentials())
        }
    );
}

#[tokio::test]
async fn bytes_arrive_exactly_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let sock = bind(&dir);
    let messages: [&[u8]; 4] = [
        b"READY=1\n",
        b"STATUS=a\r\nX_A=\\x\n\n",
        b"A=1\0B",
        &[0xff, 0xfe, b'\n'],
    ];
    for m in messages {
        send(sock.path(), m);
    }
    for m in messages {
        assert_eq!(recv_datagram(&sock).await.payload, m);
    }
}

#[tokio::test]
async fn empty_datagram_is_an_empty_payload() {
    let dir = tempfile::tempdir().unwrap();
    let sock = bind(&dir);
    send(sock.path(), b"");
    send(sock.path(), b"READY=1");
    let d = recv_datagram(&sock).await;
    assert_eq!(d.payload, b"");
    assert_eq!(d.credentials, Some(own_credentials()));
    // Not an end of stream: the socket keeps delivering.
    assert_eq!(recv_datagram(&sock).await.payload, b"READY=1");
}

#[tokio::test]
async fn size_limit_is_4096_and_longer_is_dropped_whole() {
    assert_eq!(MAX_DATAGRAM_LEN, 4096);
    let dir = tempfile::tempdir().unwrap();
    let sock = bind(&dir);
    let exact: Vec<u8> = (0..MAX_DATAGRAM_LEN)
        .map(|i| b'A' + (i % 26) as u8)
        .collect();
    let over = vec![b'x'; MAX_DATAGRAM_LEN + 1];
    let huge = vec![b'y'; 60_000];
    send(sock.path(), b"BEFORE=1");
    send(sock.path(), &exact);
    send(sock.path(), &over);
    send(sock.path(), &huge);
    send(sock.path(), b"AFTER=1");

    assert_eq!(recv_datagram(&sock).await.payload, b"BEFORE=1");
    assert_eq!(recv_datagram(&sock).await.payload, exact);
    for want in [MAX_DATAGRAM_LEN + 1, 60_000] {
        match recv(&sock).await {
            Received::Dropped {
                reason,
                credentials,
                len,
            } => {
                assert_eq!(reason, DropCause::Oversize);
                assert_eq!(credentials, Some(own_credentials()));
                assert_eq!(len, Some(want), "real length via MSG_TRUNC");
            }
            other => panic!("expected Oversize, got {other:?}"),
        }
    }
    assert_eq!(recv_datagram(&sock).await.payload, b"AFTER=1");
}

#[tokio::test]
async fn fds_are_handed_over_and_closed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let sock = bind(&dir);
    let (r1, w1) = pipe();
    let (r2, w2) = pipe();
    send_with_fds(sock.path(), b"FDSTORE=1", &[w1.as_fd(), w2.as_fd()]);
    drop((w1, w2)); // only the received copies keep the pipes open now

    let d = recv_datagram(&sock).await;
    assert_eq!(d.payload, b"FDSTORE=1");
    assert_eq!(d.credentials, Some(own_credentials()));
    assert_eq!(d.fds.len(), 2);
    for fd in &d.fds {
        let flags = rustix::io::fcntl_getfd(fd).unwrap();
        assert!(flags.contains(FdFlags::CLOEXEC), "MSG_CMSG_CLOEXEC");
    }
    assert_eq!(read_end_state(&r1), Err(Errno::AGAIN), "still open");
    assert_eq!(read_end_state(&r2), Err(Errno::AGAIN), "still open");

    drop(d);
    assert_eq!(
        read_end_state(&r1),
        Ok(0),
        "EOF once the datagram is dropped"
    );
    assert_eq!(
        read_end_state(&r2),
        Ok(0),
        "EOF once the datagram is dropped"
    );
}

#[tokio::test]
async fn the_kernel_limit_of_253_fds_fits() {
    let dir = tempfile::tempdir().unwrap();
    let sock = bind(&dir);
    let (r, w) = pipe();
    let fds = vec![w.as_fd(); MAX_FDS_PER_DATAGRAM];
    send_with_fds(sock.path(), b"MANY=1", &fds);

    // One more is refused by the sender's kernel (SCM_MAX_FD), so 253 is all we must hold.
    let client = UnixDatagram::unbound().unwrap();
    client.connect(sock.path()).unwrap();
    let too_many = vec![w.as_fd(); MAX_FDS_PER_DATAGRAM + 1];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(too_many.len()))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    assert!(anc.push(SendAncillaryMessage::ScmRights(&too_many)));
    assert_eq!(
        rustix::net::sendmsg(&client, &[IoSlice::new(b"X")], &mut anc, SendFlags::empty()),
        Err(Errno::INVAL)
    );
    drop(w);

    let d = recv_datagram(&sock).await;
    assert_eq!(d.payload, b"MANY=1");
    assert_eq!(d.fds.len(), MAX_FDS_PER_DATAGRAM);
    assert_eq!(read_end_state(&r), Err(Errno::AGAIN));
    drop(d);
    assert_eq!(read_end_state(&r), Ok(0));
}

#[tokio::test]
async fn fds_of_a_dropped_datagram_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let sock = bind(&dir);
    let (r, w) = pipe();
    send_with_fds(
        sock.path(),
        &vec![b'x'; MAX_DATAGRAM_LEN + 10],
        &[w.as_fd()],
    );
    drop(w);
    match recv(&sock).await {
        Received::Dropped { reason, len, .. } => {
            assert_eq!(reason, DropCause::Oversize);
            assert_eq!(len, Some(MAX_DATAGRAM_LEN + 10));
        }
        other => panic!("expected Oversize, got {other:?}"),
    }
    assert_eq!(
        read_end_state(&r),
        Ok(0),
        "the dropped datagram's fd is closed"
    );
}

#[tokio::test]
async fn recv_is_cancel_safe() {
    let dir = tempfile::tempdir().unwrap();
    let sock = bind(&dir);
    // Nothing queued: a recv that is cancelled must not eat the next datagram.
    let cancelled = tokio::time::timeout(Duration::from_millis(50), sock.recv()).await;
    assert!(cancelled.is_err(), "nothing was sent, recv must still wait");
    send(sock.path(), b"READY=1");
    assert_eq!(recv_datagram(&sock).await.payload, b"READY=1");
}

#[tokio::test]
async fn concurrent_senders_all_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let sock = bind(&dir);
    let path = sock.path().to_path_buf();
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    send(&path, format!("X_T={t}\nX_I={i}").as_bytes());
                }
            })
        })
        .collect();
    let mut got = Vec::new();
    for _ in 0..100 {
        got.push(String::from_utf8(recv_datagram(&sock).await.payload).unwrap());
    }
    for s in senders {
        s.join().unwrap();
    }
    got.sort();
    let mut want: Vec<String> = (0..4)
        .flat_map(|t| (0..25).map(move |i| format!("X_T={t}\nX_I={i}")))
        .collect();
    want.sort();
    assert_eq!(got, want);
}

/// `recv_batch` over more datagrams than one `recvmmsg()` takes (64): all arrive in order with
/// credentials, the most fds a datagram can carry arrive too wherever they land in a batch, and
/// an oversize one is dropped with its fd closed. A thread sends, as the kernel's queue of a
/// datagram socket is short (`net.unix.max_dgram_qlen`, 10 by default) and a sender waits.
#[tokio::test]
async fn recv_batch_spans_several_calls_with_fds_and_drops() {
    let dir = tempfile::tempdir().unwrap();
    let sock = bind(&dir);
    let (r, w) = pipe();
    let (r_oversize, w_oversize) = pipe();
    let path = sock.path().to_path_buf();
    let sender = std::thread::spawn(move || {
        let many = vec![w.as_fd(); MAX_FDS_PER_DATAGRAM];
        for i in 0..150 {
            let payload = format!("X_N={i}");
            match i {
                70 | 149 => send_with_fds(&path, payload.as_bytes(), &many),
                100 => send_with_fds(
                    &path,
                    &vec![b'x'; MAX_DATAGRAM_LEN + 1],
                    &[w_oversize.as_fd()],
                ),
                _ => send(&path, payload.as_bytes()),
            }
        }
    });

    let mut batch = Vec::new();
    while batch.len() < 150 {
        tokio::time::timeout(RECV_TIMEOUT, sock.recv_batch(&mut batch, 256))
            .await
            .expect("recv_batch timed out")
            .expect("recv_batch failed");
    }
    sender.join().unwrap();
    assert_eq!(batch.len(), 150);
    assert_eq!(read_end_state(&r_oversize), Ok(0), "the oversize one's fd");
    for (i, received) in batch.iter().enumerate() {
        match (i, received) {
            (100, Received::Dropped { reason, len, .. }) => {
                assert_eq!(*reason, DropCause::Oversize);
                assert_eq!(*len, Some(MAX_DATAGRAM_LEN + 1));
            }
            (_, Received::Datagram(d)) => {
                assert_eq!(d.payload, format!("X_N={i}").as_bytes());
                assert_eq!(d.credentials, Some(own_credentials()));
                let fds = if i == 70 || i == 149 {
                    MAX_FDS_PER_DATAGRAM
                } else {
                    0
                };
                assert_eq!(d.fds.len(), fds, "datagram {i}");
            }
            (_, other) => panic!("datagram {i}: {other:?}"),
        }
    }
    assert_eq!(read_end_state(&r), Err(Errno::AGAIN), "held by the batch");
    drop(batch);
    assert_eq!(read_end_state(&r), Ok(0));
}
