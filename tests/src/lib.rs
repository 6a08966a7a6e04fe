//! Shared helpers for notifyhub's end-to-end tests (`tests/tests/*.rs`).
//!
//! Every test drives the **real** `notifyhub` binary (package `notifyhub-web`), which
//! `scripts/test` builds before it runs `cargo test`. The pieces:
//!
//! - [`Hub`]: a running `notifyhub serve` on `127.0.0.1:0` with a temporary run dir, its REST
//!   API wrapped in small helpers, and a check that it exits 0 on SIGTERM ([`Hub::shutdown`]).
//! - [`send_datagram`], [`Hub::send`], [`Hub::send_with_fds`]: sd_notify datagrams to a guest's
//!   AF_UNIX socket, optionally with pipe ends attached as `SCM_RIGHTS` (as `BARRIER=1` does);
//!   [`pipe_closed_within`] tells whether the hub closed its copies.
//! - [`Vector`], [`load_vectors`]: the captured datagrams of `../shared/vectors/*.jsonl`.
//! - [`real_guest_skip_reason`], [`shared_dir`]: where the real systemd guest harness is and
//!   whether `scripts/setup` could prepare it.
//! - [`real_guest`]: its commands, bounded, and a guard that always stops a guest.
//! - [`measure`]: percentiles, RSS and fds from `/proc`, ratio tables for the bench and soak
//!   programs.
//!
//! Liveness bounds in these helpers are 5–10× what the operation takes on a 2-core machine;
//! no helper asserts on timing.

use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod measure;
pub mod real_guest;

/// How long the hub may take to print its listening line after it was spawned.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the hub may take to exit after SIGTERM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a state that follows from datagrams already sent may take to show in the API.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The cargo target dir these tests were built into (`<target>/debug/deps/<test>` → `<target>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // <target>/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("cannot derive the target dir from {}", exe.display()))
}

/// The `notifyhub` binary next to the test binaries (`<target>/<profile>/notifyhub`), or next
/// to this package's own programs (`<target>/<profile>/notifyhub-soak`).
///
/// # Panics
/// When it has not been built: `cargo test` alone does not build other packages' binaries.
pub fn hub_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("an executable lives in a directory");
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().expect("<target>/<profile>/deps has a parent")
    } else {
        dir
    };
    let bin = profile_dir.join("notifyhub");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// The workspace root (the parent of this package's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `../shared` beside the workspace: the captured vectors and the real guest harness.
pub fn shared_dir() -> PathBuf {
    repo_root()
        .parent()
        .expect("the workspace has a parent")
        .join("shared")
}

/// `../shared/vectors`.
pub fn vectors_dir() -> PathBuf {
    shared_dir().join("vectors")
}

/// `../shared/guest/real-systemd-guest`.
pub fn real_guest_harness() -> PathBuf {
    shared_dir().join("guest").join("real-systemd-guest")
}

/// Why the real-guest tests cannot run here, or `None` when they can.
///
/// `scripts/setup` writes `<target>/real-guest-skip-reason` when it could not prepare the guest
/// (or is not root) and removes it when it could. Without that file the tests still need root
/// and the harness.
pub fn real_guest_skip_reason() -> Option<String> {
    let file = target_dir().join("real-guest-skip-reason");
    if let Ok(reason) = std::fs::read_to_string(&file) {
        let reason = reason.trim();
        return Some(if reason.is_empty() {
            format!("{} exists", file.display())
        } else {
            reason.to_string()
        });
    }
    if !rustix::process::geteuid().is_root() {
        return Some("not root".to_string());
    }
    let harness = real_guest_harness();
    if !harness.is_file() {
        return Some(format!("{} not found", harness.display()));
    }
    None
}

/// One captured datagram of a `../shared/vectors/*.jsonl` file (see that folder's README).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Vector {
    /// Order of arrival, from 1.
    pub seq: u64,
    /// Number of fds that came with it (`SCM_RIGHTS`).
    pub fds: usize,
    /// The exact payload, hex-encoded: the ground truth.
    pub hex: String,
    /// The payload as text, for reading only.
    pub text: String,
    /// The command that produced it (systemd-notify files only).
    #[serde(default)]
    pub command: Option<String>,
}

