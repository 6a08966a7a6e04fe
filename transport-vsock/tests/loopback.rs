//! One real round trip over kernel vsock: our sender to our stream listener through the
//! local (loopback) transport, CID 1. It needs `vsock_loopback` (or a transport that reaches the
//! host itself); where the connect fails for want of one, the test says SKIPPED and passes.

use std::io;
use std::time::Duration;

use notifyhub_core::VsockType;
use notifyhub_transport_vsock::send::{EofWait, send};
use notifyhub_transport_vsock::{
    End, Event, ListenerConfig, Received, Sender, VMADDR_PORT_ANY, VsockStreamListener,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `VMADDR_CID_LOCAL` (`vsock(7)`).
const LOCAL_CID: u32 = 1;
const BOUND: Duration = Duration::from_secs(10);

/// Errors that mean "no transport reaches CID 1 here", not a fault of ours.
fn no_loopback(error: &io::Error) -> bool {
    use rustix::io::Errno;
    [
        Errno::TIMEDOUT,
        Errno::NODEV,
        Errno::NETUNREACH,
        Errno::HOSTUNREACH,
        Errno::CONNRESET,
    ]
    .iter()
    .chain([Errno::AFNOSUPPORT, Errno::ADDRNOTAVAIL].iter())
    .any(|errno| error.raw_os_error() == Some(errno.raw_os_error()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_crosses_vsock_loopback() {
    let listener = match VsockStreamListener::bind(VMADDR_PORT_ANY) {
        Ok(listener) => listener,
        Err(error) if no_loopback(&error) => {
            eprintln!("SKIPPED: no usable AF_VSOCK here (bind: {error})");
            return;
        }
        Err(error) => panic!("bind: {error}"),
    };
    let port = listener.local_port();
    let (tx, mut rx) = mpsc::channel::<Event>(4);
    let cancel = CancellationToken::new();
    let server = tokio::spawn(listener.run(ListenerConfig::default(), tx, cancel.clone()));

    let sent = tokio::task::spawn_blocking(move || {
        send(
            VsockType::Stream,
            LOCAL_CID,
            port,
            b"READY=1\nSTATUS=loopback",
            EofWait::Within(BOUND),
        )
    })
    .await
    .unwrap();
    match sent {
        Err(error) if no_loopback(&error) => {
            eprintln!("SKIPPED: no vsock loopback transport here (connect to CID 1: {error})");
        }
        Err(error) => panic!("send over vsock loopback: {error}"),
        Ok(sent) => {
            let event = tokio::time::timeout(BOUND, rx.recv())
                .await
                .unwrap()
                .unwrap();
            let Received::Message { payload, end } = event.received else {
                panic!("unexpected {:?}", event.received);
            };
            assert_eq!(payload, b"READY=1\nSTATUS=loopback");
            // The sender half-closed and waited: the message ended by EOF, not the idle timeout.
            assert_eq!(end, End::Eof);
            let Sender::Vsock { cid, port } = event.sender else {
                panic!("not a vsock sender: {:?}", event.sender);
            };
            assert_eq!(cid, LOCAL_CID);
            match sent.source_port {
                // Root binds a privileged source port: the listener sees exactly that one.
                Some(source) => assert_eq!(port, Some(source)),
                None => assert!(port.is_some_and(|port| port >= 1024), "{port:?}"),
            }
        }
    }
    cancel.cancel();
    tokio::time::timeout(BOUND, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
