//! Driving `../shared/guest/real-systemd-guest` from a test: run its commands with a bound, and
//! stop a guest whatever happens ([`GuestGuard`]). The skip rule is
//! [`real_guest_skip_reason`](crate::real_guest_skip_reason); [`skip`] prints it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use tokio::process::Command;

use reqwest::StatusCode;

use crate::{Hub, real_guest_harness, real_guest_skip_reason};

/// Bound for one harness command (boot returns in < 0.3 s, exec in < 0.1 s, stop < 0.3 s).
pub const HARNESS_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the real-guest tests must be skipped here; prints `SKIPPED real guest: <reason>`.
pub fn skip() -> bool {
    match real_guest_skip_reason() {
        Some(reason) => {
            println!("SKIPPED real guest: {reason}");
            true
        }
        None => false,
    }
}

/// Runs `real-systemd-guest ARGS...`, bounded by [`HARNESS_TIMEOUT`]; asserts it exits 0.
pub async fn harness(args: &[&str]) -> Output {
    let out = harness_unchecked(args).await;
    assert!(
        out.status.success(),
        "real-systemd-guest {args:?} exited with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    out
}

/// Runs `real-systemd-guest ARGS...`, bounded by [`HARNESS_TIMEOUT`], whatever its exit status.
pub async fn harness_unchecked(args: &[&str]) -> Output {
    run_bounded(&real_guest_harness(), args, HARNESS_TIMEOUT).await
}

/// Runs `program ARGS...` with no stdin and its output captured, whatever its exit status;
/// panics if it is still running after `timeout` (it is killed then).
pub async fn run_bounded(program: &Path, args: &[&str], timeout: Duration) -> Output {
    let name = program.display();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{name} {args:?} still running after {timeout:?}"))
        .unwrap_or_else(|e| panic!("wait for {name}: {e}"))
}

/// `real-systemd-guest wait-exit NAME SECS`: how the container ended (`reboot`, `poweroff`,
/// `exit N`, `killed`, `signal S`), or `None` on its timeout.
pub async fn wait_exit(name: &str, secs: u32) -> Option<String> {
    let out = harness_unchecked(&["wait-exit", name, &secs.to_string()]).await;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Stops guest `name` when dropped, on success and on failure alike; on failure it first prints
/// the end of the guest's console log. Create it before `boot`.
#[derive(Debug)]
pub struct GuestGuard {
    name: String,
}

impl GuestGuard {
    /// Guards guest `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for GuestGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let state = std::env::var("NOTIFYHUB_GUEST_STATE")
                .unwrap_or_else(|_| "/run/notifyhub-guest".to_string());
            let console = Path::new(&state).join(&self.name).join("console.log");
            if let Ok(text) = std::fs::read_to_string(&console) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(60)..];
                eprintln!(
                    "---- {} (last 60 lines) ----\n{}\n----",
                    console.display(),
                    tail.join("\n")
                );
            }
        }
        // Synchronous and bounded: Drop cannot await.
        let child = std::process::Command::new(real_guest_harness())
            .args(["stop", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("cannot run real-systemd-guest stop {}", self.name);
            return;
        };
        let deadline = Instant::now() + HARNESS_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!("real-systemd-guest stop {} exited with {status}", self.name);
                    }
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    eprintln!("real-systemd-guest stop {} timed out", self.name);
                    return;
                }
            }
        }
    }
}

/// A booted guest reporting to its own hub, with the `notifyhub` binary under test installed
/// at /usr/bin/notifyhub inside it (see [`boot_with_hub_binary`]).
#[derive(Debug)]
pub struct Booted {
    /// The hub the guest reports to.
    pub hub: Hub,
    /// Stops the guest when dropped.
    pub guard: GuestGuard,
    /// The guest's root directory seen from the host (`/proc/PID/root`).
    pub root: PathBuf,
}

/// Boots a guest named PREFIX + our pid against a fresh hub, waits until it is `booted`, and
/// installs the `notifyhub` binary under test at /usr/bin/notifyhub in it, as a package would.
pub async fn boot_with_hub_binary(prefix: &str) -> Booted {
    let name = format!("{prefix}{}", std::process::id());
    let hub = Hub::start(&[&name]).await;
    let guard = GuestGuard::new(&name);
    let socket = hub.socket(&name);
    let out = harness(&[
        "boot",
        guard.name(),
        "--notify-socket",
        socket.to_str().unwrap(),
    ])
    .await;
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let (status, guest) = hub.wait(&name, "booted", 60).await;
    assert_eq!(status, StatusCode::OK, "{guest:#}");
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    std::fs::copy(crate::hub_binary(), root.join("usr/bin/notifyhub")).unwrap();
    Booted { hub, guard, root }
}

impl Booted {
    /// Writes `text` to `path` (relative to the guest's root) with `mode`.
    pub fn write(&self, path: &str, text: &str, mode: u32) {
        let path = self.root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// `real-systemd-guest exec NAME ARGS...`, asserting exit 0; its stdout, trimmed.
    pub async fn run(&self, args: &[&str]) -> String {
        let mut all = vec!["exec", self.guard.name()];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&harness(&all).await.stdout)
            .trim()
            .to_string()
    }

    /// As [`Booted::run`], whatever the exit status (`systemctl is-active` exits 3 unless
    /// active).
    pub async fn run_unchecked(&self, args: &[&str]) -> String {
        let mut all = vec!["exec", self.guard.name()];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&harness_unchecked(&all).await.stdout)
            .trim()
            .to_string()
    }

    /// `systemctl show -p PROPERTY --value UNIT` in the guest.
    pub async fn show(&self, property: &str, unit: &str) -> String {
        self.run(&["systemctl", "show", "-p", property, "--value", unit])
            .await
    }

    /// The text of `path` (relative to the guest's root).
    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.root.join(path))
            .unwrap_or_else(|e| panic!("{}: {e}", Path::new(path).display()))
    }

    /// Shuts the hub down and stops the guest.
    pub async fn stop(self) {
        self.hub.shutdown().await;
        drop(self.guard);
    }
}
