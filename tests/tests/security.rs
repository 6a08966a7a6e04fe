//! Who may reach the real `notifyhub` binary, and what it refuses: a non-loopback listener
//! without a token, requests without the bearer token, browsers' cross-site POST and DELETE,
//! oversize bodies and query strings, each refusal with the CSP and `nosniff` headers; HTTP on a
//! UNIX socket with its file mode; the guests' notify sockets with the mode and owner asked for;
//! hostile guest text escaped in the pages.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use notifyhub_tests::{Hub, SHUTDOWN_TIMEOUT, START_TIMEOUT, hub_binary, send_datagram};
use reqwest::StatusCode;
use reqwest::header::{
    CONTENT_SECURITY_POLICY, HeaderMap, WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

const TOKEN: &str = "s3cr3t-t0ken-for-the-hub";

/// A token file in `dir` with `mode`.
fn token_file(dir: &Path, token: &str, mode: u32) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// `notifyhub ARGS…`, its output once it exits, within [`START_TIMEOUT`].
async fn notifyhub(args: &[&str]) -> Output {
    let child = Command::new(hub_binary())
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(START_TIMEOUT, child)
        .await
        .unwrap_or_else(|_| panic!("notifyhub {args:?} did not exit within {START_TIMEOUT:?}"))
        .expect("run notifyhub")
}

/// `notifyhub HUB_ARGS… wait web1 --for ready --timeout 10`.
async fn wait_ready(hub_args: &[&str]) -> Output {
    let wait = ["wait", "web1", "--for", "ready", "--timeout", "10"];
    notifyhub(&[hub_args, &wait].concat()).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `notifyhub serve ARGS…` started by hand (the `Hub` fixture listens on TCP only), until its
/// listening line; returns it and the line.
async fn serve(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(hub_binary())
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn notifyhub serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.strip_prefix("notifyhub: listening on ") {
                return at.to_owned();
            }
        }
        panic!("notifyhub serve {args:?} exited before listening")
    })
    .await
    .expect("listening line");
    // Keep reading, so that the hub never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, listening)
}

/// SIGTERM, and the exit status within [`SHUTDOWN_TIMEOUT`].
async fn stop(mut child: Child) -> std::process::ExitStatus {
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    tokio::time::timeout(SHUTDOWN_TIMEOUT, child.wait())
        .await
        .expect("exit after SIGTERM")
        .unwrap()
}

/// `curl ARGS…` (a real non-browser client); stdout.
async fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .await
        .expect("run curl (scripts/setup installs it)");
    assert!(output.status.success(), "curl {args:?}: {output:?}");
    text(&output.stdout)
}

