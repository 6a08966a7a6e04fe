//! Crash safety of the journal (`--state-dir`): a guest sends a numbered stream of messages,
//! each with a pipe's write end as `BARRIER=1` does, and counts a message as acknowledged once
//! the hub closed that fd (which it does only after the message is committed and published).
//! The hub is killed with SIGKILL at random points and restarted on the same state directory;
//! after every restart each acknowledged message is in the guest's history exactly once and in
//! order, and nothing else is (at most the one message in flight at the kill may be there too).
//! A last round checks that a restart gives the very state, history and SSE resume a running hub
//! had. `--retain-messages 500` makes every start prune, so restarts go through checkpoints.
//!
//! `NOTIFYHUB_CRASH_ROUNDS` sets the number of kills (default 12, a few seconds);
//! `NOTIFYHUB_CRASH_SEED` replays a run (the seed is printed).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use notifyhub_tests::{hub_binary, pipe, pipe_closed_within, send_datagram};
use rustix::fd::AsFd as _;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// How long a start (with its replay) may take: 5–10× what it takes on a 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A hub process on the test's run and state directories.
struct Running {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Running {
    async fn start(run_dir: &Path, state_dir: &Path) -> Self {
        let mut child = Command::new(hub_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--guest", "counter"])
            // Retention prunes at every start: restarts go through its checkpoints too.
            .args(["--rate-limit", "0", "--retain-messages", "500"])
            .arg("--run-dir")
            .arg(run_dir)
            .arg("--state-dir")
            .arg(state_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn notifyhub");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let listening = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(base) = line.strip_prefix("notifyhub: listening on ") {
                    return Some(base.to_owned());
                }
            }
            None
        };
        let base = tokio::time::timeout(START_TIMEOUT, listening)
            .await
            .expect("the hub printed no listening line in time")
            .expect("the hub exited before listening");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Self {
            child,
            base,
            client,
        }
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "GET {path}: {response:?}");
        response.json().await.unwrap()
    }

    /// The numbers in the guest's history, in order, and its message count.
    async fn stored(&self) -> (Vec<u64>, u64) {
        let events = self.get("/api/v1/guests/counter/events").await;
        let numbers = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| {
                let text = event["text"].as_str().unwrap();
                let number = text.strip_prefix("STATUS=").unwrap().parse().unwrap();
                assert_eq!(
                    event["seq"], number,
                    "message {number} is the guest's {number}th"
                );
                assert_eq!(event["fds"], 1);
                number
            })
            .collect();
        let guest = self.get("/api/v1/guests/counter").await;
        (numbers, guest["messages"].as_u64().unwrap())
    }

    fn kill(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    }
}

/// The SSE stream of the hub at `base`, after `last_event_id` if given. Subscribed once this
/// returns (the hub subscribes before it answers).
async fn sse(
    client: &reqwest::Client,
    base: &str,
    last_event_id: Option<&str>,
) -> impl futures_util::Stream<Item = eventsource_stream::Event> + Unpin + use<> {
    let mut request = client.get(format!("{base}/api/v1/events"));
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "{response:?}");
    eventsource_stream::EventStream::new(response.bytes_stream()).map(|event| event.unwrap())
}

/// The next `n` events of `stream`: `(id, event, data)`.
async fn take(
    stream: &mut (impl futures_util::Stream<Item = eventsource_stream::Event> + Unpin),
    n: usize,
) -> Vec<(String, String, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("SSE events in time")
            .expect("the stream goes on");
        got.push((event.id, event.event, event.data));
    }
    got
}

