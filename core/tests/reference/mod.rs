//! The parser as it was before the single-pass rewrite (issue #8), kept verbatim as the
//! reference of the differential tests (`core/tests/differential.rs`, `fuzz/fuzz_targets/parse.rs`):
//! the current [`notifyhub_core::parse`] must give the same `Message` and the same error for
//! every input. Only what was private to the crate is adapted (the `Message` struct lives here,
//! `KeySet` bits go through its public methods); the rules are untouched.
#![allow(dead_code, unreachable_pub, unexpected_cfgs, clippy::all)]

use core::str;

use notifyhub_core::{
    Key, KeySet, MAX_DATAGRAM_LEN, MAX_STATUS_LEN, NotifyAccess, ParseError, Watchdog,
    split_assignment,
};

/// The `Message` of the old parser, field for field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Message<'a> {
    #[cfg_attr(feature = "serde", serde(skip))]
    pub payload: &'a [u8],
    /// `READY=1`
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "core::ops::Not::not"))]
    pub ready: bool,
    /// `RELOADING=1`
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "core::ops::Not::not"))]
    pub reloading: bool,
    /// `STOPPING=1`
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "core::ops::Not::not"))]
    pub stopping: bool,
    /// `MONOTONIC_USEC=`, µs of CLOCK_MONOTONIC in the guest.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub monotonic_usec: Option<u64>,
    /// `STATUS=`: `Some("")` clears the status. Ignored unless valid UTF-8 of at most
    /// [`MAX_STATUS_LEN`] bytes (`service.c`).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub status: Option<&'a str>,
    /// `NOTIFYACCESS=`
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub notify_access: Option<NotifyAccess>,
    /// `ERRNO=`: decimal, 0 to 4095 (`parse_errno()`, `src/basic/parse-util.c`).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub errno: Option<u16>,
    /// `BUSERROR=`: 1 to 255 printable ASCII characters, no spaces.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub bus_error: Option<&'a str>,
    /// `VARLINKERROR=`: 1 to 255 printable ASCII characters, no spaces.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub varlink_error: Option<&'a str>,
    /// `EXIT_STATUS=`: decimal, 0 to 255.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub exit_status: Option<u8>,
    /// `MAINPID=`: decimal, greater than 0.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub main_pid: Option<u32>,
    /// `MAINPIDFDID=`: decimal u64.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub main_pid_fd_id: Option<u64>,
    /// `MAINPIDFD=1`
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "core::ops::Not::not"))]
    pub main_pid_fd: bool,
    /// `WATCHDOG=1` or `WATCHDOG=trigger`.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub watchdog: Option<Watchdog>,
    /// `WATCHDOG_USEC=`, µs.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub watchdog_usec: Option<u64>,
    /// `EXTEND_TIMEOUT_USEC=`, µs.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub extend_timeout_usec: Option<u64>,
    /// `RESTART_RESET=1`
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "core::ops::Not::not"))]
    pub restart_reset: bool,
    /// `FDSTORE=1`
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "core::ops::Not::not"))]
    pub fd_store: bool,
    /// `FDSTOREREMOVE=1`
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "core::ops::Not::not"))]
    pub fd_store_remove: bool,
    /// `FDNAME=`: 0 to 255 printable ASCII characters, no `:` (`fdname_is_valid()`).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub fd_name: Option<&'a str>,
    /// `FDPOLL=0`
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "core::ops::Not::not"))]
    pub fd_poll_disabled: bool,
    /// `BARRIER=1`
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "core::ops::Not::not"))]
    pub barrier: bool,
    /// `X_SYSTEMD_SIGNALS_LEVEL=`: decimal u32 (only 2 is defined, any level is accepted).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub signals_level: Option<u32>,
    /// `X_SYSTEMD_MACHINE_ID=`: exactly 32 lowercase hex digits.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub machine_id: Option<&'a str>,
    /// `X_SYSTEMD_HOSTNAME=`: 1 to 64 bytes of UTF-8 without control characters.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub hostname: Option<&'a str>,
    /// `X_SYSTEMD_UNIT_ACTIVE=`: a unit name (see [`is_valid_unit_name`]).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub unit_active: Option<&'a str>,
    /// `X_SYSTEMD_UNIT_INACTIVE=`: a unit name (see [`is_valid_unit_name`]).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub unit_inactive: Option<&'a str>,
    /// `X_SYSTEMD_SHUTDOWN=`: `reboot`, `poweroff`, `halt`, `kexec` or `exit` from systemd 257;
    /// any 1 to 64 printable ASCII characters are accepted.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub shutdown: Option<&'a str>,
    /// `X_SYSTEMD_REBOOT_PARAMETER=`: up to 255 bytes of UTF-8 without control characters.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub reboot_parameter: Option<&'a str>,
    /// Known keys whose first value was invalid (or, for flags, a line such as `READY=0`), and
    /// so had no effect.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "keyset_is_empty"))]
    pub ignored: KeySet,
}

