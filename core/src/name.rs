//! Guest names: what the hub accepts as the name of a guest.

/// The longest guest name, in bytes.
pub const MAX_GUEST_NAME_LEN: usize = 64;

/// Why a string is not a guest name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuestNameError {
    /// The name is empty.
    #[error("guest name is empty")]
    Empty,
    /// The name is longer than [`MAX_GUEST_NAME_LEN`] bytes.
    #[error("guest name is {0} bytes long, the limit is {MAX_GUEST_NAME_LEN}")]
    TooLong(usize),
    /// The name does not start with an ASCII letter or digit.
    #[error("guest name must start with an ASCII letter or digit")]
    BadStart,
    /// The name holds a character other than ASCII letters, digits, `-`, `_` and `.`.
    #[error("guest name holds {0:?}; only ASCII letters, digits, '-', '_' and '.' are allowed")]
    BadChar(char),
}

/// Checks a guest name: 1 to [`MAX_GUEST_NAME_LEN`] bytes of ASCII letters, digits, `-`, `_`
/// and `.`, starting with a letter or digit. Such a name is safe as one path component (no `/`,
/// no `..`, no leading `.` or `-`), in a URL path segment and in HTML without escaping.
///
/// # Errors
/// A [`GuestNameError`] saying what is wrong.
pub fn validate_guest_name(name: &str) -> Result<(), GuestNameError> {
    let first = name.chars().next().ok_or(GuestNameError::Empty)?;
    if name.len() > MAX_GUEST_NAME_LEN {
        return Err(GuestNameError::TooLong(name.len()));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(GuestNameError::BadStart);
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(GuestNameError::BadChar(c)),
        None => Ok(()),
    }
}
