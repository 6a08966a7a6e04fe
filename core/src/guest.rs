//! The per-guest state machine: messages and `now` in, events and a snapshot out.

use alloc::collections::{BTreeSet, VecDeque};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use crate::message::{Message, ParseError, Watchdog, parse};
use crate::sender::Sender;
use crate::time::Timestamp;

/// The most targets kept active at once per guest; a guest that reports more has the extra ones
/// counted in [`Drops::units_over_limit`]. A systemd guest has about twenty.
pub const MAX_ACTIVE_UNITS: usize = 256;

/// The most milestones kept in [`Guest::timeline`]; older ones are forgotten first.
pub const MAX_TIMELINE: usize = 256;

/// The most undrained events a [`Guest`] queues; older ones are discarded first.
pub const MAX_PENDING_EVENTS: usize = 1024;

const SOFT_REBOOT_TARGET: &str = "soft-reboot.target";
const SHUTDOWN_TARGET: &str = "shutdown.target";
const FAILED_BOOT_TARGETS: [&str; 2] = ["emergency.target", "rescue.target"];
const BOOTED_TARGETS: [&str; 2] = ["multi-user.target", "graphical.target"];

/// Where a guest is in its life, as told by its messages (`../shared/protocol.md` §4).
///
/// Only messages move it. A guest that vanishes without a final message (PID 1 killed, the VM
/// reset or torn down; `tests/vectors/systemd257-sigkill.jsonl`) keeps its last phase, and its
/// `exit_status` stays unknown (`None`), never 0: a datagram socket has no hang-up to notice.
/// Its next boot is recognised by PID 1's hostname or machine ID arriving again.
///
/// Serialised as the lowercase strings below, which are part of the REST API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Phase {
    /// `registered`: no message yet.
    Registered,
    /// `booting`: messages, but no `READY=1` yet in this boot.
    Booting,
    /// `ready`: `READY=1` seen in this boot.
    Ready,
    /// `reloading`: `RELOADING=1` in a boot that was ready, until the next `READY=1`. A
    /// `RELOADING=1` before the boot's first `READY=1` leaves it `booting`: systemd enters
    /// reloading only from the running state (`service_notify_message()`, `src/core/service.c`),
    /// and PID 1 of systemd 257 sends `RELOADING=1` right after `soft-reboot.target`, as its next
    /// boot begins (`tests/vectors/systemd257-soft-reboot.jsonl`).
    Reloading,
    /// `stopping`: `STOPPING=1`, or `shutdown.target` became active.
    Stopping,
    /// `off`: `X_SYSTEMD_SHUTDOWN=` received; the guest is about to reboot, power off, …
    Off,
    /// `failed`: `emergency.target` or `rescue.target` became active in this boot. It stays
    /// `failed` for the rest of the boot, until `stopping` or `off`.
    Failed,
}

impl Phase {
    /// Every phase.
    pub const ALL: [Self; 7] = [
        Self::Registered,
        Self::Booting,
        Self::Ready,
        Self::Reloading,
        Self::Stopping,
        Self::Off,
        Self::Failed,
    ];

    /// The phase's name, e.g. `"ready"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Booting => "booting",
            Self::Ready => "ready",
            Self::Reloading => "reloading",
            Self::Stopping => "stopping",
            Self::Off => "off",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`Phase`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown phase {0:?}, expected one of registered, booting, ready, reloading, stopping, off, failed"
)]
pub struct UnknownPhase(pub String);

impl FromStr for Phase {
    type Err = UnknownPhase;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|phase| phase.as_str() == s)
            .ok_or_else(|| UnknownPhase(s.to_string()))
    }
}

/// Why a datagram, or part of one, was not taken. Counted per guest in [`Drops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum DropReason {
    /// The datagram was longer than 4096 bytes ([`ParseError::TooLarge`], or MSG_TRUNC).
    Oversize,
    /// The datagram held a NUL byte before its end ([`ParseError::EmbeddedNul`]).
    EmbeddedNul,
    /// More file descriptors came with the datagram than fit (MSG_CTRUNC).
    TooManyFds,
    /// The guest sent faster than the hub's per-guest rate limit.
    RateLimited,
    /// A `X_SYSTEMD_UNIT_ACTIVE=` beyond [`MAX_ACTIVE_UNITS`] active targets.
    UnitsOverLimit,
    /// A stream connection (vsock) ended before the message was known to be whole: neither EOF
    /// nor a quiet gap came before the receiver's deadline, so the bytes may be a prefix, or
    /// reading failed.
    Incomplete,
    /// A stream connection (vsock) was closed unread because too many were open at once.
    ConnectionLimit,
    /// A vsock message from a source port of 1024 or above, i.e. not from root in the guest
    /// (`sd_notify(3)`, Notes; [`Sender::privileged_port`]), which the receiver was told to refuse.
    Unprivileged,
}

