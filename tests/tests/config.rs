//! The configuration file of the real binary: `notifyhub config check` and its exit statuses,
//! flag > environment > file > default for `serve`, and SIGHUP reloads on a running hub (guests
//! of the file added and removed, everything else kept, an invalid file refused, `RELOADING=1`
//! then `READY=1` to the hub's own service manager).

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use notifyhub_tests::{Hub, SETTLE_TIMEOUT, START_TIMEOUT, hub_binary};
use notifyhub_transport_unix::{NotifySocket, Received};
use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};

/// `notifyhub ARGS` with no `NOTIFYHUB_*` variable from the test's environment.
fn notifyhub(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(hub_binary());
    command.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NOTIFYHUB_") {
            command.env_remove(name);
        }
    }
    command
}

fn run(command: &mut std::process::Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("run notifyhub");
    (
        status.code().expect("exited"),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `notifyhub config check` of a file `name` holding `text`, which must exit with `EX_CONFIG`:
/// the file's path, stderr, and its lines that name a place in the file (`PATH:LINE:COLUMN: …`).
fn invalid(dir: &Path, name: &str, text: &str) -> (String, String, Vec<String>) {
    let path = write(dir, name, text);
    let (code, stdout, stderr) = run(&mut notifyhub(&["config", "check", &path]));
    assert_eq!((code, stdout.as_str()), (78, ""), "{stderr}");
    let places = stderr
        .lines()
        .map(|line| line.trim_start_matches("notifyhub: "))
        .filter(|line| line.starts_with(&format!("{path}:")))
        .map(str::to_owned)
        .collect();
    (path, stderr, places)
}

#[test]
fn config_check_exit_statuses_and_positions() {
    let dir = tempfile::tempdir().unwrap();
    let valid = write(
        dir.path(),
        "valid.toml",
        "# a hub\nlisten = \"127.0.0.1:7370\"\nguest = [\"web1\", \"web2\"]\nvsock-port = 7371\n\
         vm = [\"vm1=42\"]\nhybrid = [\"fc1=/run/fc1.vsock:7371\"]\nready-timeout = 60\n",
    );
    let (code, stdout, stderr) =
        run(notifyhub(&["config", "check", &valid]).env("NOTIFYHUB_CONFIG", "/nonexistent"));
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert_eq!(stdout, format!("{valid}: valid\n"));

    // The shipped example is valid.
    let example = notifyhub_tests::repo_root().join("contrib/notifyhub.toml");
    let example = example.to_str().unwrap();
    let (code, stdout, stderr) = run(&mut notifyhub(&["config", "check", example]));
    assert_eq!(
        (code, stdout),
        (0, format!("{example}: valid\n")),
        "{stderr}"
    );

    // Without FILE: $NOTIFYHUB_CONFIG.
    let (code, stdout, _) = run(notifyhub(&["config", "check"]).env("NOTIFYHUB_CONFIG", &valid));
    assert_eq!((code, stdout), (0, format!("{valid}: valid\n")));

    // EX_CONFIG: every error, each at its line and column, with the line shown.
    let (bad, stderr, places) = invalid(
        dir.path(),
        "bad.toml",
        "listen = \"localhost\"\n\nguest = [\"web1\", 2.5e3, true]\nlisen = 1\n",
    );
    assert_eq!(places.len(), 4, "{stderr}");
    let expected = [
        "1:10: invalid value 'localhost' for '--listen <ADDR>'",
        "3:18: `guest` takes strings (an array, or one), not a float: write \"2.5e3\", in quotes",
        "3:25: `guest` takes strings (an array, or one), not a boolean",
        "4:1: unknown key `lisen`",
    ];
    for (place, expected) in places.iter().zip(expected) {
        assert!(place.starts_with(&format!("{bad}:{expected}")), "{stderr}");
    }
    assert!(stderr.starts_with("notifyhub: "), "{stderr}");
    assert!(
        stderr.contains("\n 4 | lisen = 1\n   | ^^^^^\n"),
        "{stderr}"
    );

    // What only the guests together show: names, duplicates, CIDs, each at its value.
    let (guests, stderr, places) = invalid(
        dir.path(),
        "guests.toml",
        "vsock-port = 7371\nguest = [\"web1\", \"../etc\"]\nvm = [\"web1=42\", \"vm2=42\"]\n",
    );
    assert_eq!(places.len(), 3, "{stderr}");
    assert!(places[0].starts_with(&format!("{guests}:2:18: invalid guest name \"../etc\": ")));
    assert_eq!(
        places[1],
        format!("{guests}:3:7: guest \"web1\" is declared twice")
    );
    assert_eq!(
        places[2],
        format!("{guests}:3:18: CID 42 is guest \"web1\"'s already")
    );

    // A rule between options: at the first key its message names.
    let (ports, stderr, places) = invalid(
        dir.path(),
        "ports.toml",
        "guest = \"a\"\nvsock-port = 7371\nvsock-seqpacket-port = 7371\n",
    );
    assert_eq!(places.len(), 1, "{stderr}");
    assert!(
        places[0].starts_with(&format!(
            "{ports}:2:1: --vsock-port and --vsock-seqpacket-port are both 7371"
        )),
        "{stderr}"
    );

    // TOML syntax: its first error (the parser's next ones follow from it), and what the lines
    // before it show.
    let (syntax, stderr, places) = invalid(
        dir.path(),
        "syntax.toml",
        "guest = [\"a\", \"a\"]\nvm = [\"b=3\"\n",
    );
    assert_eq!(places.len(), 2, "{stderr}");
    assert_eq!(
        places[0],
        format!("{syntax}:1:15: guest \"a\" is declared twice")
    );
    assert_eq!(
        places[1],
        format!("{syntax}:2:12: unclosed array, expected `]`")
    );

    // EX_NOINPUT: missing or unreadable; EX_USAGE: a wrong command line.
    let missing = dir.path().join("missing.toml");
    let (code, _, stderr) = run(&mut notifyhub(&[
        "config",
        "check",
        missing.to_str().unwrap(),
    ]));
    assert_eq!(code, 66, "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "notifyhub: configuration file {} does not exist\n",
            missing.display()
        )
    );
    let (code, _, stderr) = run(&mut notifyhub(&[
        "config",
        "check",
        dir.path().to_str().unwrap(),
    ]));
    assert_eq!(code, 66, "{stderr}");
    let (code, _, _) = run(&mut notifyhub(&["config", "check", &valid, &valid]));
    assert_eq!(code, 64);
}

/// One run of `config check` reports every error it can find: keys, TOML types, values, and
/// the rules between the options that passed, in the file's order, each with its line and a
/// caret. A rule that may only fail because a refused value is missing is not reported.
#[test]
fn config_check_reports_every_error_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (file, stderr, places) = invalid(
        dir.path(),
        "many.toml",
        "vsock-port = \"7371\"\nvm = [\"vm1=42\", \"vm2=42\"]\nguest = [\"web1\", \"web1\", \
         \"x/y\"]\nready-timeout = \"soon\"\ntoken-file = \"/etc/notifyhub/token\"\n\
         insecure-no-auth = true\nsocket-mode = 0o660\nrate-limit = -1\nlisen = 1\n",
    );
    let expected = [
        "1:14: `vsock-port` takes an integer, not a string: write vsock-port = 7371, without \
         quotes",
        "2:17: CID 42 is guest \"vm1\"'s already",
        "3:18: guest \"web1\" is declared twice",
        "3:26: invalid guest name \"x/y\": ",
        "4:17: invalid value 'soon' for '--ready-timeout <DURATION>': expected a duration such \
         as 90, 1.5, 90s, 1500ms, 2m or 1h30m (a number alone is seconds), not \"soon\"",
        "5:1: the argument '--token-file <FILE>' cannot be used with '--insecure-no-auth'",
        "7:15: `socket-mode` takes a string, not an integer: write socket-mode = \"0660\", in \
         quotes",
        "8:14: invalid value '-1' for '--rate-limit <RATE>': expected messages per second: 0 for \
         no limit, or a number above 0 and at most 1000000000, not \"-1\"",
        "9:1: unknown key `lisen`",
    ];
    assert_eq!(places.len(), expected.len(), "{stderr}");
    for (place, expected) in places.iter().zip(expected) {
        assert!(
            place.starts_with(&format!("{file}:{expected}")),
            "{place}\nis not\n{file}:{expected}"
        );
    }
    // Each with its line and a caret under the value.
    assert!(
        stderr.contains("\n 1 | vsock-port = \"7371\"\n   |              ^^^^^^\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\n 7 | socket-mode = 0o660\n   |               ^^^^^\n"),
        "{stderr}"
    );
    // With the port fixed, the next run finds nothing new: the rules were all checked already.
    let fixed = std::fs::read_to_string(&file)
        .unwrap()
        .replace("\"7371\"", "7371");
    let (_, stderr, again) = invalid(dir.path(), "many.toml", &fixed);
    assert_eq!(again.len(), expected.len() - 1, "{stderr}");
}

