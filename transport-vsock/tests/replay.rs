//! Real systemd 257 boots replayed through a `HybridListener`, one connection per message as a
//! guest's PID 1 sends them over vsock: the core must end in the same state as when it is fed
//! the captured datagrams directly.
//!
//! Half the connections end with `shutdown(Write)` (kernel vsock: EOF), half never half-close
//! (Firecracker, `vhost-device-vsock`: the bridge loses `SHUT_WR`, the idle timeout ends them).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notifyhub_core::{Guest, Snapshot, Timestamp};
use notifyhub_transport_vsock::{End, Event, HybridListener, ListenerConfig, Received, Sender};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const CID: u32 = 7;
const PORT: u32 = 9999;
/// Generous bound on any single step; never reached unless something hangs.
const BOUND: Duration = Duration::from_secs(10);

/// `../shared/vectors` beside the project root.
fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors")
}

/// One captured datagram: its arrival time and its exact payload (`hex`, the ground truth).
struct Datagram {
    at: Timestamp,
    payload: Vec<u8>,
}

/// The value of `"key": ` in one JSON line of the vector format (numbers and plain strings
/// only, which is all the fields used here hold).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\": ");
    let start = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + pat.len();
    let rest = &line[start..];
    if let Some(s) = rest.strip_prefix('"') {
        &s[..s.find('"').expect("closing quote")]
    } else {
        &rest[..rest.find([',', '}']).expect("end of number")]
    }
}

fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn load(name: &str) -> Vec<Datagram> {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let datagrams: Vec<Datagram> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let payload = unhex(field(line, "hex"));
            let len: usize = field(line, "len").parse().unwrap();
            assert_eq!(payload.len(), len, "len field of {line}");
            assert_eq!(field(line, "fds"), "0", "vsock carries no fds: {line}");
            let ms: f64 = field(line, "t_ms").parse().unwrap();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let at = Timestamp::from_micros(1_700_000_000_000_000 + (ms * 1000.0) as u64);
            Datagram { at, payload }
        })
        .collect();
    assert!(
        datagrams.len() > 10,
        "{name}: only {} datagrams",
        datagrams.len()
    );
    datagrams
}

/// The fields the brief compares: the same final state as over datagrams.
#[derive(Debug, PartialEq, Eq)]
struct Final {
    phase: notifyhub_core::Phase,
    boot_count: u32,
    shutdown: Option<notifyhub_core::Shutdown>,
    exit_status: Option<u8>,
    active_units: Vec<String>,
    hostname: Option<String>,
}

impl From<Snapshot> for Final {
    fn from(s: Snapshot) -> Self {
        let mut active_units = s.active_units;
        active_units.sort();
        Self {
            phase: s.phase,
            boot_count: s.boot_count,
            shutdown: s.shutdown,
            exit_status: s.exit_status,
            active_units,
            hostname: s.hostname,
        }
    }
}

/// Feeding the captured datagrams straight into the core, as `notifyhub-transport-unix` would.
fn direct(datagrams: &[Datagram]) -> Final {
    let mut guest = Guest::new("vm", Timestamp::ZERO);
    for d in datagrams {
        guest
            .handle_datagram(d.at, Sender::Unknown, &d.payload)
            .expect("captured datagrams parse");
    }
    guest.snapshot().into()
}

/// How a guest connection ends after its message is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// `shutdown(Write)`, then wait for the hub's close (systemd over kernel vsock).
    HalfClose,
    /// Never half-close, wait for the hub's close (a bridge that loses `SHUT_WR`).
    Never,
    /// Close the whole socket right after writing, without waiting.
    Drop,
}

/// What systemd's sender does after writing: wait for the hub's close, failing on any byte.
async fn expect_eof(conn: &mut UnixStream) {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(BOUND, conn.read(&mut buf))
        .await
        .expect("the hub closes the connection")
        .expect("read from the hub");
    assert_eq!(n, 0, "the hub wrote {:?} back", &buf[..n]);
}

async fn next(events: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(BOUND, events.recv())
        .await
        .expect("an event within the bound")
        .expect("listener alive")
}

