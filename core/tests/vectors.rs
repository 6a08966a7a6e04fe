//! Replays of the datagrams captured from real senders (`../shared/vectors/`) through the state
//! machine on a simulated clock. Every vector file is replayed here.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{T0, load, own_vectors, replay, shared_vectors, vector_files};
use notifyhub_core::{Event, Guest, Phase, Snapshot, Timestamp, WaitCondition};

const MACHINE_ID: &str = "5e1f0b7a2c3d4e5f60718293a4b5c6d7";

/// Replays a whole file of `dir`; returns the final snapshot and the phases entered, in order.
fn run(dir: &Path, name: &str) -> (Snapshot, Vec<Phase>) {
    let mut guest = Guest::new(name, T0);
    let mut phases = Vec::new();
    for datagram in load(dir, name) {
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
        let (snapshot, seen) = run(&shared_vectors(), file);
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
        assert_eq!(
            snapshot.messages,
            load(&shared_vectors(), file).len() as u64,
            "{file}"
        );
        assert_eq!(snapshot.drops.total(), 0, "{file}");
    }
}

#[test]
fn reboot_with_argument_is_ready_with_ssh_access_after_boot() {
    let datagrams = load(&shared_vectors(), "systemd257-boot-reboot-arg");
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
    let datagrams = load(&shared_vectors(), "systemd257-emergency-target");
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
    let datagrams = load(&shared_vectors(), "systemd257-reload-reexec");
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
        let (snapshot, _) = run(&shared_vectors(), file);
        assert_eq!(snapshot.phase, phase, "{file}");
        assert_eq!(snapshot.status.as_deref(), status, "{file}");
        assert_eq!(snapshot.main_pid, main_pid, "{file}");
        assert_eq!(snapshot.errno, errno, "{file}");
        assert_eq!(snapshot.exit_status, exit_status, "{file}");
        assert_eq!(snapshot.boot_count, 1, "{file}");
        assert_eq!(
            snapshot.messages,
            load(&shared_vectors(), file).len() as u64,
            "{file}"
        );
    }
}

#[test]
fn every_vector_file_is_covered() {
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
    assert_eq!(
        vector_files(&shared_vectors()),
        covered,
        "a new vector file in ../shared/vectors needs a replay test"
    );
    let mut own: Vec<&str> = OWN_CAPTURES.iter().map(|row| row.0).collect();
    own.sort_unstable();
    assert_eq!(
        vector_files(&own_vectors()),
        own,
        "every file in tests/vectors needs a row in OWN_CAPTURES"
    );
}

/// One of the project's own captures (`tests/vectors/`, see its README): `(file, phases entered,
/// boot_count, shutdown verb, exit_status, failed_boot)` after replaying it whole.
type OwnRow = (
    &'static str,
    &'static [Phase],
    u32,
    Option<&'static str>,
    Option<u8>,
    bool,
);

const OWN_CAPTURES: &[OwnRow] = {
    use Phase::*;
    &[
        // soft-reboot: shutdown.target, soft-reboot.target, then the same PID 1 boots again
        // without X_SYSTEMD_SHUTDOWN; the capture ends with a poweroff of the second boot.
        (
            "systemd257-soft-reboot",
            &[Booting, Ready, Stopping, Booting, Ready, Stopping, Off],
            2,
            Some("poweroff"),
            Some(0),
            false,
        ),
        (
            "systemd257-kexec",
            &[Booting, Ready, Stopping, Off],
            1,
            Some("kexec"),
            Some(0),
            false,
        ),
        (
            "systemd257-exit-3",
            &[Booting, Ready, Stopping, Off],
            1,
            Some("exit"),
            Some(3),
            false,
        ),
        // rescue.target becomes active before READY=1: failed without passing through ready.
        (
            "systemd257-rescue-target",
            &[Booting, Failed, Stopping, Off],
            1,
            Some("poweroff"),
            Some(0),
            true,
        ),
        // SIGKILL to PID 1: no final message. Nothing tells the hub; the phase stays where it
        // was and the exit status is unknown (None), not 0.
        (
            "systemd257-sigkill",
            &[Booting, Ready],
            1,
            None,
            None,
            false,
        ),
        // A start job that never ends (`systemd.run=/bin/sleep infinity`): no READY=1, only
        // STATUS= progress text; then `real-systemd-guest stop`, again without a final message.
        ("systemd257-never-ready", &[Booting], 1, None, None, false),
    ]
};

#[test]
fn own_captures_enter_the_expected_phases() {
    for &(file, phases, boots, verb, exit_status, failed) in OWN_CAPTURES {
        let (snapshot, seen) = run(&own_vectors(), file);
        assert_eq!(seen, phases, "{file}: phases");
        assert_eq!(snapshot.phase, *phases.last().unwrap(), "{file}");
        assert_eq!(snapshot.boot_count, boots, "{file}: boot_count");
        assert_eq!(
            snapshot.shutdown.as_ref().map(|s| s.verb.as_str()),
            verb,
            "{file}: verb"
        );
        assert_eq!(snapshot.exit_status, exit_status, "{file}: exit_status");
        assert_eq!(snapshot.failed_boot, failed, "{file}: failed_boot");
        assert_eq!(snapshot.hostname.as_deref(), Some("probe-guest"), "{file}");
        assert_eq!(snapshot.machine_id.as_deref(), Some(MACHINE_ID), "{file}");
        assert_eq!(
            snapshot.messages,
            load(&own_vectors(), file).len() as u64,
            "{file}"
        );
        assert_eq!(snapshot.drops.total(), 0, "{file}");
    }
}

