//! `notifyhub-bench`: the hub's multi-process benchmarks, each figure beside a baseline measured
//! in the same run on the same machine (issue 8).
//!
//! ```text
//! cargo run --release -p notifyhub-tests --bin notifyhub-bench -- [ingest|latency|scale|all] [--smoke] [--durable]
//! cargo run --release -p notifyhub-tests --bin notifyhub-bench -- connectible [BOOTS]
//! ```
//!
//! | scenario | ours | baseline |
//! |---|---|---|
//! | `ingest` | datagrams/s the real hub takes (parsed, folded, stored, broadcast; `/metrics` counts them) through 1 and across 100 guest sockets | a raw receiver in this process: `epoll` + `recvmmsg` (64 per call, `SO_PASSCRED` on; `NOTIFYHUB_BENCH_RECV_BATCH=1`: one per call) on sockets of its own, fed by the same sender threads (`sendmmsg`, 16 per call) |
//! | `latency` | datagram sent → SSE `guest` event received, and → `wait?for=unit:…` answered; at idle and with a background load of half the measured ingest capacity | a unix datagram ping-pong between two threads of this process (round trip) |
//! | `scale` | RSS and fds per idle registered guest at 1k and 10k guests; `GET /` (dashboard) time at 1k and 10k; 5 datagrams, one after the other, each fanned out to 1,000 SSE clients (all read by this program's one thread) | RSS: the hub with no guest; `GET /`: `GET /api/v1/guests` (same guests as JSON); fan-out: one SSE client |
//! | `connectible [BOOTS]` (root; not in `all`) | boots a real systemd guest BOOTS times (5): when `wait?for=unit:ssh-access.target` returns | when its SSH socket first accepts (probed every 1 ms), and when a 1 s retry loop started at the same moment gets in |
//!
//! The hub is the real `notifyhub` binary next to this program (`--release` gives the release
//! build), started with `--state-dir none` (in memory) or, with `--durable`, its SQLite journal
//! in a temporary dir; `--rate-limit 0` so that nothing is dropped on purpose. `--smoke` runs
//! every scenario for a moment with tiny counts: it checks that the benchmark still works (CI),
//! its figures mean nothing. No figure is asserted; the program fails only when the hub loses
//! datagrams or does not answer.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nix::sys::socket::{MsgFlags, MultiHeaders, UnixAddr, recvmmsg, sendmmsg};
use notifyhub_tests::Hub;
use notifyhub_tests::measure::{
    Latencies, RatioTable, Spread, Summary, micros, proc_stats, raise_nofile_limit,
};

/// How long anything the hub should do in well under a second may take before the run fails.
const LIVENESS: Duration = Duration::from_secs(60);
/// Datagrams per `sendmmsg` call of a sender thread.
const SEND_BATCH: usize = 16;
/// Datagrams per `recvmmsg` call of the raw receiver; `NOTIFYHUB_BENCH_RECV_BATCH=1` shows
/// what batching is worth (one datagram per call, as `recvmsg`).
fn recv_batch() -> usize {
    std::env::var("NOTIFYHUB_BENCH_RECV_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(64)
}
/// Sender threads (the machine has 2 cores; the receiver needs one).
const SENDER_THREADS: usize = 2;

#[derive(Clone, Copy, Debug)]
struct Options {
    smoke: bool,
    durable: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = Options {
        smoke: args.iter().any(|a| a == "--smoke"),
        durable: args.iter().any(|a| a == "--durable"),
    };
    let scenario = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or("all", String::as_str);
    if !["ingest", "latency", "scale", "connectible", "all"].contains(&scenario) {
        eprintln!(
            "usage: notifyhub-bench [ingest|latency|scale|all] [--smoke] [--durable]\n\
             \x20      notifyhub-bench connectible [BOOTS]\n\
             (got {scenario:?})"
        );
        std::process::exit(64);
    }
    // 10k guest sockets in the hub, 1,000 SSE clients here: both inherit this limit.
    let limit = raise_nofile_limit(32_768).expect("setrlimit(RLIMIT_NOFILE)");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "notifyhub-bench {scenario}{}{} (RLIMIT_NOFILE {limit}; hub: {})",
        if options.smoke { " --smoke" } else { "" },
        if options.durable { " --durable" } else { "" },
        notifyhub_tests::hub_binary().display()
    );
    runtime.block_on(async {
        let mut capacity = None;
        if matches!(scenario, "ingest" | "all") {
            capacity = Some(ingest(options).await);
        }
        if matches!(scenario, "latency" | "all") {
            latency(options, capacity).await;
        }
        if matches!(scenario, "scale" | "all") {
            scale(options).await;
        }
        if scenario == "connectible" {
            let boots = args
                .iter()
                .filter(|a| !a.starts_with("--"))
                .nth(1)
                .map_or(5, |n| n.parse().expect("BOOTS: a number"));
            connectible(options, boots).await;
        }
    });
}