/// A small PRNG (xorshift64*), enough to pick kill points.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Sends `STATUS=n`, `STATUS=n+1`, … each with a pipe's write end, one at a time, until `stop`;
/// returns the last number whose fd the hub closed before `stop` was set (0: none).
fn send_numbered(socket: PathBuf, first: u64, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> u64 {
    let mut acknowledged = first - 1;
    for n in first.. {
        let (read, write) = pipe();
        if stop.load(Ordering::SeqCst)
            || send_datagram(&socket, format!("STATUS={n}").as_bytes(), &[write.as_fd()]).is_err()
        {
            break;
        }
        drop(write);
        sent.store(n, Ordering::SeqCst);
        loop {
            // The hub's death closes the fd too: only a close seen before the kill counts.
            let closed = pipe_closed_within(&read, Duration::from_millis(20));
            if stop.load(Ordering::SeqCst) {
                return acknowledged;
            }
            if closed {
                acknowledged = n;
                break;
            }
        }
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let rounds: u64 = std::env::var("NOTIFYHUB_CRASH_ROUNDS")
        .map(|rounds| rounds.parse().expect("NOTIFYHUB_CRASH_ROUNDS is a number"))
        .unwrap_or(12);
    let seed = std::env::var("NOTIFYHUB_CRASH_SEED")
        .map(|seed| seed.parse().expect("NOTIFYHUB_CRASH_SEED is a number"))
        .unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash safety: {rounds} kills, NOTIFYHUB_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, state_dir) = (dir.path().join("run"), dir.path().join("state"));
    let socket = run_dir.join("guests/counter/notify");
    let started = Instant::now();
    let mut acknowledged = 0;
    let mut in_flight_kept = 0;
    for round in 0..rounds {
        let mut hub = Running::start(&run_dir, &state_dir).await;
        let (numbers, last) = hub.stored().await;
        // The hub shows the newest messages (`seq` is the guest's count, checked equal to the
        // number): consecutive numbers up to the count mean each message once, in order.
        let first = last + 1 - numbers.len() as u64;
        assert_eq!(
            numbers,
            (first..=last).collect::<Vec<_>>(),
            "round {round}: every stored message once, in order"
        );
        if round == 0 {
            let added = hub
                .client
                .post(format!("{}/api/v1/guests", hub.base))
                .json(&serde_json::json!({"name": "extra"}))
                .send()
                .await
                .unwrap();
            assert_eq!(added.status(), 201);
        } else {
            // A guest registered through the API comes back, with its socket.
            assert_eq!(hub.get("/api/v1/guests/extra").await["name"], "extra");
            assert!(run_dir.join("guests/extra/notify").exists());
        }
        assert!(
            last == acknowledged || last == acknowledged + 1,
            "round {round}: {acknowledged} acknowledged, {last} stored"
        );
        in_flight_kept += last - acknowledged;

        // Send for a random while (0–150 ms), then kill at once.
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let sender = std::thread::spawn({
            let (socket, stop, sent) = (socket.clone(), stop.clone(), sent.clone());
            move || send_numbered(socket, last + 1, stop, sent)
        });
        tokio::time::sleep(Duration::from_millis(rng.below(150))).await;
        stop.store(true, Ordering::SeqCst);
        hub.kill();
        hub.child.wait().await.unwrap();
        acknowledged = tokio::task::spawn_blocking(move || sender.join().unwrap())
            .await
            .unwrap();
        println!(
            "round {round}: {last} stored at start, sent up to {}, {acknowledged} acknowledged, \
             killed",
            sent.load(Ordering::SeqCst)
        );
    }

    // A restart gives what the running hub showed: state, history and SSE resume.
    let mut hub = Running::start(&run_dir, &state_dir).await;
    let (_, last) = hub.stored().await;
    assert!(last == acknowledged || last == acknowledged + 1);
    let mut live = sse(&hub.client, &hub.base, None).await;
    for n in last + 1..=last + 3 {
        let (read, write) = pipe();
        send_datagram(&socket, format!("STATUS={n}").as_bytes(), &[write.as_fd()]).unwrap();
        drop(write);
        assert!(pipe_closed_within(&read, Duration::from_secs(10)));
    }
    // One status change per message.
    let seen = take(&mut live, 3).await;
    assert!(
        seen.iter().all(|(_, event, _)| event == "guest"),
        "{seen:?}"
    );
    let guest = hub.get("/api/v1/guests/counter").await;
    let events = hub.get("/api/v1/guests/counter/events").await;
    let guests = hub.get("/api/v1/guests").await;
    let after_first = Some(seen[0].0.as_str());
    let mut resumed = sse(&hub.client, &hub.base, after_first).await;
    assert_eq!(take(&mut resumed, 2).await, seen[1..]);
    hub.kill();
    hub.child.wait().await.unwrap();
    let again = Running::start(&run_dir, &state_dir).await;
    assert_eq!(again.get("/api/v1/guests/counter").await, guest);
    // Retention kept the newest 500 of what the running hub showed, or more.
    let (kept, shown) = (
        again.get("/api/v1/guests/counter/events").await,
        events["events"].as_array().unwrap().clone(),
    );
    let kept = kept["events"].as_array().unwrap();
    assert!(kept.len() >= shown.len().min(500), "{} kept", kept.len());
    assert_eq!(kept[..], shown[shown.len() - kept.len()..]);
    assert_eq!(again.get("/api/v1/guests").await, guests);
    assert_eq!(
        take(&mut sse(&again.client, &again.base, after_first).await, 2).await,
        seen[1..],
        "Last-Event-ID resumes across a restart"
    );
    assert_eq!(guest["status"], (last + 3).to_string());
    println!(
        "crash safety: {rounds} SIGKILLs in {:.1} s, {} messages acknowledged, none lost; \
         {in_flight_kept} in-flight messages were stored too",
        started.elapsed().as_secs_f64(),
        last + 3
    );
}
