//! Prometheus metrics of the hub, served at `GET /metrics` in the Prometheus text format 0.0.4.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `notifyhub_messages_total` | counter | `transport`: `unix`, `vsock`, `unknown` |
//! | `notifyhub_drops_total` | counter | `reason`: a [`DropReason`](notifyhub_core::DropReason) (`oversize`, …) |
//! | `notifyhub_vsock_drops_total` | counter | `reason`: `unknown_cid`, `over_guest_limit` |
//! | `notifyhub_guests` | gauge | `phase`: a [`Phase`] |
//! | `notifyhub_registered_guests` | gauge | |
//! | `notifyhub_sse_clients` | gauge | |
//! | `notifyhub_wait_requests` | gauge | |
//! | `notifyhub_store_write_seconds` | histogram | |
//! | `notifyhub_history_evictions_total` | counter | |
//! | `notifyhub_history_bytes` | gauge | |
//!
//! No label names a guest: a hub with 10 000 guests would export 10 000 series per metric, and
//! the per-guest numbers are in the REST API (`messages`, `drops`). Every label has a closed set
//! of values (3 transports, 8 reasons, 7 phases), so the whole exposition stays under 60
//! series whatever the guests do.
//!
//! Counters are counted where they happen (the [`store`](crate::store) counts messages and
//! drops, the API its SSE clients); the gauges of guests are read from the store at each
//! scrape.

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use notifyhub_core::{Drops, Phase, Sender};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;

/// The media type of the exposition: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Bucket bounds of `notifyhub_store_write_seconds`: 50 µs, doubling 16 times, to 1.6 s.
fn store_write_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(50e-6, 2.0, 16)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

/// The hub's metrics. One per [`Hub`](crate::store::Hub) (`Hub::metrics`); cheap to update from
/// any thread.
#[derive(Debug)]
pub struct Metrics {
    messages: Family<TransportLabel, Counter>,
    drops: Family<ReasonLabel, Counter>,
    guests: Family<PhaseLabel, Gauge>,
    registered_guests: Gauge,
    sse_clients: Gauge,
    wait_requests: Gauge,
    store_write: Histogram,
    history_evictions: Counter,
    history_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics at zero.
    pub fn new() -> Self {
        let metrics = Self {
            messages: Family::default(),
            drops: Family::default(),
            guests: Family::default(),
            registered_guests: Gauge::default(),
            sse_clients: Gauge::default(),
            wait_requests: Gauge::default(),
            store_write: Histogram::new(store_write_buckets()),
            history_evictions: Counter::default(),
            history_bytes: Gauge::default(),
        };
        // Every series exists from the start, at 0: a rate() over a counter that appears only
        // on its first event misses that event.
        for transport in ["unix", "vsock", "unknown"] {
            let _ = metrics
                .messages
                .get_or_create(&TransportLabel { transport });
        }
        for (reason, _) in drop_counts(&Drops::default()) {
            let _ = metrics.drops.get_or_create(&ReasonLabel { reason });
        }
        for phase in Phase::ALL {
            let _ = metrics.guests.get_or_create(&PhaseLabel {
                phase: phase.as_str(),
            });
        }
        metrics
    }

    /// Counts one accepted message from `sender`.
    pub fn count_message(&self, sender: &Sender) {
        let transport = match sender {
            Sender::Unix { .. } => "unix",
            Sender::Vsock { .. } => "vsock",
            _ => "unknown",
        };
        self.messages
            .get_or_create(&TransportLabel { transport })
            .inc();
    }

    /// Counts the drops a guest's counters gained from `before` to `after` (its
    /// [`Snapshot::drops`](notifyhub_core::Snapshot::drops) around one input), by reason.
    pub fn count_drops(&self, before: &Drops, after: &Drops) {
        for (reason, gained) in drops_gained(before, after) {
            self.drops
                .get_or_create(&ReasonLabel { reason })
                .inc_by(gained);
        }
    }

    /// Records how long one write to the durable store took (a committed transaction, from its
    /// start to the commit's return). The durable store calls it; nothing else does.
    pub fn observe_store_write(&self, elapsed: Duration) {
        self.store_write.observe(elapsed.as_secs_f64());
    }

    /// Counts `count` kept messages forgotten for the hub-wide memory budget
    /// ([`Limits::history_memory`](crate::store::Limits::history_memory)).
    pub fn count_history_evictions(&self, count: u64) {
        self.history_evictions.inc_by(count);
    }

