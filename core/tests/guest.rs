//! The state machine's rules on built sequences, on a simulated clock.

use notifyhub_core::{
    DropReason, Drops, Event, Guest, MAX_ACTIVE_UNITS, MAX_PENDING_EVENTS, MAX_TIMELINE, Phase,
    Sender, Timestamp, WaitCondition,
};

/// A guest fed `datagrams` 1 ms apart; returns it with the events drained.
fn fed(datagrams: &[&[u8]]) -> (Guest, Vec<Event>) {
    let mut guest = Guest::new("g", Timestamp::ZERO);
    let mut events = Vec::new();
    feed(&mut guest, datagrams, &mut events);
    (guest, events)
}

fn feed(guest: &mut Guest, datagrams: &[&[u8]], events: &mut Vec<Event>) {
    for datagram in datagrams {
        let now = guest
            .snapshot()
            .last_seen
            .unwrap_or_default()
            .saturating_add_micros(1_000);
        let _ = guest.handle_datagram(now, Sender::Unknown, datagram);
        while let Some(event) = guest.poll_event() {
            events.push(event);
        }
    }
}

fn phases(events: &[Event]) -> Vec<Phase> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PhaseChanged { to, .. } => Some(*to),
            _ => None,
        })
        .collect()
}

const BOOT: &[&[u8]] = &[
    b"X_SYSTEMD_HOSTNAME=probe-guest",
    b"X_SYSTEMD_MACHINE_ID=5e1f0b7a2c3d4e5f60718293a4b5c6d7",
    b"X_SYSTEMD_SIGNALS_LEVEL=2",
    b"X_SYSTEMD_UNIT_ACTIVE=multi-user.target",
    b"READY=1\nSTATUS=Ready.",
];

#[test]
fn registered_until_the_first_message() {
    let guest = Guest::new("g", Timestamp::from_micros(5));
    let snapshot = guest.snapshot();
    assert_eq!(
        (snapshot.phase, snapshot.boot_count),
        (Phase::Registered, 0)
    );
    assert_eq!(snapshot.registered_at, Timestamp::from_micros(5));
    assert_eq!(snapshot.first_seen, None);
    let (guest, events) = fed(&[b"X_SYSTEMD_SIGNALS_LEVEL=2"]);
    assert_eq!(events[0], Event::BootStarted { number: 1 });
    assert_eq!(guest.phase(), Phase::Booting);
}

// service.c: STOPPING=1 beats READY=1, which beats RELOADING=1, within one message.
#[test]
fn flag_precedence_within_one_message() {
    let table: &[(&[u8], Phase)] = &[
        (b"READY=1\nSTOPPING=1", Phase::Stopping),
        (b"RELOADING=1\nREADY=1", Phase::Ready),
        (b"RELOADING=1\nSTOPPING=1\nREADY=1", Phase::Stopping),
        // Alone, before any READY=1: still booting (reloading_counts_only_in_a_ready_boot).
        (b"RELOADING=1", Phase::Booting),
    ];
    for (datagram, phase) in table {
        assert_eq!(
            fed(&[datagram]).0.phase(),
            *phase,
            "{:?}",
            String::from_utf8_lossy(datagram)
        );
    }
}

// ../shared/protocol.md §3: after STOPPING=1 nothing revives the service (final since v259).
#[test]
fn stopping_is_final_for_the_boot() {
    let (guest, _) = fed(&[b"READY=1", b"STOPPING=1", b"READY=1", b"RELOADING=1"]);
    let snapshot = guest.snapshot();
    assert_eq!((snapshot.phase, snapshot.boot_count), (Phase::Stopping, 1));
}

#[test]
fn shutdown_target_means_stopping() {
    let mut datagrams = BOOT.to_vec();
    datagrams.push(b"X_SYSTEMD_UNIT_ACTIVE=shutdown.target");
    assert_eq!(fed(&datagrams).0.phase(), Phase::Stopping);
}

