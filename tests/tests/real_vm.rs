//! A real VM reporting to the real `notifyhub` binary over hybrid vsock
//! (`../shared/guest/real-vm-README.md`): QEMU with Debian trixie's systemd 257 as PID 1, whose
//! vsock device is `vhost-device-vsock` in hybrid mode. The guest is handed
//! `vmm.notify_socket=vsock-stream:2:PORT` (SMBIOS type 11); each connection it makes to host
//! port PORT arrives on the UNIX socket `<uds>_<PORT>`, which the hub binds for
//! `--hybrid NAME=<uds>:PORT` (`vhost-device-vsock` binds `<uds>` itself). The bridge never
//! forwards the guest's half-close, so every message here is ended by the hub's idle timeout:
//! a hub that waited for EOF would stall each step of the boot.
//!
//! Needs root and `real-vm-guest prepare` (`scripts/setup` runs it; when it cannot, it writes
//! the reason to `<target>/real-vm-skip-reason`). Otherwise the test prints
//! `SKIPPED real vm: <reason>` and passes. `NOTIFYHUB_REAL_VM_GUEST` overrides the path of the
//! `real-vm-guest` script.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use notifyhub_tests::real_guest::run_bounded;
use notifyhub_tests::{Hub, shared_dir, target_dir};
use reqwest::StatusCode;
use serde_json::Value;

/// The host port the guest connects to.
const PORT: u32 = 9999;
/// The guest's CID: the hub takes a `--hybrid` guest to be CID 3, so the VM is told so too.
const CID: u32 = 3;
/// Long-poll bound for a milestone: under TCG on 2 cores `ssh-access.target` comes ~16 s after
/// QEMU starts and the reboot ~23 s; 180 s leaves room for a slow, shared machine.
const WAIT_SECS: u64 = 180;
/// Bound for one `real-vm-guest` command (`boot` returns in 0.1 s, `stop` in 0.3 s).
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn tool() -> PathBuf {
    std::env::var_os("NOTIFYHUB_REAL_VM_GUEST").map_or_else(
        || shared_dir().join("guest").join("real-vm-guest"),
        PathBuf::from,
    )
}

/// Why this test cannot run here, or `None`.
fn skip_reason() -> Option<String> {
    let file = target_dir().join("real-vm-skip-reason");
    if let Ok(reason) = std::fs::read_to_string(&file) {
        let reason = reason.trim();
        return Some(if reason.is_empty() {
            format!("{} exists", file.display())
        } else {
            reason.to_owned()
        });
    }
    if !rustix::process::geteuid().is_root() {
        return Some("not root".to_owned());
    }
    let tool = tool();
    if !tool.is_file() {
        return Some(format!("{} not found", tool.display()));
    }
    None
}

/// Runs `real-vm-guest ARGS...` within [`TOOL_TIMEOUT`].
async fn real_vm_guest(args: &[&str]) -> Output {
    run_bounded(&tool(), args, TOOL_TIMEOUT).await
}

/// Stops the VM however the test ends (`real-vm-guest stop` kills its processes by PID and
/// removes its state); on a failure it first prints the end of the serial console.
struct VmGuard {
    name: String,
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        let run = |args: &[&str]| {
            std::process::Command::new(tool())
                .args(args)
                .stdin(Stdio::null())
                .output()
        };
        if std::thread::panicking()
            && let Ok(out) = run(&["console", &self.name])
        {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if let Ok(text) = std::fs::read_to_string(&path) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("---- {path} (last 40 lines) ----\n{tail}\n----");
            }
        }
        match run(&["stop", &self.name]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "real-vm-guest stop {} exited with {}: {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(error) => eprintln!("cannot run real-vm-guest stop {}: {error}", self.name),
        }
    }
}

fn epoch_micros(at: SystemTime) -> u64 {
    u64::try_from(at.duration_since(UNIX_EPOCH).unwrap().as_micros()).unwrap()
}

