//! The hub's clock, and how its timestamps read to a person.
//!
//! `notifyhub-core` never reads a clock: the receive loops stamp each datagram with [`now`].

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use notifyhub_core::Timestamp;

/// The wall-clock time now (`CLOCK_REALTIME`); the epoch if the clock is set before it.
pub fn now() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_micros(u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX))
}

/// A timestamp shown in UTC: `2026-11-29 21:03:04 UTC`, or with `{:#}` as RFC 3339 with
/// milliseconds, `2026-11-29T21:03:04.123Z` (for `<time datetime>`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Utc(pub(crate) Timestamp);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        let seconds = us / 1_000_000;
        let (year, month, day) = civil_from_days(seconds / 86_400);
        let (hour, minute, second) = (seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
        if f.alternate() {
            let millis = us / 1000 % 1000;
            write!(
                f,
                "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z"
            )
        } else {
            write!(
                f,
                "{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC"
            )
        }
    }
}

/// A span of µs as seconds with millisecond precision: `1.234 s`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seconds(pub(crate) u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03} s", self.0 / 1_000_000, self.0 / 1000 % 1000)
    }
}

/// A span of µs after some start, as `+1.234 s`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Offset(pub(crate) u64);

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", Seconds(self.0))
    }
}

/// Year, month (1–12) and day (1–31) of a day count since 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`, for days ≥ 0).
const fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        let cases = [
            (0, "1970-01-01 00:00:00 UTC", "1970-01-01T00:00:00.000Z"),
            // 2000-02-29, a leap day in a year divisible by 400.
            (
                951_782_400_123_456,
                "2000-02-29 00:00:00 UTC",
                "2000-02-29T00:00:00.123Z",
            ),
            (
                1_796_072_584_999_999,
                "2026-11-30 21:03:04 UTC",
                "2026-11-30T21:03:04.999Z",
            ),
        ];
        for (us, plain, rfc3339) in cases {
            let t = Utc(Timestamp::from_micros(us));
            assert_eq!(
                (t.to_string(), format!("{t:#}")),
                (plain.into(), rfc3339.into())
            );
        }
    }

    #[test]
    fn formats_offsets() {
        assert_eq!(Offset(0).to_string(), "+0.000 s");
        assert_eq!(Offset(61_234_567).to_string(), "+61.234 s");
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now().as_micros() > 1_577_836_800_000_000);
    }
}