// Soft-reboot: soft-reboot.target becomes active, then the same PID 1 boots again without
// X_SYSTEMD_SHUTDOWN; the boot count grows and the targets start afresh.
#[test]
fn soft_reboot_starts_a_new_boot() {
    let mut datagrams = BOOT.to_vec();
    datagrams.extend_from_slice(&[
        b"X_SYSTEMD_UNIT_INACTIVE=multi-user.target",
        b"X_SYSTEMD_UNIT_ACTIVE=soft-reboot.target",
        b"RELOADING=1\nMONOTONIC_USEC=1",
        b"X_SYSTEMD_UNIT_ACTIVE=sysinit.target",
    ]);
    let (guest, events) = fed(&datagrams);
    let snapshot = guest.snapshot();
    assert_eq!(snapshot.boot_count, 2);
    assert_eq!(snapshot.active_units, ["sysinit.target"]);
    // The RELOADING=1 that follows soft-reboot.target belongs to a boot not yet ready.
    assert_eq!(snapshot.phase, Phase::Booting);
    assert!(!snapshot.ready_seen);
    assert!(events.contains(&Event::BootStarted { number: 2 }));
    datagrams.push(b"READY=1");
    let (guest, _) = fed(&datagrams);
    assert_eq!(
        (guest.phase(), guest.snapshot().boot_count),
        (Phase::Ready, 2)
    );
}

// service.c acts on RELOADING=1 only in SERVICE_RUNNING, i.e. once READY=1 came. systemd 257's
// PID 1 sends RELOADING=1 right after soft-reboot.target, as its next boot begins
// (tests/vectors/systemd257-soft-reboot.jsonl): that boot is booting, not reloading, and a
// `ready` waiter must not be satisfied by it.
#[test]
fn reloading_counts_only_in_a_ready_boot() {
    let (guest, events) = fed(&[
        b"X_SYSTEMD_SIGNALS_LEVEL=2",
        b"RELOADING=1\nMONOTONIC_USEC=1",
    ]);
    let snapshot = guest.snapshot();
    assert_eq!(
        (snapshot.phase, snapshot.ready_seen),
        (Phase::Booting, false)
    );
    assert!(!WaitCondition::Ready.holds(&snapshot));
    assert_eq!(phases(&events), [Phase::Booting]);
    // Once ready, RELOADING=1 is a reload until the next READY=1.
    let (guest, events) = fed(&[
        b"RELOADING=1",
        b"READY=1",
        b"RELOADING=1\nMONOTONIC_USEC=2",
        b"READY=1",
    ]);
    assert_eq!(guest.phase(), Phase::Ready);
    assert_eq!(
        phases(&events),
        [Phase::Booting, Phase::Ready, Phase::Reloading, Phase::Ready]
    );
}

#[test]
fn a_message_after_off_starts_a_new_boot() {
    let mut datagrams = BOOT.to_vec();
    datagrams.push(b"EXIT_STATUS=0\nX_SYSTEMD_SHUTDOWN=reboot");
    datagrams.extend_from_slice(BOOT);
    let (guest, events) = fed(&datagrams);
    let snapshot = guest.snapshot();
    assert_eq!((snapshot.phase, snapshot.boot_count), (Phase::Ready, 2));
    assert_eq!(snapshot.shutdown, None, "the new boot has not ended");
    assert_eq!(snapshot.exit_status, None);
    assert_eq!(
        phases(&events),
        [
            Phase::Booting,
            Phase::Ready,
            Phase::Off,
            Phase::Booting,
            Phase::Ready
        ]
    );
}

// A VM reset gives no final message: PID 1's hostname arriving a second time means a new boot.
#[test]
fn hostname_again_without_shutdown_starts_a_new_boot() {
    let datagrams = [BOOT, BOOT].concat();
    let (guest, _) = fed(&datagrams);
    assert_eq!(guest.snapshot().boot_count, 2);
    // The exit status of the lost boot is unknown, not 0.
    assert_eq!(guest.snapshot().exit_status, None);
}

#[test]
fn status_is_set_replaced_and_cleared() {
    let (guest, events) = fed(&[b"STATUS=one", b"STATUS=one", b"STATUS=two", b"STATUS="]);
    assert_eq!(guest.snapshot().status, None);
    let statuses: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::StatusChanged { status } => Some(status.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [Some("one".into()), Some("two".into()), None]);
}

#[test]
fn invalid_status_leaves_the_status_while_ready_applies() {
    let (guest, _) = fed(&[b"STATUS=kept", b"STATUS=\xff\nREADY=1"]);
    let snapshot = guest.snapshot();
    assert_eq!(
        (snapshot.phase, snapshot.status.as_deref()),
        (Phase::Ready, Some("kept"))
    );
}

#[test]
fn rejected_datagrams_are_counted_and_change_nothing_else() {
    let big = vec![b'x'; 4097];
    let (guest, events) = fed(&[b"READY=1", &big, b"STATUS=a\0b"]);
    let snapshot = guest.snapshot();
    assert_eq!(
        snapshot.drops,
        Drops {
            oversize: 1,
            embedded_nul: 1,
            ..Drops::default()
        }
    );
    assert_eq!((snapshot.messages, snapshot.phase), (1, Phase::Ready));
    assert_eq!(phases(&events), [Phase::Ready]);
}

