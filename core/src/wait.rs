//! Conditions a client can wait for (`GET /api/v1/guests/{name}/wait?for=…`), judged on snapshots.

use alloc::string::{String, ToString};
use core::fmt;
use core::str::FromStr;

use crate::guest::{Phase, Snapshot, UnknownPhase};
use crate::message::is_valid_unit_name;

/// What a waiter waits for. Parsed from the `for=` strings below.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitCondition {
    /// `ready`: `READY=1` seen in this boot, phase `ready` or `reloading`.
    Ready,
    /// `booted`: ready and `multi-user.target` or `graphical.target` active
    /// ([`Snapshot::is_booted`]).
    Booted,
    /// `unit:<name>`: the target is active and the guest not `off`, e.g.
    /// `unit:ssh-access.target` (connectible by SSH).
    Unit(String),
    /// `off`: phase `off`.
    Off,
    /// `phase:<phase>`: exactly that phase.
    Phase(Phase),
}

/// A `for=` string that names no condition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadCondition {
    /// Not one of the forms.
    #[error(
        "unknown condition {0:?}, expected ready, booted, off, unit:<unit name> or phase:<phase>"
    )]
    Unknown(String),
    /// `unit:` followed by something that is not a unit name.
    #[error("{0:?} is not a unit name")]
    BadUnit(String),
    /// `phase:` followed by something that is not a phase.
    #[error(transparent)]
    BadPhase(#[from] UnknownPhase),
}

impl FromStr for WaitCondition {
    type Err = BadCondition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(unit) = s.strip_prefix("unit:") {
            return if is_valid_unit_name(unit) {
                Ok(Self::Unit(unit.to_string()))
            } else {
                Err(BadCondition::BadUnit(unit.to_string()))
            };
        }
        if let Some(phase) = s.strip_prefix("phase:") {
            return Ok(Self::Phase(phase.parse()?));
        }
        match s {
            "ready" => Ok(Self::Ready),
            "booted" => Ok(Self::Booted),
            "off" => Ok(Self::Off),
            _ => Err(BadCondition::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for WaitCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready => f.write_str("ready"),
            Self::Booted => f.write_str("booted"),
            Self::Unit(unit) => write!(f, "unit:{unit}"),
            Self::Off => f.write_str("off"),
            Self::Phase(phase) => write!(f, "phase:{phase}"),
        }
    }
}

impl WaitCondition {
    /// Whether the condition holds in `snapshot`.
    pub fn holds(&self, snapshot: &Snapshot) -> bool {
        match self {
            Self::Ready => matches!(snapshot.phase, Phase::Ready | Phase::Reloading),
            Self::Booted => snapshot.is_booted(),
            // A guest that is off has no active units, whatever it last reported: after an
            // immediate poweroff (SIGRTMIN+14) no X_SYSTEMD_UNIT_INACTIVE= precedes the end.
            Self::Unit(unit) => snapshot.phase != Phase::Off && snapshot.is_active(unit),
            Self::Off => snapshot.phase == Phase::Off,
            Self::Phase(phase) => snapshot.phase == *phase,
        }
    }

    /// Whether the condition can no longer hold in the boot of `snapshot`: the guest is
    /// `failed` or `off` while `ready`, `booted` or a unit is awaited, or `stopping` while
    /// `ready` or `booted` is (nothing revives a stopping boot). `off` and `phase:` never give up.
    fn cannot_hold(&self, snapshot: &Snapshot) -> bool {
        match self {
            Self::Ready | Self::Booted => {
                matches!(snapshot.phase, Phase::Failed | Phase::Off | Phase::Stopping)
            }
            Self::Unit(_) => matches!(snapshot.phase, Phase::Failed | Phase::Off),
            Self::Off | Self::Phase(_) => false,
        }
    }
}

/// The answer to a wait, given one snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The condition holds: answer now.
    Met,
    /// Not yet: keep waiting until the next change or the timeout.
    Pending,
    /// The condition can no longer hold in this boot: answer now, with a failure.
    Unreachable,
}

/// One client's wait: a condition, and where the guest stood when the wait began.
///
/// A wait that begins while the guest is `off` (or `registered`) waits for the next boot, so a
/// VMM can start waiting before it restarts a guest. Otherwise it gives up as soon as the
/// condition can no longer hold in the current boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    condition: WaitCondition,
    /// The boot in which giving up is not yet judged, when the wait began between boots.
    boot_between: Option<u32>,
}

impl Wait {
    /// Starts waiting for `condition`, with `snapshot` the guest's state now.
    pub fn new(condition: WaitCondition, snapshot: &Snapshot) -> Self {
        let between = matches!(snapshot.phase, Phase::Off | Phase::Registered);
        Self {
            condition,
            boot_between: between.then_some(snapshot.boot_count),
        }
    }

    /// The condition awaited.
    pub const fn condition(&self) -> &WaitCondition {
        &self.condition
    }

    /// Judges `snapshot`, the guest's state after a change.
    pub fn check(&self, snapshot: &Snapshot) -> WaitOutcome {
        if self.condition.holds(snapshot) {
            WaitOutcome::Met
        } else if self.boot_between != Some(snapshot.boot_count)
            && self.condition.cannot_hold(snapshot)
        {
            WaitOutcome::Unreachable
        } else {
            WaitOutcome::Pending
        }
    }
}
