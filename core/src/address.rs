//! `$NOTIFY_SOCKET` addresses, parsed with systemd's rules (`../shared/protocol.md` §1).

use alloc::string::String;
use core::fmt;
use core::str::FromStr;

/// The longest address string of an `AF_UNIX` notify socket, in bytes: `sun_path` holds 108
/// bytes including the terminating NUL (`sockaddr_un_set_path()`, `src/basic/socket-util.c`);
/// an abstract `@name` counts its `@`. A longer path fails with `ENAMETOOLONG`, with no fallback.
pub const MAX_UNIX_ADDRESS_LEN: usize = 107;

/// `VMADDR_CID_ANY`: accepted by the parser (written `any`, `-1` or left empty) but refused by the
/// sender, which needs a real peer (`pid_notify_with_fds_internal()`, `sd-daemon.c`).
pub const VMADDR_CID_ANY: u32 = u32::MAX;

/// `VMADDR_PORT_ANY`: never a valid port in an address (`vsock_parse_port()`).
pub const VMADDR_PORT_ANY: u32 = u32::MAX;

/// The socket type an `AF_VSOCK` address asks for (type prefixes since systemd v254).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VsockType {
    /// `vsock:`: the sender tries `SOCK_DGRAM`, then `SOCK_SEQPACKET` only if `socket()` fails,
    /// then `SOCK_STREAM`; a failed `connect()` never falls back.
    Auto,
    /// `vsock-stream:` (what systemd-vmspawn and mkosi hand out).
    Stream,
    /// `vsock-dgram:`
    Dgram,
    /// `vsock-seqpacket:`
    Seqpacket,
}

impl VsockType {
    /// The address prefix, e.g. `"vsock-stream"`.
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Auto => "vsock",
            Self::Stream => "vsock-stream",
            Self::Dgram => "vsock-dgram",
            Self::Seqpacket => "vsock-seqpacket",
        }
    }
}

/// A parsed `$NOTIFY_SOCKET` (or credential `vmm.notify_socket`) value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NotifyAddress {
    /// `/path`: an `AF_UNIX` `SOCK_DGRAM` socket in the file system.
    Path(String),
    /// `@name`: an `AF_UNIX` socket in the abstract namespace; holds `name` without the `@`
    /// (on the wire the `@` becomes a NUL byte and no trailing NUL is sent).
    Abstract(String),
    /// `vsock[-TYPE]:CID:PORT`.
    Vsock {
        /// The socket type asked for.
        socket_type: VsockType,
        /// The peer's context ID: 0 hypervisor, 1 local, 2 host, or a guest's CID.
        cid: u32,
        /// The peer's port.
        port: u32,
    },
}

/// Why a string is not a notify socket address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// Neither `/`, `@` nor a `vsock` prefix (`EPROTO` in systemd).
    #[error(
        "not a notify socket address: expected /path, @abstract or vsock[-stream|-dgram|-seqpacket]:CID:PORT"
    )]
    UnknownForm,
    /// A path or abstract name of fewer than 2 bytes, e.g. `/` or `@`.
    #[error("socket path is too short")]
    TooShort,
    /// A path or abstract name longer than [`MAX_UNIX_ADDRESS_LEN`] bytes (`ENAMETOOLONG`).
    #[error("socket path is {0} bytes long, the limit is {MAX_UNIX_ADDRESS_LEN}")]
    TooLong(usize),
    /// A NUL byte inside a path.
    #[error("socket path holds a NUL byte")]
    Nul,
    /// `vsock:` without `:PORT`.
    #[error("vsock address lacks :PORT")]
    MissingPort,
    /// The CID is not `hypervisor`, `local`, `host`, `any` or an unsigned 32-bit number.
    #[error("invalid vsock CID")]
    BadCid,
    /// The port is not an unsigned 32-bit number below `VMADDR_PORT_ANY`.
    #[error("invalid vsock port")]
    BadPort,
}

impl FromStr for NotifyAddress {
    type Err = AddressError;

    /// Parses like `socket_address_parse_unix()` then `socket_address_parse_vsock()`
    /// (`src/basic/socket-util.c`). Numbers are read like `safe_atou()`: base 0 (`0x10`,
    /// `0o20`, `0b10000` and `020` all mean 16), leading white space and `+` skipped, any
    /// trailing character (a trailing newline too) rejected.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with(['/', '@']) {
            if s.len() < 2 {
                return Err(AddressError::TooShort);
            }
            if s.len() > MAX_UNIX_ADDRESS_LEN {
                return Err(AddressError::TooLong(s.len()));
            }
            if s.contains('\0') {
                return Err(AddressError::Nul);
            }
            return Ok(match s.strip_prefix('@') {
                Some(name) => Self::Abstract(name.into()),
                None => Self::Path(s.into()),
            });
        }
        let (socket_type, rest) = [
            VsockType::Auto,
            VsockType::Dgram,
            VsockType::Seqpacket,
            VsockType::Stream,
        ]
        .into_iter()
        .find_map(|t| Some((t, s.strip_prefix(t.prefix())?.strip_prefix(':')?)))
        .ok_or(AddressError::UnknownForm)?;
        let (cid, port) = rest.split_once(':').ok_or(AddressError::MissingPort)?;
        let port = parse_unsigned(port)
            .filter(|&port| port != VMADDR_PORT_ANY)
            .ok_or(AddressError::BadPort)?;
        let cid = match cid {
            "" | "any" | "-1" => VMADDR_CID_ANY,
            "hypervisor" => 0,
            "local" => 1,
            "host" => 2,
            number => parse_unsigned(number).ok_or(AddressError::BadCid)?,
        };
        Ok(Self::Vsock {
            socket_type,
            cid,
            port,
        })
    }
}

impl fmt::Display for NotifyAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(path) => f.write_str(path),
            Self::Abstract(name) => write!(f, "@{name}"),
            Self::Vsock {
                socket_type,
                cid,
                port,
            } => write!(f, "{}:{cid}:{port}", socket_type.prefix()),
        }
    }
}

/// An unsigned 32-bit number as systemd's `safe_atou()` reads it: leading white space and one
/// `+` skipped (`-` only for zero), then base 0 as `strtoul()` with systemd's `0o` and `0b`
/// prefixes (`mangle_base()`, `src/basic/parse-util.c`), and nothing after the digits.
fn parse_unsigned(s: &str) -> Option<u32> {
    let s = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, s) = match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (16, hex)
    } else if let Some(octal) = s.strip_prefix("0o") {
        (8, octal)
    } else if let Some(binary) = s.strip_prefix("0b") {
        (2, binary)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    // from_str_radix would accept a sign of its own; digits must be digits only.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let value = u32::from_str_radix(digits, radix).ok()?;
    (!negative || value == 0).then_some(value)
}