impl Vector {
    /// The payload bytes, decoded from [`Vector::hex`].
    pub fn bytes(&self) -> Vec<u8> {
        hex::decode(&self.hex).unwrap_or_else(|e| panic!("bad hex in seq {}: {e}", self.seq))
    }
}

/// Every datagram of `../shared/vectors/<file>`, in order.
pub fn load_vectors(file: &str) -> Vec<Vector> {
    let path = vectors_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let vectors: Vec<Vector> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: bad line {line:?}: {e}", path.display()))
        })
        .collect();
    for (i, v) in vectors.iter().enumerate() {
        assert_eq!(v.seq, i as u64 + 1, "{}: seq out of order", path.display());
    }
    vectors
}

/// A pipe whose read end does not block: `(read end, write end)`.
pub fn pipe() -> (OwnedFd, OwnedFd) {
    use rustix::pipe::PipeFlags;
    rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).expect("pipe2")
}

/// Sends one datagram to the AF_UNIX datagram socket at `path`, with `fds` attached as
/// `SCM_RIGHTS` when there are any. Blocks while the receiver's queue is full.
///
/// # Errors
/// The socket's error, e.g. `ENOENT` when nothing is bound at `path`.
pub fn send_datagram(path: &Path, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    if fds.is_empty() {
        let n = socket.send_to(bytes, path)?;
        assert_eq!(n, bytes.len(), "short datagram send");
        return Ok(());
    }
    socket.connect(path)?;
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(fds)));
    let n = rustix::net::sendmsg(
        &socket,
        &[IoSlice::new(bytes)],
        &mut control,
        rustix::net::SendFlags::empty(),
    )?;
    assert_eq!(n, bytes.len(), "short datagram send");
    Ok(())
}

