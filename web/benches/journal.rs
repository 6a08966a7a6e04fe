//! The journal's cost, against baselines measured in the same run (issue 6).
//!
//! 1. Write throughput: the same datagram rows stored by the journal (batched by its writer
//!    thread, with the state applied and every submitter answered) and one at a time, against
//!    plain rusqlite inserting them into a table of the same shape in one transaction, and with a
//!    commit per row (same settings: WAL, `synchronous=NORMAL`, a temp directory), and against
//!    the in-memory store taking them without a journal.
//! 2. Latency: a datagram sent to a guest's notify socket until the subscriber's feed (what SSE
//!    sends) has its event, with the journal and with the in-memory store alone.
//!
//! `cargo bench -p notifyhub-web --bench journal`; `-- --smoke` runs a moment only (CI).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use notifyhub_core::{Sender, Timestamp};
use notifyhub_web::journal::{Journal, Retention};
use notifyhub_web::registry::Registry;
use notifyhub_web::store::{FeedItem, Hub};
use notifyhub_web::vsock::Reach;
use rusqlite::{Connection, params};
use tokio_util::sync::CancellationToken;

const GUESTS: usize = 64;

fn datagram(i: usize) -> Vec<u8> {
    format!(
        "STATUS=step {i} of the boot\nX_SYSTEMD_UNIT_ACTIVE=unit-{}.target",
        i % 50
    )
    .into_bytes()
}

fn sender() -> Sender {
    serde_json::from_str(r#"{"transport":"unix","credentials":{"pid":1,"uid":0,"gid":0}}"#).unwrap()
}

fn plain_table(path: &Path) -> Connection {
    let connection = Connection::open(path).unwrap();
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();
    connection
        .pragma_update(None, "synchronous", "NORMAL")
        .unwrap();
    connection
        .execute_batch(
            "CREATE TABLE inputs (seq INTEGER PRIMARY KEY, guest TEXT NOT NULL, kind TEXT NOT NULL,
             at INTEGER NOT NULL, data TEXT, fds INTEGER NOT NULL DEFAULT 0, bytes BLOB);
             CREATE INDEX inputs_by_guest ON inputs (guest, seq);",
        )
        .unwrap();
    connection
}

/// Rows per second of plain rusqlite: all rows in one transaction, or a commit per row.
fn plain(rows: usize, per_row: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut connection = plain_table(&dir.path().join("plain.sqlite3"));
    let sender = serde_json::to_string(&sender()).unwrap();
    let insert = |transaction: &rusqlite::Transaction<'_>, i: usize| {
        transaction
            .prepare_cached(
                "INSERT INTO inputs (guest, kind, at, data, fds, bytes)
                 VALUES (?1, 'datagram', ?2, ?3, 0, ?4)",
            )
            .unwrap()
            .execute(params![
                format!("guest-{}", i % GUESTS),
                i as i64,
                sender,
                datagram(i)
            ])
            .unwrap();
    };
    let start = Instant::now();
    if per_row {
        for i in 0..rows {
            let transaction = connection.transaction().unwrap();
            insert(&transaction, i);
            transaction.commit().unwrap();
        }
    } else {
        let transaction = connection.transaction().unwrap();
        for i in 0..rows {
            insert(&transaction, i);
        }
        transaction.commit().unwrap();
    }
    rows as f64 / start.elapsed().as_secs_f64()
}

/// Rows per second through the store, with the journal or without, from `submitters` tasks at
/// once, each waiting for its answer before the next (as a receive loop does).
async fn store(rows: usize, submitters: usize, with_journal: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::new();
    let journal = with_journal.then(|| {
        Journal::open(dir.path(), Retention::default(), &hub)
            .unwrap()
            .0
    });
    for g in 0..GUESTS {
        let name = format!("guest-{g}");
        hub.accept_registration(&name, "/run/x", Reach::Unix, Timestamp::from_micros(0))
            .await
            .unwrap()
            .unwrap();
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..submitters)
        .map(|task| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for i in (task..rows).step_by(submitters) {
                    let name = format!("guest-{}", i % GUESTS);
                    let at = Timestamp::from_micros(i as u64);
                    hub.accept_datagram(&name, at, sender(), datagram(i), Vec::new())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let rate = rows as f64 / start.elapsed().as_secs_f64();
    if let Some(journal) = journal {
        journal.close().await;
    }
    rate
}

/// Datagram → feed latencies of `n` messages sent one at a time to a real notify socket.
async fn latency(n: usize, with_journal: bool) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::new();
    let journal = with_journal.then(|| {
        Journal::open(&dir.path().join("state"), Retention::default(), &hub)
            .unwrap()
            .0
    });
    let shutdown = CancellationToken::new();
    let registry = Registry::new(hub.clone(), dir.path().join("guests"), &shutdown);
    registry.set_rate_limit(None);
    registry.register("web1").await.unwrap();
    let socket = UnixDatagram::unbound().unwrap();
    let path = dir.path().join("guests/web1/notify");
    let mut feed = hub.subscribe(Some("web1"), None);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let status = format!("step {i}");
        let start = Instant::now();
        socket
            .send_to(format!("STATUS={status}").as_bytes(), &path)
            .unwrap();
        loop {
            match feed.next().await {
                FeedItem::Event(event)
                    if event.snapshot.snapshot.status.as_deref() == Some(&status) =>
                {
                    break;
                }
                _ => {}
            }
        }
        samples.push(start.elapsed());
    }
    registry.close().await;
    if let Some(journal) = journal {
        journal.close().await;
    }
    samples.sort();
    samples
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let smoke = std::env::args().any(|arg| arg == "--smoke");
    let (rows, messages) = if smoke { (2_000, 100) } else { (50_000, 5_000) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let baseline = plain(rows, false);
    let per_row = plain(rows.min(5_000), true);
    let memory = runtime.block_on(store(rows, GUESTS, false));
    let batched = runtime.block_on(store(rows, GUESTS, true));
    let single = runtime.block_on(store(rows.min(5_000), 1, true));
    println!("journal write throughput, {rows} datagram rows (rows/s; ratio to the baseline)");
    println!("  plain rusqlite, one transaction (baseline)   {baseline:>10.0}  1.00");
    let row = |name: &str, rate: f64| {
        println!("  {name:<45}{rate:>10.0}  {:.2}", rate / baseline);
    };
    row("plain rusqlite, a commit per row", per_row);
    row(&format!("store in memory, {GUESTS} submitters"), memory);
    row(&format!("journal, {GUESTS} submitters (batched)"), batched);
    row("journal, one submitter (a commit per row)", single);

    let memory = runtime.block_on(latency(messages, false));
    let stored = runtime.block_on(latency(messages, true));
    println!("datagram → subscriber latency, {messages} messages one at a time (µs)");
    for (name, samples) in [
        ("in memory (baseline)", &memory),
        ("with the journal", &stored),
    ] {
        println!(
            "  {name:<22} p50 {:>7.1}  p99 {:>7.1}",
            percentile(samples, 0.5).as_secs_f64() * 1e6,
            percentile(samples, 0.99).as_secs_f64() * 1e6
        );
    }
    println!(
        "  ratio                  p50 {:>7.2}  p99 {:>7.2}",
        percentile(&stored, 0.5).as_secs_f64() / percentile(&memory, 0.5).as_secs_f64(),
        percentile(&stored, 0.99).as_secs_f64() / percentile(&memory, 0.99).as_secs_f64()
    );
}
