//! VM guests: how their messages reach the hub over vsock, and who they are.
//!
//! A container gets its own notify socket (see [`registry`](crate::registry)); a VM reaches the
//! hub over vsock, in one of two ways, and a guest says which with its [`Reach`]:
//!
//! | [`Reach`] | the VMM | where the hub listens | who sent it |
//! |---|---|---|---|
//! | [`Reach::Cid`] | kernel vsock (`vhost-vsock`: QEMU `-device vhost-vsock-pci`, systemd-vmspawn, crosvm) | hub-wide, on `(VMADDR_CID_ANY, --vsock-port)` and `--vsock-seqpacket-port` | the peer CID `accept()` reports |
//! | [`Reach::Hybrid`] | hybrid vsock (Firecracker, cloud-hypervisor, `vhost-device-vsock`) | the guest's own UNIX socket `<uds_path>_<port>` | the socket: one per guest |
//!
//! Every guest keeps its unix notify socket too, whatever its [`Reach`]: the guest API stays
//! the same for all guests (`notify_socket` is always a path), a process on the host that speaks
//! for the VM (a VMM wrapper, a test) can still report to it, and its receive loop is the one
//! task per guest that also fires the guest's deadlines.
//!
//! The hub-wide listeners hand every connection's [`Event`] to [`route`], which finds the guest
//! by the peer CID, applies the policy of `notifyhub serve` (`--ignore-unprivileged`,
//! `--auto-register`, `--max-guests`) and feeds the store. [`route`] is a plain function of an
//! [`Event`], so all of that is testable without kernel vsock (which has no loopback on most
//! hosts). A hybrid guest's events skip the CID lookup: [`deliver`] is the per-guest half of
//! [`route`], run by the guest's receive loop.
//!
//! Drops: what the transport drops ([`DropCause`]) is counted on the guest as a core
//! [`DropReason`] ([`drop_reason`]); what cannot be pinned on a guest (an unknown CID, a CID over
//! `--max-guests`) is counted hub-wide ([`VsockStats`], `GET /api/v1/vsock`) and logged.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use notifyhub_core::{DropReason, Sender};
pub use notifyhub_transport_vsock::{
    DropCause, Event, ListenerConfig, MAX_SOCKET_PATH_LEN, Received, VMADDR_CID_ANY,
    VMADDR_PORT_ANY, VsockSeqpacketListener, VsockStreamListener,
};
use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Serialize, Serializer};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, trace, warn};

use crate::clock;
use crate::journal::Arrival;
use crate::registry::{RegisterError, Registry};
use crate::store::{Hub, IngestError};

/// The CID of the host, which every guest connects to (`VMADDR_CID_HOST`).
pub const HOST_CID: u32 = 2;
/// The lowest CID a guest may have: 0, 1 and 2 are the hypervisor, local and host (`vsock(7)`).
pub const MIN_GUEST_CID: u32 = 3;
/// The highest CID a guest may have: `u32::MAX` is `VMADDR_CID_ANY`.
pub const MAX_GUEST_CID: u32 = VMADDR_CID_ANY - 1;
/// The highest vsock port: `u32::MAX` is `VMADDR_PORT_ANY`.
pub const MAX_PORT: u32 = VMADDR_PORT_ANY - 1;
/// The CID a hybrid guest gets unless told otherwise. Each hybrid vsock device has CIDs of its
/// own (the host kernel never sees them), so every Firecracker VM can be CID 3, as in
/// Firecracker's own examples.
pub const DEFAULT_HYBRID_CID: u32 = 3;
/// Default `--max-guests`.
pub const DEFAULT_MAX_GUESTS: usize = 1024;
/// Default `--vsock-idle-ms`: [`notifyhub_transport_vsock::DEFAULT_IDLE_TIMEOUT`].
pub const DEFAULT_IDLE_MS: u64 = 20;
/// Events the hub-wide listeners may queue for [`route`] before they wait (each one holds a
/// connection slot, so the listeners' own limits bound the rest).
const ROUTE_QUEUE: usize = 64;

/// How a guest's messages reach the hub, besides its unix notify socket.
///
/// Serialised into the guest's JSON as two fields, `"cid"` (kernel vsock) and `"hybrid"`, each
/// `null` unless that is how the guest is reached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Reach {
    /// Only its unix notify socket (a container, a host process).
    #[default]
    Unix,
    /// Kernel vsock: messages on the hub-wide listeners whose peer has this CID.
    Cid(u32),
    /// Hybrid vsock: messages on a UNIX socket of its own.
    Hybrid(Hybrid),
}

impl Reach {
    /// A kernel vsock guest, after checking the CID ([`MIN_GUEST_CID`] to [`MAX_GUEST_CID`]).
    ///
    /// # Errors
    /// [`VsockError::BadCid`].
    pub fn cid(cid: u32) -> Result<Self, VsockError> {
        check_cid(cid).map(Self::Cid)
    }

    /// The kernel vsock CID, for [`Reach::Cid`] only.
    pub fn kernel_cid(&self) -> Option<u32> {
        match self {
            Self::Cid(cid) => Some(*cid),
            _ => None,
        }
    }

    /// The hybrid socket, for [`Reach::Hybrid`] only.
    pub fn hybrid(&self) -> Option<&Hybrid> {
        match self {
            Self::Hybrid(hybrid) => Some(hybrid),
            _ => None,
        }
    }
}

impl Serialize for Reach {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut fields = serializer.serialize_struct("Reach", 2)?;
        fields.serialize_field("cid", &self.kernel_cid())?;
        fields.serialize_field("hybrid", &self.hybrid())?;
        fields.end()
    }
}

