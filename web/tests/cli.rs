//! The `notifyhub` binary's client commands, run as a user runs them: the real built binary
//! against a real `notifyhub serve` child with a fresh run directory.
//!
//! Every wait on a process is bounded by [`LIVENESS`], which bounds liveness, not speed: no test
//! asserts how fast anything is.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

const LIVENESS: Duration = Duration::from_secs(10);
const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");
const VECTOR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/vectors/systemd257-boot-reboot-arg.jsonl"
);

/// A `notifyhub serve` child; killed when dropped.
struct Hub {
    child: Child,
    url: String,
    tmp: TempDir,
}

impl Hub {
    /// A hub on 127.0.0.1:0 with `guests` registered.
    fn start(guests: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(tmp.path().join("hub.log")).unwrap();
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--run-dir"])
            .arg(tmp.path().join("run"))
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        for guest in guests {
            command.args(["--guest", guest]);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines, incoming) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if lines.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + LIVENESS;
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match incoming.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("notifyhub: listening on ") {
                        break url.to_owned();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("the hub printed no listening line within {LIVENESS:?}");
                }
            }
        };
        Self { child, url, tmp }
    }

    fn socket(&self, guest: &str) -> PathBuf {
        self.tmp
            .path()
            .join("run/guests")
            .join(guest)
            .join("notify")
    }

    /// `notifyhub ARGS` against this hub, with `NOTIFY_SOCKET` of guest `g1`.
    fn run(&self, args: &[&str]) -> Output {
        run(self.command(args))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = notifyhub(args);
        command
            .env("NOTIFYHUB_URL", &self.url)
            .env("NOTIFY_SOCKET", self.socket("g1"));
        command
    }

    /// `status NAME --json`, parsed.
    fn guest(&self, name: &str) -> Value {
        let out = self.run(&["status", name, "--json"]);
        assert_eq!(out.code, 0, "{out:?}");
        out.json()
    }

    /// A raw `DELETE /api/v1/guests/NAME`; the status code.
    fn delete(&self, name: &str) -> u16 {
        let address = self.url.strip_prefix("http://").unwrap();
        let mut stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(LIVENESS)).unwrap();
        write!(
            stream,
            "DELETE /api/v1/guests/{name} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer.split(' ').nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `notifyhub ARGS` with a clean environment for it: no hub URL, no notify socket, no proxy.
fn notifyhub(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).stdin(Stdio::null());
    for name in [
        "NOTIFYHUB_URL",
        "NOTIFY_SOCKET",
        "http_proxy",
        "HTTP_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        command.env_remove(name);
    }
    command
}

#[derive(Debug)]
struct Output {
    pid: u32,
    code: i32,
    stdout: String,
    stderr: String,
}

impl Output {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {self:?}"))
    }
}

