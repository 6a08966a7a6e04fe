//! Socket activation: the sockets a service manager passes to `notifyhub serve`.
//!
//! systemd (a `.socket` unit) or any tool that speaks the same protocol (`systemd-socket-activate`,
//! `systemfd`) binds the sockets, starts the hub with them as fds 3, 4, … and says so in
//! `LISTEN_FDS` (how many), `LISTEN_PID` (for which process) and `LISTEN_FDNAMES` (their
//! `FileDescriptorName=`s, `:`-separated), as `sd_listen_fds(3)` describes. The `listenfd` crate
//! reads the first two and checks each socket's family and type (`getsockname`, `SO_TYPE`); the
//! names decide what each socket is for:
//!
//! | name | socket | replaces |
//! |---|---|---|
//! | `http` | listening TCP (`AF_INET`, `AF_INET6`) or `AF_UNIX` `SOCK_STREAM` | `--listen` |
//! | `vsock` | listening `AF_VSOCK` `SOCK_STREAM` | `--vsock-port` |
//! | `vsock-seqpacket` | listening `AF_VSOCK` `SOCK_SEQPACKET` | `--vsock-seqpacket-port` |
//! | `notify-NAME` | `AF_UNIX` `SOCK_DGRAM` bound to a path | `--guest NAME`: guest `NAME`'s notify socket |
//!
//! Anything else (an unknown or repeated name, a socket of the wrong kind, a stream socket that
//! does not listen, a datagram socket without a path) fails the start with an error that names
//! the fd. Without `LISTEN_FDS` (or with a `LISTEN_PID` of another process) the hub binds
//! everything itself. The variables are removed from the environment either way, so that no
//! child inherits them.

use std::ffi::c_int;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};

use listenfd::ListenFd;
use notifyhub_core::{GuestNameError, validate_guest_name};
use rustix::net::{AddressFamily, SocketType};

/// The first inherited fd (`SD_LISTEN_FDS_START`, `sd-daemon.h`).
pub const LISTEN_FDS_START: c_int = 3;

/// The name of the inherited HTTP listener.
pub const HTTP: &str = "http";
/// The name of the inherited kernel vsock `SOCK_STREAM` listener.
pub const VSOCK: &str = "vsock";
/// The name of the inherited kernel vsock `SOCK_SEQPACKET` listener.
pub const VSOCK_SEQPACKET: &str = "vsock-seqpacket";
/// The prefix of a guest's notify socket's name: `notify-web1` is guest `web1`'s.
pub const NOTIFY_PREFIX: &str = "notify-";

/// What an inherited fd is for, by its name (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// `http`: the HTTP listener.
    Http,
    /// `vsock`: the kernel vsock `SOCK_STREAM` listener.
    VsockStream,
    /// `vsock-seqpacket`: the kernel vsock `SOCK_SEQPACKET` listener.
    VsockSeqpacket,
    /// `notify-NAME`: guest `NAME`'s notify socket.
    Notify(String),
}

impl Role {
    /// The role of the fd named `name`.
    ///
    /// # Errors
    /// [`ActivationError::UnknownName`] for a name that is none of the above,
    /// [`ActivationError::GuestName`] for `notify-NAME` with a `NAME` that
    /// [`validate_guest_name`] refuses.
    pub fn from_name(fd: c_int, name: &str) -> Result<Self, ActivationError> {
        match name {
            HTTP => Ok(Self::Http),
            VSOCK => Ok(Self::VsockStream),
            VSOCK_SEQPACKET => Ok(Self::VsockSeqpacket),
            _ => match name.strip_prefix(NOTIFY_PREFIX) {
                Some(guest) => match validate_guest_name(guest) {
                    Ok(()) => Ok(Self::Notify(guest.to_owned())),
                    Err(source) => Err(ActivationError::GuestName {
                        fd,
                        name: guest.to_owned(),
                        source,
                    }),
                },
                None => Err(ActivationError::UnknownName {
                    fd,
                    name: name.to_owned(),
                }),
            },
        }
    }
}

/// Why the inherited sockets cannot be used. Each is fatal: the hub does not start half-bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    /// `LISTEN_FDNAMES` names a different number of fds than `LISTEN_FDS` passes.
    #[error("LISTEN_FDNAMES has {names} names for the {fds} fds of LISTEN_FDS")]
    NameCount {
        /// Names in `LISTEN_FDNAMES`.
        names: usize,
        /// Fds in `LISTEN_FDS`.
        fds: usize,
    },
    /// An fd's name is none the hub takes.
    #[error(
        "inherited fd {fd} is named {name:?}; notifyhub takes \"http\", \"vsock\", \
         \"vsock-seqpacket\" and \"notify-GUEST\" (set FileDescriptorName= in the socket unit)"
    )]
    UnknownName {
        /// The fd.
        fd: c_int,
        /// Its name.
        name: String,
    },
    /// `notify-NAME` with an invalid guest name.
    #[error("inherited fd {fd}: {name:?} is no guest name: {source}")]
    GuestName {
        /// The fd.
        fd: c_int,
        /// The guest name after `notify-`.
        name: String,
        /// What is wrong with it.
        source: GuestNameError,
    },
    /// Two fds have the same name.
    #[error("two inherited fds are named {0:?}; each name may come once")]
    Duplicate(String),
    /// The fd is not the kind of socket its name asks for.
    #[error("inherited fd {fd} ({name:?}) is not {expected}: {reason}")]
    WrongSocket {
        /// The fd.
        fd: c_int,
        /// Its name.
        name: String,
        /// What its name asks for.
        expected: &'static str,
        /// What was found (from `listenfd`, `SO_ACCEPTCONN` or `getsockname`).
        reason: String,
    },
}

