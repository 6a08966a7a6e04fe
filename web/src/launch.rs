//! Launch snippets: what to add to a VMM's or container manager's command line so that the
//! guest's systemd reports to the hub (`GET /api/v1/guests/{name}/launch`, and the guest page).
//!
//! Only the snippets that fit how the guest reaches the hub ([`Reach`]) are offered:
//!
//! | [`Reach`] | `notify_socket` | snippets |
//! |---|---|---|
//! | [`Reach::Unix`] | the socket path | `systemd-nspawn`, `podman` |
//! | [`Reach::Cid`] | `vsock-stream:2:PORT` | `qemu`, `systemd-vmspawn` |
//! | [`Reach::Hybrid`] | `vsock-stream:2:PORT` | `firecracker`, `cloud-hypervisor` |
//!
//! `notify_socket` is what the guest's PID 1 ends up with as `$NOTIFY_SOCKET`: a container gets
//! it in its environment; a VM gets it as the credential `vmm.notify_socket`, which PID 1 copies
//! into `$NOTIFY_SOCKET` (`src/core/import-creds.c`). A VM is always given the `vsock-stream:`
//! form: the plain `vsock:` form picks `SOCK_SEQPACKET` on virtio-vsock, never falls back to a
//! stream, and hybrid vsock has streams only (`../shared/protocol.md` §1).
//!
//! Every builder is a pure function of the guest's identity; the texts are arguments to add to a
//! command line (shell-quoted where needed), or for Firecracker a JSON config fragment.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Serialize;

use crate::vsock::{HOST_CID, Hybrid, KernelPorts, Reach};

/// Where the guest's socket directory is bound inside an nspawn container (under `/run/host`,
/// nspawn's directory for what the host provides).
pub const NSPAWN_NOTIFY_DIR: &str = "/run/host/notify-dir";
/// Where the guest's socket directory is bound inside a podman container.
pub const PODMAN_NOTIFY_DIR: &str = "/run/notify-dir";

/// `GET /api/v1/guests/{name}/launch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Launch {
    /// The guest's name.
    pub guest: String,
    /// What the guest's PID 1 gets as `$NOTIFY_SOCKET`: its unix socket's path, or for a VM the
    /// vsock address it is handed as `vmm.notify_socket`.
    pub notify_socket: String,
    /// One per way to start the guest, for the way it reaches the hub.
    pub snippets: Vec<Snippet>,
}

/// How to start the guest with one VMM or container manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snippet {
    /// `qemu`, `systemd-vmspawn`, `systemd-nspawn`, `podman`, `firecracker` or
    /// `cloud-hypervisor`.
    pub vmm: &'static str,
    /// What to add to its command line (or configuration).
    pub text: String,
    /// Why it looks like this, and what else it needs.
    pub note: String,
}

/// The snippets for guest `guest`, whose unix socket is `notify_socket`, reached as `reach`,
/// with the hub's kernel listeners on `ports`. A kernel vsock guest with no listener to reach
/// (the registry refuses those) gets its unix socket and no snippet.
pub fn launch(guest: &str, notify_socket: &str, reach: &Reach, ports: KernelPorts) -> Launch {
    let (notify_socket, snippets) = match (reach, ports.address()) {
        (Reach::Unix, _) => (
            notify_socket.to_owned(),
            vec![nspawn(notify_socket), podman(notify_socket)],
        ),
        (Reach::Cid(cid), Some(address)) => {
            let snippets = vec![qemu(*cid, &address), vmspawn(*cid, &address)];
            (address, snippets)
        }
        (Reach::Cid(_), None) => (notify_socket.to_owned(), Vec::new()),
        (Reach::Hybrid(hybrid), _) => (
            hybrid_address(hybrid),
            vec![firecracker(hybrid), cloud_hypervisor(hybrid)],
        ),
    };
    Launch {
        guest: guest.to_owned(),
        notify_socket,
        snippets,
    }
}

