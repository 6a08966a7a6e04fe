//! A registration that fails leaves nothing behind (README, "Load and limits"): no socket, no
//! `RUN_DIR/guests/NAME` directory, and the same name registers once the cause is gone.
//!
//! The failure is the one a busy hub meets: no file descriptor left (`EMFILE` once the guest's
//! directory is made, `503`). The test lowers the running hub's soft `RLIMIT_NOFILE` to its
//! lowest free descriptor number (`prlimit(2)`), over an HTTP connection opened before.

use std::path::Path;

use notifyhub_tests::Hub;
use reqwest::StatusCode;
use rustix::process::{Pid, Resource, Rlimit, getrlimit, prlimit};

/// The lowest descriptor number process `pid` has free: with its soft `RLIMIT_NOFILE` at that,
/// it can open nothing more (the limit caps the numbers, not the count).
fn lowest_free_fd(pid: u32) -> u64 {
    let taken: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the hub's /proc/PID/fd")
        .map(|entry| {
            entry
                .unwrap()
                .file_name()
                .to_string_lossy()
                .parse()
                .unwrap()
        })
        .collect();
    (0..).find(|fd| !taken.contains(fd)).expect("a free number")
}

/// Sets the soft `RLIMIT_NOFILE` of process `pid` to `soft`, keeping the hard limit: the hub
/// inherited ours and raised its soft limit to it at start.
fn set_soft_nofile(pid: u32, soft: Option<u64>) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("a pid fits")).expect("pid > 0");
    let hard = getrlimit(Resource::Nofile).maximum;
    let limit = Rlimit {
        current: soft,
        maximum: hard,
    };
    prlimit(Some(pid), Resource::Nofile, limit).expect("set the hub's RLIMIT_NOFILE");
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => panic!("read {}: {error}", dir.display()),
    }
}

#[tokio::test]
async fn a_registration_out_of_files_leaves_no_directory() {
    let hub = Hub::start_with_args(&["first"], &["--state-dir", "none"]).await;
    let guests = hub.run_dir().join("guests");
    // The client's connection is open before the limit is lowered, and reused after.
    assert_eq!(hub.get_json("/api/v1/guests").await.0, StatusCode::OK);

    let pid = hub.pid();
    set_soft_nofile(pid, Some(lowest_free_fd(pid)));
    let (status, body) = hub.add_guest("second").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.to_string().contains("RLIMIT_NOFILE"),
        "the answer names the limit: {body}"
    );
    assert_eq!(
        entries(&guests),
        ["first"],
        "the failed registration left something"
    );

    // Once the limit is raised again the same name registers.
    set_soft_nofile(pid, getrlimit(Resource::Nofile).maximum);
    let (status, body) = hub.add_guest("second").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut now = entries(&guests);
    now.sort();
    assert_eq!(now, ["first", "second"]);
    hub.send("second", b"READY=1");
    assert_eq!(hub.settle("second", 1).await["phase"], "ready");
    hub.shutdown().await;
}