/// When the first timeline entry that `is` holds was received, in seconds after `start` (µs).
fn seconds_after(guest: &Value, start: u64, is: impl Fn(&Value) -> bool) -> Option<f64> {
    guest["timeline"]
        .as_array()?
        .iter()
        .find(|milestone| is(milestone))
        .and_then(|milestone| milestone["at"].as_u64())
        .map(|at| at.saturating_sub(start) as f64 / 1e6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_boots_and_reboots_through_hybrid_vsock() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED real vm: {reason}");
        return;
    }
    // Short, so that `<dir>/vm.vsock_9999` stays far below sun_path's 107 bytes.
    let dir = tempfile::Builder::new()
        .prefix("nhvm")
        .tempdir_in("/tmp")
        .unwrap();
    let uds = dir.path().join("vm.vsock");
    let uds = uds.to_str().unwrap();
    let name = format!("nh-e2e-{}", std::process::id());
    let hybrid = format!("{name}={uds}:{PORT}");
    let hub = Hub::start_with_args(&[], &["--hybrid", &hybrid]).await;

    let (status, launch) = hub.get_json(&format!("/api/v1/guests/{name}/launch")).await;
    assert_eq!(status, StatusCode::OK, "{launch}");
    assert_eq!(launch["notify_socket"], format!("vsock-stream:2:{PORT}"));
    let socket = PathBuf::from(format!("{uds}_{PORT}"));
    assert!(socket.exists(), "the hub binds {}", socket.display());

    let guard = VmGuard { name: name.clone() };
    let booted_at = SystemTime::now();
    let start = epoch_micros(booted_at);
    let clock = Instant::now();
    let port = PORT.to_string();
    let cid = CID.to_string();
    let out = real_vm_guest(&[
        "boot",
        &name,
        "--vsock-uds",
        uds,
        "--port",
        &port,
        "--cid",
        &cid,
        "--action",
        "reboot:vm-arg",
    ])
    .await;
    assert!(
        out.status.success(),
        "real-vm-guest boot: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let (status, guest) = hub.wait(&name, "unit:ssh-access.target", WAIT_SECS).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "wait for ssh-access.target: {guest:#}\n{}",
        hub.log_text()
    );
    assert_eq!(guest["hostname"], name.as_str(), "{guest:#}");
    assert_eq!(guest["boot_count"], 1);

    let (status, guest) = hub.wait(&name, "off", WAIT_SECS).await;
    let off_after = clock.elapsed();
    assert_eq!(
        status,
        StatusCode::OK,
        "wait for off: {guest:#}\n{}",
        hub.log_text()
    );
    assert_eq!(guest["shutdown"]["verb"], "reboot", "{guest:#}");
    assert_eq!(guest["shutdown"]["reboot_parameter"], "vm-arg", "{guest:#}");
    assert_eq!(guest["exit_status"], 0, "{guest:#}");
    assert_eq!(guest["ready_seen"], true);
    assert_eq!(
        guest["last_sender"],
        serde_json::json!({"transport": "vsock", "cid": CID, "port": null}),
        "hybrid vsock: the guest's CID as configured, its port unknown"
    );
    assert_eq!(guest["drops"]["incomplete"], 0, "{guest:#}");

    let out = real_vm_guest(&["wait-exit", &name, "60"]).await;
    let exit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        exit.starts_with("reboot vm-arg"),
        "QEMU ended with {exit:?}"
    );
    drop(guard);

    let at = |is: &dyn Fn(&Value) -> bool| {
        seconds_after(&guest, start, is).map_or_else(|| "?".to_owned(), |s| format!("{s:.1} s"))
    };
    println!(
        "real vm timings after boot: first message {}, ssh-access.target {}, READY=1 {}, \
         off {} (seen {:.1} s); {} messages",
        at(&|m| m["type"] == "boot_started"),
        at(&|m| m["type"] == "unit_active" && m["unit"] == "ssh-access.target"),
        at(&|m| m["type"] == "phase_changed" && m["to"] == "ready"),
        at(&|m| m["type"] == "shutdown"),
        off_after.as_secs_f64(),
        guest["messages"],
    );

    hub.shutdown().await;
    assert!(!socket.exists(), "the hybrid socket is removed at shutdown");
}