/// Starts the hub with guests `g0`..`g{guests}` and the benchmark's options.
async fn start_hub(options: Options, guests: usize) -> Hub {
    let names: Vec<String> = (0..guests).map(|i| format!("g{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // `scale` registers 10,000 guests through the API, which --max-guests (1024) would refuse.
    let mut args = vec!["--rate-limit", "0", "--max-guests", "100000"];
    if !options.durable {
        args.extend(["--state-dir", "none"]);
    }
    Hub::start_with_args(&names, &args).await
}

/// A counter of `/metrics` (summed over its label sets), e.g. `notifyhub_messages_total`.
async fn metric(hub: &Hub, name: &str) -> f64 {
    let (status, text) = hub.get_text("/metrics").await;
    assert!(status.is_success(), "GET /metrics: {status}");
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---- ingest ----------------------------------------------------------------------------------

/// The payloads the senders cycle through: small datagrams as services send them.
fn payloads() -> Vec<Vec<u8>> {
    (0..64)
        .map(|i| match i % 4 {
            0 => format!("STATUS=Processing batch {i}").into_bytes(),
            1 => b"WATCHDOG=1".to_vec(),
            2 => format!("STATUS=Serving {i} connections\nERRNO=0").into_bytes(),
            _ => format!("X_CUSTOM_PROGRESS={i}").into_bytes(),
        })
        .collect()
}

/// Sends `total` datagrams to `paths` from [`SENDER_THREADS`] threads, round-robin over the
/// paths in batches of [`SEND_BATCH`] (`sendmmsg` on connected sockets; each blocks while its
/// receiver's queue is full). Returns when every datagram was handed to the kernel.
fn send_all(paths: &[PathBuf], total: u64) {
    let payloads = Arc::new(payloads());
    let per_thread = total / SENDER_THREADS as u64;
    let handles: Vec<_> = (0..SENDER_THREADS)
        .map(|t| {
            let count = if t == 0 {
                total - per_thread * (SENDER_THREADS as u64 - 1)
            } else {
                per_thread
            };
            let sockets: Vec<UnixDatagram> = paths
                .iter()
                .map(|p| {
                    let s = UnixDatagram::unbound().expect("socket");
                    s.connect(p)
                        .unwrap_or_else(|e| panic!("connect {}: {e}", p.display()));
                    s
                })
                .collect();
            let payloads = Arc::clone(&payloads);
            thread::spawn(move || send_thread(&sockets, &payloads, count, t))
        })
        .collect();
    for h in handles {
        h.join().expect("sender thread");
    }
}

fn send_thread(sockets: &[UnixDatagram], payloads: &[Vec<u8>], mut count: u64, offset: usize) {
    let mut headers = MultiHeaders::<UnixAddr>::preallocate(SEND_BATCH, None);
    let mut next = offset;
    let mut socket = offset % sockets.len();
    while count > 0 {
        let n = count.min(SEND_BATCH as u64) as usize;
        let iovs: Vec<[IoSlice<'_>; 1]> = (0..n)
            .map(|i| [IoSlice::new(&payloads[(next + i) % payloads.len()])])
            .collect();
        let addrs = vec![None; n];
        let fd = sockets[socket].as_raw_fd();
        let mut sent = 0;
        while sent < n {
            match sendmmsg(
                fd,
                &mut headers,
                &iovs[sent..],
                &addrs[sent..],
                [],
                MsgFlags::empty(),
            ) {
                Ok(results) => sent += results.count(),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => panic!("sendmmsg: {e}"),
            }
        }
        next += n;
        count -= n as u64;
        socket = (socket + 1) % sockets.len();
    }
}

/// The baseline receiver: binds `n` sockets (`SO_PASSCRED`, as the hub's), receives from all
/// with `epoll` and `recvmmsg` until `total` datagrams arrived. Returns the socket paths and a
/// handle that yields the time the last datagram was taken.
fn raw_receiver(dir: &Path, n: usize, total: u64) -> (Vec<PathBuf>, thread::JoinHandle<Instant>) {
    use rustix::event::epoll;
    let epoll_fd = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll_create");
    let mut sockets = Vec::new();
    let mut paths = Vec::new();
    for i in 0..n {
        let path = dir.join(format!("raw{i}"));
        let socket = UnixDatagram::bind(&path).expect("bind raw receiver");
        rustix::net::sockopt::set_socket_passcred(&socket, true).expect("SO_PASSCRED");
        socket.set_nonblocking(true).expect("nonblocking");
        epoll::add(
            &epoll_fd,
            &socket,
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN,
        )
        .expect("epoll_ctl");
        sockets.push(socket);
        paths.push(path);
    }
    let batch = recv_batch();
    let handle = thread::spawn(move || {
        let mut buffers = vec![[0u8; 4096]; batch];
        let mut headers = MultiHeaders::<UnixAddr>::preallocate(
            batch,
            Some(nix::cmsg_space!(nix::sys::socket::UnixCredentials)),
        );
        let mut events = Vec::with_capacity(n.min(1024));
        let mut received = 0u64;
        let mut bytes = 0usize;
        while received < total {
            events.clear();
            epoll::wait(&epoll_fd, rustix::buffer::spare_capacity(&mut events), None)
                .expect("epoll_wait");
            for event in &events {
                let socket = &sockets[event.data.u64() as usize];
                loop {
                    let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                        buffers.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
                    match recvmmsg(
                        socket.as_fd().as_raw_fd(),
                        &mut headers,
                        iovs.iter_mut(),
                        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
                        None,
                    ) {
                        Ok(results) => {
                            let mut got = 0;
                            for message in results {
                                bytes += message.bytes;
                                got += 1;
                            }
                            received += got;
                            if got < batch as u64 {
                                break;
                            }
                        }
                        Err(nix::errno::Errno::EAGAIN) => break,
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => panic!("recvmmsg: {e}"),
                    }
                }
            }
        }
        std::hint::black_box(bytes);
        Instant::now()
    });
    (paths, handle)
}

/// Datagrams/s of the raw receiver over `n` sockets.
fn raw_rate(n: usize, total: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let (paths, receiver) = raw_receiver(dir.path(), n, total);
    let start = Instant::now();
    send_all(&paths, total);
    let end = receiver.join().expect("raw receiver");
    total as f64 / (end - start).as_secs_f64()
}

/// Datagrams/s of the hub over guests `g0`..`g{n}`: from the first send until `/metrics`
/// counts them all (polled every 5 ms once the senders are done).
async fn hub_rate(hub: &Hub, n: usize, total: u64) -> f64 {
    let before = metric(hub, "notifyhub_messages_total").await;
    let paths: Vec<PathBuf> = (0..n).map(|i| hub.socket(&format!("g{i}"))).collect();
    let start = Instant::now();
    tokio::task::spawn_blocking(move || send_all(&paths, total))
        .await
        .expect("senders");
    let deadline = Instant::now() + LIVENESS;
    loop {
        let done = metric(hub, "notifyhub_messages_total").await - before;
        if done >= total as f64 {
            return total as f64 / start.elapsed().as_secs_f64();
        }
        assert!(
            Instant::now() < deadline,
            "the hub took {done} of {total} datagrams within {LIVENESS:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The ingest table; returns the hub's median datagrams/s through one socket.
async fn ingest(options: Options) -> f64 {
    let (total, rounds) = if options.smoke {
        (2_000, 1)
    } else {
        (400_000, 5)
    };
    let hub = start_hub(options, 100).await;
    let mut table = RatioTable::new(
        &format!(
            "ingest, {} store ({total} datagrams per round, median of {rounds})",
            if options.durable {
                "durable"
            } else {
                "in-memory"
            }
        ),
        "datagrams/s",
        true,
    );
    let mut capacity = 0.0;
    for sockets in [1, 100] {
        let mut raws = Vec::new();
        let mut ours = Vec::new();
        for _ in 0..rounds {
            // Interleaved, so that both see the same machine noise.
            raws.push(
                tokio::task::spawn_blocking(move || raw_rate(sockets, total))
                    .await
                    .unwrap(),
            );
            ours.push(hub_rate(&hub, sockets, total).await);
        }
        let ratios: Vec<f64> = ours.iter().zip(&raws).map(|(o, r)| o / r).collect();
        let (raw, our) = (Spread::of(&raws).unwrap(), Spread::of(&ours).unwrap());
        table.row(
            &format!("{sockets} socket{}", if sockets == 1 { "" } else { "s" }),
            raw.median,
            our.median,
        );
        println!(
            "  {sockets:>3} sockets: raw {:.0} ({:.0}–{:.0}), hub {:.0} ({:.0}–{:.0}), ratio per round {}",
            raw.median,
            raw.min,
            raw.max,
            our.median,
            our.min,
            our.max,
            Spread::of(&ratios).unwrap()
        );
        if sockets == 1 {
            capacity = our.median;
        }
    }
    let drops = metric(&hub, "notifyhub_drops_total").await;
    assert_eq!(
        drops,
        0.0,
        "the hub dropped datagrams under load:\n{}",
        hub.log_text()
    );
    let stats = proc_stats(hub.pid()).expect("/proc of the hub");
    table.print();
    println!(
        "  hub after ingest: RSS {:.1} MiB, {} fds, {} threads",
        stats.rss_bytes as f64 / 1048576.0,
        stats.open_fds,
        stats.threads
    );
    hub.shutdown().await;
    capacity
}

// ---- latency ---------------------------------------------------------------------------------

/// Round trips of one small datagram between two threads over a unix datagram socket pair.
fn ping_pong(samples: usize) -> Latencies {
    let (a, b) = UnixDatagram::pair().expect("socketpair");
    let echo = thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok(n) = b.recv(&mut buf) {
            if n == 0 || b.send(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut latencies = Latencies::new();
    let mut buf = [0u8; 64];
    for _ in 0..samples {
        let start = Instant::now();
        a.send(b"STATUS=ping").expect("ping");
        a.recv(&mut buf).expect("pong");
        latencies.push(start.elapsed());
    }
    a.send(b"").expect("stop the echo thread");
    echo.join().expect("echo thread");
    latencies
}

/// Background senders at `rate` datagrams/s to guests `g1`..`g{n}`, until the flag is cleared.
fn background_load(
    hub: &Hub,
    guests: usize,
    rate: f64,
) -> (Arc<AtomicBool>, thread::JoinHandle<u64>) {
    let running = Arc::new(AtomicBool::new(true));
    let paths: Vec<PathBuf> = (1..=guests).map(|i| hub.socket(&format!("g{i}"))).collect();
    let flag = Arc::clone(&running);
    let handle = thread::spawn(move || {
        let sockets: Vec<UnixDatagram> = paths
            .iter()
            .map(|p| {
                let s = UnixDatagram::unbound().unwrap();
                s.connect(p).unwrap();
                s
            })
            .collect();
        let payloads = payloads();
        let start = Instant::now();
        let mut sent = 0u64;
        while flag.load(Ordering::Relaxed) {
            // Paced in 1 ms steps: send what is due, then sleep.
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            while sent < due {
                let socket = &sockets[sent as usize % sockets.len()];
                socket
                    .send(&payloads[sent as usize % payloads.len()])
                    .expect("background send");
                sent += 1;
            }
            thread::sleep(Duration::from_millis(1));
        }
        sent
    });
    (running, handle)
}

/// An SSE stream of guest `guest`'s events (`GET /api/v1/events?guest=NAME`).
async fn subscribe(
    hub: &Hub,
    guest: &str,
) -> impl futures_util::Stream<
    Item = Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>,
> + use<> {
    let response = hub
        .client()
        .get(hub.url(&format!("/api/v1/events?guest={guest}")))
        .send()
        .await
        .expect("GET /api/v1/events");
    assert!(response.status().is_success(), "SSE: {}", response.status());
    eventsource_stream::Eventsource::eventsource(response.bytes_stream())
}

/// Reads `events` up to the first `guest` event whose data holds `marker`.
///
/// # Panics
/// When none comes within [`LIVENESS`], or the stream ends or fails.
async fn until_marker(
    events: &mut (
             impl futures_util::Stream<
        Item = Result<
            eventsource_stream::Event,
            eventsource_stream::EventStreamError<reqwest::Error>,
        >,
    > + Unpin
         ),
    marker: &str,
) {
    loop {
        let event = tokio::time::timeout(LIVENESS, events.next())
            .await
            .expect("SSE event within the liveness bound")
            .expect("SSE stream ended")
            .expect("SSE stream error");
        if event.event == "guest" && event.data.contains(marker) {
            return;
        }
    }
}

/// Datagram → SSE event, `samples` times, on guest `g0`.
async fn sse_latency(hub: &Hub, samples: usize) -> Latencies {
    let mut events = subscribe(hub, "g0").await;
    let socket = UnixDatagram::unbound().unwrap();
    socket.connect(hub.socket("g0")).unwrap();
    let mut latencies = Latencies::new();
    for i in 0..samples {
        let marker = format!("lat-{i}-{}", std::process::id());
        let start = Instant::now();
        socket
            .send(format!("STATUS={marker}").as_bytes())
            .expect("send");
        until_marker(&mut events, &marker).await;
        latencies.push(start.elapsed());
    }
    latencies
}

/// Datagram → `wait?for=unit:…` answered, `samples` times, on guest `g0`. Each wait is
/// registered (the `notifyhub_wait_requests` gauge says so) before the datagram is sent.
async fn wait_latency(hub: &Hub, samples: usize) -> Latencies {
    let socket = UnixDatagram::unbound().unwrap();
    socket.connect(hub.socket("g0")).unwrap();
    let mut latencies = Latencies::new();
    for i in 0..samples {
        let unit = format!("bench-{i}.target");
        let base = metric(hub, "notifyhub_wait_requests").await;
        let url = hub.url(&format!(
            "/api/v1/guests/g0/wait?for=unit:{unit}&timeout=60"
        ));
        let request = tokio::spawn(hub.client().get(url).send());
        let deadline = Instant::now() + LIVENESS;
        while metric(hub, "notifyhub_wait_requests").await <= base {
            assert!(Instant::now() < deadline, "the wait never registered");
            tokio::task::yield_now().await;
        }
        let start = Instant::now();
        socket
            .send(format!("X_SYSTEMD_UNIT_ACTIVE={unit}").as_bytes())
            .expect("send");
        let response = request.await.unwrap().expect("wait answered");
        latencies.push(start.elapsed());
        assert_eq!(response.status(), 200, "wait for {unit}");
        // Keep the guest's unit set small.
        socket
            .send(format!("X_SYSTEMD_UNIT_INACTIVE={unit}").as_bytes())
            .expect("send");
    }
    latencies
}

async fn latency(options: Options, capacity: Option<f64>) {
    let (samples, wait_samples) = if options.smoke {
        (20, 10)
    } else {
        (2_000, 300)
    };
    let hub = start_hub(options, 11).await;
    let capacity = match capacity {
        Some(c) => c,
        None => hub_rate(&hub, 1, if options.smoke { 2_000 } else { 200_000 }).await,
    };
    let baseline = tokio::task::spawn_blocking(move || ping_pong(samples))
        .await
        .unwrap();
    let base = baseline.summary().unwrap();
    println!("  baseline, unix datagram ping-pong (round trip): {base}");
    let mut p50 = RatioTable::new("latency p50 (vs ping-pong round trip p50)", "µs", false);
    let mut p99 = RatioTable::new("latency p99 (vs ping-pong round trip p99)", "µs", false);
    for (label, load) in [("idle", 0.0), ("50% load", capacity / 2.0)] {
        let background = (load > 0.0).then(|| background_load(&hub, 10, load));
        if background.is_some() {
            // Measure under a load that has settled.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let sse = sse_latency(&hub, samples).await.summary().unwrap();
        let wait = wait_latency(&hub, wait_samples).await.summary().unwrap();
        if let Some((running, handle)) = background {
            running.store(false, Ordering::Relaxed);
            let sent = handle.join().expect("background sender");
            println!("  background load: {sent} datagrams at {load:.0}/s");
        }
        println!("  {label}: datagram → SSE event: {sse}");
        println!("  {label}: datagram → wait answered: {wait}");
        for (what, s) in [("SSE", sse), ("wait", wait)] {
            p50.row(&format!("{what}, {label}"), us(base.p50), us(s.p50));
            p99.row(&format!("{what}, {label}"), us(base.p99), us(s.p99));
        }
    }
    p50.print();
    p99.print();
    hub.shutdown().await;
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ---- scale -----------------------------------------------------------------------------------

/// Registers guests `from`..`to` through the API, `concurrency` requests at a time.
async fn register(hub: &Hub, from: usize, to: usize) {
    let mut pending = futures_util::stream::iter(from..to)
        .map(|i| async move {
            let (status, body) = hub.add_guest(&format!("s{i}")).await;
            assert_eq!(status, 201, "POST guest s{i}: {body}");
        })
        .buffer_unordered(16);
    while pending.next().await.is_some() {}
}

/// Median time of `GET path` over `n` requests, and its body length.
async fn get_time(hub: &Hub, path: &str, n: usize) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut len = 0;
    for _ in 0..n {
        let start = Instant::now();
        let (status, body) = hub.get_text(path).await;
        times.push(start.elapsed());
        assert!(status.is_success(), "GET {path}: {status}");
        len = body.len();
    }
    (Summary::of(&times).unwrap().p50, len)
}

async fn scale(options: Options) {
    let steps: &[usize] = if options.smoke {
        &[100]
    } else {
        &[1_000, 10_000]
    };
    let clients = if options.smoke { 20 } else { 1_000 };
    let hub = start_hub(options, 0).await;
    // Let the hub settle (allocator, runtime threads) before the empty baseline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = hub.get_text("/").await;
    let empty = proc_stats(hub.pid()).expect("/proc of the hub");
    println!(
        "  empty hub: RSS {:.1} MiB, {} fds",
        empty.rss_bytes as f64 / 1048576.0,
        empty.open_fds
    );
    let mut pages = RatioTable::new(
        "dashboard render (GET / vs GET /api/v1/guests, median)",
        "ms",
        false,
    );
    let mut registered = 0;
    for &n in steps {
        register(&hub, registered, n).await;
        registered = n;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stats = proc_stats(hub.pid()).expect("/proc of the hub");
        let per_guest = (stats.rss_bytes.saturating_sub(empty.rss_bytes)) as f64 / n as f64;
        println!(
            "  {n} idle guests: RSS {:.1} MiB, {:.1} KiB per guest (target ≤ 16), {:.2} fds per guest",
            stats.rss_bytes as f64 / 1048576.0,
            per_guest / 1024.0,
            (stats.open_fds - empty.open_fds) as f64 / n as f64
        );
        let rounds = if options.smoke { 1 } else { 5 };
        let (json, json_len) = get_time(&hub, "/api/v1/guests", rounds).await;
        let (page, page_len) = get_time(&hub, "/", rounds).await;
        println!(
            "  {n} guests: GET / {} ({page_len} bytes), GET /api/v1/guests {} ({json_len} bytes)",
            micros(page),
            micros(json)
        );
        pages.row(
            &format!("{n} guests"),
            json.as_secs_f64() * 1e3,
            page.as_secs_f64() * 1e3,
        );
    }
    pages.print();
    fan_out(&hub, clients).await;
    let took = stop(hub).await;
    println!(
        "  SIGTERM → exit with {registered} guests: {}",
        took.map_or("more than 120 s".to_owned(), |t| format!(
            "{:.2} s",
            t.as_secs_f64()
        ))
    );
}

/// SIGTERMs the hub and times its exit (its `/proc` entry loses `VmRSS` once it is a zombie);
/// `None` when it took more than 120 s. [`Hub::shutdown`] allows only 10 s, which a hub with
/// 10k guests may need.
async fn stop(hub: Hub) -> Option<Duration> {
    let pid = hub.pid();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid > 0"),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM the hub");
    let start = Instant::now();
    let took = loop {
        if proc_stats(pid).is_err() {
            break Some(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(120) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    drop(hub);
    took
}

/// Datagrams to guest `s0` (5, one after the other), each received as an SSE event by each of
/// `clients` clients: the time until each got it, against one client alone (20 datagrams).
async fn fan_out(hub: &Hub, clients: usize) {
    let mut table = RatioTable::new(
        &format!("SSE fan-out (each datagram → {clients} clients vs 1 client)"),
        "µs",
        false,
    );
    let mut single = None;
    for (n, rounds) in [(1, 20), (clients, 5)] {
        let mut streams = Vec::new();
        for _ in 0..n {
            streams.push(subscribe(hub, "s0").await);
        }
        // Every client is subscribed once the gauge counts it.
        let deadline = Instant::now() + LIVENESS;
        while metric(hub, "notifyhub_sse_clients").await < n as f64 {
            assert!(
                Instant::now() < deadline,
                "{n} SSE clients never all connected"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Several datagrams, one after the other; every client's arrival time of each.
        let mut times = Vec::new();
        for round in 0..rounds {
            let marker = format!("fan-{n}-{round}-{}", std::process::id());
            let arrived = Arc::new(AtomicU64::new(0));
            let start = Instant::now();
            hub.send("s0", format!("STATUS={marker}").as_bytes());
            let waits = streams.iter_mut().map(|events| {
                let marker = marker.clone();
                let arrived = Arc::clone(&arrived);
                async move {
                    until_marker(events, &marker).await;
                    arrived.fetch_add(1, Ordering::Relaxed);
                    start.elapsed()
                }
            });
            times.extend(futures_util::future::join_all(waits).await);
            assert_eq!(arrived.load(Ordering::Relaxed), n as u64);
        }
        let s = Summary::of(&times).unwrap();
        println!("  {n} SSE clients: {s}");
        match single {
            None => single = Some(s),
            Some(one) => {
                table.row("p50", us(one.p50), us(s.p50));
                table.row("p99", us(one.p99), us(s.p99));
            }
        }
    }
    table.print();
}

// ---- connectible -------------------------------------------------------------------------------

/// Time to connectible: boots a real systemd guest (`../shared/guest/real-systemd-guest`, root
/// only) `boots` times and, from the moment each boot starts, compares when
/// (a) its SSH socket accepts a connection (probed every 1 ms: the physical limit),
/// (b) `wait?for=unit:ssh-access.target` returns, and
/// (c) a typical retry loop (`until connect; do sleep 1; done`) gets in.
async fn connectible(options: Options, boots: usize) {
    use notifyhub_tests::real_guest::{GuestGuard, harness, skip};
    if skip() {
        return;
    }
    let state = std::env::var("NOTIFYHUB_GUEST_STATE")
        .unwrap_or_else(|_| "/run/notifyhub-guest".to_string());
    let mut rows = Vec::new();
    for boot in 0..boots {
        let name = format!("nh-bench-{}-{boot}", std::process::id());
        let hub = start_hub(options, 1).await;
        let guard = GuestGuard::new(&name);
        // sshd's socket: systemd-ssh-generator binds /run/host/unix-export/ssh in the guest.
        let ssh = PathBuf::from(&state)
            .join(&name)
            .join("host/unix-export/ssh");
        let start = Instant::now();
        let socket = hub.socket("g0");
        let boot_args = ["boot", &name, "--notify-socket", socket.to_str().unwrap()];
        let (waited, bound, retried, _) = tokio::join!(
            async {
                let (status, guest) = hub.wait("g0", "unit:ssh-access.target", 60).await;
                assert_eq!(status, 200, "wait for ssh-access.target: {guest:#}");
                start.elapsed()
            },
            probe(&ssh, start, Duration::from_millis(1)),
            probe(&ssh, start, Duration::from_secs(1)),
            harness(&boot_args),
        );
        println!(
            "  boot {boot}: socket accepts at {:.3} s, wait answered at {:.3} s, 1 s retry loop in at {:.3} s",
            bound.as_secs_f64(),
            waited.as_secs_f64(),
            retried.as_secs_f64()
        );
        rows.push((bound, waited, retried));
        drop(guard);
        hub.shutdown().await;
    }
    let gaps = |f: fn(&(Duration, Duration, Duration)) -> f64| -> Spread {
        Spread::of(&rows.iter().map(f).collect::<Vec<_>>()).unwrap()
    };
    println!("== time to connectible over {boots} boots (median (min–max), ms)");
    println!(
        "  wait answered − socket accepts: {}",
        gaps(|r| (r.1.as_secs_f64() - r.0.as_secs_f64()) * 1e3)
    );
    println!(
        "  1 s retry loop − wait answered: {}",
        gaps(|r| (r.2.as_secs_f64() - r.1.as_secs_f64()) * 1e3)
    );
    println!(
        "  from boot: socket {}, wait {}, retry loop {}",
        gaps(|r| r.0.as_secs_f64() * 1e3),
        gaps(|r| r.1.as_secs_f64() * 1e3),
        gaps(|r| r.2.as_secs_f64() * 1e3)
    );
}

/// Tries to connect to the unix stream socket at `path` every `interval` from `start` until
/// it accepts; returns when that was, from `start`. Gives up after [`LIVENESS`].
async fn probe(path: &Path, start: Instant, interval: Duration) -> Duration {
    let mut next = start;
    loop {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < LIVENESS,
            "{} never accepted a connection",
            path.display()
        );
        next += interval;
        tokio::time::sleep_until(next.into()).await;
    }
}