impl From<ParseError> for DropReason {
    fn from(error: ParseError) -> Self {
        match error {
            ParseError::TooLarge { .. } => Self::Oversize,
            ParseError::EmbeddedNul { .. } => Self::EmbeddedNul,
        }
    }
}

/// Counts of what was dropped for one guest, by [`DropReason`]. Serialised as an object with
/// every counter, e.g. `{"oversize": 1, "embedded_nul": 0, …}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Drops {
    /// See [`DropReason::Oversize`].
    pub oversize: u64,
    /// See [`DropReason::EmbeddedNul`].
    pub embedded_nul: u64,
    /// See [`DropReason::TooManyFds`].
    pub too_many_fds: u64,
    /// See [`DropReason::RateLimited`].
    pub rate_limited: u64,
    /// See [`DropReason::UnitsOverLimit`].
    pub units_over_limit: u64,
    /// See [`DropReason::Incomplete`].
    pub incomplete: u64,
    /// See [`DropReason::ConnectionLimit`].
    pub connection_limit: u64,
    /// See [`DropReason::Unprivileged`].
    pub unprivileged: u64,
}

impl Drops {
    /// Adds one drop for `reason`.
    pub fn count(&mut self, reason: DropReason) {
        let counter = match reason {
            DropReason::Oversize => &mut self.oversize,
            DropReason::EmbeddedNul => &mut self.embedded_nul,
            DropReason::TooManyFds => &mut self.too_many_fds,
            DropReason::RateLimited => &mut self.rate_limited,
            DropReason::UnitsOverLimit => &mut self.units_over_limit,
            DropReason::Incomplete => &mut self.incomplete,
            DropReason::ConnectionLimit => &mut self.connection_limit,
            DropReason::Unprivileged => &mut self.unprivileged,
        };
        *counter = counter.saturating_add(1);
    }

    /// All drops together.
    pub const fn total(&self) -> u64 {
        self.oversize
            .saturating_add(self.embedded_nul)
            .saturating_add(self.too_many_fds)
            .saturating_add(self.rate_limited)
            .saturating_add(self.units_over_limit)
            .saturating_add(self.incomplete)
            .saturating_add(self.connection_limit)
            .saturating_add(self.unprivileged)
    }
}

/// How a boot ended, from `systemd-shutdown`'s last message (`src/shutdown/shutdown.c`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Shutdown {
    /// `X_SYSTEMD_SHUTDOWN=`: `reboot`, `poweroff`, `halt`, `kexec` or `exit`.
    pub verb: String,
    /// `X_SYSTEMD_REBOOT_PARAMETER=`, the argument of `systemctl reboot`, if one was set.
    pub reboot_parameter: Option<String>,
}

/// A change in a guest's state, produced by [`Guest::handle_message`] and drained with
/// [`Guest::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(tag = "type", rename_all = "snake_case")
)]
#[non_exhaustive]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Event {
    /// The first message, or a new boot: `soft-reboot.target` became active, a message arrived
    /// after `off`, or PID 1 sent its hostname or machine ID a second time (the guest restarted
    /// without a final message).
    BootStarted {
        /// The new boot's number (the boot count), from 1.
        number: u32,
    },
    /// The phase changed.
    PhaseChanged {
        /// The phase before.
        from: Phase,
        /// The phase now.
        to: Phase,
    },
    /// `STATUS=` changed; `None` when an empty `STATUS=` cleared it.
    StatusChanged {
        /// The new status text.
        status: Option<String>,
    },
    /// `X_SYSTEMD_HOSTNAME=` arrived.
    Hostname {
        /// The hostname.
        hostname: String,
    },
    /// `X_SYSTEMD_MACHINE_ID=` arrived.
    MachineId {
        /// 32 lowercase hex digits.
        machine_id: String,
    },
    /// `X_SYSTEMD_UNIT_ACTIVE=`: a target became active.
    UnitActive {
        /// The target's name.
        unit: String,
    },
    /// `X_SYSTEMD_UNIT_INACTIVE=`: a target became inactive.
    UnitInactive {
        /// The target's name.
        unit: String,
    },
    /// `X_SYSTEMD_SHUTDOWN=`: the guest is about to reboot, power off, …
    Shutdown {
        /// The verb and reboot argument.
        shutdown: Shutdown,
        /// `EXIT_STATUS=` sent with it, if any.
        exit_status: Option<u8>,
    },
    /// A watchdog deadline passed without `WATCHDOG=1`, or the guest sent `WATCHDOG=trigger`
    /// (`sd_notify(3)`). Reported once per missed deadline.
    WatchdogMissed {
        /// The deadline that passed (the time of the trigger for `WATCHDOG=trigger`).
        deadline: Timestamp,
    },
    /// No `READY=1` came within the readiness timeout of the boot's first message
    /// ([`Guest::set_ready_timeout`]). Reported once per boot.
    ReadyTimedOut {
        /// The deadline that passed.
        deadline: Timestamp,
    },
    /// `ERRNO=` changed.
    Errno {
        /// The errno.
        errno: u16,
    },
}

