//! The parser against its pre-rewrite self (`reference/mod.rs`, issue #8): for every datagram,
//! generated or captured, the same `Message` (every field, the payload, the serialised JSON) or
//! the same error.

#[allow(dead_code)] // the replay half of the helpers is for `vectors.rs`
mod common;
mod reference;

use notifyhub_core::{Key, MAX_DATAGRAM_LEN, parse};
use proptest::prelude::*;

/// Parses `datagram` with both parsers and asserts that they agree.
fn assert_same(datagram: &[u8]) {
    let current = parse(datagram);
    let expected = reference::parse(datagram);
    let shown = String::from_utf8_lossy(datagram);
    match (&current, &expected) {
        (Ok(message), Ok(old)) => {
            assert_eq!(&reference::from_current(message), old, "{shown:?}");
            #[cfg(feature = "serde")]
            assert_eq!(
                serde_json::to_value(message).unwrap(),
                serde_json::to_value(old).unwrap(),
                "{shown:?}"
            );
        }
        _ => assert_eq!(current.err(), expected.err(), "{shown:?}"),
    }
}

/// Key names: every known key, near misses of them (a byte off, a prefix, an extension, other
/// case, spaces) and unknown ones.
fn key() -> impl Strategy<Value = Vec<u8>> {
    let known = prop::sample::select(Key::ALL.to_vec()).prop_map(|k| k.name().as_bytes().to_vec());
    let near_miss = (
        prop::sample::select(Key::ALL.to_vec()),
        any::<prop::sample::Index>(),
        any::<u8>(),
        0..5u8,
    )
        .prop_map(|(key, index, byte, how)| {
            let mut name = key.name().as_bytes().to_vec();
            let i = index.index(name.len());
            match how {
                0 => name[i] = byte,
                1 => name.truncate(i),
                2 => name.push(byte),
                3 => name.make_ascii_lowercase(),
                _ => name.insert(i, b' '),
            }
            name
        });
    prop_oneof![
        6 => known,
        3 => near_miss,
        1 => "[A-Z_]{0,30}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..30),
    ]
}

/// Values: valid and invalid ones for every key's rule, at and around each limit.
fn value() -> impl Strategy<Value = Vec<u8>> {
    let fixed: Vec<&'static [u8]> = vec![
        b"",
        b"1",
        b"0",
        b"2",
        b"trigger",
        b"true",
        b"none",
        b"main",
        b"exec",
        b"all",
        b"some",
        b"4095",
        b"4096",
        b"255",
        b"256",
        b"4294967295",
        b"4294967296",
        b"18446744073709551615",
        b"18446744073709551616",
        b"000000000000000000001",
        b"00000000000000000001",
        b"-1",
        b" 5",
        b"5 ",
        b"0x10",
        b"+5",
        b"5e1f0b7a2c3d4e5f60718293a4b5c6d7",
        b"5E1F0B7A2C3D4E5F60718293A4B5C6D7",
        b"5e1f0b7a2c3d4e5f60718293a4b5c6d",
        b"5e1f0b7a2c3d4e5f60718293a4b5c6d7a",
        b"5e1f0b7a2c3d4e5f60718293a4b5c6dg",
        b"ssh-access.target",
        b"getty@tty1.service",
        b"systemd-fsck@dev-disk-by\\x2duuid-1234.service",
        b"a.b",
        b"a.",
        b".target",
        b"a",
        b"notarget",
        b"a:b.c",
        b"<script>.target",
        b"a b.target",
        b"reboot",
        b"poweroff",
        b"has space",
        b"org.freedesktop.DBus.Error.Failed",
        b"a:b",
        b"probe-guest",
        b"bad\x1bname",
        b"del\x7f",
        b"Ready.",
        b"tab\there",
        "ünïcode".as_bytes(),
        "c1 \u{85} control".as_bytes(),
        "bidi \u{202e} override".as_bytes(),
        b"\xff\xfe",
        b"\xc3",
        b"\xe2\x82",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"a=b",
    ];
    prop_oneof![
        8 => prop::sample::select(fixed).prop_map(<[u8]>::to_vec),
        2 => "[ -~]{0,80}".prop_map(String::into_bytes),
        2 => "[a-z0-9.@:_\\\\-]{0,20}".prop_map(String::into_bytes),
        // A unit name with one byte replaced by a printable one outside its class (or a dot).
        3 => (
            "[a-z0-9@_-]{1,12}\\.(target|service)",
            any::<prop::sample::Index>(),
            prop::sample::select(b" !\"#$%&'()*+,/;<=>?[]^`{|}~.".to_vec()),
        )
            .prop_map(|(name, index, byte)| {
                let mut name = name.into_bytes();
                let i = index.index(name.len());
                name[i] = byte;
                name
            }),
        1 => "[0-9]{0,24}".prop_map(String::into_bytes),
        1 => "\\PC{0,40}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..60),
        // Long values: up to the unit and error name limits (255), and up to the whole datagram.
        1 => (prop::sample::select(vec![b'a', b'.', b' ', b'x', 0xc3]), 60..300usize)
            .prop_map(|(byte, n)| vec![byte; n]),
        1 => (prop::sample::select(vec![b'a', b'.', b'\x1b']), 253..258usize)
            .prop_map(|(byte, n)| { let mut v = vec![b'u'; n - 2]; v.extend([byte, b'x']); v }),
        1 => (4000..4100usize).prop_map(|n| vec![b'x'; n]),
    ]
}