/// A value of the wrong TOML type is refused with the type its option takes; the environment's
/// strings are the command line's, and stay fine.
#[test]
fn toml_types_must_match_the_options() {
    let dir = tempfile::tempdir().unwrap();
    for (text, message) in [
        (
            "vsock-seqpacket-port = \"7372\"",
            "1:24: `vsock-seqpacket-port` takes an integer, not a string: write \
             vsock-seqpacket-port = 7372, without quotes",
        ),
        (
            "max-guests = 1e3",
            "1:14: `max-guests` takes an integer, not a float",
        ),
        (
            "retain-days = \"30\"",
            "1:15: `retain-days` takes an integer, not a string: write retain-days = 30, without \
             quotes",
        ),
        (
            "rate-burst = true",
            "1:14: `rate-burst` takes an integer, not a boolean",
        ),
        (
            "ignore-unprivileged = 1",
            "1:23: `ignore-unprivileged` takes true or false, not an integer",
        ),
        (
            "run-dir = 7",
            "1:11: `run-dir` takes a string, not an integer: write run-dir = \"7\", in quotes",
        ),
        (
            "vm = [42]",
            "1:7: `vm` takes strings (an array, or one), not an integer: write \"42\", in quotes",
        ),
        (
            "history-memory = 1.5",
            "1:18: `history-memory` takes a size: bytes as an integer, or a string with a unit \
             (\"64MiB\"), not a float",
        ),
        (
            "ready-timeout = [30]",
            "1:17: `ready-timeout` takes one value, not an array",
        ),
    ] {
        let (path, stderr, places) = invalid(dir.path(), "types.toml", text);
        assert_eq!(places, [format!("{path}:{message}")], "{stderr}");
    }
    // The forms each type takes.
    let valid = write(
        dir.path(),
        "types.toml",
        "vsock-port = 7371\nrate-limit = 0.5\nrate-burst = 20\nready-timeout = \"90s\"\n\
         history-memory = \"64MiB\"\nsocket-mode = \"0660\"\nauto-register = true\n",
    );
    let (code, stdout, stderr) = run(&mut notifyhub(&["config", "check", &valid]));
    assert_eq!((code, stdout), (0, format!("{valid}: valid\n")), "{stderr}");
    let valid = write(
        dir.path(),
        "numbers.toml",
        "rate-limit = 2\nready-timeout = 1.5\nhistory-memory = 1048576\n",
    );
    let (code, _, stderr) = run(&mut notifyhub(&["config", "check", &valid]));
    assert_eq!(code, 0, "{stderr}");
}

