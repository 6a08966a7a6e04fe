//! `notifyhub send KEY=VALUE...`: an sd_notify sender, for guests without `systemd-notify`.
//!
//! It sends exactly what `sd_pid_notify_with_fds()` would (`../shared/protocol.md` §1–§2): the
//! address is read with systemd's rules ([`NotifyAddress`]), the message is the assignments
//! joined with `\n` ([`compose`]), `AF_UNIX` datagrams go through
//! `notifyhub_transport_unix::send`, `AF_VSOCK` through `notifyhub_transport_vsock::send`.
//! No Tokio runtime: `--fd` numbers are checked before this process opens any file itself.

use std::io::{self, Write as _};
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use clap::Args;
use notifyhub_core::{NotifyAddress, VMADDR_CID_ANY, compose};
use notifyhub_transport_unix::send::{UnixTarget, barrier, send_datagram};
use notifyhub_transport_vsock::send::{EofWait, send as send_vsock};

use super::{Failure, Result, exit};

/// The exit statuses of `send`.
pub(crate) const EXITS: &[(u8, &str)] = &[
    (
        0,
        "sent, and unless --no-block confirmed (the barrier passed, or the vsock receiver closed)",
    ),
    (
        exit::FAILURE,
        "not sent or not confirmed: $NOTIFY_SOCKET unset or invalid, a socket error, a timeout",
    ),
    (
        exit::USAGE,
        "usage error: a bad KEY=VALUE (e.g. one holding a line break), --socket address or --fd",
    ),
];

/// How long `systemd-notify` waits for its barrier.
const DEFAULT_BARRIER: Duration = Duration::from_secs(5);

/// The longest wait for a confirmation: about 136 years.
const LONGEST_WAIT: Duration = Duration::from_secs(u32::MAX as u64);

/// The most file descriptors one message may carry (`SCM_MAX_FD`).
const MAX_FDS: usize = 253;

/// Send an sd_notify message to $NOTIFY_SOCKET, as systemd-notify does.
///
/// The assignments are joined with newlines into one message (no trailing newline), after
/// checking that each is KEY=VALUE on one line: a value holding a line break would add keys
/// (STATUS=a\nREADY=1), so it is refused. The address is read with systemd's rules: /path and
/// @abstract are AF_UNIX datagram sockets; vsock-stream:CID:PORT, vsock-seqpacket:CID:PORT,
/// vsock-dgram:CID:PORT and vsock:CID:PORT are AF_VSOCK (plain vsock: tries a datagram socket,
/// then seqpacket, then stream, as systemd does).
///
/// Over AF_UNIX, a barrier follows (BARRIER=1 with a pipe the receiver closes once it has
/// processed the message), as with systemd-notify, so the command returns once the receiver
/// took the message. Over vsock stream and seqpacket, the command waits for the receiver to
/// close the connection instead, and fails if it writes anything back (EPROTO); as root it
/// sends from a privileged port (1023 and down), which tells the receiver so.
///
/// Unlike systemd-notify, --pid only sets the sender's credentials; send MAINPID=PID yourself
/// if the receiver should learn a main pid.
#[derive(Debug, Args)]
#[command(after_long_help = super::exit_help(EXITS))]
pub(crate) struct SendArgs {
    /// Assignments to send, e.g. READY=1 "STATUS=Serving on :80".
    #[arg(value_name = "KEY=VALUE")]
    assignments: Vec<String>,
    /// Send READY=1 (before the assignments).
    #[arg(long)]
    ready: bool,
    /// Send STATUS=TEXT (before the assignments).
    #[arg(long, value_name = "TEXT")]
    status: Option<String>,
    /// The notify socket to send to [default: $NOTIFY_SOCKET].
    #[arg(long, value_name = "ADDR")]
    socket: Option<String>,
    /// Send as process PID (SCM_CREDENTIALS), as sd_pid_notify() does: a number, "self" or
    /// "parent". The kernel lets only root claim another process; if it refuses, the message
    /// goes with our own credentials, as with systemd.
    #[arg(long, value_name = "PID", value_parser = parse_pid)]
    pid: Option<u32>,
    /// Pass the inherited file descriptor N along (SCM_RIGHTS; AF_UNIX only); repeatable.
    #[arg(long = "fd", value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    fds: Vec<RawFd>,
    /// Wait up to DURATION for the receiver to confirm the message (the default, with 5 s):
    /// seconds (5, 0.5) or with a unit (500ms, 2m).
    #[arg(
        long,
        value_name = "DURATION",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "5",
        value_parser = notifyhub_web::config::parse_duration
    )]
    barrier: Option<Duration>,
    /// Do not wait for the receiver to confirm the message.
    #[arg(long, conflicts_with = "barrier")]
    no_block: bool,
    /// Say on stderr what was sent, where, and how.
    #[arg(short, long)]
    verbose: bool,
}