/// Replays `datagrams` through a fresh `HybridListener`, one connection at a time (PID 1 waits
/// for each close before its next message), alternating half-close and never-half-close; the
/// last message is closed as `last`. Returns the core's final state.
async fn replay(datagrams: &[Datagram], last: Ending) -> io::Result<Final> {
    let dir = tempfile::tempdir()?;
    let listener = HybridListener::bind(&dir.path().join("vm.vsock"), PORT, CID)?;
    let path = listener.path().to_path_buf();
    let config = ListenerConfig::default();
    let (tx, mut events) = mpsc::channel(4);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(listener.run(config, tx, cancel.clone()));

    let mut guest = Guest::new("vm", Timestamp::ZERO);
    let (mut eofs, mut idles) = (0, 0);
    for (i, d) in datagrams.iter().enumerate() {
        let close = if i + 1 == datagrams.len() {
            last
        } else if i % 2 == 0 {
            Ending::HalfClose
        } else {
            Ending::Never
        };
        deliver(&path, &d.payload, close).await?;
        let event = next(&mut events).await;
        assert_eq!(
            event.sender,
            Sender::Vsock {
                cid: CID,
                port: None
            }
        );
        let Received::Message { payload, end } = event.received else {
            panic!(
                "message {i} ({close:?}) not delivered: {:?}",
                event.received
            );
        };
        assert_eq!(payload, d.payload, "message {i} delivered exactly");
        let expected_end = if close == Ending::Never {
            End::Idle
        } else {
            End::Eof
        };
        assert_eq!(end, expected_end, "message {i} ({close:?})");
        match end {
            End::Eof => eofs += 1,
            _ => idles += 1,
        }
        guest
            .handle_datagram(d.at, event.sender, &payload)
            .expect("delivered payload parses");
    }
    assert!(
        eofs > 0 && idles > 0,
        "both paths taken: {eofs} EOF, {idles} idle"
    );
    assert!(
        events.try_recv().is_err(),
        "one event per connection, no more"
    );
    cancel.cancel();
    task.await.expect("listener task")?;
    assert!(!Path::new(&path).exists(), "socket file removed");
    Ok(guest.snapshot().into())
}

async fn deliver(path: &Path, payload: &[u8], close: Ending) -> io::Result<()> {
    let mut conn = UnixStream::connect(path).await?;
    conn.write_all(payload).await?;
    match close {
        Ending::HalfClose => {
            conn.shutdown().await?;
            expect_eof(&mut conn).await;
        }
        Ending::Never => expect_eof(&mut conn).await,
        Ending::Drop => drop(conn),
    }
    Ok(())
}

async fn same_state_as_datagrams(name: &str, last: Ending) {
    let datagrams = load(name);
    let want = direct(&datagrams);
    // The replay must not be vacuous: the boot ended and was seen to end.
    assert_eq!(want.phase, notifyhub_core::Phase::Off, "{name}");
    assert_eq!(want.exit_status, Some(0), "{name}");
    assert_eq!(want.hostname.as_deref(), Some("probe-guest"), "{name}");
    let got = replay(&datagrams, last).await.unwrap();
    assert_eq!(got, want, "{name}: vsock replay differs from datagrams");
}

#[tokio::test]
async fn boot_reboot_arg_same_state_as_datagrams() {
    same_state_as_datagrams("systemd257-boot-reboot-arg.jsonl", Ending::HalfClose).await;
    let want = direct(&load("systemd257-boot-reboot-arg.jsonl"));
    let shutdown = want.shutdown.expect("shutdown seen");
    assert_eq!(shutdown.verb, "reboot");
    assert_eq!(shutdown.reboot_parameter.as_deref(), Some("probe-arg"));
}

#[tokio::test]
async fn reload_reexec_same_state_as_datagrams() {
    same_state_as_datagrams("systemd257-reload-reexec.jsonl", Ending::Never).await;
}

/// `systemd-shutdown`'s last message, from a client that closes right after writing (the VM is
/// about to power off): still delivered, and the state still matches.
#[tokio::test]
async fn final_message_from_a_client_that_drops_at_once_is_delivered() {
    let name = "systemd257-reload-reexec.jsonl";
    let datagrams = load(name);
    let last = &datagrams.last().unwrap().payload;
    assert_eq!(
        last.as_slice(),
        b"EXIT_STATUS=0\nX_SYSTEMD_SHUTDOWN=poweroff"
    );
    same_state_as_datagrams(name, Ending::Drop).await;
    let shutdown = direct(&datagrams).shutdown.expect("shutdown seen");
    assert_eq!(shutdown.verb, "poweroff");
}
