//! The parser against systemd's rules, one table row per rule, each named after its source
//! (`../shared/protocol.md` §3 and §5).

use notifyhub_core::{Key, MAX_DATAGRAM_LEN, Message, NotifyAccess, ParseError, Watchdog, parse};

fn ok(datagram: &[u8]) -> Message<'_> {
    parse(datagram)
        .unwrap_or_else(|e| panic!("{:?} rejected: {e}", String::from_utf8_lossy(datagram)))
}

fn lines(datagram: &[u8]) -> Vec<&[u8]> {
    ok(datagram).lines().collect()
}

fn ignored(message: &Message<'_>) -> Vec<Key> {
    message.ignored.iter().collect()
}

// notify-recv.c: NOTIFY_BUFFER_MAX = 4096, a longer datagram is dropped whole (MSG_TRUNC).
#[test]
fn size_limit_is_4096_bytes() {
    let mut datagram = b"STATUS=".to_vec();
    datagram.resize(MAX_DATAGRAM_LEN, b'x');
    assert_eq!(
        ok(&datagram).status.map(str::len),
        Some(MAX_DATAGRAM_LEN - 7)
    );
    datagram.push(b'x');
    assert_eq!(parse(&datagram), Err(ParseError::TooLarge { len: 4097 }));
}

// notify-recv.c: an embedded NUL rejects the message; one trailing NUL is tolerated.
#[test]
fn nul_bytes() {
    type Row = (&'static [u8], Result<&'static [u8], ParseError>);
    let table: &[Row] = &[
        (b"READY=1\0", Ok(b"READY=1")),
        (b"READY=1\0\0", Err(ParseError::EmbeddedNul { offset: 7 })),
        (
            b"READY=1\0STATUS=x",
            Err(ParseError::EmbeddedNul { offset: 7 }),
        ),
        (b"\0", Ok(b"")),
        (b"\0READY=1", Err(ParseError::EmbeddedNul { offset: 0 })),
    ];
    for (datagram, expected) in table {
        assert_eq!(
            parse(datagram).map(|m| m.payload()),
            *expected,
            "{datagram:?}"
        );
    }
}

// notify-recv.c: a 0-byte message is an empty list, not an error.
#[test]
fn empty_datagram_is_an_empty_list() {
    let message = ok(b"");
    assert!(message.is_empty());
    assert_eq!(message, Message::default());
}

// strv.c strv_split_newlines(): separators are \n and \r, runs collapse, spaces and quotes stay.
#[test]
fn line_splitting() {
    let table: &[(&[u8], &[&[u8]])] = &[
        (b"READY=1", &[b"READY=1"]),
        (b"READY=1\n", &[b"READY=1"]),
        (
            b"\r\nREADY=1\r\n\r\nSTATUS=x\r\n",
            &[b"READY=1", b"STATUS=x"],
        ),
        (b"A=1\n\n\n\rB=2", &[b"A=1", b"B=2"]),
        (b"\n\r\n", &[]),
        (b" READY=1 ", &[b" READY=1 "]),
        (b"STATUS=\"quoted\"", &[b"STATUS=\"quoted\""]),
        // notifyhub keeps backslashes, like systemd-vmspawn; PID 1 would strip them.
        (b"STATUS=C:\\dir\\", &[b"STATUS=C:\\dir\\"]),
    ];
    for (datagram, expected) in table {
        assert_eq!(
            lines(datagram),
            *expected,
            "{:?}",
            String::from_utf8_lossy(datagram)
        );
    }
}

// service.c: flags match whole lines (strv_contains), so anything but the exact line does nothing.
#[test]
fn flags_are_whole_lines() {
    for datagram in [
        &b" READY=1"[..],
        b"READY=1 ",
        b"READY = 1",
        b"READY=true",
        b"READY=0",
        b"ready=1",
    ] {
        assert!(
            !ok(datagram).ready,
            "{:?}",
            String::from_utf8_lossy(datagram)
        );
    }
    assert_eq!(ignored(&ok(b"READY=0")), [Key::Ready]);
    // A line that sets the flag wins over one that does not, whatever the order.
    let message = ok(b"READY=0\nREADY=1");
    assert!(message.ready);
    assert!(message.ignored.is_empty());
    let message = ok(b"READY=1\nRELOADING=1\nSTOPPING=1\nBARRIER=1\nFDSTORE=1\nFDSTOREREMOVE=1\nFDPOLL=0\nMAINPIDFD=1\nRESTART_RESET=1");
    assert!(message.ready && message.reloading && message.stopping && message.barrier);
    assert!(message.fd_store && message.fd_store_remove && message.fd_poll_disabled);
    assert!(message.main_pid_fd && message.restart_reset);
    assert!(ok(b"FDPOLL=1").ignored.contains(Key::FdPoll));
}

