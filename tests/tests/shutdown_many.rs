//! Shutdown with many guests stays quick: SIGTERM to exit with 2,000 registered guests (each with
//! its socket and receive loop, the journal on) within [`SHUTDOWN_TIMEOUT`] (10 s; it takes
//! about 0.2 s on a 2-core machine, and about a second with 10,000 guests). That the sockets and
//! directories go is `web/tests/shutdown.rs`'s to check.

use std::time::Instant;

use notifyhub_tests::{Hub, SHUTDOWN_TIMEOUT, pipe, pipe_closed_within};
use rustix::fd::AsFd as _;

const GUESTS: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_two_thousand_guests_exits_promptly_and_cleans_up() {
    let names: Vec<String> = (0..GUESTS).map(|i| format!("g{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let hub = Hub::start_with_args(&names, &["--rate-limit", "0"]).await;
    // Every receive loop is live: a barrier on the first, the middle and the last guest is
    // released only once its message was stored and applied.
    for name in [names[0], names[GUESTS / 2], names[GUESTS - 1]] {
        let (read, write) = pipe();
        notifyhub_tests::send_datagram(&hub.socket(name), b"READY=1", &[write.as_fd()])
            .expect("send");
        drop(write);
        assert!(
            pipe_closed_within(&read, SHUTDOWN_TIMEOUT),
            "guest {name}'s barrier was not released"
        );
        assert_eq!(hub.guest(name).await["phase"], "ready");
    }
    let guests_dir = hub.run_dir().join("guests");
    assert_eq!(std::fs::read_dir(&guests_dir).unwrap().count(), GUESTS);
    assert_eq!(
        hub.get_json("/api/v1/guests").await.1["guests"]
            .as_array()
            .unwrap()
            .len(),
        GUESTS
    );

    let started = Instant::now();
    // Asserts exit status 0 within SHUTDOWN_TIMEOUT.
    hub.shutdown().await;
    println!(
        "SIGTERM to exit with {GUESTS} guests: {:.2} s",
        started.elapsed().as_secs_f64()
    );
}
