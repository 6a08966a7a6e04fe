//! Parsing one sd_notify datagram into a [`Message`], without copying.
//!
//! The rules follow systemd's own receivers (`../shared/protocol.md` §3):
//! `notify_recv_with_fds_strv()` in `src/shared/notify-recv.c` (size and NUL rules),
//! `strv_split_newlines()` in `src/basic/strv.c` (line splitting) and
//! `service_notify_message()` in `src/core/service.c` (what each assignment means).

use core::fmt;
use core::str;

/// The largest datagram systemd accepts: `NOTIFY_BUFFER_MAX` = 4096 bytes
/// (`src/basic/constants.h`). A longer one is dropped whole, never truncated.
pub const MAX_DATAGRAM_LEN: usize = 4096;

/// The longest `STATUS=` value systemd keeps: 16 KiB (`STATUS_TEXT_MAX`, `src/core/service.c`).
/// A datagram is at most 4 KiB, so over AF_UNIX this never triggers; it is kept for other inputs.
pub const MAX_STATUS_LEN: usize = 16 * 1024;

/// Why a datagram was rejected as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Longer than [`MAX_DATAGRAM_LEN`] bytes (`notify-recv.c`: MSG_TRUNC drops the datagram).
    #[error("datagram of {len} bytes exceeds the {MAX_DATAGRAM_LEN}-byte limit")]
    TooLarge {
        /// Length of the datagram in bytes.
        len: usize,
    },
    /// A NUL byte before the end (`notify-recv.c`: only one trailing NUL is tolerated).
    #[error("embedded NUL byte at offset {offset}")]
    EmbeddedNul {
        /// Offset of the first NUL byte from the start of the datagram.
        offset: usize,
    },
}

/// Every assignment key that systemd defines for `sd_notify(3)` and for PID 1's messages to its
/// supervisor (`../shared/protocol.md` §4–§5). Other keys are kept as data, not parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum Key {
    /// `READY=1`: startup finished (`sd_notify(3)`).
    Ready,
    /// `RELOADING=1`: reload started; READY=1 follows (v217).
    Reloading,
    /// `STOPPING=1`: shutdown began (v217).
    Stopping,
    /// `MONOTONIC_USEC=`: CLOCK_MONOTONIC µs of a reload start (v253).
    MonotonicUsec,
    /// `STATUS=`: one line of UTF-8 progress text.
    Status,
    /// `NOTIFYACCESS=none|main|exec|all` (v254).
    NotifyAccess,
    /// `ERRNO=`: a decimal errno.
    Errno,
    /// `BUSERROR=`: a D-Bus error name.
    BusError,
    /// `VARLINKERROR=`: a Varlink error name (v257).
    VarlinkError,
    /// `EXIT_STATUS=`: an exit status (v254).
    ExitStatus,
    /// `MAINPID=`: the main process' pid.
    MainPid,
    /// `MAINPIDFDID=`: the inode ID of the main process' pidfd (v257).
    MainPidFdId,
    /// `MAINPIDFD=1`: the single fd sent is a pidfd of the main process (v257).
    MainPidFd,
    /// `WATCHDOG=1` or `WATCHDOG=trigger` (v243).
    Watchdog,
    /// `WATCHDOG_USEC=`: a new watchdog interval in µs.
    WatchdogUsec,
    /// `EXTEND_TIMEOUT_USEC=`: extend the current timeout by µs (v236).
    ExtendTimeoutUsec,
    /// `RESTART_RESET=1` (v258).
    RestartReset,
    /// `FDSTORE=1`: store the fds sent (v219).
    FdStore,
    /// `FDSTOREREMOVE=1`: remove stored fds named by FDNAME (v236).
    FdStoreRemove,
    /// `FDNAME=`: name of the fds sent.
    FdName,
    /// `FDPOLL=0`: do not poll the stored fds (v246).
    FdPoll,
    /// `BARRIER=1`: synchronisation point; exactly one fd is sent with it (v246).
    Barrier,
    /// `X_SYSTEMD_SIGNALS_LEVEL=`: PID 1's signal handlers are installed (v256).
    SignalsLevel,
    /// `X_SYSTEMD_MACHINE_ID=`: the guest's machine ID (v256).
    MachineId,
    /// `X_SYSTEMD_HOSTNAME=`: the guest's initial hostname (v256).
    Hostname,
    /// `X_SYSTEMD_UNIT_ACTIVE=`: a target became active (v256).
    UnitActive,
    /// `X_SYSTEMD_UNIT_INACTIVE=`: a target became inactive (v256).
    UnitInactive,
    /// `X_SYSTEMD_SHUTDOWN=`: `systemd-shutdown` is about to reboot, power off, … (v256).
    Shutdown,
    /// `X_SYSTEMD_REBOOT_PARAMETER=`: the argument of the reboot (v256).
    RebootParameter,
}