impl Event {
    /// Whether the event belongs on the boot timeline (all but status changes).
    pub const fn is_milestone(&self) -> bool {
        !matches!(self, Self::StatusChanged { .. })
    }
}

/// One entry of a guest's boot timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Milestone {
    /// When the message that caused it was received.
    pub at: Timestamp,
    /// The boot it belongs to, from 1.
    pub boot: u32,
    /// What happened.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub event: Event,
}

/// A guest's state at one moment, as served by the REST API (`GET /api/v1/guests/{name}`).
///
/// Times are µs since the Unix epoch. Fields that belong to one boot (`status`, `active_units`,
/// `signals_level`, `main_pid`, `errno`, `exit_status`, `shutdown`, `failed_boot`) are reset when a
/// new boot starts; `hostname` and `machine_id` are kept until the guest sends new ones.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Snapshot {
    /// The guest's name.
    pub name: String,
    /// The phase.
    pub phase: Phase,
    /// The last `STATUS=` text; `None` before any or after an empty `STATUS=`.
    pub status: Option<String>,
    /// `X_SYSTEMD_HOSTNAME=`.
    pub hostname: Option<String>,
    /// `X_SYSTEMD_MACHINE_ID=`.
    pub machine_id: Option<String>,
    /// Targets active now (`X_SYSTEMD_UNIT_ACTIVE=` minus `_INACTIVE=`), sorted.
    pub active_units: Vec<String>,
    /// `X_SYSTEMD_SIGNALS_LEVEL=`.
    pub signals_level: Option<u32>,
    /// `MAINPID=`.
    pub main_pid: Option<u32>,
    /// `ERRNO=`.
    pub errno: Option<u16>,
    /// `BUSERROR=`.
    pub bus_error: Option<String>,
    /// `VARLINKERROR=`.
    pub varlink_error: Option<String>,
    /// `EXIT_STATUS=`; `None` when the guest never sent one: unknown, not 0.
    pub exit_status: Option<u8>,
    /// How the boot ended (`X_SYSTEMD_SHUTDOWN=`), if it did.
    pub shutdown: Option<Shutdown>,
    /// Boots seen: 0 before the first message.
    pub boot_count: u32,
    /// Whether this boot reached `emergency.target` or `rescue.target`; kept after `off`.
    pub failed_boot: bool,
    /// Whether `READY=1` arrived in this boot (also true while `reloading`, `stopping`, …).
    pub ready_seen: bool,
    /// Messages taken, all boots together.
    pub messages: u64,
    /// What was dropped.
    pub drops: Drops,
    /// When the guest was registered.
    pub registered_at: Timestamp,
    /// When its first message arrived.
    pub first_seen: Option<Timestamp>,
    /// When its last message arrived.
    pub last_seen: Option<Timestamp>,
    /// Who sent the last message.
    pub last_sender: Option<Sender>,
    /// `WATCHDOG_USEC=` of this boot, µs; `None` or 0 when the guest has no watchdog.
    pub watchdog_usec: Option<u64>,
    /// When the next `WATCHDOG=1` is due: the last ping plus `watchdog_usec`. `None` until both
    /// a `WATCHDOG_USEC=` and a first `WATCHDOG=1` arrived.
    pub watchdog_deadline: Option<Timestamp>,
    /// Whether the watchdog deadline passed (or `WATCHDOG=trigger` came) since the last ping.
    pub watchdog_expired: bool,
    /// When this boot must have sent `READY=1`, if a readiness timeout is set.
    pub ready_deadline: Option<Timestamp>,
    /// Whether this boot missed its readiness deadline (it may still become ready later).
    pub ready_timed_out: bool,
}

