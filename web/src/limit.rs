//! Limits that keep one guest, or many, or HTTP clients, from costing the hub more than their
//! share: the per-guest rate limit, the hub's open-file limit and the HTTP connection limits.
//!
//! **Rate.** Every message a guest sends (a datagram on its notify socket, a vsock message)
//! takes one token from the guest's bucket ([`GuestLimiter`]: governor's GCRA, which is a token
//! bucket of `burst` tokens refilled at `per_second`, on the monotonic clock). Without a token
//! the message is dropped whole before the store sees it, its fds are closed at once, and the
//! receive path counts it in the guest's `drops.rate_limited` (`DropReason::RateLimited`),
//! stored like every drop but a run of them as one input (a row per flooded datagram kept the
//! journal busy and held every other guest's messages behind its commits: a quiet guest's p99
//! datagram→SSE latency went from under 1 ms to 9–12 ms beside a flood). A warning says so when
//! the guest starts being limited and then sums up at most once per [`LOG_INTERVAL`], never once
//! per message ([`crate::drop_log`]). The check sits in the receive paths, not in the store: a dropped message is neither
//! parsed, kept nor published.
//!
//! **Files.** Each guest holds one socket (two for a hybrid vsock guest), each HTTP client one
//! more: [`raise_nofile_limit`] lifts the soft `RLIMIT_NOFILE` to the hard limit at start, and a
//! registration that runs out of descriptors fails with
//! [`RegisterError::OutOfFiles`](crate::registry::RegisterError::OutOfFiles).
//!
//! **HTTP connections.** [`HttpLimits`]: at most `--max-connections` served at once (by default a
//! quarter of `RLIMIT_NOFILE`, [`default_max_connections`]), so HTTP clients can never take the
//! descriptors guests need, and each closed when it sends no whole request head within
//! `--http-idle-timeout`; [`crate::server`] enforces both.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota};
use tracing::{debug, info, warn};

use crate::drop_log::drop_log;

/// Default `--rate-limit`: messages per second per guest, sustained.
pub const DEFAULT_RATE: f64 = 1000.0;
/// Default `--rate-burst`: messages a guest may send at once after a quiet spell.
pub const DEFAULT_BURST: u32 = 10_000;
/// The highest `--rate-limit` (one token per nanosecond; the bucket's resolution).
pub const MAX_RATE: f64 = 1e9;
/// How often, at most, a guest's rate-limited drops are logged after the first.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A per-guest token bucket: `burst` tokens, refilled at `per_second`.
///
/// The defaults ([`DEFAULT_RATE`], [`DEFAULT_BURST`]) never touch a systemd guest: a boot sends
/// tens of messages, a busy service a few `STATUS=` updates a second, and a guest that replays
/// its boot after a hub restart sends a few hundred at once. They cut a flood (hundreds of
/// thousands of datagrams a second from one guest) to what the store folds in a few percent
/// of one core.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained messages per second, above 0 and at most [`MAX_RATE`].
    per_second: f64,
    /// Tokens in a full bucket.
    burst: NonZeroU32,
}

/// A [`RateLimit`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a rate must be a number of messages per second above 0 and at most {MAX_RATE}, not {0}")]
pub struct BadRate(pub String);

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: DEFAULT_RATE,
            burst: NonZeroU32::new(DEFAULT_BURST).expect("DEFAULT_BURST > 0"),
        }
    }
}

impl RateLimit {
    /// `per_second` messages per second sustained, `burst` at once.
    ///
    /// # Errors
    /// [`BadRate`] unless `per_second` is finite, above 0 and at most [`MAX_RATE`].
    pub fn new(per_second: f64, burst: NonZeroU32) -> Result<Self, BadRate> {
        if per_second.is_finite() && per_second > 0.0 && per_second <= MAX_RATE {
            Ok(Self { per_second, burst })
        } else {
            Err(BadRate(per_second.to_string()))
        }
    }

    /// Sustained messages per second.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Tokens in a full bucket.
    pub fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    fn quota(&self) -> Quota {
        // `new` keeps the period at 1 ns or more, which `with_period` takes.
        let period = Duration::from_secs_f64(1.0 / self.per_second).max(Duration::from_nanos(1));
        Quota::with_period(period)
            .expect("a period of 1 ns or more")
            .allow_burst(self.burst)
    }
}

