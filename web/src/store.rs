//! The state store: every guest's state, its message history, and the hub-wide event log.
//!
//! Data flows one way: a transport hands each datagram to [`Hub::ingest`] (and each due
//! deadline to [`Hub::handle_timeout`]), which feeds it to the guest's [`Guest`] state machine,
//! drains the guest's events into the event log and publishes the new [`Snapshot`] to its
//! waiters. A batch of inputs (a receive loop's drained socket, a journal commit) publishes each
//! guest once, after the batch; each event still carries the state right after its input, and a
//! snapshot is made only for inputs that caused events and for the publish. The web handlers
//! only read: views ([`Hub::guest`], [`Hub::guests`],
//! [`Hub::history`]), long-polls ([`Hub::wait`]) and event feeds ([`Hub::subscribe`]).
//!
//! The transports call the `accept_*` forms ([`Hub::accept_datagram`] and its siblings, in
//! [`crate::journal`]): with a journal attached they store each input before applying it; without
//! one they are the methods above.
//!
//! Kept messages ([`Hub::history`]) are bounded twice: each guest keeps its newest
//! [`Limits::history`], and all guests together at most [`Limits::history_memory`] bytes, past
//! which the oldest kept messages of any guest are forgotten first (a hub-wide queue in
//! acceptance order). Forgetting a message never changes a guest's state, the fold of all of
//! them.
//!
//! The event log ([`Hub::subscribe`]) is bounded likewise: its newest [`Limits::event_log`]
//! events, within [`Limits::event_log_memory`] bytes of what they hold (the guest state each
//! carries, its JSON once made). Live subscribers only point at those events, so a stalled one
//! holds nothing the log let go of; it gets a [`Resync`] instead.
//!
//! All state sits behind one `std::sync::Mutex`. Every method that takes it is synchronous and
//! short, so the lock is never held across an `.await`; waiting happens on the `watch` and
//! `broadcast` channels the store hands out.

use std::collections::{BTreeMap, VecDeque, btree_map};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use notifyhub_core::{
    DropReason, Drops, Event, Guest, Milestone, ParseError, Phase, Sender, Snapshot, Timestamp,
    Wait, WaitCondition, WaitOutcome,
};
use notifyhub_transport_unix::SocketAccess;
use serde::{Serialize, Serializer};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::drop_log::drop_log;
use crate::metrics::{Metrics, drops_gained};
use crate::vsock::Reach;

/// How much the store keeps. [`Limits::default`] is what the hub uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Accepted messages kept per guest; older ones are forgotten (and counted).
    pub history: usize,
    /// Bytes of kept messages hub-wide, each costing [`Record::cost`]: past it the oldest kept
    /// messages of any guest are forgotten first (`notifyhub serve --history-memory`).
    pub history_memory: usize,
    /// Hub events kept for `Last-Event-ID` resumes (the newest is always kept).
    pub event_log: usize,
    /// Bytes the kept hub events may hold, each costing what [`HubEvent::json`] and the state
    /// it carries take: past it the oldest are forgotten first, so that resumes from before
    /// them get a [`Resync`] (the newest is always kept).
    pub event_log_memory: usize,
    /// Hub events a live subscriber may fall behind before it lags and gets a [`Resync`]. One
    /// ring serves every subscriber and holds weak references to the events the resume log
    /// keeps, so a larger one costs a pointer per slot, not memory per client: a subscriber
    /// that falls behind what the log keeps gets a [`Resync`] too.
    pub live: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            history: 4096,
            history_memory: DEFAULT_HISTORY_MEMORY,
            event_log: 8192,
            event_log_memory: DEFAULT_EVENT_LOG_MEMORY,
            live: 8192,
        }
    }
}

/// Default [`Limits::history_memory`]: 128 MiB. At about 200 bytes a message
/// ([`RECORD_OVERHEAD`] plus a typical datagram) that keeps some 650 000 messages: a boot's worth
/// (tens of messages) for each of 10 000 guests, hundreds each for 1 000. The journal keeps
/// more (`--retain-messages`); this bounds what the hub holds in memory.
pub const DEFAULT_HISTORY_MEMORY: usize = 128 << 20;

/// Default [`Limits::event_log_memory`]: 8 MiB. A systemd boot's events cost 1–2 KiB each with
/// their JSON (the guest's state rides along), so this keeps thousands of them; an event of a
/// guest that changes a 4 KiB `STATUS=` with every message costs 8.5 KiB, 17 KiB with its JSON,
/// so 500 to 1,000 of those. Without the bound, 8,192 of those held some 140 MiB.
pub const DEFAULT_EVENT_LOG_MEMORY: usize = 8 << 20;

/// What one kept message costs beyond its datagram's bytes, in bytes: the [`Record`] in its
/// `Arc`, its slot in the guest's history and its slot in the hub-wide eviction order.
/// Allocator rounding is not counted.
pub const RECORD_OVERHEAD: usize =
    size_of::<Record>() + 2 * size_of::<usize>() + size_of::<Arc<Record>>() + size_of::<KeptRef>();

/// The state store. Cheap to clone: all clones share one store.
#[derive(Clone, Debug)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    limits: Limits,
    metrics: Metrics,
    /// Set once by [`crate::journal::Journal::open`]: inputs are stored before they apply.
    journal: OnceLock<crate::journal::Writer>,
    /// Set while [`crate::journal::Journal::open`] replays the journal ([`Hub::replaying`]):
    /// inputs then rebuild the state only, without logging or counting them as news.
    replaying: AtomicBool,
    /// Open SSE streams' slots (`--max-sse-clients`), set once by [`Hub::set_max_sse_clients`];
    /// unset: no cap.
    sse_slots: OnceLock<Arc<tokio::sync::Semaphore>>,
}

#[derive(Debug)]
struct State {
    guests: BTreeMap<String, Entry>,
    log: EventLog,
    /// [`Hub::set_ready_timeout`]: given to every guest registered after it was set.
    ready_timeout: Option<Duration>,
    /// Every guest's kept messages, for [`Limits::history_memory`].
    kept: Kept,
    /// The [`Entry::generation`] of the next guest registered or restored.
    next_generation: u64,
}

/// The hub-wide account of kept messages: their cost, and the order to forget them in.
#[derive(Debug, Default)]
struct Kept {
    /// The sum of [`Record::cost`] over every guest's history.
    bytes: usize,
    /// Messages kept by every guest.
    records: usize,
    /// Kept messages in the order they were accepted (restored ones: when restored), oldest
    /// first. Entries whose message is gone already (forgotten by [`Limits::history`], or its
    /// guest removed) are skipped when they come up, and compacted away once they outnumber
    /// the kept ones.
    order: VecDeque<KeptRef>,
}

/// One kept message in [`Kept::order`]: guest `name`'s message `seq`, as long as `name` is
/// still the guest of that `generation`.
#[derive(Debug)]
struct KeptRef {
    name: Arc<str>,
    generation: u64,
    seq: u64,
}

#[derive(Debug)]
struct Entry {
    guest: Guest,
    notify_socket: Arc<str>,
    reach: Arc<Reach>,
    /// The guest's name, shared with its [`KeptRef`]s.
    name: Arc<str>,
    /// Tells this registration from an earlier one of the same name.
    generation: u64,
    /// Accepted messages, oldest first; `history.back().seq == accepted`.
    history: VecDeque<Arc<Record>>,
    /// Messages forgotten for [`Limits::history_memory`] (not [`Limits::history`]).
    evicted: u64,
    /// Messages accepted so far, which is also the `seq` of the last one.
    accepted: u64,
    /// Dropping it (with the entry) tells every waiter the guest is gone.
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// The state after the last input, when that input caused events (which carry it) and
    /// nothing was published since: [`Entry::publish`] sends it instead of making another.
    fresh: Option<Arc<Snapshot>>,
    /// An input was applied since the last [`Entry::publish`] (a batch in the journal's
    /// writer): the published snapshot is behind, though the input's events may be out.
    unpublished: bool,
    /// Its notify socket's own mode and owner (`POST /api/v1/guests`), kept by the journal so
    /// that a restored guest's socket is bound as before; `None`: the hub's `--socket-mode`.
    socket_access: Option<SocketAccess>,
}

/// The hub-wide log of [`HubEvent`]s: ids, a ring for resumes, and the live channel.
///
/// The ring owns the events; the live channel only points at them (`Weak`), so what the hub
/// holds for every subscriber, a stalled one too, is what the ring keeps: at most
/// [`Limits::event_log`] events and [`Limits::event_log_memory`] bytes.
#[derive(Debug)]
struct EventLog {
    last_id: u64,
    ring: VecDeque<HeldEvent>,
    capacity: usize,
    /// [`Limits::event_log_memory`].
    budget: usize,
    /// The sum of [`HeldEvent::cost`] over the ring.
    bytes: usize,
    /// The bytes of the JSON that events in the ring made ([`HubEvent::json`]), made outside
    /// the lock and counted by the events themselves.
    json_bytes: Arc<AtomicUsize>,
    live: broadcast::Sender<(u64, Weak<HubEvent>)>,
}