/// `notifyhub serve` with `args` and `env` and guest `g`: sends `g` one message and returns its
/// readiness deadline after its first message, in µs.
async fn ready_timeout_of(args: &[&str], env: &[(&str, &str)]) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::from(notifyhub(&["serve"]));
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--guest",
            "g",
            "--state-dir",
            "none",
            "--run-dir",
        ])
        .arg(dir.path())
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if let Some(base) = line.strip_prefix("notifyhub: listening on ") {
                return base.to_owned();
            }
        }
        panic!("no listening line");
    })
    .await
    .expect("listening line");
    let socket = dir.path().join("guests/g/notify");
    notifyhub_tests::send_datagram(&socket, b"X_SYSTEMD_HOSTNAME=g", &[]).unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let guest = loop {
        let guest: serde_json::Value = client
            .get(format!("{base}/api/v1/guests/g"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if guest["messages"] == 1 {
            break guest;
        }
        assert!(Instant::now() < deadline, "{guest}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().await.unwrap();
    guest["ready_deadline"].as_u64().expect("a deadline") - guest["first_seen"].as_u64().unwrap()
}

/// `--ready-timeout` takes a duration as people type it, from the command line, the environment
/// and the file alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_timeout_takes_humane_durations_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        ready_timeout_of(&["--ready-timeout", "1.5"], &[]).await,
        1_500_000
    );
    assert_eq!(
        ready_timeout_of(&["--ready-timeout", "1500ms"], &[]).await,
        1_500_000
    );
    assert_eq!(
        ready_timeout_of(&[], &[("NOTIFYHUB_READY_TIMEOUT", "2m")]).await,
        120_000_000
    );
    let float = write(dir.path(), "float.toml", "ready-timeout = 2.5\n");
    assert_eq!(
        ready_timeout_of(&["--config", &float], &[]).await,
        2_500_000
    );
    let unit = write(dir.path(), "unit.toml", "ready-timeout = \"1h 30m\"\n");
    assert_eq!(
        ready_timeout_of(&["--config", &unit], &[]).await,
        5_400_000_000
    );
    // The environment's string beats the file, and a string is what it always is.
    assert_eq!(
        ready_timeout_of(&["--config", &unit], &[("NOTIFYHUB_READY_TIMEOUT", "90")]).await,
        90_000_000
    );
}

#[test]
fn serve_refuses_a_bad_or_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.toml", "guest = [\"ok\", \"no/slash\"]\n");
    let run_dir = dir.path().join("run");
    let run_dir = run_dir.to_str().unwrap();
    let (code, stdout, stderr) = run(&mut notifyhub(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--run-dir",
        run_dir,
        "--config",
        &bad,
    ]));
    assert_eq!((code, stdout.as_str()), (78, ""), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "notifyhub: {bad}:1:16: invalid guest name \"no/slash\""
        )),
        "{stderr}"
    );
    // Nothing was bound.
    assert!(!Path::new(run_dir).join("guests").join("ok").exists());

    let missing = dir.path().join("missing.toml");
    let (code, _, stderr) =
        run(
            notifyhub(&["serve", "--listen", "127.0.0.1:0", "--run-dir", run_dir])
                .env("NOTIFYHUB_CONFIG", &missing),
        );
    assert_eq!(code, 66, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}