/// Parses `--rate-limit`: messages per second (decimals allowed, e.g. `0.5`), or `0` for no
/// limit (`None`).
///
/// # Errors
/// A sentence for clap to show.
pub fn parse_rate(text: &str) -> Result<Option<f64>, String> {
    // 0 is a rate here: no limit, unlike for `RateLimit::new`.
    let expected = || {
        format!(
            "expected messages per second: 0 for no limit, or a number above 0 and at most \
             {MAX_RATE}, not {text:?}"
        )
    };
    let rate: f64 = text.parse().map_err(|_| expected())?;
    if rate == 0.0 {
        return Ok(None);
    }
    RateLimit::new(rate, NonZeroU32::MIN)
        .map(|limit| Some(limit.per_second))
        .map_err(|_| expected())
}

/// The rate limit flags of `notifyhub serve`.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Each guest may send RATE messages per second, sustained (decimals allowed; 0: no limit).
    /// Messages over it are dropped and counted in the guest's drops.rate_limited.
    #[arg(long, value_name = "RATE", default_value_t = DEFAULT_RATE, value_parser = parse_rate_arg)]
    pub rate_limit: f64,
    /// Each guest may send N messages at once (1 or more), above its --rate-limit.
    #[arg(long, value_name = "N", default_value_t = NonZeroU32::new(DEFAULT_BURST).expect("> 0"), value_parser = parse_burst)]
    pub rate_burst: NonZeroU32,
    /// Keep at most SIZE of accepted messages in memory, all guests together (bytes, or with a
    /// unit: 64MiB, 1GiB, 500MB): past it the oldest kept messages of any guest are forgotten
    /// first. A guest's state is never affected; the journal keeps its own history.
    #[arg(long, value_name = "SIZE", default_value = "128MiB", value_parser = parse_memory)]
    pub history_memory: usize,
    /// Serve at most N HTTP connections at once; at N the hub stops accepting until one closes
    /// (the kernel's listen backlog holds the next ones), so guests' sockets and the fds they
    /// pass always find room [default: a quarter of RLIMIT_NOFILE, at most 4096].
    #[arg(long, value_name = "N", value_parser = crate::config::nonzero_up_to(1_000_000))]
    pub max_connections: Option<NonZeroUsize>,
    /// Close an HTTP connection that has not sent a whole request head within DURATION of
    /// opening or of its last answer (slow or idle clients); SSE streams and long-polls are
    /// answers in progress and never cut.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_idle_timeout)]
    pub http_idle_timeout: Duration,
    /// Serve at most N Server-Sent Events streams (GET /api/v1/events) at once; one more gets
    /// 503 until one ends.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SSE_CLIENTS,
          value_parser = crate::config::nonzero_up_to(1_000_000))]
    pub max_sse_clients: NonZeroUsize,
}

/// Default `--max-sse-clients`. A client that stops reading holds up to
/// [`HTTP_MAX_BUFFER`] of hyper's buffer besides its socket's kernel buffers, so 1024 of them
/// hold about 16 MiB at most.
pub const DEFAULT_MAX_SSE_CLIENTS: NonZeroUsize = NonZeroUsize::new(1024).expect("> 0");

/// hyper's read and write buffer limit per HTTP connection (`max_buf_size`; hyper's own default
/// is 400 KiB). An answer stream (SSE) is polled for more only while its connection's buffer
/// holds less, so a client that stops reading costs at most this (and one event more) besides
/// the kernel's socket buffers, and its feed falls behind and is resynced when it reads again.
/// It also bounds a request head.
pub const HTTP_MAX_BUFFER: usize = 16 << 10;

/// Default `--http-idle-timeout`.
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The most HTTP connections a default `--max-connections` allows.
pub const MAX_DEFAULT_CONNECTIONS: usize = 4096;

/// How many HTTP connections the hub serves at once, and how long one may idle
/// (`--max-connections`, `--http-idle-timeout`).
///
/// A connection costs a descriptor and hyper's buffers (tens of KiB); without a cap, local
/// clients that only `connect()` filled the descriptor table (20 000 fds, 800 MB of RSS), every
/// API call hung, and a guest's `BARRIER=1` datagram lost its fd (`too_many_fds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; `None`: [`default_max_connections`] of the `RLIMIT_NOFILE`
    /// in force when serving starts.
    pub max_connections: Option<NonZeroUsize>,
    /// How long a connection may take to send a whole request head, counted from its opening
    /// or from the end of its last answer (hyper's `header_read_timeout`, which covers the idle
    /// time between keep-alive requests too). An answer in progress (an SSE stream, a
    /// long-poll) is never cut.
    pub idle_timeout: Duration,
    /// SSE streams served at once; one more gets 503.
    pub max_sse_clients: NonZeroUsize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: None,
            idle_timeout: DEFAULT_HTTP_IDLE_TIMEOUT,
            max_sse_clients: DEFAULT_MAX_SSE_CLIENTS,
        }
    }
}