/// An event in the [`EventLog`]'s ring, with what it holds.
#[derive(Debug)]
struct HeldEvent {
    event: Arc<HubEvent>,
    /// Its bytes ([`HubEvent::cost`]), plus its state's ([`snapshot_cost`]) unless the next
    /// event carries the same state (the events of one input share it: it goes with the last).
    cost: usize,
}

/// A guest's state without its timeline: the SSE `snapshot`, and what a [`Resync`] carries.
///
/// Serialised as the fields of [`Snapshot`] plus `notify_socket`, `cid` and `hybrid`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct GuestSummary {
    /// The guest's state.
    #[serde(flatten)]
    pub snapshot: Arc<Snapshot>,
    /// The absolute path of the guest's notify socket, the value of its `$NOTIFY_SOCKET`.
    #[schema(value_type = String)]
    pub notify_socket: Arc<str>,
    /// How a VM guest reaches the hub over vsock: `"cid"` and `"hybrid"`, `null` if not.
    #[serde(flatten)]
    #[schema(value_type = crate::openapi::ReachFields)]
    pub reach: Arc<Reach>,
}

/// A guest as `GET /api/v1/guests/{name}` shows it: [`GuestSummary`] plus the boot timeline.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct GuestDetail {
    /// The state and socket path.
    #[serde(flatten)]
    pub summary: GuestSummary,
    /// The boot timeline, oldest first (at most [`notifyhub_core::MAX_TIMELINE`] entries).
    pub timeline: Vec<Milestone>,
}

impl GuestDetail {
    /// The guest's state.
    pub fn snapshot(&self) -> &Snapshot {
        &self.summary.snapshot
    }
}

/// Every guest at one moment, and the id of the last event that moment includes.
#[derive(Clone, Debug)]
pub struct Overview {
    /// The newest hub event id (0 before the first event).
    pub last_event_id: u64,
    /// All guests, sorted by name.
    pub guests: Vec<GuestDetail>,
}

/// One accepted datagram, as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its number among the guest's accepted messages, from 1.
    pub seq: u64,
    /// When it was received.
    pub received_at: Timestamp,
    /// Who sent it.
    pub sender: Sender,
    /// How many file descriptors came with it (all closed after it was ingested).
    pub fds: usize,
    /// The datagram's bytes, exactly.
    pub bytes: Box<[u8]>,
}

impl Record {
    /// What keeping it costs against [`Limits::history_memory`], in bytes: [`RECORD_OVERHEAD`]
    /// plus the datagram's length.
    pub fn cost(&self) -> usize {
        RECORD_OVERHEAD + self.bytes.len()
    }
}

/// A guest's recent messages.
#[derive(Clone, Debug)]
pub struct History {
    /// The kept messages, oldest first.
    pub records: Vec<Arc<Record>>,
    /// How many older messages were accepted but are no longer kept.
    pub forgotten: u64,
    /// How many of the `forgotten` went for the hub-wide [`Limits::history_memory`] rather
    /// than the guest's own [`Limits::history`].
    pub evicted: u64,
}

/// What a [`HubEvent`] reports about its guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The guest was registered.
    Registered,
    /// The guest's state machine reported a change.
    Guest(Event),
    /// The guest was removed; the event's snapshot is its last state.
    Removed,
}

impl Change {
    /// The SSE event name: `registered`, `guest` or `removed`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Guest(_) => "guest",
            Self::Removed => "removed",
        }
    }
}

/// A guest's [`Event`] as is (`{"type": "phase_changed", …}`); `{"type": "registered"}` and
/// `{"type": "removed"}` for the hub's own changes.
impl Serialize for Change {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Lifecycle {
            r#type: &'static str,
        }
        match self {
            Self::Guest(event) => event.serialize(serializer),
            Self::Registered | Self::Removed => Lifecycle {
                r#type: self.name(),
            }
            .serialize(serializer),
        }
    }
}

/// One entry of the hub-wide event log: a change of one guest.
#[derive(Debug, Serialize)]
pub struct HubEvent {
    /// Hub-wide, from 1, increasing by one per event.
    pub id: u64,
    /// The guest's name.
    pub guest: String,
    /// What changed.
    pub event: Change,
    /// The guest's state after the datagram (or registration, or removal) that caused the event.
    /// Events caused by one datagram share it.
    pub snapshot: GuestSummary,
    /// [`HubEvent::json`], made once for every subscriber.
    #[serde(skip)]
    json: OnceLock<Arc<str>>,
    /// [`EventLog::json_bytes`], where the JSON is counted while the ring holds the event.
    #[serde(skip)]
    json_bytes: Arc<AtomicUsize>,
    /// The JSON's bytes counted in `json_bytes`: [`JSON_UNCOUNTED`] before it is made,
    /// [`JSON_RELEASED`] once the ring let go of the event (nothing to count any more).
    #[serde(skip)]
    json_counted: AtomicUsize,
}

/// [`HubEvent::json_counted`] of an event in the ring whose JSON is not made yet.
const JSON_UNCOUNTED: usize = 0;
/// [`HubEvent::json_counted`] of an event the ring no longer holds.
const JSON_RELEASED: usize = usize::MAX;

impl HubEvent {
    /// The event as JSON (its [`Serialize`] form), serialised on the first call only: every
    /// SSE client sends the same text.
    pub fn json(&self) -> Arc<str> {
        self.json
            .get_or_init(|| {
                // Plain data of strings and numbers: serialising it cannot fail.
                let json: Arc<str> = serde_json::to_string(self)
                    .expect("hub events serialise")
                    .into();
                // Counted first, then claimed: the ring may let go of the event in between,
                // and then takes back only what was claimed.
                let cost = ARC_HEADER + json.len();
                self.json_bytes.fetch_add(cost, Ordering::SeqCst);
                if self
                    .json_counted
                    .compare_exchange(JSON_UNCOUNTED, cost, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
                {
                    self.json_bytes.fetch_sub(cost, Ordering::SeqCst);
                }
                json
            })
            .clone()
    }

    /// What the event holds of its own, in bytes: itself in its `Arc`, its guest's name and
    /// the text of its [`Change`]. Its state ([`snapshot_cost`]) and its JSON are counted apart.
    fn cost(&self) -> usize {
        let text = match &self.event {
            Change::Guest(event) => event_text_len(event),
            Change::Registered | Change::Removed => 0,
        };
        ARC_HEADER + size_of::<Self>() + self.guest.capacity() + text
    }

    /// The ring let go of it: uncounts its JSON from `json_bytes`, and stops any JSON made
    /// from now on from being counted.
    fn release(&self) {
        let counted = self.json_counted.swap(JSON_RELEASED, Ordering::SeqCst);
        if counted != JSON_UNCOUNTED && counted != JSON_RELEASED {
            self.json_bytes.fetch_sub(counted, Ordering::SeqCst);
        }
    }
}

/// The reference counts in front of an `Arc`'s value, in bytes.
const ARC_HEADER: usize = 2 * size_of::<usize>();

/// The heap bytes of an [`Event`]'s text (a unit name, a status, …).
fn event_text_len(event: &Event) -> usize {
    let len = |text: &Option<String>| text.as_ref().map_or(0, String::capacity);
    match event {
        Event::StatusChanged { status } => len(status),
        Event::Hostname { hostname } => hostname.capacity(),
        Event::MachineId { machine_id } => machine_id.capacity(),
        Event::UnitActive { unit } | Event::UnitInactive { unit } => unit.capacity(),
        Event::Shutdown { shutdown, .. } => {
            shutdown.verb.capacity() + len(&shutdown.reboot_parameter)
        }
        // Numbers, phases and times only.
        _ => 0,
    }
}

/// What a guest's [`Snapshot`] in its `Arc` takes, in bytes: the struct and every text it
/// holds (allocator rounding not counted).
fn snapshot_cost(snapshot: &Snapshot) -> usize {
    let len = |text: &Option<String>| text.as_ref().map_or(0, String::capacity);
    let shutdown = snapshot.shutdown.as_ref().map_or(0, |shutdown| {
        shutdown.verb.capacity() + len(&shutdown.reboot_parameter)
    });
    let units = snapshot.active_units.capacity() * size_of::<String>()
        + snapshot
            .active_units
            .iter()
            .map(String::capacity)
            .sum::<usize>();
    ARC_HEADER
        + size_of::<Snapshot>()
        + snapshot.name.capacity()
        + len(&snapshot.status)
        + len(&snapshot.hostname)
        + len(&snapshot.machine_id)
        + len(&snapshot.bus_error)
        + len(&snapshot.varlink_error)
        + shutdown
        + units
}

/// Sent to a subscriber instead of events it cannot have: the state of every guest it follows.
#[derive(Clone, Debug, Serialize)]
pub struct Resync {
    /// The id of the last event this state includes; the feed goes on after it.
    #[serde(skip)]
    pub id: u64,
    /// The guests followed, sorted by name.
    pub guests: Vec<GuestSummary>,
}

/// What a [`Feed`] yields.
#[derive(Clone, Debug)]
pub enum FeedItem {
    /// Start over from this state: the events before it are not available.
    Resync(Resync),
    /// The next event.
    Event(Arc<HubEvent>),
}

/// A journal replay in progress, from [`Hub::replaying`]; ends when dropped.
#[derive(Debug)]
pub(crate) struct Replaying<'a> {
    hub: &'a Hub,
}

