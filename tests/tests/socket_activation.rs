//! Socket activation on the host, without systemd as PID 1: Debian's `systemd-socket-activate`
//! binds the sockets, waits for the first connection or datagram, and only then execs
//! `notifyhub serve` with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` set, as a socket unit
//! does. Two of them chained pass a stream and a datagram socket at once (the inner one passes
//! the outer one's fds through and names them all).
//!
//! Proves: a guest's READY=1 sent before the hub runs starts it and is read by it from the passed
//! notify socket; HTTP is served on the passed TCP or UNIX socket (the first request is the one
//! that started it); a socket of the wrong kind or an unknown name stops the start with an error
//! that names the fd; `LISTEN_FDS` meant for another process is ignored.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notifyhub_tests::{SETTLE_TIMEOUT, SHUTDOWN_TIMEOUT, START_TIMEOUT, hub_binary};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a sender or client started alongside the hub may take (it waits for the hub).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// `systemd-socket-activate ARGS -- notifyhub serve --run-dir DIR/run SERVE_ARGS`, spawned.
struct Activated {
    child: Child,
    /// Every line it printed: `[stdout] …`, `[stderr] …`.
    log: Arc<Mutex<Vec<String>>>,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Activated {
    fn spawn(dir: &Path, activate: &[&str], serve: &[&str]) -> Self {
        let mut cmd = Command::new("systemd-socket-activate");
        cmd.args(activate)
            .arg("--")
            .arg(hub_binary())
            .arg("serve")
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(serve)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect(
            "systemd-socket-activate (Debian's systemd package; scripts/setup installs it)",
        );
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let err_log = Arc::clone(&log);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                err_log.lock().unwrap().push(format!("[stderr] {line}"));
            }
        });
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, log, stdout }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Reads stdout up to the `notifyhub: listening on ADDR` line; returns ADDR and the
    /// `guest NAME: NOTIFY_SOCKET=PATH` lines before it.
    async fn listening(&mut self) -> (String, Vec<(String, String)>) {
        match self.try_listening().await {
            Some(found) => found,
            None => panic!("no listening line:\n{}", self.log_text()),
        }
    }

    /// As [`listening`](Self::listening); `None` when the hub exited first (its stderr then
    /// drained into the log).
    async fn try_listening(&mut self) -> Option<(String, Vec<(String, String)>)> {
        let mut guests = Vec::new();
        let read = async {
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                self.log.lock().unwrap().push(format!("[stdout] {line}"));
                if let Some(address) = line.strip_prefix("notifyhub: listening on ") {
                    return Some(address.to_owned());
                }
                if let Some((name, path)) = line
                    .strip_prefix("guest ")
                    .and_then(|rest| rest.split_once(": NOTIFY_SOCKET="))
                {
                    guests.push((name.to_owned(), path.to_owned()));
                }
            }
            None
        };
        // The hub starts once the trigger arrived: the bound covers the trigger too.
        let address = tokio::time::timeout(START_TIMEOUT + CLIENT_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| panic!("no listening line in time:\n{}", self.log_text()));
        if address.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        address.map(|address| (address, guests))
    }

    /// Its exit status (the hub's: `systemd-socket-activate` execs it, same pid).
    async fn exit_status(&mut self) -> ExitStatus {
        tokio::time::timeout(SHUTDOWN_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("still running:\n{}", self.log_text()))
            .unwrap()
    }

    /// SIGTERM; asserts a clean exit (0).
    async fn terminate(mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = self.exit_status().await;
        assert!(status.success(), "{status}:\n{}", self.log_text());
    }
}

/// Waits (bounded) until `systemd-socket-activate` has bound its socket at `path`.
async fn bound(path: &Path) {
    let exists = async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(START_TIMEOUT, exists)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "systemd-socket-activate bound no socket at {}",
                path.display()
            )
        });
}

/// Runs `program ARGS` with `env` to completion (bounded); its status and stdout.
async fn run(program: &str, args: &[&str], env: &[(&str, &Path)]) -> (ExitStatus, String) {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (name, value) in env {
        cmd.env(name, value);
    }
    let out = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} still running after {CLIENT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn get_json(url: &str) -> Value {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK, "{url}");
    response.json().await.unwrap()
}