/// A hybrid vsock guest's socket: the VMM listens on `uds_path` (Firecracker's `uds_path`,
/// cloud-hypervisor's `--vsock socket=`, `vhost-device-vsock`'s `uds-path=`) and delivers each
/// guest connection to host port `port` to `<uds_path>_<port>`, which the hub binds.
///
/// Serialised as `{"uds_path": …, "port": …, "cid": …, "socket": "<uds_path>_<port>"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hybrid {
    uds_path: String,
    port: u32,
    cid: u32,
    socket: String,
}

impl Hybrid {
    /// Checks and builds: `uds_path` absolute, `<uds_path>_<port>` at most
    /// [`MAX_SOCKET_PATH_LEN`] bytes without NUL, `port` not `VMADDR_PORT_ANY`, `cid` from
    /// [`MIN_GUEST_CID`] to [`MAX_GUEST_CID`].
    ///
    /// # Errors
    /// The [`VsockError`] that says what is wrong.
    pub fn new(uds_path: &str, port: u32, cid: u32) -> Result<Self, VsockError> {
        check_cid(cid)?;
        if port == VMADDR_PORT_ANY {
            return Err(VsockError::BadPort(port.to_string()));
        }
        if !uds_path.starts_with('/') {
            return Err(VsockError::RelativePath(uds_path.to_owned()));
        }
        if uds_path.contains('\0') {
            return Err(VsockError::NulInPath);
        }
        let socket = format!("{uds_path}_{port}");
        if socket.len() > MAX_SOCKET_PATH_LEN {
            return Err(VsockError::PathTooLong {
                len: socket.len(),
                path: socket,
            });
        }
        Ok(Self {
            uds_path: uds_path.to_owned(),
            port,
            cid,
            socket,
        })
    }

    /// The VMM's socket path.
    pub fn uds_path(&self) -> &str {
        &self.uds_path
    }

    /// The host port the guest connects to (`vsock-stream:2:PORT`).
    pub fn port(&self) -> u32 {
        self.port
    }

    /// The guest's CID as its VMM gives it; events from the socket carry it.
    pub fn cid(&self) -> u32 {
        self.cid
    }

    /// `<uds_path>_<port>`: the socket the hub binds.
    pub fn socket(&self) -> &str {
        &self.socket
    }
}

fn check_cid(cid: u32) -> Result<u32, VsockError> {
    if (MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
        Ok(cid)
    } else {
        Err(VsockError::BadCid(cid.to_string()))
    }
}

/// Why a guest's vsock identity is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VsockError {
    /// The CID is not a guest's.
    #[error(
        "CID {0} is not a guest's: a guest CID is from {MIN_GUEST_CID} to {MAX_GUEST_CID} \
         (0, 1 and 2 are the hypervisor, local and host; {VMADDR_CID_ANY} is VMADDR_CID_ANY)"
    )]
    BadCid(String),
    /// The port is `VMADDR_PORT_ANY`, or not a 32-bit number.
    #[error("vsock port {0} is not a port: it must be from 0 to {MAX_PORT}")]
    BadPort(String),
    /// The hybrid `uds_path` is relative.
    #[error("hybrid uds_path must be absolute, not {0:?}")]
    RelativePath(String),
    /// The hybrid `uds_path` holds a NUL byte.
    #[error("hybrid uds_path holds a NUL byte")]
    NulInPath,
    /// `<uds_path>_<port>` is too long for `sun_path`.
    #[error(
        "hybrid socket {path} is {len} bytes long, the limit is {MAX_SOCKET_PATH_LEN} \
         (AF_UNIX sun_path)"
    )]
    PathTooLong {
        /// `<uds_path>_<port>`.
        path: String,
        /// Its length in bytes.
        len: usize,
    },
    /// Both a CID and a hybrid socket were given.
    #[error("a guest has a CID (kernel vsock) or a hybrid socket, not both")]
    CidAndHybrid,
    /// A kernel vsock guest, but the hub has no kernel vsock listener for it to reach.
    #[error(
        "guest with CID {0} could not reach the hub: it has no kernel vsock listener \
         (start it with --vsock-port or --vsock-seqpacket-port, or pass it a vsock socket)"
    )]
    NoKernelListener(u32),
}

/// The `"hybrid"` object of `POST /api/v1/guests`: `{"uds_path": "/run/fc1.vsock", "port":
/// 9999}`, optionally with the guest's `"cid"` (default [`DEFAULT_HYBRID_CID`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HybridRequest {
    uds_path: String,
    port: serde_json::Number,
    #[serde(default)]
    cid: Option<serde_json::Number>,
}

/// The [`Reach`] a `POST /api/v1/guests` body asks for with its `"cid"` and `"hybrid"` fields
/// (neither: [`Reach::Unix`]). Numbers are taken as JSON numbers, so that a negative or
/// fractional one is refused here, with the others, rather than as a type error.
///
/// # Errors
/// The [`VsockError`] that says what is wrong.
pub fn requested_reach(
    cid: Option<&serde_json::Number>,
    hybrid: Option<&HybridRequest>,
) -> Result<Reach, VsockError> {
    let number = |n: &serde_json::Number, bad: fn(String) -> VsockError| {
        n.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(n.to_string()))
    };
    match (cid, hybrid) {
        (None, None) => Ok(Reach::Unix),
        (Some(cid), None) => Reach::cid(number(cid, VsockError::BadCid)?),
        (None, Some(hybrid)) => {
            let cid = match &hybrid.cid {
                Some(cid) => number(cid, VsockError::BadCid)?,
                None => DEFAULT_HYBRID_CID,
            };
            let port = number(&hybrid.port, VsockError::BadPort)?;
            Hybrid::new(&hybrid.uds_path, port, cid).map(Reach::Hybrid)
        }
        (Some(_), Some(_)) => Err(VsockError::CidAndHybrid),
    }
}