impl Key {
    /// Every key, in declaration order.
    pub const ALL: [Self; 29] = [
        Self::Ready,
        Self::Reloading,
        Self::Stopping,
        Self::MonotonicUsec,
        Self::Status,
        Self::NotifyAccess,
        Self::Errno,
        Self::BusError,
        Self::VarlinkError,
        Self::ExitStatus,
        Self::MainPid,
        Self::MainPidFdId,
        Self::MainPidFd,
        Self::Watchdog,
        Self::WatchdogUsec,
        Self::ExtendTimeoutUsec,
        Self::RestartReset,
        Self::FdStore,
        Self::FdStoreRemove,
        Self::FdName,
        Self::FdPoll,
        Self::Barrier,
        Self::SignalsLevel,
        Self::MachineId,
        Self::Hostname,
        Self::UnitActive,
        Self::UnitInactive,
        Self::Shutdown,
        Self::RebootParameter,
    ];

    /// The key as it appears on the wire, e.g. `"X_SYSTEMD_UNIT_ACTIVE"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ready => "READY",
            Self::Reloading => "RELOADING",
            Self::Stopping => "STOPPING",
            Self::MonotonicUsec => "MONOTONIC_USEC",
            Self::Status => "STATUS",
            Self::NotifyAccess => "NOTIFYACCESS",
            Self::Errno => "ERRNO",
            Self::BusError => "BUSERROR",
            Self::VarlinkError => "VARLINKERROR",
            Self::ExitStatus => "EXIT_STATUS",
            Self::MainPid => "MAINPID",
            Self::MainPidFdId => "MAINPIDFDID",
            Self::MainPidFd => "MAINPIDFD",
            Self::Watchdog => "WATCHDOG",
            Self::WatchdogUsec => "WATCHDOG_USEC",
            Self::ExtendTimeoutUsec => "EXTEND_TIMEOUT_USEC",
            Self::RestartReset => "RESTART_RESET",
            Self::FdStore => "FDSTORE",
            Self::FdStoreRemove => "FDSTOREREMOVE",
            Self::FdName => "FDNAME",
            Self::FdPoll => "FDPOLL",
            Self::Barrier => "BARRIER",
            Self::SignalsLevel => "X_SYSTEMD_SIGNALS_LEVEL",
            Self::MachineId => "X_SYSTEMD_MACHINE_ID",
            Self::Hostname => "X_SYSTEMD_HOSTNAME",
            Self::UnitActive => "X_SYSTEMD_UNIT_ACTIVE",
            Self::UnitInactive => "X_SYSTEMD_UNIT_INACTIVE",
            Self::Shutdown => "X_SYSTEMD_SHUTDOWN",
            Self::RebootParameter => "X_SYSTEMD_REBOOT_PARAMETER",
        }
    }

    /// The key named `name` (case-sensitive, as systemd compares), or `None` for other keys.
    #[inline]
    pub fn from_name(name: &[u8]) -> Option<Self> {
        Self::lookup(name)
    }

    /// [`Key::from_name`], always inlined into the parser's loop. A match on byte strings
    /// compiles to a length switch and a few compares (a perfect hash of length, first and last
    /// byte with word compares measured the same, issue #8).
    #[inline(always)]
    fn lookup(name: &[u8]) -> Option<Self> {
        Some(match name {
            b"READY" => Self::Ready,
            b"RELOADING" => Self::Reloading,
            b"STOPPING" => Self::Stopping,
            b"MONOTONIC_USEC" => Self::MonotonicUsec,
            b"STATUS" => Self::Status,
            b"NOTIFYACCESS" => Self::NotifyAccess,
            b"ERRNO" => Self::Errno,
            b"BUSERROR" => Self::BusError,
            b"VARLINKERROR" => Self::VarlinkError,
            b"EXIT_STATUS" => Self::ExitStatus,
            b"MAINPID" => Self::MainPid,
            b"MAINPIDFDID" => Self::MainPidFdId,
            b"MAINPIDFD" => Self::MainPidFd,
            b"WATCHDOG" => Self::Watchdog,
            b"WATCHDOG_USEC" => Self::WatchdogUsec,
            b"EXTEND_TIMEOUT_USEC" => Self::ExtendTimeoutUsec,
            b"RESTART_RESET" => Self::RestartReset,
            b"FDSTORE" => Self::FdStore,
            b"FDSTOREREMOVE" => Self::FdStoreRemove,
            b"FDNAME" => Self::FdName,
            b"FDPOLL" => Self::FdPoll,
            b"BARRIER" => Self::Barrier,
            b"X_SYSTEMD_SIGNALS_LEVEL" => Self::SignalsLevel,
            b"X_SYSTEMD_MACHINE_ID" => Self::MachineId,
            b"X_SYSTEMD_HOSTNAME" => Self::Hostname,
            b"X_SYSTEMD_UNIT_ACTIVE" => Self::UnitActive,
            b"X_SYSTEMD_UNIT_INACTIVE" => Self::UnitInactive,
            b"X_SYSTEMD_SHUTDOWN" => Self::Shutdown,
            b"X_SYSTEMD_REBOOT_PARAMETER" => Self::RebootParameter,
            _ => return None,
        })
    }

    /// For a flag key, the one value that sets it (`READY=1`, `FDPOLL=0`, …): systemd matches
    /// flags as whole lines (`strv_contains()`), so any other value does nothing.
    pub const fn flag_value(self) -> Option<&'static str> {
        match self {
            Self::Ready
            | Self::Reloading
            | Self::Stopping
            | Self::MainPidFd
            | Self::RestartReset
            | Self::FdStore
            | Self::FdStoreRemove
            | Self::Barrier => Some("1"),
            Self::FdPoll => Some("0"),
            _ => None,
        }
    }

    const fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for KeySet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter().map(Key::name))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Key`]s, e.g. the keys of a message whose value was invalid and so ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeySet(u32);

impl KeySet {
    /// The empty set.
    pub const EMPTY: Self = Self(0);

    /// Whether `key` is in the set.
    pub const fn contains(self, key: Key) -> bool {
        self.0 & key.bit() != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    #[cfg(feature = "serde")]
    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
    fn is_none(&self) -> bool {
        self.is_empty()
    }

    /// Adds `key`.
    pub fn insert(&mut self, key: Key) {
        self.0 |= key.bit();
    }

    /// The keys in the set, in [`Key::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Key> {
        Key::ALL.into_iter().filter(move |key| self.contains(*key))
    }
}