/// Runs `command` to its end, within [`LIVENESS`].
fn run(mut command: Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let err = thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let status = wait_within(&mut child, LIVENESS);
    Output {
        pid,
        code: status.code().expect("exited, not killed by a signal"),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn wait_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("notifyhub did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends with the CLI itself; asserts it exits 0 (its barrier: the hub has the message).
fn send(hub: &Hub, assignments: &[&str]) {
    let mut args = vec!["send"];
    args.extend_from_slice(assignments);
    let out = hub.run(&args);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn wait_exit_codes() {
    let hub = Hub::start(&["g1", "g2"]);

    let out = hub.run(&["wait", "g1", "--for", "ready", "--timeout", "0"]);
    assert_eq!(out.code, 2, "timeout: {out:?}");
    assert!(out.stderr.contains("did not reach ready"), "{out:?}");
    assert!(out.stderr.contains("(it is registered)"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    // A timeout as people type it: seconds with decimals, or with a unit; the hub gets seconds.
    for (timeout, shown) in [("0.25", "0.25"), ("250ms", "0.25")] {
        let out = hub.run(&["wait", "g1", "--for", "ready", "--timeout", timeout]);
        assert_eq!(out.code, 2, "{timeout}: {out:?}");
        assert_eq!(
            out.stderr,
            format!(
                "notifyhub: guest g1 did not reach ready within {shown} s (it is registered)\n"
            )
        );
    }
    let out = hub.run(&["wait", "g1", "--for", "ready", "--timeout", "1.5x"]);
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.starts_with(
            "error: invalid value '1.5x' for '--timeout <DURATION>': expected a duration such as \
             90, 1.5, 90s, 1500ms, 2m or 1h30m (a number alone is seconds), not \"1.5x\" (unknown \
             time unit \"x\""
        ),
        "{out:?}"
    );

    let out = hub.run(&["wait", "g1", "--for", "bogus"]);
    assert_eq!(out.code, 64, "bad condition: {out:?}");
    assert!(
        out.stderr.contains("unknown condition \"bogus\""),
        "{out:?}"
    );
    let out = hub.run(&["wait", "g1", "--for", "ready", "--timeout", "7200"]);
    assert_eq!(out.code, 64, "timeout over the hub's limit: {out:?}");
    let out = hub.run(&["wait", "g1"]);
    assert_eq!(out.code, 64, "no --for: {out:?}");

    let out = hub.run(&["wait", "nosuch", "--for", "ready"]);
    assert_eq!(out.code, 4, "unknown guest: {out:?}");
    assert!(out.stderr.contains("no guest named \"nosuch\""), "{out:?}");

    // A wait that is pending when the message comes, or that starts after it: 0 either way.
    let mut pending = hub
        .command(&["wait", "g1", "--for", "ready", "--timeout", "2m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    send(&hub, &["READY=1", "STATUS=Up"]);
    assert!(wait_within(&mut pending, LIVENESS).success());
    let mut line = String::new();
    pending
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut line)
        .unwrap();
    // stdout: the guest's state, for scripts; stderr: which condition was met.
    assert_eq!(line, "g1 is ready (boot 1, status \"Up\")\n");
    let mut said = String::new();
    pending
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert_eq!(said, "notifyhub: g1 reached ready\n");

    let out = hub.run(&["wait", "g1", "--for", "ready", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["phase"], "ready");
    assert_eq!(out.stderr, "notifyhub: g1 reached ready\n");
    let out = hub.run(&["wait", "g1", "--for", "phase:ready"]);
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (
            0,
            "g1 is ready (boot 1, status \"Up\")\n",
            "notifyhub: g1 reached phase:ready\n"
        )
    );

    send(&hub, &["STOPPING=1"]);
    let out = hub.run(&["wait", "g1", "--for", "booted"]);
    assert_eq!(out.code, 3, "cannot hold: {out:?}");
    assert!(out.stderr.contains("it is stopping"), "{out:?}");
    let out = hub.run(&["wait", "g1", "--for", "ready", "--json"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.json()["guest"]["phase"], "stopping");

    // Removed while waiting (410), or before the wait began (404): 4 either way.
    let removed = thread::spawn({
        let command = hub.command(&["wait", "g2", "--for", "off", "--timeout", "10"]);
        move || run(command)
    });
    assert_eq!(hub.delete("g2"), 204);
    let out = removed.join().unwrap();
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("g2"), "{out:?}");

    let out = run(notifyhub(&[
        "--hub",
        "http://127.0.0.1:1",
        "wait",
        "g1",
        "--for",
        "ready",
    ]));
    assert_eq!(out.code, 5, "unreachable: {out:?}");
    assert!(out.stderr.contains("cannot reach the hub"), "{out:?}");
    let out = run(notifyhub(&["--hub", "localhost:7370", "status"]));
    assert_eq!(out.code, 64, "bad URL: {out:?}");
}

/// A start that fails says each fact once: the message of an error that names its cause is not
/// followed by the cause again.
#[test]
fn a_failed_start_says_each_fact_once() {
    let hub = Hub::start(&["g1"]);
    let run_dir = hub.tmp.path().join("run");
    let out = run(notifyhub(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        "none",
        "--guest",
        "g1",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]));
    assert_eq!(out.code, 1, "{out:?}");
    let socket = hub.socket("g1");
    let last = out.stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "notifyhub: cannot register guest \"g1\": cannot bind notify socket {0}: {0} is a \
             socket somebody is listening on; refusing to replace it",
            socket.display()
        ),
        "{out:?}"
    );
    assert_eq!(
        out.stderr.matches("somebody is listening").count(),
        1,
        "{out:?}"
    );
    // The first hub still has its socket.
    send(&hub, &["READY=1"]);
}

/// `--hub` and `--token-file` belong to the client commands: their help shows them, no other
/// command's does, and another command refuses them. Given before the command (the old form)
/// they still work, and the command's own beat them.
#[test]
fn hub_options_only_where_they_apply() {
    for command in ["wait", "status", "events", "launch"] {
        let out = run(notifyhub(&[command, "--help"]));
        assert_eq!(out.code, 0, "{out:?}");
        assert!(
            out.stdout.contains("\nHub:\n      --hub <URL>"),
            "{command}: {out:?}"
        );
        assert!(
            out.stdout.contains("--token-file <FILE>"),
            "{command}: {out:?}"
        );
    }
    for command in [
        &["config", "--help"][..],
        &["config", "check", "--help"],
        &["send", "--help"],
        &["parse", "--help"],
        &["completions", "--help"],
        &["man", "--help"],
        &["serve", "--help"],
        &["--help"],
    ] {
        let out = run(notifyhub(command));
        assert_eq!(out.code, 0, "{out:?}");
        assert!(!out.stdout.contains("--hub"), "{command:?}: {}", out.stdout);
        assert!(
            !out.stdout.contains("\nHub:"),
            "{command:?}: {}",
            out.stdout
        );
    }
    // serve has a --token-file of its own, the server's; config and the rest have none.
    let out = run(notifyhub(&["config", "check", "--help"]));
    assert!(!out.stdout.contains("--token-file"), "{out:?}");

    let out = run(notifyhub(&[
        "config",
        "check",
        "--hub",
        "http://x",
        "/dev/null",
    ]));
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr
            .starts_with("error: unexpected argument '--hub' found"),
        "{out:?}"
    );
    let out = run(notifyhub(&["--hub", "http://x", "parse", VECTOR]));
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.starts_with(
            "error: --hub and --token-file are options of wait, status, events and launch only\n"
        ),
        "{out:?}"
    );

    // Where each value comes from: after the command beats before it, which beats the
    // environment.
    let unreachable = |port: u16| format!("cannot reach the hub at http://127.0.0.1:{port}:");
    let out = run(notifyhub(&[
        "--hub",
        "http://127.0.0.1:1",
        "status",
        "--hub",
        "http://127.0.0.1:2",
    ]));
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains(&unreachable(2)), "{out:?}");
    let mut command = notifyhub(&["--hub", "http://127.0.0.1:1", "status"]);
    command.env("NOTIFYHUB_URL", "http://127.0.0.1:3");
    let out = run(command);
    assert!(out.stderr.contains(&unreachable(1)), "{out:?}");
    let mut command = notifyhub(&["status"]);
    command.env("NOTIFYHUB_URL", "http://127.0.0.1:3");
    let out = run(command);
    assert!(out.stderr.contains(&unreachable(3)), "{out:?}");
}