/// The transports' own drops (a vsock connection that never finished, one closed over the
/// connection limit, a message from an unprivileged source port) are counted apart, and change
/// nothing else.
#[test]
fn transport_drops_are_counted_by_reason() {
    let (mut guest, _) = fed(&[b"READY=1"]);
    for reason in [
        DropReason::Incomplete,
        DropReason::ConnectionLimit,
        DropReason::ConnectionLimit,
        DropReason::Unprivileged,
    ] {
        guest.record_drop(reason);
    }
    let snapshot = guest.snapshot();
    assert_eq!(
        snapshot.drops,
        Drops {
            incomplete: 1,
            connection_limit: 2,
            unprivileged: 1,
            ..Drops::default()
        }
    );
    assert_eq!(snapshot.drops.total(), 4);
    assert_eq!((snapshot.messages, snapshot.phase), (1, Phase::Ready));
    assert!(guest.poll_event().is_none(), "a drop is not an event");
}

#[test]
fn active_units_are_bounded() {
    let names: Vec<String> = (0..MAX_ACTIVE_UNITS + 10)
        .map(|i| format!("X_SYSTEMD_UNIT_ACTIVE=u{i}.target"))
        .collect();
    let datagrams: Vec<&[u8]> = names.iter().map(|s| s.as_bytes()).collect();
    let (guest, _) = fed(&datagrams);
    let snapshot = guest.snapshot();
    assert_eq!(snapshot.active_units.len(), MAX_ACTIVE_UNITS);
    assert_eq!(snapshot.drops.units_over_limit, 10);
    assert!(
        snapshot.active_units.windows(2).all(|w| w[0] < w[1]),
        "sorted"
    );
}

#[test]
fn timeline_and_pending_events_are_bounded() {
    let names: Vec<String> = (0..2 * MAX_PENDING_EVENTS)
        .map(|i| {
            format!(
                "X_SYSTEMD_UNIT_{}=u.target",
                if i % 2 == 0 { "ACTIVE" } else { "INACTIVE" }
            )
        })
        .collect();
    let mut guest = Guest::new("g", Timestamp::ZERO);
    for (i, name) in names.iter().enumerate() {
        guest
            .handle_datagram(
                Timestamp::from_micros(i as u64),
                Sender::Unknown,
                name.as_bytes(),
            )
            .unwrap();
    }
    assert_eq!(guest.timeline().len(), MAX_TIMELINE);
    let mut pending = 0;
    while guest.poll_event().is_some() {
        pending += 1;
    }
    assert_eq!(pending, MAX_PENDING_EVENTS);
    // The newest milestone is the last message's.
    let last = guest.timeline().last().unwrap();
    assert_eq!(last.at, Timestamp::from_micros(names.len() as u64 - 1));
    assert_eq!(
        last.event,
        Event::UnitInactive {
            unit: "u.target".into()
        }
    );
}

