//! The commands of `notifyhub` other than `serve`: clients of a running hub (`wait`, `status`,
//! `events`, `launch`), a sender for guests (`send`), an offline log reader (`parse`), and the
//! shell completions and man pages (`completions`, `man`).
//!
//! Every command writes its results to stdout and its errors to stderr, one line
//! `notifyhub: <what went wrong>`, and exits with a status from [`exit`]. Text that comes from a
//! guest is printed with control characters escaped ([`format::escape_line`]), so a guest cannot
//! drive the terminal. `--json` prints what the hub (or the log reader) produced, untouched.

pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod docs;
pub(crate) mod events;
pub(crate) mod format;
pub(crate) mod launch;
pub(crate) mod parse;
pub(crate) mod send;
pub(crate) mod status;
pub(crate) mod wait;

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

/// Exit statuses. 0 is success; the others are listed per command in its `--help` (see
/// [`exit_help`]) and in `web/CLI.md`.
pub(crate) mod exit {
    /// The command failed (see the message).
    pub(crate) const FAILURE: u8 = 1;
    /// `wait`: the timeout passed (HTTP 408).
    pub(crate) const TIMEOUT: u8 = 2;
    /// `wait`: the condition can no longer hold in this boot (HTTP 409).
    pub(crate) const CANNOT_HOLD: u8 = 3;
    /// No guest of that name (HTTP 404), or it was removed (HTTP 410).
    pub(crate) const NO_GUEST: u8 = 4;
    /// The hub is unreachable, shutting down, or gave an unexpected answer.
    pub(crate) const HUB: u8 = 5;
    /// The command line is wrong (`EX_USAGE`), including what the hub rejects as such (HTTP 400).
    pub(crate) const USAGE: u8 = 64;
    /// `parse`: some lines could not be read (`EX_DATAERR`).
    pub(crate) const DATA: u8 = 65;
    /// `parse`, `config check`, `serve --config`: a file could not be opened or read
    /// (`EX_NOINPUT`).
    pub(crate) const NO_INPUT: u8 = 66;
    /// `config check`, `serve`: the configuration file has errors (`EX_CONFIG`).
    pub(crate) const CONFIG: u8 = 78;
}

/// The exit statuses of the hub's client commands other than `wait`.
pub(crate) const CLIENT_EXITS: &[(u8, &str)] = &[
    (0, "success"),
    (exit::NO_GUEST, "no guest of that name"),
    (
        exit::HUB,
        "the hub is unreachable, shutting down, or gave an unexpected answer",
    ),
    (exit::USAGE, "usage error"),
];

/// `--help` text listing `exits`, for `after_long_help`.
pub(crate) fn exit_help(exits: &[(u8, &str)]) -> String {
    let mut text = String::from("Exit status:\n");
    for (code, meaning) in exits {
        text.push_str(&format!("  {code:<3} {meaning}\n"));
    }
    text
}

/// Why a command ends unsuccessfully.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Print `notifyhub: {message}` to stderr and exit with `code`.
    Error {
        /// The exit status.
        code: u8,
        /// What went wrong, one line, no trailing period.
        message: String,
    },
    /// Exit with this status; everything to say was said (0: stdout was closed early, as by
    /// `| head`, which is no failure).
    Exit(u8),
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl fmt::Display) -> Self {
        Self::Error {
            code,
            message: message.to_string(),
        }
    }

    pub(crate) fn usage(message: impl fmt::Display) -> Self {
        Self::new(exit::USAGE, message)
    }

    pub(crate) fn failed(message: impl fmt::Display) -> Self {
        Self::new(exit::FAILURE, message)
    }

    /// Reports the failure on stderr; the exit status.
    pub(crate) fn report(self) -> ExitCode {
        match self {
            Self::Error { code, message } => {
                let _ = writeln!(io::stderr().lock(), "notifyhub: {message}");
                ExitCode::from(code)
            }
            Self::Exit(code) => ExitCode::from(code),
        }
    }
}

/// A failure to write the output: a closed pipe (`notifyhub status | head -1`) ends the command
/// quietly and successfully, as in ripgrep; anything else is a failure.
impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        if error.kind() == io::ErrorKind::BrokenPipe {
            Self::Exit(0)
        } else {
            Self::failed(format_args!("cannot write the output: {error}"))
        }
    }
}

/// What every command returns.
pub(crate) type Result<T = ()> = std::result::Result<T, Failure>;

/// The exit status of a command's result, after reporting a failure.
pub(crate) fn finish(result: Result) -> ExitCode {
    match result.and_then(|()| Ok(io::stdout().lock().flush()?)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

/// `error` and its causes on one line, `outer: inner: …`, each fact once: a cause whose message
/// the line holds already is left out (an error that shows its source in its own message, as
/// thiserror's `{source}` does, and also names it as its `source()`, would say it twice, as
/// anyhow's `{:#}` prints it).
pub(crate) fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let message = next.to_string();
        if !line.contains(&message) {
            line.push_str(": ");
            line.push_str(&message);
        }
        cause = next.source();
    }
    line
}

/// Prints a remark on stderr: `notifyhub: {message}`, for what is worth knowing but no result.
pub(crate) fn note(message: impl fmt::Display) {
    let _ = writeln!(io::stderr().lock(), "notifyhub: {message}");
}

/// Prints a warning on stderr: something the user should know, which does not fail the command.
pub(crate) fn warn(message: impl fmt::Display) {
    let _ = writeln!(io::stderr().lock(), "notifyhub: warning: {message}");
}

/// Checks a guest name given on the command line with the hub's own rule, so that it can be put
/// in a URL as is.
pub(crate) fn check_guest_name(name: &str) -> Result {
    notifyhub_core::validate_guest_name(name)
        .map_err(|error| Failure::usage(format_args!("invalid guest name {name:?}: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot bind {path}: {source}")]
    struct Bind {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn causes_say_each_fact_once() {
        let inner = std::io::Error::other("somebody is listening there");
        let error = anyhow::Error::new(Bind {
            path: "/s",
            source: inner,
        })
        .context("cannot register guest \"a\"");
        // anyhow's own chain says the innermost fact twice.
        assert_eq!(
            format!("{error:#}"),
            "cannot register guest \"a\": cannot bind /s: somebody is listening there: somebody \
             is listening there"
        );
        assert_eq!(
            causes(error.as_ref()),
            "cannot register guest \"a\": cannot bind /s: somebody is listening there"
        );
        // A cause not in the message is kept.
        let error = anyhow::Error::new(std::io::Error::other("refused")).context("cannot start");
        assert_eq!(causes(error.as_ref()), "cannot start: refused");
    }
}