impl Snapshot {
    /// Whether `unit` is active now.
    pub fn is_active(&self, unit: &str) -> bool {
        self.active_units
            .binary_search_by(|u| u.as_str().cmp(unit))
            .is_ok()
    }

    /// Whether the guest finished booting: `READY=1` in this boot and `multi-user.target` or
    /// `graphical.target` active (`../shared/protocol.md` §4), and not failed, stopping or off.
    pub fn is_booted(&self) -> bool {
        matches!(self.phase, Phase::Ready | Phase::Reloading)
            && BOOTED_TARGETS.iter().any(|unit| self.is_active(unit))
    }
}

/// What belongs to one boot and is reset when the next starts.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
struct Boot {
    ready: bool,
    reloading: bool,
    stopping: bool,
    failed: bool,
    hostname_seen: bool,
    machine_id_seen: bool,
    status: Option<String>,
    active_units: BTreeSet<String>,
    signals_level: Option<u32>,
    main_pid: Option<u32>,
    errno: Option<u16>,
    bus_error: Option<String>,
    varlink_error: Option<String>,
    exit_status: Option<u8>,
    shutdown: Option<Shutdown>,
    started: Option<Timestamp>,
    watchdog_usec: Option<u64>,
    watchdog_last_ping: Option<Timestamp>,
    watchdog_expired: bool,
    ready_timed_out: bool,
}

impl Boot {
    fn watchdog_deadline(&self) -> Option<Timestamp> {
        let usec = self.watchdog_usec.filter(|&usec| usec > 0)?;
        Some(self.watchdog_last_ping?.saturating_add_micros(usec))
    }
}

/// The state machine of one guest. Sans-IO: it never reads a clock or touches a socket.
///
/// # Driving it
/// After every input, [`Guest::handle_message`], [`Guest::handle_datagram`] or
/// [`Guest::record_drop`], drain [`Guest::poll_event`] until it returns `None`; the events say
/// what changed, in order. Then ask [`Guest::poll_timeout`] when to call
/// [`Guest::handle_timeout`] (watchdog and readiness deadlines) and drain again after it.
/// [`Guest::snapshot`] gives the whole state at any time. Undrained events are kept up to
/// [`MAX_PENDING_EVENTS`], the oldest discarded first.
///
/// ```
/// use notifyhub_core::{Event, Guest, Phase, Sender, Timestamp};
///
/// let mut guest = Guest::new("web1", Timestamp::from_micros(1_000));
/// let now = Timestamp::from_micros(2_000);
/// guest.handle_datagram(now, Sender::Unknown, b"READY=1\nSTATUS=Ready.").unwrap();
/// let mut phases = Vec::new();
/// while let Some(event) = guest.poll_event() {
///     if let Event::PhaseChanged { to, .. } = event {
///         phases.push(to);
///     }
/// }
/// // The first message starts boot 1; with READY=1 in it, the guest is ready at once.
/// assert_eq!(phases, [Phase::Ready]);
/// assert_eq!(guest.snapshot().status.as_deref(), Some("Ready."));
/// ```
///
/// With the `serde` feature a guest serialises whole (but for undrained events), so a store can
/// checkpoint it and go on from there; the format is internal and may change between versions.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Guest {
    name: String,
    registered_at: Timestamp,
    first_seen: Option<Timestamp>,
    last_seen: Option<Timestamp>,
    last_sender: Option<Sender>,
    messages: u64,
    boot_count: u32,
    boot: Boot,
    hostname: Option<String>,
    machine_id: Option<String>,
    drops: Drops,
    phase: Phase,
    timeline: VecDeque<Milestone>,
    #[cfg_attr(feature = "serde", serde(skip))]
    events: VecDeque<Event>,
    ready_timeout_usec: Option<u64>,
    timeline_capacity: usize,
    milestones_recorded: u64,
}