/// The HTTP listener a service manager passed.
#[derive(Debug)]
pub enum InheritedHttp {
    /// `ListenStream=ADDR:PORT`.
    Tcp(std::net::TcpListener),
    /// `ListenStream=/PATH`.
    Unix(UnixListener),
}

/// The sockets a service manager passed, by role; all empty when it passed none.
#[derive(Debug, Default)]
pub struct Inherited {
    /// `http`: serve HTTP here instead of binding `--listen`.
    pub http: Option<InheritedHttp>,
    /// `vsock`: a listening kernel vsock `SOCK_STREAM` socket, instead of `--vsock-port`.
    pub vsock_stream: Option<OwnedFd>,
    /// `vsock-seqpacket`: a listening kernel vsock `SOCK_SEQPACKET` socket, instead of
    /// `--vsock-seqpacket-port`.
    pub vsock_seqpacket: Option<OwnedFd>,
    /// `notify-NAME`: guests to register at start with these notify sockets, in fd order.
    pub guests: Vec<(String, UnixDatagram)>,
}

impl Inherited {
    /// Takes the sockets passed to this process and removes `LISTEN_PID`, `LISTEN_FDS` and
    /// `LISTEN_FDNAMES` from the environment. No `LISTEN_FDS`, or a `LISTEN_PID` that is not
    /// ours: nothing was passed (an empty `Inherited`). A missing `LISTEN_PID` is accepted, as
    /// `listenfd` does for `systemfd`; a missing `LISTEN_FDNAMES` names every fd `unknown`, as
    /// `sd_listen_fds_with_names(3)` does (which no role takes).
    ///
    /// # Errors
    /// See [`ActivationError`].
    ///
    /// # Safety
    /// As [`std::env::remove_var`]: no other thread may read or write the environment
    /// meanwhile. Call it before starting the async runtime or any thread.
    #[allow(unsafe_code)]
    pub unsafe fn take_from_env() -> Result<Self, ActivationError> {
        let names = std::env::var("LISTEN_FDNAMES").ok();
        // Removes LISTEN_PID and LISTEN_FDS.
        let mut fds = ListenFd::from_env();
        // SAFETY: the caller guarantees that no other thread touches the environment.
        unsafe { std::env::remove_var("LISTEN_FDNAMES") };
        Self::take(&mut fds, names.as_deref())
    }

