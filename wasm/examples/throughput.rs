//! Native side of `wasm/bench/throughput.sh`: replays FILE through `LogReader` in 1 MiB chunks
//! and prints `{"bytes": N, "secs": S, "json_len": L}` (the fold plus `to_json`, as in wasm;
//! `json_len` is in UTF-8 bytes and must agree across the three).
use std::io::Read;

fn main() {
    let path = std::env::args().nth(1).expect("usage: throughput FILE");
    let mut file = std::fs::File::open(&path).expect("open FILE");
    let mut buf = vec![0u8; 1 << 20];
    let start = std::time::Instant::now();
    let mut reader = notifyhub_wasm::LogReader::new("bench");
    let mut bytes = 0usize;
    loop {
        let n = file.read(&mut buf).expect("read FILE");
        if n == 0 {
            break;
        }
        bytes += n;
        reader.push(&buf[..n]);
    }
    let json = reader.finish().to_json();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"bytes\": {bytes}, \"secs\": {secs}, \"json_len\": {}}}",
        json.len()
    );
}