impl Guest {
    /// A guest named `name`, registered at `now`, in phase [`Phase::Registered`].
    pub fn new(name: impl Into<String>, now: Timestamp) -> Self {
        Self {
            name: name.into(),
            registered_at: now,
            first_seen: None,
            last_seen: None,
            last_sender: None,
            messages: 0,
            boot_count: 0,
            boot: Boot::default(),
            hostname: None,
            machine_id: None,
            drops: Drops::default(),
            phase: Phase::Registered,
            timeline: VecDeque::new(),
            events: VecDeque::new(),
            ready_timeout_usec: None,
            timeline_capacity: MAX_TIMELINE,
            milestones_recorded: 0,
        }
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current phase.
    pub const fn phase(&self) -> Phase {
        self.phase
    }

    /// Parses `datagram` with [`parse`] and feeds it to [`Guest::handle_message`]. A datagram
    /// that fails to parse is counted in [`Drops`] and changes nothing else.
    ///
    /// # Errors
    /// The [`ParseError`] of a rejected datagram, after it was counted.
    pub fn handle_datagram(
        &mut self,
        now: Timestamp,
        sender: Sender,
        datagram: &[u8],
    ) -> Result<(), ParseError> {
        match parse(datagram) {
            Ok(message) => {
                self.handle_message(now, sender, &message);
                Ok(())
            }
            Err(error) => {
                self.record_drop(DropReason::from(error));
                Err(error)
            }
        }
    }

    /// Counts a datagram (or part of one) that was not taken, e.g. one the transport saw
    /// truncated. Produces no event.
    pub fn record_drop(&mut self, reason: DropReason) {
        self.drops.count(reason);
    }

    /// Applies one parsed message received at `now` from `sender`.
    ///
    /// The rules, from `service_notify_message()` (`src/core/service.c`) and PID 1's messages to
    /// its supervisor (`../shared/protocol.md` §4): within one message `STOPPING=1` beats
    /// `READY=1`, which beats `RELOADING=1`; after `STOPPING=1` nothing makes the boot ready
    /// again (final since v259); `RELOADING=1` counts only once the boot was ready (systemd
    /// acts on it only in `SERVICE_RUNNING`); `READY=1` is repeated by systemd after every
    /// reload and in emergency mode, and a repeat is not a new boot.
    pub fn handle_message(&mut self, now: Timestamp, sender: Sender, message: &Message<'_>) {
        self.messages = self.messages.saturating_add(1);
        self.first_seen.get_or_insert(now);
        self.last_seen = Some(now);
        self.last_sender = Some(sender);

        let restarted = (message.hostname.is_some() && self.boot.hostname_seen)
            || (message.machine_id.is_some() && self.boot.machine_id_seen);
        // A barrier is no sign of life of a new boot: `systemd-notify` sends one after its
        // message, and after the guest's last message it would otherwise start a boot.
        let starts_boot = self.boot_count == 0 || self.phase == Phase::Off;
        if (starts_boot && !message.is_barrier_only()) || restarted {
            self.start_boot(now);
        }

        if let Some(hostname) = message.hostname {
            self.boot.hostname_seen = true;
            self.hostname = Some(hostname.to_string());
            self.push(
                now,
                Event::Hostname {
                    hostname: hostname.to_string(),
                },
            );
        }
        if let Some(machine_id) = message.machine_id {
            self.boot.machine_id_seen = true;
            self.machine_id = Some(machine_id.to_string());
            self.push(
                now,
                Event::MachineId {
                    machine_id: machine_id.to_string(),
                },
            );
        }
        if let Some(level) = message.signals_level {
            self.boot.signals_level = Some(level);
        }
        if let Some(pid) = message.main_pid {
            self.boot.main_pid = Some(pid);
        }
        if let Some(errno) = message.errno
            && self.boot.errno != Some(errno)
        {
            self.boot.errno = Some(errno);
            self.push(now, Event::Errno { errno });
        }
        if let Some(name) = message.bus_error {
            self.boot.bus_error = Some(name.to_string());
        }
        if let Some(name) = message.varlink_error {
            self.boot.varlink_error = Some(name.to_string());
        }
        if let Some(code) = message.exit_status {
            self.boot.exit_status = Some(code);
        }
        if let Some(status) = message.status {
            let status = (!status.is_empty()).then(|| status.to_string());
            if self.boot.status != status {
                self.boot.status.clone_from(&status);
                self.push(now, Event::StatusChanged { status });
            }
        }
        if let Some(unit) = message.unit_inactive
            && self.boot.active_units.remove(unit)
        {
            self.push(
                now,
                Event::UnitInactive {
                    unit: unit.to_string(),
                },
            );
        }
        if let Some(unit) = message.unit_active {
            self.unit_active(now, unit);
        }

        if message.stopping {
            self.boot.stopping = true;
        } else if message.ready {
            if !self.boot.stopping {
                self.boot.ready = true;
                self.boot.reloading = false;
            }
        } else if message.reloading && self.boot.ready && !self.boot.stopping {
            // Only a ready boot reloads (`service.c`: `if (s->state == SERVICE_RUNNING)
            // service_enter_reload_by_notify(s)`). Before its first READY=1 the boot is still
            // booting: after soft-reboot.target PID 1 sends RELOADING=1 as its next boot begins,
            // and `reloading` would satisfy a `ready` waiter there (seen with systemd 257).
            self.boot.reloading = true;
        }

        if let Some(usec) = message.watchdog_usec {
            // WATCHDOG_USEC= restarts the interval from now (`service.c`).
            self.boot.watchdog_usec = Some(usec);
            if self.boot.watchdog_last_ping.is_some() {
                self.boot.watchdog_last_ping = Some(now);
            }
            self.boot.watchdog_expired = false;
        }
        match message.watchdog {
            Some(Watchdog::Ping) => {
                self.boot.watchdog_last_ping = Some(now);
                self.boot.watchdog_expired = false;
            }
            Some(Watchdog::Trigger) => self.watchdog_missed(now, now),
            None => {}
        }

        if let Some(verb) = message.shutdown {
            let shutdown = Shutdown {
                verb: verb.to_string(),
                reboot_parameter: message.reboot_parameter.map(ToString::to_string),
            };
            self.boot.shutdown = Some(shutdown.clone());
            self.push(
                now,
                Event::Shutdown {
                    shutdown,
                    exit_status: message.exit_status,
                },
            );
        }
        self.update_phase(now);
    }

    fn unit_active(&mut self, now: Timestamp, unit: &str) {
        if unit == SOFT_REBOOT_TARGET {
            // The same PID 1 boots again without X_SYSTEMD_SHUTDOWN (`systemctl soft-reboot`).
            self.push(
                now,
                Event::UnitActive {
                    unit: unit.to_string(),
                },
            );
            self.update_phase(now);
            self.start_boot(now);
            return;
        }
        if self.boot.active_units.contains(unit) {
            return;
        }
        if self.boot.active_units.len() >= MAX_ACTIVE_UNITS {
            self.drops.count(DropReason::UnitsOverLimit);
            return;
        }
        self.boot.active_units.insert(unit.to_string());
        if unit == SHUTDOWN_TARGET {
            self.boot.stopping = true;
        }
        if FAILED_BOOT_TARGETS.contains(&unit) {
            self.boot.failed = true;
        }
        self.push(
            now,
            Event::UnitActive {
                unit: unit.to_string(),
            },
        );
    }

    fn watchdog_missed(&mut self, now: Timestamp, deadline: Timestamp) {
        if !self.boot.watchdog_expired {
            self.boot.watchdog_expired = true;
            self.push(now, Event::WatchdogMissed { deadline });
        }
    }

    /// Sets how long a boot may take from its first message to `READY=1`, in µs (`None`: no
    /// limit, the default). A boot that misses it gets [`Event::ReadyTimedOut`] once, through
    /// [`Guest::handle_timeout`]; it stays `booting` and may still become ready.
    pub fn set_ready_timeout(&mut self, timeout_usec: Option<u64>) {
        self.ready_timeout_usec = timeout_usec;
    }

    fn ready_deadline(&self) -> Option<Timestamp> {
        Some(
            self.boot
                .started?
                .saturating_add_micros(self.ready_timeout_usec?),
        )
    }

    /// When the driver must call [`Guest::handle_timeout`] next: the earliest pending watchdog
    /// or readiness deadline; `None` when nothing is pending. Ask again after every input.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if matches!(self.phase, Phase::Off | Phase::Stopping | Phase::Registered) {
            return None;
        }
        let watchdog = self
            .boot
            .watchdog_deadline()
            .filter(|_| !self.boot.watchdog_expired);
        let ready = self
            .ready_deadline()
            .filter(|_| !self.boot.ready && !self.boot.ready_timed_out);
        match (watchdog, ready) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires every deadline at or before `now` (see [`Guest::poll_timeout`]); then drain
    /// [`Guest::poll_event`]. Calling it early or twice does nothing.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if matches!(self.phase, Phase::Off | Phase::Stopping | Phase::Registered) {
            return;
        }
        if let Some(deadline) = self.boot.watchdog_deadline()
            && deadline <= now
        {
            self.watchdog_missed(now, deadline);
        }
        if let Some(deadline) = self.ready_deadline()
            && deadline <= now
            && !self.boot.ready
            && !self.boot.ready_timed_out
        {
            self.boot.ready_timed_out = true;
            self.push(now, Event::ReadyTimedOut { deadline });
        }
    }

    fn start_boot(&mut self, now: Timestamp) {
        self.boot_count = self.boot_count.saturating_add(1);
        self.boot = Boot {
            started: Some(now),
            ..Boot::default()
        };
        self.push(
            now,
            Event::BootStarted {
                number: self.boot_count,
            },
        );
    }

    fn derive_phase(&self) -> Phase {
        let boot = &self.boot;
        if self.boot_count == 0 {
            Phase::Registered
        } else if boot.shutdown.is_some() {
            Phase::Off
        } else if boot.stopping {
            Phase::Stopping
        } else if boot.failed {
            Phase::Failed
        } else if boot.reloading {
            Phase::Reloading
        } else if boot.ready {
            Phase::Ready
        } else {
            Phase::Booting
        }
    }

    fn update_phase(&mut self, now: Timestamp) {
        let phase = self.derive_phase();
        if phase != self.phase {
            let from = core::mem::replace(&mut self.phase, phase);
            self.push(now, Event::PhaseChanged { from, to: phase });
        }
    }

    fn push(&mut self, now: Timestamp, event: Event) {
        if event.is_milestone() {
            self.milestones_recorded = self.milestones_recorded.saturating_add(1);
            if self.timeline.len() >= self.timeline_capacity {
                self.timeline.pop_front();
            }
            self.timeline.push_back(Milestone {
                at: now,
                boot: self.boot_count,
                event: event.clone(),
            });
        }
        if self.events.len() == MAX_PENDING_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The next change since the last call, oldest first; `None` when all were drained.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The boot timeline: the last milestones (events but status changes), oldest first; at
    /// most [`MAX_TIMELINE`] unless [`Guest::set_timeline_capacity`] said otherwise.
    pub fn timeline(&self) -> impl ExactSizeIterator<Item = &Milestone> + '_ {
        self.timeline.iter()
    }

    /// Keeps up to `capacity` milestones in the timeline (at least 1), forgetting the oldest
    /// now if there are more. A log viewer replaying a long history wants more than a hub
    /// holding thousands of guests.
    pub fn set_timeline_capacity(&mut self, capacity: usize) {
        self.timeline_capacity = capacity.max(1);
        while self.timeline.len() > self.timeline_capacity {
            self.timeline.pop_front();
        }
    }

    /// How many milestones were recorded since the guest was created, including those the
    /// timeline has forgotten.
    pub const fn milestones_recorded(&self) -> u64 {
        self.milestones_recorded
    }

    /// The whole state now.
    pub fn snapshot(&self) -> Snapshot {
        let boot = &self.boot;
        Snapshot {
            name: self.name.clone(),
            phase: self.phase,
            status: boot.status.clone(),
            hostname: self.hostname.clone(),
            machine_id: self.machine_id.clone(),
            active_units: boot.active_units.iter().cloned().collect(),
            signals_level: boot.signals_level,
            main_pid: boot.main_pid,
            errno: boot.errno,
            bus_error: boot.bus_error.clone(),
            varlink_error: boot.varlink_error.clone(),
            exit_status: boot.exit_status,
            shutdown: boot.shutdown.clone(),
            boot_count: self.boot_count,
            failed_boot: boot.failed,
            ready_seen: boot.ready,
            messages: self.messages,
            drops: self.drops,
            registered_at: self.registered_at,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            last_sender: self.last_sender,
            watchdog_usec: boot.watchdog_usec,
            watchdog_deadline: boot.watchdog_deadline(),
            watchdog_expired: boot.watchdog_expired,
            ready_deadline: self.ready_deadline(),
            ready_timed_out: boot.ready_timed_out,
        }
    }
}