impl Drop for Replaying<'_> {
    fn drop(&mut self) {
        self.hub.inner.replaying.store(false, Ordering::Relaxed);
    }
}

/// A subscriber's view of the event log, from [`Hub::subscribe`]: a replay of held events (or a
/// [`Resync`]), then live events, each exactly once and in id order.
#[derive(Debug)]
pub struct Feed {
    hub: Hub,
    guest: Option<String>,
    /// Items decided at subscription time, handed out before any live event.
    backlog: VecDeque<FeedItem>,
    live: broadcast::Receiver<(u64, Weak<HubEvent>)>,
    /// The id of the last event accounted for; live events up to it are duplicates.
    after: u64,
}

impl Feed {
    /// The next item. Cancel-safe. A subscriber that falls [`Limits::live`] events behind, or
    /// behind the oldest event the log keeps ([`Limits::event_log_memory`]), gets a
    /// [`FeedItem::Resync`] instead of the events it missed, so a slow client costs bounded
    /// memory.
    pub async fn next(&mut self) -> FeedItem {
        if let Some(item) = self.backlog.pop_front() {
            return item;
        }
        loop {
            match self.live.recv().await {
                Ok((id, event)) => {
                    if id <= self.after {
                        continue;
                    }
                    // Gone: the log let go of it before this subscriber took it.
                    let Some(event) = event.upgrade() else {
                        return self.resync();
                    };
                    if !self.follows(&event.guest) {
                        continue;
                    }
                    self.after = event.id;
                    return FeedItem::Event(event);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return self.resync(),
                // The sender lives in the hub, which `self.hub` keeps alive.
                Err(broadcast::error::RecvError::Closed) => {
                    unreachable!("the hub's event channel closed while a feed holds the hub")
                }
            }
        }
    }

    fn resync(&mut self) -> FeedItem {
        let resync = self.hub.lock().resync(self.guest.as_deref());
        self.after = resync.id;
        FeedItem::Resync(resync)
    }

    fn follows(&self, guest: &str) -> bool {
        self.guest.as_deref().is_none_or(|name| name == guest)
    }
}

/// How a [`Hub::wait`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitEnd {
    /// The condition holds.
    Met,
    /// The condition can no longer hold in this boot ([`WaitOutcome::Unreachable`]).
    Unreachable,
    /// The timeout passed first.
    TimedOut,
    /// The guest was removed.
    Removed,
    /// The cancellation token fired (the hub is shutting down).
    Cancelled,
}

/// When an input's new state goes to the guest's waiters ([`Hub::watch`], [`Hub::wait`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Publish {
    /// Right after the input.
    Now,
    /// With [`Hub::publish`], once the batch the input is part of was applied.
    Later,
}

/// No guest has that name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no guest named {0:?}")]
pub struct UnknownGuest(pub String);

/// A guest of that name is already registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("guest {0:?} is already registered")]
pub struct AlreadyRegistered(pub String);

