//! Replays every captured datagram of `../shared/vectors/*.jsonl` into a fresh guest socket of
//! the real `notifyhub` binary, in order and with the captured fds, and checks the guest's state
//! at checkpoints and at the end. The expectations are written out by hand from the files (one
//! table, [`CASES`]); they are not computed with the code under test.

use std::collections::BTreeSet;
use std::time::Duration;

use notifyhub_tests::{Hub, Vector, load_vectors, pipe_closed_within, vectors_dir};
use serde_json::Value;

/// One expectation on a guest's JSON (or on a wait).
#[derive(Clone, Copy, Debug)]
enum Expect {
    Phase(&'static str),
    Status(Option<&'static str>),
    Hostname(Option<&'static str>),
    MachineId(Option<&'static str>),
    /// The target is in `active_units`.
    Active(&'static str),
    /// The target is not in `active_units`.
    NotActive(&'static str),
    /// `active_units` is exactly this set.
    ActiveSet(&'static [&'static str]),
    /// `shutdown`: `None` for JSON null, else `(verb, reboot_parameter)`.
    Shutdown(Option<(&'static str, Option<&'static str>)>),
    ExitStatus(Option<u64>),
    MainPid(Option<u64>),
    Errno(Option<u64>),
    SignalsLevel(Option<u64>),
    BootCount(u64),
    FailedBoot(bool),
    ReadySeen(bool),
    Messages(u64),
    /// `GET …/wait?for=COND&timeout=SECS` answers this status code.
    Wait(&'static str, u64, u16),
}

/// Checks after datagram `after` (by `seq`); `after == u64::MAX` means after the last one.
#[derive(Debug)]
struct Checkpoint {
    after: u64,
    expect: &'static [Expect],
}

#[derive(Debug)]
struct Case {
    file: &'static str,
    checkpoints: &'static [Checkpoint],
}

const END: u64 = u64::MAX;
const PROBE_HOST: &str = "probe-guest";
const PROBE_ID: &str = "5e1f0b7a2c3d4e5f60718293a4b5c6d7";

use Expect::*;

/// The identity PID 1 reports first in every systemd257 capture.
const IDENTITY: &[Expect] = &[
    Phase("booting"),
    Hostname(Some(PROBE_HOST)),
    MachineId(Some(PROBE_ID)),
    SignalsLevel(Some(2)),
    BootCount(1),
    ReadySeen(false),
    Shutdown(None),
    ExitStatus(None),
];

/// A full boot of the default (graphical) target: READY=1 at 17, graphical.target at 18.
const BOOTED_GRAPHICAL: &[Expect] = &[
    Phase("ready"),
    Status(Some("Ready.")),
    ReadySeen(true),
    Active("ssh-access.target"),
    Active("multi-user.target"),
    Active("graphical.target"),
    BootCount(1),
    FailedBoot(false),
    Wait("ready", 5, 200),
    Wait("booted", 5, 200),
    Wait("unit:ssh-access.target", 5, 200),
    Wait("phase:ready", 5, 200),
];

/// The final message of a clean poweroff.
const OFF_POWEROFF: &[Expect] = &[
    Phase("off"),
    Shutdown(Some(("poweroff", None))),
    ExitStatus(Some(0)),
    Hostname(Some(PROBE_HOST)),
    MachineId(Some(PROBE_ID)),
    BootCount(1),
    FailedBoot(false),
    Wait("off", 5, 200),
];

/// Targets active after a poweroff that deactivated everything else.
const POWEROFF_TARGETS: &[&str] = &[
    "final.target",
    "poweroff.target",
    "shutdown.target",
    "umount.target",
];

static CASES: &[Case] = &[
    Case {
        file: "systemd257-boot-reboot-arg.jsonl",
        checkpoints: &[
            Checkpoint {
                after: 3,
                expect: IDENTITY,
            },
            Checkpoint {
                after: 16,
                expect: &[
                    Phase("booting"),
                    Active("multi-user.target"),
                    ReadySeen(false),
                ],
            },
            Checkpoint {
                after: 18,
                expect: BOOTED_GRAPHICAL,
            },
            Checkpoint {
                after: 33,
                expect: &[
                    Phase("stopping"),
                    NotActive("ssh-access.target"),
                    Active("shutdown.target"),
                    // nothing revives a stopping boot: a ready-wait gives up at once
                    Wait("ready", 5, 409),
                ],
            },
            Checkpoint {
                after: END,
                expect: &[
                    Phase("off"),
                    Shutdown(Some(("reboot", Some("probe-arg")))),
                    ExitStatus(Some(0)),
                    Hostname(Some(PROBE_HOST)),
                    MachineId(Some(PROBE_ID)),
                    BootCount(1),
                    FailedBoot(false),
                    Status(Some("Ready.")),
                    ActiveSet(&[
                        "final.target",
                        "reboot.target",
                        "shutdown.target",
                        "umount.target",
                    ]),
                    Messages(37),
                    Wait("off", 5, 200),
                    // a wait begun while off waits for the next boot: it times out here
                    Wait("ready", 1, 408),
                ],
            },
        ],
    },
    Case {
        file: "systemd257-emergency-target.jsonl",
        checkpoints: &[
            Checkpoint {
                after: 3,
                expect: IDENTITY,
            },
            // READY=1 comes before emergency.target in emergency mode
            Checkpoint {
                after: 4,
                expect: &[Phase("ready"), ReadySeen(true), FailedBoot(false)],
            },
            Checkpoint {
                after: 5,
                expect: &[
                    Phase("failed"),
                    FailedBoot(true),
                    Active("emergency.target"),
                    Wait("ready", 5, 409),
                    Wait("booted", 5, 409),
                    Wait("unit:ssh-access.target", 5, 409),
                    Wait("phase:failed", 5, 200),
                ],
            },
            Checkpoint {
                after: 8,
                expect: &[Phase("stopping"), FailedBoot(true)],
            },
            Checkpoint {
                after: END,
                expect: &[
                    Phase("off"),
                    FailedBoot(true),
                    Shutdown(Some(("poweroff", None))),
                    ExitStatus(Some(0)),
                    BootCount(1),
                    ActiveSet(POWEROFF_TARGETS),
                    Messages(11),
                    Wait("off", 5, 200),
                ],
            },
        ],
    },
    Case {
        file: "systemd257-halt.jsonl",
        checkpoints: &[
            Checkpoint {
                after: 3,
                expect: IDENTITY,
            },
            Checkpoint {
                after: 18,
                expect: BOOTED_GRAPHICAL,
            },
            Checkpoint {
                after: END,
                expect: &[
                    Phase("off"),
                    Shutdown(Some(("halt", None))),
                    ExitStatus(Some(0)),
                    BootCount(1),
                    ActiveSet(&[
                        "final.target",
                        "halt.target",
                        "shutdown.target",
                        "umount.target",
                    ]),
                    Messages(37),
                ],
            },
        ],
    },
    Case {
        file: "systemd257-multi-user-unit.jsonl",
        checkpoints: &[
            Checkpoint {
                after: 3,
                expect: IDENTITY,
            },
            // --unit multi-user.target: READY=1 before the target's own UNIT_ACTIVE
            Checkpoint {
                after: 16,
                expect: &[
                    Phase("ready"),
                    NotActive("multi-user.target"),
                    Active("ssh-access.target"),
                    Wait("ready", 5, 200),
                    Wait("booted", 1, 408),
                ],
            },
            Checkpoint {
                after: 17,
                expect: &[
                    Phase("ready"),
                    Active("multi-user.target"),
                    NotActive("graphical.target"),
                    Wait("booted", 5, 200),
                ],
            },
            Checkpoint {
                after: END,
                expect: OFF_POWEROFF,
            },
            Checkpoint {
                after: END,
                expect: &[Messages(35), ActiveSet(POWEROFF_TARGETS)],
            },
        ],
    },
    Case {
        file: "systemd257-poweroff.jsonl",
        checkpoints: &[
            Checkpoint {
                after: 3,
                expect: IDENTITY,
            },
            Checkpoint {
                after: 18,
                expect: BOOTED_GRAPHICAL,
            },
            Checkpoint {
                after: END,
                expect: OFF_POWEROFF,
            },
            Checkpoint {
                after: END,
                expect: &[Messages(37), ActiveSet(POWEROFF_TARGETS)],
            },
        ],
    },
    Case {
        file: "systemd257-reload-reexec.jsonl",
        checkpoints: &[
            Checkpoint {
                after: 3,
                expect: IDENTITY,
            },
            Checkpoint {
                after: 18,
                expect: BOOTED_GRAPHICAL,
            },
            // daemon-reload
            Checkpoint {
                after: 19,
                expect: &[
                    Phase("reloading"),
                    BootCount(1),
                    ReadySeen(true),
                    Wait("ready", 5, 200),
                ],
            },
            Checkpoint {
                after: 20,
                expect: &[Phase("ready"), BootCount(1), Active("graphical.target")],
            },
            // daemon-reexec: RELOADING=1, then the new PID 1 re-announces its signals level
            Checkpoint {
                after: 21,
                expect: &[Phase("reloading"), BootCount(1)],
            },
            Checkpoint {
                after: 22,
                expect: &[Phase("reloading"), BootCount(1), SignalsLevel(Some(2))],
            },
            Checkpoint {
                after: 23,
                expect: &[
                    Phase("ready"),
                    BootCount(1),
                    Active("ssh-access.target"),
                    Wait("booted", 5, 200),
                ],
            },
            Checkpoint {
                after: END,
                expect: OFF_POWEROFF,
            },
            Checkpoint {
                after: END,
                expect: &[Messages(42), ActiveSet(POWEROFF_TARGETS)],
            },
        ],
    },
    Case {
        file: "systemd257-sig-rtmin14-immediate-poweroff.jsonl",
        checkpoints: &[
            Checkpoint {
                after: 3,
                expect: IDENTITY,
            },
            Checkpoint {
                after: 18,
                expect: BOOTED_GRAPHICAL,
            },
            // SIGRTMIN+14: no stop jobs, straight to the final message
            Checkpoint {
                after: END,
                expect: OFF_POWEROFF,
            },
            Checkpoint {
                after: END,
                expect: &[Messages(19), NotActive("shutdown.target")],
            },
        ],
    },
    Case {
        file: "systemd257-sig-rtmin4-poweroff.jsonl",
        checkpoints: &[
            Checkpoint {
                after: 3,
                expect: IDENTITY,
            },
            Checkpoint {
                after: 18,
                expect: BOOTED_GRAPHICAL,
            },
            Checkpoint {
                after: 19,
                expect: &[
                    Phase("ready"),
                    Status(Some("Activating special unit poweroff.target...")),
                ],
            },
            Checkpoint {
                after: END,
                expect: OFF_POWEROFF,
            },
            Checkpoint {
                after: END,
                expect: &[
                    Messages(38),
                    ActiveSet(POWEROFF_TARGETS),
                    Status(Some("Activating special unit poweroff.target...")),
                ],
            },
        ],
    },
    Case {
        file: "systemd-notify252.jsonl",
        checkpoints: &[
            Checkpoint {
                after: 1,
                expect: &[Phase("ready"), Status(None), BootCount(1)],
            },
            Checkpoint {
                after: 4,
                expect: &[Status(Some("Hello world: ünïcode"))],
            },
            Checkpoint {
                after: 6,
                expect: &[MainPid(Some(4242))],
            },
            Checkpoint {
                after: 8,
                expect: &[Phase("ready"), Status(Some("x")), MainPid(Some(4242))],
            },
            Checkpoint {
                after: 9,
                expect: &[Phase("stopping"), Wait("ready", 5, 409)],
            },
            // RELOADING=1 after STOPPING=1 changes nothing
            Checkpoint {
                after: 10,
                expect: &[Phase("stopping")],
            },
            Checkpoint {
                after: END,
                expect: &[
                    Phase("stopping"),
                    Status(Some("x")),
                    MainPid(Some(4242)),
                    Errno(Some(5)),
                    ExitStatus(None),
                    Shutdown(None),
                    Hostname(None),
                    MachineId(None),
                    ActiveSet(&[]),
                    BootCount(1),
                    ReadySeen(true),
                    Messages(14),
                ],
            },
        ],
    },
    Case {
        file: "systemd-notify252-abstract.jsonl",
        checkpoints: &[Checkpoint {
            after: END,
            expect: &[
                Phase("ready"),
                Status(Some("abs2")),
                MainPid(None),
                Errno(None),
                ExitStatus(None),
                BootCount(1),
                Messages(3),
            ],
        }],
    },
    Case {
        file: "systemd-notify257.jsonl",
        checkpoints: &[
            Checkpoint {
                after: 5,
                expect: &[
                    Phase("ready"),
                    Status(Some("Hello world")),
                    MainPid(Some(3741)),
                ],
            },
            // --pid=4242 of a dead process: v257 reports its own failure
            Checkpoint {
                after: 7,
                expect: &[
                    Errno(Some(3)),
                    ExitStatus(Some(1)),
                    MainPid(Some(3741)),
                    Phase("ready"),
                ],
            },
            Checkpoint {
                after: 10,
                expect: &[Phase("reloading"), Wait("ready", 5, 200)],
            },
            Checkpoint {
                after: 11,
                expect: &[Phase("reloading"), Status(Some("reloading-now"))],
            },
            Checkpoint {
                after: 13,
                expect: &[Phase("stopping"), Status(Some("bye"))],
            },
            Checkpoint {
                after: END,
                expect: &[
                    Phase("stopping"),
                    Status(Some("x")),
                    MainPid(Some(3741)),
                    Errno(Some(38)),
                    ExitStatus(Some(1)),
                    Shutdown(None),
                    BootCount(1),
                    Messages(17),
                ],
            },
        ],
    },
    Case {
        file: "systemd-notify257-live-pid.jsonl",
        checkpoints: &[
            Checkpoint {
                after: 1,
                expect: &[Phase("booting"), MainPid(Some(4597)), ReadySeen(false)],
            },
            Checkpoint {
                after: END,
                // RELOADING=1 and READY=1 in one message: READY=1 wins
                expect: &[
                    Phase("ready"),
                    Status(Some("starting")),
                    MainPid(Some(4597)),
                    Errno(None),
                    ExitStatus(None),
                    Messages(3),
                ],
            },
        ],
    },
];

fn opt_str(v: &Value) -> Option<&str> {
    v.as_str()
}

fn active_units(guest: &Value) -> BTreeSet<String> {
    guest["active_units"]
        .as_array()
        .unwrap_or_else(|| panic!("active_units is not an array: {guest:#}"))
        .iter()
        .map(|u| u.as_str().expect("unit name string").to_string())
        .collect()
}

async fn check(hub: &Hub, name: &str, file: &str, after: u64, expect: &[Expect]) {
    let guest = hub.guest(name).await;
    let at = |what: &str| format!("{file} after datagram {after}: {what}; guest:\n{guest:#}");
    for e in expect {
        match *e {
            Phase(p) => assert_eq!(guest["phase"], p, "{}", at("phase")),
            Status(s) => assert_eq!(opt_str(&guest["status"]), s, "{}", at("status")),
            Hostname(h) => assert_eq!(opt_str(&guest["hostname"]), h, "{}", at("hostname")),
            MachineId(m) => assert_eq!(opt_str(&guest["machine_id"]), m, "{}", at("machine_id")),
            Active(u) => assert!(
                active_units(&guest).contains(u),
                "{}",
                at(&format!("{u} active"))
            ),
            NotActive(u) => {
                assert!(
                    !active_units(&guest).contains(u),
                    "{}",
                    at(&format!("{u} not active"))
                );
            }
            ActiveSet(set) => {
                let want: BTreeSet<String> = set.iter().map(|s| (*s).to_string()).collect();
                assert_eq!(active_units(&guest), want, "{}", at("active_units"));
                // and served sorted
                let served: Vec<&str> = guest["active_units"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                let mut sorted = served.clone();
                sorted.sort_unstable();
                assert_eq!(served, sorted, "{}", at("active_units sorted"));
            }
            Shutdown(None) => assert!(guest["shutdown"].is_null(), "{}", at("shutdown null")),
            Shutdown(Some((verb, param))) => {
                assert_eq!(guest["shutdown"]["verb"], verb, "{}", at("shutdown verb"));
                assert_eq!(
                    opt_str(&guest["shutdown"]["reboot_parameter"]),
                    param,
                    "{}",
                    at("reboot_parameter")
                );
            }
            ExitStatus(x) => assert_eq!(guest["exit_status"].as_u64(), x, "{}", at("exit_status")),
            MainPid(x) => assert_eq!(guest["main_pid"].as_u64(), x, "{}", at("main_pid")),
            Errno(x) => assert_eq!(guest["errno"].as_u64(), x, "{}", at("errno")),
            SignalsLevel(x) => {
                assert_eq!(
                    guest["signals_level"].as_u64(),
                    x,
                    "{}",
                    at("signals_level")
                );
            }
            BootCount(n) => assert_eq!(
                guest["boot_count"].as_u64(),
                Some(n),
                "{}",
                at("boot_count")
            ),
            FailedBoot(b) => assert_eq!(guest["failed_boot"], b, "{}", at("failed_boot")),
            ReadySeen(b) => assert_eq!(guest["ready_seen"], b, "{}", at("ready_seen")),
            Messages(n) => assert_eq!(guest["messages"].as_u64(), Some(n), "{}", at("messages")),
            Wait(cond, secs, code) => {
                let (status, body) = hub.wait(name, cond, secs).await;
                assert_eq!(
                    status.as_u16(),
                    code,
                    "{file} after datagram {after}: wait?for={cond}&timeout={secs}; body: {body:#}"
                );
                if code == 200 {
                    assert_eq!(
                        body["name"], name,
                        "wait 200 answers the guest JSON: {body:#}"
                    );
                }
            }
        }
    }
}

/// Sends one captured datagram, with `fds` fresh pipe write ends when it carried fds, and
/// returns the read ends.
fn replay(hub: &Hub, name: &str, v: &Vector) -> Vec<std::os::fd::OwnedFd> {
    if v.fds > 0 {
        hub.send_with_fds(name, &v.bytes(), v.fds)
    } else {
        hub.send(name, &v.bytes());
        Vec::new()
    }
}

async fn run_case(file: &str) {
    let case = CASES
        .iter()
        .find(|c| c.file == file)
        .unwrap_or_else(|| panic!("no case for {file} in CASES"));
    let vectors = load_vectors(file);
    let total = vectors.len() as u64;
    for cp in case.checkpoints {
        assert!(
            cp.after == END || cp.after <= total,
            "{file}: checkpoint after {} > {total}",
            cp.after
        );
    }
    let name = "replay";
    let hub = Hub::start(&[name]).await;
    let fresh = hub.guest(name).await;
    assert_eq!(fresh["phase"], "registered", "{fresh:#}");
    assert_eq!(fresh["messages"], 0, "{fresh:#}");

    let mut held_fds = Vec::new();
    for v in &vectors {
        let reads = replay(&hub, name, v);
        for read in reads {
            held_fds.push((v.seq, read));
        }
        let due: Vec<&Checkpoint> = case
            .checkpoints
            .iter()
            .filter(|cp| cp.after == v.seq || (cp.after == END && v.seq == total))
            .collect();
        if !due.is_empty() {
            hub.settle(name, v.seq).await;
            for cp in due {
                check(&hub, name, file, v.seq, cp.expect).await;
            }
        }
    }
    let guest = hub.settle(name, total).await;
    // Every datagram is one message, BARRIER=1 included; nothing dropped.
    assert_eq!(
        guest["messages"].as_u64(),
        Some(total),
        "{file}: messages\n{guest:#}"
    );
    for (key, n) in guest["drops"].as_object().expect("drops object") {
        assert_eq!(n, 0, "{file}: drops.{key}\n{guest:#}");
    }

    // The hub closes every fd it received once it has processed the datagram (BARRIER=1).
    for (seq, read) in &held_fds {
        let closed =
            tokio::task::block_in_place(|| pipe_closed_within(read, Duration::from_secs(5)));
        assert!(
            closed,
            "{file}: the fd sent with datagram {seq} is still open in the hub"
        );
    }

    // The event log holds each datagram's exact bytes, in order, with its fd count.
    let events = hub.events(name).await;
    let got: Vec<(String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["hex"].as_str().expect("event hex").to_string(),
                e["fds"].as_u64().expect("event fds"),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = vectors
        .iter()
        .map(|v| (v.hex.clone(), v.fds as u64))
        .collect();
    assert_eq!(got, want, "{file}: /events hex and fds in order");
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_u64().expect("event seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{file}: event seqs increase: {seqs:?}"
    );
    for (e, v) in events.iter().zip(&vectors) {
        assert_eq!(
            e["text"].as_str(),
            Some(v.text.as_str()),
            "{file} seq {}: event text",
            v.seq
        );
    }

    hub.shutdown().await;
}

macro_rules! vector_tests {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                run_case($file).await;
            }
        )*

        /// Every `*.jsonl` file in the vectors folder has a test and a row in [`CASES`].
        #[test]
        fn every_vector_file_is_covered() {
            let tested: BTreeSet<&str> = [$($file),*].into_iter().collect();
            let in_table: BTreeSet<&str> = CASES.iter().map(|c| c.file).collect();
            assert_eq!(tested, in_table, "tests vs CASES");
            let dir = vectors_dir();
            let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".jsonl"))
                .collect();
            let tested: BTreeSet<String> = tested.into_iter().map(String::from).collect();
            assert_eq!(on_disk, tested, "vector files on disk vs tested");
        }
    };
}

vector_tests! {
    boot_reboot_arg => "systemd257-boot-reboot-arg.jsonl",
    emergency_target => "systemd257-emergency-target.jsonl",
    halt => "systemd257-halt.jsonl",
    multi_user_unit => "systemd257-multi-user-unit.jsonl",
    poweroff => "systemd257-poweroff.jsonl",
    reload_reexec => "systemd257-reload-reexec.jsonl",
    sig_rtmin14_immediate_poweroff => "systemd257-sig-rtmin14-immediate-poweroff.jsonl",
    sig_rtmin4_poweroff => "systemd257-sig-rtmin4-poweroff.jsonl",
    systemd_notify252 => "systemd-notify252.jsonl",
    systemd_notify252_abstract => "systemd-notify252-abstract.jsonl",
    systemd_notify257 => "systemd-notify257.jsonl",
    systemd_notify257_live_pid => "systemd-notify257-live-pid.jsonl",
}