/// Whether every write end of the pipe whose read end is `read_end` was closed (the read end
/// sees `POLLHUP`) within `timeout`. Blocks the calling thread up to `timeout`.
pub fn pipe_closed_within(read_end: &OwnedFd, timeout: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(read_end, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) => {
                if fds[0].revents().contains(PollFlags::HUP) {
                    return true;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("poll: {e}"),
        }
        if Instant::now() >= deadline {
            return false;
        }
        // Data but no hang-up (nobody writes to these pipes): do not spin.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters and `:` stay as they are).
pub fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A running `notifyhub serve`, killed when dropped.
///
/// ```no_run
/// # async fn demo() {
/// use notifyhub_tests::Hub;
/// let hub = Hub::start(&["web1"]).await;
/// hub.send("web1", b"READY=1");
/// let (status, guest) = hub.wait("web1", "ready", 5).await;
/// assert_eq!(status, 200);
/// assert_eq!(guest["phase"], "ready");
/// hub.shutdown().await; // SIGTERM, asserts exit 0
/// # }
/// ```
///
/// On a panic while it runs, its stdout and stderr are printed (the test output shows them).
#[derive(Debug)]
pub struct Hub {
    child: Child,
    base: String,
    client: reqwest::Client,
    run_dir: tempfile::TempDir,
    printed_sockets: BTreeMap<String, PathBuf>,
    log: Arc<Mutex<Vec<String>>>,
    shut_down: bool,
}

impl Hub {
    /// Starts `notifyhub serve --listen 127.0.0.1:0 --run-dir <tempdir> --state-dir
    /// <tempdir>/state --guest NAME...` and waits for its `notifyhub: listening on http://ADDR`
    /// line.
    ///
    /// # Panics
    /// When the binary is missing, exits, or prints no listening line within [`START_TIMEOUT`];
    /// when a `--guest` has no `guest NAME: NOTIFY_SOCKET=` line or its path is not
    /// `<run dir>/guests/NAME/notify`.
    pub async fn start(guests: &[&str]) -> Self {
        Self::start_with_args(guests, &[]).await
    }

    /// As [`Hub::start`], with `args` added to the `notifyhub serve` command line (e.g.
    /// `["--ready-timeout", "1"]`).
    pub async fn start_with_args(guests: &[&str], args: &[&str]) -> Self {
        let run_dir = tempfile::Builder::new()
            .prefix("nh-")
            .tempdir()
            .expect("tempdir");
        let mut cmd = Command::new(hub_binary());
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--run-dir")
            .arg(run_dir.path());
        // Its own journal, unless the test picks one (`--state-dir DIR` or `none`).
        if !args.contains(&"--state-dir") {
            cmd.arg("--state-dir").arg(run_dir.path().join("state"));
        }
        for guest in guests {
            cmd.arg("--guest").arg(guest);
        }
        cmd.args(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn notifyhub");

        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let err_log = Arc::clone(&log);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                err_log.lock().unwrap().push(format!("[stderr] {line}"));
            }
        });

        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut printed_sockets = BTreeMap::new();
        let startup = async {
            while let Some(line) = lines.next_line().await.expect("read hub stdout") {
                log.lock().unwrap().push(format!("[stdout] {line}"));
                if let Some(addr) = line.strip_prefix("notifyhub: listening on ") {
                    return Some(addr.trim().to_string());
                }
                if let Some((name, path)) = line
                    .strip_prefix("guest ")
                    .and_then(|rest| rest.split_once(": NOTIFY_SOCKET="))
                {
                    printed_sockets.insert(name.to_string(), PathBuf::from(path));
                }
            }
            None
        };
        let base = match tokio::time::timeout(START_TIMEOUT, startup).await {
            Ok(Some(base)) => base.trim_end_matches('/').to_string(),
            Ok(None) => {
                let status = child.wait().await;
                tokio::time::sleep(Duration::from_millis(100)).await; // let stderr drain
                panic!(
                    "notifyhub exited ({status:?}) before printing its listening line:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            Err(_) => panic!(
                "notifyhub printed no `notifyhub: listening on` line within {START_TIMEOUT:?}:\n{}",
                log.lock().unwrap().join("\n")
            ),
        };
        assert!(base.starts_with("http://"), "listening line names {base:?}");
        let out_log = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                out_log.lock().unwrap().push(format!("[stdout] {line}"));
            }
        });

        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("reqwest client");
        let hub = Self {
            child,
            base,
            client,
            run_dir,
            printed_sockets,
            log,
            shut_down: false,
        };
        for guest in guests {
            let printed = hub.printed_sockets.get(*guest).unwrap_or_else(|| {
                panic!(
                    "no `guest {guest}: NOTIFY_SOCKET=` line on stdout:\n{}",
                    hub.log_text()
                )
            });
            assert_eq!(
                printed,
                &hub.socket(guest),
                "printed socket path of {guest}"
            );
            assert!(
                printed.exists(),
                "{} was printed but does not exist",
                printed.display()
            );
        }
        hub
    }

    /// `http://ADDR` as printed by the hub.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The HTTP client (no proxy, 120 s per-request timeout).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The hub's `--run-dir`.
    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    /// The hub's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("hub still running")
    }

    /// Everything the hub printed so far, one line each, prefixed `[stdout]`/`[stderr]`.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The notify socket of guest `name`: `<run dir>/guests/NAME/notify` (the contract).
    pub fn socket(&self, name: &str) -> PathBuf {
        self.run_dir.path().join("guests").join(name).join("notify")
    }

    /// Sends `bytes` as one datagram to guest `name`'s socket.
    ///
    /// # Panics
    /// When the send fails.
    pub fn send(&self, name: &str, bytes: &[u8]) {
        let path = self.socket(name);
        send_datagram(&path, bytes, &[])
            .unwrap_or_else(|e| panic!("send to {}: {e}", path.display()));
    }

    /// Sends `bytes` to guest `name` with the write ends of `n` fresh pipes attached
    /// (`SCM_RIGHTS`), and closes this process's copies of them. Returns the read ends: each
    /// sees `POLLHUP` ([`pipe_closed_within`]) once the hub closed what it received.
    pub fn send_with_fds(&self, name: &str, bytes: &[u8], n: usize) -> Vec<OwnedFd> {
        let (reads, writes): (Vec<OwnedFd>, Vec<OwnedFd>) = (0..n).map(|_| pipe()).unzip();
        let borrowed: Vec<BorrowedFd<'_>> = writes.iter().map(AsFd::as_fd).collect();
        let path = self.socket(name);
        send_datagram(&path, bytes, &borrowed)
            .unwrap_or_else(|e| panic!("send with {n} fds to {}: {e}", path.display()));
        drop(borrowed);
        drop(writes);
        reads
    }

    /// `GET path` → status and body text.
    pub async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let resp = self
            .client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_text()));
        let status = resp.status();
        (status, resp.text().await.expect("body"))
    }

    /// `GET path` → status and body as JSON (`Value::Null` when the body is not JSON).
    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let (status, body) = self.get_text(path).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// `GET /api/v1/guests/{name}`, asserting 200.
    pub async fn guest(&self, name: &str) -> Value {
        let (status, body) = self.get_text(&format!("/api/v1/guests/{name}")).await;
        assert_eq!(status, StatusCode::OK, "GET guest {name}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("guest {name} JSON: {e}: {body}"))
    }

    /// `GET /api/v1/guests/{name}/events` → the `events` array, asserting 200.
    pub async fn events(&self, name: &str) -> Vec<Value> {
        let (status, body) = self
            .get_json(&format!("/api/v1/guests/{name}/events"))
            .await;
        assert_eq!(status, StatusCode::OK, "GET events of {name}: {body}");
        body["events"]
            .as_array()
            .unwrap_or_else(|| panic!("no events array: {body}"))
            .clone()
    }

    /// `GET /api/v1/guests/{name}/wait?for=COND&timeout=SECS` → status and JSON body
    /// (`Value::Null` when the body is not JSON).
    pub async fn wait(&self, name: &str, cond: &str, timeout_secs: u64) -> (StatusCode, Value) {
        let path = format!(
            "/api/v1/guests/{name}/wait?for={}&timeout={timeout_secs}",
            encode_query(cond)
        );
        let resp = self
            .client
            .get(self.url(&path))
            .timeout(Duration::from_secs(timeout_secs + 15))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_text()));
        let status = resp.status();
        let body = resp.text().await.expect("wait body");
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// `POST /api/v1/guests {"name": name}` → status and JSON body.
    pub async fn add_guest(&self, name: &str) -> (StatusCode, Value) {
        let resp = self
            .client
            .post(self.url("/api/v1/guests"))
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .expect("POST guest");
        let status = resp.status();
        let body = resp.text().await.expect("body");
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// `DELETE /api/v1/guests/{name}` → status.
    pub async fn remove_guest(&self, name: &str) -> StatusCode {
        self.client
            .delete(self.url(&format!("/api/v1/guests/{name}")))
            .send()
            .await
            .expect("DELETE guest")
            .status()
    }

    /// Polls guest `name` until `pred` holds on its JSON, for at most `timeout`; returns it.
    ///
    /// # Panics
    /// After `timeout`, with `what` and the last JSON.
    pub async fn poll_guest(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let guest = self.guest(name).await;
            if pred(&guest) {
                return guest;
            }
            assert!(
                Instant::now() < deadline,
                "guest {name}: {what} not seen within {timeout:?}; last state:\n{guest:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the hub has taken at least `n` messages from guest `name` (its `messages`
    /// counter), within [`SETTLE_TIMEOUT`]; returns the guest JSON.
    pub async fn settle(&self, name: &str, n: u64) -> Value {
        self.poll_guest(name, &format!("messages >= {n}"), SETTLE_TIMEOUT, |g| {
            g["messages"].as_u64().is_some_and(|m| m >= n)
        })
        .await
    }

    /// Sends SIGTERM and asserts the hub exits with status 0 within [`SHUTDOWN_TIMEOUT`].
    pub async fn shutdown(mut self) {
        let pid = self.pid();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).expect("pid > 0"),
            rustix::process::Signal::TERM,
        )
        .expect("SIGTERM the hub");
        let status = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.child.wait()).await;
        self.shut_down = true;
        match status {
            Ok(Ok(status)) => assert!(
                status.success(),
                "notifyhub exited with {status} after SIGTERM, expected 0:\n{}",
                self.log_text()
            ),
            Ok(Err(e)) => panic!("waiting for notifyhub: {e}"),
            Err(_) => panic!(
                "notifyhub did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM:\n{}",
                self.log_text()
            ),
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if self.shut_down {
            return;
        }
        if std::thread::panicking() {
            eprintln!("---- notifyhub output ----\n{}\n----", self.log_text());
        }
        if let Some(pid) = self
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        // kill_on_drop(true) sends SIGKILL when `child` is dropped right after this.
    }
}