/// A line: an assignment, or bytes without `=` (kept as data).
fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => (key(), value()).prop_map(|(mut k, v)| {
            k.push(b'=');
            k.extend(v);
            k
        }),
        1 => "[ -<>-~]{0,30}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..20),
    ]
}

/// Whole datagrams: lines joined by every kind of separator run, maybe with NULs.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    let separator = prop::sample::select(vec![
        &b"\n"[..],
        b"\n",
        b"\r\n",
        b"\r",
        b"\n\n",
        b"\n\r\n\r",
    ]);
    (
        prop::sample::select(vec![&b""[..], b"", b"", b"\n", b"\r\n"]),
        prop::collection::vec((line(), separator), 0..8),
        prop::sample::select(vec![&b""[..], b"", b"", b"\n", b"\0", b"\n\0", b"\0\0"]),
        prop::option::weighted(0.1, (any::<prop::sample::Index>(), any::<u8>())),
    )
        .prop_map(|(start, lines, end, nul)| {
            let mut datagram = start.to_vec();
            for (i, (line, separator)) in lines.iter().enumerate() {
                if i > 0 {
                    datagram.extend_from_slice(separator);
                }
                datagram.extend_from_slice(line);
            }
            datagram.extend_from_slice(end);
            // A NUL (or any byte) somewhere inside.
            if let Some((index, byte)) = nul
                && !datagram.is_empty()
            {
                let i = index.index(datagram.len());
                datagram[i] = if byte < 128 { 0 } else { byte };
            }
            datagram
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn same_as_the_reference_on_generated_datagrams(datagram in datagram()) {
        assert_same(&datagram);
    }

    #[test]
    fn same_as_the_reference_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        assert_same(&bytes);
    }
}

/// Every datagram of the shared and the project's own captures.
#[test]
fn same_as_the_reference_on_every_captured_vector() {
    let mut count = 0;
    for dir in [common::shared_vectors(), common::own_vectors()] {
        for name in common::vector_files(&dir) {
            for captured in common::load(&dir, &name) {
                assert_same(&captured.bytes);
                count += 1;
            }
        }
    }
    assert!(count > 290, "only {count} captured datagrams found");
}

/// Lengths around every size limit and every byte value at every position of a short
/// single-line datagram: the paths a word-at-a-time scan treats differently.
#[test]
fn same_as_the_reference_at_the_edges() {
    for n in (0..=40).chain(MAX_DATAGRAM_LEN - 12..=MAX_DATAGRAM_LEN + 2) {
        for prefix in [&b"STATUS="[..], b"X_SYSTEMD_HOSTNAME=", b"FDNAME=", b""] {
            let mut datagram = prefix.to_vec();
            datagram.resize(n.max(prefix.len()), b'x');
            assert_same(&datagram);
            datagram.push(0);
            assert_same(&datagram);
        }
    }
    for base in [
        &b"X_SYSTEMD_UNIT_ACTIVE=ssh-access.target"[..],
        b"READY=1",
        b"STATUS=Ready.",
        b"X_SYSTEMD_MACHINE_ID=5e1f0b7a2c3d4e5f60718293a4b5c6d7",
        b"X_SYSTEMD_HOSTNAME=probe-guest",
        b"X_SYSTEMD_SHUTDOWN=reboot",
        b"X_SYSTEMD_REBOOT_PARAMETER=probe-arg",
        b"BUSERROR=org.freedesktop.DBus.Error.Failed",
        b"FDNAME=my socket",
        b"NOTIFYACCESS=exec",
        b"MAINPID=4242",
    ] {
        for i in 0..base.len() {
            for byte in 0..=u8::MAX {
                let mut datagram = base.to_vec();
                datagram[i] = byte;
                assert_same(&datagram);
            }
        }
    }
}