/// A `notifyhub serve` spawned with `args` and `env`: what it printed up to its listening line.
async fn started(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let run_dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::from(notifyhub(&["serve"]));
    command
        .arg("--run-dir")
        .arg(run_dir.path())
        // Its own journal: the default one is the machine's.
        .arg("--state-dir")
        .arg(run_dir.path().join("state"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            let last = line.starts_with("notifyhub: listening on ");
            lines.push(line);
            if last {
                break;
            }
        }
    })
    .await
    .expect("listening line");
    child.kill().await.unwrap();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_beats_environment_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "hub.toml",
        "listen = \"127.0.0.1:0\"\nguest = [\"f1\"]\n",
    );
    let guests = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter_map(|line| line.strip_prefix("guest "))
            .map(|rest| rest.split(':').next().unwrap().to_owned())
            .collect()
    };
    let listening = |lines: &[String]| lines.last().unwrap().rsplit_once(':').unwrap().0.to_owned();

    // The file alone.
    let lines = started(&["--config", &file], &[]).await;
    assert_eq!(
        listening(&lines),
        "notifyhub: listening on http://127.0.0.1"
    );
    assert_eq!(guests(&lines), ["f1"]);
    // The environment beats the file; a repeatable option adds up.
    let env = [
        ("NOTIFYHUB_LISTEN", "127.0.0.2:0"),
        ("NOTIFYHUB_GUEST", "e1"),
        ("NOTIFYHUB_CONFIG", file.as_str()),
    ];
    let lines = started(&[], &env).await;
    assert_eq!(
        listening(&lines),
        "notifyhub: listening on http://127.0.0.2"
    );
    assert_eq!(guests(&lines), ["e1", "f1"]);
    // The command line beats both (and hides the environment's repeatable values, as in clap).
    let lines = started(&["--listen", "127.0.0.3:0", "--guest", "c1"], &env).await;
    assert_eq!(
        listening(&lines),
        "notifyhub: listening on http://127.0.0.3"
    );
    assert_eq!(guests(&lines), ["c1", "f1"]);
    // No file: the default file is optional, and without a file the flags are all there is.
    let lines = started(&["--listen", "127.0.0.1:0"], &[]).await;
    assert!(guests(&lines).is_empty(), "{lines:?}");
}