/// The ports of the hub-wide kernel vsock listeners, as bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelPorts {
    /// `SOCK_STREAM` listener (`--vsock-port`).
    pub stream: Option<u32>,
    /// `SOCK_SEQPACKET` listener (`--vsock-seqpacket-port`).
    pub seqpacket: Option<u32>,
}

impl KernelPorts {
    /// Whether any listener runs.
    pub fn any(&self) -> bool {
        self.stream.is_some() || self.seqpacket.is_some()
    }

    /// The address to hand a kernel vsock guest as `vmm.notify_socket`: `vsock-stream:2:P`
    /// (what systemd-vmspawn and mkosi hand out), else `vsock-seqpacket:2:Q`. Never the plain
    /// `vsock:` form: it picks `SOCK_SEQPACKET` on virtio-vsock and never falls back to a stream
    /// (`../shared/protocol.md` §1).
    pub fn address(&self) -> Option<String> {
        match (self.stream, self.seqpacket) {
            (Some(port), _) => Some(format!("vsock-stream:{HOST_CID}:{port}")),
            (None, Some(port)) => Some(format!("vsock-seqpacket:{HOST_CID}:{port}")),
            (None, None) => None,
        }
    }
}

/// What the registry needs to know about vsock: the listeners it may route to, and the policy
/// of `notifyhub serve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VsockSettings {
    /// The hub-wide kernel listeners' ports (none: no kernel vsock guest can register).
    pub ports: KernelPorts,
    /// Timeouts and limits of every listener, the hybrid ones too.
    pub listener: ListenerConfig,
    /// `--auto-register`: a message from an unknown CID registers guest `cid-<N>`.
    pub auto_register: bool,
    /// `--max-guests`: registration through the API and auto-registration stop once the hub
    /// holds this many guests.
    pub max_guests: usize,
    /// `--ignore-unprivileged`: drop (and count) messages from vsock source ports ≥ 1024.
    pub ignore_unprivileged: bool,
}

impl Default for VsockSettings {
    fn default() -> Self {
        Self {
            ports: KernelPorts::default(),
            listener: ListenerConfig::default(),
            auto_register: false,
            max_guests: DEFAULT_MAX_GUESTS,
            ignore_unprivileged: false,
        }
    }
}

/// What `notifyhub serve` was asked to do about vsock ([`crate::server::Config::vsock`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VsockConfig {
    /// `--vsock-port`: the `SOCK_STREAM` listener's port; `VMADDR_PORT_ANY` lets the kernel
    /// pick one.
    pub stream_port: Option<u32>,
    /// `--vsock-seqpacket-port`: the `SOCK_SEQPACKET` listener's port. Stream and seqpacket
    /// share the kernel's vsock port space, so it must differ from `stream_port`.
    pub seqpacket_port: Option<u32>,
    /// The policy and listener settings; `ports` is filled in from the bound listeners.
    pub settings: VsockSettings,
    /// VM guests to register at start (`--vm`, `--hybrid`).
    pub guests: Vec<VmGuest>,
}

impl VsockConfig {
    /// Checks what can be checked before binding anything.
    ///
    /// # Errors
    /// Equal stream and seqpacket ports, a listener config that fails
    /// [`ListenerConfig::validate`], or `--auto-register` without a kernel listener.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let (Some(stream), Some(seqpacket)) = (self.stream_port, self.seqpacket_port)
            && stream == seqpacket
            && stream != VMADDR_PORT_ANY
        {
            anyhow::bail!(
                "--vsock-port and --vsock-seqpacket-port are both {stream}: stream and \
                 seqpacket sockets share the vsock port space, so give them different ports"
            );
        }
        self.settings
            .listener
            .validate()
            .context("invalid vsock listener settings (--vsock-idle-ms)")?;
        if self.settings.auto_register
            && self.stream_port.is_none()
            && self.seqpacket_port.is_none()
        {
            anyhow::bail!(
                "--auto-register needs --vsock-port, --vsock-seqpacket-port or a passed vsock \
                 socket"
            );
        }
        Ok(())
    }
}

/// A VM guest declared on the command line: `--vm NAME=CID` or `--hybrid NAME=UDS_PATH:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmGuest {
    /// The guest's name (checked when it is registered).
    pub name: String,
    /// How it reaches the hub.
    pub reach: Reach,
}

impl VmGuest {
    /// Parses `NAME=CID` (`--vm`); the CID is decimal.
    ///
    /// # Errors
    /// A sentence for clap to show.
    pub fn parse_cid(arg: &str) -> Result<Self, String> {
        let (name, cid) = arg
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=CID, not {arg:?}"))?;
        let reach = match cid.parse::<u32>() {
            Ok(cid) => Reach::cid(cid),
            Err(_) if !cid.is_empty() && cid.bytes().all(|b| b.is_ascii_digit()) => {
                Err(VsockError::BadCid(cid.to_owned()))
            }
            Err(_) => return Err(format!("CID must be a decimal number, not {cid:?}")),
        };
        Ok(Self {
            name: name.to_owned(),
            reach: reach.map_err(|e| e.to_string())?,
        })
    }