#[test]
fn status_table_detail_and_json() {
    let hub = Hub::start(&["g1", "g2"]);
    send(
        &hub,
        &["X_SYSTEMD_HOSTNAME=probe", "READY=1", "STATUS=Serving"],
    );

    let out = hub.run(&["status"]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{out:?}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "BOOTS", "SEEN", "HOSTNAME", "STATUS"]
    );
    // SEEN says how long ago, which depends on the machine's speed: not checked.
    let g1: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(g1[..3], ["g1", "ready", "1"], "{out:?}");
    assert_eq!(g1[g1.len() - 2..], ["probe", "Serving"], "{out:?}");
    let g2: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(g2, ["g2", "registered", "0", "never", "-"], "{out:?}");

    let out = hub.run(&["status", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let guests = out.json()["guests"].as_array().unwrap().clone();
    assert_eq!(guests.len(), 2);
    assert_eq!(guests[0]["name"], "g1");
    assert_eq!(guests[0]["status"], "Serving");

    let out = hub.run(&["status", "g1"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("\nphase:         ready\n"), "{out:?}");
    assert!(
        out.stdout.contains("\nstatus:        \"Serving\"\n"),
        "{out:?}"
    );
    assert_eq!(hub.guest("g1")["hostname"], "probe");

    let out = hub.run(&["status", "nosuch"]);
    assert_eq!(out.code, 4, "{out:?}");
    let out = hub.run(&["status", "../g1"]);
    assert_eq!(out.code, 64, "{out:?}");
    assert!(out.stderr.contains("invalid guest name"), "{out:?}");
}

#[test]
fn send_to_the_hub() {
    let hub = Hub::start(&["g1"]);

    let out = hub.run(&[
        "send",
        "-v",
        "--ready",
        "--status",
        "Up and running",
        "X_APP=1",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("the barrier passed"), "{out:?}");
    let guest = hub.guest("g1");
    assert_eq!(guest["phase"], "ready");
    assert_eq!(guest["status"], "Up and running");
    let events = hub.run(&["events", "g1", "--json"]).json();
    let first = &events["events"][0];
    assert_eq!(first["text"], "READY=1\nSTATUS=Up and running\nX_APP=1");

    // --pid of its own pid: the kernel's credentials say that pid.
    let out = hub.run(&["send", "--pid", "self", "STATUS=own pid"]);
    assert_eq!(out.code, 0, "{out:?}");
    let guest = hub.guest("g1");
    assert_eq!(guest["status"], "own pid");
    assert_eq!(guest["last_sender"]["credentials"]["pid"], out.pid);

    // Another pid: root may claim it; anyone else gets a warning and sends as themselves.
    let test_pid = std::process::id().to_string();
    let out = hub.run(&["send", "--pid", &test_pid, "STATUS=claimed pid"]);
    assert_eq!(out.code, 0, "{out:?}");
    let sender_pid = &hub.guest("g1")["last_sender"]["credentials"]["pid"];
    if rustix::process::geteuid().is_root() {
        assert_eq!(sender_pid, std::process::id(), "{out:?}");
    } else {
        assert!(out.stderr.contains("could not send as pid"), "{out:?}");
        assert_eq!(sender_pid, out.pid);
    }

    // --fd passes an inherited descriptor: here stdin, a file.
    let file = hub.tmp.path().join("passed");
    std::fs::write(&file, "x").unwrap();
    let out = run({
        let mut command = hub.command(&["send", "--fd", "0", "X_FD=passed"]);
        command.stdin(std::fs::File::open(&file).unwrap());
        command
    });
    assert_eq!(out.code, 0, "{out:?}");
    let events = hub.run(&["events", "g1", "--json"]).json();
    let with_fd = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["text"] == "X_FD=passed")
        .expect("the message with the fd");
    assert_eq!(with_fd["fds"], 1);
    let out = hub.run(&["send", "--fd", "9", "X_FD=closed"]);
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.contains("file descriptor 9 is not open"),
        "{out:?}"
    );

    // A line break inside a value would inject READY=1: refused, nothing sent.
    let before = hub.guest("g1")["messages"].clone();
    let out = hub.run(&["send", "STATUS=a\nREADY=1"]);
    assert_eq!(out.code, 64, "{out:?}");
    assert!(out.stderr.contains("line break"), "{out:?}");
    let out = hub.run(&["send", "--status", "a\nb"]);
    assert_eq!(out.code, 64, "{out:?}");
    assert_eq!(hub.guest("g1")["messages"], before, "nothing was sent");

    // Barriers: explicit timeout, or none.
    let out = hub.run(&["send", "--barrier=5", "X_BARRIER=explicit"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = hub.run(&["send", "--no-block", "X_BARRIER=none"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = hub.run(&["send", "--no-block", "--barrier", "X=1"]);
    assert_eq!(out.code, 64, "--no-block conflicts with --barrier: {out:?}");
}

#[test]
fn send_errors_name_the_rule() {
    let out = run(notifyhub(&["send", "READY=1"]));
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("NOTIFY_SOCKET is not set"), "{out:?}");

    let out = run(notifyhub(&["send", "--socket", "vsock:2", "READY=1"]));
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.contains(
            "invalid notify socket address \"vsock:2\" in --socket: vsock address lacks :PORT"
        ),
        "{out:?}"
    );

    let mut command = notifyhub(&["send", "READY=1"]);
    command.env("NOTIFY_SOCKET", "relative/path");
    let out = run(command);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("in $NOTIFY_SOCKET: not a notify socket address"),
        "{out:?}"
    );

    let out = run(notifyhub(&[
        "send",
        "--socket",
        "/nonexistent/notify",
        "READY=1",
    ]));
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr,
        "notifyhub: cannot send to /nonexistent/notify: No such file or directory (os error 2)\n"
    );
    // Each fact once: "refused" is that nothing listens, so the hint says what it does not.
    let tmp = tempfile::tempdir().unwrap();
    let stale = tmp.path().join("stale");
    drop(UnixDatagram::bind(&stale).unwrap());
    let out = run(notifyhub(&[
        "send",
        "--socket",
        stale.to_str().unwrap(),
        "READY=1",
    ]));
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "notifyhub: cannot send to {}: Connection refused (os error 111) (the socket file is \
             there, but no receiver is bound to it: has the receiver stopped?)\n",
            stale.display()
        )
    );
    let nobody = format!("@notifyhub-cli-test-nobody-{}", std::process::id());
    let out = run(notifyhub(&["send", "--socket", &nobody, "READY=1"]));
    assert_eq!(
        (out.code, out.stderr),
        (
            1,
            format!("notifyhub: cannot send to {nobody}: Connection refused (os error 111)\n")
        )
    );

    let out = run(notifyhub(&[
        "send",
        "--socket",
        "vsock-stream:2:9",
        "--fd",
        "2",
        "READY=1",
    ]));
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.contains("vsock cannot carry file descriptors"),
        "{out:?}"
    );

    let out = run(notifyhub(&["send", "--socket", "/x", "READY"]));
    assert_eq!(out.code, 64, "{out:?}");
    assert!(out.stderr.contains("expected KEY=VALUE"), "{out:?}");

    // --barrier is a duration like the other timeouts.
    let out = run(notifyhub(&[
        "send",
        "--socket",
        "/x",
        "--barrier=5q",
        "READY=1",
    ]));
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.starts_with(
            "error: invalid value '5q' for '--barrier[=<DURATION>]': expected a duration such as"
        ),
        "{out:?}"
    );
}