impl HttpLimits {
    /// [`max_connections`](Self::max_connections), or the default for the soft
    /// `RLIMIT_NOFILE` now ([`nofile_limit`]).
    pub fn connections(&self) -> usize {
        self.max_connections.map_or_else(
            || default_max_connections(nofile_limit()),
            NonZeroUsize::get,
        )
    }
}

/// Default `--max-connections` for a soft `RLIMIT_NOFILE` of `nofile` (`None`: unlimited): a
/// quarter of it, at least 1 and at most [`MAX_DEFAULT_CONNECTIONS`]. The other three quarters
/// stay for guests' sockets, the fds guests pass (`BARRIER=1`), the journal and the listeners.
pub fn default_max_connections(nofile: Option<u64>) -> usize {
    nofile.map_or(MAX_DEFAULT_CONNECTIONS, |nofile| {
        usize::try_from(nofile / 4)
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_DEFAULT_CONNECTIONS)
    })
}

/// Parses `--history-memory`: a number of bytes with an optional unit, as `parse-size` reads
/// it (`KiB`, `MiB`, `GiB` are powers of 1024; `KB`, `MB`, `GB` and `K`, `M`, `G` powers of 1000).
///
/// # Errors
/// A sentence for clap to show.
pub fn parse_memory(text: &str) -> Result<usize, String> {
    let bytes = parse_size::parse_size(text)
        .map_err(|error| format!("expected a size such as 64MiB, not {text:?}: {error}"))?;
    usize::try_from(bytes).map_err(|_| format!("{text:?} is more than this machine addresses"))
}

impl LimitArgs {
    /// The [`RateLimit`] these flags ask for; `None` for `--rate-limit 0`.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        RateLimit::new(self.rate_limit, self.rate_burst).ok()
    }

    /// The [`HttpLimits`] these flags ask for.
    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: self.max_connections,
            idle_timeout: self.http_idle_timeout,
            max_sse_clients: self.max_sse_clients,
        }
    }
}

/// Parses `--http-idle-timeout`: a duration ([`crate::config::parse_duration`]) above 0.
fn parse_idle_timeout(text: &str) -> Result<Duration, String> {
    match crate::config::parse_duration(text)? {
        Duration::ZERO => Err(format!(
            "an idle timeout of 0 would close every connection before its request; expected a \
             duration above 0, not {text:?}"
        )),
        timeout => Ok(timeout),
    }
}

/// Parses `--rate-burst`: an integer from 1 up.
fn parse_burst(text: &str) -> Result<NonZeroU32, String> {
    crate::config::integer_in(1, u32::MAX)(text).map(|n| NonZeroU32::new(n).expect("from 1 up"))
}

/// [`parse_rate`] for clap, with 0 as itself.
fn parse_rate_arg(text: &str) -> Result<f64, String> {
    parse_rate(text).map(|rate| rate.unwrap_or(0.0))
}

/// One guest's bucket, shared by every path its messages come in by (its notify socket, its
/// hybrid vsock socket, the kernel vsock router).
#[derive(Debug)]
pub struct GuestLimiter {
    limit: RateLimit,
    bucket: DefaultDirectRateLimiter,
}

/// Throttles the log lines of one kind of event: the first is logged, then at most one line per
/// [`LOG_INTERVAL`] with the count since the last line (refused HTTP requests, through
/// [`crate::security::RefusalLog`]; guests' drops are summed up by [`crate::drop_log`]).
#[derive(Debug, Default)]
pub struct LogThrottle {
    /// When the last line was logged.
    last: Option<Instant>,
    /// Drops since then, this one included.
    unlogged: u64,
}

impl LogThrottle {
    /// Nothing noted yet.
    pub const fn new() -> Self {
        Self {
            last: None,
            unlogged: 0,
        }
    }

