//! VM guests: identity by CID and by hybrid socket, the vsock policy, launch snippets.
//!
//! Kernel vsock has no loopback on most hosts (a connect to CID 1 times out here), so kernel
//! vsock events are injected where the listeners hand them over, [`vsock::route`]; the hybrid
//! path is real end to end (a `UnixStream` is what a VMM's bridge connects with). A hub whose
//! listeners are only said to run on port 9999 ([`FakeHub`]) stands for one with kernel vsock.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{LIVENESS, exists, soon};
use notifyhub_core::{DropReason, Sender};
use notifyhub_transport_vsock::{DropCause, End, Event, Received};
use notifyhub_web::registry::Registry;
use notifyhub_web::server::{Config, Server};
use notifyhub_web::store::Hub;
use notifyhub_web::vsock::{
    self, KernelPorts, Routed, VMADDR_PORT_ANY, VmGuest, VsockConfig, VsockSettings,
};
use notifyhub_web::{AppState, router};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PORT: u32 = 9999;

/// A hub over HTTP whose registry believes kernel vsock listeners run on `settings.ports`;
/// events go in through [`vsock::route`].
struct FakeHub {
    base: String,
    client: reqwest::Client,
    registry: Registry,
    shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
    tmp: TempDir,
}

impl FakeHub {
    async fn start(settings: VsockSettings) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let hub = Hub::new();
        let shutdown = CancellationToken::new();
        let registry =
            Registry::with_vsock(hub.clone(), tmp.path().join("guests"), &shutdown, settings);
        let state = AppState {
            hub,
            registry: registry.clone(),
            shutdown: shutdown.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, router(state))
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        Self {
            base,
            client: reqwest::Client::new(),
            registry,
            shutdown,
            server: Some(server),
            tmp,
        }
    }

    /// Kernel vsock on [`PORT`], and `policy` applied to the defaults.
    async fn kernel(policy: impl FnOnce(&mut VsockSettings)) -> Self {
        let mut settings = VsockSettings {
            ports: KernelPorts {
                stream: Some(PORT),
                seqpacket: None,
            },
            ..VsockSettings::default()
        };
        policy(&mut settings);
        Self::start(settings).await
    }

    async fn route(&self, cid: u32, port: u32, received: Received) -> Routed {
        let event = Event {
            sender: Sender::Vsock {
                cid,
                port: Some(port),
            },
            received,
        };
        soon("route", vsock::route(&self.registry, event)).await
    }

    async fn post(&self, body: Value) -> (StatusCode, Value) {
        http_json(self.client.post(self.url("/api/v1/guests")).json(&body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        http_json(self.client.get(self.url(path))).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        soon("graceful shutdown", self.server.take().unwrap())
            .await
            .unwrap()
            .unwrap();
        self.registry.close().await;
    }
}

async fn http_json(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = soon("HTTP", request.send()).await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn message(bytes: &[u8]) -> Received {
    Received::Message {
        payload: bytes.to_vec(),
        end: End::Eof,
    }
}

/// Polls `GET path` until `done` holds, within [`LIVENESS`].
async fn until(client: &reqwest::Client, url: &str, done: impl Fn(&Value) -> bool) -> Value {
    soon(&format!("{url} to change"), async {
        loop {
            let (_, body) = http_json(client.get(url)).await;
            if done(&body) {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// One connection as a hybrid vsock bridge makes it for a guest's PID 1: connect, write the
/// message, no half-close (the bridge loses it), then wait for the hub to close. Returns what
/// the hub wrote back, which must be nothing.
fn send_hybrid(socket: &Path, message: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(LIVENESS)).unwrap();
    stream.write_all(message).unwrap();
    let mut back = Vec::new();
    stream
        .read_to_end(&mut back)
        .expect("the hub closes the connection once the message is in");
    back
}

/// `--hybrid vm1=<dir>/vm1.vsock:9999` through the real server: the guest is its socket. Each
/// message is one connection that never half-closes, and still arrives whole.
#[tokio::test(flavor = "multi_thread")]
async fn hybrid_guest_is_identified_by_its_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let uds = tmp.path().join("vm1.vsock");
    let guest = VmGuest::parse_hybrid(&format!("vm1={}:{PORT}", uds.display())).unwrap();
    let shutdown = CancellationToken::new();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_auth: Default::default(),
        http_socket_mode: 0o600,
        socket_access: Default::default(),
        run_dir: tmp.path().join("run"),
        guests: vec![],
        ready_timeout: None,
        rate_limit: None,
        journal: None,
        history_memory: notifyhub_web::store::DEFAULT_HISTORY_MEMORY,
        http_limits: Default::default(),
        vsock: VsockConfig {
            guests: vec![guest],
            ..VsockConfig::default()
        },
    };
    let server = Server::bind(config, shutdown.clone()).await.unwrap();
    assert_eq!(
        server.notify_sockets(),
        [("vm1".to_owned(), format!("vsock-stream:2:{PORT}"))]
    );
    let base = format!("http://{}", server.local_addr().unwrap());
    let run = tokio::spawn(server.run());
    let socket = PathBuf::from(format!("{}_{PORT}", uds.display()));
    assert!(exists(&socket), "the hub binds <uds_path>_<port>");

    for message in [&b"X_SYSTEMD_HOSTNAME=vm1"[..], b"READY=1"] {
        let socket = socket.clone();
        let back = tokio::task::spawn_blocking(move || send_hybrid(&socket, message))
            .await
            .unwrap();
        assert_eq!(back, b"", "nothing is written back to a guest");
    }
    let client = reqwest::Client::new();
    let wait = format!("{base}/api/v1/guests/vm1/wait?for=ready&timeout=10");
    let (status, guest) = http_json(client.get(&wait)).await;
    assert_eq!(status, StatusCode::OK, "{guest}");
    assert_eq!(guest["hostname"], "vm1");
    assert_eq!(
        guest["last_sender"],
        json!({"transport": "vsock", "cid": 3, "port": null})
    );
    assert_eq!(guest["cid"], Value::Null, "not routed by kernel CID");
    assert_eq!(guest["hybrid"]["socket"], socket.to_str().unwrap());
    assert_eq!(guest["hybrid"]["port"], PORT);
    let run_dir = tmp.path().join("run");
    assert_eq!(
        guest["notify_socket"],
        run_dir.join("guests/vm1/notify").to_str().unwrap(),
        "a VM guest has its unix socket too"
    );

    let page = client
        .get(format!("{base}/guests/vm1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("vsock from CID 3, port unknown"), "{page}");
    assert!(page.contains(&format!("NOTIFY_SOCKET=vsock-stream:2:{PORT}")));
    assert!(page.contains("<h3>firecracker</h3>"));
    assert!(
        page.contains("&#34;guest_cid&#34;: 3"),
        "snippets are escaped: {page}"
    );

    shutdown.cancel();
    soon("shutdown", run).await.unwrap().unwrap();
    assert!(!exists(&socket), "the hybrid socket is removed at shutdown");
    assert!(!exists(&run_dir.join("guests")));
}

#[tokio::test(flavor = "multi_thread")]
async fn hybrid_guests_come_and_go_over_the_api() {
    let mut hub = FakeHub::start(VsockSettings::default()).await;
    let uds = hub.tmp.path().join("fc1.vsock");
    let socket = PathBuf::from(format!("{}_{PORT}", uds.display()));
    let hybrid = json!({"uds_path": uds, "port": PORT, "cid": 7});
    let (status, guest) = hub.post(json!({"name": "fc1", "hybrid": hybrid})).await;
    assert_eq!(status, StatusCode::CREATED, "{guest}");
    assert_eq!(guest["hybrid"]["cid"], 7);
    assert!(exists(&socket));

    let sent = socket.clone();
    tokio::task::spawn_blocking(move || send_hybrid(&sent, b"READY=1\nSTATUS=up"))
        .await
        .unwrap();
    let guest = until(&hub.client, &hub.url("/api/v1/guests/fc1"), |g| {
        g["phase"] == "ready"
    })
    .await;
    assert_eq!(guest["last_sender"]["cid"], 7, "the CID as configured");

    // The socket is the identity: a second guest cannot have it.
    let (status, body) = hub.post(json!({"name": "fc2", "hybrid": hybrid})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["error"],
        format!(
            r#"hybrid vsock socket {} is guest "fc1"'s already"#,
            socket.display()
        )
    );
    assert!(!exists(&hub.tmp.path().join("guests/fc2")), "nothing left");
    let (_, guest) = hub.get("/api/v1/guests/fc1").await;
    assert_eq!(guest["messages"], 1, "and nothing reached fc1");

    let response = hub
        .client
        .delete(hub.url("/api/v1/guests/fc1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(!exists(&socket), "removed with its guest");
    let (status, _) = hub.post(json!({"name": "fc2", "hybrid": hybrid})).await;
    assert_eq!(status, StatusCode::CREATED, "free again");
    hub.stop().await;
    assert!(!exists(&socket));
}

#[tokio::test(flavor = "multi_thread")]
async fn post_validates_cids_and_hybrid_sockets() {
    let mut hub = FakeHub::kernel(|_| {}).await;
    let (status, guest) = hub.post(json!({"name": "vm1", "cid": 5})).await;
    assert_eq!(status, StatusCode::CREATED, "{guest}");
    assert_eq!(
        (guest["cid"].clone(), guest["hybrid"].clone()),
        (json!(5), Value::Null)
    );

    let (status, body) = hub.post(json!({"name": "vm2", "cid": 5})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], r#"CID 5 is guest "vm1"'s already"#);

    let long = format!("/{}", "a".repeat(110));
    for (body, why) in [
        (json!({"name": "vm2", "cid": 2}), "CID 2 is not a guest's"),
        (json!({"name": "vm2", "cid": 0}), "CID 0"),
        (
            json!({"name": "vm2", "cid": 4_294_967_295_u64}),
            "CID 4294967295",
        ),
        (json!({"name": "vm2", "cid": -1}), "CID -1"),
        (json!({"name": "vm2", "cid": 3.5}), "CID 3.5"),
        (
            json!({"name": "vm2", "cid": 6, "hybrid": {"uds_path": "/run/x", "port": 1}}),
            "not both",
        ),
        (
            json!({"name": "vm2", "hybrid": {"uds_path": "run/x", "port": 1}}),
            "must be absolute",
        ),
        (
            json!({"name": "vm2", "hybrid": {"uds_path": long, "port": 1}}),
            "the limit is 107",
        ),
        (
            json!({"name": "vm2", "hybrid": {"uds_path": "/run/x", "port": 4_294_967_295_u64}}),
            "not a port",
        ),
        (json!({"name": "../x", "cid": 6}), "must start with"),
    ] {
        let (status, error) = hub.post(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        let text = error["error"].as_str().unwrap();
        assert!(text.contains(why), "{body}: {text}");
    }
    let (status, _) = hub
        .post(json!({"name": "vm2", "hybrid": {"uds_path": "/x", "port": 1, "guest_cid": 3}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "unknown fields");
    assert!(
        !exists(&hub.tmp.path().join("guests/vm2")),
        "a refused guest leaves nothing"
    );
    hub.stop().await;

    // Without a kernel listener a CID would never hear from its guest.
    let mut hub = FakeHub::start(VsockSettings::default()).await;
    let (status, body) = hub.post(json!({"name": "vm1", "cid": 5})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--vsock-port"));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kernel_events_are_routed_by_cid_and_drops_counted_on_the_guest() {
    let mut hub = FakeHub::kernel(|_| {}).await;
    assert_eq!(
        hub.post(json!({"name": "vm1", "cid": 5})).await.0,
        StatusCode::CREATED
    );

    let routed = hub.route(5, 1023, message(b"X_SYSTEMD_HOSTNAME=vm1")).await;
    assert_eq!(
        routed,
        Routed::Accepted {
            guest: "vm1".into(),
            seq: 1
        }
    );
    hub.route(5, 1023, message(b"READY=1")).await;
    for cause in [
        DropCause::Deadline,
        DropCause::Read(std::io::ErrorKind::ConnectionReset),
        DropCause::PeerConnectionLimit,
        DropCause::Oversize,
    ] {
        let dropped = Received::Dropped {
            reason: cause,
            len: 0,
        };
        assert!(matches!(
            hub.route(5, 1023, dropped).await,
            Routed::Dropped { .. }
        ));
    }
    let (_, guest) = hub.get("/api/v1/guests/vm1").await;
    assert_eq!(guest["phase"], "ready");
    assert_eq!(
        guest["last_sender"],
        json!({"transport": "vsock", "cid": 5, "port": 1023})
    );
    let drops = &guest["drops"];
    assert_eq!(
        (
            drops["incomplete"].clone(),
            drops["connection_limit"].clone(),
            drops["oversize"].clone()
        ),
        (json!(2), json!(1), json!(1))
    );
    let page = hub
        .client
        .get(hub.url("/guests/vm1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("vsock from CID 5 port 1023 (root in guest)"),
        "{page}"
    );
    assert!(page.contains("4 (oversize 1, incomplete 2, connection limit 1)"));

    // A CID nobody has: dropped, counted hub-wide.
    assert_eq!(
        hub.route(6, 1023, message(b"READY=1")).await,
        Routed::UnknownCid { cid: 6 }
    );
    let (_, status) = hub.get("/api/v1/vsock").await;
    assert_eq!(
        status["drops"],
        json!({"unknown_cid": 1, "over_guest_limit": 0})
    );
    assert_eq!(status["notify_socket"], format!("vsock-stream:2:{PORT}"));
    assert!(hub.get("/api/v1/guests/cid-6").await.0 == StatusCode::NOT_FOUND);

    // After DELETE the CID routes nowhere, and is free again.
    let response = hub
        .client
        .delete(hub.url("/api/v1/guests/vm1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        hub.route(5, 1023, message(b"READY=1")).await,
        Routed::UnknownCid { cid: 5 }
    );
    assert_eq!(
        hub.post(json!({"name": "vm9", "cid": 5})).await.0,
        StatusCode::CREATED
    );
    hub.stop().await;
}

/// The router feeds the store directly, then wakes the guest's receive loop: a watchdog set
/// over vsock is still enforced.
#[tokio::test(flavor = "multi_thread")]
async fn deadlines_set_over_kernel_vsock_fire() {
    let mut hub = FakeHub::kernel(|_| {}).await;
    hub.post(json!({"name": "vm1", "cid": 5})).await;
    hub.route(5, 1023, message(b"WATCHDOG_USEC=50000\nWATCHDOG=1"))
        .await;
    until(&hub.client, &hub.url("/api/v1/guests/vm1"), |g| {
        g["watchdog_expired"] == true
    })
    .await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_register_makes_cid_guests_up_to_max_guests() {
    let mut hub = FakeHub::kernel(|settings| {
        settings.auto_register = true;
        settings.max_guests = 2;
        settings.ignore_unprivileged = true;
    })
    .await;
    assert_eq!(
        hub.post(json!({"name": "web1"})).await.0,
        StatusCode::CREATED
    );

    // Neither a transport drop nor an unprivileged sender makes a guest.
    let deadline = Received::Dropped {
        reason: DropCause::Deadline,
        len: 3,
    };
    assert_eq!(
        hub.route(7, 1023, deadline).await,
        Routed::UnknownCid { cid: 7 }
    );
    assert_eq!(
        hub.route(7, 40_000, message(b"READY=1")).await,
        Routed::UnknownCid { cid: 7 }
    );
    assert_eq!(
        hub.route(7, 1023, message(b"READY=1")).await,
        Routed::Accepted {
            guest: "cid-7".into(),
            seq: 1
        }
    );
    let (status, guest) = hub.get("/api/v1/guests/cid-7").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (guest["cid"].clone(), guest["phase"].clone()),
        (json!(7), json!("ready"))
    );
    assert_eq!(
        hub.route(7, 1022, message(b"STATUS=again")).await,
        Routed::Accepted {
            guest: "cid-7".into(),
            seq: 2
        },
        "registered once"
    );

    // Two guests now: the limit.
    assert_eq!(
        hub.route(8, 1023, message(b"READY=1")).await,
        Routed::GuestLimit { cid: 8 }
    );
    let (_, status) = hub.get("/api/v1/vsock").await;
    assert_eq!(
        status["drops"],
        json!({"unknown_cid": 2, "over_guest_limit": 1})
    );
    let (_, list) = hub.get("/api/v1/guests").await;
    assert_eq!(list["guests"].as_array().unwrap().len(), 2);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ignore_unprivileged_drops_and_counts_ports_from_1024() {
    let mut hub = FakeHub::kernel(|settings| settings.ignore_unprivileged = true).await;
    hub.post(json!({"name": "vm1", "cid": 5})).await;
    assert_eq!(
        hub.route(5, 1024, message(b"READY=1")).await,
        Routed::Dropped {
            guest: "vm1".into(),
            reason: DropReason::Unprivileged
        }
    );
    let (_, guest) = hub.get("/api/v1/guests/vm1").await;
    assert_eq!(guest["phase"], "registered");
    assert_eq!(guest["drops"]["unprivileged"], 1);
    assert!(matches!(
        hub.route(5, 1023, message(b"READY=1")).await,
        Routed::Accepted { .. }
    ));

    // Hybrid vsock hides the port: nothing to judge, so it is kept.
    let hybrid = Event {
        sender: Sender::Vsock { cid: 5, port: None },
        received: message(b"STATUS=hybrid"),
    };
    assert!(matches!(
        vsock::deliver(hub.registry.hub(), "vm1", hybrid, true).await,
        Routed::Accepted { .. }
    ));

    // Without the flag, port ≥ 1024 is just shown as not root.
    let mut open = FakeHub::kernel(|_| {}).await;
    open.post(json!({"name": "vm1", "cid": 5})).await;
    assert!(matches!(
        open.route(5, 49_152, message(b"READY=1")).await,
        Routed::Accepted { .. }
    ));
    let page = open
        .client
        .get(open.url("/guests/vm1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("vsock from CID 5 port 49152 (not root in guest)"));
    open.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn launch_offers_the_snippets_for_how_the_guest_is_reached() {
    let mut hub = FakeHub::kernel(|_| {}).await;
    hub.post(json!({"name": "web1"})).await;
    hub.post(json!({"name": "vm1", "cid": 5})).await;
    let uds = hub.tmp.path().join("fc1.vsock");
    hub.post(json!({"name": "fc1", "hybrid": {"uds_path": uds, "port": 7000}}))
        .await;

    let vmms = |launch: &Value| -> Vec<String> {
        launch["snippets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|snippet| snippet["vmm"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, launch) = hub.get("/api/v1/guests/web1/launch").await;
    assert_eq!(status, StatusCode::OK);
    let socket = hub.tmp.path().join("guests/web1/notify");
    assert_eq!(launch["guest"], "web1");
    assert_eq!(launch["notify_socket"], socket.to_str().unwrap());
    assert_eq!(vmms(&launch), ["systemd-nspawn", "podman"]);
    let nspawn = launch["snippets"][0]["text"].as_str().unwrap();
    assert_eq!(
        nspawn,
        format!(
            "--bind={}:/run/host/notify-dir --setenv=NOTIFY_SOCKET=/run/host/notify-dir/notify",
            socket.parent().unwrap().display()
        )
    );

    let (_, launch) = hub.get("/api/v1/guests/vm1/launch").await;
    assert_eq!(launch["notify_socket"], "vsock-stream:2:9999");
    assert_eq!(vmms(&launch), ["qemu", "systemd-vmspawn"]);
    assert_eq!(
        launch["snippets"][0]["text"],
        "-device vhost-vsock-pci,guest-cid=5 \
         -smbios type=11,value=io.systemd.credential:vmm.notify_socket=vsock-stream:2:9999"
    );

    let (_, launch) = hub.get("/api/v1/guests/fc1/launch").await;
    assert_eq!(launch["notify_socket"], "vsock-stream:2:7000");
    assert_eq!(vmms(&launch), ["firecracker", "cloud-hypervisor"]);
    let firecracker: Value =
        serde_json::from_str(launch["snippets"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        firecracker,
        json!({
            "vsock": {"guest_cid": 3, "uds_path": uds},
            "boot-source": {"boot_args": "systemd.set_credential=vmm.notify_socket:vsock-stream:2:7000"}
        })
    );

    let (status, body) = hub.get("/api/v1/guests/nobody/launch").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
    hub.stop().await;
}

/// The real kernel listeners, when this host can bind AF_VSOCK (the `vsock` module with a
/// transport): they start with the server, `VMADDR_PORT_ANY` is resolved, and they stop with it.
#[tokio::test(flavor = "multi_thread")]
async fn kernel_listeners_start_and_stop_with_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_auth: Default::default(),
        http_socket_mode: 0o600,
        socket_access: Default::default(),
        run_dir: tmp.path().to_owned(),
        guests: vec![],
        ready_timeout: None,
        rate_limit: None,
        journal: None,
        history_memory: notifyhub_web::store::DEFAULT_HISTORY_MEMORY,
        http_limits: Default::default(),
        vsock: VsockConfig {
            stream_port: Some(VMADDR_PORT_ANY),
            seqpacket_port: Some(VMADDR_PORT_ANY),
            guests: vec![VmGuest::parse_cid("vm1=5").unwrap()],
            ..VsockConfig::default()
        },
    };
    let server = match Server::bind(config, shutdown.clone()).await {
        Ok(server) => server,
        Err(error) => {
            println!("SKIPPED kernel vsock listeners: {error:#}");
            return;
        }
    };
    let ports = server.state().registry.kernel_ports();
    let (Some(stream), Some(seqpacket)) = (ports.stream, ports.seqpacket) else {
        panic!("{ports:?}")
    };
    assert_ne!(stream, seqpacket);
    assert_eq!(
        server.notify_sockets(),
        [("vm1".to_owned(), format!("vsock-stream:2:{stream}"))]
    );
    let run = tokio::spawn(server.run());
    shutdown.cancel();
    soon("shutdown", run).await.unwrap().unwrap();
}