    /// Takes the `fds.len()` sockets of `fds`, named by `names` (`LISTEN_FDNAMES`).
    fn take(fds: &mut ListenFd, names: Option<&str>) -> Result<Self, ActivationError> {
        let count = fds.len();
        if count == 0 {
            return Ok(Self::default());
        }
        let names: Vec<&str> = match names {
            Some(names) => names.split(':').collect(),
            None => vec!["unknown"; count],
        };
        if names.len() != count {
            return Err(ActivationError::NameCount {
                names: names.len(),
                fds: count,
            });
        }
        let mut taken = Self::default();
        let mut seen: Vec<&str> = Vec::with_capacity(count);
        for (index, name) in names.into_iter().enumerate() {
            let fd = LISTEN_FDS_START + c_int::try_from(index).unwrap_or(c_int::MAX);
            let role = Role::from_name(fd, name)?;
            if seen.contains(&name) {
                return Err(ActivationError::Duplicate(name.to_owned()));
            }
            seen.push(name);
            let wrong = |expected: &'static str, reason: String| ActivationError::WrongSocket {
                fd,
                name: name.to_owned(),
                expected,
                reason,
            };
            match role {
                Role::Http => {
                    const EXPECTED: &str = "a listening TCP or UNIX stream socket";
                    let http = match fds.take_tcp_listener(index) {
                        Ok(tcp) => tcp.map(InheritedHttp::Tcp),
                        Err(_) => fds
                            .take_unix_listener(index)
                            .map_err(|error| wrong(EXPECTED, error.to_string()))?
                            .map(InheritedHttp::Unix),
                    };
                    let http = http.ok_or_else(|| wrong(EXPECTED, "already taken".into()))?;
                    let listening = match &http {
                        InheritedHttp::Tcp(tcp) => is_listening(tcp),
                        InheritedHttp::Unix(unix) => is_listening(unix),
                    };
                    listening.map_err(|reason| wrong(EXPECTED, reason))?;
                    taken.http = Some(http);
                }
                Role::VsockStream | Role::VsockSeqpacket => {
                    let (ty, expected) = if role == Role::VsockStream {
                        (
                            SocketType::STREAM,
                            "a listening AF_VSOCK SOCK_STREAM socket",
                        )
                    } else {
                        (
                            SocketType::SEQPACKET,
                            "a listening AF_VSOCK SOCK_SEQPACKET socket",
                        )
                    };
                    let socket: OwnedFd = fds
                        .take_custom(
                            index,
                            raw_family(AddressFamily::VSOCK),
                            raw_type(ty),
                            expected,
                        )
                        .map_err(|error| wrong(expected, error.to_string()))?
                        .ok_or_else(|| wrong(expected, "already taken".into()))?;
                    is_listening(&socket).map_err(|reason| wrong(expected, reason))?;
                    if role == Role::VsockStream {
                        taken.vsock_stream = Some(socket);
                    } else {
                        taken.vsock_seqpacket = Some(socket);
                    }
                }
                Role::Notify(guest) => {
                    const EXPECTED: &str = "an AF_UNIX SOCK_DGRAM socket bound to a path";
                    let socket = fds
                        .take_unix_datagram(index)
                        .map_err(|error| wrong(EXPECTED, error.to_string()))?
                        .ok_or_else(|| wrong(EXPECTED, "already taken".into()))?;
                    let has_path = socket
                        .local_addr()
                        .is_ok_and(|address| address.as_pathname().is_some());
                    if !has_path {
                        return Err(wrong(EXPECTED, "it is unnamed or abstract".into()));
                    }
                    taken.guests.push((guest, socket));
                }
            }
        }
        Ok(taken)
    }

    /// Whether nothing was passed.
    pub fn is_empty(&self) -> bool {
        self.http.is_none()
            && self.vsock_stream.is_none()
            && self.vsock_seqpacket.is_none()
            && self.guests.is_empty()
    }
}

impl fmt::Display for Inherited {
    /// What was passed, for the log: `http, vsock, notify-web1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<String> = Vec::new();
        if self.http.is_some() {
            names.push(HTTP.into());
        }
        if self.vsock_stream.is_some() {
            names.push(VSOCK.into());
        }
        if self.vsock_seqpacket.is_some() {
            names.push(VSOCK_SEQPACKET.into());
        }
        names.extend(
            self.guests
                .iter()
                .map(|(guest, _)| format!("{NOTIFY_PREFIX}{guest}")),
        );
        f.write_str(&names.join(", "))
    }
}

/// `SO_ACCEPTCONN`: a stream socket must listen, or accepting on it fails forever.
fn is_listening(socket: &impl AsFd) -> Result<(), String> {
    match rustix::net::sockopt::socket_acceptconn(socket) {
        Ok(true) => Ok(()),
        Ok(false) => Err("it does not listen (SO_ACCEPTCONN is 0)".into()),
        Err(error) => Err(format!("SO_ACCEPTCONN: {}", io::Error::from(error))),
    }
}

fn raw_family(family: AddressFamily) -> c_int {
    c_int::from(family.as_raw())
}

fn raw_type(ty: SocketType) -> c_int {
    // Socket types are small positive numbers (SOCK_STREAM 1 … SOCK_SEQPACKET 5).
    c_int::try_from(ty.as_raw()).unwrap_or(c_int::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_roles() {
        assert_eq!(Role::from_name(3, "http").unwrap(), Role::Http);
        assert_eq!(Role::from_name(4, "vsock").unwrap(), Role::VsockStream);
        assert_eq!(
            Role::from_name(5, "vsock-seqpacket").unwrap(),
            Role::VsockSeqpacket
        );
        assert_eq!(
            Role::from_name(6, "notify-web1").unwrap(),
            Role::Notify("web1".into())
        );
    }

    #[test]
    fn unknown_names_and_bad_guest_names_fail_naming_the_fd() {
        // systemd's default name is the socket unit's; systemfd passes no names at all.
        for name in ["notifyhub.socket", "unknown", "", "HTTP", "notify"] {
            let error = Role::from_name(7, name).unwrap_err();
            assert!(
                matches!(&error, ActivationError::UnknownName { fd: 7, name: n } if n == name),
                "{name:?}: {error}"
            );
            assert!(error.to_string().contains("FileDescriptorName="), "{error}");
        }
        for guest in ["", "-web", "web 1", "wéb"] {
            let name = format!("notify-{guest}");
            let error = Role::from_name(3, &name).unwrap_err();
            assert!(
                matches!(&error, ActivationError::GuestName { fd: 3, name: g, .. } if g == guest),
                "{name:?}: {error}"
            );
        }
    }

    #[test]
    fn nothing_passed_is_empty() {
        let taken = Inherited::take(&mut ListenFd::empty(), Some("http")).unwrap();
        assert!(taken.is_empty());
        assert_eq!(taken.to_string(), "");
    }
}