#[tokio::test]
async fn a_non_loopback_listener_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let run = run_dir.to_str().unwrap();
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let out = notifyhub(&[
            "serve",
            "--listen",
            listen,
            "--run-dir",
            run,
            "--state-dir",
            "none",
            "--guest",
            "web1",
        ])
        .await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{listen}: {out:?}");
        assert!(
            stderr.contains(&format!(
                "refusing to serve HTTP on {listen} without authentication"
            )) && stderr.contains("--token-file")
                && stderr.contains("--insecure-no-auth"),
            "{listen}: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "{listen}: printed {:?}",
            text(&out.stdout)
        );
        // Refused before anything was made.
        assert!(!run_dir.join("guests").exists());
    }
    // A token file others may read is no secret: refused, and said so.
    let open = token_file(dir.path(), TOKEN, 0o644);
    let out = notifyhub(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--run-dir",
        run,
        "--state-dir",
        "none",
        "--token-file",
        open.to_str().unwrap(),
    ])
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("has mode 0644, which gives others access to it"),
        "{stderr}"
    );
    // Both at once is a usage error.
    let out = notifyhub(&[
        "serve",
        "--token-file",
        open.to_str().unwrap(),
        "--insecure-no-auth",
    ])
    .await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_gates_the_api_the_pages_and_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(dir.path(), TOKEN, 0o600);
    let hub = Hub::start_with_args(&["web1"], &["--token-file", file.to_str().unwrap()]).await;
    let client = hub.client();
    let bearer = format!("Bearer {TOKEN}");
    for path in [
        "/api/v1/guests",
        "/api/v1/guests/web1",
        "/",
        "/guests/web1",
        "/api/v1/events",
    ] {
        // No token.
        let resp = client.get(hub.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            challenge(resp.headers()),
            r#"Bearer realm="notifyhub""#,
            "{path}"
        );
        if path.starts_with("/api/") {
            let body: Value = resp.json().await.unwrap();
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("Authorization: Bearer"),
                "{path}: {body}"
            );
        }
        // A wrong one, of the same length and a prefix of it.
        for wrong in [
            "Bearer s3cr3t-t0ken-for-the-hux",
            "Bearer s3cr3t",
            "Basic czNjcjN0",
        ] {
            let resp = client
                .get(hub.url(path))
                .header("authorization", wrong)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path} {wrong}");
        }
        let resp = client
            .get(hub.url(path))
            .header("authorization", "Bearer wrong-token-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(
            challenge(resp.headers()),
            r#"Bearer realm="notifyhub", error="invalid_token""#
        );
    }
    // The right one, scheme in any case.
    let (status, body) = {
        let resp = client
            .get(hub.url("/api/v1/guests/web1"))
            .header("authorization", format!("bearer {TOKEN}"))
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json::<Value>().await.unwrap())
    };
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "web1");
    let resp = client
        .get(hub.url("/"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // POST and DELETE too.
    let resp = client
        .post(hub.url("/api/v1/guests"))
        .json(&json!({"name": "web2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(!hub.socket("web2").exists());
    let resp = client
        .delete(hub.url("/api/v1/guests/web1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(hub.socket("web1").exists());

    // The client commands send the token from the same file.
    hub.send("web1", b"READY=1");
    let base = hub.base_url();
    let with = wait_ready(&["--hub", base, "--token-file", file.to_str().unwrap()]).await;
    assert_eq!(with.status.code(), Some(0), "{with:?}");
    let without = notifyhub(&["--hub", base, "status", "web1"]).await;
    assert_eq!(without.status.code(), Some(5), "{without:?}");
    assert!(
        text(&without.stderr).contains("Authorization: Bearer"),
        "{without:?}"
    );
    hub.shutdown().await;
}

/// Every response carries the CSP and `nosniff`, the security layers' refusals included: they
/// are the outermost layers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_the_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(dir.path(), TOKEN, 0o600);
    let hub = Hub::start_with_args(&["web1"], &["--token-file", file.to_str().unwrap()]).await;
    let client = hub.client();
    let bearer = format!("Bearer {TOKEN}");
    let long_query = format!("/?{}", "a".repeat(3000));
    let requests = [
        (client.get(hub.url("/")), StatusCode::UNAUTHORIZED),
        (
            client.get(hub.url("/")).header("authorization", &bearer),
            StatusCode::OK,
        ),
        (
            client
                .get(hub.url("/nowhere"))
                .header("authorization", &bearer),
            StatusCode::NOT_FOUND,
        ),
        (
            client
                .post(hub.url("/api/v1/guests"))
                .header("authorization", &bearer)
                .header("sec-fetch-site", "cross-site")
                .json(&json!({"name": "x1"})),
            StatusCode::FORBIDDEN,
        ),
        (
            client
                .get(hub.url(&long_query))
                .header("authorization", &bearer),
            StatusCode::URI_TOO_LONG,
        ),
    ];
    for (request, expected) in requests {
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), expected);
        let csp = resp.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'none';"), "{expected}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{expected}: {csp}");
        assert_eq!(
            resp.headers()[X_CONTENT_TYPE_OPTIONS],
            "nosniff",
            "{expected}"
        );
    }
    hub.shutdown().await;
}

fn challenge(headers: &HeaderMap) -> &str {
    headers
        .get(WWW_AUTHENTICATE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_and_deletes_are_refused() {
    let hub = Hub::start(&["web1"]).await;
    let client = hub.client();
    let post = |headers: &[(&'static str, &str)], name: &str| {
        let mut request = client
            .post(hub.url("/api/v1/guests"))
            .json(&json!({ "name": name }));
        for (header, value) in headers {
            request = request.header(*header, *value);
        }
        request.send()
    };
    let cross_site: [&[(&'static str, &str)]; 4] = [
        &[("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
        &[("origin", "http://evil.example")],
        &[("origin", "null")],
    ];
    for headers in cross_site {
        let resp = post(headers, "x1").await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{headers:?}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("cross-site POST refused"),
            "{body}"
        );
        let mut delete = client.delete(hub.url("/api/v1/guests/web1"));
        for (header, value) in headers {
            delete = delete.header(*header, *value);
        }
        assert_eq!(
            delete.send().await.unwrap().status(),
            StatusCode::FORBIDDEN,
            "{headers:?}"
        );
    }
    assert!(!hub.socket("x1").exists());
    assert!(hub.socket("web1").exists());
    // A GET from anywhere is no change: the browser's same-origin policy keeps its answer.
    let resp = client
        .get(hub.url("/api/v1/guests"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // The dashboard's own requests, and clients that are no browser.
    let origin = hub.base_url().to_owned();
    let same_origin: [(&[(&'static str, &str)], &str); 3] = [
        (&[("sec-fetch-site", "same-origin")], "s1"),
        (&[("origin", origin.as_str())], "s2"),
        (&[], "s3"),
    ];
    for (headers, name) in same_origin {
        let resp = post(headers, name).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{headers:?}");
        assert!(hub.socket(name).exists());
    }
    // curl, as an administrator would.
    let code = curl(&[
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code}",
        "--request",
        "DELETE",
        &hub.url("/api/v1/guests/s1"),
    ])
    .await;
    assert_eq!(code, "204");
    assert!(!hub.socket("s1").exists());
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_long_queries_and_bad_names_are_refused() {
    let hub = Hub::start(&["web1"]).await;
    let client = hub.client();
    // 20 KiB of JSON, over the 16 KiB limit.
    let big = json!({ "name": "big", "pad": "x".repeat(20 * 1024) });
    let resp = client
        .post(hub.url("/api/v1/guests"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    assert!(!hub.socket("big").exists());

    // A query string of 3000 bytes, over the 2048 limit.
    let path = format!("/api/v1/guests/web1/wait?for=ready&x={}", "a".repeat(3000));
    let (status, body) = hub.get_json(&path).await;
    assert_eq!(status, StatusCode::URI_TOO_LONG);
    assert_eq!(
        body["error"],
        "the query string is 3012 bytes long, the limit is 2048"
    );
    let (status, _) = hub.get_text(&format!("/?{}", "a".repeat(3000))).await;
    assert_eq!(status, StatusCode::URI_TOO_LONG);

    // Names that would leave the guests directory, or are too long, make no path at all.
    for name in ["..", "../escape", "a/b", ".hidden", &"a".repeat(65)] {
        let (status, body) = hub.add_guest(name).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {body}");
    }
    assert!(!hub.run_dir().join("escape").exists());
    let mut entries: Vec<_> = std::fs::read_dir(hub.run_dir().join("guests"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    entries.sort();
    assert_eq!(entries, ["web1"]);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_on_a_unix_socket_with_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("http.sock");
    let listen = format!("unix:{}", socket.display());
    let run = dir.path().join("run");
    let state = dir.path().join("state");
    let args = [
        "--listen",
        &listen,
        "--listen-mode",
        "0660",
        "--run-dir",
        run.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--guest",
        "web1",
    ];
    let (hub, listening) = serve(&args).await;
    assert_eq!(listening, listen);
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());

    // curl over the socket.
    let socket_arg = socket.to_str().unwrap();
    let body = curl(&[
        "--unix-socket",
        socket_arg,
        "http://localhost/api/v1/guests",
    ])
    .await;
    let guests: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(guests["guests"][0]["name"], "web1");
    // The client commands.
    send_datagram(&run.join("guests/web1/notify"), b"READY=1\nSTATUS=up", &[]).unwrap();
    let wait = wait_ready(&["--hub", &listen]).await;
    assert_eq!(wait.status.code(), Some(0), "{wait:?}");
    let status = notifyhub(&["--hub", &listen, "status", "web1", "--json"]).await;
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    let guest: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(guest["status"], "up");

    // A second hub finds the socket live and leaves it alone.
    let second = notifyhub(&[
        "serve",
        "--listen",
        &listen,
        "--run-dir",
        dir.path().join("run2").to_str().unwrap(),
        "--state-dir",
        "none",
    ])
    .await;
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    assert!(
        text(&second.stderr)
            .contains("is a socket somebody is listening on; refusing to replace it"),
        "{second:?}"
    );
    assert!(socket.exists());

    // Killed, the hub leaves a stale socket; the next one replaces it.
    let mut hub = hub;
    hub.kill().await.unwrap();
    hub.wait().await.unwrap();
    assert!(socket.exists(), "a killed hub cannot remove its socket");
    let (hub, _) = serve(&args).await;
    let body = curl(&[
        "--unix-socket",
        socket_arg,
        "http://localhost/api/v1/guests/web1",
    ])
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["name"],
        "web1"
    );
    // Stopped, it removes it.
    assert!(stop(hub).await.success());
    assert!(!socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_sockets_get_the_mode_and_owner_asked_for() {
    // As root: a host uid no process here has, as a user-namespaced container's root is;
    // unprivileged: our own uid and gid, the only chown allowed.
    let (uid, gid) = if rustix::process::geteuid().is_root() {
        (100_000, 100_000)
    } else {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    };
    let owner = format!("{uid}:{gid}");
    let hub = Hub::start_with_args(
        &["web1"],
        &["--socket-mode", "0620", "--socket-owner", &owner],
    )
    .await;
    let meta = std::fs::symlink_metadata(hub.socket("web1")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (uid, gid, 0o620)
    );
    // The guest directory: traversable, writable by the hub alone.
    let dir_mode = std::fs::metadata(hub.run_dir().join("guests/web1"))
        .unwrap()
        .mode()
        & 0o7777;
    assert_eq!(dir_mode & 0o7022, 0, "guest dir mode {dir_mode:o}");
    assert_eq!(dir_mode & 0o755, 0o755, "guest dir mode {dir_mode:o}");
    hub.send("web1", b"READY=1");
    hub.settle("web1", 1).await;

    // Per guest, in POST /api/v1/guests.
    let resp = hub
        .client()
        .post(hub.url("/api/v1/guests"))
        .json(&json!({"name": "ns1", "socket_mode": "0600", "socket_owner": format!("{}:", uid)}))
        .send()
        .await
        .unwrap();
    // `USER:` is the user's login group: only names in the user database have one.
    if resp.status() == StatusCode::CREATED {
        let meta = std::fs::symlink_metadata(hub.socket("ns1")).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (uid, 0o600));
    } else {
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], format!("no user named \"{uid}\""));
    }
    let resp = hub
        .client()
        .post(hub.url("/api/v1/guests"))
        .json(&json!({"name": "ns2", "socket_mode": "0660", "socket_owner": format!(":{gid}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let meta = std::fs::symlink_metadata(hub.socket("ns2")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (rustix::process::geteuid().as_raw(), gid, 0o660),
        "the owner stays the hub's, the group is as asked"
    );
    for (field, value, error) in [
        ("socket_mode", "0800", "socket mode \"0800\" is not octal"),
        ("socket_mode", "4755", "socket mode \"4755\" is not octal"),
        (
            "socket_owner",
            "no-such-user-b1",
            "no user named \"no-such-user-b1\"",
        ),
        (
            "socket_owner",
            "0:no-such-group-b1",
            "no group named \"no-such-group-b1\"",
        ),
        ("socket_owner", ":", "socket owner \":\" is not USER"),
    ] {
        let resp = hub
            .client()
            .post(hub.url("/api/v1/guests"))
            .json(&json!({"name": "bad", field: value}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{field}={value}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().starts_with(error), "{body}");
    }
    assert!(!hub.socket("bad").exists());
    hub.shutdown().await;
}

/// Markup that would open an element or leave an attribute, in the guest's STATUS and hostname.
const STATUS: &str = r#""><img src=x onerror=alert(1)>'"#;
const HOSTNAME: &str = "<svg/onload=alert(2)>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_status_and_hostname_are_escaped() {
    let hub = Hub::start(&["evil"]).await;
    let resp = hub
        .client()
        .get(hub.url("/api/v1/events?guest=evil"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.bytes_stream().eventsource();
    hub.send(
        "evil",
        format!("STATUS={STATUS}\nX_SYSTEMD_HOSTNAME={HOSTNAME}").as_bytes(),
    );
    // In the stream: one JSON document per event, the text exactly as sent.
    let data = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = stream.next().await {
            let event = event.unwrap();
            let data: Value = serde_json::from_str(&event.data)
                .unwrap_or_else(|e| panic!("SSE data is not one JSON document ({e}): {event:?}"));
            if data["snapshot"]["status"] == STATUS {
                return data;
            }
        }
        panic!("SSE stream ended")
    })
    .await
    .expect("the event within 10 s");
    assert_eq!(data["snapshot"]["hostname"], HOSTNAME);
    drop(stream);

    for page in ["/", "/guests/evil"] {
        let (status, html) = hub.get_text(page).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for raw in ["<img", "<svg", "onerror=alert(1)>", "onload=alert(2)>"] {
            assert!(
                !html.contains(raw),
                "{page} holds {raw:?} unescaped:\n{html}"
            );
        }
        // askama escapes `<`, `>`, `"`, `'` and `&` as entities.
        assert!(
            html.contains("&#60;svg/onload=alert(2)&#62;")
                || html.contains("&lt;svg/onload=alert(2)&gt;"),
            "{page}: hostname not shown escaped:\n{html}"
        );
        assert!(
            html.contains("&#34;&#62;&#60;img src=x onerror=alert(1)&#62;&#39;")
                || html.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;&#39;"),
            "{page}: status not shown escaped:\n{html}"
        );
    }
    hub.shutdown().await;
}
