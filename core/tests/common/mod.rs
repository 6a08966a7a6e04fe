//! Reading captured vectors (see `../shared/vectors/README.md` for the format): the shared ones
//! in `../shared/vectors/` and the project's own in `tests/vectors/`, in the same format.

use std::path::{Path, PathBuf};

use notifyhub_core::{Credentials, Guest, Sender, Snapshot, Timestamp};

/// One captured datagram.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    pub(crate) seq: u64,
    /// µs since the capture's first datagram.
    pub(crate) t_us: u64,
    pub(crate) sender: Sender,
    pub(crate) bytes: Vec<u8>,
}

/// `../shared/vectors/`: captured by the lead, read-only.
pub(crate) fn shared_vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors")
}

/// `tests/vectors/`: the project's own captures (`tests/src/bin/capture.rs`).
pub(crate) fn own_vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors")
}

/// The names (without `.jsonl`) of the vector files in `dir`, sorted.
pub(crate) fn vector_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".jsonl").map(str::to_string))
        .collect();
    files.sort();
    files
}

/// Every datagram of `<dir>/<name>.jsonl`, in order.
pub(crate) fn load(dir: &Path, name: &str) -> Vec<Captured> {
    let path = dir.join(format!("{name}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let num = |key: &str| v[key].as_u64();
            let sender = match (num("pid"), num("uid"), num("gid")) {
                (Some(pid), Some(uid), Some(gid)) => Sender::Unix {
                    credentials: Some(Credentials {
                        pid: pid as u32,
                        uid: uid as u32,
                        gid: gid as u32,
                    }),
                },
                _ => Sender::Unknown,
            };
            let bytes = hex::decode(v["hex"].as_str().expect("hex")).expect("valid hex");
            assert_eq!(
                Some(bytes.len() as u64),
                num("len"),
                "len of seq {}",
                v["seq"]
            );
            Captured {
                seq: num("seq").expect("seq"),
                t_us: (v["t_ms"].as_f64().expect("t_ms") * 1000.0).round() as u64,
                sender,
                bytes,
            }
        })
        .collect()
}

/// The start of every replay's simulated clock: 2026-11-29T00:00:00Z.
pub(crate) const T0: Timestamp = Timestamp::from_micros(1_796_083_200_000_000);

/// Feeds `datagrams` to `guest` on a simulated clock starting at [`T0`], calling `after` with
/// each datagram and the snapshot after it.
pub(crate) fn replay(
    guest: &mut Guest,
    datagrams: &[Captured],
    mut after: impl FnMut(&Captured, &Snapshot),
) {
    for datagram in datagrams {
        let now = T0.saturating_add_micros(datagram.t_us);
        guest
            .handle_datagram(now, datagram.sender, &datagram.bytes)
            .unwrap_or_else(|e| panic!("seq {} rejected: {e}", datagram.seq));
        while guest.poll_event().is_some() {}
        after(datagram, &guest.snapshot());
    }
}