#[test]
fn timeline_records_milestones_with_their_boot() {
    let mut datagrams = BOOT.to_vec();
    datagrams.push(b"EXIT_STATUS=0\nX_SYSTEMD_SHUTDOWN=poweroff");
    datagrams.push(b"X_SYSTEMD_HOSTNAME=second");
    let (guest, _) = fed(&datagrams);
    let timeline: Vec<_> = guest.timeline().collect();
    assert_eq!(timeline[0].event, Event::BootStarted { number: 1 });
    assert!(
        timeline
            .iter()
            .any(|m| m.boot == 1 && matches!(m.event, Event::Shutdown { .. }))
    );
    let second = timeline
        .iter()
        .position(|m| m.event == Event::BootStarted { number: 2 })
        .unwrap();
    assert!(timeline[second..].iter().all(|m| m.boot == 2));
    assert!(timeline.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(guest.snapshot().hostname.as_deref(), Some("second"));
}

fn at(guest: &mut Guest, us: u64, datagram: &[u8]) -> Vec<Event> {
    guest
        .handle_datagram(Timestamp::from_micros(us), Sender::Unknown, datagram)
        .unwrap();
    std::iter::from_fn(|| guest.poll_event()).collect()
}

fn timeout(guest: &mut Guest, us: u64) -> Vec<Event> {
    guest.handle_timeout(Timestamp::from_micros(us));
    std::iter::from_fn(|| guest.poll_event()).collect()
}

// sd_notify(3): WATCHDOG_USEC= sets the interval, WATCHDOG=1 pings, WATCHDOG=trigger fires at once.
#[test]
fn watchdog_deadline_is_polled_and_missed_once() {
    let mut guest = Guest::new("g", Timestamp::ZERO);
    at(&mut guest, 0, b"READY=1\nWATCHDOG_USEC=1000000");
    assert_eq!(guest.poll_timeout(), None, "armed only by a first ping");
    at(&mut guest, 100, b"WATCHDOG=1");
    assert_eq!(
        guest.poll_timeout(),
        Some(Timestamp::from_micros(1_000_100))
    );
    assert!(timeout(&mut guest, 1_000_099).is_empty(), "early: nothing");
    let deadline = Timestamp::from_micros(1_000_100);
    assert_eq!(
        timeout(&mut guest, 1_000_100),
        [Event::WatchdogMissed { deadline }]
    );
    assert!(timeout(&mut guest, 2_000_000).is_empty(), "reported once");
    assert_eq!(guest.poll_timeout(), None);
    assert!(guest.snapshot().watchdog_expired);
    at(&mut guest, 2_500_000, b"WATCHDOG=1");
    let snapshot = guest.snapshot();
    assert!(!snapshot.watchdog_expired);
    assert_eq!(
        snapshot.watchdog_deadline,
        Some(Timestamp::from_micros(3_500_000))
    );
    let triggered = at(&mut guest, 2_600_000, b"WATCHDOG=trigger");
    assert_eq!(
        triggered,
        [Event::WatchdogMissed {
            deadline: Timestamp::from_micros(2_600_000)
        }]
    );
    // WATCHDOG_USEC=0 disables it.
    at(&mut guest, 2_700_000, b"WATCHDOG_USEC=0\nWATCHDOG=1");
    assert_eq!(guest.poll_timeout(), None);
    assert_eq!(guest.snapshot().watchdog_deadline, None);
}

#[test]
fn readiness_timeout_names_the_boot_that_never_became_ready() {
    let mut guest = Guest::new("g", Timestamp::ZERO);
    guest.set_ready_timeout(Some(90_000_000));
    assert_eq!(guest.poll_timeout(), None, "no boot yet");
    at(&mut guest, 10, b"X_SYSTEMD_HOSTNAME=h");
    let deadline = Timestamp::from_micros(90_000_010);
    assert_eq!(guest.poll_timeout(), Some(deadline));
    assert_eq!(
        timeout(&mut guest, 90_000_010),
        [Event::ReadyTimedOut { deadline }]
    );
    let snapshot = guest.snapshot();
    assert!(snapshot.ready_timed_out);
    assert_eq!(
        (snapshot.phase, snapshot.ready_deadline),
        (Phase::Booting, Some(deadline))
    );
    assert!(timeout(&mut guest, 99_000_000).is_empty(), "once per boot");
    // It may still become ready; a new boot gets a new deadline.
    at(&mut guest, 95_000_000, b"READY=1");
    assert_eq!(guest.phase(), Phase::Ready);
    at(&mut guest, 96_000_000, b"X_SYSTEMD_HOSTNAME=h");
    assert_eq!(guest.snapshot().boot_count, 2);
    assert!(!guest.snapshot().ready_timed_out);
    assert_eq!(
        guest.poll_timeout(),
        Some(Timestamp::from_micros(186_000_000))
    );
    // A ready boot has nothing pending.
    at(&mut guest, 97_000_000, b"READY=1");
    assert_eq!(guest.poll_timeout(), None);
}

// sd_notify_barrier(3): `systemd-notify` follows each message with a lone BARRIER=1; it tells
// nothing about the guest, so it starts no boot (neither the first nor one after `off`).
#[test]
fn a_barrier_alone_starts_no_boot() {
    let (guest, events) = fed(&[b"BARRIER=1"]);
    assert_eq!(
        (guest.phase(), guest.snapshot().boot_count),
        (Phase::Registered, 0)
    );
    assert_eq!(guest.snapshot().messages, 1);
    assert!(events.is_empty());
    let (guest, _) = fed(&[
        b"READY=1",
        b"BARRIER=1",
        b"X_SYSTEMD_SHUTDOWN=poweroff",
        b"BARRIER=1",
    ]);
    assert_eq!(
        (guest.phase(), guest.snapshot().boot_count),
        (Phase::Off, 1)
    );
    // Anything more than the barrier does start the next boot.
    let (guest, _) = fed(&[b"X_SYSTEMD_SHUTDOWN=poweroff", b"BARRIER=1\nREADY=1"]);
    assert_eq!(
        (guest.phase(), guest.snapshot().boot_count),
        (Phase::Ready, 2)
    );
}