// service.c: strv_find_startswith() returns the first assignment of a key.
#[test]
fn first_occurrence_wins() {
    assert_eq!(ok(b"STATUS=one\nSTATUS=two").status, Some("one"));
    assert_eq!(ok(b"MAINPID=10\nMAINPID=20").main_pid, Some(10));
    // An invalid first value is ignored, and the later valid one is not used either.
    let message = ok(b"ERRNO=abc\nERRNO=5");
    assert_eq!(message.errno, None);
    assert_eq!(ignored(&message), [Key::Errno]);
}

// Unknown keys and lines without '=' are kept as data; systemd ignores them.
#[test]
fn unknown_keys_are_kept_as_data() {
    let message = ok(b"READY=1\nFOO=bar\nno equals sign\nX_SYSTEMD_TEST=1");
    assert!(message.ready);
    assert!(message.ignored.is_empty());
    assert_eq!(
        message.lines().collect::<Vec<_>>(),
        [
            &b"READY=1"[..],
            b"FOO=bar",
            b"no equals sign",
            b"X_SYSTEMD_TEST=1"
        ]
    );
}

// service.c: STATUS= must be valid UTF-8 (else ignored while the other keys apply); empty clears.
#[test]
fn status_validity() {
    let message = ok(b"STATUS=\xff\xfe\nREADY=1");
    assert_eq!(message.status, None);
    assert!(message.ready);
    assert_eq!(ignored(&message), [Key::Status]);
    assert_eq!(ok(b"STATUS=").status, Some(""));
    assert_eq!(
        ok("STATUS=Hello world: ünïcode".as_bytes()).status,
        Some("Hello world: ünïcode")
    );
    assert_eq!(
        ok(b"STATUS=<script>alert(1)</script>").status,
        Some("<script>alert(1)</script>")
    );
}

// sd_notify(3) and service.c: the value keys, valid and invalid.
#[test]
fn value_keys() {
    let m = ok(b"ERRNO=5\nEXIT_STATUS=1\nMAINPID=4242\nMAINPIDFDID=99\nMONOTONIC_USEC=836507153\nWATCHDOG_USEC=30000000\nEXTEND_TIMEOUT_USEC=18446744073709551615\nWATCHDOG=trigger\nNOTIFYACCESS=exec\nBUSERROR=org.freedesktop.DBus.Error.Failed\nVARLINKERROR=io.systemd.Failed\nFDNAME=my socket");
    assert_eq!(m.errno, Some(5));
    assert_eq!(m.exit_status, Some(1));
    assert_eq!(m.main_pid, Some(4242));
    assert_eq!(m.main_pid_fd_id, Some(99));
    assert_eq!(m.monotonic_usec, Some(836_507_153));
    assert_eq!(m.watchdog_usec, Some(30_000_000));
    assert_eq!(m.extend_timeout_usec, Some(u64::MAX));
    assert_eq!(m.watchdog, Some(Watchdog::Trigger));
    assert_eq!(m.notify_access, Some(NotifyAccess::Exec));
    assert_eq!(m.bus_error, Some("org.freedesktop.DBus.Error.Failed"));
    assert_eq!(m.varlink_error, Some("io.systemd.Failed"));
    assert_eq!(m.fd_name, Some("my socket"));
    assert!(m.ignored.is_empty());
    assert_eq!(ok(b"WATCHDOG=1").watchdog, Some(Watchdog::Ping));
}