    /// Parses `NAME=UDS_PATH:PORT` (`--hybrid`): the port follows the last `:`; a relative
    /// `UDS_PATH` is taken from the current directory. The guest's CID is
    /// [`DEFAULT_HYBRID_CID`].
    ///
    /// # Errors
    /// A sentence for clap to show.
    pub fn parse_hybrid(arg: &str) -> Result<Self, String> {
        let (name, socket) = arg
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=UDS_PATH:PORT, not {arg:?}"))?;
        let (uds_path, port) = socket
            .rsplit_once(':')
            .ok_or_else(|| format!("expected UDS_PATH:PORT, not {socket:?}"))?;
        let port = port
            .parse::<u32>()
            .map_err(|_| format!("PORT must be a decimal number below 4294967295, not {port:?}"))?;
        if uds_path.is_empty() {
            return Err("UDS_PATH is empty".to_owned());
        }
        let absolute = std::path::absolute(uds_path)
            .map_err(|e| format!("cannot make {uds_path:?} absolute: {e}"))?;
        let absolute = absolute
            .to_str()
            .ok_or_else(|| format!("{} is not valid UTF-8", absolute.display()))?;
        let hybrid = Hybrid::new(absolute, port, DEFAULT_HYBRID_CID).map_err(|e| e.to_string())?;
        Ok(Self {
            name: name.to_owned(),
            reach: Reach::Hybrid(hybrid),
        })
    }
}

/// The vsock flags of `notifyhub serve`.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "VM guests (vsock)")]
pub struct VsockArgs {
    /// Listen for VM guests on AF_VSOCK SOCK_STREAM (VMADDR_CID_ANY, PORT); hand them
    /// vmm.notify_socket=vsock-stream:2:PORT. Each message goes to the guest with the peer's
    /// CID (--vm).
    #[arg(long, value_name = "PORT", value_parser = crate::config::integer_in(0, MAX_PORT))]
    pub vsock_port: Option<u32>,
    /// Also listen on AF_VSOCK SOCK_SEQPACKET (VMADDR_CID_ANY, PORT), for guests given the plain
    /// vsock:2:PORT form (or vsock-seqpacket:). Must differ from --vsock-port: both share the
    /// vsock port space.
    #[arg(long, value_name = "PORT", value_parser = crate::config::integer_in(0, MAX_PORT))]
    pub vsock_seqpacket_port: Option<u32>,
    /// A vsock message is complete once no byte came for this long after the last one (VMM
    /// bridges lose the guest's half-close; 1 to 1999).
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_IDLE_MS, value_parser = crate::config::integer_in(1_u64, 1999))]
    pub vsock_idle_ms: u64,
    /// Register a VM guest reached over kernel vsock (repeatable): the messages from CID
    /// (3 to 4294967294, unique) to the vsock listeners are its. It gets a unix socket too.
    /// Needs --vsock-port, --vsock-seqpacket-port or a vsock socket passed by systemd.
    #[arg(long = "vm", value_name = "NAME=CID", value_parser = VmGuest::parse_cid)]
    pub vms: Vec<VmGuest>,
    /// Register a hybrid vsock guest (Firecracker, cloud-hypervisor, vhost-device-vsock;
    /// repeatable): the hub binds UDS_PATH_PORT, where the VMM whose vsock socket is UDS_PATH
    /// delivers the guest's connections to host port PORT. The guest's CID is taken as 3 (the API
    /// takes others). It gets a unix socket too; UDS_PATH_PORT is removed with the guest.
    #[arg(long = "hybrid", value_name = "NAME=UDS_PATH:PORT", value_parser = VmGuest::parse_hybrid)]
    pub hybrids: Vec<VmGuest>,
    /// Register guest cid-N on the first message from an unknown CID N (instead of dropping it).
    /// Needs a kernel vsock listener, as --vm does.
    #[arg(long)]
    pub auto_register: bool,
    /// Registration through the API (POST /api/v1/guests: 503 beyond it) and auto-registration
    /// stop once the hub holds this many guests; further unknown CIDs are dropped and counted
    /// (GET /api/v1/vsock). Guests of the command line and the file are not limited.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_GUESTS,
          value_parser = crate::config::integer_in(0_usize, 10_000_000))]
    pub max_guests: usize,
    /// Drop (and count) kernel vsock messages from source ports ≥ 1024, i.e. not sent by root in
    /// the guest. Hybrid vsock hides the port: its messages are kept.
    #[arg(long)]
    pub ignore_unprivileged: bool,
}

impl VsockArgs {
    /// The [`VsockConfig`] these flags ask for.
    pub fn into_config(self) -> VsockConfig {
        let mut listener = ListenerConfig::default();
        listener.idle_timeout = Duration::from_millis(self.vsock_idle_ms);
        VsockConfig {
            stream_port: self.vsock_port,
            seqpacket_port: self.vsock_seqpacket_port,
            settings: VsockSettings {
                ports: KernelPorts::default(),
                listener,
                auto_register: self.auto_register,
                max_guests: self.max_guests,
                ignore_unprivileged: self.ignore_unprivileged,
            },
            guests: self.vms.into_iter().chain(self.hybrids).collect(),
        }
    }
}

/// Maps what the vsock transport dropped to the core's [`DropReason`], counted on the guest.
pub fn drop_reason(cause: DropCause) -> DropReason {
    match cause {
        DropCause::Oversize => DropReason::Oversize,
        DropCause::ConnectionLimit | DropCause::PeerConnectionLimit => DropReason::ConnectionLimit,
        DropCause::Deadline | DropCause::Read(_) | DropCause::Empty => DropReason::Incomplete,
        // Whatever the transport adds later: no whole message arrived either.
        _ => DropReason::Incomplete,
    }
}