#[test]
fn soft_reboot_is_one_new_boot_and_never_ready_before_its_ready() {
    let datagrams = load(&own_vectors(), "systemd257-soft-reboot");
    let position = |bytes: &[u8], from: usize| {
        from + datagrams[from..]
            .iter()
            .position(|d| d.bytes == bytes)
            .unwrap_or_else(|| panic!("{:?} after {from}", String::from_utf8_lossy(bytes)))
    };
    let soft = position(b"X_SYSTEMD_UNIT_ACTIVE=soft-reboot.target", 0);
    let second_ready = position(b"READY=1\nSTATUS=Ready.", soft);
    // What systemd 257 sends between the two: RELOADING=1, then PID 1's hostname and machine
    // ID again, and the old boot's shutdown targets going inactive.
    let between: Vec<&[u8]> = datagrams[soft + 1..second_ready]
        .iter()
        .map(|d| d.bytes.as_slice())
        .collect();
    assert!(between[0].starts_with(b"RELOADING=1\nMONOTONIC_USEC="));
    assert!(between.contains(&b"X_SYSTEMD_HOSTNAME=probe-guest".as_slice()));
    assert!(between.contains(&b"X_SYSTEMD_UNIT_INACTIVE=shutdown.target".as_slice()));

    let mut guest = Guest::new("g", T0);
    let mut boots = Vec::new();
    for (i, datagram) in datagrams.iter().enumerate() {
        let now = T0.saturating_add_micros(datagram.t_us);
        guest
            .handle_datagram(now, datagram.sender, &datagram.bytes)
            .unwrap();
        while let Some(event) = guest.poll_event() {
            if let Event::BootStarted { number } = event {
                boots.push((i, number));
            }
        }
        let snapshot = guest.snapshot();
        if (soft..second_ready).contains(&i) {
            assert_eq!(snapshot.boot_count, 2, "seq {}", datagram.seq);
            assert_eq!(snapshot.phase, Phase::Booting, "seq {}", datagram.seq);
            assert!(
                !WaitCondition::Ready.holds(&snapshot),
                "a ready waiter is met at seq {} before the new boot's READY=1",
                datagram.seq
            );
            // The old boot's targets are gone; its late UNIT_INACTIVE= lines change nothing.
            assert!(
                !snapshot.is_active("shutdown.target"),
                "seq {}",
                datagram.seq
            );
            assert!(
                !snapshot.is_active("soft-reboot.target"),
                "seq {}",
                datagram.seq
            );
        }
        if i == second_ready + 1 {
            assert!(snapshot.is_booted(), "{snapshot:#?}");
        }
    }
    // The hostname sent again inside the new boot is not a third boot.
    assert_eq!(boots, [(0, 1), (soft, 2)]);
}

#[test]
fn a_guest_killed_without_a_final_message_stays_where_it_was() {
    let datagrams = load(&own_vectors(), "systemd257-sigkill");
    let mut guest = Guest::new("g", T0);
    replay(&mut guest, &datagrams, |_, _| {});
    let killed = guest.snapshot();
    assert_eq!(killed.phase, Phase::Ready);
    assert!(killed.is_booted(), "nothing in the protocol says it died");
    assert_eq!((killed.exit_status, killed.shutdown.as_ref()), (None, None));
    // Booted again, the same messages start boot 2 (its hostname arrives a second time); the
    // lost boot's exit status stays unknown.
    let later = datagrams.last().unwrap().t_us + 1_000_000;
    let again: Vec<_> = datagrams
        .iter()
        .map(|d| common::Captured {
            t_us: d.t_us + later,
            ..d.clone()
        })
        .collect();
    replay(&mut guest, &again, |_, _| {});
    let snapshot = guest.snapshot();
    assert_eq!((snapshot.boot_count, snapshot.phase), (2, Phase::Ready));
    assert_eq!(snapshot.exit_status, None);
}

#[test]
fn a_guest_that_never_becomes_ready_times_out_once_with_its_status() {
    let datagrams = load(&own_vectors(), "systemd257-never-ready");
    let mut guest = Guest::new("g", T0);
    guest.set_ready_timeout(Some(1_000_000));
    let mut events = Vec::new();
    // Drives deadlines as the hub does: due ones fire before the next datagram is taken.
    for datagram in &datagrams {
        let now = T0.saturating_add_micros(datagram.t_us);
        if let Some(deadline) = guest.poll_timeout().filter(|&d| d <= now) {
            guest.handle_timeout(deadline);
            events.extend(std::iter::from_fn(|| guest.poll_event()));
        }
        guest
            .handle_datagram(now, datagram.sender, &datagram.bytes)
            .unwrap();
        events.extend(std::iter::from_fn(|| guest.poll_event()));
    }
    let deadline = T0.saturating_add_micros(1_000_000);
    let timed_out: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::ReadyTimedOut { .. }))
        .collect();
    assert_eq!(timed_out, [&Event::ReadyTimedOut { deadline }]);
    let snapshot = guest.snapshot();
    assert_eq!(snapshot.phase, Phase::Booting);
    assert!(snapshot.ready_timed_out);
    assert_eq!(snapshot.ready_deadline, Some(deadline));
    assert_eq!(guest.poll_timeout(), None, "nothing more pending");
    assert_eq!(
        snapshot.status.as_deref(),
        Some("User job kernel-command-line.service/start running (4s / no limit)...")
    );
    // PID 1 repeats each STATUS= twice (every 0.5 s); only changes are events.
    let statuses = events
        .iter()
        .filter(|e| matches!(e, Event::StatusChanged { .. }))
        .count();
    let sent = datagrams
        .iter()
        .filter(|d| d.bytes.starts_with(b"STATUS="))
        .count();
    assert_eq!((statuses, sent), (3, 6));
    assert!(snapshot.last_seen > Some(Timestamp::from_micros(0)));
}
