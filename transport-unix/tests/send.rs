//! The sender against our own receiver: what is sent arrives byte for byte, with the claimed
//! credentials and fds, and a barrier returns exactly when the receiver closes its fd.

use std::os::fd::AsFd;
use std::time::Duration;

use notifyhub_transport_unix::send::{UnixTarget, barrier, send_datagram};
use notifyhub_transport_unix::{NotifySocket, Received};

const LIVENESS: Duration = Duration::from_secs(10);

async fn next(socket: &NotifySocket) -> notifyhub_transport_unix::Datagram {
    match tokio::time::timeout(LIVENESS, socket.recv())
        .await
        .expect("a datagram")
        .unwrap()
    {
        Received::Datagram(datagram) => datagram,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn sends_bytes_credentials_and_fds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = NotifySocket::bind(&path).unwrap();
    let target = UnixTarget::Path(path.to_str().unwrap());

    send_datagram(target, b"READY=1\nSTATUS=hi", None, &[]).unwrap();
    let datagram = next(&socket).await;
    assert_eq!(datagram.payload, b"READY=1\nSTATUS=hi");
    assert_eq!(datagram.credentials.unwrap().pid, std::process::id());

    // Claiming our own pid explicitly, with two fds.
    let (_read, write) = rustix::pipe::pipe().unwrap();
    let fds = [write.as_fd(), write.as_fd()];
    send_datagram(target, b"FDSTORE=1", Some(std::process::id()), &fds).unwrap();
    let datagram = next(&socket).await;
    assert_eq!(
        (datagram.payload.as_slice(), datagram.fds.len()),
        (&b"FDSTORE=1"[..], 2)
    );

    // A pid we may not act for is refused by the kernel unless we are root.
    if !rustix::process::geteuid().is_root() {
        assert!(send_datagram(target, b"READY=1", Some(1), &[]).is_err());
    }
}

#[tokio::test]
async fn sending_to_nobody_fails() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent");
    let error = send_datagram(
        UnixTarget::Path(missing.to_str().unwrap()),
        b"READY=1",
        None,
        &[],
    )
    .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
}

#[tokio::test]
async fn barrier_returns_when_the_receiver_closes_the_fd() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = NotifySocket::bind(&path).unwrap();
    let path_text = path.to_str().unwrap().to_owned();

    // The receiver drops the datagram (and so its fd) at once: the barrier returns.
    let sender = tokio::task::spawn_blocking({
        let path = path_text.clone();
        move || barrier(UnixTarget::Path(&path), None, Duration::from_secs(5))
    });
    let datagram = next(&socket).await;
    assert_eq!(
        (datagram.payload.as_slice(), datagram.fds.len()),
        (&b"BARRIER=1"[..], 1)
    );
    drop(datagram);
    tokio::time::timeout(LIVENESS, sender)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // A receiver that keeps the fd makes the barrier time out.
    let sender = tokio::task::spawn_blocking(move || {
        barrier(
            UnixTarget::Path(&path_text),
            None,
            Duration::from_millis(200),
        )
    });
    let held = next(&socket).await;
    let error = tokio::time::timeout(LIVENESS, sender)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    drop(held);
}