/// What became of one vsock [`Event`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Routed {
    /// The message was taken: its `seq` among the guest's messages.
    Accepted {
        /// The guest.
        guest: String,
        /// The message's number.
        seq: u64,
    },
    /// Dropped (by the transport, the core or the policy) and counted on the guest.
    Dropped {
        /// The guest.
        guest: String,
        /// Why.
        reason: DropReason,
    },
    /// No guest has the peer's CID, and none was registered for it; counted hub-wide.
    UnknownCid {
        /// The peer's CID.
        cid: u32,
    },
    /// `--auto-register` would pass `--max-guests`; counted hub-wide.
    GuestLimit {
        /// The peer's CID.
        cid: u32,
    },
    /// The guest was removed while its event was on the way.
    Gone {
        /// The guest.
        guest: String,
    },
}

/// Routes one event of the hub-wide kernel vsock listeners: finds the guest with the peer's CID
/// (registering `cid-<N>` first under `--auto-register`, within `--max-guests`) and
/// [`deliver`]s it there, then wakes the guest's receive loop to recompute its deadlines.
///
/// Only whole messages register a guest, and under `--ignore-unprivileged` only those from a
/// privileged port: a drop or an unprivileged sender never makes a guest. A message over the
/// guest's rate limit is dropped and counted ([`crate::limit`]).
pub async fn route(registry: &Registry, event: Event) -> Routed {
    let Sender::Vsock { cid, .. } = event.sender else {
        // The kernel listeners only make vsock senders.
        debug!(sender = ?event.sender, "vsock event without a vsock sender");
        return Routed::UnknownCid {
            cid: VMADDR_CID_ANY,
        };
    };
    let settings = registry.vsock_settings();
    let route = match registry.cid_route(cid) {
        Some(route) => route,
        None => {
            let wanted = matches!(event.received, Received::Message { .. })
                && !(settings.ignore_unprivileged && is_unprivileged(&event.sender));
            if !(settings.auto_register && wanted) {
                return unknown_cid(registry, cid, &event);
            }
            match registry.register_auto(cid).await {
                Ok(route) => route,
                Err(RegisterError::TooManyGuests(max)) => {
                    let n = registry.vsock_stats().over_guest_limit.count();
                    if n.is_power_of_two() {
                        warn!(
                            cid,
                            max_guests = max,
                            dropped = n,
                            "message from unknown CID dropped: the hub holds --max-guests guests"
                        );
                    }
                    return Routed::GuestLimit { cid };
                }
                Err(error) => {
                    warn!(cid, %error, "cannot auto-register a guest for this CID");
                    return unknown_cid(registry, cid, &event);
                }
            }
        }
    };
    // The guest's bucket, shared with its receive loop: a message over it is dropped here.
    if let Some(limiter) = &route.limiter
        && !limiter.admit(&route.name)
    {
        drop(event);
        return rate_limited(registry.hub(), &route.name, &route.wake).await;
    }
    let routed = deliver(
        registry.hub(),
        &route.name,
        event,
        settings.ignore_unprivileged,
    )
    .await;
    route.wake.notify_one();
    routed
}

/// Counts a message over guest `name`'s rate limit ([`crate::limit`]) as its drop
/// ([`DropReason::RateLimited`]), stored like every drop; `wake` is the guest's receive loop.
pub(crate) async fn rate_limited(hub: &Hub, name: &str, wake: &Arc<Notify>) -> Routed {
    let reason = DropReason::RateLimited;
    let dropped = Arrival::Dropped {
        at: clock::now(),
        reason,
        count: 1,
    };
    match hub.accept_batch(name, vec![dropped], wake).await {
        Err(IngestError::UnknownGuest(_)) => Routed::Gone {
            guest: name.to_owned(),
        },
        _ => Routed::Dropped {
            guest: name.to_owned(),
            reason,
        },
    }
}

fn unknown_cid(registry: &Registry, cid: u32, event: &Event) -> Routed {
    let n = registry.vsock_stats().unknown_cid.count();
    // Every one at debug; at warn the 1st, 2nd, 4th, 8th, …: a noisy peer cannot flood the log.
    if n.is_power_of_two() {
        warn!(cid, sender = ?event.sender, dropped = n, "vsock message from a CID no guest has");
    } else {
        debug!(cid, sender = ?event.sender, dropped = n, "vsock message from a CID no guest has");
    }
    Routed::UnknownCid { cid }
}

fn is_unprivileged(sender: &Sender) -> bool {
    sender.privileged_port() == Some(false)
}

/// Hands one vsock event to guest `name`: a message is ingested (stamped now), a transport
/// drop is counted as its [`drop_reason`], and under `ignore_unprivileged` a message from a
/// source port ≥ 1024 is counted as [`DropReason::Unprivileged`] instead. A hybrid sender has no
/// port, so it is never refused for it.
pub async fn deliver(hub: &Hub, name: &str, event: Event, ignore_unprivileged: bool) -> Routed {
    let guest = || name.to_owned();
    let reason = match event.received {
        Received::Message { .. } if ignore_unprivileged && is_unprivileged(&event.sender) => {
            debug!(guest = name, sender = ?event.sender, "unprivileged vsock message dropped");
            DropReason::Unprivileged
        }
        Received::Message { payload, end } => {
            let now = clock::now();
            return match hub
                .accept_datagram(name, now, event.sender, payload, Vec::new())
                .await
            {
                Ok(seq) => {
                    trace!(guest = name, seq, ?end, "vsock message");
                    Routed::Accepted {
                        guest: guest(),
                        seq,
                    }
                }
                // The core counted it already.
                Err(IngestError::Rejected(error)) => {
                    debug!(guest = name, %error, "vsock message rejected");
                    Routed::Dropped {
                        guest: guest(),
                        reason: error.into(),
                    }
                }
                Err(_) => Routed::Gone { guest: guest() },
            };
        }
        Received::Dropped { reason, len } => {
            debug!(
                guest = name,
                ?reason,
                len,
                "vsock connection dropped by the transport"
            );
            drop_reason(reason)
        }
    };
    match hub.accept_drop(name, reason).await {
        Ok(()) => Routed::Dropped {
            guest: guest(),
            reason,
        },
        Err(_) => Routed::Gone { guest: guest() },
    }
}

