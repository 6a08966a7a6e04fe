//! The journal's bounds, on the real binary: a guest flooding 4 KiB `STATUS=` datagrams past
//! `--retain-messages 500` never has more rows than that and the writer's margin, the
//! database gives the pruned pages back, a restart is quick and gives the same guest; the
//! journal's files are private; and datagrams carrying 16 fds each are all taken, however many
//! wait, as the hub holds only the first fd of each until it is applied.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notifyhub_tests::{Hub, send_datagram};
use rustix::fd::{AsFd as _, OwnedFd};
use serde_json::Value;

/// `--retain-messages` of the flood test.
const RETAIN: u64 = 500;

/// What the writer lets a guest reach before it prunes it back to [`RETAIN`] (a quarter
/// more, `over_limit` in `web/src/journal.rs`), plus the datagrams one commit may add past it
/// (`MAX_BATCH`, 4096): far below the flood's 12 000.
const MOST_ROWS: u64 = RETAIN + RETAIN / 4 + 4096;

/// The datagram rows of guest `name` in the journal in `state`, read as a second SQLite
/// connection while the hub writes (WAL lets a reader in).
fn rows(state: &Path, name: &str) -> u64 {
    let connection = rusqlite::Connection::open_with_flags(
        state.join("journal.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the journal");
    connection
        .busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    connection
        .query_row(
            "SELECT count(*) FROM inputs WHERE guest = ?1 AND kind = 'datagram'",
            [name],
            |row| row.get(0),
        )
        .expect("count rows")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// Guest fields a restart must give back as they were.
fn state_of(guest: &Value) -> Value {
    let keep = [
        "phase",
        "status",
        "messages",
        "drops",
        "boot_count",
        "first_seen",
        "last_seen",
        "last_sender",
    ];
    keep.iter()
        .map(|key| ((*key).to_owned(), guest[*key].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_keeps_the_journal_bounded_and_the_restart_quick() {
    let parent = tempfile::tempdir().expect("tempdir");
    let state = parent.path().join("state");
    let state_arg = state.to_str().expect("utf-8 path");
    let args = [
        "--state-dir",
        state_arg,
        "--retain-messages",
        "500",
        "--rate-limit",
        "0",
    ];
    let hub = Hub::start_with_args(&["flood"], &args).await;
    // Made by the hub: its user's only, and so are the files in it.
    assert_eq!(mode(&state), 0o700);
    for file in [
        "journal.sqlite3",
        "journal.sqlite3-wal",
        "journal.sqlite3-shm",
    ] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }

    const FLOOD: u64 = 12_000;
    let socket = hub.socket("flood");
    let sending = Arc::new(AtomicBool::new(true));
    let sender = std::thread::spawn({
        let sending = Arc::clone(&sending);
        move || {
            let out = UnixDatagram::unbound().expect("socket");
            for i in 0..FLOOD {
                let mut datagram = format!("STATUS={i}-").into_bytes();
                datagram.resize(4096, b'Z');
                // Blocks while the hub's queue is full.
                out.send_to(&datagram, &socket).expect("send");
            }
            sending.store(false, Ordering::SeqCst);
        }
    });
    // Sampled while the flood goes on.
    let mut most = 0;
    let mut samples = 0;
    while sending.load(Ordering::SeqCst) {
        let state = state.clone();
        most = most.max(
            tokio::task::spawn_blocking(move || rows(&state, "flood"))
                .await
                .expect("count"),
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sender.join().expect("sender");
    let before = hub.settle("flood", FLOOD).await;
    let status = before["status"].as_str().expect("a status");
    assert_eq!(status.len(), 4096 - "STATUS=".len());
    assert!(
        status.starts_with(&format!("{}-ZZZ", FLOOD - 1)),
        "{status:.20}"
    );
    assert!(samples > 1, "{samples} samples");
    assert!(
        most <= MOST_ROWS,
        "{most} rows of the flooding guest at one time, more than {MOST_ROWS}"
    );
    // The writer prunes right after the commit that passed the margin (and the hub shows
    // that commit's messages a moment before).
    let mut after_flood = rows(&state, "flood");
    for _ in 0..500 {
        if after_flood <= RETAIN + RETAIN / 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after_flood = rows(&state, "flood");
    }
    assert!(
        (RETAIN..=RETAIN + RETAIN / 4).contains(&after_flood),
        "{after_flood} rows after the flood"
    );
    // 12 000 × 4 KiB went through; what stays is 500 to 625 of them, and the pages of the
    // rest were reused, and are given back at shutdown (incremental auto-vacuum): far from
    // the 49 MB of the flood, or the 19 MB of its peak.
    let history = hub.events("flood").await;
    hub.shutdown().await;
    let size = std::fs::metadata(state.join("journal.sqlite3"))
        .expect("stat")
        .len()
        + std::fs::metadata(state.join("journal.sqlite3-wal")).map_or(0, |wal| wal.len());
    println!("{most} rows at most in {samples} samples; {after_flood} after; {size} bytes");
    assert!(size < 8 << 20, "journal of {size} bytes");

    let again = Hub::start_with_args(&["flood"], &args).await;
    assert!(
        again.log_text().contains("journal replayed"),
        "{}",
        again.log_text()
    );
    let after = again.guest("flood").await;
    assert_eq!(state_of(&after), state_of(&before));
    // The newest of the history stayed, as it was.
    let kept = again.events("flood").await;
    assert!(kept.len() as u64 >= RETAIN, "{} kept", kept.len());
    assert_eq!(kept[..], history[history.len() - kept.len()..]);
    again.shutdown().await;
}

/// A state directory that exists is the user's to protect: the hub leaves its mode alone (its
/// files are 0600 all the same).
#[tokio::test]
async fn a_given_state_directory_keeps_its_mode() {
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let args = ["--state-dir", state.path().to_str().expect("utf-8 path")];
    let hub = Hub::start_with_args(&["web1"], &args).await;
    assert_eq!(mode(state.path()), 0o750);
    assert_eq!(mode(&state.path().join("journal.sqlite3")), 0o600);
    hub.shutdown().await;
}

/// 2000 datagrams of 16 fds each wait in the hub's queue at once (its writer held up), under
/// an `RLIMIT_NOFILE` of 16 384: holding every fd until its datagram is applied took 16 per
/// input and ran out, so that the kernel truncated the next datagrams' fds (dropped as
/// `too_many_fds`); holding only the first of each fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_with_many_fds_are_all_taken() {
    const DATAGRAMS: u64 = 2000;
    let hub = Hub::start_with_args(&["fds"], &["--rate-limit", "0"]).await;
    let limited = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", hub.pid()))
        .arg("--nofile=16384:16384")
        .status()
        .expect("run prlimit");
    assert!(limited.success(), "prlimit: {limited}");
    // The writer waits (SQLite's busy timeout, 5 s) while the test holds the database's write
    // lock: every datagram sent meanwhile is in the hub's queue at once, with its fds.
    let journal = rusqlite::Connection::open(hub.run_dir().join("state/journal.sqlite3"))
        .expect("open the journal");
    journal
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let socket = hub.socket("fds");
    let sent = tokio::task::spawn_blocking(move || {
        let fds: Vec<OwnedFd> = (0..16)
            .map(|_| {
                rustix::fs::open(
                    "/dev/null",
                    rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .expect("open /dev/null")
            })
            .collect();
        let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        for i in 0..DATAGRAMS {
            send_datagram(&socket, format!("STATUS=fd{i}").as_bytes(), &borrowed).expect("send");
        }
    });
    sent.await.expect("sender");
    journal
        .execute_batch("ROLLBACK")
        .expect("release the write lock");
    let taken = |guest: &Value| {
        guest["messages"].as_u64().unwrap_or(0)
            + guest["drops"]["too_many_fds"].as_u64().unwrap_or(0)
    };
    let guest = hub
        .poll_guest(
            "fds",
            "every datagram taken or dropped",
            Duration::from_secs(60),
            |guest| taken(guest) >= DATAGRAMS,
        )
        .await;
    assert_eq!(guest["messages"], DATAGRAMS, "{guest:#}");
    assert_eq!(guest["drops"]["too_many_fds"], 0, "{guest:#}");
    assert_eq!(guest["status"], format!("fd{}", DATAGRAMS - 1));
    // The count still reaches the history.
    let events = hub.events("fds").await;
    assert_eq!(events.last().expect("an event")["fds"], 16);
    hub.shutdown().await;
}