impl<'a> Message<'a> {
    /// The datagram's bytes, without the one trailing NUL that [`parse`] tolerates.
    pub const fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

pub fn parse(datagram: &[u8]) -> Result<Message<'_>, ParseError> {
    if datagram.len() > MAX_DATAGRAM_LEN {
        return Err(ParseError::TooLarge {
            len: datagram.len(),
        });
    }
    let payload = match datagram.split_last() {
        Some((0, rest)) => rest,
        _ => datagram,
    };
    let mut message = Message {
        payload,
        ..Message::default()
    };
    // Value keys whose first occurrence has been seen: later ones are ignored (first wins).
    let mut seen = KeySet::EMPTY;
    // Flags set by some line, and flag keys with a line that set nothing (`READY=0`).
    let mut flags_set = KeySet::EMPTY;
    let mut flags_ignored = KeySet::EMPTY;
    // One pass finds both the line ends of `lines()` and a NUL byte.
    let mut rest = payload;
    let mut offset = 0;
    loop {
        let end = memchr::memchr3(b'\n', b'\r', 0, rest).unwrap_or(rest.len());
        if rest.get(end) == Some(&0) {
            return Err(ParseError::EmbeddedNul {
                offset: offset + end,
            });
        }
        if let Some((name, value)) = split_assignment(&rest[..end])
            && let Some(key) = Key::from_name(name)
        {
            if let Some(flag) = message.flag_mut(key) {
                if key.flag_value().is_some_and(|set| value == set.as_bytes()) {
                    *flag = true;
                    flags_set.insert(key);
                } else {
                    flags_ignored.insert(key);
                }
            } else if !seen.contains(key) {
                seen.insert(key);
                if !message.set_value(key, value) {
                    message.ignored.insert(key);
                }
            }
        }
        if end == rest.len() {
            break;
        }
        rest = &rest[end + 1..];
        offset += end + 1;
    }
    // (was `message.ignored.0 |= flags_ignored.0 & !flags_set.0;`: the field is private)
    for key in flags_ignored.iter() {
        if !flags_set.contains(key) {
            message.ignored.insert(key);
        }
    }
    Ok(message)
}

impl<'a> Message<'a> {
    /// The field of a flag key; `None` for a value key.
    fn flag_mut(&mut self, key: Key) -> Option<&mut bool> {
        Some(match key {
            Key::Ready => &mut self.ready,
            Key::Reloading => &mut self.reloading,
            Key::Stopping => &mut self.stopping,
            Key::MainPidFd => &mut self.main_pid_fd,
            Key::RestartReset => &mut self.restart_reset,
            Key::FdStore => &mut self.fd_store,
            Key::FdStoreRemove => &mut self.fd_store_remove,
            Key::FdPoll => &mut self.fd_poll_disabled,
            Key::Barrier => &mut self.barrier,
            _ => return None,
        })
    }

