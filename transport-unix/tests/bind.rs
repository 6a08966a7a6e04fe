//! Binding: path limits, what may be replaced at the path, file mode, parent dirs, cleanup.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notifyhub_transport_unix::{
    DEFAULT_SOCKET_MODE, MAX_SOCKET_PATH_LEN, NotifySocket, Received, SocketAccess,
};

async fn roundtrip(sock: &NotifySocket, bytes: &[u8]) {
    let client = UnixDatagram::unbound().unwrap();
    client.send_to(bytes, sock.path()).unwrap();
    match tokio::time::timeout(Duration::from_secs(5), sock.recv())
        .await
        .expect("recv timed out")
        .unwrap()
    {
        Received::Datagram(d) => assert_eq!(d.payload, bytes),
        other => panic!("expected a datagram, got {other:?}"),
    }
}

/// `dir` joined with a file name that makes the whole path exactly `len` bytes.
fn path_of_len(dir: &Path, len: usize) -> PathBuf {
    let base = dir.as_os_str().len() + 1;
    assert!(len > base, "temp dir path too long for this test");
    dir.join("s".repeat(len - base))
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn path_of_107_bytes_binds_and_108_is_invalid_input() {
    assert_eq!(MAX_SOCKET_PATH_LEN, 107);
    let dir = tempfile::tempdir().unwrap();

    let ok = path_of_len(dir.path(), 107);
    assert_eq!(ok.as_os_str().len(), 107);
    let sock = NotifySocket::bind(&ok).unwrap();
    roundtrip(&sock, b"READY=1").await;

    let long = path_of_len(dir.path(), 108);
    let err = NotifySocket::bind(&long).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("107"), "names the limit: {err}");
    assert!(!long.exists(), "nothing created");
}

#[tokio::test]
async fn relative_path_is_invalid_input() {
    let err = NotifySocket::bind(Path::new("notify.sock")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(!Path::new("notify.sock").exists());
}

#[tokio::test]
async fn a_regular_file_at_the_path_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    std::fs::write(&path, b"precious").unwrap();
    let err = NotifySocket::bind(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");

    let sub = dir.path().join("adir");
    std::fs::create_dir(&sub).unwrap();
    assert_eq!(
        NotifySocket::bind(&sub).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert!(sub.is_dir());
}

#[tokio::test]
async fn a_symlink_at_the_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    let old = UnixDatagram::bind(&target).unwrap();
    drop(old); // a stale socket, but behind a symlink: not ours to remove
    let link = dir.path().join("notify");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_eq!(
        NotifySocket::bind(&link).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        std::fs::symlink_metadata(&target)
            .unwrap()
            .file_type()
            .is_socket()
    );
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let old = UnixDatagram::bind(&path).unwrap();
    drop(old); // closed: the file stays behind, nobody listens
    let probe = UnixDatagram::unbound().unwrap();
    assert_eq!(
        probe.send_to(b"x", &path).unwrap_err().kind(),
        ErrorKind::ConnectionRefused,
        "the old file is a stale socket"
    );

    let sock = NotifySocket::bind(&path).unwrap();
    roundtrip(&sock, b"READY=1").await;
}

#[tokio::test]
async fn a_live_socket_is_not_stolen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let live = NotifySocket::bind(&path).unwrap();
    let err = NotifySocket::bind(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    roundtrip(&live, b"STATUS=still mine").await;
}

#[tokio::test]
async fn mode_is_0600_by_default_and_as_given_otherwise() {
    assert_eq!(DEFAULT_SOCKET_MODE, 0o600);
    let dir = tempfile::tempdir().unwrap();
    let a = NotifySocket::bind(&dir.path().join("a")).unwrap();
    assert_eq!(mode_of(a.path()), 0o600);
    assert!(
        std::fs::symlink_metadata(a.path())
            .unwrap()
            .file_type()
            .is_socket()
    );

    // Exact even where the umask (022 here usually) would strip bits.
    let b = NotifySocket::bind_with_mode(&dir.path().join("b"), 0o662).unwrap();
    assert_eq!(mode_of(b.path()), 0o662);

    let err = NotifySocket::bind_with_mode(&dir.path().join("c"), 0o4600).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(!dir.path().join("c").exists());
}

#[tokio::test]
async fn missing_parent_dirs_are_created_0755() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guests/vm1/notify");
    let sock = NotifySocket::bind(&path).unwrap();
    for d in [dir.path().join("guests"), dir.path().join("guests/vm1")] {
        // 0755 less the umask: never more than 0755.
        let mode = mode_of(&d);
        assert!(d.is_dir());
        assert_eq!(mode & !0o755, 0, "{} has mode {mode:o}", d.display());
        assert_eq!(mode & 0o700, 0o700);
    }
    roundtrip(&sock, b"READY=1").await;
}