/// `vsock-stream:2:PORT`: hybrid vsock has stream sockets only.
fn hybrid_address(hybrid: &Hybrid) -> String {
    format!("vsock-stream:{HOST_CID}:{}", hybrid.port())
}

/// QEMU with kernel vsock: the device with the guest's CID, and the credential as SMBIOS type 11.
pub fn qemu(cid: u32, address: &str) -> Snippet {
    Snippet {
        vmm: "qemu",
        text: format!(
            "-device vhost-vsock-pci,guest-cid={cid} \
             -smbios type=11,value=io.systemd.credential:vmm.notify_socket={address}"
        ),
        note: "Kernel vsock: the host needs /dev/vhost-vsock (module vhost_vsock). The CID must \
               be unique on the host: it is how the hub tells this guest's messages apart. The \
               guest needs systemd 254 or newer for vsock-stream: addresses."
            .to_owned(),
    }
}

/// systemd-vmspawn: the CID, and the credential.
pub fn vmspawn(cid: u32, address: &str) -> Snippet {
    Snippet {
        vmm: "systemd-vmspawn",
        text: format!("--vsock-cid={cid} --set-credential=vmm.notify_socket:{address}"),
        note: "vmspawn hands the guest a vmm.notify_socket of its own too, after the \
               --set-credential= ones; the guest keeps the first it imports (import-creds.c), so \
               its messages come here and vmspawn hears none: with --notify-ready=yes (v258+) it \
               never reports the VM ready to its own manager."
            .to_owned(),
    }
}

/// systemd-nspawn: the socket's directory bound into the container, and `$NOTIFY_SOCKET`.
pub fn nspawn(notify_socket: &str) -> Snippet {
    let (dir, file) = split_socket(notify_socket);
    // nspawn unescapes backslashes in --bind=, so `\:` embeds a colon.
    let source = dir.replace('\\', "\\\\").replace(':', "\\:");
    let text = format!(
        "{} {}",
        shell_word(&format!("--bind={source}:{NSPAWN_NOTIFY_DIR}")),
        shell_word(&format!(
            "--setenv=NOTIFY_SOCKET={NSPAWN_NOTIFY_DIR}/{file}"
        )),
    );
    Snippet {
        vmm: "systemd-nspawn",
        text,
        note: "--setenv=NOTIFY_SOCKET= overrides nspawn's own /run/host/notify (nspawn's \
               listener then hears nothing; since v258 it receives like PID 1). The directory is \
               bound rather than the socket, so the bind survives the hub re-creating it."
            .to_owned(),
    }
}

/// podman: `--sdnotify=ignore`, the socket's directory as a read-only volume (sending needs
/// write permission on the socket file, not on the mount), and `$NOTIFY_SOCKET`.
pub fn podman(notify_socket: &str) -> Snippet {
    let (dir, file) = split_socket(notify_socket);
    // --volume splits at ':'; --mount takes such a path as is.
    let volume = if dir.contains(':') {
        format!("--mount=type=bind,source={dir},destination={PODMAN_NOTIFY_DIR},ro=true")
    } else {
        format!("--volume={dir}:{PODMAN_NOTIFY_DIR}:ro")
    };
    let text = format!(
        "--sdnotify=ignore {} {}",
        shell_word(&volume),
        shell_word(&format!("--env=NOTIFY_SOCKET={PODMAN_NOTIFY_DIR}/{file}")),
    );
    Snippet {
        vmm: "podman",
        text,
        note: "--sdnotify=ignore keeps podman out of the way: it unsets its own NOTIFY_SOCKET \
               and leaves the container's to us. The default, container, would instead proxy \
               podman's NOTIFY_SOCKET (under systemd: its unit's) into the container, through \
               conmon, which passes on only READY, STATUS and a few other keys; conmon and \
               healthy send a READY=1 of their own."
            .to_owned(),
    }
}

