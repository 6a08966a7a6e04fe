//! Guest names.

use notifyhub_core::{GuestNameError, validate_guest_name};

#[test]
fn valid_and_invalid_names() {
    for name in ["web1", "a", "vm-01.example_2", &"x".repeat(64)] {
        assert_eq!(validate_guest_name(name), Ok(()), "{name}");
    }
    let table = [
        ("", GuestNameError::Empty),
        ("../x", GuestNameError::BadStart),
        (".hidden", GuestNameError::BadStart),
        ("-flag", GuestNameError::BadStart),
        ("a/b", GuestNameError::BadChar('/')),
        ("a b", GuestNameError::BadChar(' ')),
        ("a<b", GuestNameError::BadChar('<')),
        ("wéb", GuestNameError::BadChar('é')),
        ("a\0", GuestNameError::BadChar('\0')),
    ];
    for (name, error) in table {
        assert_eq!(validate_guest_name(name), Err(error), "{name:?}");
    }
    assert_eq!(
        validate_guest_name(&"x".repeat(65)),
        Err(GuestNameError::TooLong(65))
    );
}
