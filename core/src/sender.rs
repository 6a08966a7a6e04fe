//! Who sent a datagram, as far as the transport can tell.

/// `SCM_CREDENTIALS` of one datagram (`unix(7)`), as the kernel attached them at send time.
///
/// The pid is in the receiver's pid namespace; a sender may name any pid it is allowed to
/// (`sd_pid_notify(3)`), so it identifies a process, not a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Credentials {
    /// Process ID; 0 when the sender is not visible in the receiver's pid namespace.
    pub pid: u32,
    /// User ID, in the receiver's user namespace.
    pub uid: u32,
    /// Group ID, in the receiver's user namespace.
    pub gid: u32,
}

/// The origin of one message, as reported by the transport that received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(tag = "transport", rename_all = "snake_case")
)]
#[non_exhaustive]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Sender {
    /// An `AF_UNIX` datagram; `credentials` is `None` when the kernel attached none.
    Unix {
        /// `SCM_CREDENTIALS` received with the datagram.
        credentials: Option<Credentials>,
    },
    /// An `AF_VSOCK` connection from a guest (`vsock(7)`).
    Vsock {
        /// The peer's context ID.
        cid: u32,
        /// The peer's source port: below 1024 means the sender was root in the guest
        /// (`sd_notify(3)`, Notes; systemd binds ports 1023 downwards when it can). `None` when
        /// the transport cannot see it: hybrid vsock bridges (Firecracker, cloud-hypervisor,
        /// `vhost-device-vsock`) hand the host a UNIX stream without the guest's port.
        port: Option<u32>,
    },
    /// The origin is not known (a replayed log that did not record it).
    Unknown,
}

impl Sender {
    /// Whether the sender was root in the guest, where the transport can tell: a vsock source
    /// port below 1024 (`sd_notify(3)`, Notes). `None` for unix senders (their uid tells) and
    /// for unknown ports.
    pub fn privileged_port(&self) -> Option<bool> {
        match self {
            Self::Vsock {
                port: Some(port), ..
            } => Some(*port < 1024),
            _ => None,
        }
    }
}