/// Firecracker: the vsock device, and the credential on the kernel command line (Firecracker
/// has no SMBIOS), as a configuration file fragment.
pub fn firecracker(hybrid: &Hybrid) -> Snippet {
    let mut text = String::new();
    let _ = write!(
        text,
        "{{\n  \"vsock\": {{\n    \"guest_cid\": {},\n    \"uds_path\": {}\n  }},\n  \
         \"boot-source\": {{\n    \"boot_args\": \"systemd.set_credential=vmm.notify_socket:{}\"\n  }}\n}}",
        hybrid.cid(),
        json_string(hybrid.uds_path()),
        hybrid_address(hybrid),
    );
    Snippet {
        vmm: "firecracker",
        text,
        note: format!(
            "A --config-file fragment: PUT /vsock takes the \"vsock\" object as is; add the \
             boot_args word to your own (the credential rides on the kernel command line, \
             Firecracker has no SMBIOS). Firecracker delivers the guest's connections to host \
             port {} to {}, which the hub binds with mode 0600: run Firecracker as the hub's \
             user, or chown it.",
            hybrid.port(),
            hybrid.socket()
        ),
    }
}

/// cloud-hypervisor: the vsock device, and the credential as an SMBIOS OEM string.
pub fn cloud_hypervisor(hybrid: &Hybrid) -> Snippet {
    let address = hybrid_address(hybrid);
    let text = format!(
        "--vsock {} --platform {}",
        shell_word(&format!(
            "cid={},socket={}",
            hybrid.cid(),
            hybrid.uds_path()
        )),
        shell_word(&format!(
            "oem_strings=[io.systemd.credential:vmm.notify_socket={address}]"
        )),
    );
    Snippet {
        vmm: "cloud-hypervisor",
        text,
        note: format!(
            "oem_strings passes the credential as SMBIOS type 11 (x86_64); without SMBIOS, add \
             systemd.set_credential=vmm.notify_socket:{address} to --cmdline instead. \
             cloud-hypervisor delivers the guest's connections to host port {} to {}, which the \
             hub binds with mode 0600.",
            hybrid.port(),
            hybrid.socket()
        ),
    }
}

/// `(directory, file name)` of a socket path.
fn split_socket(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", file)) => ("/", file),
        Some((dir, file)) => (dir, file),
        None => (".", path),
    }
}