#[test]
fn invalid_values_are_ignored() {
    let table: &[(&[u8], Key)] = &[
        // µs fields are unsigned 64-bit decimals: overflow, signs, spaces and hex are rejected.
        (b"WATCHDOG_USEC=18446744073709551616", Key::WatchdogUsec),
        (b"MONOTONIC_USEC=-1", Key::MonotonicUsec),
        (b"EXTEND_TIMEOUT_USEC= 5", Key::ExtendTimeoutUsec),
        (b"WATCHDOG_USEC=0x10", Key::WatchdogUsec),
        (b"WATCHDOG_USEC=", Key::WatchdogUsec),
        // WATCHDOG= takes only 1 or trigger.
        (b"WATCHDOG=2", Key::Watchdog),
        // parse_errno(): 0 to 4095.
        (b"ERRNO=4096", Key::Errno),
        (b"ERRNO=-5", Key::Errno),
        (b"ERRNO=five", Key::Errno),
        // MAINPID must be a pid > 0.
        (b"MAINPID=0", Key::MainPid),
        (b"MAINPID=4294967296", Key::MainPid),
        (b"EXIT_STATUS=256", Key::ExitStatus),
        (b"NOTIFYACCESS=some", Key::NotifyAccess),
        // TEST-80-NOTIFYACCESS.sh: non-ASCII BUSERROR= is ignored.
        ("BUSERROR=ünï".as_bytes(), Key::BusError),
        (b"BUSERROR=", Key::BusError),
        (b"VARLINKERROR=has space", Key::VarlinkError),
        // fdname_is_valid(): printable ASCII without ':', at most 255.
        (b"FDNAME=a:b", Key::FdName),
        (
            b"X_SYSTEMD_MACHINE_ID=5E1F0B7A2C3D4E5F60718293A4B5C6D7",
            Key::MachineId,
        ),
        (b"X_SYSTEMD_MACHINE_ID=5e1f0b7a", Key::MachineId),
        (b"X_SYSTEMD_HOSTNAME=", Key::Hostname),
        (b"X_SYSTEMD_HOSTNAME=bad\x1bname", Key::Hostname),
        (b"X_SYSTEMD_UNIT_ACTIVE=<script>.target", Key::UnitActive),
        (b"X_SYSTEMD_UNIT_ACTIVE=notarget", Key::UnitActive),
        (b"X_SYSTEMD_UNIT_INACTIVE=.target", Key::UnitInactive),
        (b"X_SYSTEMD_SIGNALS_LEVEL=two", Key::SignalsLevel),
        (b"X_SYSTEMD_SHUTDOWN=", Key::Shutdown),
    ];
    for (datagram, key) in table {
        let message = ok(datagram);
        assert_eq!(
            ignored(&message),
            [*key],
            "{:?}",
            String::from_utf8_lossy(datagram)
        );
    }
    let mut long_name = b"FDNAME=".to_vec();
    long_name.resize(7 + 256, b'a');
    assert_eq!(ignored(&ok(&long_name)), [Key::FdName]);
}

// ../shared/protocol.md §4: what systemd 257 as PID 1 sends.
#[test]
fn pid1_messages() {
    let m = ok(b"EXIT_STATUS=0\nX_SYSTEMD_SHUTDOWN=reboot\nX_SYSTEMD_REBOOT_PARAMETER=probe-arg");
    assert_eq!(
        (m.exit_status, m.shutdown, m.reboot_parameter),
        (Some(0), Some("reboot"), Some("probe-arg"))
    );
    let m = ok(b"X_SYSTEMD_MACHINE_ID=5e1f0b7a2c3d4e5f60718293a4b5c6d7");
    assert_eq!(m.machine_id, Some("5e1f0b7a2c3d4e5f60718293a4b5c6d7"));
    assert_eq!(ok(b"X_SYSTEMD_SIGNALS_LEVEL=2").signals_level, Some(2));
    assert_eq!(
        ok(b"X_SYSTEMD_UNIT_ACTIVE=ssh-access.target").unit_active,
        Some("ssh-access.target")
    );
    assert_eq!(
        ok(b"X_SYSTEMD_UNIT_INACTIVE=getty@tty1.service").unit_inactive,
        Some("getty@tty1.service")
    );
    assert_eq!(
        ok(b"X_SYSTEMD_HOSTNAME=probe-guest").hostname,
        Some("probe-guest")
    );
}

#[test]
fn every_key_round_trips_its_name() {
    for key in Key::ALL {
        assert_eq!(Key::from_name(key.name().as_bytes()), Some(key));
    }
    assert_eq!(Key::from_name(b"X_SYSTEMD_UNKNOWN"), None);
}

#[cfg(feature = "serde")]
#[test]
fn serialises_set_fields_only() {
    let m = ok(b"READY=1\nSTATUS=x\nERRNO=bad\nFOO=bar");
    assert_eq!(
        serde_json::to_value(&m).unwrap(),
        serde_json::json!({"ready": true, "status": "x", "ignored": ["ERRNO"]})
    );
}

// What we send must parse back to the same lines (`systemd-notify` joins arguments with \n).
#[test]
fn composed_messages_parse_back() {
    use notifyhub_core::{ComposeError, compose};
    let message = compose(["READY=1", "STATUS=Ready: 3 of 3", "X_CUSTOM=a=b"]).unwrap();
    assert_eq!(message, "READY=1\nSTATUS=Ready: 3 of 3\nX_CUSTOM=a=b");
    let parsed = ok(message.as_bytes());
    assert!(parsed.ready);
    assert_eq!(parsed.status, Some("Ready: 3 of 3"));
    assert_eq!(compose([]), Err(ComposeError::Empty));
    assert_eq!(
        compose(["READY"]),
        Err(ComposeError::NotAnAssignment("READY".into()))
    );
    assert_eq!(
        compose(["=1"]),
        Err(ComposeError::NotAnAssignment("=1".into()))
    );
    assert_eq!(
        compose(["STATUS=x\nREADY=1"]),
        Err(ComposeError::Separator("STATUS=x\nREADY=1".into()))
    );
    let big = format!("STATUS={}", "x".repeat(4090));
    assert_eq!(compose([big.as_str()]), Err(ComposeError::TooLarge(4097)));
}