    /// Stores the value of a value key; `false` when the value is invalid.
    fn set_value(&mut self, key: Key, value: &'a [u8]) -> bool {
        fn set<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
            let valid = value.is_some();
            *slot = value;
            valid
        }
        match key {
            Key::MonotonicUsec => set(&mut self.monotonic_usec, parse_u64(value)),
            Key::Status => set(
                &mut self.status,
                str::from_utf8(value)
                    .ok()
                    .filter(|s| s.len() <= MAX_STATUS_LEN),
            ),
            Key::NotifyAccess => set(
                &mut self.notify_access,
                match value {
                    b"none" => Some(NotifyAccess::None),
                    b"main" => Some(NotifyAccess::Main),
                    b"exec" => Some(NotifyAccess::Exec),
                    b"all" => Some(NotifyAccess::All),
                    _ => None,
                },
            ),
            Key::Errno => set(
                &mut self.errno,
                parse_u64(value)
                    .filter(|&n| n <= 4095)
                    .and_then(|n| u16::try_from(n).ok()),
            ),
            Key::BusError => set(&mut self.bus_error, error_name(value)),
            Key::VarlinkError => set(&mut self.varlink_error, error_name(value)),
            Key::ExitStatus => set(
                &mut self.exit_status,
                parse_u64(value).and_then(|n| u8::try_from(n).ok()),
            ),
            Key::MainPid => set(
                &mut self.main_pid,
                parse_u64(value)
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|&pid| pid > 0),
            ),
            Key::MainPidFdId => set(&mut self.main_pid_fd_id, parse_u64(value)),
            Key::Watchdog => set(
                &mut self.watchdog,
                match value {
                    b"1" => Some(Watchdog::Ping),
                    b"trigger" => Some(Watchdog::Trigger),
                    _ => None,
                },
            ),
            Key::WatchdogUsec => set(&mut self.watchdog_usec, parse_u64(value)),
            Key::ExtendTimeoutUsec => set(&mut self.extend_timeout_usec, parse_u64(value)),
            Key::FdName => set(
                &mut self.fd_name,
                ascii_in_class(value, 0..=255, GRAPHIC | SPACE).filter(|s| !s.contains(':')),
            ),
            Key::SignalsLevel => set(
                &mut self.signals_level,
                parse_u64(value).and_then(|n| u32::try_from(n).ok()),
            ),
            Key::MachineId => set(
                &mut self.machine_id,
                ascii_in_class(value, 32..=32, LOWER_HEX),
            ),
            Key::Hostname => set(
                &mut self.hostname,
                text(value, 64).filter(|s| !s.is_empty()),
            ),
            Key::UnitActive => set(&mut self.unit_active, unit_name(value)),
            Key::UnitInactive => set(&mut self.unit_inactive, unit_name(value)),
            Key::Shutdown => set(&mut self.shutdown, ascii_in_class(value, 1..=64, GRAPHIC)),
            Key::RebootParameter => set(&mut self.reboot_parameter, text(value, 255)),
            // Flags are set through `flag_mut`.
            _ => false,
        }
    }
}

/// An unsigned decimal that fits in u64: digits only, no sign, no spaces (`safe_atou64()`
/// rejects a `-`; notifyhub also rejects the leading spaces `strtoull()` would skip).
fn parse_u64(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 20 {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &b| {
        let digit = u64::from(b.checked_sub(b'0').filter(|d| *d < 10)?);
        acc.checked_mul(10)?.checked_add(digit)
    })
}

/// `value` as text when its length is in `len` and every byte is in `class` (all classes are
/// ASCII, so the UTF-8 check cannot fail).
fn ascii_in_class(value: &[u8], len: core::ops::RangeInclusive<usize>, class: u8) -> Option<&str> {
    if len.contains(&value.len()) && all_in_class(value, class) {
        str::from_utf8(value).ok()
    } else {
        None
    }
}

/// UTF-8 of at most `max` bytes without control characters.
fn text(value: &[u8], max: usize) -> Option<&str> {
    str::from_utf8(value)
        .ok()
        .filter(|s| s.len() <= max && !s.chars().any(char::is_control))
}

/// A D-Bus or Varlink error name: 1 to 255 printable ASCII characters without spaces.
fn error_name(value: &[u8]) -> Option<&str> {
    ascii_in_class(value, 1..=255, GRAPHIC)
}

/// Whether `name` is a plausible unit name: 2 to 255 bytes of `[A-Za-z0-9:_.\\@-]` with a `.`
/// before a suffix, not starting with `.` (after `unit_name_is_valid()`, `src/basic/unit-name.c`,
/// which allows the same characters and length). Used to keep guest-supplied unit names sane.
pub fn is_valid_unit_name(name: &str) -> bool {
    is_unit_name(name.as_bytes())
}

