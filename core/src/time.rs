//! Time as plain data: the core never reads a clock.

/// A point in time in µs since the Unix epoch (`CLOCK_REALTIME`), supplied by the driver.
///
/// The core never reads a clock (it must run unchanged on wasm32, where `std::time::Instant`
/// panics, and on replays of logs): every entry point takes `now: Timestamp` from its caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(transparent)
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Timestamp(u64);

impl Timestamp {
    /// The epoch itself.
    pub const ZERO: Self = Self(0);

    /// A timestamp `us` µs after the Unix epoch.
    pub const fn from_micros(us: u64) -> Self {
        Self(us)
    }

    /// µs since the Unix epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// `self + us` µs, saturating at `u64::MAX` µs.
    #[must_use]
    pub const fn saturating_add_micros(self, us: u64) -> Self {
        Self(self.0.saturating_add(us))
    }

    /// µs from `earlier` to `self`; 0 when `earlier` is later (clocks passed in may step back).
    pub const fn micros_since(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}
