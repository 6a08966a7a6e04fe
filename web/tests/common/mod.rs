//! A real hub for the integration tests: `Server` on 127.0.0.1:0 with its run directory in a
//! fresh temporary directory, real notify sockets, and real datagrams from std's `UnixDatagram`.
#![allow(dead_code, unreachable_pub)] // each test file uses part of this

use std::future::Future;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use notifyhub_transport_unix::send::{UnixTarget, barrier};
use notifyhub_web::server::{Config, Server};
use notifyhub_web::store::Hub;
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long anything that should happen at once may take before a test gives up: generous, as
/// this bounds liveness, not speed.
pub const LIVENESS: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test after [`LIVENESS`].
pub async fn soon<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIVENESS, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {LIVENESS:?}"))
}

pub struct TestHub {
    pub base: String,
    pub client: reqwest::Client,
    pub hub: Hub,
    pub run_dir: PathBuf,
    pub shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
    _tmp: TempDir,
}

impl TestHub {
    /// A hub with `guests` registered, its run directory a fresh temporary directory.
    pub async fn start(guests: &[&str]) -> Self {
        Self::start_in("", guests).await
    }

    /// A hub whose run directory is `subdir` inside a fresh temporary directory.
    pub async fn start_in(subdir: &str, guests: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join(subdir);
        let shutdown = CancellationToken::new();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            http_auth: Default::default(),
            http_socket_mode: 0o600,
            socket_access: Default::default(),
            run_dir: run_dir.clone(),
            guests: guests.iter().map(ToString::to_string).collect(),
            ready_timeout: None,
            rate_limit: None,
            journal: None,
            history_memory: notifyhub_web::store::DEFAULT_HISTORY_MEMORY,
            http_limits: Default::default(),
            vsock: Default::default(),
        };
        let server = Server::bind(config, shutdown.clone()).await.unwrap();
        let base = format!("http://{}", server.local_addr().unwrap());
        let hub = server.state().hub.clone();
        Self {
            base,
            client: reqwest::Client::new(),
            hub,
            run_dir,
            shutdown,
            server: Some(tokio::spawn(server.run())),
            _tmp: tmp,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn socket(&self, guest: &str) -> PathBuf {
        self.run_dir.join("guests").join(guest).join("notify")
    }

    /// Sends one datagram to `guest`'s notify socket, as a guest would.
    pub fn send(&self, guest: &str, datagram: &[u8]) {
        let socket = UnixDatagram::unbound().unwrap();
        let sent = socket.send_to(datagram, self.socket(guest)).unwrap();
        assert_eq!(sent, datagram.len());
    }

    /// `BARRIER=1` as `systemd-notify` sends it: returns once the hub took every earlier
    /// datagram to `guest`.
    pub async fn barrier(&self, guest: &str) {
        let path = self.socket(guest);
        tokio::task::spawn_blocking(move || {
            barrier(UnixTarget::Path(path.to_str().unwrap()), None, LIVENESS)
        })
        .await
        .unwrap()
        .expect("the hub closes the barrier fd");
    }

    /// Sends each datagram, then a barrier: when this returns, the hub has them all.
    pub async fn send_all(&self, guest: &str, datagrams: &[&[u8]]) {
        for datagram in datagrams {
            self.send(guest, datagram);
        }
        self.barrier(guest).await;
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    pub async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    pub async fn post_guest(&self, name: &str) -> (StatusCode, Option<String>, Value) {
        let response = self
            .client
            .post(self.url("/api/v1/guests"))
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .unwrap();
        let location = response
            .headers()
            .get("location")
            .map(|value| value.to_str().unwrap().to_owned());
        (response.status(), location, response.json().await.unwrap())
    }

    /// Waits until `n` long-polls wait on `guest` (so what a test sends next happens during the
    /// wait, not before it).
    pub async fn until_waiters(&self, guest: &str, n: usize) {
        soon("waiters", async {
            while self.hub.waiters(guest) != n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// Opens `GET path` as an event stream; `last_event_id` is sent as `Last-Event-ID`.
    pub async fn sse(
        &self,
        path: &str,
        last_event_id: Option<u64>,
    ) -> impl Stream<Item = eventsource_stream::Event> + Unpin + use<> {
        use eventsource_stream::Eventsource;
        let mut request = self
            .client
            .get(self.url(path))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        response
            .bytes_stream()
            .eventsource()
            .map(|event| event.expect("a well-formed event stream"))
    }

    /// Cancels the shutdown token and waits for the server to finish, within [`LIVENESS`].
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        let server = self.server.take().expect("stopped once");
        soon("graceful shutdown", server).await.unwrap().unwrap();
    }
}

/// The next event of `stream`, within [`LIVENESS`].
pub async fn next_event(
    stream: &mut (impl Stream<Item = eventsource_stream::Event> + Unpin),
) -> eventsource_stream::Event {
    soon("next SSE event", stream.next())
        .await
        .expect("the stream goes on")
}

/// Reads events until `done` says so; returns them all.
pub async fn events_until(
    stream: &mut (impl Stream<Item = eventsource_stream::Event> + Unpin),
    mut done: impl FnMut(&eventsource_stream::Event) -> bool,
) -> Vec<eventsource_stream::Event> {
    let mut events = Vec::new();
    loop {
        let event = next_event(stream).await;
        let last = done(&event);
        events.push(event);
        if last {
            return events;
        }
    }
}

pub fn data(event: &eventsource_stream::Event) -> Value {
    serde_json::from_str(&event.data).unwrap()
}

pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}
