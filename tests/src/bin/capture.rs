//! `capture`: records what a real systemd guest sends to its notify socket, as a vector file.
//!
//! Binds an AF_UNIX notify socket with notifyhub's own transport ([`NotifySocket`]), boots
//! `../shared/guest/real-systemd-guest` against it, runs the scenario's steps, stops the guest
//! and writes every datagram in the format of `../shared/vectors/*.jsonl` (one JSON object per
//! line: `seq`, `t_ms`, `pid`, `uid`, `gid`, `len`, `fds`, `hex`, `text`). Needs root.
//!
//! ```text
//! capture --name NAME --out FILE [--boot-arg ARG]... STEP...
//! ```
//!
//! `--boot-arg` is passed to `real-systemd-guest boot NAME --notify-socket SOCK` (e.g.
//! `--hostname`, `probe-guest`, `--unit`, `rescue.target`, `--`, `systemd.unit=…`), one word per
//! `--boot-arg`. Each STEP is one argument, words split on spaces:
//!
//! | step | what it does |
//! |---|---|
//! | `wait TEXT [N] [SECS]` | until N (1) datagrams whose text contains TEXT arrived, at most SECS (60) |
//! | `exec CMD...` | `real-systemd-guest exec NAME CMD...` (its exit status is printed, not judged) |
//! | `signal SIG` | `real-systemd-guest signal NAME SIG` |
//! | `wait-exit [SECS]` | `real-systemd-guest wait-exit NAME SECS` (30), printing how the guest ended |
//! | `quiet MS` | until no datagram came for MS milliseconds |
//! | `sleep MS` | sleeps |
//! | `stop` | `real-systemd-guest stop NAME` |
//!
//! The guest is always stopped at the end, also on failure. Example (`tests/vectors/README.md`
//! has the command line of every committed capture):
//!
//! ```text
//! capture --name nh-cap-exit --out tests/vectors/systemd257-exit-3.jsonl \
//!     --boot-arg=--hostname --boot-arg=probe-guest \
//!     'wait multi-user.target' 'exec systemctl exit 3' 'wait-exit' 'quiet 500'
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notifyhub_tests::real_guest_harness;
use notifyhub_transport_unix::{NotifySocket, Received};
use tokio::process::Command;
use tokio::sync::watch;

/// One datagram as received.
#[derive(Debug)]
struct Record {
    at: Instant,
    pid: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    fds: usize,
    bytes: Vec<u8>,
}

impl Record {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

type Records = Arc<Mutex<Vec<Record>>>;

#[derive(Debug)]
struct Args {
    name: String,
    out: PathBuf,
    boot_args: Vec<String>,
    steps: Vec<String>,
}

fn usage() -> String {
    "usage: capture --name NAME --out FILE [--boot-arg ARG]... STEP...\n\
     steps: 'wait TEXT [N] [SECS]', 'exec CMD...', 'signal SIG', 'wait-exit [SECS]', \
     'quiet MS', 'sleep MS', 'stop'"
        .to_string()
}

fn parse_args() -> Result<Args, String> {
    let mut name = None;
    let mut out = None;
    let mut boot_args = Vec::new();
    let mut steps = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            arg.strip_prefix(&format!("{flag}="))
                .map(str::to_string)
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))
        };
        if arg == "--name" || arg.starts_with("--name=") {
            name = Some(value("--name")?);
        } else if arg == "--out" || arg.starts_with("--out=") {
            out = Some(PathBuf::from(value("--out")?));
        } else if arg == "--boot-arg" || arg.starts_with("--boot-arg=") {
            boot_args.push(value("--boot-arg")?);
        } else if arg == "--help" || arg == "-h" {
            return Err(usage());
        } else {
            steps.push(arg);
        }
    }
    Ok(Args {
        name: name.ok_or_else(usage)?,
        out: out.ok_or_else(usage)?,
        boot_args,
        steps,
    })
}

/// Runs `real-systemd-guest ARGS...`; returns its exit code (-1 if killed) and stdout.
async fn harness(args: &[&str]) -> Result<(i32, String), String> {
    let out = Command::new(real_guest_harness())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out)
        .await
        .map_err(|_| format!("real-systemd-guest {args:?} still running after 180 s"))?
        .map_err(|e| format!("real-systemd-guest {args:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((out.status.code().unwrap_or(-1), stdout))
}

/// Receives into `records` until the socket fails; `count` follows the number of records.
async fn receive(socket: NotifySocket, records: Records, count: watch::Sender<usize>) {
    loop {
        match socket.recv().await {
            Ok(Received::Datagram(datagram)) => {
                let credentials = datagram.credentials;
                let record = Record {
                    at: Instant::now(),
                    pid: credentials.map(|c| c.pid),
                    uid: credentials.map(|c| c.uid),
                    gid: credentials.map(|c| c.gid),
                    fds: datagram.fds.len(),
                    bytes: datagram.payload.clone(),
                };
                eprintln!("capture: <- {:?}", record.text());
                let n = {
                    let mut records = records.lock().unwrap();
                    records.push(record);
                    records.len()
                };
                count.send_replace(n);
                // The fds (a BARRIER=1 pipe end) are closed only now, after the record is kept.
                drop(datagram);
            }
            Ok(Received::Dropped { reason, len, .. }) => {
                eprintln!("capture: dropped by the transport: {reason:?}, {len:?} bytes");
            }
            Err(e) if notifyhub_transport_unix::is_transient(&e) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                eprintln!("capture: receive failed: {e}");
                return;
            }
        }
    }
}