/// Every option's message says what its help says: 0 is a rate (no limit), ranges are given
/// with both ends, durations in the forms people type.
#[test]
fn serve_option_errors_match_their_docs() {
    let cases: [(&str, &str); 12] = [
        (
            "--rate-limit=-5",
            "invalid value '-5' for '--rate-limit <RATE>': expected messages per second: 0 for no \
             limit, or a number above 0 and at most 1000000000, not \"-5\"",
        ),
        (
            "--rate-burst=0",
            "invalid value '0' for '--rate-burst <N>': expected an integer from 1 to 4294967295, \
             not \"0\"",
        ),
        (
            "--vsock-port=4294967295",
            "invalid value '4294967295' for '--vsock-port <PORT>': expected an integer from 0 to \
             4294967294, not \"4294967295\"",
        ),
        (
            "--vsock-idle-ms=2000",
            "invalid value '2000' for '--vsock-idle-ms <MS>': expected an integer from 1 to 1999, \
             not \"2000\"",
        ),
        (
            "--ready-timeout=0",
            "invalid value '0' for '--ready-timeout <DURATION>': expected a duration above 0 \
             (leave the option out for none), not \"0\"",
        ),
        (
            "--ready-timeout=1,5",
            "invalid value '1,5' for '--ready-timeout <DURATION>': expected a duration such as 90, \
             1.5, 90s, 1500ms, 2m or 1h30m (a number alone is seconds), not \"1,5\" (",
        ),
        (
            "--history-memory=5q",
            "invalid value '5q' for '--history-memory <SIZE>': expected a size such as 64MiB, not \
             \"5q\"",
        ),
        (
            "--retain-days=1.5",
            "invalid value '1.5' for '--retain-days <DAYS>': expected an integer from 0 to 36500, \
             not \"1.5\"",
        ),
        (
            "--retain-messages=-1",
            "invalid value '-1' for '--retain-messages <N>': expected an integer from 0 to \
             4294967295, not \"-1\"",
        ),
        (
            "--max-guests=many",
            "invalid value 'many' for '--max-guests <N>': expected an integer from 0 to 10000000, \
             not \"many\"",
        ),
        (
            "--max-connections=0",
            "invalid value '0' for '--max-connections <N>': expected an integer from 1 to \
             1000000, not \"0\"",
        ),
        (
            "--max-sse-clients=0",
            "invalid value '0' for '--max-sse-clients <N>': expected an integer from 1 to \
             1000000, not \"0\"",
        ),
    ];
    for (arg, message) in cases {
        let out = run(notifyhub(&["serve", arg]));
        assert_eq!(out.code, 64, "{arg}: {out:?}");
        let first = out.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("error: {message}")),
            "{arg}:\n{first}\nis not\nerror: {message}"
        );
    }
    // What the help says for those.
    let out = run(notifyhub(&["serve", "--help"]));
    assert!(out.stdout.contains("--ready-timeout <DURATION>"), "{out:?}");
    assert!(out.stdout.contains("0: no limit"), "{out:?}");
    assert!(out.stdout.contains("1 to 1999"), "{out:?}");
}

