//! The AF_VSOCK transport of notifyhub: how VM guests will reach the hub.
//!
//! Not built yet. It will listen on `(VMADDR_CID_ANY, port)` for SOCK_STREAM and SOCK_SEQPACKET
//! connections from guests given `vmm.notify_socket=vsock-stream:2:PORT`, read each connection
//! to EOF (or to a short idle timeout, since some VMM bridges lose the guest's half-close) into at
//! most 4096 bytes, hand `(peer CID and port, bytes)` to the core, and close without writing a
//! byte (`../shared/protocol.md` §1–§3). Until then, VM guests are not heard.