/// `WATCHDOG=` values (`sd_notify(3)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Watchdog {
    /// `WATCHDOG=1`: keep-alive ping.
    Ping,
    /// `WATCHDOG=trigger`: the service asks to be treated as if its watchdog expired (v243).
    Trigger,
}

/// `NOTIFYACCESS=` values (`sd_notify(3)`, v254).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum NotifyAccess {
    /// `none`
    None,
    /// `main`
    Main,
    /// `exec`
    Exec,
    /// `all`
    All,
}

/// One parsed datagram: the typed value of every known assignment, and the raw lines.
///
/// Built by [`parse`]; borrows the datagram. For each value key the **first** occurrence in the
/// message decides (`strv_find_startswith()` in `service_notify_message()`); when that value is
/// invalid the key is listed in [`Message::ignored`] and left unset, and the message's other keys
/// still apply. Flags are whole lines (`READY=1`; ` READY=1` or `READY=true` set nothing).
///
/// With the `serde` feature it serialises as an object of the keys that were set, named in
/// snake case after their fields (`"ready": true`, `"status": "…"`, `"unit_active": "…"`), plus
/// `"ignored"`: the wire names of ignored keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub struct Message<'a> {
    #[cfg_attr(feature = "serde", serde(skip))]
    payload: &'a [u8],
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
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "KeySet::is_none"))]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub ignored: KeySet,
}

