//! `notifyhub-soak`: runs the real `notifyhub serve` under a steady load for a bounded time and
//! reports how it held up.
//!
//! It spawns the hub on loopback with a temporary run directory (the [`Hub`] fixture: also a
//! temporary `--state-dir` when the hub has one), registers `--guests` guests over the REST API,
//! opens `--sse-clients` Server-Sent Event streams that follow every guest, and sends
//! `STATUS=soak <ns>` datagrams round-robin to the guests' notify sockets at `--rate` messages
//! per second for `--duration`. Every `--sample` it prints the hub's resident memory, open fds
//! and threads (from `/proc`) and the messages it accepted; at the end, messages per second
//! accepted, drops by reason, the datagram-to-SSE latency (p50/p90/p99/max over every client;
//! the time from the `sendto` to the client parsing the event, both in this process), the SSE
//! events delivered and resyncs, and the store's write throughput where the hub reports it.
//!
//! It fails (exit 1) when the hub dies, when a sent message is neither accepted nor counted as
//! a drop, when an SSE client misses the last status of a guest without a resync, or when the
//! hub's memory or fds keep growing past the bounds given (`--max-rss-mib`, `--max-fd-growth`).
//!
//! ```sh
//! cargo build --release -p notifyhub-web -p notifyhub-tests
//! target/release/notifyhub-soak --duration 3m            # the long form, by hand
//! target/release/notifyhub-soak --duration 20s           # the short form (CI: tests/tests/load.rs)
//! ```

use std::collections::BTreeMap;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use eventsource_stream::Eventsource as _;
use futures_util::{StreamExt as _, stream};
use notifyhub_tests::Hub;
use notifyhub_tests::measure::{ProcStats, cpu_time, percentile, proc_stats, raise_nofile_limit};

/// The clock every latency is read on: senders stamp `STATUS=soak <ns since START>`, SSE
/// clients subtract it from their own reading.
static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// What SSE clients look for in an event's data: the status a soak message set.
const STATUS_MARK: &str = r#""event":{"type":"status_changed","status":"soak "#;