/// `value` as text when it is a valid unit name ([`is_valid_unit_name`]).
fn unit_name(value: &[u8]) -> Option<&str> {
    if is_unit_name(value) {
        // Unit name bytes are ASCII: this cannot fail.
        str::from_utf8(value).ok()
    } else {
        None
    }
}

/// [`is_valid_unit_name`] on bytes, in one pass: the class check and the position of the last dot.
fn is_unit_name(bytes: &[u8]) -> bool {
    let mut last_dot = None;
    for (i, &b) in bytes.iter().enumerate() {
        if !is_class(b, UNIT_NAME) {
            return false;
        }
        if b == b'.' {
            last_dot = Some(i);
        }
    }
    (2..=255).contains(&bytes.len())
        && bytes[0] != b'.'
        && last_dot.is_some_and(|dot| dot + 1 < bytes.len())
}

/// Byte classes of [`BYTE_CLASSES`], one bit each.
const UNIT_NAME: u8 = 1;
/// `is_ascii_graphic()`: `!` to `~`.
const GRAPHIC: u8 = 2;
/// `0-9a-f`.
const LOWER_HEX: u8 = 4;
/// A decimal digit.
const DIGIT: u8 = 8;
/// ` `.
const SPACE: u8 = 16;

/// The classes of every byte value: one table load per byte instead of a chain of range compares
/// (validation runs over every value of every datagram).
const BYTE_CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let mut class = 0;
        if c.is_ascii_alphanumeric() || matches!(c, b':' | b'_' | b'.' | b'\\' | b'@' | b'-') {
            class |= UNIT_NAME;
        }
        if c.is_ascii_graphic() {
            class |= GRAPHIC;
        }
        if matches!(c, b'0'..=b'9' | b'a'..=b'f') {
            class |= LOWER_HEX;
        }
        if c.is_ascii_digit() {
            class |= DIGIT;
        }
        if c == b' ' {
            class |= SPACE;
        }
        table[b] = class;
        b += 1;
    }
    table
};

/// Whether byte `b` is in `class` (one of the class bits above).
#[inline]
fn is_class(b: u8, class: u8) -> bool {
    BYTE_CLASSES[usize::from(b)] & class != 0
}

/// Whether every byte of `value` is in `class`.
#[inline]
fn all_in_class(value: &[u8], class: u8) -> bool {
    value.iter().all(|&b| is_class(b, class))
}

#[cfg(feature = "serde")]
#[allow(clippy::trivially_copy_pass_by_ref)]
fn keyset_is_empty(set: &KeySet) -> bool {
    set.is_empty()
}

/// The current parser's `Message` in the reference's shape, field for field, to compare with
/// `assert_eq!`.
pub fn from_current<'a>(m: &notifyhub_core::Message<'a>) -> Message<'a> {
    Message {
        payload: m.payload(),
        ready: m.ready,
        reloading: m.reloading,
        stopping: m.stopping,
        monotonic_usec: m.monotonic_usec,
        status: m.status,
        notify_access: m.notify_access,
        errno: m.errno,
        bus_error: m.bus_error,
        varlink_error: m.varlink_error,
        exit_status: m.exit_status,
        main_pid: m.main_pid,
        main_pid_fd_id: m.main_pid_fd_id,
        main_pid_fd: m.main_pid_fd,
        watchdog: m.watchdog,
        watchdog_usec: m.watchdog_usec,
        extend_timeout_usec: m.extend_timeout_usec,
        restart_reset: m.restart_reset,
        fd_store: m.fd_store,
        fd_store_remove: m.fd_store_remove,
        fd_name: m.fd_name,
        fd_poll_disabled: m.fd_poll_disabled,
        barrier: m.barrier,
        signals_level: m.signals_level,
        machine_id: m.machine_id,
        hostname: m.hostname,
        unit_active: m.unit_active,
        unit_inactive: m.unit_inactive,
        shutdown: m.shutdown,
        reboot_parameter: m.reboot_parameter,
        ignored: m.ignored,
    }
}