impl<'a> Message<'a> {
    /// The datagram's bytes, without the one trailing NUL that [`parse`] tolerates.
    pub const fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The non-empty lines of the datagram, in order, exactly as sent (see [`lines`]).
    pub fn lines(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        lines(self.payload)
    }

    /// Whether the message only synchronises: every line is `BARRIER=1` (`sd_notify_barrier(3)`,
    /// which `systemd-notify` sends after each message unless `--no-block`). It says nothing of
    /// the sender's state.
    pub fn is_barrier_only(&self) -> bool {
        self.barrier && self.lines().all(|line| line == b"BARRIER=1")
    }

    /// Whether the datagram had no lines at all (a 0-byte message is an empty list).
    pub fn is_empty(&self) -> bool {
        self.lines().next().is_none()
    }
}

/// Splits `payload` like `strv_split_newlines()` (`src/basic/strv.c`): separators are `\n` and
/// `\r`, runs of them collapse, so empty lines and CRLF vanish. Spaces and quotes are kept, and so
/// are backslashes: unlike PID 1 (which strips them), notifyhub keeps every byte, like
/// systemd-vmspawn (`../shared/protocol.md` §3).
pub fn lines(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = payload;
    core::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let end = memchr::memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
            let line = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or_default();
            if !line.is_empty() {
                return Some(line);
            }
        }
    })
}

/// Splits a line at its first `=` into key and value; `None` for a line without `=`
/// (systemd ignores such a line; notifyhub keeps it as data).
pub fn split_assignment(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = memchr::memchr(b'=', line)?;
    Some((&line[..eq], &line[eq + 1..]))
}

/// Parses one datagram as systemd's receivers do (`../shared/protocol.md` §3).
///
/// # Errors
/// [`ParseError::TooLarge`] above [`MAX_DATAGRAM_LEN`] bytes; [`ParseError::EmbeddedNul`] for a
/// NUL byte anywhere but the very end. Nothing else fails: invalid values are listed in
/// [`Message::ignored`], unknown keys and lines without `=` are kept in [`Message::lines`].
#[inline]
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
    // Built where it is returned: a `Message` is a few hundred bytes, and a move is a copy
    // (2% of the parser's instructions on the captures, issue #8).
    let mut parsed = Ok(Message {
        payload,
        ..Message::default()
    });
    let Ok(message) = &mut parsed else {
        // Never taken: `parsed` was built as `Ok` just above.
        return parsed;
    };
    let mut parser = Parser {
        message,
        seen: KeySet::EMPTY,
        flags_set: KeySet::EMPTY,
        flags_ignored: KeySet::EMPTY,
    };
    // One pass finds both the line ends of `lines()` and a NUL byte. (A first pass that proves
    // a datagram printable ASCII, and so one line without NUL, does not pay: memchr finds the
    // line end as fast, and a value still needs `str::from_utf8` to become a `&str`.)
    let mut rest = payload;
    let mut offset = 0;
    loop {
        let end = memchr::memchr3(b'\n', b'\r', 0, rest).unwrap_or(rest.len());
        if rest.get(end) == Some(&0) {
            return Err(ParseError::EmbeddedNul {
                offset: offset + end,
            });
        }
        parser.line(&rest[..end]);
        if end == rest.len() {
            break;
        }
        rest = &rest[end + 1..];
        offset += end + 1;
    }
    parser.finish();
    parsed
}