/// Why [`Hub::ingest`] did not take a datagram.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The guest is not registered (any more).
    #[error(transparent)]
    UnknownGuest(#[from] UnknownGuest),
    /// The core rejected the datagram; it was counted in the guest's drops.
    #[error("datagram dropped: {0}")]
    Rejected(#[from] ParseError),
    /// The journal could not store the datagram, so it was not applied either.
    #[error("datagram dropped: {0}")]
    NotStored(#[from] crate::journal::NotStored),
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// An empty store with the default [`Limits`].
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// An empty store keeping what `limits` says.
    ///
    /// # Panics
    /// If `limits.live` is 0 (a broadcast channel needs room for one event).
    pub fn with_limits(limits: Limits) -> Self {
        let (live, _) = broadcast::channel(limits.live);
        let log = EventLog {
            last_id: 0,
            ring: VecDeque::new(),
            capacity: limits.event_log.max(1),
            budget: limits.event_log_memory,
            bytes: 0,
            json_bytes: Arc::new(AtomicUsize::new(0)),
            live,
        };
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    guests: BTreeMap::new(),
                    log,
                    ready_timeout: None,
                    kept: Kept::default(),
                    next_generation: 0,
                }),
                limits,
                metrics: Metrics::new(),
                journal: OnceLock::new(),
                replaying: AtomicBool::new(false),
                sse_slots: OnceLock::new(),
            }),
        }
    }

    /// The hub's metrics ([`Metrics`]): the store counts accepted messages and drops in them,
    /// and its long-polls while they wait.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Caps the SSE streams open at once at `max` (`--max-sse-clients`); takes effect once,
    /// before serving: a later call changes nothing.
    pub fn set_max_sse_clients(&self, max: usize) {
        let _ = self
            .inner
            .sse_slots
            .set(Arc::new(tokio::sync::Semaphore::new(max)));
    }

    /// A slot for one more SSE stream, held until the stream ends; `None` when
    /// [`set_max_sse_clients`](Self::set_max_sse_clients)'s cap is reached. Without a cap, a
    /// slot that holds nothing.
    pub fn sse_slot(&self) -> Option<SseSlot> {
        match self.inner.sse_slots.get() {
            Some(slots) => {
                let permit = Arc::clone(slots).try_acquire_owned().ok()?;
                Some(SseSlot {
                    _permit: Some(permit),
                })
            }
            None => Some(SseSlot { _permit: None }),
        }
    }

    /// Marks the inputs applied until the returned guard drops as a replay of the journal:
    /// they rebuild the state (the fold is the same), but their phase changes are not logged
    /// and their messages, drops and evictions are not counted in [`Hub::metrics`], which
    /// count what happened since this process started. Gauges read the state, so they are
    /// right after the replay.
    pub(crate) fn replaying(&self) -> Replaying<'_> {
        self.inner.replaying.store(true, Ordering::Relaxed);
        Replaying { hub: self }
    }

    /// The metrics to count live inputs in; `None` during [`Hub::replaying`].
    fn live_metrics(&self) -> Option<&Metrics> {
        (!self.inner.replaying.load(Ordering::Relaxed)).then_some(&self.inner.metrics)
    }

    /// What this store keeps.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// The journal's writer, once [`crate::journal::Journal::open`] attached it.
    pub(crate) fn journal(&self) -> Option<&crate::journal::Writer> {
        self.inner.journal.get()
    }

    /// Makes the `accept_*` inputs go through `writer` from now on.
    pub(crate) fn attach_journal(&self, writer: crate::journal::Writer) {
        if self.inner.journal.set(writer).is_err() {
            panic!("a journal is attached to this hub already");
        }
    }

    /// Puts guest `name` back as a journal checkpoint kept it: its state machine, how many
    /// messages it had accepted, and its newest kept messages (oldest first). Logs no event.
    /// The messages count against [`Limits::history_memory`] as if accepted now.
    pub(crate) fn restore(
        &self,
        name: &str,
        guest: Guest,
        notify_socket: &str,
        reach: Reach,
        accepted: u64,
        history: Vec<Record>,
    ) {
        let limit = self.inner.limits.history;
        let (snapshot, _) = watch::channel(Arc::new(guest.snapshot()));
        let skip = history.len().saturating_sub(limit);
        let mut state = self.lock();
        let State {
            guests,
            kept,
            next_generation,
            ..
        } = &mut *state;
        let entry = Entry {
            guest,
            notify_socket: notify_socket.into(),
            reach: Arc::new(reach),
            name: name.into(),
            generation: *next_generation,
            history: history.into_iter().skip(skip).map(Arc::new).collect(),
            evicted: 0,
            accepted,
            snapshot,
            fresh: None,
            unpublished: false,
            socket_access: None,
        };
        *next_generation += 1;
        for record in &entry.history {
            kept.push(&entry.name, entry.generation, record);
        }
        if let Some(earlier) = guests.insert(name.to_owned(), entry) {
            kept.forget_all(&earlier.history);
        }
        kept.evict(
            self.inner.limits.history_memory,
            guests,
            self.live_metrics(),
        );
    }

    /// Guest `name`'s state for a journal checkpoint: its state machine, accepted messages,
    /// notify socket and reach.
    pub(crate) fn checkpoint(&self, name: &str) -> Option<crate::journal::CheckpointOf> {
        let state = self.lock();
        let entry = state.guests.get(name)?;
        Some((
            entry.guest.clone(),
            entry.accepted,
            entry.notify_socket.clone(),
            entry.reach.clone(),
        ))
    }

    /// During a journal replay: the next event gets id `last_id + 1`. Going forward over ids
    /// whose events are gone (pruned or purged) empties the resume ring, so that a
    /// `Last-Event-ID` from before the gap gets a [`Resync`]; ids never go back.
    pub(crate) fn resume_event_ids(&self, last_id: u64) {
        let mut state = self.lock();
        if last_id > state.log.last_id {
            state.log.last_id = last_id;
            state.log.ring.clear();
        }
    }

    /// Points guest `name` at its notify socket's path in this run (a restored guest's may
    /// differ from the one it was registered with).
    pub(crate) fn set_notify_socket(&self, name: &str, notify_socket: &str) {
        if let Some(entry) = self.lock().guests.get_mut(name) {
            entry.notify_socket = notify_socket.into();
        }
    }

    /// Gives guest `name` a notify socket mode and owner of its own (`None`: the hub's), for
    /// the registry to bind its socket with after a restart ([`Hub::socket_access`]).
    pub(crate) fn set_socket_access(&self, name: &str, access: Option<SocketAccess>) {
        if let Some(entry) = self.lock().guests.get_mut(name) {
            entry.socket_access = access;
        }
    }

    /// Guest `name`'s own notify socket mode and owner, if it was registered with them.
    pub fn socket_access(&self, name: &str) -> Option<SocketAccess> {
        self.lock().guests.get(name)?.socket_access
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held except on bugs, and the state stays consistent
        // between statements, so a poisoned lock is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Adds guest `name`, whose notify socket is at `notify_socket`, registered at `now`, and
    /// logs a [`Change::Registered`] event. The name must have passed
    /// [`notifyhub_core::validate_guest_name`].
    ///
    /// # Errors
    /// [`AlreadyRegistered`] if the name is taken; nothing changes then.
    pub fn register(
        &self,
        name: &str,
        notify_socket: &str,
        now: Timestamp,
    ) -> Result<GuestDetail, AlreadyRegistered> {
        self.register_with(name, notify_socket, Reach::Unix, now)
    }

    /// As [`register`](Self::register), for a guest that also reaches the hub as `reach`
    /// (shown in its JSON; routing is the registry's).
    ///
    /// # Errors
    /// [`AlreadyRegistered`] if the name is taken; nothing changes then.
    pub fn register_with(
        &self,
        name: &str,
        notify_socket: &str,
        reach: Reach,
        now: Timestamp,
    ) -> Result<GuestDetail, AlreadyRegistered> {
        let mut state = self.lock();
        let State {
            guests,
            log,
            ready_timeout,
            next_generation,
            ..
        } = &mut *state;
        let btree_map::Entry::Vacant(slot) = guests.entry(name.to_owned()) else {
            return Err(AlreadyRegistered(name.to_owned()));
        };
        let generation = *next_generation;
        *next_generation += 1;
        let mut guest = Guest::new(name, now);
        guest.set_ready_timeout(
            ready_timeout.map(|timeout| u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX)),
        );
        let (snapshot, _) = watch::channel(Arc::new(guest.snapshot()));
        let entry = slot.insert(Entry {
            guest,
            notify_socket: notify_socket.into(),
            reach: Arc::new(reach),
            name: name.into(),
            generation,
            history: VecDeque::new(),
            evicted: 0,
            accepted: 0,
            snapshot,
            fresh: None,
            unpublished: false,
            socket_access: None,
        });
        log.emit(name, Change::Registered, entry.summary());
        Ok(entry.detail())
    }

    /// Sets how long each boot of a guest registered from now on may take from its first message
    /// to `READY=1` (`notifyhub serve --ready-timeout`); `None`, the default, is no limit. A boot
    /// that misses it gets `ready_timed_out` and a [`Event::ReadyTimedOut`] event, fired by
    /// [`Hub::handle_timeout`]; it stays `booting` and may still become ready.
    pub fn set_ready_timeout(&self, timeout: Option<Duration>) {
        self.lock().ready_timeout = timeout;
    }

    /// The readiness timeout given to newly registered guests ([`Hub::set_ready_timeout`]).
    pub fn ready_timeout(&self) -> Option<Duration> {
        self.lock().ready_timeout
    }

    /// Removes guest `name`: logs a [`Change::Removed`] event with its last state and ends its
    /// waits with [`WaitEnd::Removed`]. Returns its last state, or `None` if it was unknown.
    pub fn remove(&self, name: &str) -> Option<GuestSummary> {
        let mut state = self.lock();
        let entry = state.guests.remove(name)?;
        let State { guests, kept, .. } = &mut *state;
        kept.forget_all(&entry.history);
        kept.compact(guests);
        let summary = entry.summary();
        state.log.emit(name, Change::Removed, summary.clone());
        Some(summary)
    }

    /// Feeds one datagram, received at `now` from `sender` with `fds` file descriptors, to guest
    /// `name`: applies it, logs the events it caused, keeps it in the history if accepted, and
    /// wakes the guest's waiters. Returns the message's `seq`.
    ///
    /// The caller closes the datagram's fds only after this returns: that releases a
    /// `BARRIER=1` sender once everything before the barrier is in the store.
    ///
    /// # Errors
    /// [`IngestError::UnknownGuest`]; [`IngestError::Rejected`] for a datagram the core refused,
    /// which was counted in the guest's `drops`.
    pub fn ingest(
        &self,
        name: &str,
        now: Timestamp,
        sender: Sender,
        datagram: &[u8],
        fds: usize,
    ) -> Result<u64, IngestError> {
        self.ingest_with(name, now, sender, datagram, fds, Publish::Now)
    }

    /// [`Hub::ingest`], publishing the new state to the guest's waiters now or, for one of a
    /// batch of inputs, with [`Hub::publish`] after the batch. The events it causes are logged
    /// now either way, each with the state after this datagram. `datagram` is kept as is
    /// (an exact `Vec` becomes the record's bytes without a copy).
    pub(crate) fn ingest_with<B>(
        &self,
        name: &str,
        now: Timestamp,
        sender: Sender,
        datagram: B,
        fds: usize,
        publish: Publish,
    ) -> Result<u64, IngestError>
    where
        B: AsRef<[u8]> + Into<Box<[u8]>>,
    {
        let history_limit = self.inner.limits.history;
        let mut state = self.lock();
        let State {
            guests, log, kept, ..
        } = &mut *state;
        let entry = guests
            .get_mut(name)
            .ok_or_else(|| UnknownGuest(name.to_owned()))?;
        let accepted = entry
            .guest
            .handle_datagram(now, sender, datagram.as_ref())
            .map(|()| {
                entry.accepted += 1;
                if entry.history.len() == history_limit
                    && let Some(oldest) = entry.history.pop_front()
                {
                    kept.forget(&oldest);
                }
                let record = Arc::new(Record {
                    seq: entry.accepted,
                    received_at: now,
                    sender,
                    fds,
                    bytes: datagram.into(),
                });
                kept.push(&entry.name, entry.generation, &record);
                entry.history.push_back(record);
                entry.accepted
            });
        let metrics = self.live_metrics();
        if accepted.is_ok()
            && let Some(metrics) = metrics
        {
            metrics.count_message(&sender);
        }
        entry.log_events(name, log, metrics.is_some());
        if publish == Publish::Now {
            entry.publish(self.live_metrics());
        }
        if accepted.is_ok() {
            kept.evict(
                self.inner.limits.history_memory,
                guests,
                self.live_metrics(),
            );
        }
        accepted.map_err(IngestError::from)
    }

    /// Sends guest `name`'s state to its waiters and counts its new drops in the metrics: after
    /// a batch of inputs applied with [`Publish::Later`]. Nothing for an unknown guest.
    pub(crate) fn publish(&self, name: &str) {
        if let Some(entry) = self.lock().guests.get_mut(name) {
            entry.publish(self.live_metrics());
        }
    }

    /// Counts `count` datagrams of guest `name` dropped for `reason` (e.g. by its rate limit)
    /// as one input, published as `publish` says.
    ///
    /// # Errors
    /// [`UnknownGuest`].
    pub(crate) fn record_drops(
        &self,
        name: &str,
        reason: DropReason,
        count: u64,
        publish: Publish,
    ) -> Result<(), UnknownGuest> {
        self.update_with(name, publish, |guest| {
            for _ in 0..count {
                guest.record_drop(reason);
            }
        })
    }

    /// Counts a datagram for guest `name` that the transport dropped whole (e.g. longer than
    /// 4096 bytes), and wakes its waiters.
    ///
    /// # Errors
    /// [`UnknownGuest`].
    pub fn record_drop(&self, name: &str, reason: DropReason) -> Result<(), UnknownGuest> {
        self.update(name, |guest| guest.record_drop(reason))
    }

    /// Fires guest `name`'s deadlines (watchdog, readiness) that are due at `now`, logging the
    /// events that causes. Call it at [`Hub::poll_timeout`]; early calls do nothing.
    ///
    /// # Errors
    /// [`UnknownGuest`].
    pub fn handle_timeout(&self, name: &str, now: Timestamp) -> Result<(), UnknownGuest> {
        self.update(name, |guest| guest.handle_timeout(now))
    }

    /// [`Hub::handle_timeout`], published as `publish` says.
    pub(crate) fn handle_timeout_with(
        &self,
        name: &str,
        now: Timestamp,
        publish: Publish,
    ) -> Result<(), UnknownGuest> {
        self.update_with(name, publish, |guest| guest.handle_timeout(now))
    }

    /// When guest `name` next needs [`Hub::handle_timeout`]; `None` when no deadline is
    /// pending. Ask again after every input.
    ///
    /// # Errors
    /// [`UnknownGuest`].
    pub fn poll_timeout(&self, name: &str) -> Result<Option<Timestamp>, UnknownGuest> {
        let state = self.lock();
        let entry = state
            .guests
            .get(name)
            .ok_or_else(|| UnknownGuest(name.to_owned()))?;
        Ok(entry.guest.poll_timeout())
    }

    /// Applies `input` to guest `name`'s state machine, then logs and publishes the result.
    fn update(&self, name: &str, input: impl FnOnce(&mut Guest)) -> Result<(), UnknownGuest> {
        self.update_with(name, Publish::Now, input)
    }

    /// [`Hub::update`], published as `publish` says.
    fn update_with(
        &self,
        name: &str,
        publish: Publish,
        input: impl FnOnce(&mut Guest),
    ) -> Result<(), UnknownGuest> {
        let mut state = self.lock();
        let State { guests, log, .. } = &mut *state;
        let entry = guests
            .get_mut(name)
            .ok_or_else(|| UnknownGuest(name.to_owned()))?;
        input(&mut entry.guest);
        entry.log_events(name, log, self.live_metrics().is_some());
        if publish == Publish::Now {
            entry.publish(self.live_metrics());
        }
        Ok(())
    }

    /// Guest `name` now, with its timeline.
    pub fn guest(&self, name: &str) -> Option<GuestDetail> {
        self.lock().guests.get(name).map(Entry::detail)
    }

    /// Every guest now, sorted by name, with the id of the last event included.
    pub fn guests(&self) -> Overview {
        let state = self.lock();
        Overview {
            last_event_id: state.log.last_id,
            guests: state.guests.values().map(Entry::detail).collect(),
        }
    }

    /// How many guests are in each phase now, in [`Phase::ALL`] order.
    pub fn phase_counts(&self) -> [(Phase, usize); Phase::ALL.len()] {
        let state = self.lock();
        Phase::ALL.map(|phase| {
            let count = state
                .guests
                .values()
                .filter(|entry| entry.guest.phase() == phase);
            (phase, count.count())
        })
    }

    /// The newest hub event id (0 before the first event).
    pub fn last_event_id(&self) -> u64 {
        self.lock().log.last_id
    }

    /// Guest `name`'s kept messages.
    pub fn history(&self, name: &str) -> Option<History> {
        let state = self.lock();
        let entry = state.guests.get(name)?;
        Some(History {
            records: entry.history.iter().cloned().collect(),
            forgotten: entry.accepted - entry.history.len() as u64,
            evicted: entry.evicted,
        })
    }

    /// The bytes of kept messages hub-wide now: the sum of their [`Record::cost`], at most
    /// [`Limits::history_memory`].
    pub fn history_memory(&self) -> usize {
        self.lock().kept.bytes
    }

    /// A receiver of guest `name`'s snapshots: it sees a change after every datagram and drop,
    /// and its `changed()` fails once the guest is removed.
    pub fn watch(&self, name: &str) -> Option<watch::Receiver<Arc<Snapshot>>> {
        self.lock()
            .guests
            .get(name)
            .map(|entry| entry.snapshot.subscribe())
    }

    /// How many receivers of guest `name`'s snapshots exist now: the long-polls waiting on it
    /// (see [`Hub::watch`]). 0 for an unknown guest.
    pub fn waiters(&self, name: &str) -> usize {
        self.lock()
            .guests
            .get(name)
            .map_or(0, |entry| entry.snapshot.receiver_count())
    }

    /// Waits until guest `name` meets `condition`, judged with [`Wait`] on its snapshot now and
    /// after every change, for at most `timeout` (zero: judge once), or until `cancel` fires.
    ///
    /// Snapshots are judged as they are when the waiter runs: a state that passes between two
    /// looks is not seen.
    ///
    /// # Errors
    /// [`UnknownGuest`] at once.
    pub async fn wait(
        &self,
        name: &str,
        condition: WaitCondition,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<WaitEnd, UnknownGuest> {
        let mut snapshots = self
            .watch(name)
            .ok_or_else(|| UnknownGuest(name.to_owned()))?;
        let wait = Wait::new(condition, &snapshots.borrow_and_update());
        let _waiting = self.inner.metrics.wait_request();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            match wait.check(&snapshots.borrow_and_update()) {
                WaitOutcome::Met => return Ok(WaitEnd::Met),
                WaitOutcome::Unreachable => return Ok(WaitEnd::Unreachable),
                WaitOutcome::Pending => {}
            }
            // Biased, with the timeout before changes: a guest that never stops sending cannot
            // keep a waiter past its timeout.
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(WaitEnd::Cancelled),
                () = &mut deadline => return Ok(WaitEnd::TimedOut),
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return Ok(WaitEnd::Removed);
                    }
                }
            }
        }
    }

    /// Subscribes to the event log, following guest `guest` only or every guest.
    ///
    /// Without `last_event_id` the feed starts with the next event. With it, the feed first
    /// replays the held events after that id; if some of those are no longer held, or the id is
    /// newer than any event (it came from an earlier run of the hub), the feed starts with a
    /// [`Resync`] instead.
    pub fn subscribe(&self, guest: Option<&str>, last_event_id: Option<u64>) -> Feed {
        let state = self.lock();
        // Subscribed under the lock, which every emit holds: no event is missed or doubled
        // between the backlog and the live channel.
        let live = state.log.live.subscribe();
        let mut backlog = VecDeque::new();
        let mut after = state.log.last_id;
        if let Some(last_seen) = last_event_id {
            let oldest_held = state
                .log
                .ring
                .front()
                .map_or(after + 1, |held| held.event.id);
            if last_seen > after || last_seen + 1 < oldest_held {
                let resync = state.resync(guest);
                after = resync.id;
                backlog.push_back(FeedItem::Resync(resync));
            } else {
                backlog.extend(
                    state
                        .log
                        .ring
                        .iter()
                        .map(|held| &held.event)
                        .filter(|event| event.id > last_seen)
                        .filter(|event| guest.is_none_or(|name| name == event.guest))
                        .cloned()
                        .map(FeedItem::Event),
                );
            }
        }
        Feed {
            hub: self.clone(),
            guest: guest.map(str::to_owned),
            backlog,
            live,
            after,
        }
    }
}

