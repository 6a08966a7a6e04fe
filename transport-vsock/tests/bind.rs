//! Binding the kernel vsock listeners. No end-to-end test: a host needs a vsock transport that
//! can reach itself (`vsock_loopback`) for that, and a test machine may have none.
//!
//! A machine without `AF_VSOCK` or any vsock transport fails the bind with exactly one of
//! `EAFNOSUPPORT`, `EADDRNOTAVAIL` or `ENODEV`; the tests then say so on stderr and pass. Any
//! other error fails them.

use std::io;
use std::time::Duration;

use notifyhub_transport_vsock::{
    Event, ListenerConfig, VMADDR_PORT_ANY, VsockSeqpacketListener, VsockStreamListener,
};
use rustix::io::Errno;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `Some(listener)`, or `None` if this machine has no usable vsock (said on stderr).
fn usable<T>(kind: &str, bound: io::Result<T>) -> Option<T> {
    match bound {
        Ok(listener) => Some(listener),
        Err(e)
            if [Errno::AFNOSUPPORT, Errno::ADDRNOTAVAIL, Errno::NODEV]
                .iter()
                .any(|errno| e.raw_os_error() == Some(errno.raw_os_error())) =>
        {
            eprintln!("SKIPPED: no usable AF_VSOCK here ({kind} bind: {e})");
            None
        }
        Err(e) => panic!("{kind} bind failed: {e}"),
    }
}

/// Runs `listener.run` briefly, cancels it, and checks it returns `Ok` at once.
async fn run_then_cancel<F>(run: impl FnOnce(mpsc::Sender<Event>, CancellationToken) -> F)
where
    F: Future<Output = io::Result<()>> + Send + 'static,
{
    let (tx, _rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(tx, cancel.clone()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!task.is_finished(), "run ended before cancellation");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("run ends at once on cancellation")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn stream_binds_any_cid_and_port_is_exclusive() {
    let Some(listener) = usable("stream", VsockStreamListener::bind(VMADDR_PORT_ANY)) else {
        return;
    };
    let port = listener.local_port();
    assert_ne!(port, VMADDR_PORT_ANY, "the kernel picked a port");
    let err = VsockStreamListener::bind(port).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");

    run_then_cancel(|tx, cancel| listener.run(ListenerConfig::default(), tx, cancel)).await;
    // The port is free again once `run` has returned.
    VsockStreamListener::bind(port).unwrap();
}

#[tokio::test]
async fn seqpacket_binds_any_cid() {
    let Some(listener) = usable("seqpacket", VsockSeqpacketListener::bind(VMADDR_PORT_ANY)) else {
        return;
    };
    let port = listener.local_port();
    assert_ne!(port, VMADDR_PORT_ANY);
    // STREAM and SEQPACKET share the kernel's port space (`vsock_bind_table`): one port
    // cannot serve both forms.
    let err = VsockStreamListener::bind(port).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    run_then_cancel(|tx, cancel| listener.run(ListenerConfig::default(), tx, cancel)).await;
    VsockSeqpacketListener::bind(port).unwrap();
}