#[tokio::test]
async fn drop_removes_our_socket_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = NotifySocket::bind(&path).unwrap();
    assert!(path.exists());
    drop(sock);
    assert!(std::fs::symlink_metadata(&path).is_err(), "removed on drop");

    // Somebody replaced the file while we were bound: theirs stays.
    let sock = NotifySocket::bind(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"not yours").unwrap();
    drop(sock);
    assert_eq!(std::fs::read(&path).unwrap(), b"not yours");

    // Same for another socket bound at the path after ours was unlinked.
    std::fs::remove_file(&path).unwrap();
    let sock = NotifySocket::bind(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let other = UnixDatagram::bind(&path).unwrap();
    drop(sock);
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    other.send_to(b"x", &path).unwrap();
}

/// `SocketAccess` gives the file away: owner and group as asked, mode exact. As root, to a uid
/// no process here has (a user-namespaced container's root on the host); otherwise to our own
/// uid and gid, the only chown an unprivileged user may do.
#[tokio::test]
async fn access_sets_owner_group_and_mode() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (uid, gid) = if rustix::process::geteuid().is_root() {
        (100_000, 100_000)
    } else {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    };
    let access = SocketAccess {
        mode: 0o660,
        owner: Some(uid),
        group: Some(gid),
    };
    let sock = NotifySocket::bind_with_access(&dir.path().join("notify"), access).unwrap();
    let meta = std::fs::symlink_metadata(sock.path()).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    assert_eq!(mode_of(sock.path()), 0o660);
    // The group alone: the owner stays the hub's.
    let group_only = SocketAccess {
        mode: 0o620,
        owner: None,
        group: Some(gid),
    };
    let other = NotifySocket::bind_with_access(&dir.path().join("other"), group_only).unwrap();
    let meta = std::fs::symlink_metadata(other.path()).unwrap();
    assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
    assert_eq!(meta.gid(), gid);
    assert_eq!(mode_of(other.path()), 0o620);
}

/// The HTTP listener's socket: exact mode, a stale file replaced, a live one and a regular file
/// refused, the file removed with the last of it and not before.
#[tokio::test]
async fn stream_listener_mode_stale_live_and_removal() {
    use notifyhub_transport_unix::stream::bind_listener;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("http.sock");
    // A stale socket: bound, then closed without removing its file.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let (listener, file) = bind_listener(&path, 0o660).unwrap();
    assert_eq!(mode_of(&path), 0o660);
    assert_eq!(file.path(), path);
    let client = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (_, peer) = listener.accept().await.unwrap();
    drop((client, peer));
    let live = bind_listener(&path, 0o600).unwrap_err();
    assert_eq!(live.kind(), ErrorKind::AddrInUse, "{live}");
    drop(listener);
    assert!(path.exists(), "the file goes with its SocketFile");
    drop(file);
    assert!(!path.exists());

    let regular = dir.path().join("regular");
    std::fs::write(&regular, b"x").unwrap();
    let err = bind_listener(&regular, 0o600).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&regular).unwrap(), b"x");
    assert_eq!(
        bind_listener(&dir.path().join("m"), 0o1777)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
}