impl State {
    fn resync(&self, guest: Option<&str>) -> Resync {
        Resync {
            id: self.log.last_id,
            guests: self
                .guests
                .iter()
                .filter(|(name, _)| guest.is_none_or(|wanted| wanted == name.as_str()))
                .map(|(_, entry)| entry.summary())
                .collect(),
        }
    }
}

impl Entry {
    /// The guest now: its published snapshot, or its state after the last input when that is
    /// not published yet (an SSE client may have its events already, and must not then read an
    /// older state from `GET`).
    fn summary(&self) -> GuestSummary {
        let snapshot = if self.unpublished {
            self.fresh
                .clone()
                .unwrap_or_else(|| Arc::new(self.guest.snapshot()))
        } else {
            self.snapshot.borrow().clone()
        };
        GuestSummary {
            snapshot,
            notify_socket: self.notify_socket.clone(),
            reach: self.reach.clone(),
        }
    }

    fn detail(&self) -> GuestDetail {
        GuestDetail {
            summary: self.summary(),
            timeline: self.guest.timeline().cloned().collect(),
        }
    }

    /// After an input: drains the guest's events into `log`, each with the new state (made
    /// only when there are events, and kept for [`Entry::publish`]). Phase changes are also
    /// logged to the tracing log when `live` (not during a journal replay).
    fn log_events(&mut self, name: &str, log: &mut EventLog, live: bool) {
        self.fresh = None;
        self.unpublished = true;
        let Some(first) = self.guest.poll_event() else {
            return;
        };
        let snapshot = Arc::new(self.guest.snapshot());
        self.fresh = Some(snapshot.clone());
        let summary = GuestSummary {
            snapshot,
            notify_socket: self.notify_socket.clone(),
            reach: self.reach.clone(),
        };
        let mut next = Some(first);
        while let Some(event) = next {
            if live && let Event::PhaseChanged { from, to } = &event {
                info!(guest = name, %from, %to, "phase changed");
            }
            log.emit(name, Change::Guest(event), summary.clone());
            next = self.guest.poll_event();
        }
    }

    /// Wakes the guest's waiters with its state now, and counts its drops since the last
    /// publish in `metrics` (none during a journal replay).
    fn publish(&mut self, metrics: Option<&Metrics>) {
        self.unpublished = false;
        let snapshot = self
            .fresh
            .take()
            .unwrap_or_else(|| Arc::new(self.guest.snapshot()));
        let drops = snapshot.drops;
        let before = self.snapshot.send_replace(snapshot);
        if let Some(metrics) = metrics {
            metrics.count_drops(&before.drops, &drops);
            self.log_drops(&before.drops, &drops);
        }
    }

    /// Logs the drops gained from `before` to `after` at warn, throttled per guest and reason
    /// ([`crate::drop_log`]: the first of a burst at once, the rest summed up when its window
    /// ends). Rate-limited drops are left to the rate limiter, which logs them as it counts.
    fn log_drops(&self, before: &Drops, after: &Drops) {
        let now = Instant::now();
        for (reason, count) in drops_gained(before, after) {
            if reason == "rate_limited" {
                continue;
            }
            if let Some(dropped) = drop_log().note(&self.name, &reason, count, now) {
                warn!(
                    guest = &*self.name,
                    reason, dropped, "messages dropped (counted in the guest's drops)"
                );
            }
        }
    }
}

