//! The real binary's log lines: as the journal wants them when `$JOURNAL_STREAM` names its
//! stderr (a `<N>` priority prefix, no timestamp, no colour, one line per event, `guest=`
//! fields), and timestamped otherwise.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use notifyhub_tests::{SETTLE_TIMEOUT, SHUTDOWN_TIMEOUT, START_TIMEOUT, hub_binary, send_datagram};

/// Runs `notifyhub serve --guest web1` with stderr into a pipe (and `JOURNAL_STREAM` set to that
/// pipe's `DEV:INODE` when `journal`, to another file's when not), sends it `datagrams`, stops
/// it, and returns its stderr.
fn run_hub(journal: bool, datagrams: &[&[u8]]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (read_end, write_end): (OwnedFd, OwnedFd) = rustix::pipe::pipe().unwrap();
    let stat = rustix::fs::fstat(&write_end).unwrap();
    let journal_stream = if journal {
        format!("{}:{}", stat.st_dev, stat.st_ino)
    } else {
        // A stream of the journal, but not this process's stderr (inherited from a parent).
        format!("{}:{}", stat.st_dev, stat.st_ino + 1)
    };
    let mut child = Command::new(hub_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--guest", "web1"])
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("JOURNAL_STREAM", journal_stream)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(write_end))
        .spawn()
        .expect("spawn notifyhub");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        std::fs::File::from(read_end)
            .read_to_string(&mut text)
            .unwrap();
        text
    });
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let started = Instant::now();
    let mut socket = None;
    let mut addr = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(path) = line.strip_prefix("guest web1: NOTIFY_SOCKET=") {
            socket = Some(path.to_owned());
        }
        if let Some(listening) = line.strip_prefix("notifyhub: listening on http://") {
            addr = Some(listening.to_owned());
            break;
        }
        assert!(started.elapsed() < START_TIMEOUT, "no listening line");
    }
    let socket = socket.expect("web1's socket line");
    let addr = addr.expect("the listening line");
    for datagram in datagrams {
        send_datagram(socket.as_ref(), datagram, &[]).unwrap();
    }
    // Every datagram is in once the guest's message count says so; stopping then flushes the
    // log lines they caused.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let taken = format!("\"messages\":{}", datagrams.len());
    while !get(&addr, "/api/v1/guests/web1").contains(&taken) {
        assert!(Instant::now() < deadline, "the datagrams were not taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(&mut child);
    stderr.join().unwrap()
}

/// `GET path` over HTTP/1.0, the whole answer as text.
fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

fn stop(child: &mut Child) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the hub did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn journal_lines_when_stderr_is_the_journal() {
    let log = run_hub(
        true,
        &[
            b"X_SYSTEMD_HOSTNAME=probe\nSTATUS=line one\nline two",
            b"READY=1",
        ],
    );
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let priority = line.get(..3).unwrap_or_default();
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&priority),
            "no priority prefix: {line:?}\n{log}"
        );
        assert!(
            !line[3..].starts_with(|c: char| c.is_ascii_digit()),
            "a timestamp: {line:?}"
        );
        assert!(!line.contains('\u{1b}'), "colour: {line:?}");
    }
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("<6>") && line.contains("registered guest=\"web1\"")),
        "{log}"
    );
    assert!(
        lines.iter().any(|line| line.starts_with("<6>")
            && line.contains("phase changed guest=\"web1\" from=booting to=ready")),
        "{log}"
    );
}

#[test]
fn timestamped_lines_otherwise() {
    let log = run_hub(false, &[b"READY=1"]);
    let registered = log
        .lines()
        .find(|line| line.contains("registered guest=\"web1\""))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(!registered.starts_with('<'), "{registered:?}");
    // `2026-11-30T00:00:00.000000Z  INFO …`
    assert!(
        registered.starts_with(|c: char| c.is_ascii_digit()) && registered.contains(" INFO "),
        "{registered:?}"
    );
}
