//! Real input: a QEMU VM whose systemd 257 PID 1 notifies over virtio-vsock through the
//! user-space `vhost-device-vsock` in hybrid mode (`../shared/guest/real-vm-README.md`). Its
//! bridge never forwards the guest's `SHUT_WR`, so this is the idle-timeout path for real: a
//! receiver that waited for EOF would stall every message of the boot.
//!
//! Ignored by default (root, QEMU, ~30 s under TCG). Run once `real-vm-guest prepare` is done:
//! `cargo test -p notifyhub-transport-vsock --test real_vm -- --ignored --nocapture`.
//! `NOTIFYHUB_REAL_VM_GUEST` overrides the path of the `real-vm-guest` script.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use notifyhub_transport_vsock::{End, Event, HybridListener, ListenerConfig, Received, Sender};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const NAME: &str = "nh-vsock-test";
const HOSTNAME: &str = "vmtest";
const PORT: u32 = 9999;
const CID: u32 = 4242;
/// A boot plus poweroff takes ~25 s under TCG; a receiver that stalls each message blows this.
const BOOT_BUDGET: Duration = Duration::from_secs(90);

fn tool() -> PathBuf {
    std::env::var_os("NOTIFYHUB_REAL_VM_GUEST").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/guest/real-vm-guest"
            ))
        },
        PathBuf::from,
    )
}

/// Stops the VM however the test ends (`real-vm-guest stop` kills its processes by PID).
struct Vm(PathBuf);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.0)
            .args(["stop", NAME])
            .status();
    }
}

async fn real_vm_guest(args: &[&str]) -> String {
    let out = tokio::process::Command::new(tool())
        .args(args)
        .output()
        .await
        .expect("run real-vm-guest");
    assert!(
        out.status.success(),
        "real-vm-guest {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn has_line(payload: &[u8], line: &str) -> bool {
    payload.split(|&b| b == b'\n').any(|l| l == line.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots a real QEMU VM: needs root and `real-vm-guest prepare`; ~30 s"]
async fn boot_and_poweroff_through_hybrid_vsock() {
    assert!(rustix::process::geteuid().is_root(), "needs root");
    // Short path: `<dir>/vm.vsock_9999` must stay within 107 bytes.
    let dir = tempfile::Builder::new()
        .prefix("nhvsock")
        .tempdir_in("/tmp")
        .unwrap();
    let uds = dir.path().join("vm.vsock");
    let listener = HybridListener::bind(&uds, PORT, CID).unwrap();
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(listener.run(ListenerConfig::default(), tx, cancel.clone()));

    let vm = Vm(tool());
    let start = Instant::now();
    let pid = real_vm_guest(&[
        "boot",
        NAME,
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--port",
        &PORT.to_string(),
        "--cid",
        &CID.to_string(),
        "--hostname",
        HOSTNAME,
        "--action",
        "poweroff",
    ])
    .await;
    eprintln!("QEMU pid {pid}");

    let mut timeline = Vec::new();
    let shutdown = loop {
        let left = BOOT_BUDGET.saturating_sub(start.elapsed());
        let event = match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("listener ended: {:?}", task.await),
            Err(_) => panic!("no X_SYSTEMD_SHUTDOWN within {BOOT_BUDGET:?}: {timeline:#?}"),
        };
        let at = start.elapsed();
        assert_eq!(
            event.sender,
            Sender::Vsock {
                cid: CID,
                port: None
            }
        );
        let done = matches!(&event.received, Received::Message { payload, .. }
            if has_line(payload, "X_SYSTEMD_SHUTDOWN=poweroff"));
        timeline.push((at, event.received));
        if done {
            break at;
        }
    };
    let exit = real_vm_guest(&["wait-exit", NAME, "60"]).await;
    let total = start.elapsed();
    drop(vm);
    cancel.cancel();
    task.await.unwrap().unwrap();

    for (at, received) in &timeline {
        match received {
            Received::Message { payload, end } => eprintln!(
                "{:>7.3} s {end:?} {}",
                at.as_secs_f64(),
                String::from_utf8_lossy(payload).replace('\n', "\\n")
            ),
            dropped => eprintln!("{:>7.3} s {dropped:?}", at.as_secs_f64()),
        }
    }
    let first = timeline[0].0;
    let ready = timeline
        .iter()
        .find(
            |(_, r)| matches!(r, Received::Message { payload, .. } if has_line(payload, "READY=1")),
        )
        .map(|(at, _)| *at)
        .expect("a READY=1");
    let idle_ends = timeline
        .iter()
        .filter(|(_, r)| matches!(r, Received::Message { end: End::Idle, .. }))
        .count();
    eprintln!(
        "first message {:.1} s, READY=1 {:.1} s ({:.1} s after the first), shutdown message \
         {:.1} s, QEMU ended {:.1} s ({exit}); {} messages, {idle_ends} ended by the idle timeout",
        first.as_secs_f64(),
        ready.as_secs_f64(),
        (ready - first).as_secs_f64(),
        shutdown.as_secs_f64(),
        total.as_secs_f64(),
        timeline.len(),
    );

    assert!(
        timeline
            .iter()
            .all(|(_, r)| matches!(r, Received::Message { .. })),
        "nothing dropped"
    );
    let hostname = format!("X_SYSTEMD_HOSTNAME={HOSTNAME}");
    assert!(
        timeline.iter().any(
            |(_, r)| matches!(r, Received::Message { payload, .. } if has_line(payload, &hostname))
        ),
        "no {hostname}"
    );
    assert!(exit.starts_with("poweroff"), "VM ended with {exit}");
    assert!(total < BOOT_BUDGET, "boot stalled: {total:?}");
}