/// A guest's READY=1 sent before the hub exists starts it (the datagram is the trigger, as for
/// a socket unit's `ListenDatagram=`), the hub registers the guest with the passed socket and
/// reads that very message; HTTP comes on a passed TCP socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guests_ready_starts_the_hub_which_reads_it_from_the_passed_socket() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("web1.notify");
    let notify_arg = notify.to_str().unwrap();
    // systemd-socket-activate refuses port 0: take a free port from the kernel and hand it on.
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut hub = Activated::spawn(
        dir.path(),
        &[
            "--datagram",
            "-l",
            notify_arg,
            "--fdname=notify-web1",
            "--",
            "systemd-socket-activate",
            "-l",
            &http,
            "--fdname=notify-web1:http",
        ],
        &[],
    );
    // The socket is bound before systemd-socket-activate waits; poll for it (bounded).
    bound(&notify).await;
    // systemd-notify waits on its BARRIER=1 until the hub, started by this very message, has
    // read both datagrams.
    let notify_socket = notify.clone();
    let sender = tokio::spawn(async move {
        run(
            "systemd-notify",
            &["--ready", "--status=started the hub"],
            &[("NOTIFY_SOCKET", &notify_socket)],
        )
        .await
    });
    let (address, guests) = hub.listening().await;
    assert_eq!(guests, [("web1".to_owned(), notify_arg.to_owned())]);
    assert_eq!(address, format!("http://{http}"));
    let (status, _) = sender.await.unwrap();
    assert!(status.success(), "systemd-notify: {status}");

    let guest = get_json(&format!("{address}/api/v1/guests/web1")).await;
    assert_eq!(guest["phase"], "ready", "{guest:#}");
    assert_eq!(guest["status"], "started the hub");
    assert_eq!(guest["notify_socket"], notify_arg);
    assert!(
        hub.log_text().contains("http, notify-web1"),
        "{}",
        hub.log_text()
    );
    hub.terminate().await;
    // The socket belongs to whoever passed it: the hub leaves its file alone.
    assert!(Path::new(notify_arg).exists());
}

/// HTTP on a passed UNIX stream socket: the request that started the hub is answered, and
/// guests from `--guest` are still bound by the hub itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_on_a_passed_unix_socket_starts_the_hub_and_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let http = dir.path().join("http.sock");
    let http_arg = http.to_str().unwrap().to_owned();
    let mut hub = Activated::spawn(
        dir.path(),
        &["-l", &http_arg, "--fdname=http"],
        &["--guest", "web2"],
    );
    bound(&http).await;
    let client = tokio::spawn(async move {
        run(
            "curl",
            &[
                "--silent",
                "--fail",
                "--unix-socket",
                &http_arg,
                "http://localhost/api/v1/guests/web2",
            ],
            &[],
        )
        .await
    });
    let (address, guests) = hub.listening().await;
    assert_eq!(address, format!("unix:{}", http.display()));
    let own_socket: PathBuf = dir.path().join("run/guests/web2/notify");
    assert_eq!(
        guests,
        [("web2".to_owned(), own_socket.to_str().unwrap().to_owned())]
    );
    let (status, body) = client.await.unwrap();
    assert!(status.success(), "curl: {status}\n{}", hub.log_text());
    let guest: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(guest["name"], "web2");
    assert_eq!(guest["phase"], "registered");
    hub.terminate().await;
    assert!(!own_socket.exists(), "the hub removes the sockets it bound");
}