/// An open SSE stream's place under `--max-sse-clients` ([`Hub::sse_slot`]), given back when
/// dropped.
#[derive(Debug)]
#[must_use = "the slot is given back when this is dropped"]
pub struct SseSlot {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Stale [`Kept::order`] entries tolerated beyond one per kept message before a compaction.
const COMPACT_SLACK: usize = 1024;

impl Kept {
    /// Counts `record`, just added to the back of the history of guest `name` of `generation`.
    fn push(&mut self, name: &Arc<str>, generation: u64, record: &Record) {
        self.bytes += record.cost();
        self.records += 1;
        self.order.push_back(KeptRef {
            name: name.clone(),
            generation,
            seq: record.seq,
        });
    }

    /// Uncounts `record`, taken out of its guest's history (its [`KeptRef`] goes stale).
    fn forget(&mut self, record: &Record) {
        self.bytes -= record.cost();
        self.records -= 1;
    }

    /// Uncounts every record of a history that goes away whole.
    fn forget_all(&mut self, history: &VecDeque<Arc<Record>>) {
        for record in history {
            self.forget(record);
        }
    }

    /// Forgets the oldest kept messages of any guest until at most `budget` bytes are kept,
    /// counting each in its guest's [`Entry::evicted`] and in `metrics` (none during a journal
    /// replay). A guest's state is untouched: only its history shrinks.
    fn evict(
        &mut self,
        budget: usize,
        guests: &mut BTreeMap<String, Entry>,
        metrics: Option<&Metrics>,
    ) {
        let mut evicted = 0;
        while self.bytes > budget {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            let Some(entry) = guests.get_mut(&*oldest.name) else {
                continue;
            };
            // Its history's oldest, or gone already: older ones leave a history first.
            let current = entry.generation == oldest.generation
                && entry
                    .history
                    .front()
                    .is_some_and(|front| front.seq == oldest.seq);
            if current && let Some(record) = entry.history.pop_front() {
                self.forget(&record);
                entry.evicted += 1;
                evicted += 1;
            }
        }
        if evicted > 0
            && let Some(metrics) = metrics
        {
            metrics.count_history_evictions(evicted);
        }
        self.compact(guests);
    }

    /// Drops the stale entries of the order once they outnumber the kept messages (plus
    /// [`COMPACT_SLACK`]): each compaction is paid for by the pushes since the last one.
    fn compact(&mut self, guests: &BTreeMap<String, Entry>) {
        if self.order.len() <= 2 * self.records + COMPACT_SLACK {
            return;
        }
        self.order.retain(|kept| {
            guests.get(&*kept.name).is_some_and(|entry| {
                entry.generation == kept.generation
                    && entry
                        .history
                        .front()
                        .is_some_and(|front| front.seq <= kept.seq)
            })
        });
        debug_assert_eq!(self.order.len(), self.records, "one entry per kept message");
    }
}

impl EventLog {
    fn emit(&mut self, guest: &str, event: Change, snapshot: GuestSummary) {
        self.last_id += 1;
        let event = Arc::new(HubEvent {
            id: self.last_id,
            guest: guest.to_owned(),
            event,
            snapshot,
            json: OnceLock::new(),
            json_bytes: self.json_bytes.clone(),
            json_counted: AtomicUsize::new(JSON_UNCOUNTED),
        });
        let mut cost = event.cost() + snapshot_cost(&event.snapshot.snapshot);
        // The events of one input share its state: it is counted with the last of them,
        // which the ring lets go of last.
        if let Some(previous) = self.ring.back_mut()
            && Arc::ptr_eq(&previous.event.snapshot.snapshot, &event.snapshot.snapshot)
        {
            let shared = snapshot_cost(&event.snapshot.snapshot);
            previous.cost -= shared;
            self.bytes -= shared;
        }
        cost += size_of::<HeldEvent>();
        self.bytes += cost;
        let weak = Arc::downgrade(&event);
        self.ring.push_back(HeldEvent { event, cost });
        while self.ring.len() > self.capacity
            || (self.ring.len() > 1 && self.held_bytes() > self.budget)
        {
            let Some(oldest) = self.ring.pop_front() else {
                break;
            };
            self.bytes -= oldest.cost;
            oldest.event.release();
        }
        // An error only means nobody listens right now.
        let _ = self.live.send((self.last_id, weak));
    }

