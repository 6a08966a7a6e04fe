//! `$NOTIFY_SOCKET` addresses, after the vectors of systemd's `src/test/test-socket-netlink.c`
//! and the rules of `socket_address_parse_unix()` / `_vsock()` (`src/basic/socket-util.c`).

use notifyhub_core::{AddressError, NotifyAddress, VMADDR_CID_ANY, VsockType};

fn vsock(socket_type: VsockType, cid: u32, port: u32) -> Result<NotifyAddress, AddressError> {
    Ok(NotifyAddress::Vsock {
        socket_type,
        cid,
        port,
    })
}

#[test]
fn vsock_addresses() {
    use VsockType::*;
    let table = [
        ("vsock:2:1234", vsock(Auto, 2, 1234)),
        ("vsock-stream:2:1234", vsock(Stream, 2, 1234)),
        ("vsock-dgram:2:1234", vsock(Dgram, 2, 1234)),
        ("vsock-seqpacket:2:1234", vsock(Seqpacket, 2, 1234)),
        ("vsock:hypervisor:1", vsock(Auto, 0, 1)),
        ("vsock:local:1", vsock(Auto, 1, 1)),
        ("vsock:host:1", vsock(Auto, 2, 1)),
        ("vsock:any:1", vsock(Auto, VMADDR_CID_ANY, 1)),
        ("vsock::1", vsock(Auto, VMADDR_CID_ANY, 1)),
        ("vsock:-1:1", vsock(Auto, VMADDR_CID_ANY, 1)),
        ("vsock:4294967294:0", vsock(Auto, u32::MAX - 1, 0)),
        // safe_atou() reads base 0: these all mean 16.
        ("vsock:0x10:1", vsock(Auto, 16, 1)),
        ("vsock:0o20:1", vsock(Auto, 16, 1)),
        ("vsock:0b10000:1", vsock(Auto, 16, 1)),
        ("vsock:020:1", vsock(Auto, 16, 1)),
        ("vsock:2:0x10", vsock(Auto, 2, 16)),
        ("vsock: 2:+7", vsock(Auto, 2, 7)),
        // Rejected: trailing characters (a trailing newline too), missing parts, out of range.
        ("vsock:2:1234x", Err(AddressError::BadPort)),
        ("vsock:2x:1234", Err(AddressError::BadCid)),
        ("vsock:2:1234\n", Err(AddressError::BadPort)),
        ("vsock:2", Err(AddressError::MissingPort)),
        ("vsock:2:", Err(AddressError::BadPort)),
        ("vsock:2:4294967295", Err(AddressError::BadPort)),
        ("vsock:4294967296:1", Err(AddressError::BadCid)),
        ("vsock:2:-5", Err(AddressError::BadPort)),
        ("vsock:09:1", Err(AddressError::BadCid)),
        ("vsock:0x:1", Err(AddressError::BadCid)),
        ("vsock:2:1:2", Err(AddressError::BadPort)),
        ("vsock-raw:2:1", Err(AddressError::UnknownForm)),
        ("tcp:127.0.0.1:1", Err(AddressError::UnknownForm)),
        ("relative/path", Err(AddressError::UnknownForm)),
        ("", Err(AddressError::UnknownForm)),
    ];
    for (text, expected) in table {
        assert_eq!(text.parse::<NotifyAddress>(), expected, "{text:?}");
    }
}

#[test]
fn unix_addresses() {
    assert_eq!(
        "/run/host/notify".parse(),
        Ok(NotifyAddress::Path("/run/host/notify".into()))
    );
    assert_eq!(
        "@notifyprobe-abs".parse(),
        Ok(NotifyAddress::Abstract("notifyprobe-abs".into()))
    );
    assert_eq!("/".parse::<NotifyAddress>(), Err(AddressError::TooShort));
    assert_eq!("@".parse::<NotifyAddress>(), Err(AddressError::TooShort));
    for first in ['/', '@'] {
        let ok = format!("{first}{}", "x".repeat(106));
        assert_eq!(ok.len(), 107);
        assert!(
            ok.parse::<NotifyAddress>().is_ok(),
            "107 bytes fit sun_path"
        );
        let long = format!("{ok}x");
        assert_eq!(
            long.parse::<NotifyAddress>(),
            Err(AddressError::TooLong(108))
        );
    }
    assert_eq!("/a\0b".parse::<NotifyAddress>(), Err(AddressError::Nul));
}

#[test]
fn display_round_trips() {
    for text in [
        "/run/notify",
        "@abs",
        "vsock:2:1234",
        "vsock-stream:3:9",
        "vsock-seqpacket:2:1",
    ] {
        assert_eq!(text.parse::<NotifyAddress>().unwrap().to_string(), text);
    }
    assert_eq!(
        "vsock-dgram:host:0x10"
            .parse::<NotifyAddress>()
            .unwrap()
            .to_string(),
        "vsock-dgram:2:16"
    );
}