/// `s` as one shell word: as is when it holds only characters no shell treats specially,
/// else in single quotes.
fn shell_word(s: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("'{}'", s.replace('\'', r"'\''")))
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(launch: &Launch) -> Vec<(&str, &str)> {
        launch
            .snippets
            .iter()
            .map(|snippet| (snippet.vmm, snippet.text.as_str()))
            .collect()
    }

    const SOCKET: &str = "/run/notifyhub/guests/web1/notify";

    #[test]
    fn unix_guest_gets_nspawn_and_podman() {
        let launch = launch("web1", SOCKET, &Reach::Unix, KernelPorts::default());
        assert_eq!(launch.guest, "web1");
        assert_eq!(launch.notify_socket, SOCKET);
        assert_eq!(
            texts(&launch),
            [
                (
                    "systemd-nspawn",
                    "--bind=/run/notifyhub/guests/web1:/run/host/notify-dir \
                     --setenv=NOTIFY_SOCKET=/run/host/notify-dir/notify"
                ),
                (
                    "podman",
                    "--sdnotify=ignore --volume=/run/notifyhub/guests/web1:/run/notify-dir:ro \
                     --env=NOTIFY_SOCKET=/run/notify-dir/notify"
                ),
            ]
        );
    }

    #[test]
    fn kernel_guest_gets_qemu_and_vmspawn() {
        let ports = KernelPorts {
            stream: Some(9999),
            seqpacket: Some(9998),
        };
        let launch = launch("vm1", SOCKET, &Reach::Cid(5), ports);
        assert_eq!(launch.notify_socket, "vsock-stream:2:9999");
        assert_eq!(
            texts(&launch),
            [
                (
                    "qemu",
                    "-device vhost-vsock-pci,guest-cid=5 -smbios \
                     type=11,value=io.systemd.credential:vmm.notify_socket=vsock-stream:2:9999"
                ),
                (
                    "systemd-vmspawn",
                    "--vsock-cid=5 --set-credential=vmm.notify_socket:vsock-stream:2:9999"
                ),
            ]
        );

        // Only a seqpacket listener: the guest is told so, by its type prefix.
        let seqpacket = KernelPorts {
            stream: None,
            seqpacket: Some(9998),
        };
        let launch = super::launch("vm1", SOCKET, &Reach::Cid(5), seqpacket);
        assert_eq!(launch.notify_socket, "vsock-seqpacket:2:9998");
        assert!(
            launch.snippets[0]
                .text
                .ends_with("vmm.notify_socket=vsock-seqpacket:2:9998")
        );

        // No listener: nothing a VM could use.
        let launch = super::launch("vm1", SOCKET, &Reach::Cid(5), KernelPorts::default());
        assert_eq!(
            (launch.notify_socket.as_str(), launch.snippets.len()),
            (SOCKET, 0)
        );
    }

    #[test]
    fn hybrid_guest_gets_firecracker_and_cloud_hypervisor() {
        let hybrid = Hybrid::new("/run/fc1.vsock", 9999, 3).unwrap();
        let launch = launch(
            "fc1",
            SOCKET,
            &Reach::Hybrid(hybrid),
            KernelPorts::default(),
        );
        assert_eq!(launch.notify_socket, "vsock-stream:2:9999");
        assert_eq!(
            texts(&launch),
            [
                (
                    "firecracker",
                    r#"{
  "vsock": {
    "guest_cid": 3,
    "uds_path": "/run/fc1.vsock"
  },
  "boot-source": {
    "boot_args": "systemd.set_credential=vmm.notify_socket:vsock-stream:2:9999"
  }
}"#
                ),
                (
                    "cloud-hypervisor",
                    "--vsock cid=3,socket=/run/fc1.vsock --platform \
                     'oem_strings=[io.systemd.credential:vmm.notify_socket=vsock-stream:2:9999]'"
                ),
            ]
        );
        assert!(
            launch.snippets[0].note.contains("/run/fc1.vsock_9999"),
            "{}",
            launch.snippets[0].note
        );
        let firecracker: serde_json::Value =
            serde_json::from_str(&launch.snippets[0].text).expect("valid JSON");
        assert_eq!(firecracker["vsock"]["guest_cid"], 3);
    }

    #[test]
    fn awkward_paths_are_quoted_and_escaped() {
        let odd = "/tmp/it's here/guests/a:b/notify";
        let nspawn = nspawn(odd);
        assert_eq!(
            nspawn.text,
            r"'--bind=/tmp/it'\''s here/guests/a\:b:/run/host/notify-dir' --setenv=NOTIFY_SOCKET=/run/host/notify-dir/notify"
        );
        let podman = podman(odd);
        assert_eq!(
            podman.text,
            r"--sdnotify=ignore '--mount=type=bind,source=/tmp/it'\''s here/guests/a:b,destination=/run/notify-dir,ro=true' --env=NOTIFY_SOCKET=/run/notify-dir/notify"
        );
        let hybrid = Hybrid::new("/tmp/a \"b\".vsock", 5, 7).unwrap();
        let firecracker = firecracker(&hybrid);
        assert!(
            firecracker
                .text
                .contains(r#""uds_path": "/tmp/a \"b\".vsock""#),
            "{}",
            firecracker.text
        );
        assert!(firecracker.text.contains(r#""guest_cid": 7"#));
        assert_eq!(
            cloud_hypervisor(&hybrid).text,
            r#"--vsock 'cid=7,socket=/tmp/a "b".vsock' --platform 'oem_strings=[io.systemd.credential:vmm.notify_socket=vsock-stream:2:5]'"#
        );
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_word("--a=/b:c,d"), "--a=/b:c,d");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("[x]"), "'[x]'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word("$HOME"), "'$HOME'");
    }

    #[test]
    fn socket_split() {
        assert_eq!(split_socket("/a/b/notify"), ("/a/b", "notify"));
        assert_eq!(split_socket("/notify"), ("/", "notify"));
    }
}
