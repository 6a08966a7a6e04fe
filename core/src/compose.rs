//! Building a datagram to send, the way `systemd-notify` builds one.

use alloc::string::String;

use crate::message::MAX_DATAGRAM_LEN;

/// Why assignments cannot be sent as one sd_notify message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ComposeError {
    /// No assignment at all.
    #[error("nothing to send: give at least one KEY=VALUE")]
    Empty,
    /// An argument without `=`, or with nothing before it.
    #[error("{0:?} is not an assignment: expected KEY=VALUE")]
    NotAnAssignment(String),
    /// A newline, carriage return or NUL inside an assignment: it would split it into two
    /// (a `STATUS=x\nREADY=1` argument would inject a READY=1) or be rejected by the receiver.
    #[error("{0:?} holds a line break or NUL byte, which would change the message")]
    Separator(String),
    /// The message is longer than [`MAX_DATAGRAM_LEN`] bytes; systemd drops it whole.
    #[error("message of {0} bytes exceeds the {MAX_DATAGRAM_LEN}-byte limit")]
    TooLarge(usize),
}

/// Joins `assignments` with `\n` and no trailing newline, exactly as `systemd-notify` does
/// (`src/notify/notify.c`), after checking each is `KEY=VALUE` on one line.
///
/// # Errors
/// [`ComposeError`] for an empty list, a non-assignment, a line break or NUL inside an
/// assignment (unlike the `sd-notify` crate, which lets `\n` inject keys), or a result over
/// 4096 bytes.
pub fn compose<'a>(assignments: impl IntoIterator<Item = &'a str>) -> Result<String, ComposeError> {
    let mut message = String::new();
    for assignment in assignments {
        if assignment.contains(['\n', '\r', '\0']) {
            return Err(ComposeError::Separator(assignment.into()));
        }
        if assignment
            .split_once('=')
            .is_none_or(|(key, _)| key.is_empty())
        {
            return Err(ComposeError::NotAnAssignment(assignment.into()));
        }
        if !message.is_empty() {
            message.push('\n');
        }
        message.push_str(assignment);
    }
    if message.is_empty() {
        return Err(ComposeError::Empty);
    }
    if message.len() > MAX_DATAGRAM_LEN {
        return Err(ComposeError::TooLarge(message.len()));
    }
    Ok(message)
}