    /// Counts one drop at `now`; returns how many drops to report (this one and those not
    /// logged before it) when a log line is due, `None` when not.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        self.note_many(now, 1)
    }

    /// [`LogThrottle::note`] for `count` drops at once (one input that dropped several).
    pub fn note_many(&mut self, now: Instant, count: u64) -> Option<u64> {
        self.unlogged += count;
        let due = self
            .last
            .is_none_or(|last| now.duration_since(last) >= LOG_INTERVAL);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl GuestLimiter {
    /// A full bucket.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            bucket: DefaultDirectRateLimiter::direct(limit.quota()),
        }
    }

    /// The limit it enforces.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token for one message of guest `name`: `true` if it may go on. Without one
    /// (`false`), the caller drops the message, closes its fds and counts it as
    /// `DropReason::RateLimited`; this logs it: the first of a burst at once, the rest summed
    /// up once per [`LOG_INTERVAL`] ([`crate::drop_log`]).
    pub fn admit(&self, name: &str) -> bool {
        if self.bucket.check().is_ok() {
            return true;
        }
        let noted = drop_log().note(name, "rate_limited", 1, Instant::now());
        if let Some(dropped) = noted {
            warn!(
                guest = name,
                reason = "rate_limited",
                dropped,
                rate_limit = self.limit.per_second,
                rate_burst = self.limit.burst.get(),
                "messages over the guest's rate limit dropped (drops.rate_limited)"
            );
        }
        false
    }
}

/// The soft and hard `RLIMIT_NOFILE` after [`raise_nofile_limit`]; `None` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit before.
    pub was: Option<u64>,
    /// The soft limit now, the one that counts.
    pub soft: Option<u64>,
    /// The hard limit.
    pub hard: Option<u64>,
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (`setrlimit(2)`; no privilege
/// needed), so the hub can hold as many guest sockets and HTTP clients as it is allowed. The
/// default soft limit is often 1024, while systemd gives services a hard limit of 524288.
///
/// # Errors
/// What `setrlimit` says; the limit is unchanged then.
pub fn raise_nofile_limit() -> std::io::Result<NofileLimit> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current != now.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: now.maximum,
                maximum: now.maximum,
            },
        )?;
    }
    Ok(NofileLimit {
        was: now.current,
        soft: now.maximum,
        hard: now.maximum,
    })
}

/// [`raise_nofile_limit`] at the start of `notifyhub serve`: logged at info when the limit
/// changed, at debug when it was at the hard limit already, at warn when it cannot be raised.
pub fn raise_and_log_nofile_limit() {
    let show = |limit: Option<u64>| limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    match raise_nofile_limit() {
        Ok(limit) if limit.was != limit.soft => info!(
            was = show(limit.was),
            now = show(limit.soft),
            "open-file limit (RLIMIT_NOFILE) raised to its hard limit"
        ),
        Ok(limit) => debug!(
            limit = show(limit.soft),
            "open-file limit (RLIMIT_NOFILE) is at its hard limit already"
        ),
        Err(error) => warn!(
            %error,
            limit = show(nofile_limit()),
            "cannot raise the open-file limit (RLIMIT_NOFILE)"
        ),
    }
}