/// The state of [`parse`] between lines.
struct Parser<'a, 'm> {
    message: &'m mut Message<'a>,
    /// Value keys whose first occurrence has been seen: later ones are ignored (first wins).
    seen: KeySet,
    /// Flags set by some line.
    flags_set: KeySet,
    /// Flag keys with a line that set nothing (`READY=0`).
    flags_ignored: KeySet,
}

impl<'a> Parser<'a, '_> {
    /// Applies one line (without its separator).
    #[inline(always)]
    fn line(&mut self, line: &'a [u8]) {
        let Some(eq) = find_eq_in_key(line) else {
            return;
        };
        let Some(key) = Key::lookup(&line[..eq]) else {
            return;
        };
        let value = &line[eq + 1..];
        if let Some(flag) = self.message.flag_mut(key) {
            if key.flag_value().is_some_and(|set| value == set.as_bytes()) {
                *flag = true;
                self.flags_set.insert(key);
            } else {
                self.flags_ignored.insert(key);
            }
        } else if !self.seen.contains(key) {
            self.seen.insert(key);
            if !self.message.set_value(key, value) {
                self.message.ignored.insert(key);
            }
        }
    }

    /// Lists the flag keys that no line set, though some line named them (`READY=0`).
    fn finish(self) {
        self.message.ignored.0 |= self.flags_ignored.0 & !self.flags_set.0;
    }
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
            Key::FdName => set(&mut self.fd_name, ascii_if(value, 0..=255, is_fd_name_byte)),
            Key::SignalsLevel => set(
                &mut self.signals_level,
                parse_u64(value).and_then(|n| u32::try_from(n).ok()),
            ),
            Key::MachineId => set(&mut self.machine_id, ascii_if(value, 32..=32, is_lower_hex)),
            Key::Hostname => set(&mut self.hostname, text(value, 1, 64)),
            Key::UnitActive => set(&mut self.unit_active, unit_name(value)),
            Key::UnitInactive => set(&mut self.unit_inactive, unit_name(value)),
            Key::Shutdown => set(&mut self.shutdown, ascii_if(value, 1..=64, is_graphic)),
            Key::RebootParameter => set(&mut self.reboot_parameter, text(value, 0, 255)),
            // Flags are set through `flag_mut`.
            _ => false,
        }
    }
}

/// The longest key of [`Key::ALL`]: `X_SYSTEMD_REBOOT_PARAMETER`.
const MAX_KEY_LEN: usize = 26;

/// The position of a line's first `=` when it ends a name short enough to be a [`Key`]
/// (at most [`MAX_KEY_LEN`] bytes); `None` otherwise, and then the line is data only.
#[inline(always)]
fn find_eq_in_key(line: &[u8]) -> Option<usize> {
    const EQ: u64 = u64::from_ne_bytes([b'='; 8]);
    // Word at a time: the lowest byte of `w ^ EQ` that is zero is the first `=` of the word
    // (`has_zero_byte`, the Bit Twiddling Hacks; its false positives lie above a real zero).
    let n = line.len();
    let mut at = 0;
    while at + 8 <= n && at <= MAX_KEY_LEN {
        let word = u64::from_le_bytes(*line[at..].first_chunk::<8>()?) ^ EQ;
        let zero = word.wrapping_sub(LOW_BITS) & !word & HIGH_BITS;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize).filter(|&i| i <= MAX_KEY_LEN);
        }
        at += 8;
    }
    if at > MAX_KEY_LEN {
        return None;
    }
    line[at..]
        .iter()
        .position(|&b| b == b'=')
        .map(|i| at + i)
        .filter(|&i| i <= MAX_KEY_LEN)
}