/// `--pid`: a positive number, `self` or `parent`.
fn parse_pid(text: &str) -> std::result::Result<u32, String> {
    match text {
        "self" => Ok(std::process::id()),
        "parent" => rustix::process::getppid()
            .map(|pid| pid.as_raw_nonzero().get().unsigned_abs())
            .ok_or_else(|| "this process has no parent in its pid namespace".to_owned()),
        number => number
            .parse::<u32>()
            .ok()
            .filter(|&pid| pid > 0 && i32::try_from(pid).is_ok())
            .ok_or_else(|| "expected a process ID, \"self\" or \"parent\"".to_owned()),
    }
}

/// Where the address came from, for messages and the exit status.
#[derive(Clone, Copy)]
enum Origin {
    Option,
    Environment,
}

pub(crate) fn run(args: SendArgs) -> Result {
    // First of all: an fd number is only "inherited" while this process has opened nothing.
    let fds = args
        .fds
        .iter()
        .map(|&fd| inherited_fd(fd))
        .collect::<Result<Vec<_>>>()?;
    if fds.len() > MAX_FDS {
        return Err(Failure::usage(format_args!(
            "{} file descriptors given, a message carries at most {MAX_FDS}",
            fds.len()
        )));
    }
    let status = args.status.as_ref().map(|text| format!("STATUS={text}"));
    let assignments = args
        .ready
        .then_some("READY=1")
        .into_iter()
        .chain(status.as_deref())
        .chain(args.assignments.iter().map(String::as_str));
    let message = compose(assignments).map_err(Failure::usage)?;

    let (text, origin) = match &args.socket {
        Some(text) => (text.clone(), Origin::Option),
        None => match std::env::var("NOTIFY_SOCKET") {
            Ok(text) => (text, Origin::Environment),
            Err(std::env::VarError::NotPresent) => {
                return Err(Failure::failed(
                    "NOTIFY_SOCKET is not set: nothing to send to (run this under a service \
                     manager or a VMM that sets it, or pass --socket ADDR)",
                ));
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Failure::failed("NOTIFY_SOCKET is not valid UTF-8"));
            }
        },
    };
    let address = parse_address(&text, origin)?;
    let wait = if args.no_block {
        None
    } else {
        // Longer is forever, but a deadline must stay a representable time.
        Some(args.barrier.unwrap_or(DEFAULT_BARRIER).min(LONGEST_WAIT))
    };

    let report = match &address {
        NotifyAddress::Path(path) => send_unix(
            UnixTarget::Path(path),
            &address,
            &message,
            args.pid,
            &fds,
            wait,
        )?,
        NotifyAddress::Abstract(name) => send_unix(
            UnixTarget::Abstract(name),
            &address,
            &message,
            args.pid,
            &fds,
            wait,
        )?,
        NotifyAddress::Vsock {
            socket_type,
            cid,
            port,
        } => {
            if !fds.is_empty() {
                return Err(Failure::usage(
                    "--fd needs an AF_UNIX notify socket: vsock cannot carry file descriptors",
                ));
            }
            if args.pid.is_some() {
                return Err(Failure::usage(
                    "--pid needs an AF_UNIX notify socket: vsock carries no credentials",
                ));
            }
            let eof = match wait {
                None => EofWait::Skip,
                Some(timeout) => EofWait::Within(timeout),
            };
            let sent = send_vsock(*socket_type, *cid, *port, message.as_bytes(), eof)
                .map_err(|error| send_error(&address, &error, wait))?;
            let mut report = format!("over {}", sent.socket_type.prefix());
            if let Some(port) = sent.source_port {
                report.push_str(&format!(" from privileged port {port}"));
            }
            match (sent.socket_type, wait) {
                (notifyhub_core::VsockType::Dgram, _) => {
                    report.push_str(" (datagrams are not confirmed)");
                }
                (_, Some(_)) => report.push_str("; the receiver closed the connection"),
                (_, None) => {}
            }
            report
        }
    };
    if args.verbose {
        let _ = writeln!(
            io::stderr().lock(),
            "notifyhub: sent {} bytes to {address} {report}",
            message.len()
        );
    }
    Ok(())
}