    /// Kept messages forgotten for the memory budget so far (`notifyhub_history_evictions_total`).
    pub fn history_evictions(&self) -> u64 {
        self.history_evictions.get()
    }

    /// Counts an SSE client until the returned guard is dropped.
    pub fn sse_client(&self) -> Tracked {
        Tracked::new(&self.sse_clients)
    }

    /// Counts a waiting long-poll until the returned guard is dropped.
    pub fn wait_request(&self) -> Tracked {
        Tracked::new(&self.wait_requests)
    }

    /// The exposition of `state`'s hub: these metrics, the guests per phase read now, and the
    /// hub-wide vsock drops.
    pub fn render(state: &AppState) -> String {
        let metrics = state.hub.metrics();
        let counts = state.hub.phase_counts();
        let mut registered = 0;
        for (phase, count) in counts {
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            registered += count;
            metrics
                .guests
                .get_or_create(&PhaseLabel {
                    phase: phase.as_str(),
                })
                .set(count);
        }
        metrics.registered_guests.set(registered);
        metrics
            .history_bytes
            .set(i64::try_from(state.hub.history_memory()).unwrap_or(i64::MAX));

        let mut registry = Registry::with_prefix("notifyhub");
        registry.register(
            "messages",
            "sd_notify messages accepted, by the transport they came on",
            metrics.messages.clone(),
        );
        registry.register(
            "drops",
            "Messages (or parts of them) dropped and counted in a guest's drops, by reason",
            metrics.drops.clone(),
        );
        // The registry's own atomics: read now, as counters of this scrape.
        let vsock = state.registry.vsock_stats();
        let vsock_drops = Family::<ReasonLabel, Counter>::default();
        for (reason, count) in [
            ("unknown_cid", vsock.unknown_cid.get()),
            ("over_guest_limit", vsock.over_guest_limit.get()),
        ] {
            let reason = reason.to_owned();
            vsock_drops
                .get_or_create(&ReasonLabel { reason })
                .inc_by(count);
        }
        registry.register(
            "vsock_drops",
            "Vsock messages dropped hub-wide, charged to no guest, by reason",
            vsock_drops,
        );
        registry.register(
            "guests",
            "Registered guests, by phase",
            metrics.guests.clone(),
        );
        registry.register(
            "registered_guests",
            "Registered guests",
            metrics.registered_guests.clone(),
        );
        registry.register(
            "sse_clients",
            "Open Server-Sent Events streams (GET /api/v1/events)",
            metrics.sse_clients.clone(),
        );
        registry.register(
            "wait_requests",
            "Long-polls waiting now (GET /api/v1/guests/{name}/wait)",
            metrics.wait_requests.clone(),
        );
        registry.register(
            "store_write_seconds",
            "Time to commit one write to the durable store, in seconds",
            metrics.store_write.clone(),
        );
        registry.register(
            "history_evictions",
            "Kept messages forgotten, oldest first, to stay within --history-memory",
            metrics.history_evictions.clone(),
        );
        registry.register(
            "history_bytes",
            "Bytes of kept messages hub-wide (overhead plus datagram), at most --history-memory",
            metrics.history_bytes.clone(),
        );
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}

/// The reasons whose counters grew from `before` to `after`, named as in the REST API, each
/// with how much it grew.
pub(crate) fn drops_gained(before: &Drops, after: &Drops) -> Vec<(String, u64)> {
    if before.total() == after.total() {
        return Vec::new();
    }
    drop_counts(after)
        .zip(drop_counts(before))
        .filter(|((_, after), (_, before))| after > before)
        .map(|((reason, after), (_, before))| (reason, after - before))
        .collect()
}

/// Every reason of [`Drops`] with its count, named as in the REST API.
fn drop_counts(drops: &Drops) -> impl Iterator<Item = (String, u64)> {
    let value = serde_json::to_value(drops).expect("counters serialise");
    let serde_json::Value::Object(map) = value else {
        unreachable!("Drops serialises as an object")
    };
    map.into_iter()
        .map(|(reason, count)| (reason, count.as_u64().unwrap_or(0)))
}

/// Keeps a gauge one higher while it lives.
#[derive(Debug)]
#[must_use = "the gauge goes down when this is dropped"]
pub struct Tracked(Gauge);

impl Tracked {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `GET /metrics`.
pub(crate) async fn serve(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        Metrics::render(&state),
    )
}

#[cfg(test)]
mod tests {
    use notifyhub_core::{DropReason, MAX_ACTIVE_UNITS, Sender, Timestamp};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::registry::Registry;
    use crate::store::Hub;