/// A hub-wide drop counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one; returns the new count.
    pub fn count(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }

    /// The count now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.get())
    }
}

/// Vsock messages dropped hub-wide: those no guest can be charged with.
#[derive(Debug, Default, Serialize)]
pub struct VsockStats {
    /// From a CID no guest has (and `--auto-register` off, or not a whole privileged message).
    pub unknown_cid: Counter,
    /// From an unknown CID while the hub held `--max-guests` guests.
    pub over_guest_limit: Counter,
}

/// `GET /api/v1/vsock`: the listeners, the policy and the hub-wide drops.
#[derive(Debug, Serialize)]
pub struct VsockStatus<'a> {
    /// The kernel listeners' ports.
    pub ports: KernelPorts,
    /// What to hand a kernel vsock guest as `vmm.notify_socket`, if anything.
    pub notify_socket: Option<String>,
    /// `--vsock-idle-ms`.
    pub idle_ms: u128,
    /// `--auto-register`.
    pub auto_register: bool,
    /// `--max-guests`.
    pub max_guests: usize,
    /// `--ignore-unprivileged`.
    pub ignore_unprivileged: bool,
    /// Hub-wide drops.
    pub drops: &'a VsockStats,
}

impl<'a> VsockStatus<'a> {
    /// The status of `settings` with `stats`.
    pub fn new(settings: &VsockSettings, stats: &'a VsockStats) -> Self {
        Self {
            ports: settings.ports,
            notify_socket: settings.ports.address(),
            idle_ms: settings.listener.idle_timeout.as_millis(),
            auto_register: settings.auto_register,
            max_guests: settings.max_guests,
            ignore_unprivileged: settings.ignore_unprivileged,
            drops: stats,
        }
    }
}

/// The hub-wide kernel vsock listeners, bound, not yet accepting.
#[derive(Debug, Default)]
pub struct KernelListeners {
    stream: Option<VsockStreamListener>,
    seqpacket: Option<VsockSeqpacketListener>,
}

impl KernelListeners {
    /// Binds the listeners `config` asks for (none: nothing to do).
    ///
    /// # Errors
    /// A failed [`VsockConfig::validate`], or a listener that cannot be bound (no `AF_VSOCK`,
    /// no vsock transport loaded, the port taken, a port below 1024 without
    /// `CAP_NET_BIND_SERVICE`).
    pub fn bind(config: &VsockConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let context = |kind: &str, port: u32| {
            format!("cannot listen on AF_VSOCK {kind} port {}", PortName(port))
        };
        let stream = config
            .stream_port
            .map(|port| VsockStreamListener::bind(port).with_context(|| context("stream", port)))
            .transpose()?;
        let seqpacket = config
            .seqpacket_port
            .map(|port| {
                VsockSeqpacketListener::bind(port).with_context(|| context("seqpacket", port))
            })
            .transpose()?;
        Ok(Self { stream, seqpacket })
    }

    /// As [`bind`](Self::bind), with the listening sockets a service manager passed (socket
    /// activation, [`crate::activation`]) in place of `--vsock-port` (`stream`) and
    /// `--vsock-seqpacket-port` (`seqpacket`); a flag they replace is ignored, with a warning.
    ///
    /// # Errors
    /// As [`bind`](Self::bind); also a passed socket whose port cannot be read.
    pub fn bind_or_adopt(
        config: &VsockConfig,
        stream: Option<std::os::fd::OwnedFd>,
        seqpacket: Option<std::os::fd::OwnedFd>,
    ) -> anyhow::Result<Self> {
        if stream.is_none() && seqpacket.is_none() {
            return Self::bind(config);
        }
        let mut rest = config.clone();
        if stream.is_some() && rest.stream_port.take().is_some() {
            warn!("--vsock-port ignored: the service manager passed the \"vsock\" listener");
        }
        if seqpacket.is_some() && rest.seqpacket_port.take().is_some() {
            warn!(
                "--vsock-seqpacket-port ignored: the service manager passed the \
                 \"vsock-seqpacket\" listener"
            );
        }
        // There is a kernel listener, the passed one: --auto-register has what it needs.
        rest.settings.auto_register = false;
        let mut listeners = Self::bind(&rest)?;
        if let Some(fd) = stream {
            let listener = VsockStreamListener::from_listening(fd)
                .context("cannot take over the passed \"vsock\" listener")?;
            listeners.stream = Some(listener);
        }
        if let Some(fd) = seqpacket {
            let listener = VsockSeqpacketListener::from_listening(fd)
                .context("cannot take over the passed \"vsock-seqpacket\" listener")?;
            listeners.seqpacket = Some(listener);
        }
        Ok(listeners)
    }

