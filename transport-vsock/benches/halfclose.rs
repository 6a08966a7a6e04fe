//! Half-close latency over a `HybridListener`: from the guest's `shutdown(Write)` to the guest
//! seeing EOF (the hub's close), which is how long systemd's PID 1 blocks per message.
//!
//! Baseline, measured in the same run: a bare `UnixStream` server that closes as soon as it
//! reads EOF (the physical floor). Then the idle path: a guest that never half-closes (a bridge
//! that loses `SHUT_WR`), closed by the idle timeout.
//!
//! `cargo bench -p notifyhub-transport-vsock --bench halfclose [-- --smoke]`

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notifyhub_transport_vsock::{End, HybridListener, ListenerConfig, Received};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const PAYLOAD: &[u8] = b"X_SYSTEMD_UNIT_ACTIVE=multi-user.target";

/// One guest message: connect, write, then (if `half_close`) `shutdown(Write)`; returns the
/// time from the shutdown (or the write) to EOF.
async fn one(path: &Path, half_close: bool) -> io::Result<Duration> {
    let mut conn = UnixStream::connect(path).await?;
    conn.write_all(PAYLOAD).await?;
    let start = Instant::now();
    if half_close {
        conn.shutdown().await?;
    }
    let mut buf = [0u8; 16];
    let n = conn.read(&mut buf).await?;
    let took = start.elapsed();
    assert_eq!(n, 0, "the server wrote back");
    Ok(took)
}

async fn series(path: &Path, n: usize, half_close: bool) -> io::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(one(path, half_close).await?);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    median: f64,
    p99: f64,
    max: f64,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        us(samples[i])
    };
    Stats {
        median: at(0.5),
        p99: at(0.99),
        max: us(*samples.last().expect("samples")),
    }
}

fn print(label: &str, s: Stats) {
    println!(
        "{label:<40} median {:>9.1} µs   p99 {:>9.1} µs   max {:>9.1} µs",
        s.median, s.p99, s.max
    );
}

/// The floor: accept, read to EOF, close. No limits, no timers, no channel.
async fn bare_server(listener: UnixListener, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut conn, _)) = accepted else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 4097];
            while let Ok(n) = conn.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
    }
}

async fn bench(n: usize) -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let cancel = CancellationToken::new();

    // Baseline.
    let bare_path: PathBuf = dir.path().join("bare.sock");
    let bare = UnixListener::bind(&bare_path)?;
    let bare_task = tokio::spawn(bare_server(bare, cancel.clone()));

    // The hub's hybrid listener, default config (idle 20 ms), events drained and checked.
    let config = ListenerConfig::default();
    let listener = HybridListener::bind(&dir.path().join("vm.vsock"), 9999, 3)?;
    let hub_path = listener.path().to_path_buf();
    let (tx, mut rx) = mpsc::channel(64);
    let hub_task = tokio::spawn(listener.run(config, tx, cancel.clone()));
    let drain = tokio::spawn(async move {
        let (mut eof, mut idle) = (0usize, 0usize);
        while let Some(event) = rx.recv().await {
            match event.received {
                Received::Message { payload, end } if payload == PAYLOAD => match end {
                    End::Eof => eof += 1,
                    _ => idle += 1,
                },
                other => panic!("unexpected event: {other:?}"),
            }
        }
        (eof, idle)
    });

    // Warm up both paths.
    series(&bare_path, n.min(100), true).await?;
    series(&hub_path, n.min(100), true).await?;

    // Interleave in blocks so drift (CPU frequency, other load) hits both alike.
    let blocks = 10.min(n);
    let (mut base, mut hub) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for b in 0..blocks {
        let k = n / blocks + usize::from(b < n % blocks);
        base.extend(series(&bare_path, k, true).await?);
        hub.extend(series(&hub_path, k, true).await?);
    }
    let idle = series(&hub_path, n, false).await?;

    cancel.cancel();
    bare_task.await.expect("bare server");
    hub_task.await.expect("hub task")?;
    let (eofs, idles) = drain.await.expect("drain");
    assert_eq!(
        eofs,
        n.min(100) + n,
        "every half-closed message delivered with End::Eof"
    );
    assert_eq!(
        idles, n,
        "every never-half-closed message delivered with End::Idle"
    );

    let (base, hub, idle) = (stats(base), stats(hub), stats(idle));
    println!(
        "halfclose: N = {n} sequential messages of {} bytes",
        PAYLOAD.len()
    );
    print("baseline: bare UnixStream, close on EOF", base);
    print("HybridListener: shutdown(Write) -> EOF", hub);
    println!(
        "{:<40} median {:>9.2}x   p99 {:>9.2}x",
        "ratio hub / baseline",
        hub.median / base.median,
        hub.p99 / base.p99
    );
    print("HybridListener: no half-close -> EOF", idle);
    println!(
        "{:<40} median {:>9.2}x of idle_timeout {:?}",
        "idle path",
        idle.median / (config.idle_timeout.as_secs_f64() * 1e6),
        config.idle_timeout
    );
    Ok(())
}

fn main() -> io::Result<()> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let n = if smoke { 50 } else { 2000 };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(n))
}