/// The soft `RLIMIT_NOFILE` now; `None` is unlimited.
pub fn nofile_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: f64, burst: u32) -> RateLimit {
        RateLimit::new(per_second, NonZeroU32::new(burst).unwrap()).unwrap()
    }

    #[test]
    fn history_memory_takes_bytes_and_units() {
        assert_eq!(parse_memory("0"), Ok(0));
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert_eq!(parse_memory("64MiB"), Ok(64 << 20));
        assert_eq!(parse_memory("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_memory("500MB"), Ok(500_000_000));
        assert!(parse_memory("lots").unwrap_err().contains("\"lots\""));
        assert!(parse_memory("-1MiB").is_err());
    }

    #[test]
    fn a_full_bucket_passes_its_burst_then_refuses() {
        // One token an hour: nothing refills while the test runs.
        let limiter = GuestLimiter::new(limit(1.0 / 3600.0, 3));
        let admitted: Vec<bool> = (0..5).map(|_| limiter.admit("a")).collect();
        assert_eq!(admitted, [true, true, true, false, false]);
    }

    #[test]
    fn a_bucket_refills_at_its_rate() {
        // A token every 10 ms; the bucket holds one.
        let limiter = GuestLimiter::new(limit(100.0, 1));
        assert!(limiter.admit("a"));
        std::thread::sleep(Duration::from_millis(30));
        assert!(limiter.admit("a"), "a token came back after 10 ms");
    }

    /// The kernel vsock router and a guest's own socket draw on one bucket per guest.
    #[tokio::test]
    async fn a_guests_socket_and_its_cid_share_one_bucket() {
        use notifyhub_core::{DropReason, Sender};
        use notifyhub_transport_vsock::End;
        use tokio_util::sync::CancellationToken;

        use crate::registry::Registry;
        use crate::store::Hub;
        use crate::vsock::{self, Event, KernelPorts, Reach, Received, Routed, VsockSettings};

        let dir = tempfile::tempdir().unwrap();
        let settings = VsockSettings {
            ports: KernelPorts {
                stream: Some(9999),
                seqpacket: None,
            },
            ..VsockSettings::default()
        };
        let shutdown = CancellationToken::new();
        let hub = Hub::new();
        let registry =
            Registry::with_vsock(hub.clone(), dir.path().join("guests"), &shutdown, settings);
        registry.set_rate_limit(Some(limit(1.0 / 3600.0, 2)));
        let vm = registry
            .register_with("vm1", Reach::cid(5).unwrap())
            .await
            .unwrap();
        let message = |text: &str| Event {
            sender: Sender::Vsock {
                cid: 5,
                port: Some(1023),
            },
            received: Received::Message {
                payload: text.as_bytes().to_vec(),
                end: End::Eof,
            },
        };
        // One token over vsock, one over the unix socket, then none for either.
        assert!(matches!(
            vsock::route(&registry, message("STATUS=vsock")).await,
            Routed::Accepted { .. }
        ));
        let socket = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let path = &*vm.summary.notify_socket;
        let mut snapshots = hub.watch("vm1").unwrap();
        let mut until = async |what: &str, done: &dyn Fn(&notifyhub_core::Snapshot) -> bool| {
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let snapshot = snapshots.borrow_and_update().clone();
                    if done(&snapshot) {
                        return snapshot;
                    }
                    snapshots.changed().await.unwrap();
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{what} within 10 s"))
        };
        socket.send_to(b"STATUS=unix", path).unwrap();
        until("the unix message", &|s| s.messages == 2).await;
        socket.send_to(b"STATUS=unix over", path).unwrap();
        assert_eq!(
            vsock::route(&registry, message("STATUS=vsock over")).await,
            Routed::Dropped {
                guest: "vm1".into(),
                reason: DropReason::RateLimited
            }
        );
        let snapshot = until("two rate-limited drops", &|s| s.drops.rate_limited == 2).await;
        assert_eq!(snapshot.messages, 2);
        assert_eq!(snapshot.status.as_deref(), Some("unix"));
        registry.close().await;
    }

    #[test]
    fn a_batch_of_drops_counts_whole_in_the_next_line() {
        let mut log = LogThrottle::default();
        let t0 = Instant::now();
        assert_eq!(log.note_many(t0, 3), Some(3));
        assert_eq!(log.note_many(t0 + Duration::from_millis(1), 5), None);
        assert_eq!(log.note(t0 + LOG_INTERVAL), Some(6));
    }

    #[test]
    fn rates_parse_and_zero_means_none() {
        assert_eq!(parse_rate("1000"), Ok(Some(1000.0)));
        assert_eq!(parse_rate("0.5"), Ok(Some(0.5)));
        assert_eq!(parse_rate("0"), Ok(None));
        for bad in ["-1", "NaN", "inf", "1e10", "", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
        assert_eq!(RateLimit::default().per_second(), DEFAULT_RATE);
        assert_eq!(RateLimit::default().burst().get(), DEFAULT_BURST);
    }

    #[test]
    fn default_connections_leave_most_files_to_guests() {
        assert_eq!(default_max_connections(Some(20_000)), 4096);
        assert_eq!(default_max_connections(Some(1024)), 256);
        assert_eq!(default_max_connections(Some(2)), 1);
        assert_eq!(default_max_connections(None), MAX_DEFAULT_CONNECTIONS);
        let set = HttpLimits {
            max_connections: NonZeroUsize::new(7),
            ..HttpLimits::default()
        };
        assert_eq!(set.connections(), 7);
        assert_eq!(parse_idle_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_idle_timeout("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_idle_timeout("0").unwrap_err().contains("above 0"));
        assert!(parse_idle_timeout("soon").is_err());
    }

    #[test]
    fn the_soft_fd_limit_is_raised_to_the_hard_one() {
        let limits = raise_nofile_limit().unwrap();
        assert_eq!(limits.soft, limits.hard);
        assert_eq!(nofile_limit(), limits.hard);
    }
}
