//! Parser throughput against the physical floor: splitting the same bytes into lines with
//! `memchr`, measured in the same run (issue 8: target ≥ 0.8 of the baseline).
//!
//! `cargo bench -p notifyhub-core --bench parse` prints one row per input set;
//! `-- --smoke` runs each for a moment only, to check that the bench still works (CI).
//! Wall clock is noisy on a shared machine; instruction counts are not:
//! `valgrind --tool=callgrind target/release/deps/parse-HASH --iterations 200 captured` (or
//! `synthetic`), then the ratio of the inclusive counts of `split_lines` and `parse_all`
//! (`callgrind_annotate --inclusive=yes`).

use std::hint::black_box;
use std::time::{Duration, Instant};

/// Every datagram of the captured vectors (`../shared/vectors/*.jsonl`).
fn captured() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");
    let mut datagrams = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("../shared/vectors")
        .flatten()
        .collect();
    files.sort_by_key(|e| e.file_name());
    for entry in files {
        if entry.path().extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                datagrams.push(hex::decode(v["hex"].as_str().unwrap()).unwrap());
            }
        }
    }
    datagrams
}

/// Synthetic datagrams: a PID 1 boot's worth of targets, long STATUS lines, many-key messages.
fn synthetic() -> Vec<Vec<u8>> {
    let mut datagrams = Vec::new();
    for i in 0..64 {
        datagrams.push(format!("X_SYSTEMD_UNIT_ACTIVE=unit-{i}.target").into_bytes());
        datagrams.push(format!("STATUS={}", "progress ".repeat(1 + i % 40)).into_bytes());
        datagrams.push(
            format!("READY=1\nSTATUS=Ready.\nMAINPID={i}\nWATCHDOG=1\nX_CUSTOM_{i}=value\nERRNO=0")
                .into_bytes(),
        );
    }
    datagrams.push(vec![b'x'; 4096]);
    datagrams
}

/// The baseline: find every line of every datagram with memchr, as any parser must.
#[inline(never)]
fn split_lines(datagrams: &[Vec<u8>]) -> usize {
    let mut total = 0;
    for datagram in datagrams {
        let mut rest = datagram.as_slice();
        while let Some(end) = memchr::memchr2(b'\n', b'\r', rest) {
            total += end;
            rest = &rest[end + 1..];
        }
        total += rest.len();
    }
    total
}

#[inline(never)]
fn parse_all(datagrams: &[Vec<u8>]) -> usize {
    let mut total = 0;
    for datagram in datagrams {
        if let Ok(message) = notifyhub_core::parse(datagram) {
            // The whole message is used, as `Guest::handle` uses it.
            total += usize::from(black_box(&message).ready) + message.status.map_or(0, str::len);
        }
    }
    total
}

/// Bytes per second of `f` over `datagrams`: the median of `rounds` rounds of `budget` each.
fn throughput(
    datagrams: &[Vec<u8>],
    rounds: usize,
    budget: Duration,
    f: fn(&[Vec<u8>]) -> usize,
) -> f64 {
    let bytes: usize = datagrams.iter().map(Vec::len).sum();
    let mut rates: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            let mut iterations = 0u64;
            while start.elapsed() < budget {
                black_box(f(black_box(datagrams)));
                iterations += 1;
            }
            (bytes as f64 * iterations as f64) / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Runs both functions `iterations` times over one input set and nothing else: for
/// `valgrind --tool=callgrind`, whose instruction counts per function (`split_lines`,
/// `parse_all`) are stable on a noisy machine.
fn fixed_iterations(datagrams: &[Vec<u8>], iterations: usize) {
    for _ in 0..iterations {
        black_box(split_lines(black_box(datagrams)));
        black_box(parse_all(black_box(datagrams)));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(n) = args.iter().position(|a| a == "--iterations") {
        let iterations = args.get(n + 1).and_then(|n| n.parse().ok());
        let datagrams = match args.get(n + 2).map(String::as_str) {
            Some("captured") => captured(),
            Some("synthetic") => synthetic(),
            _ => panic!("usage: parse --iterations N captured|synthetic"),
        };
        fixed_iterations(&datagrams, iterations.expect("--iterations N"));
        return;
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    let (rounds, budget) = if smoke {
        (1, Duration::from_millis(20))
    } else {
        (9, Duration::from_millis(300))
    };
    println!(
        "{:<12} {:>14} {:>14} {:>8}",
        "input", "memchr MB/s", "parse MB/s", "ratio"
    );
    for (name, datagrams) in [("captured", captured()), ("synthetic", synthetic())] {
        // Interleave so that both see the same machine noise.
        let baseline = throughput(&datagrams, rounds, budget, split_lines);
        let parsed = throughput(&datagrams, rounds, budget, parse_all);
        println!(
            "{name:<12} {:>14.0} {:>14.0} {:>8.2}",
            baseline / 1e6,
            parsed / 1e6,
            parsed / baseline
        );
    }
}