/// Reads `text` as a notify socket address; an error names the rule it breaks.
fn parse_address(text: &str, origin: Origin) -> Result<NotifyAddress> {
    let (code, from) = match origin {
        Origin::Option => (exit::USAGE, "--socket"),
        Origin::Environment => (exit::FAILURE, "$NOTIFY_SOCKET"),
    };
    let invalid = |rule: &dyn std::fmt::Display| {
        Failure::new(
            code,
            format_args!("invalid notify socket address {text:?} in {from}: {rule}"),
        )
    };
    let address: NotifyAddress = text.parse().map_err(|error| invalid(&error))?;
    if let NotifyAddress::Vsock { cid, .. } = address
        && cid == VMADDR_CID_ANY
    {
        return Err(invalid(&"CID any names no peer; the host is CID 2"));
    }
    Ok(address)
}

/// Sends over `AF_UNIX`, then the barrier; a few words on how, for `--verbose`.
fn send_unix(
    target: UnixTarget<'_>,
    address: &NotifyAddress,
    message: &str,
    pid: Option<u32>,
    fds: &[BorrowedFd<'_>],
    wait: Option<Duration>,
) -> Result<String> {
    // As sd_pid_notify(): credentials only when they differ from what the kernel attaches.
    let own_pid = std::process::id();
    let differ = pid.is_some_and(|pid| pid != own_pid)
        || rustix::process::getuid() != rustix::process::geteuid()
        || rustix::process::getgid() != rustix::process::getegid();
    let mut claimed = differ.then(|| pid.unwrap_or(own_pid));
    if let Err(error) = send_datagram(target, message.as_bytes(), claimed, fds) {
        let Some(pid) = claimed else {
            return Err(send_error(address, &error, wait));
        };
        // systemd's sender, too, tries again with its own credentials.
        send_datagram(target, message.as_bytes(), None, fds)
            .map_err(|error| send_error(address, &error, wait))?;
        super::warn(format_args!(
            "could not send as pid {pid} ({error}); sent with this process's own credentials"
        ));
        claimed = None;
    }
    let mut report = format!(
        "as an AF_UNIX datagram{}",
        match fds.len() {
            0 => String::new(),
            1 => " with 1 fd".to_owned(),
            n => format!(" with {n} fds"),
        }
    );
    if let Some(pid) = claimed {
        report.push_str(&format!(" as pid {pid}"));
    }
    if let Some(timeout) = wait {
        barrier(target, claimed, timeout).map_err(|error| {
            if error.kind() == io::ErrorKind::TimedOut {
                Failure::failed(format_args!(
                    "the message was sent, but {address} did not confirm it within {} s \
                     (BARRIER=1); --barrier=DURATION waits longer, --no-block not at all",
                    timeout.as_secs_f64()
                ))
            } else {
                Failure::failed(format_args!(
                    "the message was sent, but its barrier failed: {error}"
                ))
            }
        })?;
        report.push_str("; the barrier passed");
    }
    Ok(report)
}

fn send_error(address: &NotifyAddress, error: &io::Error, wait: Option<Duration>) -> Failure {
    // Only what the system's own message does not say already ("Connection refused" is that
    // nothing listens there, "Permission denied" that writing is not allowed).
    let hint = match (error.kind(), address) {
        (io::ErrorKind::ConnectionRefused, NotifyAddress::Path(_)) => {
            " (the socket file is there, but no receiver is bound to it: has the receiver stopped?)"
        }
        (io::ErrorKind::PermissionDenied, NotifyAddress::Path(_)) => {
            " (sending needs write permission on the socket file: see serve --socket-mode and \
             --socket-owner)"
        }
        _ => "",
    };
    if error.kind() == io::ErrorKind::TimedOut
        && let Some(timeout) = wait
    {
        return Failure::failed(format_args!(
            "the message was sent, but {address} did not close the connection within {} s; \
             --barrier=DURATION waits longer, --no-block not at all",
            timeout.as_secs_f64()
        ));
    }
    let auto = matches!(
        address,
        NotifyAddress::Vsock {
            socket_type: notifyhub_core::VsockType::Auto,
            ..
        }
    );
    let hint = if auto && hint.is_empty() {
        " (plain vsock: uses the first socket type the kernel creates and never falls back after \
         that fails; a host listening on stream sockets needs vsock-stream:CID:PORT)"
    } else {
        hint
    };
    Failure::failed(format_args!("cannot send to {address}: {error}{hint}"))
}

/// File descriptor `fd`, inherited from the caller, checked to be open.
#[allow(unsafe_code)]
fn inherited_fd(fd: RawFd) -> Result<BorrowedFd<'static>> {
    // SAFETY: `fd` is not -1 (clap allows 0 and up). The borrow is checked with F_GETFD right
    // away, before this process opens any file of its own (`send` runs first thing, on one
    // thread), so it refers to an inherited open file or fails here; nothing in this process
    // closes an inherited fd, so it stays open for as long as the process runs.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match rustix::io::fcntl_getfd(borrowed) {
        Ok(_) => Ok(borrowed),
        Err(error) => Err(Failure::usage(format_args!(
            "--fd {fd}: file descriptor {fd} is not open ({error}); --fd passes a descriptor \
             this command inherited"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids() {
        assert_eq!(parse_pid("42"), Ok(42));
        assert_eq!(parse_pid("self"), Ok(std::process::id()));
        assert!(parse_pid("parent").is_ok());
        for bad in ["0", "-1", "4294967295", "me", ""] {
            assert!(parse_pid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses_name_the_rule() {
        let message = |text, origin| match parse_address(text, origin) {
            Err(Failure::Error { code, message }) => (code, message),
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(
            message("vsock:2", Origin::Option),
            (
                exit::USAGE,
                "invalid notify socket address \"vsock:2\" in --socket: vsock address lacks :PORT"
                    .to_owned()
            )
        );
        let (code, text) = message("run/notify", Origin::Environment);
        assert_eq!(code, exit::FAILURE);
        assert!(text.contains("$NOTIFY_SOCKET"), "{text}");
        assert!(text.contains("expected /path, @abstract"), "{text}");
        let (_, text) = message("vsock-stream:any:5", Origin::Option);
        assert!(
            text.ends_with("CID any names no peer; the host is CID 2"),
            "{text}"
        );
        assert_eq!(
            parse_address("vsock-stream:2:0x10", Origin::Option).unwrap(),
            NotifyAddress::Vsock {
                socket_type: notifyhub_core::VsockType::Stream,
                cid: 2,
                port: 16
            }
        );
    }

    #[test]
    fn closed_fds_are_refused() {
        let error = match inherited_fd(999_999) {
            Err(Failure::Error { code, message }) => (code, message),
            other => panic!("{other:?}"),
        };
        assert_eq!(error.0, exit::USAGE);
        assert!(error.1.contains("not open"), "{}", error.1);
        assert!(inherited_fd(2).is_ok(), "stderr is open");
    }
}