    fn sample<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    /// `hub` served with a registry whose sockets go below `dir`.
    fn app_state(hub: &Hub, dir: &std::path::Path) -> AppState {
        let shutdown = CancellationToken::new();
        let registry = Registry::new(hub.clone(), dir.join("guests"), &shutdown);
        AppState {
            hub: hub.clone(),
            registry,
            shutdown,
        }
    }

    /// Drops the core counts by itself (not through `record_drop`) are counted too: the store
    /// takes the difference of the guest's `drops` around each input.
    #[tokio::test]
    async fn drops_counted_inside_the_core_reach_the_metrics() {
        let hub = Hub::new();
        let dir = tempfile::tempdir().unwrap();
        let state = app_state(&hub, dir.path());
        hub.register("a", "/run/a", Timestamp::ZERO).unwrap();
        let at = Timestamp::from_micros(1);
        for i in 0..=MAX_ACTIVE_UNITS {
            let datagram = format!("X_SYSTEMD_UNIT_ACTIVE=u{i}.target");
            hub.ingest("a", at, Sender::Unknown, datagram.as_bytes(), 0)
                .unwrap();
        }
        let text = Metrics::render(&state);
        assert_eq!(
            sample(&text, r#"notifyhub_drops_total{reason="units_over_limit"}"#),
            "1"
        );
        assert_eq!(
            sample(&text, r#"notifyhub_messages_total{transport="unknown"}"#),
            (MAX_ACTIVE_UNITS + 1).to_string()
        );
        assert_eq!(sample(&text, r#"notifyhub_guests{phase="booting"}"#), "1");

        hub.metrics().observe_store_write(Duration::from_micros(70));
        let guard = hub.metrics().sse_client();
        let text = Metrics::render(&state);
        assert_eq!(
            sample(
                &text,
                r#"notifyhub_store_write_seconds_bucket{le="0.0001"}"#
            ),
            "1"
        );
        assert_eq!(
            sample(&text, r#"notifyhub_store_write_seconds_bucket{le="5e-05"}"#),
            "0"
        );
        assert_eq!(sample(&text, "notifyhub_sse_clients"), "1");
        drop(guard);
        assert_eq!(
            sample(&Metrics::render(&state), "notifyhub_sse_clients"),
            "0"
        );
    }

    /// Inputs applied while the hub replays its journal change the state (and so the gauges)
    /// but count nothing: after the replay, one live message counts 1 and its drops only its own.
    #[tokio::test]
    async fn a_replay_rebuilds_the_gauges_but_counts_nothing() {
        let hub = Hub::new();
        let dir = tempfile::tempdir().unwrap();
        let state = app_state(&hub, dir.path());
        let at = Timestamp::from_micros(1);
        {
            let _replaying = hub.replaying();
            hub.register("a", "/run/a", Timestamp::ZERO).unwrap();
            hub.ingest("a", at, Sender::Unknown, b"READY=1", 0).unwrap();
            hub.ingest("a", at, Sender::Unknown, b"STATUS=\0x", 0)
                .unwrap_err();
            hub.record_drop("a", DropReason::Oversize).unwrap();
        }
        // Messages, oversize drops, embedded-NUL drops.
        let counted = |text: &str| {
            [
                r#"notifyhub_messages_total{transport="unknown"}"#,
                r#"notifyhub_drops_total{reason="oversize"}"#,
                r#"notifyhub_drops_total{reason="embedded_nul"}"#,
            ]
            .map(|series| sample(text, series).to_owned())
        };
        let text = Metrics::render(&state);
        assert_eq!(counted(&text), ["0", "0", "0"]);
        assert_eq!(sample(&text, r#"notifyhub_guests{phase="ready"}"#), "1");
        assert_eq!(sample(&text, "notifyhub_registered_guests"), "1");
        assert_ne!(sample(&text, "notifyhub_history_bytes"), "0");
        assert_eq!(hub.guest("a").unwrap().snapshot().drops.oversize, 1);

        hub.ingest("a", at, Sender::Unknown, b"STATUS=live", 0)
            .unwrap();
        hub.record_drop("a", DropReason::Oversize).unwrap();
        assert_eq!(counted(&Metrics::render(&state)), ["1", "1", "0"]);
        assert_eq!(hub.guest("a").unwrap().snapshot().drops.oversize, 2);
    }
}