/// `0x01` in every byte.
const LOW_BITS: u64 = u64::from_ne_bytes([0x01; 8]);
/// `0x80` in every byte.
const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Calls `f` with 16-byte blocks that together hold every byte of `bytes` and nothing else:
/// whole blocks, then the last 16 bytes again (overlapping); a shorter input fills its block
/// with repeats of its own bytes. Fit for "every byte is …" and "some byte is …" questions: a
/// test folded over a block without early exit becomes a few SIMD compares (SSE2 on x86_64) in
/// place of a branch per byte. Values up to 32 bytes, most of them, take no loop.
#[inline(always)]
fn for_blocks(bytes: &[u8], mut f: impl FnMut(&[u8; 16])) {
    let n = bytes.len();
    let mut block = [0u8; 16];
    if n >= 16 {
        let at = |i: usize| bytes.get(i..).and_then(<[u8]>::first_chunk::<16>);
        // Most values are short: two blocks, no loop.
        if n <= 32 {
            if let (Some(first), Some(last)) = (at(0), at(n - 16)) {
                f(first);
                f(last);
            }
            return;
        }
        let mut blocks = bytes.chunks_exact(16);
        for whole in &mut blocks {
            if let Some(whole) = whole.first_chunk::<16>() {
                f(whole);
            }
        }
        if let Some(last) = at(n - 16) {
            f(last);
        }
        return;
    } else if n >= 8 {
        block[..8].copy_from_slice(&bytes[..8]);
        block[8..].copy_from_slice(&bytes[n - 8..]);
    } else if n >= 4 {
        for quarter in block.chunks_exact_mut(8) {
            quarter[..4].copy_from_slice(&bytes[..4]);
            quarter[4..].copy_from_slice(&bytes[n - 4..]);
        }
    } else if n > 0 {
        block = [bytes[0]; 16];
        block[1] = bytes[n / 2];
        block[2] = bytes[n - 1];
    } else {
        return;
    }
    f(&block);
}

/// Whether every byte of `bytes` satisfies `test`.
#[inline(always)]
fn all_bytes(bytes: &[u8], test: impl Fn(u8) -> bool) -> bool {
    let mut all = true;
    for_blocks(bytes, |block| {
        all &= block.iter().fold(true, |all, &b| all & test(b));
    });
    all
}

/// ` ` to `~`.
#[inline(always)]
const fn is_printable(b: u8) -> bool {
    b.wrapping_sub(b' ') <= b'~' - b' '
}

/// `is_ascii_graphic()`: `!` to `~`.
#[inline(always)]
const fn is_graphic(b: u8) -> bool {
    b.wrapping_sub(b'!') <= b'~' - b'!'
}

/// `0-9a-f`.
#[inline(always)]
const fn is_lower_hex(b: u8) -> bool {
    (b.wrapping_sub(b'0') < 10) | (b.wrapping_sub(b'a') < 6)
}

/// A byte of an fd name (`fdname_is_valid()`): printable ASCII but `:`.
#[inline(always)]
const fn is_fd_name_byte(b: u8) -> bool {
    is_printable(b) & (b != b':')
}

/// A byte of a unit name (`unit_name_is_valid()`): `[A-Za-z0-9:_.\\@-]`.
#[inline(always)]
const fn is_unit_name_byte(b: u8) -> bool {
    ((b | 0x20).wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'0') < 10)
        | (b == b':')
        | (b == b'_')
        | (b == b'.')
        | (b == b'\\')
        | (b == b'@')
        | (b == b'-')
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

/// `value` as text when its length is in `len` and every byte passes `test` (an ASCII class, so
/// the UTF-8 check cannot fail).
#[inline(always)]
fn ascii_if(
    value: &[u8],
    len: core::ops::RangeInclusive<usize>,
    test: impl Fn(u8) -> bool,
) -> Option<&str> {
    if len.contains(&value.len()) && all_bytes(value, test) {
        str::from_utf8(value).ok()
    } else {
        None
    }
}