/// An abstract socket of the test's own: the exact bytes, and a barrier nobody answers.
#[test]
fn send_to_an_abstract_socket() {
    let name = format!("notifyhub-cli-test-{}", std::process::id());
    let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let receiver = UnixDatagram::bind_addr(&address).unwrap();
    receiver.set_read_timeout(Some(LIVENESS)).unwrap();
    let socket = format!("@{name}");

    let out = run(notifyhub(&[
        "send",
        "--socket",
        &socket,
        "--no-block",
        "READY=1",
        "STATUS=exact",
    ]));
    assert_eq!(out.code, 0, "{out:?}");
    let mut buffer = [0_u8; 4096];
    let len = receiver.recv(&mut buffer).unwrap();
    assert_eq!(
        &buffer[..len],
        b"READY=1\nSTATUS=exact",
        "joined by \\n, nothing appended"
    );

    // The receiver never reads the barrier, so never closes its fd: the barrier times out.
    let out = run(notifyhub(&[
        "send",
        "--socket",
        &socket,
        "--barrier=0.2",
        "X=1",
    ]));
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("did not confirm it within 0.2 s"),
        "{out:?}"
    );
}

#[test]
fn events_history_and_follow() {
    let hub = Hub::start(&["g1"]);
    send(&hub, &["X_SYSTEMD_HOSTNAME=probe"]);
    send(&hub, &["READY=1", "STATUS=tab\there"]);

    let out = hub.run(&["events", "g1"]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("SEQ  TIME"), "{out:?}");
    assert!(lines[1].starts_with("1  "), "{out:?}");
    assert!(lines[1].ends_with("  X_SYSTEMD_HOSTNAME=probe"), "{out:?}");
    assert!(
        out.stdout.contains("  READY=1\\nSTATUS=tab\\there\n"),
        "escaped: {out:?}"
    );
    let out = hub.run(&["events", "g1", "--json"]);
    assert_eq!(out.json()["events"][0]["text"], "X_SYSTEMD_HOSTNAME=probe");
    let out = hub.run(&["events", "nosuch"]);
    assert_eq!(out.code, 4, "{out:?}");

    // --follow: the history, then each change; Ctrl-C ends it with 0.
    let mut follower = hub
        .command(&["events", "g1", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(follower.stdout.take().unwrap());
    // The history is printed once the stream is open, so what is sent next is followed.
    next_line_with(&lines, "X_SYSTEMD_HOSTNAME=probe");
    send(&hub, &["STATUS=followed"]);
    next_line_with(&lines, "status \"followed\"");
    send(&hub, &["X_SYSTEMD_UNIT_ACTIVE=multi-user.target"]);
    next_line_with(&lines, "unit multi-user.target active");
    let pid = rustix::process::Pid::from_raw(follower.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    assert_eq!(wait_within(&mut follower, LIVENESS).code(), Some(0));

    // --follow --json: one JSON line per change; the guest's removal ends it with 4.
    let mut follower = hub
        .command(&["events", "g1", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(follower.stdout.take().unwrap());
    let history: Value = serde_json::from_str(&next_line_with(&lines, "\"events\"")).unwrap();
    assert!(history["events"].as_array().unwrap().len() >= 3);
    assert_eq!(hub.delete("g1"), 204);
    let removed: Value = serde_json::from_str(&next_line_with(&lines, "removed")).unwrap();
    assert_eq!(removed["event"]["type"], "removed");
    assert_eq!(wait_within(&mut follower, LIVENESS).code(), Some(4));
}

/// The lines of `output`, as they come.
fn lines_of(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (lines, incoming) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            if lines.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    incoming
}

/// The next line that contains `text`, within [`LIVENESS`].
fn next_line_with(lines: &mpsc::Receiver<String>, text: &str) -> String {
    let deadline = Instant::now() + LIVENESS;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(text) => return line,
            Ok(_) => {}
            Err(error) => panic!("no line with {text:?} within {LIVENESS:?}: {error}"),
        }
    }
}

#[test]
fn parse_logs_offline() {
    let out = run(notifyhub(&["parse", VECTOR]));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("guest systemd257-boot-reboot-arg\n"),
        "{out:?}"
    );
    assert!(out.stdout.contains("  phase:     off\n"), "{out:?}");
    assert!(out.stdout.contains("  boots:     1\n"), "{out:?}");
    assert!(
        out.stdout
            .contains("  shutdown:  reboot \"probe-arg\", exit status 0\n"),
        "{out:?}"
    );

    let out = run(notifyhub(&["parse", "--json", "--guest", "vm", VECTOR]));
    assert_eq!(out.code, 0, "{out:?}");
    let replay = out.json();
    let snapshot = &replay["guests"][0]["snapshot"];
    assert_eq!(snapshot["name"], "vm");
    assert_eq!(snapshot["phase"], "off");
    assert_eq!(snapshot["shutdown"]["verb"], "reboot");
    assert_eq!(snapshot["shutdown"]["reboot_parameter"], "probe-arg");

    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.log");
    std::fs::write(
        &bad,
        "READY=1\nSTATUS=Up\n\nthis is no assignment\n{\"hex\": \"zz\"}\n",
    )
    .unwrap();
    let out = run(notifyhub(&["parse", bad.to_str().unwrap()]));
    assert_eq!(out.code, 65, "bad lines: {out:?}");
    // The summary on stdout, the lines it could not read on stderr (web/CLI.md).
    let shown = bad.display();
    let stderr: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(stderr.len(), 3, "{out:?}");
    assert_eq!(
        stderr[0],
        format!("{shown}:4: expected a JSON object, a KEY=VALUE line or a blank line")
    );
    assert!(
        stderr[1].starts_with(&format!("{shown}:5: bad \"hex\"")),
        "{out:?}"
    );
    assert_eq!(
        stderr[2],
        "notifyhub: 2 lines could not be read (listed above on stderr) and were skipped"
    );
    assert!(!out.stdout.contains(&shown.to_string()), "{out:?}");
    assert!(out.stdout.contains("  status:    \"Up\"\n"), "{out:?}");
    let summary = out.stdout;
    // --json: the errors are in the JSON, stdout holds nothing else.
    let out = run(notifyhub(&["parse", "--json", bad.to_str().unwrap()]));
    assert_eq!(out.code, 65, "{out:?}");
    assert_eq!(out.json()["errors"][0]["line"], 4, "{out:?}");
    // The same summary whether stderr is read or not: nothing of it moved.
    let mut quiet = notifyhub(&["parse", bad.to_str().unwrap()]);
    quiet.stderr(Stdio::null());
    assert_eq!(
        String::from_utf8(quiet.output().unwrap().stdout).unwrap(),
        summary
    );

    // stdin, and a file that cannot be read next to one that can.
    let mut command = notifyhub(&["parse", "-", "/nonexistent.log"]);
    command.stdin(std::fs::File::open(VECTOR).unwrap());
    let out = run(command);
    assert_eq!(out.code, 66, "{out:?}");
    assert!(out.stdout.contains("==> <stdin> <==\n"), "{out:?}");
    assert!(out.stdout.contains("guest stdin\n"), "{out:?}");
    assert!(
        out.stderr.contains("/nonexistent.log: No such file"),
        "{out:?}"
    );
}

#[test]
fn launch_snippets() {
    let hub = Hub::start(&["g1"]);
    let out = hub.run(&["launch", "nosuch"]);
    assert_eq!(out.code, 4, "{out:?}");
    let out = hub.run(&["launch", "g1"]);
    assert_eq!(out.code, 0, "{out:?}");
    let socket = hub.socket("g1");
    assert!(
        out.stdout
            .starts_with(&format!("# g1: NOTIFY_SOCKET={}\n", socket.display())),
        "{out:?}"
    );
    let out = hub.run(&["launch", "g1", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["guest"], "g1");
}

#[test]
fn completions_man_and_help() {
    let out = run(notifyhub(&["completions", "bash"]));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("notifyhub"), "{out:?}");
    let out = run(notifyhub(&["completions", "zsh"]));
    assert!(out.stdout.contains("#compdef notifyhub"), "{out:?}");

    let out = run(notifyhub(&["man"]));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with(".ie"), "{out:?}");
    assert!(out.stdout.contains(".TH notifyhub 1"), "{out:?}");
    assert!(out.stdout.contains(".SH \"EXIT STATUS\""), "{out:?}");
    let out = run(notifyhub(&["man", "wait"]));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(".TH notifyhub-wait 1"), "{out:?}");
    assert!(out.stdout.contains("\\-\\-timeout"), "{out:?}");
    let out = run(notifyhub(&["man", "nosuch"]));
    assert_eq!(out.code, 64, "{out:?}");

    let out = run(notifyhub(&["wait", "--help"]));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("Exit status:\n  0 "), "{out:?}");
    let out = run(notifyhub(&["--version"]));
    assert_eq!(out.code, 0, "{out:?}");
    let out = run(notifyhub(&["no-such-command"]));
    assert_eq!(out.code, 64, "{out:?}");
    let out = run(notifyhub(&[]));
    assert_eq!(out.code, 64, "{out:?}");
}

#[test]
fn closed_stdout_is_no_failure() {
    // `notifyhub parse … | head -c0`: the reader is gone before the output is written, and
    // there is more of it (10 × 15 KB) than a pipe holds.
    let mut child = notifyhub(&["parse", "--json"])
        .args([VECTOR; 10])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = wait_within(&mut child, LIVENESS);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
