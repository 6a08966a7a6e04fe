//! `GET /metrics` of the real binary: the counters and gauges follow real datagrams (Debian's
//! `systemd-notify` and raw ones), SSE streams and long-polls, and agree with the REST API.

use std::process::Stdio;
use std::time::{Duration, Instant};

use notifyhub_tests::{Hub, SETTLE_TIMEOUT};
use reqwest::StatusCode;

/// One scrape: `(series, value)` per sample line, the series as written (`name{labels}`).
struct Scrape(Vec<(String, f64)>);

impl Scrape {
    async fn of(hub: &Hub) -> Self {
        let response = hub
            .client()
            .get(hub.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        let text = response.text().await.unwrap();
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("not a sample: {line:?}"));
                let value = value
                    .parse()
                    .unwrap_or_else(|_| panic!("not a number: {line:?}"));
                (series.to_owned(), value)
            })
            .collect();
        Self(samples)
    }

    /// Asserts each `(series, value)`.
    fn assert(&self, expected: &[(&str, f64)]) {
        for (series, value) in expected {
            assert_eq!(self.get(series), *value, "{series}");
        }
    }

    /// The value of `series`, e.g. `notifyhub_guests{phase="ready"}`.
    fn get(&self, series: &str) -> f64 {
        self.0
            .iter()
            .find(|(name, _)| name == series)
            .unwrap_or_else(|| panic!("no series {series} in {:?}", self.0))
            .1
    }
}