/// Each mistake in the passed sockets stops the start, naming the fd and what was expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_socket_or_name_fails_the_start_clearly() {
    // (systemd-socket-activate options, the socket is a datagram one, the error's words)
    let cases: [(&[&str], bool, &str); 4] = [
        (
            &["--datagram", "--fdname=http"],
            true,
            r#"inherited fd 3 ("http") is not a listening TCP or UNIX stream socket"#,
        ),
        (
            &["--fdname=notify-web1"],
            false,
            r#"inherited fd 3 ("notify-web1") is not an AF_UNIX SOCK_DGRAM socket bound to a path"#,
        ),
        (
            &["--fdname=notifyhub.socket"],
            false,
            r#"inherited fd 3 is named "notifyhub.socket"; notifyhub takes "http", "vsock", "vsock-seqpacket" and "notify-GUEST" (set FileDescriptorName= in the socket unit)"#,
        ),
        (
            &["--fdname=notify-.web"],
            false,
            r#"inherited fd 3: ".web" is no guest name"#,
        ),
    ];
    for (options, datagram, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("passed");
        let socket_arg = socket.to_str().unwrap();
        let mut activate = vec!["-l", socket_arg];
        activate.extend_from_slice(options);
        let mut hub = Activated::spawn(dir.path(), &activate, &[]);
        bound(&socket).await;
        // The trigger: a datagram, or a connection (kept open until the hub has exited).
        let _connection = if datagram {
            let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
            sender.send_to(b"READY=1", &socket).unwrap();
            None
        } else {
            Some(std::os::unix::net::UnixStream::connect(&socket).unwrap())
        };
        let status = hub.exit_status().await;
        assert_eq!(status.code(), Some(1), "{options:?}:\n{}", hub.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await; // let stderr drain
        let log = hub.log_text();
        assert!(
            log.contains(expected),
            "{options:?}: want {expected:?} in\n{log}"
        );
        assert!(!log.contains("listening on"), "{log}");
    }
}

/// `LISTEN_FDS` whose `LISTEN_PID` is another process (a parent's, leaked) is not ours: the hub
/// binds `--listen` itself and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_fds_of_another_process_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(hub_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            "none",
            "--run-dir",
        ])
        .arg(dir.path())
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDNAMES", "http")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
        .await
        .expect("no listening line")
        .unwrap()
        .unwrap();
    let address = line
        .strip_prefix("notifyhub: listening on ")
        .unwrap_or_else(|| panic!("{line}"));
    let guests = tokio::time::timeout(
        SETTLE_TIMEOUT,
        get_json(&format!("{address}/api/v1/guests")),
    )
    .await
    .unwrap();
    assert_eq!(guests["guests"], serde_json::json!([]));
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(SHUTDOWN_TIMEOUT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// A passed kernel vsock listener (`vsock`) replaces `--vsock-port`: the hub serves on it, and
/// `--vm NAME=CID`, which needs a kernel listener, works with it alone. Skipped where the
/// kernel has no `AF_VSOCK` (systemd-socket-activate cannot bind it then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_vsock_listener_replaces_vsock_port() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("trigger");
    let trigger_arg = trigger.to_str().unwrap();
    // The outer passes a datagram socket that only starts the inner, which adds the vsock
    // listener; a datagram socket has to have a role, so it is guest web1's.
    let mut hub = Activated::spawn(
        dir.path(),
        &[
            "--datagram",
            "-l",
            trigger_arg,
            "--fdname=notify-web1",
            "--",
            "systemd-socket-activate",
            "-l",
            "vsock::0",
            "--fdname=notify-web1:vsock",
        ],
        &["--listen", "127.0.0.1:0", "--vm", "vm1=42"],
    );
    bound(&trigger).await;
    let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
    sender.send_to(b"STATUS=start", &trigger).unwrap();
    let Some((address, _)) = hub.try_listening().await else {
        let log = hub.log_text();
        if log.contains("Failed to open 'vsock::0'") {
            println!("SKIPPED: no AF_VSOCK here:\n{log}");
            return;
        }
        panic!("no listening line:\n{log}");
    };
    let vsock = get_json(&format!("{address}/api/v1/vsock")).await;
    assert!(vsock["ports"]["stream"].is_u64(), "{vsock:#}");
    assert_eq!(vsock["ports"]["seqpacket"], Value::Null);
    let vm1 = get_json(&format!("{address}/api/v1/guests/vm1")).await;
    assert_eq!(vm1["cid"], 42, "{vm1:#}");
    let web1 = get_json(&format!("{address}/api/v1/guests/web1")).await;
    assert_eq!(web1["status"], "start", "{web1:#}");
    let log = hub.log_text();
    assert!(log.contains("sockets=vsock, notify-web1"), "{log}");
    assert!(
        log.contains("listening for VM guests on AF_VSOCK SOCK_STREAM"),
        "{log}"
    );
    hub.terminate().await;
}