    /// The ports bound (the kernel's choice where `VMADDR_PORT_ANY` was asked).
    pub fn ports(&self) -> KernelPorts {
        KernelPorts {
            stream: self.stream.as_ref().map(VsockStreamListener::local_port),
            seqpacket: self
                .seqpacket
                .as_ref()
                .map(VsockSeqpacketListener::local_port),
        }
    }

    /// Starts accepting: every event goes through [`route`] into `registry`, until `cancel`
    /// fires. Events still queued then are routed before the tasks end.
    pub fn spawn(self, registry: Registry, cancel: CancellationToken) -> VsockTasks {
        let mut tasks = JoinSet::new();
        let (events, mut queue) = mpsc::channel(ROUTE_QUEUE);
        let config = registry.vsock_settings().listener;
        if let Some(listener) = self.stream {
            let port = listener.local_port();
            info!(port, "listening for VM guests on AF_VSOCK SOCK_STREAM");
            let run = listener.run(config, events.clone(), cancel.clone());
            tasks.spawn(async move { log_end("stream", port, run.await) });
        }
        if let Some(listener) = self.seqpacket {
            let port = listener.local_port();
            info!(port, "listening for VM guests on AF_VSOCK SOCK_SEQPACKET");
            let run = listener.run(config, events.clone(), cancel.clone());
            tasks.spawn(async move { log_end("seqpacket", port, run.await) });
        }
        // Ends once every listener has ended and dropped its sender.
        drop(events);
        tasks.spawn(async move {
            while let Some(event) = queue.recv().await {
                route(&registry, event).await;
            }
        });
        VsockTasks { cancel, tasks }
    }
}

fn log_end(kind: &str, port: u32, ended: io::Result<()>) {
    match ended {
        Ok(()) => debug!(kind, port, "vsock listener stopped"),
        Err(error) => error!(
            kind,
            port,
            %error,
            "vsock listener failed: no more messages from kernel vsock guests on this port"
        ),
    }
}

/// A port as flags name it: `any` for `VMADDR_PORT_ANY`.
struct PortName(u32);