fn hangup(hub: &Hub) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(hub.pid() as i32).unwrap(),
        rustix::process::Signal::HUP,
    )
    .expect("SIGHUP the hub");
}

/// Waits until the hub's log has `n` lines containing `needle` (liveness bound, no timing).
async fn logged(hub: &Hub, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let log = hub.log_text();
        if log.matches(needle).count() >= n {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged {n} times within {SETTLE_TIMEOUT:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn names(hub: &Hub) -> Vec<String> {
    let (status, body) = hub.get_json("/api/v1/guests").await;
    assert_eq!(status, StatusCode::OK);
    body["guests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|guest| guest["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_guests_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "hub.toml", "guest = [\"f1\", \"kept\"]\n");
    let hub = Hub::start_with_args(&["cli1"], &["--config", &file]).await;
    assert_eq!(names(&hub).await, ["cli1", "f1", "kept"]);
    let (status, _) = hub.add_guest("api1").await;
    assert_eq!(status, StatusCode::CREATED);
    for guest in ["cli1", "kept", "api1"] {
        hub.send(guest, b"READY=1\nSTATUS=before the reload");
        hub.settle(guest, 1).await;
    }

    // f1 leaves the file, f2 comes; a changed option that needs a restart is said so.
    write(
        dir.path(),
        "hub.toml",
        "guest = [\"kept\", \"f2\"]\nmax-guests = 7\nready-timeout = 30\nrate-limit = 5\n",
    );
    hangup(&hub);
    let log = logged(&hub, "configuration reloaded", 1).await;
    let restart: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("restart the hub to apply it"))
        .collect();
    assert_eq!(restart.len(), 1, "{log}");
    assert!(restart[0].contains("option=\"max-guests\""), "{log}");
    assert!(log.contains("readiness timeout set"), "{log}");
    assert!(log.contains("rate limit set"), "{log}");
    assert_eq!(names(&hub).await, ["api1", "cli1", "f2", "kept"]);
    assert!(!hub.socket("f1").exists());

    // The new guest works; the others kept their state (one message each, still ready).
    hub.send("f2", b"READY=1");
    let (status, guest) = hub.wait("f2", "ready", 10).await;
    assert_eq!(status, StatusCode::OK, "{guest}");
    for name in ["cli1", "kept", "api1"] {
        let guest = hub.guest(name).await;
        assert_eq!(guest["phase"], "ready", "{name}: {guest}");
        assert_eq!(guest["messages"], 1, "{name}: {guest}");
        assert_eq!(guest["status"], "before the reload", "{name}: {guest}");
    }

    // An empty file removes the file's guests, and only those.
    write(dir.path(), "hub.toml", "");
    hangup(&hub);
    logged(&hub, "configuration reloaded", 2).await;
    assert_eq!(names(&hub).await, ["api1", "cli1"]);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_keeps_the_running_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "hub.toml", "guest = [\"f1\"]\n");
    let hub = Hub::start_with_args(&[], &["--config", &file]).await;
    write(
        dir.path(),
        "hub.toml",
        "guest = [\"f1\", \"f2\"]\nready-timeout = -1\n",
    );
    hangup(&hub);
    let log = logged(&hub, "reload failed", 1).await;
    assert!(
        log.contains(&format!(
            "{file}:2:17: invalid value '-1' for '--ready-timeout"
        )),
        "{log}"
    );
    assert_eq!(names(&hub).await, ["f1"]);

    // Still reloading: the next valid file applies.
    write(dir.path(), "hub.toml", "guest = [\"f1\", \"f3\"]\n");
    hangup(&hub);
    logged(&hub, "configuration reloaded", 1).await;
    assert_eq!(names(&hub).await, ["f1", "f3"]);

    // A file that vanished is an error too; the guests stay.
    std::fs::remove_file(&file).unwrap();
    hangup(&hub);
    let log = logged(&hub, "reload failed", 2).await;
    assert!(log.contains("does not exist"), "{log}");
    assert_eq!(names(&hub).await, ["f1", "f3"]);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_tells_the_service_manager() {
    let dir = tempfile::tempdir().unwrap();
    let manager = NotifySocket::bind(&dir.path().join("manager")).unwrap();
    let file = write(dir.path(), "hub.toml", "guest = [\"f1\"]\n");
    let mut command = tokio::process::Command::from(notifyhub(&["serve"]));
    let mut hub = command
        .args(["--listen", "127.0.0.1:0", "--config", &file, "--run-dir"])
        .arg(dir.path().join("run"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("NOTIFY_SOCKET", manager.path())
        .env_remove("WATCHDOG_USEC")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The hub's own messages, except the STATUS= refreshes.
    let next = async || loop {
        let received = tokio::time::timeout(SETTLE_TIMEOUT, manager.recv())
            .await
            .expect("a notification")
            .unwrap();
        let Received::Datagram(datagram) = received else {
            panic!("unexpected {received:?}");
        };
        let text = String::from_utf8(datagram.payload).unwrap();
        if !text.starts_with("STATUS=") {
            return text;
        }
    };
    assert_eq!(next().await, "READY=1\nSTATUS=1 guest: 1 registered\n");
    write(dir.path(), "hub.toml", "guest = [\"f1\", \"f2\"]\n");
    let pid = rustix::process::Pid::from_raw(hub.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let reloading = next().await;
    let usec = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("{reloading:?}"));
    let usec: u64 = usec.parse().unwrap();
    // CLOCK_MONOTONIC never runs ahead of CLOCK_BOOTTIME, which /proc/uptime shows.
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap();
    let uptime: f64 = uptime.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        usec > 0 && usec as f64 <= (uptime + 1.0) * 1e6,
        "MONOTONIC_USEC={usec}, uptime {uptime} s"
    );
    assert_eq!(next().await, "READY=1\nSTATUS=2 guests: 2 registered\n");

    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(SETTLE_TIMEOUT, hub.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// The token file is read again on SIGHUP: the new token works from then on and the old one no
/// longer does; a file that cannot be used is logged and the running token kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_token_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let put = |token: &str, mode: u32| {
        std::fs::write(&file, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    const FIRST: &str = "first-token-0123456789";
    const SECOND: &str = "second-token-0123456789";
    put(FIRST, 0o600);
    let hub = Hub::start_with_args(&["web1"], &["--token-file", file.to_str().unwrap()]).await;
    let status = async |token: &str| {
        hub.client()
            .get(hub.url("/api/v1/guests"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(status(FIRST).await, StatusCode::OK);
    assert_eq!(status(SECOND).await, StatusCode::UNAUTHORIZED);

    put(SECOND, 0o600);
    hangup(&hub);
    let log = logged(&hub, "configuration reloaded", 1).await;
    assert!(log.contains("bearer token replaced"), "{log}");
    assert!(
        !log.contains(SECOND) && !log.contains(FIRST),
        "a token in the log:\n{log}"
    );
    assert_eq!(status(SECOND).await, StatusCode::OK);
    assert_eq!(status(FIRST).await, StatusCode::UNAUTHORIZED);

    // Too short, open to others, gone: each logged, and the running token stays.
    let refusals = [
        (("short", 0o600), "must hold one token of at least 16"),
        (
            ("third-token-0123456789", 0o644),
            "has mode 0644, which gives others access",
        ),
    ];
    for (n, ((token, mode), why)) in refusals.into_iter().enumerate() {
        put(token, mode);
        hangup(&hub);
        let log = logged(&hub, "configuration reloaded", n + 2).await;
        let refused: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("the bearer token stays as it was"))
            .collect();
        assert_eq!(refused.len(), n + 1, "{log}");
        assert!(refused[n].contains(why), "{log}");
        assert_eq!(status(SECOND).await, StatusCode::OK);
        assert_eq!(
            status("third-token-0123456789").await,
            StatusCode::UNAUTHORIZED
        );
    }
    std::fs::remove_file(&file).unwrap();
    hangup(&hub);
    let log = logged(&hub, "configuration reloaded", 4).await;
    assert!(log.contains("cannot read token file"), "{log}");
    assert_eq!(status(SECOND).await, StatusCode::OK);
    hub.shutdown().await;
}