    /// What the kept events hold, in bytes: themselves, their states and their JSON.
    fn held_bytes(&self) -> usize {
        self.bytes + self.json_bytes.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{FutureExt, poll};
    use notifyhub_core::Phase;

    use super::*;

    fn at(seconds: u64) -> Timestamp {
        Timestamp::from_micros(seconds * 1_000_000)
    }

    fn hub_with(names: &[&str], limits: Limits) -> Hub {
        let hub = Hub::with_limits(limits);
        for name in names {
            let path = format!("/run/notifyhub/guests/{name}/notify");
            hub.register(name, &path, at(0)).unwrap();
        }
        hub
    }

    fn send(hub: &Hub, name: &str, datagram: &[u8]) -> Result<u64, IngestError> {
        hub.ingest(name, at(1), Sender::Unknown, datagram, 0)
    }

    /// The backlog, then whatever is live right now.
    fn drain(feed: &mut Feed) -> Vec<FeedItem> {
        std::iter::from_fn(|| feed.next().now_or_never()).collect()
    }

    fn ids(items: &[FeedItem]) -> Vec<u64> {
        items
            .iter()
            .map(|item| match item {
                FeedItem::Event(event) => event.id,
                FeedItem::Resync(resync) => panic!("unexpected resync at {}", resync.id),
            })
            .collect()
    }

    #[test]
    fn ingest_folds_messages_and_logs_events() {
        let hub = hub_with(&["web1"], Limits::default());
        let mut feed = hub.subscribe(None, None);
        send(&hub, "web1", b"X_SYSTEMD_HOSTNAME=probe-guest").unwrap();
        send(&hub, "web1", b"X_SYSTEMD_UNIT_ACTIVE=ssh-access.target").unwrap();
        assert_eq!(send(&hub, "web1", b"READY=1\nSTATUS=Ready."), Ok(3));

        let detail = hub.guest("web1").unwrap();
        let snapshot = detail.snapshot();
        assert_eq!(snapshot.phase, Phase::Ready);
        assert_eq!(snapshot.hostname.as_deref(), Some("probe-guest"));
        assert_eq!(snapshot.status.as_deref(), Some("Ready."));
        assert!(snapshot.is_active("ssh-access.target"));
        assert!(!detail.timeline.is_empty());

        let items = drain(&mut feed);
        let ids = ids(&items);
        assert_eq!(
            ids,
            (2..2 + ids.len() as u64).collect::<Vec<_>>(),
            "event 1 is the registration"
        );
        let FeedItem::Event(last) = items.last().unwrap() else {
            unreachable!()
        };
        assert_eq!(last.snapshot.snapshot.phase, Phase::Ready);
    }

    /// In a batch (the journal's writer applies with `Publish::Later`), an input's events go
    /// out before the guest's state is published: `GET` must already show that state, or a
    /// client that saw the event reads an older one; a later input without events counts too.
    #[test]
    fn what_an_event_showed_is_what_get_shows_before_the_batch_is_published() {
        let hub = hub_with(&["web1"], Limits::default());
        let mut feed = hub.subscribe(None, None);
        let mut waiter = hub.watch("web1").unwrap();
        drain(&mut feed);
        waiter.borrow_and_update();
        let later = |datagram: &[u8]| {
            hub.ingest_with("web1", at(1), Sender::Unknown, datagram, 0, Publish::Later)
                .unwrap()
        };
        later(b"READY=1\nSTATUS=up");
        let items = drain(&mut feed);
        let Some(FeedItem::Event(event)) = items.last() else {
            panic!("no event: {items:?}")
        };
        assert_eq!(event.snapshot.snapshot.status.as_deref(), Some("up"));
        let shown = hub.guest("web1").unwrap().summary.snapshot;
        assert_eq!(shown.status.as_deref(), Some("up"));
        assert_eq!(shown.phase, Phase::Ready);
        assert_eq!(hub.guests().guests[0].summary.snapshot.messages, 1);
        // An input without events still changes the state (its message count).
        later(b"X_CUSTOM=1");
        assert_eq!(hub.guest("web1").unwrap().summary.snapshot.messages, 2);
        // Waiters hear of it only once the batch is published.
        assert!(!waiter.has_changed().unwrap());
        hub.publish("web1");
        assert!(waiter.has_changed().unwrap());
        assert_eq!(waiter.borrow_and_update().messages, 2);
        assert_eq!(hub.guest("web1").unwrap().summary.snapshot.messages, 2);
    }

    #[test]
    fn rejected_datagram_is_counted_not_kept() {
        let hub = hub_with(&["web1"], Limits::default());
        send(&hub, "web1", b"READY=1").unwrap();
        assert!(matches!(
            send(&hub, "web1", b"STATUS=a\0b"),
            Err(IngestError::Rejected(ParseError::EmbeddedNul { offset: 8 }))
        ));
        hub.record_drop("web1", DropReason::Oversize).unwrap();
        let snapshot = hub.guest("web1").unwrap().summary.snapshot;
        assert_eq!(snapshot.drops.embedded_nul, 1);
        assert_eq!(snapshot.drops.oversize, 1);
        let history = hub.history("web1").unwrap();
        assert_eq!(history.records.len(), 1);
        assert_eq!(&*history.records[0].bytes, b"READY=1");
        assert_eq!(
            send(&hub, "nobody", b"READY=1"),
            Err(IngestError::UnknownGuest(UnknownGuest("nobody".into())))
        );
    }

    #[test]
    fn history_keeps_the_newest_and_counts_the_rest() {
        let limits = Limits {
            history: 3,
            ..Limits::default()
        };
        let hub = hub_with(&["web1"], limits);
        for i in 0..5 {
            send(&hub, "web1", format!("X_N={i}").as_bytes()).unwrap();
        }
        let history = hub.history("web1").unwrap();
        assert_eq!(history.forgotten, 2);
        let seqs: Vec<u64> = history.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(&*history.records[2].bytes, b"X_N=4");
    }

    fn hub_with_budget(names: &[&str], records: usize) -> Hub {
        let limits = Limits {
            history_memory: records * (RECORD_OVERHEAD + b"X_N=0".len()),
            ..Limits::default()
        };
        hub_with(names, limits)
    }

    fn kept_seqs(hub: &Hub, name: &str) -> Vec<u64> {
        let history = hub.history(name).unwrap();
        history.records.iter().map(|record| record.seq).collect()
    }

    /// The sum of the kept records' costs, counted from the histories themselves.
    fn kept_cost(hub: &Hub, names: &[&str]) -> usize {
        let histories = names.iter().map(|name| hub.history(name).unwrap());
        histories
            .flat_map(|history| history.records)
            .map(|record| record.cost())
            .sum()
    }

    #[test]
    fn history_memory_forgets_the_oldest_of_any_guest_first() {
        let hub = hub_with_budget(&["a", "b"], 5);
        let budget = hub.limits().history_memory;
        for i in 1..=3 {
            send(&hub, "a", format!("X_N={i}").as_bytes()).unwrap();
            send(&hub, "b", format!("X_N={i}").as_bytes()).unwrap();
        }
        // Six equal messages, room for five: a's first went.
        assert_eq!(kept_seqs(&hub, "a"), [2, 3]);
        assert_eq!(kept_seqs(&hub, "b"), [1, 2, 3]);
        assert_eq!(hub.history_memory(), budget);
        assert_eq!(kept_cost(&hub, &["a", "b"]), budget);

        // A longer one costs two of the others: the next oldest, b's 1 then a's 2, make room.
        let long = format!("STATUS={}", "x".repeat(RECORD_OVERHEAD + 3));
        assert_eq!(RECORD_OVERHEAD + long.len(), 2 * (RECORD_OVERHEAD + 5));
        send(&hub, "b", long.as_bytes()).unwrap();
        assert_eq!(kept_seqs(&hub, "a"), [3]);
        assert_eq!(kept_seqs(&hub, "b"), [2, 3, 4]);
        assert_eq!(hub.history_memory(), budget);
        assert_eq!(kept_cost(&hub, &["a", "b"]), budget);

        // Forgotten counts every message not kept; evicted those the budget took.
        let (a, b) = (hub.history("a").unwrap(), hub.history("b").unwrap());
        assert_eq!((a.forgotten, a.evicted), (2, 2));
        assert_eq!((b.forgotten, b.evicted), (1, 1));
        // The state is the fold of every message, kept or not.
        let b_state = hub.guest("b").unwrap();
        assert_eq!(b_state.snapshot().messages, 4);
        assert_eq!(
            b_state.snapshot().status.as_deref(),
            Some(&long["STATUS=".len()..])
        );
        assert_eq!(hub.guest("a").unwrap().snapshot().messages, 3);
        assert_eq!(hub.metrics().history_evictions(), 3);
    }

    #[test]
    fn a_message_over_the_whole_budget_is_not_kept() {
        let hub = hub_with_budget(&["a"], 1);
        send(&hub, "a", b"X_N=1").unwrap();
        assert_eq!(kept_seqs(&hub, "a"), [1]);
        send(&hub, "a", b"X_N=10").unwrap();
        assert_eq!(kept_seqs(&hub, "a"), [] as [u64; 0]);
        assert_eq!(hub.history_memory(), 0);
        let history = hub.history("a").unwrap();
        assert_eq!((history.forgotten, history.evicted), (2, 2));
        assert_eq!(hub.guest("a").unwrap().snapshot().messages, 2);
    }

    #[test]
    fn the_per_guest_limit_frees_its_share_of_the_budget() {
        let limits = Limits {
            history: 2,
            history_memory: 3 * (RECORD_OVERHEAD + 5),
            ..Limits::default()
        };
        let hub = hub_with(&["a", "b"], limits);
        // Far more messages than the order's compaction slack: stale entries do not pile up.
        for i in 0..5000 {
            send(&hub, "a", format!("X_N={}", i % 10).as_bytes()).unwrap();
        }
        send(&hub, "b", b"X_N=1").unwrap();
        assert_eq!(kept_seqs(&hub, "a"), [4999, 5000]);
        assert_eq!(kept_seqs(&hub, "b"), [1]);
        let history = hub.history("a").unwrap();
        assert_eq!((history.forgotten, history.evicted), (4998, 0));
        assert_eq!(hub.history_memory(), kept_cost(&hub, &["a", "b"]));
        let state = hub.lock();
        assert_eq!(state.kept.records, 3);
        assert!(state.kept.order.len() <= 2 * 3 + COMPACT_SLACK);
    }

    #[test]
    fn removal_frees_the_budget_and_a_new_guest_of_the_name_starts_afresh() {
        let hub = hub_with_budget(&["a", "b"], 3);
        for i in 1..=3 {
            send(&hub, "a", format!("X_N={i}").as_bytes()).unwrap();
        }
        hub.remove("a").unwrap();
        assert_eq!(hub.history_memory(), 0);

        // The removed guest's entries in the order name seqs 1 to 3 of "a": the new "a"'s
        // message 1 is not one of them.
        hub.register("a", "/run/a", at(2)).unwrap();
        send(&hub, "b", b"X_N=1").unwrap();
        send(&hub, "a", b"X_N=1").unwrap();
        send(&hub, "b", b"X_N=2").unwrap();
        send(&hub, "b", b"X_N=3").unwrap();
        assert_eq!(kept_seqs(&hub, "a"), [1]);
        assert_eq!(kept_seqs(&hub, "b"), [2, 3]);
        assert_eq!(hub.history("a").unwrap().evicted, 0);
        assert_eq!(hub.history_memory(), kept_cost(&hub, &["a", "b"]));
    }

    #[test]
    fn restored_messages_count_against_the_budget() {
        let hub = hub_with_budget(&["a"], 3);
        send(&hub, "a", b"X_N=1").unwrap();
        let records = (1..=3)
            .map(|seq| Record {
                seq,
                received_at: at(1),
                sender: Sender::Unknown,
                fds: 0,
                bytes: Box::from(&b"X_N=0"[..]),
            })
            .collect();
        hub.restore(
            "r",
            Guest::new("r", at(0)),
            "/run/r",
            Reach::Unix,
            3,
            records,
        );
        // Restored as if accepted now: a's older message went.
        assert_eq!(kept_seqs(&hub, "a"), [] as [u64; 0]);
        assert_eq!(kept_seqs(&hub, "r"), [1, 2, 3]);
        assert_eq!(hub.history_memory(), hub.limits().history_memory);
    }

    #[test]
    fn register_twice_is_refused_and_remove_is_logged() {
        let hub = hub_with(&["web1"], Limits::default());
        assert_eq!(
            hub.register("web1", "/elsewhere", at(5)).unwrap_err(),
            AlreadyRegistered("web1".into())
        );
        let mut feed = hub.subscribe(None, None);
        assert!(hub.remove("web1").is_some());
        assert!(hub.remove("web1").is_none());
        let items = drain(&mut feed);
        let [FeedItem::Event(event)] = items.as_slice() else {
            panic!("{items:?}")
        };
        assert_eq!((event.id, &event.event), (2, &Change::Removed));
        assert!(hub.guest("web1").is_none());
    }

    #[test]
    fn resume_replays_exactly_the_missed_events_of_the_followed_guest() {
        let hub = hub_with(&["a", "b"], Limits::default()); // events 1 and 2
        send(&hub, "a", b"X_SYSTEMD_HOSTNAME=one").unwrap();
        send(&hub, "b", b"X_SYSTEMD_HOSTNAME=two").unwrap();
        send(&hub, "a", b"STATUS=hi").unwrap();
        let all = drain(&mut hub.subscribe(None, Some(0)));
        let all_ids = ids(&all);
        assert_eq!(all_ids, (1..=hub.last_event_id()).collect::<Vec<_>>());
        let of_a: Vec<u64> = all
            .iter()
            .filter_map(|item| match item {
                FeedItem::Event(event) if event.guest == "a" && event.id > 2 => Some(event.id),
                _ => None,
            })
            .collect();

        assert_eq!(ids(&drain(&mut hub.subscribe(None, Some(4)))), all_ids[4..]);
        assert_eq!(ids(&drain(&mut hub.subscribe(Some("a"), Some(2)))), of_a);
        let last = hub.last_event_id();
        assert_eq!(
            ids(&drain(&mut hub.subscribe(None, Some(last)))),
            [] as [u64; 0]
        );

        // Live events follow the replay without a gap or a duplicate.
        let mut feed = hub.subscribe(Some("a"), Some(last - 1));
        send(&hub, "a", b"STATUS=again").unwrap();
        assert_eq!(ids(&drain(&mut feed)), [last, last + 1]);
    }

    #[test]
    fn resume_from_a_forgotten_or_future_id_resyncs() {
        let limits = Limits {
            event_log: 2,
            ..Limits::default()
        };
        let hub = hub_with(&["a", "b"], limits);
        send(&hub, "a", b"STATUS=x").unwrap();
        let last = hub.last_event_id();
        assert!(last > 4, "registrations, boot, phase, status");
        // The log holds the last two events: resuming after `last - 2` needs nothing else.
        assert_eq!(
            ids(&drain(&mut hub.subscribe(None, Some(last - 2)))),
            [last - 1, last]
        );
        for last_seen in [0, last - 3, last + 1] {
            let items = drain(&mut hub.subscribe(None, Some(last_seen)));
            let [FeedItem::Resync(resync)] = items.as_slice() else {
                panic!("{items:?}")
            };
            assert_eq!(resync.id, last);
            assert_eq!(resync.guests.len(), 2);
        }
        let items = drain(&mut hub.subscribe(Some("b"), Some(0)));
        let [FeedItem::Resync(resync)] = items.as_slice() else {
            panic!("{items:?}")
        };
        assert_eq!(resync.guests.len(), 1);
        assert_eq!(resync.guests[0].snapshot.name, "b");
    }

    #[test]
    fn deadlines_fire_through_handle_timeout() {
        let hub = hub_with(&["a"], Limits::default());
        assert_eq!(hub.poll_timeout("a"), Ok(None));
        send(&hub, "a", b"WATCHDOG_USEC=2000000\nWATCHDOG=1").unwrap(); // at 1 s
        assert_eq!(hub.poll_timeout("a"), Ok(Some(at(3))));
        let mut feed = hub.subscribe(None, None);
        hub.handle_timeout("a", at(2)).unwrap();
        assert!(drain(&mut feed).is_empty(), "not due yet");
        hub.handle_timeout("a", at(3)).unwrap();
        let items = drain(&mut feed);
        let [FeedItem::Event(event)] = items.as_slice() else {
            panic!("{items:?}")
        };
        assert_eq!(
            event.event,
            Change::Guest(Event::WatchdogMissed { deadline: at(3) })
        );
        assert!(event.snapshot.snapshot.watchdog_expired);
        assert_eq!(hub.poll_timeout("a"), Ok(None));
    }

    #[test]
    fn a_lagging_subscriber_gets_a_resync_then_only_newer_events() {
        let limits = Limits {
            live: 2,
            ..Limits::default()
        };
        let hub = hub_with(&["a"], limits);
        let mut feed = hub.subscribe(None, None);
        for i in 0..5 {
            send(&hub, "a", format!("STATUS={i}").as_bytes()).unwrap();
        }
        let items = drain(&mut feed);
        let [FeedItem::Resync(resync)] = items.as_slice() else {
            panic!("{items:?}")
        };
        assert_eq!(resync.id, hub.guests().last_event_id);
        assert_eq!(resync.guests[0].snapshot.status.as_deref(), Some("4"));
        send(&hub, "a", b"STATUS=5").unwrap();
        assert_eq!(ids(&drain(&mut feed)), [resync.id + 1]);
    }

    /// A 4 KB `STATUS=` that changes with every message: each event holds it twice (the
    /// event's text and the state it carries), its JSON twice more.
    fn big_status(i: usize) -> Vec<u8> {
        format!("STATUS={i:05}{}", "x".repeat(4000)).into_bytes()
    }

    /// What the log's accounting says its events hold, checked against the events themselves:
    /// every status text in them, and the JSON made of them, exactly.
    fn held_bytes(hub: &Hub) -> usize {
        let state = hub.lock();
        let log = &state.log;
        let texts: usize = log
            .ring
            .iter()
            .map(|held| {
                let event_text = match &held.event.event {
                    Change::Guest(event) => event_text_len(event),
                    _ => 0,
                };
                let state_text = held.event.snapshot.snapshot.status.as_ref();
                let state_text = state_text.map_or(0, String::len);
                event_text + state_text
            })
            .sum();
        assert!(log.bytes >= texts, "{} < {texts}", log.bytes);
        let json: usize = log
            .ring
            .iter()
            .filter_map(|held| held.event.json.get())
            .map(|json| ARC_HEADER + json.len())
            .sum();
        assert_eq!(log.json_bytes.load(Ordering::SeqCst), json);
        log.held_bytes()
    }

    #[test]
    fn the_event_log_is_bounded_by_the_bytes_its_events_hold() {
        let budget = 256 << 10;
        let limits = Limits {
            event_log_memory: budget,
            ..Limits::default()
        };
        let hub = hub_with(&["a"], limits);
        for i in 0..200 {
            send(&hub, "a", &big_status(i)).unwrap();
        }
        let last = hub.last_event_id();
        assert!(last > 200);
        let held = held_bytes(&hub);
        // Within the budget, and not far under it: an event holds about 8.5 KB.
        assert!(held <= budget && held > budget - 9_000, "{held}");
        let kept = hub.lock().log.ring.len();
        assert!((28..=31).contains(&kept), "{kept} events kept");
        let oldest = last + 1 - kept as u64;

        // Resuming after the oldest kept event's predecessor replays them all; before it, a
        // resync.
        let replay = drain(&mut hub.subscribe(None, Some(oldest - 1)));
        assert_eq!(ids(&replay), (oldest..=last).collect::<Vec<_>>());
        let items = drain(&mut hub.subscribe(None, Some(oldest - 2)));
        let [FeedItem::Resync(resync)] = items.as_slice() else {
            panic!("{items:?}")
        };
        assert_eq!(resync.id, last);

        // The JSON made for subscribers counts too: the next event makes room for it.
        let json: usize = replay
            .iter()
            .map(|item| match item {
                FeedItem::Event(event) => event.json().len(),
                FeedItem::Resync(_) => unreachable!(),
            })
            .sum();
        assert!(json > kept * 8_000, "{json}");
        assert!(held_bytes(&hub) > held + json);
        drop(replay);
        send(&hub, "a", &big_status(200)).unwrap();
        assert!(held_bytes(&hub) <= budget);
        let kept_now = hub.lock().log.ring.len();
        assert!(kept_now < kept * 2 / 3, "{kept_now} of {kept}");
    }

    #[test]
    fn a_stalled_subscriber_holds_no_event_the_log_let_go_of() {
        let limits = Limits {
            event_log_memory: 64 << 10,
            ..Limits::default()
        };
        let hub = hub_with(&["a"], limits);
        let mut feed = hub.subscribe(None, None);
        // Far fewer than `Limits::live`, far more than the log keeps.
        for i in 0..100 {
            send(&hub, "a", &big_status(i)).unwrap();
        }
        assert!(hub.lock().log.ring.len() < 10);
        // The subscriber's first event is gone: freed, not kept for it. It starts over.
        let items = drain(&mut feed);
        let [FeedItem::Resync(resync)] = items.as_slice() else {
            panic!("{} items, the first {:?}", items.len(), items.first())
        };
        assert_eq!(resync.id, hub.last_event_id());
        assert_eq!(
            resync.guests[0].snapshot.status.as_deref().map(|s| &s[..5]),
            Some("00099")
        );
        send(&hub, "a", b"STATUS=next").unwrap();
        assert_eq!(ids(&drain(&mut feed)), [resync.id + 1]);
    }

    #[tokio::test]
    async fn wait_ends_on_met_unreachable_timeout_removal_and_cancel() {
        let hub = hub_with(&["a"], Limits::default());
        let never = CancellationToken::new();
        let long = Duration::from_secs(60);
        let wait = |condition: &str, timeout| {
            let condition = condition.parse().unwrap();
            Box::pin(hub.wait("a", condition, timeout, &never))
        };

        assert_eq!(wait("ready", Duration::ZERO).await, Ok(WaitEnd::TimedOut));

        let mut ready = wait("ready", long);
        let mut ssh = wait("unit:ssh-access.target", long);
        assert!(poll!(&mut ready).is_pending());
        assert!(poll!(&mut ssh).is_pending());
        send(&hub, "a", b"READY=1").unwrap();
        assert_eq!(ready.await, Ok(WaitEnd::Met));
        assert!(poll!(&mut ssh).is_pending());
        send(&hub, "a", b"X_SYSTEMD_UNIT_ACTIVE=emergency.target").unwrap();
        assert_eq!(ssh.await, Ok(WaitEnd::Unreachable));

        let mut off = wait("off", long);
        assert!(poll!(&mut off).is_pending());
        hub.remove("a");
        assert_eq!(off.await, Ok(WaitEnd::Removed));
        assert_eq!(wait("off", long).await, Err(UnknownGuest("a".into())));

        let hub = hub_with(&["b"], Limits::default());
        let cancel = CancellationToken::new();
        let mut off = Box::pin(hub.wait("b", WaitCondition::Off, long, &cancel));
        assert!(poll!(&mut off).is_pending());
        cancel.cancel();
        assert_eq!(off.await, Ok(WaitEnd::Cancelled));
    }
}