/// Scrapes until `series` has `value`, for at most [`SETTLE_TIMEOUT`] (gauges follow HTTP
/// connections, which the hub notices a moment after the client).
async fn scrape_until(hub: &Hub, series: &str, value: f64) -> Scrape {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let scrape = Scrape::of(hub).await;
        if scrape.get(series) == value {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed {} instead of {value}",
            scrape.get(series)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Debian's `systemd-notify --no-block` (one datagram, no barrier) to guest `name`.
async fn systemd_notify(hub: &Hub, name: &str, args: &[&str]) {
    let status = tokio::process::Command::new("/usr/bin/systemd-notify")
        .arg("--no-block")
        .args(args)
        .env("NOTIFY_SOCKET", hub.socket(name))
        .stdin(Stdio::null())
        .status()
        .await
        .expect("spawn systemd-notify");
    assert!(status.success(), "systemd-notify {args:?}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_phase_gauges_follow_real_datagrams() {
    let hub = Hub::start(&["web1", "web2"]).await;
    Scrape::of(&hub).await.assert(&[
        (r#"notifyhub_messages_total{transport="unix"}"#, 0.0),
        (r#"notifyhub_drops_total{reason="oversize"}"#, 0.0),
        (r#"notifyhub_guests{phase="registered"}"#, 2.0),
        ("notifyhub_registered_guests", 2.0),
    ]);

    systemd_notify(&hub, "web1", &["--ready", "--status=serving"]).await;
    systemd_notify(&hub, "web2", &["X_SYSTEMD_HOSTNAME=guest-two"]).await;
    hub.settle("web1", 1).await;
    hub.settle("web2", 1).await;
    let mut oversize = b"STATUS=".to_vec();
    oversize.resize(4097, b'x');
    hub.send("web1", &oversize);
    hub.send("web2", b"READY=1\0STATUS=nul");
    hub.send("web2", b"READY=1\0STATUS=nul again");
    let web2 = hub
        .poll_guest("web2", "two NUL drops", SETTLE_TIMEOUT, |g| {
            g["drops"]["embedded_nul"] == 2
        })
        .await;
    let web1 = hub
        .poll_guest("web1", "one oversize drop", SETTLE_TIMEOUT, |g| {
            g["drops"]["oversize"] == 1
        })
        .await;

    // The same counts as the REST API's per-guest counters, summed.
    let messages = web1["messages"].as_u64().unwrap() + web2["messages"].as_u64().unwrap();
    assert_eq!(messages, 2);
    assert_eq!(
        (&web1["phase"], &web2["phase"]),
        (&"ready".into(), &"booting".into())
    );
    Scrape::of(&hub).await.assert(&[
        (
            r#"notifyhub_messages_total{transport="unix"}"#,
            messages as f64,
        ),
        (r#"notifyhub_messages_total{transport="vsock"}"#, 0.0),
        (r#"notifyhub_drops_total{reason="oversize"}"#, 1.0),
        (r#"notifyhub_drops_total{reason="embedded_nul"}"#, 2.0),
        (r#"notifyhub_drops_total{reason="too_many_fds"}"#, 0.0),
        (r#"notifyhub_guests{phase="ready"}"#, 1.0),
        (r#"notifyhub_guests{phase="booting"}"#, 1.0),
        (r#"notifyhub_guests{phase="registered"}"#, 0.0),
        ("notifyhub_registered_guests", 2.0),
    ]);

    assert_eq!(hub.remove_guest("web2").await, StatusCode::NO_CONTENT);
    let (status, _) = hub.add_guest("web3").await;
    assert_eq!(status, StatusCode::CREATED);
    // Counters do not go back with the guest that counted them.
    Scrape::of(&hub).await.assert(&[
        (r#"notifyhub_guests{phase="booting"}"#, 0.0),
        (r#"notifyhub_guests{phase="registered"}"#, 1.0),
        ("notifyhub_registered_guests", 2.0),
        (r#"notifyhub_drops_total{reason="embedded_nul"}"#, 2.0),
    ]);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_clients_and_long_polls_are_counted_while_open() {
    let hub = Hub::start(&["web1"]).await;
    Scrape::of(&hub).await.assert(&[
        ("notifyhub_sse_clients", 0.0),
        ("notifyhub_wait_requests", 0.0),
    ]);

    let stream = hub
        .client()
        .get(hub.url("/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let other = hub
        .client()
        .get(hub.url("/api/v1/events?guest=web1"))
        .send()
        .await
        .unwrap();
    scrape_until(&hub, "notifyhub_sse_clients", 2.0).await;

    let client = hub.client().clone();
    let url = hub.url("/api/v1/guests/web1/wait?for=ready&timeout=60");
    let waiting = tokio::spawn(async move { client.get(url).send().await.unwrap().status() });
    scrape_until(&hub, "notifyhub_wait_requests", 1.0).await;

    systemd_notify(&hub, "web1", &["--ready"]).await;
    assert_eq!(waiting.await.unwrap(), StatusCode::OK);
    scrape_until(&hub, "notifyhub_wait_requests", 0.0).await;

    drop(stream);
    scrape_until(&hub, "notifyhub_sse_clients", 1.0).await;
    drop(other);
    scrape_until(&hub, "notifyhub_sse_clients", 0.0).await;
    hub.shutdown().await;
}

/// 300 guests add no series: no label names a guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_do_not_grow_with_guests() {
    let hub = Hub::start(&["web1"]).await;
    let one = Scrape::of(&hub).await.0.len();
    for i in 0..300 {
        let (status, body) = hub.add_guest(&format!("guest-{i}")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let scrape = Scrape::of(&hub).await;
    assert_eq!(scrape.get("notifyhub_registered_guests"), 301.0);
    assert_eq!(scrape.0.len(), one);
    assert!(
        scrape
            .0
            .iter()
            .all(|(series, _)| !series.contains("guest-")),
        "a series names a guest"
    );
    hub.shutdown().await;
}

/// A restart on the same `--state-dir` replays the journal into the state, but not into the
/// counters nor the log: counters count what this process received, gauges show the state.
/// Also: a guest's drops are logged at warn, once for a burst, with the snake_case reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replays_the_state_but_not_the_counters_or_the_log() {
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().to_str().expect("UTF-8 temp path");
    let args = ["--state-dir", state_dir];

    let hub = Hub::start_with_args(&["web1", "web2"], &args).await;
    systemd_notify(&hub, "web1", &["--ready", "--status=serving"]).await;
    systemd_notify(&hub, "web2", &["X_SYSTEMD_HOSTNAME=guest-two"]).await;
    hub.settle("web1", 1).await;
    hub.settle("web2", 1).await;
    for _ in 0..3 {
        hub.send("web2", b"READY=1\0STATUS=nul");
    }
    hub.poll_guest("web2", "three NUL drops", SETTLE_TIMEOUT, |g| {
        g["drops"]["embedded_nul"] == 3
    })
    .await;
    scrape_until(&hub, r#"notifyhub_drops_total{reason="embedded_nul"}"#, 3.0).await;
    let log = hub.log_text();
    let phase_lines = log.lines().filter(|l| l.contains("phase changed")).count();
    assert_eq!(phase_lines, 2, "live phase changes are logged:\n{log}");
    let drop_lines: Vec<_> = log
        .lines()
        .filter(|l| l.contains("messages dropped"))
        .collect();
    // The first drop is logged; the next two, within the interval, are not.
    assert_eq!(drop_lines.len(), 1, "{log}");
    assert!(
        drop_lines[0].contains("WARN")
            && drop_lines[0].contains("web2")
            && drop_lines[0].contains("embedded_nul"),
        "{}",
        drop_lines[0]
    );
    hub.shutdown().await;

    let hub = Hub::start_with_args(&["web1", "web2"], &args).await;
    Scrape::of(&hub).await.assert(&[
        (r#"notifyhub_messages_total{transport="unix"}"#, 0.0),
        (r#"notifyhub_drops_total{reason="embedded_nul"}"#, 0.0),
        (r#"notifyhub_guests{phase="ready"}"#, 1.0),
        (r#"notifyhub_guests{phase="booting"}"#, 1.0),
        (r#"notifyhub_guests{phase="registered"}"#, 0.0),
        ("notifyhub_registered_guests", 2.0),
    ]);
    assert!(Scrape::of(&hub).await.get("notifyhub_history_bytes") > 0.0);
    assert_eq!(hub.guest("web2").await["drops"]["embedded_nul"], 3);

    systemd_notify(&hub, "web1", &["--status=still serving"]).await;
    hub.settle("web1", 2).await;
    Scrape::of(&hub).await.assert(&[
        (r#"notifyhub_messages_total{transport="unix"}"#, 1.0),
        (r#"notifyhub_drops_total{reason="embedded_nul"}"#, 0.0),
    ]);
    let log = hub.log_text();
    assert!(log.contains("journal replayed"), "{log}");
    assert!(
        !log.contains("phase changed") && !log.contains("messages dropped"),
        "replayed inputs are logged as news:\n{log}"
    );
    hub.shutdown().await;
}
