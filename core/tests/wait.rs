//! Wait conditions: parsing, and judging snapshots.

use notifyhub_core::{
    BadCondition, Guest, Phase, Sender, Timestamp, Wait, WaitCondition, WaitOutcome,
};

fn guest_after(datagrams: &[&[u8]]) -> Guest {
    let mut guest = Guest::new("g", Timestamp::ZERO);
    for d in datagrams {
        guest
            .handle_datagram(Timestamp::ZERO, Sender::Unknown, d)
            .unwrap();
    }
    guest
}

#[test]
fn parses_every_form() {
    let table = [
        ("ready", WaitCondition::Ready),
        ("booted", WaitCondition::Booted),
        ("off", WaitCondition::Off),
        (
            "unit:ssh-access.target",
            WaitCondition::Unit("ssh-access.target".into()),
        ),
        ("phase:failed", WaitCondition::Phase(Phase::Failed)),
    ];
    for (text, condition) in table {
        assert_eq!(text.parse::<WaitCondition>(), Ok(condition.clone()));
        assert_eq!(condition.to_string(), text, "round trip");
    }
    assert!(matches!(
        "up".parse::<WaitCondition>(),
        Err(BadCondition::Unknown(_))
    ));
    assert!(matches!(
        "unit:".parse::<WaitCondition>(),
        Err(BadCondition::BadUnit(_))
    ));
    assert!(matches!(
        "unit:<b>.target".parse::<WaitCondition>(),
        Err(BadCondition::BadUnit(_))
    ));
    assert!(matches!(
        "phase:up".parse::<WaitCondition>(),
        Err(BadCondition::BadPhase(_))
    ));
    assert!(matches!(
        "READY".parse::<WaitCondition>(),
        Err(BadCondition::Unknown(_))
    ));
}

#[test]
fn met_pending_and_unreachable() {
    let booting = guest_after(&[b"X_SYSTEMD_HOSTNAME=h"]).snapshot();
    let ready = guest_after(&[b"X_SYSTEMD_HOSTNAME=h", b"READY=1"]).snapshot();
    let booted = guest_after(&[b"X_SYSTEMD_UNIT_ACTIVE=multi-user.target", b"READY=1"]).snapshot();
    let failed = guest_after(&[b"READY=1", b"X_SYSTEMD_UNIT_ACTIVE=emergency.target"]).snapshot();
    let stopping = guest_after(&[b"READY=1", b"STOPPING=1"]).snapshot();
    let off = guest_after(&[b"READY=1", b"X_SYSTEMD_SHUTDOWN=poweroff"]).snapshot();
    let ssh = WaitCondition::Unit("ssh-access.target".into());
    use WaitOutcome::*;
    let table = [
        (WaitCondition::Ready, &booting, Pending),
        (WaitCondition::Ready, &ready, Met),
        (WaitCondition::Ready, &failed, Unreachable),
        (WaitCondition::Ready, &stopping, Unreachable),
        (WaitCondition::Booted, &ready, Pending),
        (WaitCondition::Booted, &booted, Met),
        (WaitCondition::Booted, &off, Unreachable),
        (ssh.clone(), &ready, Pending),
        (ssh.clone(), &stopping, Pending),
        (ssh.clone(), &failed, Unreachable),
        (WaitCondition::Unit("emergency.target".into()), &failed, Met),
        (WaitCondition::Off, &stopping, Pending),
        (WaitCondition::Off, &off, Met),
        (WaitCondition::Phase(Phase::Failed), &failed, Met),
        (WaitCondition::Phase(Phase::Ready), &off, Pending),
    ];
    for (condition, snapshot, outcome) in table {
        let wait = Wait::new(condition.clone(), &booting);
        assert_eq!(
            wait.check(snapshot),
            outcome,
            "{condition} in phase {}",
            snapshot.phase
        );
    }
}

// A VMM may start waiting while the guest is still off from its last boot, then restart it.
#[test]
fn a_wait_begun_while_off_waits_for_the_next_boot() {
    let mut guest = guest_after(&[b"READY=1", b"X_SYSTEMD_SHUTDOWN=reboot"]);
    let wait = Wait::new(WaitCondition::Ready, &guest.snapshot());
    assert_eq!(wait.check(&guest.snapshot()), WaitOutcome::Pending);
    guest
        .handle_datagram(Timestamp::ZERO, Sender::Unknown, b"X_SYSTEMD_HOSTNAME=h")
        .unwrap();
    assert_eq!(wait.check(&guest.snapshot()), WaitOutcome::Pending);
    guest
        .handle_datagram(Timestamp::ZERO, Sender::Unknown, b"READY=1")
        .unwrap();
    assert_eq!(wait.check(&guest.snapshot()), WaitOutcome::Met);
    // A registered guest that fails its first boot is judged in that boot.
    let registered = Guest::new("g", Timestamp::ZERO).snapshot();
    let wait = Wait::new(WaitCondition::Ready, &registered);
    let failed = guest_after(&[b"X_SYSTEMD_UNIT_ACTIVE=rescue.target"]).snapshot();
    assert_eq!(wait.check(&failed), WaitOutcome::Unreachable);
}

// SIGRTMIN+14 powers off at once: the last datagram names no inactive targets, yet nothing is
// active in a guest that is off (vector systemd257-sig-rtmin14-immediate-poweroff).
#[test]
fn units_of_a_guest_that_is_off_are_not_active() {
    let booted: &[&[u8]] = &[b"X_SYSTEMD_UNIT_ACTIVE=ssh-access.target", b"READY=1"];
    let ssh = WaitCondition::Unit("ssh-access.target".into());
    let guest = guest_after(booted);
    let wait = Wait::new(ssh.clone(), &guest.snapshot());
    assert_eq!(wait.check(&guest.snapshot()), WaitOutcome::Met);
    let off = guest_after(
        &[
            booted,
            &[&b"EXIT_STATUS=0\nX_SYSTEMD_SHUTDOWN=poweroff"[..]],
        ]
        .concat(),
    );
    assert!(
        off.snapshot().is_active("ssh-access.target"),
        "the last report is kept for show"
    );
    assert!(!ssh.holds(&off.snapshot()));
    assert_eq!(wait.check(&off.snapshot()), WaitOutcome::Unreachable);
}