/// UTF-8 of `min` to `max` bytes without control characters.
#[inline(always)]
fn text(value: &[u8], min: usize, max: usize) -> Option<&str> {
    if !(min..=max).contains(&value.len()) {
        return None;
    }
    let text = str::from_utf8(value).ok()?;
    // Printable ASCII (the common case, checked a block at a time) has no control character;
    // anything else is looked at a character at a time.
    (all_bytes(value, is_printable) || !text.chars().any(char::is_control)).then_some(text)
}

/// A D-Bus or Varlink error name: 1 to 255 printable ASCII characters without spaces.
fn error_name(value: &[u8]) -> Option<&str> {
    ascii_if(value, 1..=255, is_graphic)
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

/// [`is_valid_unit_name`] on bytes, in one pass over blocks. "The last `.` is followed by a
/// suffix" is "there is a `.`, and the last byte is not one".
#[inline(always)]
fn is_unit_name(bytes: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !(2..=255).contains(&bytes.len()) || first == b'.' || last == b'.' {
        return false;
    }
    let (mut all_valid, mut any_dot) = (true, false);
    for_blocks(bytes, |block| {
        let (valid, dot) = block.iter().fold((true, false), |(valid, dot), &b| {
            (valid & is_unit_name_byte(b), dot | (b == b'.'))
        });
        all_valid &= valid;
        any_dot |= dot;
    });
    all_valid && any_dot
}

#[cfg(test)]
mod tests {
    use alloc::format;
    use alloc::string::String;
    use alloc::vec;

    use super::*;

    /// The branch-free byte predicates say exactly what their definitions say, for every byte.
    #[test]
    fn byte_predicates_match_their_definitions() {
        for b in 0..=u8::MAX {
            let unit =
                b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'\\' | b'@' | b'-');
            assert_eq!(is_unit_name_byte(b), unit, "unit name byte {b:#04x}");
            assert_eq!(is_graphic(b), b.is_ascii_graphic(), "graphic {b:#04x}");
            assert_eq!(
                is_printable(b),
                b.is_ascii_graphic() || b == b' ',
                "printable {b:#04x}"
            );
            assert_eq!(
                is_lower_hex(b),
                matches!(b, b'0'..=b'9' | b'a'..=b'f'),
                "hex {b:#04x}"
            );
            assert_eq!(
                is_fd_name_byte(b),
                (b.is_ascii_graphic() || b == b' ') && b != b':',
                "fd name byte {b:#04x}"
            );
        }
    }

    /// `all_bytes` sees every byte and nothing else, at every length and position.
    #[test]
    fn all_bytes_sees_every_byte() {
        for n in 0..=100 {
            let clean = vec![b'a'; n];
            assert!(all_bytes(&clean, |b| b == b'a'), "length {n}");
            for i in 0..n {
                let mut odd = clean.clone();
                odd[i] = b'!';
                assert!(
                    !all_bytes(&odd, |b| b == b'a'),
                    "length {n}, odd byte at {i}"
                );
            }
        }
    }

    /// The one-pass unit name check agrees with its definition (the pre-table version).
    #[test]
    fn unit_name_check_matches_its_definition() {
        fn definition(name: &str) -> bool {
            let valid_chars = name.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'\\' | b'@' | b'-')
            });
            (2..=255).contains(&name.len())
                && valid_chars
                && !name.starts_with('.')
                && name.rfind('.').is_some_and(|dot| dot + 1 < name.len())
        }
        let alphabet = ["a", ".", "-", "@", "\\", "é", " ", "target", "x.y"];
        let mut names = vec![
            String::new(),
            "a".repeat(254) + ".t",
            "a".repeat(255) + ".t",
        ];
        // Every string of up to 4 pieces of the alphabet.
        let mut frontier = vec![String::new()];
        for _ in 0..4 {
            frontier = frontier
                .iter()
                .flat_map(|s| alphabet.iter().map(move |p| format!("{s}{p}")))
                .collect();
            names.extend(frontier.iter().cloned());
        }
        for name in &names {
            assert_eq!(is_valid_unit_name(name), definition(name), "{name:?}");
        }
    }
}
