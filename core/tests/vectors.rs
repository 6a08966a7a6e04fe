//! Replays of the datagrams captured from real senders (`../shared/vectors/`) through the state
//! machine on a simulated clock. Every vector file is replayed here.

mod common;

use std::collections::BTreeSet;

use common::{T0, load, replay, vectors_dir};
use notifyhub_core::{Event, Guest, Phase, Snapshot};

const MACHINE_ID: &str = "5e1f0b7a2c3d4e5f60718293a4b5c6d7";

/// Replays a whole file; returns the final snapshot and the phases entered, in order.
fn run(name: &str) -> (Snapshot, Vec<Phase>) {
    let mut guest = Guest::new(name, T0);
    let mut phases = Vec::new();
    for datagram in load(name) {
        let now = T0.saturating_add_micros(datagram.t_us);
        guest
            .handle_datagram(now, datagram.sender, &datagram.bytes)
            .unwrap();
        while let Some(event) = guest.poll_event() {
            if let Event::PhaseChanged { to, .. } = event {
                phases.push(to);
            }
        }
    }
    (guest.snapshot(), phases)
}

fn units(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The systemd 257 boots: one row per capture, `(file, verb, reboot parameter, phases)`.
#[test]
fn systemd257_boots_end_off_with_the_right_verb() {
    use Phase::*;
    let table: &[(&str, &str, Option<&str>, &[Phase])] = &[
        (
            "systemd257-boot-reboot-arg",
            "reboot",
            Some("probe-arg"),
            &[Booting, Ready, Stopping, Off],
        ),
        (
            "systemd257-poweroff",
            "poweroff",
            None,
            &[Booting, Ready, Stopping, Off],
        ),
        (
            "systemd257-halt",
            "halt",
            None,
            &[Booting, Ready, Stopping, Off],
        ),
        (
            "systemd257-multi-user-unit",
            "poweroff",
            None,
            &[Booting, Ready, Stopping, Off],
        ),
        (
            "systemd257-sig-rtmin4-poweroff",
            "poweroff",
            None,
            &[Booting, Ready, Stopping, Off],
        ),
        // SIGRTMIN+14: immediate poweroff, only the final datagram arrives after the boot.
        (
            "systemd257-sig-rtmin14-immediate-poweroff",
            "poweroff",
            None,
            &[Booting, Ready, Off],
        ),
        (
            "systemd257-reload-reexec",
            "poweroff",
            None,
            &[
                Booting, Ready, Reloading, Ready, Reloading, Ready, Stopping, Off,
            ],
        ),
        (
            "systemd257-emergency-target",
            "poweroff",
            None,
            &[Booting, Ready, Failed, Stopping, Off],
        ),
    ];
    for &(file, verb, parameter, phases) in table {
        let (snapshot, seen) = run(file);
        assert_eq!(seen, phases, "{file}: phases");
        assert_eq!(snapshot.phase, Phase::Off, "{file}");
        let shutdown = snapshot.shutdown.as_ref().expect("a shutdown");
        assert_eq!(shutdown.verb, verb, "{file}");
        assert_eq!(shutdown.reboot_parameter.as_deref(), parameter, "{file}");
        assert_eq!(snapshot.exit_status, Some(0), "{file}");
        assert_eq!(snapshot.hostname.as_deref(), Some("probe-guest"), "{file}");
        assert_eq!(snapshot.machine_id.as_deref(), Some(MACHINE_ID), "{file}");
        assert_eq!(snapshot.signals_level, Some(2), "{file}");
        assert_eq!(
            snapshot.boot_count, 1,
            "{file}: a reload or reexec is not a new boot"
        );
        assert_eq!(snapshot.failed_boot, file.contains("emergency"), "{file}");
        assert_eq!(snapshot.messages, load(file).len() as u64, "{file}");
        assert_eq!(snapshot.drops.total(), 0, "{file}");
    }
}

#[test]
fn reboot_with_argument_is_ready_with_ssh_access_after_boot() {
    let datagrams = load("systemd257-boot-reboot-arg");
    let ready_at = datagrams
        .iter()
        .position(|d| d.bytes == b"READY=1\nSTATUS=Ready.")
        .expect("a READY=1");
    let mut guest = Guest::new("g", T0);
    let mut snapshots = Vec::new();
    replay(&mut guest, &datagrams[..=ready_at + 1], |_, s| {
        snapshots.push(s.clone())
    });
    let booted = snapshots.last().unwrap();
    assert_eq!(booted.phase, Phase::Ready);
    assert_eq!(booted.status.as_deref(), Some("Ready."));
    assert!(booted.is_active("ssh-access.target"));
    assert!(booted.is_active("multi-user.target"));
    assert!(booted.is_booted());
    // ssh-access.target became active while still booting, before READY=1.
    let ssh_first = snapshots
        .iter()
        .position(|s| s.is_active("ssh-access.target"))
        .unwrap();
    assert_eq!(snapshots[ssh_first].phase, Phase::Booting);
    // After shutdown the targets left are the shutdown ones; their order varies, so compare sets.
    replay(&mut guest, &datagrams[ready_at + 2..], |_, _| {});
    let off = guest.snapshot();
    assert_eq!(
        off.active_units.iter().cloned().collect::<BTreeSet<_>>(),
        units(&[
            "final.target",
            "reboot.target",
            "shutdown.target",
            "umount.target"
        ])
    );
}

#[test]
fn emergency_target_fails_the_boot_and_stays_failed_after_off() {
    let datagrams = load("systemd257-emergency-target");
    let mut guest = Guest::new("g", T0);
    let mut after = Vec::new();
    replay(&mut guest, &datagrams, |d, s| {
        after.push((d.bytes.clone(), s.clone()))
    });
    let (_, failed) = after
        .iter()
        .find(|(bytes, _)| bytes == b"X_SYSTEMD_UNIT_ACTIVE=emergency.target")
        .unwrap();
    assert_eq!(failed.phase, Phase::Failed);
    assert!(failed.failed_boot);
    assert!(!failed.is_booted());
    // emergency.target going inactive on the way down does not make the boot good again.
    let (_, leaving) = after
        .iter()
        .find(|(bytes, _)| bytes == b"X_SYSTEMD_UNIT_INACTIVE=emergency.target")
        .unwrap();
    assert_eq!(leaving.phase, Phase::Failed);
    let last = &after.last().unwrap().1;
    assert_eq!((last.phase, last.failed_boot), (Phase::Off, true));
}

#[test]
fn reload_and_reexec_repeat_ready_without_a_new_boot() {
    let datagrams = load("systemd257-reload-reexec");
    let mut guest = Guest::new("g", T0);
    let mut after = Vec::new();
    replay(&mut guest, &datagrams, |d, s| {
        after.push((d.bytes.clone(), s.clone()))
    });
    let reloads: Vec<usize> = after
        .iter()
        .enumerate()
        .filter(|(_, (bytes, _))| bytes.starts_with(b"RELOADING=1"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(reloads.len(), 2, "daemon-reload and daemon-reexec");
    for i in reloads {
        assert_eq!(after[i].1.phase, Phase::Reloading);
        let next_ready = (i..after.len())
            .find(|&j| after[j].0.starts_with(b"READY=1"))
            .unwrap();
        assert_eq!(after[next_ready].1.phase, Phase::Ready);
        assert_eq!(after[next_ready].1.boot_count, 1);
    }
}

/// `(file, phase, status, main_pid, errno, exit_status)` after each systemd-notify capture.
#[test]
fn systemd_notify_captures() {
    type Row = (
        &'static str,
        Phase,
        Option<&'static str>,
        Option<u32>,
        Option<u16>,
        Option<u8>,
    );
    let table: &[Row] = &[
        // STOPPING=1, then RELOADING=1 and READY=1: nothing revives a stopping service.
        (
            "systemd-notify252",
            Phase::Stopping,
            Some("x"),
            Some(4242),
            Some(5),
            None,
        ),
        (
            "systemd-notify252-abstract",
            Phase::Ready,
            Some("abs2"),
            None,
            None,
            None,
        ),
        // STOPPING=1, then READY=1: still stopping.
        (
            "systemd-notify257",
            Phase::Stopping,
            Some("x"),
            Some(3741),
            Some(38),
            Some(1),
        ),
        // RELOADING=1 and READY=1 in one message: READY=1 wins.
        (
            "systemd-notify257-live-pid",
            Phase::Ready,
            Some("starting"),
            Some(4597),
            None,
            None,
        ),
    ];
    for &(file, phase, status, main_pid, errno, exit_status) in table {
        let (snapshot, _) = run(file);
        assert_eq!(snapshot.phase, phase, "{file}");
        assert_eq!(snapshot.status.as_deref(), status, "{file}");
        assert_eq!(snapshot.main_pid, main_pid, "{file}");
        assert_eq!(snapshot.errno, errno, "{file}");
        assert_eq!(snapshot.exit_status, exit_status, "{file}");
        assert_eq!(snapshot.boot_count, 1, "{file}");
        assert_eq!(snapshot.messages, load(file).len() as u64, "{file}");
    }
}

#[test]
fn every_vector_file_is_covered() {
    let mut files: Vec<String> = std::fs::read_dir(vectors_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".jsonl").map(str::to_string))
        .collect();
    files.sort();
    let covered = [
        "systemd-notify252",
        "systemd-notify252-abstract",
        "systemd-notify257",
        "systemd-notify257-live-pid",
        "systemd257-boot-reboot-arg",
        "systemd257-emergency-target",
        "systemd257-halt",
        "systemd257-multi-user-unit",
        "systemd257-poweroff",
        "systemd257-reload-reexec",
        "systemd257-sig-rtmin14-immediate-poweroff",
        "systemd257-sig-rtmin4-poweroff",
    ];
    assert_eq!(files, covered, "a new vector file needs a replay test");
}