impl fmt::Display for PortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == VMADDR_PORT_ANY {
            f.write_str("any")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// The running listeners and their router, from [`KernelListeners::spawn`].
#[derive(Debug)]
pub struct VsockTasks {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl VsockTasks {
    /// Stops accepting, routes what is queued, and waits for every task.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        while let Some(ended) = self.tasks.join_next().await {
            if let Err(error) = ended {
                error!(%error, "vsock task failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cids_of_guests_only() {
        assert_eq!(Reach::cid(3), Ok(Reach::Cid(3)));
        assert_eq!(Reach::cid(MAX_GUEST_CID), Ok(Reach::Cid(4_294_967_294)));
        for bad in [0, 1, 2, u32::MAX] {
            assert_eq!(Reach::cid(bad), Err(VsockError::BadCid(bad.to_string())));
        }
        assert!(
            VsockError::BadCid("2".into())
                .to_string()
                .contains("from 3 to 4294967294")
        );
    }

    #[test]
    fn vm_flag() {
        assert_eq!(
            VmGuest::parse_cid("vm1=5"),
            Ok(VmGuest {
                name: "vm1".into(),
                reach: Reach::Cid(5)
            })
        );
        for (bad, why) in [
            ("vm1", "NAME=CID"),
            ("vm1=", "decimal"),
            ("vm1=0x5", "decimal"),
            ("vm1=2", "from 3"),
            ("vm1=4294967295", "from 3"),
            ("vm1=4294967296", "from 3"),
        ] {
            let error = VmGuest::parse_cid(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn hybrid_flag() {
        let guest = VmGuest::parse_hybrid("fc1=/run/fc1.vsock:9999").unwrap();
        assert_eq!(guest.name, "fc1");
        let hybrid = guest.reach.hybrid().unwrap();
        assert_eq!(
            (
                hybrid.uds_path(),
                hybrid.port(),
                hybrid.cid(),
                hybrid.socket()
            ),
            ("/run/fc1.vsock", 9999, 3, "/run/fc1.vsock_9999")
        );
        // The port follows the last colon; the path may hold colons.
        let guest = VmGuest::parse_hybrid("a=/run/x:y.vsock:7").unwrap();
        assert_eq!(guest.reach.hybrid().unwrap().socket(), "/run/x:y.vsock_7");
        // Relative paths are taken from the current directory.
        let guest = VmGuest::parse_hybrid("a=v.sock:1").unwrap();
        let socket = guest.reach.hybrid().unwrap().socket().to_owned();
        assert!(
            socket.starts_with('/') && socket.ends_with("/v.sock_1"),
            "{socket}"
        );
        for (bad, why) in [
            ("fc1", "NAME=UDS_PATH:PORT"),
            ("fc1=/run/fc1.vsock", "UDS_PATH:PORT"),
            ("fc1=/run/fc1.vsock:x", "PORT must be"),
            ("fc1=/run/fc1.vsock:4294967295", "not a port"),
            ("fc1=:5", "empty"),
        ] {
            let error = VmGuest::parse_hybrid(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        let long = format!("fc1=/{}:9999", "a".repeat(110));
        assert!(
            VmGuest::parse_hybrid(&long)
                .unwrap_err()
                .contains("the limit is 107")
        );
    }

    #[test]
    fn hybrid_checks() {
        assert_eq!(
            Hybrid::new("run/x", 1, 3),
            Err(VsockError::RelativePath("run/x".into()))
        );
        assert_eq!(Hybrid::new("/x\0", 1, 3), Err(VsockError::NulInPath));
        assert_eq!(Hybrid::new("/x", 1, 2), Err(VsockError::BadCid("2".into())));
        assert_eq!(
            Hybrid::new("/x", VMADDR_PORT_ANY, 3),
            Err(VsockError::BadPort("4294967295".into()))
        );
        // 105 bytes of path, "_9" makes 107: the limit exactly.
        let path = format!("/{}", "a".repeat(104));
        assert!(Hybrid::new(&path, 9, 3).is_ok());
        assert!(matches!(
            Hybrid::new(&path, 10, 3),
            Err(VsockError::PathTooLong { len: 108, .. })
        ));
    }

    #[test]
    fn post_bodies() {
        let reach = |body: serde_json::Value| {
            let cid = body.get("cid").map(|n| n.as_number().unwrap().clone());
            let hybrid: Option<HybridRequest> = body
                .get("hybrid")
                .map(|h| serde_json::from_value(h.clone()).unwrap());
            requested_reach(cid.as_ref(), hybrid.as_ref())
        };
        use serde_json::json;
        assert_eq!(reach(json!({})), Ok(Reach::Unix));
        assert_eq!(reach(json!({"cid": 5})), Ok(Reach::Cid(5)));
        for bad in [
            json!(2),
            json!(-1),
            json!(3.5),
            json!(4_294_967_295_u64),
            json!(1e20),
        ] {
            assert!(
                matches!(reach(json!({ "cid": bad })), Err(VsockError::BadCid(_))),
                "{bad}"
            );
        }
        let hybrid = reach(json!({"hybrid": {"uds_path": "/run/a.vsock", "port": 7}})).unwrap();
        assert_eq!(hybrid.hybrid().unwrap().cid(), DEFAULT_HYBRID_CID);
        let hybrid =
            reach(json!({"hybrid": {"uds_path": "/run/a.vsock", "port": 7, "cid": 9}})).unwrap();
        assert_eq!(hybrid.hybrid().unwrap().socket(), "/run/a.vsock_7");
        assert_eq!(hybrid.hybrid().unwrap().cid(), 9);
        assert_eq!(
            reach(json!({"hybrid": {"uds_path": "/run/a.vsock", "port": -7}})),
            Err(VsockError::BadPort("-7".into()))
        );
        assert_eq!(
            reach(json!({"cid": 5, "hybrid": {"uds_path": "/a", "port": 7}})),
            Err(VsockError::CidAndHybrid)
        );
        assert!(
            serde_json::from_value::<HybridRequest>(json!({"uds_path": "/a", "port": 1, "x": 1}))
                .is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn reach_serialises_as_two_fields() {
        let json = |reach: &Reach| serde_json::to_value(reach).unwrap();
        assert_eq!(
            json(&Reach::Unix),
            serde_json::json!({"cid": null, "hybrid": null})
        );
        assert_eq!(
            json(&Reach::Cid(7)),
            serde_json::json!({"cid": 7, "hybrid": null})
        );
        let hybrid = Hybrid::new("/run/fc1.vsock", 9999, 3).unwrap();
        assert_eq!(
            json(&Reach::Hybrid(hybrid)),
            serde_json::json!({"cid": null, "hybrid": {
                "uds_path": "/run/fc1.vsock", "port": 9999, "cid": 3,
                "socket": "/run/fc1.vsock_9999"
            }})
        );
    }

    #[test]
    fn kernel_address_prefers_stream() {
        let ports = |stream, seqpacket| KernelPorts { stream, seqpacket };
        assert_eq!(ports(None, None).address(), None);
        assert_eq!(
            ports(Some(9999), Some(9998)).address().as_deref(),
            Some("vsock-stream:2:9999")
        );
        assert_eq!(
            ports(None, Some(9998)).address().as_deref(),
            Some("vsock-seqpacket:2:9998")
        );
    }

    #[test]
    fn transport_drops_map_to_core_reasons() {
        assert_eq!(drop_reason(DropCause::Oversize), DropReason::Oversize);
        assert_eq!(drop_reason(DropCause::Deadline), DropReason::Incomplete);
        assert_eq!(drop_reason(DropCause::Empty), DropReason::Incomplete);
        assert_eq!(
            drop_reason(DropCause::Read(io::ErrorKind::ConnectionReset)),
            DropReason::Incomplete
        );
        assert_eq!(
            drop_reason(DropCause::ConnectionLimit),
            DropReason::ConnectionLimit
        );
        assert_eq!(
            drop_reason(DropCause::PeerConnectionLimit),
            DropReason::ConnectionLimit
        );
    }

    #[test]
    fn config_checks() {
        let mut config = VsockConfig {
            stream_port: Some(9999),
            seqpacket_port: Some(9999),
            ..VsockConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("share the vsock port space"), "{error}");
        config.seqpacket_port = Some(VMADDR_PORT_ANY);
        config.validate().unwrap();
        config.stream_port = Some(VMADDR_PORT_ANY);
        config.validate().expect("two kernel-chosen ports differ");

        let auto = VsockConfig {
            settings: VsockSettings {
                auto_register: true,
                ..VsockSettings::default()
            },
            ..VsockConfig::default()
        };
        assert!(
            auto.validate()
                .unwrap_err()
                .to_string()
                .contains("--vsock-port")
        );
    }

    #[test]
    fn counters_count() {
        let stats = VsockStats::default();
        assert_eq!(stats.unknown_cid.count(), 1);
        assert_eq!(stats.unknown_cid.count(), 2);
        assert_eq!(
            serde_json::to_value(&stats).unwrap(),
            serde_json::json!({"unknown_cid": 2, "over_guest_limit": 0})
        );
    }
}