/// Runs one step.
async fn step(
    name: &str,
    step: &str,
    records: &Records,
    count: &mut watch::Receiver<usize>,
) -> Result<(), String> {
    let words: Vec<&str> = step.split(' ').filter(|w| !w.is_empty()).collect();
    let number = |i: usize, default: u64| -> Result<u64, String> {
        words.get(i).map_or(Ok(default), |w| {
            w.parse().map_err(|e| format!("{step:?}: {e}"))
        })
    };
    eprintln!("capture: step {step:?}");
    match words.first().copied() {
        Some("wait") => {
            let text = words
                .get(1)
                .ok_or_else(|| format!("{step:?}: wait what?"))?;
            let n = number(2, 1)? as usize;
            let secs = number(3, 60)?;
            let seen = || {
                records
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|r| r.text().contains(text))
                    .count()
            };
            let deadline = tokio::time::sleep(Duration::from_secs(secs));
            tokio::pin!(deadline);
            while seen() < n {
                tokio::select! {
                    () = &mut deadline => {
                        return Err(format!("{step:?}: only {} of {n} seen in {secs} s", seen()));
                    }
                    changed = count.changed() => changed.map_err(|_| "receiver ended".to_string())?,
                }
            }
        }
        Some("exec") => {
            let mut args = vec!["exec", name];
            args.extend_from_slice(&words[1..]);
            let (rc, out) = harness(&args).await?;
            eprintln!("capture: exec rc {rc}: {out}");
        }
        Some("signal") => {
            let sig = words
                .get(1)
                .ok_or_else(|| format!("{step:?}: which signal?"))?;
            let (rc, _) = harness(&["signal", name, sig]).await?;
            if rc != 0 {
                return Err(format!("{step:?}: rc {rc}"));
            }
        }
        Some("wait-exit") => {
            let secs = number(1, 30)?.to_string();
            let (rc, out) = harness(&["wait-exit", name, &secs]).await?;
            eprintln!("capture: wait-exit rc {rc}: {out}");
            if rc != 0 {
                return Err(format!("{step:?}: rc {rc}: {out}"));
            }
        }
        Some("quiet") => {
            let quiet = Duration::from_millis(number(1, 500)?);
            loop {
                let last = records.lock().unwrap().last().map(|r| r.at);
                let since = last.map_or(Duration::ZERO, |at| at.elapsed());
                if since >= quiet {
                    break;
                }
                let _ = tokio::time::timeout(quiet - since, count.changed()).await;
            }
        }
        Some("sleep") => tokio::time::sleep(Duration::from_millis(number(1, 0)?)).await,
        Some("stop") => {
            harness(&["stop", name]).await?;
        }
        _ => return Err(format!("unknown step {step:?}\n{}", usage())),
    }
    Ok(())
}

/// Writes a JSON string the way Python's `json.dumps` does (ASCII only, `\uXXXX` escapes), as
/// the shared vector files were written.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

fn jsonl(records: &[Record]) -> String {
    let mut out = String::new();
    let Some(first) = records.first().map(|r| r.at) else {
        return out;
    };
    let opt = |v: Option<u32>| v.map_or_else(|| "null".to_string(), |v| v.to_string());
    for (i, r) in records.iter().enumerate() {
        let t_ms = r.at.duration_since(first).as_secs_f64() * 1000.0;
        let _ = write!(
            out,
            "{{\"seq\": {}, \"t_ms\": {:.1}, \"pid\": {}, \"uid\": {}, \"gid\": {}, \"len\": {}, \
             \"fds\": {}, \"hex\": \"{}\", \"text\": ",
            i + 1,
            t_ms,
            opt(r.pid),
            opt(r.uid),
            opt(r.gid),
            r.bytes.len(),
            r.fds,
            hex::encode(&r.bytes),
        );
        json_string(&mut out, &r.text());
        out.push_str("}\n");
    }
    out
}

async fn run(args: &Args, records: &Records) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("nh-capture-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let path = dir.path().join("notify");
    let socket = NotifySocket::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))?;
    let (count_tx, mut count) = watch::channel(0);
    let receiver = tokio::spawn(receive(socket, Arc::clone(records), count_tx));

    harness(&["stop", &args.name]).await?;
    let sock = path.to_str().ok_or("socket path is not UTF-8")?;
    let mut boot = vec!["boot", args.name.as_str(), "--notify-socket", sock];
    boot.extend(args.boot_args.iter().map(String::as_str));
    let (rc, pid) = harness(&boot).await?;
    if rc != 0 {
        return Err(format!("boot exited with {rc}"));
    }
    eprintln!(
        "capture: guest {} booted, PID 1 is host PID {pid}",
        args.name
    );
    let mut result = Ok(());
    for s in &args.steps {
        if let Err(e) = step(&args.name, s, records, &mut count).await {
            result = Err(e);
            break;
        }
    }
    receiver.abort();
    let _ = receiver.await;
    result
}

fn write(out: &Path, records: &Records) -> Result<usize, String> {
    let records = records.lock().unwrap();
    std::fs::write(out, jsonl(&records)).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(records.len())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let records = Records::default();
    let result = run(&args, &records).await;
    let stopped = harness(&["stop", &args.name]).await;
    if let Err(e) = stopped {
        eprintln!("capture: stop {}: {e}", args.name);
    }
    match result.and_then(|()| write(&args.out, &records)) {
        Ok(n) => {
            eprintln!("capture: {n} datagrams -> {}", args.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("capture: {e} (nothing written)");
            ExitCode::FAILURE
        }
    }
}