#[derive(Debug, Parser)]
#[command(about = "Soak the real notifyhub: guests, SSE clients and senders for a bounded time")]
struct Args {
    /// How long to send (e.g. 20s, 3m).
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    duration: Duration,
    /// Guests to register.
    #[arg(long, default_value_t = 1000)]
    guests: usize,
    /// SSE clients, each following every guest.
    #[arg(long, default_value_t = 100)]
    sse_clients: usize,
    /// Messages per second, all guests together, sent round-robin.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How often to print the hub's memory, fds and progress.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    sample: Duration,
    /// Fail if the hub's resident memory passes this many MiB.
    #[arg(long, default_value_t = 512)]
    max_rss_mib: u64,
    /// Fail if the hub holds more than this many fds at the end than after the SSE clients
    /// connected (a leak).
    #[arg(long, default_value_t = 16)]
    max_fd_growth: usize,
    /// Extra arguments for `notifyhub serve` (repeatable, e.g. --serve-arg=--rate-limit=0).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    serve_args: Vec<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 20s or 3m, not {text:?}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" | "min" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?} (ms, s, m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// What one SSE client saw.
#[derive(Debug, Default)]
struct ClientLog {
    /// Datagram-to-event latencies of soak statuses, in µs.
    latencies_us: Vec<u32>,
    /// Events received (all kinds).
    events: u64,
    /// `resync` events.
    resyncs: u64,
    /// The newest soak status stamp seen per guest.
    last_stamp: BTreeMap<String, u64>,
    /// Why the stream ended early, if it did.
    error: Option<String>,
}

/// What the senders did.
#[derive(Debug, Default)]
struct SendCounts {
    sent: AtomicU64,
    /// Sends the kernel refused because the guest's socket queue was full (`EAGAIN`): the hub
    /// fell behind.
    would_block: AtomicU64,
    failed: AtomicU64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    LazyLock::force(&START);
    // Our side holds an SSE connection per client and a socket per sender.
    if let Err(error) = raise_nofile_limit(4096 + args.sse_clients as u64 * 2) {
        eprintln!("soak: cannot raise RLIMIT_NOFILE: {error}");
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(soak(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failures) => {
            for failure in failures {
                println!("FAIL: {failure}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn soak(args: Args) -> Result<(), Vec<String>> {
    // The guests are registered through the API, which stops at --max-guests (default 1024).
    let max_guests = args.guests.max(1024).to_string();
    let mut serve_args: Vec<&str> = args.serve_args.iter().map(String::as_str).collect();
    if !serve_args.iter().any(|arg| arg.starts_with("--max-guests")) {
        serve_args.extend(["--max-guests", &max_guests]);
    }
    let hub = Hub::start_with_args(&[], &serve_args).await;
    let pid = hub.pid();
    let idle = stats(pid);
    println!(
        "soak: hub pid {pid} on {}; {} guests, {} SSE clients, {} msg/s for {:?}",
        hub.base_url(),
        args.guests,
        args.sse_clients,
        args.rate,
        args.duration
    );

    let t = Instant::now();
    let names: Vec<String> = (0..args.guests).map(|i| format!("soak-{i:05}")).collect();
    let registered = stream::iter(&names)
        .map(|name| hub.add_guest(name))
        .buffer_unordered(16)
        .filter(|(status, _)| std::future::ready(status.as_u16() == 201))
        .count()
        .await;
    if registered != names.len() {
        return Err(vec![format!(
            "registered {registered} of {} guests:\n{}",
            names.len(),
            hub.log_text()
        )]);
    }
    let registering = t.elapsed();
    let with_guests = stats(pid);
    println!(
        "soak: registered {registered} guests in {:.2} s; hub {}",
        registering.as_secs_f64(),
        show(&with_guests)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Arc<Mutex<ClientLog>>> = (0..args.sse_clients)
        .map(|_| Arc::new(Mutex::new(ClientLog::default())))
        .collect();
    let mut clients = Vec::new();
    for log in &logs {
        let response = hub
            .client()
            .get(hub.url("/api/v1/events"))
            .timeout(args.duration + Duration::from_secs(600))
            .send()
            .await
            .map_err(|e| vec![format!("SSE connect: {e}")])?;
        clients.push(tokio::spawn(follow(response, Arc::clone(log))));
    }
    let connected = stats(pid);
    println!(
        "soak: {} SSE clients connected; hub {}",
        clients.len(),
        show(&connected)
    );

    let counts = Arc::new(SendCounts::default());
    let sockets: Vec<PathBuf> = names.iter().map(|name| hub.socket(name)).collect();
    let sender = {
        let (stop, counts, rate, duration) = (
            Arc::clone(&stop),
            Arc::clone(&counts),
            args.rate,
            args.duration,
        );
        std::thread::spawn(move || send_paced(&sockets, rate, duration, &stop, &counts))
    };

    let mut peak = connected;
    let mut failures = Vec::new();
    let store_before = store_writes(&hub).await;
    let cpu_before = (
        cpu_time(pid).unwrap_or_default(),
        cpu_time(std::process::id()).unwrap_or_default(),
    );
    let begin = Instant::now();
    let mut last = (begin, 0u64);
    println!(
        "{:>6} {:>10} {:>10} {:>9} {:>8} {:>6} {:>7} {:>8}",
        "t", "sent", "accepted", "msg/s", "drops", "would", "rss MiB", "fds"
    );
    while !sender.is_finished() {
        tokio::time::sleep(args.sample.min(args.duration)).await;
        let now = stats(pid);
        peak = max_stats(peak, now);
        let totals = totals(&hub).await;
        let rate = (totals.messages - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), totals.messages);
        println!(
            "{:>5.0}s {:>10} {:>10} {:>9.0} {:>8} {:>6} {:>7.1} {:>8}",
            begin.elapsed().as_secs_f64(),
            counts.sent.load(Ordering::Relaxed),
            totals.messages,
            rate,
            totals.drops.values().sum::<u64>(),
            counts.would_block.load(Ordering::Relaxed),
            mib(now.rss_bytes),
            now.open_fds
        );
        if now.rss_bytes > args.max_rss_mib * 1024 * 1024 {
            failures.push(format!(
                "hub RSS {:.1} MiB passed --max-rss-mib {}",
                mib(now.rss_bytes),
                args.max_rss_mib
            ));
            stop.store(true, Ordering::Relaxed);
        }
    }
    let sending = begin.elapsed();
    let cpu = (
        cpu_time(pid)
            .unwrap_or_default()
            .saturating_sub(cpu_before.0),
        cpu_time(std::process::id())
            .unwrap_or_default()
            .saturating_sub(cpu_before.1),
    );
    sender.join().expect("sender thread");
    let sent = counts.sent.load(Ordering::Relaxed);

    // Every message sent is accepted or counted as a drop, soon.
    let settle = Instant::now();
    let totals = loop {
        let totals = totals(&hub).await;
        let counted = totals.messages + totals.drops.values().sum::<u64>();
        if counted >= sent || settle.elapsed() > Duration::from_secs(30) {
            break totals;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let dropped: u64 = totals.drops.values().sum();
    // Guests had no message before the soak, so `messages` counts the soak's alone.
    if totals.messages + dropped != sent {
        failures.push(format!(
            "sent {sent}, but the hub accepted {} and dropped {dropped}",
            totals.messages
        ));
    }

    // The SSE clients have every guest's last status, unless a resync told them to start over.
    let last_stamps = last_statuses(&hub, &names).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let behind = logs.iter().filter(|log| {
            let log = log.lock().unwrap();
            log.resyncs == 0 && log.error.is_none() && !caught_up(&log.last_stamp, &last_stamps)
        });
        if behind.count() == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let end = stats(pid);
    peak = max_stats(peak, end);
    for client in &clients {
        client.abort();
    }

    let mut latencies: Vec<u32> = Vec::new();
    let (mut events, mut resyncs, mut behind, mut broken) = (0, 0, 0, Vec::new());
    for log in &logs {
        let log = log.lock().unwrap();
        latencies.extend(&log.latencies_us);
        events += log.events;
        resyncs += log.resyncs;
        if let Some(error) = &log.error {
            broken.push(error.clone());
        } else if log.resyncs == 0 && !caught_up(&log.last_stamp, &last_stamps) {
            behind += 1;
        }
    }
    if behind > 0 {
        failures.push(format!(
            "{behind} SSE clients without a resync miss a guest's last status"
        ));
    }
    if !broken.is_empty() {
        failures.push(format!("{} SSE streams broke: {}", broken.len(), broken[0]));
    }
    if end.open_fds > connected.open_fds + args.max_fd_growth {
        failures.push(format!(
            "hub fds grew from {} to {} (--max-fd-growth {})",
            connected.open_fds, end.open_fds, args.max_fd_growth
        ));
    }
    latencies.sort_unstable();
    let store = store_throughput(
        store_before,
        store_writes(&hub).await,
        totals.messages,
        sending.as_secs_f64(),
    );

    println!(
        "== notifyhub soak: {} guests, {} SSE clients, {:.0} msg/s offered for {:.1} s",
        args.guests,
        args.sse_clients,
        args.rate,
        sending.as_secs_f64()
    );
    println!(
        "messages sent            {sent} ({} refused with EAGAIN, {} failed)",
        counts.would_block.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed)
    );
    println!(
        "messages accepted        {} ({:.0} msg/s)",
        totals.messages,
        totals.messages as f64 / sending.as_secs_f64()
    );
    println!(
        "drops                    {dropped} {:?}",
        totals
            .drops
            .iter()
            .filter(|(_, n)| **n > 0)
            .collect::<BTreeMap<_, _>>()
    );
    if latencies.is_empty() {
        println!("datagram→SSE latency     no samples");
        failures.push("no SSE client saw a soak status".to_owned());
    } else {
        let us = |p| percentile(&latencies, p);
        println!(
            "datagram→SSE latency     p50 {} µs, p90 {} µs, p99 {} µs, max {} µs (n = {})",
            us(50.0),
            us(90.0),
            us(99.0),
            latencies[latencies.len() - 1],
            latencies.len()
        );
    }
    println!(
        "SSE events delivered     {events} ({:.0}/s over {} clients), {resyncs} resyncs",
        events as f64 / sending.as_secs_f64(),
        args.sse_clients
    );
    println!("store write throughput   {store}");
    println!(
        "hub RSS                  idle {:.1} MiB, {} guests {:.1} MiB, +SSE {:.1} MiB, peak {:.1} MiB, end {:.1} MiB",
        mib(idle.rss_bytes),
        args.guests,
        mib(with_guests.rss_bytes),
        mib(connected.rss_bytes),
        mib(peak.rss_bytes),
        mib(end.rss_bytes)
    );
    println!(
        "hub open fds             idle {}, {} guests {}, +SSE {}, peak {}, end {}",
        idle.open_fds,
        args.guests,
        with_guests.open_fds,
        connected.open_fds,
        peak.open_fds,
        end.open_fds
    );
    println!("hub threads              peak {}", peak.threads);
    println!(
        "CPU while sending        hub {:.1} s ({:.0}% of one core), soak {:.1} s ({:.0}%)",
        cpu.0.as_secs_f64(),
        100.0 * cpu.0.as_secs_f64() / sending.as_secs_f64(),
        cpu.1.as_secs_f64(),
        100.0 * cpu.1.as_secs_f64() / sending.as_secs_f64()
    );
    println!(
        "registration             {:.2} s for {} guests",
        registering.as_secs_f64(),
        args.guests
    );

    hub.shutdown().await;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// Sends `STATUS=soak <ns>` (the first round with `READY=1`) round-robin to `sockets`, paced
/// at `rate` per second, for `duration` or until `stop`.
fn send_paced(
    sockets: &[PathBuf],
    rate: f64,
    duration: Duration,
    stop: &AtomicBool,
    counts: &SendCounts,
) {
    let socket = UnixDatagram::unbound().expect("unbound datagram socket");
    socket.set_nonblocking(true).expect("non-blocking");
    let begin = Instant::now();
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let elapsed = begin.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = (elapsed.as_secs_f64() * rate) as u64;
        if i >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        while i < due {
            let path = &sockets[(i % sockets.len() as u64) as usize];
            let stamp = START.elapsed().as_nanos();
            let text = if i < sockets.len() as u64 {
                format!("READY=1\nSTATUS=soak {stamp}")
            } else {
                format!("STATUS=soak {stamp}")
            };
            match socket.send_to(text.as_bytes(), path) {
                Ok(_) => counts.sent.fetch_add(1, Ordering::Relaxed),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    counts.would_block.fetch_add(1, Ordering::Relaxed)
                }
                Err(_) => counts.failed.fetch_add(1, Ordering::Relaxed),
            };
            i += 1;
        }
    }
}

/// Reads one SSE stream into `log` until it ends or the task is aborted.
async fn follow(response: reqwest::Response, log: Arc<Mutex<ClientLog>>) {
    let mut events = response.bytes_stream().eventsource();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                log.lock().unwrap().error = Some(error.to_string());
                return;
            }
        };
        let received = START.elapsed().as_nanos() as u64;
        let mut log = log.lock().unwrap();
        log.events += 1;
        match event.event.as_str() {
            "resync" => log.resyncs += 1,
            "guest" => {
                if let Some((guest, stamp)) = soak_status(&event.data) {
                    let latency = received.saturating_sub(stamp) / 1000;
                    log.latencies_us
                        .push(u32::try_from(latency).unwrap_or(u32::MAX));
                    log.last_stamp.insert(guest.to_owned(), stamp);
                }
            }
            _ => {}
        }
    }
}

/// The guest and stamp of a `status_changed` event a soak message caused: cheap, as 100
/// clients read every event.
fn soak_status(data: &str) -> Option<(&str, u64)> {
    let at = data.find(STATUS_MARK)?;
    let rest = &data[at + STATUS_MARK.len()..];
    let stamp = rest[..rest.find('"')?].parse().ok()?;
    let guest = data.split_once(r#""guest":""#)?.1;
    Some((&guest[..guest.find('"')?], stamp))
}

fn caught_up(seen: &BTreeMap<String, u64>, last: &BTreeMap<String, u64>) -> bool {
    last.iter()
        .all(|(guest, stamp)| seen.get(guest) == Some(stamp))
}

/// Every guest's current soak stamp, from its status.
async fn last_statuses(hub: &Hub, names: &[String]) -> BTreeMap<String, u64> {
    let (_, body) = hub.get_json("/api/v1/guests").await;
    let mut last = BTreeMap::new();
    for guest in body["guests"].as_array().into_iter().flatten() {
        let (Some(name), Some(status)) = (guest["name"].as_str(), guest["status"].as_str()) else {
            continue;
        };
        if let Some(stamp) = status.strip_prefix("soak ").and_then(|s| s.parse().ok())
            && names.iter().any(|n| n == name)
        {
            last.insert(name.to_owned(), stamp);
        }
    }
    last
}

#[derive(Debug, Default)]
struct Totals {
    messages: u64,
    drops: BTreeMap<String, u64>,
}

/// Accepted messages and drops by reason, over every guest.
async fn totals(hub: &Hub) -> Totals {
    let (_, body) = hub.get_json("/api/v1/guests").await;
    let mut totals = Totals::default();
    for guest in body["guests"].as_array().into_iter().flatten() {
        totals.messages += guest["messages"].as_u64().unwrap_or(0);
        for (reason, n) in guest["drops"].as_object().into_iter().flatten() {
            *totals.drops.entry(reason.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    totals
}

/// The store's writes so far, from `GET /metrics` (`notifyhub_store_write_seconds`): how many
/// and how long they took together; `None` when the hub reports none.
async fn store_writes(hub: &Hub) -> Option<(u64, f64)> {
    let (status, text) = hub.get_text("/metrics").await;
    if !status.is_success() {
        return None;
    }
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let count = value("notifyhub_store_write_seconds_count")?;
    let sum = value("notifyhub_store_write_seconds_sum")?;
    Some((count as u64, sum))
}

/// The store's write throughput between two [`store_writes`] readings.
fn store_throughput(
    before: Option<(u64, f64)>,
    after: Option<(u64, f64)>,
    messages: u64,
    secs: f64,
) -> String {
    let (Some(before), Some(after)) = (before, after) else {
        return "n/a (the hub reports no notifyhub_store_write_seconds)".to_owned();
    };
    let (writes, busy) = (after.0 - before.0, after.1 - before.1);
    if writes == 0 {
        return "n/a (no store writes reported: in-memory store?)".to_owned();
    }
    format!(
        "{writes} writes ({:.0}/s), {:.2} ms each, {:.1} messages per write; {:.0} messages/s of write time",
        writes as f64 / secs,
        busy * 1000.0 / writes as f64,
        messages as f64 / writes as f64,
        messages as f64 / busy.max(1e-9)
    )
}

fn stats(pid: u32) -> ProcStats {
    proc_stats(pid).unwrap_or_else(|e| panic!("reading /proc/{pid}: {e}"))
}

fn max_stats(a: ProcStats, b: ProcStats) -> ProcStats {
    ProcStats {
        rss_bytes: a.rss_bytes.max(b.rss_bytes),
        open_fds: a.open_fds.max(b.open_fds),
        threads: a.threads.max(b.threads),
    }
}

fn show(stats: &ProcStats) -> String {
    format!(
        "RSS {:.1} MiB, {} fds, {} threads",
        mib(stats.rss_bytes),
        stats.open_fds,
        stats.threads
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
