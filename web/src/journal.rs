//! The journal: the store's inputs, kept in an embedded SQLite database so that the hub comes
//! back after a restart or a crash exactly as it was.
//!
//! The store's state is a pure fold of its inputs: registrations, datagrams (with receive time,
//! sender, fd count and the exact bytes), transport drops, fired deadlines and removals. With a
//! journal, every input goes to its writer thread ([`Hub::accept_datagram`] and its siblings),
//! which appends a batch of them (everything queued, about [`MAX_BATCH`]) in one transaction,
//! commits, and only then applies them to the [`Hub`] in order, publishes each guest's new state
//! once per batch, and closes the inputs' fds. So whatever a subscriber saw (an SSE event, a
//! long-poll answer), and every `BARRIER=1` whose fds were closed, is in the database first.
//! A guest's receive loop hands over what it drained from its socket as one submission
//! ([`Hub::accept_batch`]) and does not wait for the commit: the queue's room ([`QUEUE`]
//! inputs) is the only wait, so one socket is not one transaction per datagram. Drops in a row
//! (a flood over the rate limit) are one input with a count, and a row. On start, [`Journal::open`] replays the inputs through the same [`Hub`]
//! methods, which rebuilds every guest's snapshot, timeline, message history and the hub event
//! ids (and the `Last-Event-ID` ring) as they were.
//!
//! Tables (schema version [`SCHEMA_VERSION`]):
//! - `inputs(seq, guest, kind, at, data, fds, bytes)`: one row per input, `seq` the global order;
//!   `kind` is `register`, `datagram`, `drop`, `timeout` or `remove`; `at` µs since the epoch.
//! - `applied(seq, events_before, events_after, accepted)`: written after the input was applied:
//!   the hub event ids around it, and for an accepted datagram its number in the guest's history.
//!   Replay takes the ids from here, so that rows deleted by retention or by a guest's removal
//!   leave the other events' ids as they were.
//! - `checkpoints(guest, seq, state)`: a guest's whole state after input `seq` (JSON: core's
//!   [`Guest`], its registration, its accepted count and the hub's last event id); replay starts
//!   that guest from it and skips its older inputs. Retention writes one before it deletes a
//!   guest's older rows, so pruning never changes a guest's current state.
//!
//! SQLite runs in WAL mode with `synchronous=NORMAL`: a commit survives the hub's crash (SIGKILL,
//! panic, OOM kill), as the WAL is written before the commit returns; a power loss or kernel crash
//! may lose the commits since the last WAL checkpoint (which syncs the WAL; a thread of its own
//! runs one every [`CHECKPOINT_INTERVAL`]), never corrupts the database, and replays to the state
//! of that earlier moment.

use std::collections::{HashMap, VecDeque};
use std::fs::{DirBuilder, File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use notifyhub_core::{DropReason, Guest, Sender, Timestamp};
use rusqlite::{Connection, OptionalExtension as _, Transaction, params};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::clock;
use crate::store::{
    AlreadyRegistered, GuestDetail, GuestSummary, Hub, IngestError, Publish, Record, UnknownGuest,
};
use crate::vsock::{Hybrid, Reach};

/// The database's file name in the state directory.
pub const DATABASE: &str = "journal.sqlite3";

/// The lock file's name in the state directory: one hub per state directory.
pub const LOCK_FILE: &str = "notifyhub.lock";

/// The layout of the tables this version writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// Inputs one transaction takes at most.
pub const MAX_BATCH: usize = 1024;

/// Inputs that may wait for the writer before submitters wait (the queue's bound).
pub const QUEUE: usize = 4096;

/// How often retention runs (and once at start).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// `--retain-days` by default.
pub const DEFAULT_RETAIN_DAYS: u64 = 30;

/// `--retain-messages` by default: as many as the store shows per guest
/// ([`crate::store::Limits::history`]).
pub const DEFAULT_RETAIN_MESSAGES: u64 = 4096;

/// How often the WAL is checkpointed into the database (and synced).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Most drops one input counts (the writer starts another past it); a row claiming more is
/// refused at replay, so that a damaged row cannot make it count for minutes.
const MAX_DROP_COUNT: u64 = 1 << 24;

/// How long the writer pauses after a failed commit, so that a broken disk does not spin it.
const FAILURE_PAUSE: Duration = Duration::from_millis(100);

/// How much history the journal keeps per guest. A guest's current state is never pruned: see
/// the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Datagrams older than this are deleted (`--retain-days`); `None`: kept at any age.
    pub max_age: Option<Duration>,
    /// Each guest's newest this many datagrams are kept (`--retain-messages`); `None`: all.
    pub max_messages: Option<u64>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Some(Duration::from_secs(DEFAULT_RETAIN_DAYS * 86_400)),
            max_messages: Some(DEFAULT_RETAIN_MESSAGES),
        }
    }
}

/// Where the journal lives and what it keeps (`notifyhub serve --state-dir`, `--retain-days`,
/// `--retain-messages`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// The state directory; the database is `DIR/journal.sqlite3`.
    pub dir: PathBuf,
    /// What history is kept.
    pub retention: Retention,
}

/// The journal flags of `notifyhub serve`.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Durable history")]
pub struct JournalArgs {
    /// Keep the guests and their messages in DIR/journal.sqlite3 and restore them on start;
    /// `none`: keep them in memory only [default: $STATE_DIRECTORY, else /var/lib/notifyhub as
    /// root, else $XDG_STATE_HOME/notifyhub, else ~/.local/state/notifyhub].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Delete stored messages older than DAYS (0: keep them at any age). A guest's state stays.
    #[arg(long, value_name = "DAYS", default_value_t = DEFAULT_RETAIN_DAYS)]
    pub retain_days: u64,
    /// Keep each guest's newest N stored messages (0: keep all). A guest's state stays.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RETAIN_MESSAGES)]
    pub retain_messages: u64,
}

impl JournalArgs {
    /// The journal these flags ask for, `None` for `--state-dir none`; `var` reads the
    /// environment, `is_root` picks the default directory.
    ///
    /// # Errors
    /// No directory was given and none can be derived.
    pub fn into_config(
        self,
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
        is_root: bool,
    ) -> anyhow::Result<Option<JournalConfig>> {
        let dir = match self.state_dir {
            Some(dir) if dir.as_os_str() == "none" => return Ok(None),
            Some(dir) => dir,
            None => default_state_dir(var, is_root)?,
        };
        let retention = Retention {
            max_age: (self.retain_days > 0)
                .then(|| Duration::from_secs(self.retain_days.saturating_mul(86_400))),
            max_messages: (self.retain_messages > 0).then_some(self.retain_messages),
        };
        Ok(Some(JournalConfig { dir, retention }))
    }
}

/// The default state directory: `$STATE_DIRECTORY` (the first, if systemd set several), else
/// `/var/lib/notifyhub` for root, else `$XDG_STATE_HOME/notifyhub`, else
/// `$HOME/.local/state/notifyhub`. `var` reads the environment.
///
/// # Errors
/// None applies (no `$HOME` either).
pub fn default_state_dir(
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
    is_root: bool,
) -> anyhow::Result<PathBuf> {
    let set = |name| var(name).filter(|value| !value.is_empty());
    if let Some(dirs) = set("STATE_DIRECTORY") {
        return Ok(std::env::split_paths(&dirs).next().unwrap_or_default());
    }
    if is_root {
        return Ok(PathBuf::from("/var/lib/notifyhub"));
    }
    if let Some(dir) = set("XDG_STATE_HOME") {
        return Ok(Path::new(&dir).join("notifyhub"));
    }
    if let Some(home) = set("HOME") {
        return Ok(Path::new(&home).join(".local/state/notifyhub"));
    }
    anyhow::bail!(
        "no state directory: $STATE_DIRECTORY, $XDG_STATE_HOME and $HOME are unset and not \
         running as root; pass --state-dir DIR (or --state-dir none)"
    )
}

/// One input to the store, as the journal records it. Applying the same inputs in the same
/// order to an empty [`Hub`] gives the same state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// [`Hub::register_with`].
    Register {
        /// The guest's name.
        name: String,
        /// Its notify socket's path when it was registered.
        notify_socket: String,
        /// How it reaches the hub over vsock.
        reach: Reach,
        /// The readiness timeout it was given ([`Hub::set_ready_timeout`]).
        ready_timeout: Option<Duration>,
        /// When.
        at: Timestamp,
    },
    /// [`Hub::ingest`].
    Datagram {
        /// The guest's name.
        name: String,
        /// When it was received.
        at: Timestamp,
        /// Who sent it.
        sender: Sender,
        /// The datagram, exactly.
        bytes: Vec<u8>,
        /// How many fds came with it.
        fds: usize,
    },
    /// [`Hub::record_drop`], `count` times: datagrams dropped in a row for one reason (a
    /// flood over the rate limit is one row per batch, not one per datagram).
    Drop {
        /// The guest's name.
        name: String,
        /// Why they were dropped.
        reason: DropReason,
        /// How many, at least 1.
        count: u64,
        /// When (the first of them).
        at: Timestamp,
    },
    /// [`Hub::handle_timeout`].
    Timeout {
        /// The guest's name.
        name: String,
        /// The time it was called with.
        at: Timestamp,
    },
    /// [`Hub::remove`]; the guest's older rows are deleted with it.
    Remove {
        /// The guest's name.
        name: String,
        /// When.
        at: Timestamp,
    },
}

impl Input {
    /// The guest the input is for.
    pub fn guest(&self) -> &str {
        match self {
            Self::Register { name, .. }
            | Self::Datagram { name, .. }
            | Self::Drop { name, .. }
            | Self::Timeout { name, .. }
            | Self::Remove { name, .. } => name,
        }
    }

    const fn kind(&self) -> &'static str {
        match self {
            Self::Register { .. } => "register",
            Self::Datagram { .. } => "datagram",
            Self::Drop { .. } => "drop",
            Self::Timeout { .. } => "timeout",
            Self::Remove { .. } => "remove",
        }
    }

    const fn at(&self) -> Timestamp {
        match self {
            Self::Register { at, .. }
            | Self::Datagram { at, .. }
            | Self::Drop { at, .. }
            | Self::Timeout { at, .. }
            | Self::Remove { at, .. } => *at,
        }
    }
}

/// What applying an [`Input`] gave.
#[derive(Debug)]
pub enum Outcome {
    /// Of [`Input::Register`].
    Registered(Result<GuestDetail, AlreadyRegistered>),
    /// Of [`Input::Datagram`].
    Ingested(Result<u64, IngestError>),
    /// Of [`Input::Drop`] and [`Input::Timeout`].
    Updated(Result<(), UnknownGuest>),
    /// Of [`Input::Remove`].
    Removed(Option<GuestSummary>),
}

/// The journal could not store an input, so it was not applied either.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not stored: {0}")]
pub struct NotStored(pub String);

/// What the writer thread is asked to do.
#[derive(Debug)]
enum Command {
    /// Store, apply, answer each input that has a reply; close its fds once it is published;
    /// then notify `wake`.
    Submit {
        inputs: Vec<Pending>,
        wake: Option<Arc<Notify>>,
        /// One per input: the queue's room, given back once they are applied.
        _room: OwnedSemaphorePermit,
    },
    /// Finish what came before and stop.
    Close,
}

/// The submitting side of the writer thread, held by the [`Hub`].
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    commands: mpsc::UnboundedSender<Command>,
    /// [`QUEUE`] permits: inputs submitted and not yet applied hold one each, so a submitter
    /// waits (backpressure) while the writer is that far behind.
    room: Arc<Semaphore>,
}

impl Writer {
    /// Stores `input`, applies it, closes `fds`, and returns what applying gave.
    pub(crate) async fn submit(
        &self,
        input: Input,
        fds: Vec<OwnedFd>,
    ) -> Result<Outcome, NotStored> {
        let (reply, outcome) = oneshot::channel();
        self.send(vec![(input, fds, Some(reply))], None).await?;
        outcome.await.unwrap_or_else(|_| Err(shut()))
    }

    /// Queues `inputs` (at most [`QUEUE`]) to be stored and applied in order, each closing its
    /// fds once it is published, and notifies `wake` after; waits only for room in the queue,
    /// not for the commit. The writer logs what applying them gave.
    pub(crate) async fn submit_batch(
        &self,
        inputs: Vec<(Input, Vec<OwnedFd>)>,
        wake: Arc<Notify>,
    ) -> Result<(), NotStored> {
        let inputs = inputs
            .into_iter()
            .map(|(input, fds)| (input, fds, None))
            .collect();
        self.send(inputs, Some(wake)).await
    }

    async fn send(&self, inputs: Vec<Pending>, wake: Option<Arc<Notify>>) -> Result<(), NotStored> {
        let n = u32::try_from(inputs.len().clamp(1, QUEUE)).unwrap_or(1);
        let room = Arc::clone(&self.room)
            .acquire_many_owned(n)
            .await
            .map_err(|_| shut())?;
        let command = Command::Submit {
            inputs,
            wake,
            _room: room,
        };
        self.commands.send(command).map_err(|_| shut())
    }
}

fn shut() -> NotStored {
    NotStored("the journal is closed: the hub is shutting down".into())
}

/// Applies `input` to `hub` with the store's own methods; datagrams, drops and timeouts
/// published as `publish` says (registrations and removals at once).
fn apply(hub: &Hub, input: Input, publish: Publish) -> Outcome {
    match input {
        Input::Register {
            name,
            notify_socket,
            reach,
            ready_timeout,
            at,
        } => {
            let configured = hub.ready_timeout();
            if configured != ready_timeout {
                hub.set_ready_timeout(ready_timeout);
            }
            let registered = hub.register_with(&name, &notify_socket, reach, at);
            if configured != ready_timeout {
                hub.set_ready_timeout(configured);
            }
            Outcome::Registered(registered)
        }
        Input::Datagram {
            name,
            at,
            sender,
            bytes,
            fds,
        } => Outcome::Ingested(hub.ingest_with(&name, at, sender, bytes, fds, publish)),
        Input::Drop {
            name,
            reason,
            count,
            ..
        } => Outcome::Updated(hub.record_drops(&name, reason, count, publish)),
        Input::Timeout { name, at } => {
            Outcome::Updated(hub.handle_timeout_with(&name, at, publish))
        }
        Input::Remove { name, .. } => Outcome::Removed(hub.remove(&name)),
    }
}

/// The durable inputs of the store. With a journal attached (see [`Journal::open`]) these store
/// each input before applying it; without one they apply it at once.
impl Hub {
    /// [`Hub::register_with`] at `now`, stored first.
    ///
    /// # Errors
    /// [`NotStored`] (outer) when the journal failed; [`AlreadyRegistered`] (inner).
    pub async fn accept_registration(
        &self,
        name: &str,
        notify_socket: &str,
        reach: Reach,
        now: Timestamp,
    ) -> Result<Result<GuestDetail, AlreadyRegistered>, NotStored> {
        let Some(writer) = self.journal() else {
            return Ok(self.register_with(name, notify_socket, reach, now));
        };
        let input = Input::Register {
            name: name.to_owned(),
            notify_socket: notify_socket.to_owned(),
            reach,
            ready_timeout: self.ready_timeout(),
            at: now,
        };
        match writer.submit(input, Vec::new()).await? {
            Outcome::Registered(registered) => Ok(registered),
            other => unreachable!("a registration gave {other:?}"),
        }
    }

    /// [`Hub::ingest`], stored first; `fds` are closed after the datagram was applied (which
    /// releases a `BARRIER=1` sender).
    ///
    /// # Errors
    /// As [`Hub::ingest`]; [`IngestError::NotStored`] when the journal failed.
    pub async fn accept_datagram(
        &self,
        name: &str,
        now: Timestamp,
        sender: Sender,
        datagram: Vec<u8>,
        fds: Vec<OwnedFd>,
    ) -> Result<u64, IngestError> {
        let Some(writer) = self.journal() else {
            let ingested = self.ingest(name, now, sender, &datagram, fds.len());
            drop(fds);
            return ingested;
        };
        let input = Input::Datagram {
            name: name.to_owned(),
            at: now,
            sender,
            bytes: datagram,
            fds: fds.len(),
        };
        match writer.submit(input, fds).await {
            Ok(Outcome::Ingested(ingested)) => ingested,
            Ok(other) => unreachable!("a datagram gave {other:?}"),
            Err(error) => Err(IngestError::NotStored(error)),
        }
    }

    /// [`Hub::record_drop`], stored first. A drop the journal could not store is logged and
    /// not counted.
    ///
    /// # Errors
    /// [`UnknownGuest`].
    pub async fn accept_drop(&self, name: &str, reason: DropReason) -> Result<(), UnknownGuest> {
        let Some(writer) = self.journal() else {
            return self.record_drop(name, reason);
        };
        let input = Input::Drop {
            name: name.to_owned(),
            reason,
            count: 1,
            at: clock::now(),
        };
        updated(writer.submit(input, Vec::new()).await)
    }

    /// Applies a batch of guest `name`'s inputs in order, each stored first with a journal,
    /// without waiting for the journal: with one, it waits only for room in its queue, and the
    /// writer closes each datagram's fds once that datagram is stored and published, then
    /// notifies `wake` (the guest's deadlines may have changed). Without one, they are applied
    /// and published before this returns, and the fds closed. Rejected datagrams are counted
    /// in the guest's drops and logged.
    ///
    /// # Errors
    /// [`IngestError::NotStored`]: the journal is closed (nothing of the batch was applied);
    /// [`IngestError::UnknownGuest`]: no journal and no such guest.
    pub(crate) async fn accept_batch(
        &self,
        name: &str,
        batch: Vec<Arrival>,
        wake: &Arc<Notify>,
    ) -> Result<(), IngestError> {
        let Some(writer) = self.journal() else {
            let mut fds_of_batch = Vec::new();
            for arrival in batch {
                match arrival {
                    Arrival::Datagram {
                        at,
                        sender,
                        bytes,
                        fds,
                    } => {
                        match self.ingest_with(name, at, sender, bytes, fds.len(), Publish::Later) {
                            Ok(_) => {}
                            Err(IngestError::Rejected(error)) => {
                                debug!(guest = name, %error, "datagram rejected");
                            }
                            Err(error) => return Err(error),
                        }
                        fds_of_batch.push(fds);
                    }
                    Arrival::Dropped { reason, count, .. } => {
                        self.record_drops(name, reason, count, Publish::Later)?;
                    }
                }
            }
            self.publish(name);
            // Published: a `BARRIER=1` sender may go on.
            drop(fds_of_batch);
            return Ok(());
        };
        let inputs = batch
            .into_iter()
            .map(|arrival| match arrival {
                Arrival::Datagram {
                    at,
                    sender,
                    bytes,
                    fds,
                } => (
                    Input::Datagram {
                        name: name.to_owned(),
                        at,
                        sender,
                        bytes,
                        fds: fds.len(),
                    },
                    fds,
                ),
                Arrival::Dropped { at, reason, count } => (
                    Input::Drop {
                        name: name.to_owned(),
                        reason,
                        count,
                        at,
                    },
                    Vec::new(),
                ),
            })
            .collect();
        Ok(writer.submit_batch(inputs, Arc::clone(wake)).await?)
    }

    /// [`Hub::handle_timeout`], stored first (only when a deadline is due: early calls change
    /// nothing and are not stored). A call the journal could not store is logged and not applied.
    ///
    /// # Errors
    /// [`UnknownGuest`].
    pub async fn accept_timeout(&self, name: &str, now: Timestamp) -> Result<(), UnknownGuest> {
        let Some(writer) = self.journal() else {
            return self.handle_timeout(name, now);
        };
        match self.poll_timeout(name)? {
            Some(deadline) if deadline <= now => {}
            _ => return Ok(()),
        }
        let input = Input::Timeout {
            name: name.to_owned(),
            at: now,
        };
        updated(writer.submit(input, Vec::new()).await)
    }

    /// [`Hub::remove`], stored first; the journal then deletes the guest's history. A removal
    /// the journal could not store is logged and applied all the same (the guest comes back
    /// after a restart then).
    pub async fn accept_removal(&self, name: &str) -> Option<GuestSummary> {
        let Some(writer) = self.journal() else {
            return self.remove(name);
        };
        let input = Input::Remove {
            name: name.to_owned(),
            at: clock::now(),
        };
        match writer.submit(input, Vec::new()).await {
            Ok(Outcome::Removed(summary)) => summary,
            Ok(other) => unreachable!("a removal gave {other:?}"),
            Err(error) => {
                error!(guest = name, %error, "removal not stored; removed until a restart");
                self.remove(name)
            }
        }
    }
}

/// One input of a guest's receive batch, for [`Hub::accept_batch`].
#[derive(Debug)]
pub(crate) enum Arrival {
    /// A whole datagram, received at `at` from `sender`, and the fds that came with it.
    Datagram {
        /// When it was received.
        at: Timestamp,
        /// Who sent it.
        sender: Sender,
        /// The datagram, exactly.
        bytes: Vec<u8>,
        /// The fds that came with it, closed once it is stored and published.
        fds: Vec<OwnedFd>,
    },
    /// `count` datagrams in a row dropped for `reason` (by the transport, or the rate limit;
    /// their fds are closed already).
    Dropped {
        /// When the first of them was received.
        at: Timestamp,
        /// Why.
        reason: DropReason,
        /// How many, at least 1.
        count: u64,
    },
}

fn updated(outcome: Result<Outcome, NotStored>) -> Result<(), UnknownGuest> {
    match outcome {
        Ok(Outcome::Updated(updated)) => updated,
        Ok(other) => unreachable!("an update gave {other:?}"),
        Err(error) => {
            warn!(%error, "input dropped");
            Ok(())
        }
    }
}

/// How a registration row stores what is not in [`Input::Register`]'s columns.
#[derive(Debug, Serialize, Deserialize)]
struct Registration {
    notify_socket: String,
    cid: Option<u32>,
    /// `(uds_path, port, cid)`.
    hybrid: Option<(String, u32, u32)>,
    ready_timeout_us: Option<u64>,
}

impl Registration {
    fn new(notify_socket: &str, reach: &Reach, ready_timeout: Option<Duration>) -> Self {
        Self {
            notify_socket: notify_socket.to_owned(),
            cid: reach.kernel_cid(),
            hybrid: reach
                .hybrid()
                .map(|hybrid| (hybrid.uds_path().to_owned(), hybrid.port(), hybrid.cid())),
            ready_timeout_us: ready_timeout
                .map(|timeout| u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX)),
        }
    }

    fn reach(&self) -> anyhow::Result<Reach> {
        Ok(match (&self.cid, &self.hybrid) {
            (Some(cid), _) => Reach::Cid(*cid),
            (None, Some((uds_path, port, cid))) => {
                Reach::Hybrid(Hybrid::new(uds_path, *port, *cid)?)
            }
            (None, None) => Reach::Unix,
        })
    }
}

/// A guest's checkpoint: its state after input `seq`.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    registration: Registration,
    accepted: u64,
    /// The hub's last event id after input `seq`.
    events_after: u64,
    guest: Guest,
}

/// The journal of one state directory: its lock, and the writer thread that feeds the hub.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    writer: Writer,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Held (with its `flock`) while the journal is open.
    _lock: File,
}

/// What [`Journal::open`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Inputs replayed.
    pub inputs: u64,
    /// Guests started from a checkpoint.
    pub checkpoints: u64,
    /// Guests in the hub after the replay.
    pub guests: usize,
}

impl Journal {
    /// Opens (creating it, mode 0700) the journal in `dir`, replays it into `hub` (which must
    /// be empty), then starts the writer thread and attaches it to `hub`: from then on the
    /// [`Hub::accept_datagram`] family stores before applying.
    ///
    /// Blocking (file I/O and the replay): call it before serving, or from a blocking thread.
    ///
    /// # Errors
    /// The directory cannot be made or locked (another hub holds it: the message says so), the
    /// database cannot be opened, is of a newer schema, or a row cannot be read.
    pub fn open(dir: &Path, retention: Retention, hub: &Hub) -> anyhow::Result<(Self, Replayed)> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |error| {
                anyhow::anyhow!(
                    "the state directory {} is in use by another notifyhub (lock {}: {error}); \
                     give each hub its own --state-dir",
                    dir.display(),
                    lock_path.display()
                )
            },
        )?;
        let mut connection = open_database(&dir.join(DATABASE))?;
        let replayed = replay(&mut connection, hub)
            .with_context(|| format!("cannot replay the journal in {}", dir.display()))?;
        let (commands, queue) = mpsc::unbounded_channel();
        let thread = {
            let hub = hub.clone();
            let mut writer = WriterThread {
                connection,
                path: dir.join(DATABASE),
                hub,
                retention,
                last_prune: None,
                applied: Vec::new(),
                removed: Vec::new(),
            };
            std::thread::Builder::new()
                .name("notifyhub-journal".into())
                .spawn(move || writer.run(queue))
                .context("cannot start the journal's writer thread")?
        };
        let writer = Writer {
            commands,
            room: Arc::new(Semaphore::new(QUEUE)),
        };
        hub.attach_journal(writer.clone());
        info!(
            dir = %dir.display(),
            inputs = replayed.inputs,
            guests = replayed.guests,
            "journal replayed"
        );
        Ok((
            Self {
                dir: dir.to_owned(),
                writer,
                thread: Some(thread),
                _lock: lock,
            },
            replayed,
        ))
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lets the writer finish every input submitted before, then stops it. Inputs submitted
    /// later are refused with [`NotStored`].
    pub async fn close(mut self) {
        let _ = self.writer.commands.send(Command::Close);
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                error!("the journal's writer thread failed");
            }
        }
    }
}

fn open_database(path: &Path) -> anyhow::Result<Connection> {
    let connection = Connection::open(path)
        .with_context(|| format!("cannot open the journal {}", path.display()))?;
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .context("cannot switch the journal to WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    // The writer's own checkpoints would stall it on their fsyncs: a thread of its own runs
    // them (`Checkpointer`).
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        anyhow::bail!(
            "the journal {} has schema version {version}, newer than this notifyhub's \
             {SCHEMA_VERSION}",
            path.display()
        );
    }
    connection.execute_batch(
        "BEGIN;
         CREATE TABLE IF NOT EXISTS inputs (
             seq INTEGER PRIMARY KEY,
             guest TEXT NOT NULL,
             kind TEXT NOT NULL,
             at INTEGER NOT NULL,
             data TEXT,
             fds INTEGER NOT NULL DEFAULT 0,
             bytes BLOB
         );
         CREATE INDEX IF NOT EXISTS inputs_by_guest ON inputs (guest, seq);
         CREATE TABLE IF NOT EXISTS applied (
             seq INTEGER PRIMARY KEY,
             events_before INTEGER NOT NULL,
             events_after INTEGER NOT NULL,
             accepted INTEGER
         );
         CREATE TABLE IF NOT EXISTS checkpoints (
             guest TEXT PRIMARY KEY,
             seq INTEGER NOT NULL,
             state TEXT NOT NULL
         );
         PRAGMA user_version = 1;
         COMMIT;",
    )?;
    Ok(connection)
}

fn decode(
    guest: String,
    kind: &str,
    at: i64,
    data: Option<String>,
    fds: i64,
    bytes: Option<Vec<u8>>,
) -> anyhow::Result<Input> {
    let at = Timestamp::from_micros(u64::try_from(at)?);
    let data = || data.as_deref().context("no data");
    Ok(match kind {
        "register" => {
            let registration: Registration = serde_json::from_str(data()?)?;
            Input::Register {
                reach: registration.reach()?,
                ready_timeout: registration.ready_timeout_us.map(Duration::from_micros),
                notify_socket: registration.notify_socket,
                name: guest,
                at,
            }
        }
        "datagram" => Input::Datagram {
            name: guest,
            at,
            sender: serde_json::from_str(data()?)?,
            bytes: bytes.unwrap_or_default(),
            fds: usize::try_from(fds)?,
        },
        "drop" => {
            let (reason, count) = match serde_json::from_str(data()?)? {
                StoredDrop::One(reason) => (reason, 1),
                StoredDrop::Many { reason, count } => (reason, count),
            };
            if !(1..=MAX_DROP_COUNT).contains(&count) {
                anyhow::bail!("a drop count of {count}, not 1 to {MAX_DROP_COUNT}");
            }
            Input::Drop {
                name: guest,
                reason,
                count,
                at,
            }
        }
        "timeout" => Input::Timeout { name: guest, at },
        "remove" => Input::Remove { name: guest, at },
        other => anyhow::bail!("unknown input kind {other:?}"),
    })
}

fn to_sql_time(at: Timestamp) -> i64 {
    i64::try_from(at.as_micros()).unwrap_or(i64::MAX)
}

fn insert(transaction: &Transaction<'_>, input: &Input) -> rusqlite::Result<i64> {
    let mut statement = transaction.prepare_cached(
        "INSERT INTO inputs (guest, kind, at, data, fds, bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let (data, fds, bytes): (Option<String>, i64, Option<&[u8]>) = match input {
        Input::Register {
            notify_socket,
            reach,
            ready_timeout,
            ..
        } => (
            Some(json(&Registration::new(
                notify_socket,
                reach,
                *ready_timeout,
            ))),
            0,
            None,
        ),
        Input::Datagram {
            sender, bytes, fds, ..
        } => (
            Some(json(sender)),
            i64::try_from(*fds).unwrap_or(i64::MAX),
            Some(bytes),
        ),
        Input::Drop {
            reason, count: 1, ..
        } => (Some(json(reason)), 0, None),
        Input::Drop { reason, count, .. } => (
            Some(json(&StoredDrop::Many {
                reason: *reason,
                count: *count,
            })),
            0,
            None,
        ),
        Input::Timeout { .. } | Input::Remove { .. } => (None, 0, None),
    };
    statement.execute(params![
        input.guest(),
        input.kind(),
        to_sql_time(input.at()),
        data,
        fds,
        bytes
    ])?;
    Ok(transaction.last_insert_rowid())
}

/// A drop row's `data`: the reason as a JSON string for one datagram (as schema 1 always
/// wrote it), `{"reason", "count"}` for several in a row.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum StoredDrop {
    One(DropReason),
    Many { reason: DropReason, count: u64 },
}

/// `serde_json::to_string` for the few types stored, which cannot fail for them.
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}

/// Rebuilds `hub` from the journal: checkpoints first, then every later input in order.
///
/// The inputs apply in [`Hub::replaying`] mode: they are neither logged as events of now nor
/// counted in the metrics again; [`Journal::open`] logs one summary line instead.
fn replay(connection: &mut Connection, hub: &Hub) -> anyhow::Result<Replayed> {
    let _replaying = hub.replaying();
    let mut replayed = Replayed::default();
    let configured_timeout = hub.ready_timeout();
    let history = hub.limits().history;
    let mut starts: HashMap<String, i64> = HashMap::new();
    // Restored in `seq` order among the inputs, so that every event id comes out as it was.
    let mut pending = VecDeque::new();
    {
        let mut checkpoints =
            connection.prepare("SELECT guest, seq, state FROM checkpoints ORDER BY seq")?;
        let mut records = connection.prepare(
            "SELECT i.at, i.data, i.fds, i.bytes, a.accepted FROM inputs i JOIN applied a USING (seq)
             WHERE i.guest = ?1 AND i.kind = 'datagram' AND i.seq <= ?2 AND a.accepted IS NOT NULL
             ORDER BY i.seq DESC LIMIT ?3",
        )?;
        let rows = checkpoints.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (name, seq, state) = row?;
            let state: CheckpointState = serde_json::from_str(&state)
                .with_context(|| format!("bad checkpoint of guest {name:?}"))?;
            let limit = i64::try_from(history).unwrap_or(i64::MAX);
            let mut kept = records
                .query_map(params![name, seq, limit], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, Option<Vec<u8>>>(3)?,
                        row.get::<_, i64>(4)?,
                    ))
                })?
                .map(|row| -> anyhow::Result<Record> {
                    let (at, sender, fds, bytes, accepted) = row?;
                    Ok(Record {
                        seq: u64::try_from(accepted)?,
                        received_at: Timestamp::from_micros(u64::try_from(at)?),
                        sender: serde_json::from_str(&sender)?,
                        fds: usize::try_from(fds)?,
                        bytes: bytes.unwrap_or_default().into(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            kept.reverse();
            starts.insert(name.clone(), seq);
            pending.push_back((seq, name, state, kept));
        }
    }
    let mut restore_up_to = |seq: i64| -> anyhow::Result<()> {
        while pending.front().is_some_and(|(start, ..)| *start < seq) {
            let Some((_, name, state, kept)) = pending.pop_front() else {
                break;
            };
            hub.resume_event_ids(state.events_after);
            let reach = state.registration.reach()?;
            let socket = &state.registration.notify_socket;
            hub.restore(&name, state.guest, socket, reach, state.accepted, kept);
            replayed.checkpoints += 1;
        }
        Ok(())
    };
    let mut missing = Vec::new();
    {
        let mut statement = connection.prepare(
            "SELECT i.seq, i.guest, i.kind, i.at, i.data, i.fds, i.bytes,
                    a.events_before, a.events_after
             FROM inputs i LEFT JOIN applied a USING (seq) ORDER BY i.seq",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let guest: String = row.get(1)?;
            let seq: i64 = row.get(0)?;
            restore_up_to(seq)?;
            if starts.get(&guest).is_some_and(|&start| seq <= start) {
                continue;
            }
            let kind: String = row.get(2)?;
            let input = decode(
                guest,
                &kind,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
            )
            .with_context(|| format!("bad input row {seq}"))?;
            // The ids around it, as it was applied: events of deleted rows are not replayed.
            let recorded: Option<(i64, i64)> = row.get::<_, Option<i64>>(7)?.zip(row.get(8)?);
            if let Some((before, _)) = recorded {
                hub.resume_event_ids(u64::try_from(before)?);
            }
            let before = hub.last_event_id();
            let outcome = apply(hub, input, Publish::Now);
            match recorded {
                Some((_, after)) => hub.resume_event_ids(u64::try_from(after)?),
                None => missing.push(Applied {
                    seq,
                    events_before: before,
                    events_after: hub.last_event_id(),
                    accepted: accepted(&outcome),
                }),
            }
            replayed.inputs += 1;
        }
    }
    restore_up_to(i64::MAX)?;
    hub.set_ready_timeout(configured_timeout);
    // Inputs of the last batch before a crash were stored but their ids were not: store them.
    let transaction = connection.transaction()?;
    for applied in &missing {
        applied.insert(&transaction)?;
    }
    transaction.commit()?;
    replayed.guests = hub.guests().guests.len();
    Ok(replayed)
}

fn accepted(outcome: &Outcome) -> Option<u64> {
    match outcome {
        Outcome::Ingested(Ok(seq)) => Some(*seq),
        _ => None,
    }
}

/// A row of `applied`.
#[derive(Debug)]
struct Applied {
    seq: i64,
    events_before: u64,
    events_after: u64,
    accepted: Option<u64>,
}

impl Applied {
    fn insert(&self, transaction: &Transaction<'_>) -> rusqlite::Result<()> {
        let mut statement = transaction.prepare_cached(
            "INSERT OR REPLACE INTO applied (seq, events_before, events_after, accepted)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        statement.execute(params![
            self.seq,
            self.events_before as i64,
            self.events_after as i64,
            self.accepted.map(|seq| seq as i64)
        ])?;
        Ok(())
    }
}

/// A submitted input: what to store and apply, the fds to close after, whom to answer (if
/// anybody waits).
type Pending = (
    Input,
    Vec<OwnedFd>,
    Option<oneshot::Sender<Result<Outcome, NotStored>>>,
);

/// The inputs of one commit, and what to release after they were applied.
#[derive(Default)]
struct Batch {
    inputs: Vec<Pending>,
    /// Receive loops to notify once the batch is applied.
    wakes: Vec<Arc<Notify>>,
    /// The queue room the batch's inputs hold.
    rooms: Vec<OwnedSemaphorePermit>,
}

impl Batch {
    fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Adds `pending`; a drop right after a drop of the same guest and reason, neither awaited,
    /// becomes one input with their counts added: a flood is one row per batch.
    fn push(&mut self, pending: Pending) {
        if let (
            Input::Drop {
                name,
                reason,
                count,
                ..
            },
            _,
            None,
        ) = &pending
            && let Some((
                Input::Drop {
                    name: last_name,
                    reason: last_reason,
                    count: last_count,
                    ..
                },
                _,
                None,
            )) = self.inputs.last_mut()
            && last_name == name
            && last_reason == reason
            && *last_count + *count <= MAX_DROP_COUNT
        {
            *last_count += *count;
            return;
        }
        self.inputs.push(pending);
    }
}

struct WriterThread {
    connection: Connection,
    /// The database file, for the checkpointer's connection.
    path: PathBuf,
    hub: Hub,
    retention: Retention,
    last_prune: Option<Instant>,
    /// Ids of inputs applied since the last commit (replay recomputes them if they are lost:
    /// no row is deleted before they are stored).
    applied: Vec<Applied>,
    /// Guests removed since the last commit, with their removal's `seq`: their history goes
    /// in the commit that stores the removal's ids.
    removed: Vec<(String, i64)>,
}

/// Runs `PRAGMA wal_checkpoint(PASSIVE)` every [`CHECKPOINT_INTERVAL`] on a connection of its
/// own, so that the writer never waits for a checkpoint's fsyncs. Stops when dropped.
#[derive(Debug)]
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> anyhow::Result<Self> {
        let connection = Connection::open(path)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("notifyhub-wal".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_INTERVAL)
                {
                    let checkpoint =
                        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                            row.get::<_, i64>(0)
                        });
                    if let Err(error) = checkpoint {
                        warn!(%error, "WAL checkpoint failed");
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl WriterThread {
    fn run(&mut self, mut queue: mpsc::UnboundedReceiver<Command>) {
        let checkpointer = match Checkpointer::start(&self.path) {
            Ok(checkpointer) => Some(checkpointer),
            Err(error) => {
                warn!(%error, "no WAL checkpointer thread; SQLite checkpoints as it writes");
                let _ = self
                    .connection
                    .pragma_update(None, "wal_autocheckpoint", 1000);
                None
            }
        };
        self.prune_if_due();
        let mut batch = Batch::default();
        while let Some(command) = queue.blocking_recv() {
            let mut close = false;
            let mut next = Some(command);
            while let Some(command) = next.take() {
                match command {
                    Command::Submit {
                        inputs,
                        wake,
                        _room,
                    } => {
                        for pending in inputs {
                            batch.push(pending);
                        }
                        batch.wakes.extend(wake);
                        batch.rooms.push(_room);
                    }
                    Command::Close => close = true,
                }
                // Submissions count too: merged drops add no input.
                if batch.len() < MAX_BATCH && batch.rooms.len() < MAX_BATCH && !close {
                    next = queue.try_recv().ok();
                }
            }
            self.write(&mut batch);
            // The ids go with the next batch's commit (replay recomputes them should the hub
            // die first), but a removed guest's history goes now.
            if close || !self.removed.is_empty() {
                self.record();
            }
            if close {
                break;
            }
            self.prune_if_due();
        }
        drop(checkpointer);
        debug!("journal writer stopped");
    }

    /// Commits the ids of applied inputs, and deletes the history of removed guests.
    fn record(&mut self) {
        if self.applied.is_empty() {
            return;
        }
        let recorded = (|| {
            let transaction = self.connection.transaction()?;
            bookkeeping(&transaction, &self.applied, &self.removed)?;
            transaction.commit()
        })();
        match recorded {
            Ok(()) => {
                self.applied.clear();
                self.removed.clear();
            }
            Err(error) => warn!(%error, "cannot record applied inputs; trying again later"),
        }
    }

    /// Stores the batch (with the ids of the inputs applied before it, one commit), then
    /// applies each input and keeps its ids for the next commit, publishes each guest's new
    /// state once, and only then closes the inputs' fds, answers, and wakes receive loops.
    fn write(&mut self, batch: &mut Batch) {
        if batch.inputs.is_empty() {
            batch.wakes.clear();
            batch.rooms.clear();
            return;
        }
        let started = Instant::now();
        let stored = (|| {
            let transaction = self.connection.transaction()?;
            let seqs = batch
                .inputs
                .iter()
                .map(|(input, _, _)| insert(&transaction, input))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            bookkeeping(&transaction, &self.applied, &self.removed)?;
            transaction.commit()?;
            Ok::<_, rusqlite::Error>(seqs)
        })();
        let seqs = match stored {
            Ok(seqs) => {
                self.hub.metrics().observe_store_write(started.elapsed());
                self.applied.clear();
                self.removed.clear();
                seqs
            }
            Err(error) => {
                error!(%error, inputs = batch.len(), "cannot store inputs; refusing them");
                let refusal = NotStored(error.to_string());
                for (_, fds, reply) in batch.inputs.drain(..) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(refusal.clone()));
                    }
                    drop(fds);
                }
                batch.rooms.clear();
                for wake in batch.wakes.drain(..) {
                    wake.notify_one();
                }
                std::thread::sleep(FAILURE_PAUSE);
                return;
            }
        };
        // Guests whose new state is not published yet, in the order they were first touched.
        let mut unpublished: Vec<String> = Vec::new();
        let mut done = Vec::with_capacity(batch.len());
        for ((input, fds, reply), seq) in batch.inputs.drain(..).zip(seqs) {
            let events_before = self.hub.last_event_id();
            let name = input.guest().to_owned();
            let removal = matches!(input, Input::Remove { .. });
            if removal && let Some(at) = unpublished.iter().position(|n| *n == name) {
                // Its waiters see its last state before they see it gone.
                self.hub.publish(&unpublished.swap_remove(at));
            }
            let outcome = apply(&self.hub, input, Publish::Later);
            if reply.is_none() {
                log_unawaited(&name, &outcome);
            }
            self.applied.push(Applied {
                seq,
                events_before,
                events_after: self.hub.last_event_id(),
                accepted: accepted(&outcome),
            });
            if removal {
                self.removed.push((name, seq));
            } else if unpublished.last() != Some(&name) && !unpublished.contains(&name) {
                unpublished.push(name);
            }
            done.push((fds, reply, outcome));
        }
        for name in &unpublished {
            self.hub.publish(name);
        }
        // Stored and published: the fds go (releasing a barrier), submitters hear back.
        for (fds, reply, outcome) in done {
            drop(fds);
            if let Some(reply) = reply {
                let _ = reply.send(Ok(outcome));
            }
        }
        batch.rooms.clear();
        for wake in batch.wakes.drain(..) {
            wake.notify_one();
        }
    }

    fn prune_if_due(&mut self) {
        if self
            .last_prune
            .is_some_and(|last| last.elapsed() < PRUNE_INTERVAL)
        {
            return;
        }
        self.last_prune = Some(Instant::now());
        // Pruning deletes rows: the ids of those after them must be stored first.
        self.record();
        if !self.applied.is_empty() {
            return;
        }
        match prune(
            &mut self.connection,
            &self.hub,
            self.retention,
            clock::now(),
        ) {
            Ok(0) => {}
            Ok(guests) => info!(guests, "journal pruned"),
            Err(error) => warn!(%error, "cannot prune the journal"),
        }
    }
}

/// Logs what applying an input nobody waits for gave, if it is worth a line.
fn log_unawaited(guest: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Ingested(Err(IngestError::Rejected(error))) => {
            debug!(guest, %error, "datagram rejected");
        }
        Outcome::Ingested(Err(error)) => debug!(guest, %error, "datagram not applied"),
        Outcome::Updated(Err(error)) => debug!(guest, %error, "drop not applied"),
        _ => {}
    }
}

/// What [`WriterThread::record`] commits, into `transaction`: the ids of `applied` inputs, and
/// the deletion of the history of `removed` guests.
fn bookkeeping(
    transaction: &Transaction<'_>,
    applied: &[Applied],
    removed: &[(String, i64)],
) -> rusqlite::Result<()> {
    for applied in applied {
        applied.insert(transaction)?;
    }
    for (name, seq) in removed {
        purge(transaction, name, *seq)?;
    }
    Ok(())
}

/// Deletes every row of removed guest `name` before its removal (input `seq`).
fn purge(transaction: &Transaction<'_>, name: &str, seq: i64) -> rusqlite::Result<()> {
    transaction.execute(
        "DELETE FROM applied WHERE seq IN (SELECT seq FROM inputs WHERE guest = ?1 AND seq < ?2)",
        params![name, seq],
    )?;
    transaction.execute(
        "DELETE FROM inputs WHERE guest = ?1 AND seq < ?2",
        params![name, seq],
    )?;
    transaction.execute("DELETE FROM checkpoints WHERE guest = ?1", params![name])?;
    Ok(())
}

/// Applies `retention` as of `now`: each guest with datagrams to delete is checkpointed at its
/// newest input, then its older rows go. The hub must hold every stored input (the writer calls
/// it between batches). Returns how many guests were pruned.
pub(crate) fn prune(
    connection: &mut Connection,
    hub: &Hub,
    retention: Retention,
    now: Timestamp,
) -> rusqlite::Result<usize> {
    let cutoff = retention.max_age.map(|age| {
        to_sql_time(now).saturating_sub(i64::try_from(age.as_micros()).unwrap_or(i64::MAX))
    });
    let mut candidates: Vec<String> = Vec::new();
    if let Some(max) = retention.max_messages {
        let mut statement = connection.prepare(
            "SELECT guest FROM inputs WHERE kind = 'datagram' GROUP BY guest HAVING count(*) > ?1",
        )?;
        let rows =
            statement.query_map([i64::try_from(max).unwrap_or(i64::MAX)], |row| row.get(0))?;
        candidates.extend(rows.collect::<rusqlite::Result<Vec<String>>>()?);
    }
    if let Some(cutoff) = cutoff {
        let mut statement = connection
            .prepare("SELECT DISTINCT guest FROM inputs WHERE kind = 'datagram' AND at < ?1")?;
        let rows = statement.query_map([cutoff], |row| row.get(0))?;
        candidates.extend(rows.collect::<rusqlite::Result<Vec<String>>>()?);
    }
    candidates.sort();
    candidates.dedup();
    let mut pruned = 0;
    for name in candidates {
        let Some(state) = hub.checkpoint(&name) else {
            continue; // Removed: purged with its removal.
        };
        let transaction = connection.transaction()?;
        let newest: i64 = transaction.query_row(
            "SELECT max(seq) FROM inputs WHERE guest = ?1",
            [&name],
            |row| row.get(0),
        )?;
        // Recorded before pruning starts; the hub's last id is as good for a guest's newest input
        // when it is the newest of all.
        let events_after: Option<i64> = transaction
            .query_row(
                "SELECT events_after FROM applied WHERE seq = ?1",
                [newest],
                |row| row.get(0),
            )
            .optional()?;
        let events_after = events_after.map_or_else(|| hub.last_event_id(), |id| id as u64);
        let (guest, accepted, notify_socket, reach) = state;
        let state = CheckpointState {
            registration: Registration::new(&notify_socket, &reach, None),
            accepted,
            events_after,
            guest,
        };
        transaction.execute(
            "INSERT OR REPLACE INTO checkpoints (guest, seq, state) VALUES (?1, ?2, ?3)",
            params![
                name,
                newest,
                serde_json::to_string(&state).expect("plain data")
            ],
        )?;
        // The oldest datagram to keep by count, if the count is over.
        let keep_from: Option<i64> = match retention.max_messages {
            Some(max) => transaction
                .query_row(
                    "SELECT seq FROM inputs WHERE guest = ?1 AND kind = 'datagram'
                     ORDER BY seq DESC LIMIT 1 OFFSET ?2",
                    params![
                        name,
                        i64::try_from(max.saturating_sub(1)).unwrap_or(i64::MAX)
                    ],
                    |row| row.get(0),
                )
                .optional()?,
            None => None,
        };
        let doomed = "guest = ?1 AND seq <= ?2 AND (kind != 'datagram' OR seq < ?3 OR at < ?4)";
        let keep_from = if retention.max_messages == Some(0) {
            i64::MAX
        } else {
            keep_from.unwrap_or(0)
        };
        let cutoff = cutoff.unwrap_or(i64::MIN);
        let arguments = params![name, newest, keep_from, cutoff];
        transaction.execute(
            &format!("DELETE FROM applied WHERE seq IN (SELECT seq FROM inputs WHERE {doomed})"),
            arguments,
        )?;
        transaction.execute(&format!("DELETE FROM inputs WHERE {doomed}"), arguments)?;
        transaction.commit()?;
        pruned += 1;
    }
    Ok(pruned)
}

/// The journal's `Arc`-free view of a guest for a checkpoint.
pub(crate) type CheckpointOf = (Guest, u64, Arc<str>, Arc<Reach>);

#[cfg(test)]
mod tests {
    use notifyhub_core::Credentials;
    use serde_json::Value;

    use super::*;
    use crate::store::FeedItem;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_micros(1_800_000_000_000_000 + ms * 1000)
    }

    fn unix(pid: u32) -> Sender {
        Sender::Unix {
            credentials: Some(Credentials {
                pid,
                uid: 0,
                gid: 0,
            }),
        }
    }

    fn keep_all() -> Retention {
        Retention {
            max_age: None,
            max_messages: None,
        }
    }

    /// Everything the hub shows: every guest's JSON (state, timeline) and history, the last
    /// event id, and the held events.
    fn view(hub: &Hub) -> Value {
        let overview = hub.guests();
        let guests: Vec<Value> = overview
            .guests
            .iter()
            .map(|guest| {
                let name = &guest.summary.snapshot.name;
                let history = hub.history(name).unwrap();
                let records: Vec<Value> = history
                    .records
                    .iter()
                    .map(|record| {
                        serde_json::json!([
                            record.seq,
                            record.received_at,
                            record.sender,
                            record.fds,
                            hex::encode(&record.bytes)
                        ])
                    })
                    .collect();
                serde_json::json!({
                    "guest": guest,
                    "history": records,
                    "forgotten": history.forgotten,
                })
            })
            .collect();
        serde_json::json!({"last_event_id": overview.last_event_id, "guests": guests})
    }

    fn held_events(hub: &Hub, after: u64) -> Vec<Value> {
        let mut feed = hub.subscribe(None, Some(after));
        let mut events = Vec::new();
        while let Some(item) = futures_util::FutureExt::now_or_never(feed.next()) {
            match item {
                FeedItem::Event(event) => events.push(serde_json::to_value(&*event).unwrap()),
                FeedItem::Resync(resync) => events.push(serde_json::json!({"resync": resync.id})),
            }
        }
        events
    }

    /// The text column of every row `sql` selects from the journal in `dir`.
    fn texts(dir: &Path, sql: &str) -> Vec<String> {
        let connection = Connection::open(dir.join(DATABASE)).unwrap();
        let mut statement = connection.prepare(sql).unwrap();
        let rows = statement.query_map([], |row| row.get(0)).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    async fn open(dir: &Path, retention: Retention) -> (Hub, Journal) {
        let hub = Hub::new();
        let (journal, _) = Journal::open(dir, retention, &hub).unwrap();
        (hub, journal)
    }

    async fn feed_a_life(hub: &Hub) {
        // Never pruned, and restored before the others' checkpoints.
        hub.accept_registration("x-idle", "/run/x/x-idle", Reach::Unix, at(0))
            .await
            .unwrap()
            .unwrap();
        hub.accept_registration("web1", "/run/x/web1", Reach::Unix, at(0))
            .await
            .unwrap()
            .unwrap();
        hub.accept_registration("vm1", "/run/x/vm1", Reach::Cid(42), at(1))
            .await
            .unwrap()
            .unwrap();
        let messages: [&[u8]; 6] = [
            b"X_SYSTEMD_HOSTNAME=web1",
            b"WATCHDOG_USEC=100000\nWATCHDOG=1",
            b"READY=1\nSTATUS=up",
            b"STATUS=a\0b",
            b"X_SYSTEMD_UNIT_ACTIVE=multi-user.target",
            b"X_SYSTEMD_SHUTDOWN=reboot",
        ];
        for (i, message) in messages.into_iter().enumerate() {
            let i = i as u64;
            let _ = hub
                .accept_datagram("web1", at(10 + i * 1000), unix(7), message.to_vec(), vec![])
                .await;
            hub.accept_datagram(
                "vm1",
                at(20 + i * 1000),
                Sender::Unknown,
                b"STATUS=vm".to_vec(),
                vec![],
            )
            .await
            .unwrap();
            if i == 1 {
                // The watchdog, 100 ms after at(1010), fires.
                hub.accept_timeout("web1", at(1200)).await.unwrap();
                assert!(hub.guest("web1").unwrap().snapshot().watchdog_expired);
            }
        }
        hub.accept_drop("web1", DropReason::Oversize).await.unwrap();
        hub.accept_datagram("web1", at(7000), unix(8), b"READY=1".to_vec(), vec![])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_restart_rebuilds_state_history_and_event_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, journal) = open(dir.path(), keep_all()).await;
        feed_a_life(&hub).await;
        let before = view(&hub);
        let events = held_events(&hub, 0);
        assert_eq!(before["guests"][1]["guest"]["drops"]["oversize"], 1);
        assert_eq!(before["guests"][1]["guest"]["drops"]["embedded_nul"], 1);
        assert_eq!(
            before["guests"][1]["guest"]["watchdog_expired"], false,
            "a new boot"
        );
        assert_eq!(before["guests"][1]["guest"]["boot_count"], 2);
        journal.close().await;

        let (again, journal) = open(dir.path(), keep_all()).await;
        assert_eq!(view(&again), before);
        assert_eq!(held_events(&again, 0), events);
        // Ids go on from where they were.
        let last = again.last_event_id();
        again
            .accept_datagram(
                "vm1",
                at(3000),
                Sender::Unknown,
                b"STATUS=on".to_vec(),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(again.last_event_id(), last + 1);
        journal.close().await;
    }

    #[tokio::test]
    async fn a_lost_applied_row_is_recomputed() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, journal) = open(dir.path(), keep_all()).await;
        feed_a_life(&hub).await;
        let before = view(&hub);
        journal.close().await;
        // As after a crash between the commit of inputs and that of their ids.
        let connection = Connection::open(dir.path().join(DATABASE)).unwrap();
        connection
            .execute("DELETE FROM applied WHERE seq > 5", [])
            .unwrap();
        drop(connection);
        let (again, journal) = open(dir.path(), keep_all()).await;
        assert_eq!(view(&again), before);
        journal.close().await;
    }

    #[tokio::test]
    async fn retention_prunes_history_but_not_state() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, journal) = open(dir.path(), keep_all()).await;
        feed_a_life(&hub).await;
        let before = view(&hub);
        let last_id = hub.last_event_id();
        journal.close().await;

        let mut connection = Connection::open(dir.path().join(DATABASE)).unwrap();
        let count = |connection: &Connection, guest: &str| -> i64 {
            connection
                .query_row(
                    "SELECT count(*) FROM inputs WHERE guest = ?1",
                    [guest],
                    |row| row.get(0),
                )
                .unwrap()
        };
        assert_eq!(count(&connection, "web1"), 10);
        let retention = Retention {
            max_age: None,
            max_messages: Some(2),
        };
        assert_eq!(
            prune(&mut connection, &hub, retention, at(5000)).unwrap(),
            2
        );
        // Kept: the newest two datagrams each; the rest is in the checkpoints.
        assert_eq!(count(&connection, "web1"), 2);
        assert_eq!(count(&connection, "vm1"), 2);
        drop(connection);

        let (again, journal) = open(dir.path(), keep_all()).await;
        let after = view(&again);
        assert_eq!(after["last_event_id"], last_id);
        for i in 0..2 {
            let (was, is) = (&before["guests"][i], &after["guests"][i]);
            assert_eq!(is["guest"], was["guest"], "state and timeline");
            let history = is["history"].as_array().unwrap();
            assert_eq!(history[..], was["history"].as_array().unwrap()[4..]);
        }
        // A resume from before the pruned events resyncs; new events go on from the last id.
        assert_eq!(
            held_events(&again, 1),
            [serde_json::json!({"resync": last_id})]
        );
        again
            .accept_datagram("web1", at(8000), unix(9), b"STATUS=after".to_vec(), vec![])
            .await
            .unwrap();
        assert_eq!(again.last_event_id(), last_id + 1);
        let detail = again.guest("web1").unwrap();
        assert_eq!(detail.snapshot().status.as_deref(), Some("after"));
        assert_eq!(detail.snapshot().boot_count, 2);
        journal.close().await;

        // Age: everything but `STATUS=after` is older than a day at 1 day + 7.5 s.
        let mut connection = Connection::open(dir.path().join(DATABASE)).unwrap();
        let (hub, journal) = open(dir.path(), keep_all()).await;
        let before = hub.guest("web1").unwrap().summary.snapshot;
        journal.close().await;
        let by_age = Retention {
            max_age: Some(Duration::from_secs(86_400)),
            max_messages: None,
        };
        let day_later = Timestamp::from_micros(at(7500).as_micros() + 86_400_000_000);
        prune(&mut connection, &hub, by_age, day_later).unwrap();
        assert_eq!(count(&connection, "web1"), 1, "STATUS=after");
        drop(connection);
        let (again, journal) = open(dir.path(), keep_all()).await;
        assert_eq!(again.guest("web1").unwrap().summary.snapshot, before);
        journal.close().await;
    }

    #[tokio::test]
    async fn a_removal_deletes_the_history_and_keeps_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, journal) = open(dir.path(), keep_all()).await;
        feed_a_life(&hub).await;
        assert!(hub.accept_removal("web1").await.is_some());
        let before = view(&hub);
        let last_id = hub.last_event_id();
        journal.close().await;

        let rows = texts(dir.path(), "SELECT kind FROM inputs WHERE guest = 'web1'");
        assert_eq!(rows, ["remove"]);

        let (again, journal) = open(dir.path(), keep_all()).await;
        assert_eq!(view(&again), before);
        assert_eq!(again.last_event_id(), last_id);
        // Registered again, it starts afresh.
        let detail = again
            .accept_registration("web1", "/run/y/web1", Reach::Unix, at(9000))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(detail.snapshot().messages, 0);
        assert_eq!(again.last_event_id(), last_id + 1);
        journal.close().await;
    }

    /// A receive batch is applied in order without waiting for its commit; a run of
    /// rate-limited drops is one row, and a restart counts them all again (the state is a fold
    /// of the rows).
    #[tokio::test]
    async fn a_batch_is_stored_in_order_and_drops_are_one_row_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, journal) = open(dir.path(), keep_all()).await;
        hub.accept_registration("web1", "/run/x/web1", Reach::Unix, at(0))
            .await
            .unwrap()
            .unwrap();
        let wake = Arc::new(Notify::new());
        let datagram = |ms, bytes: &[u8]| Arrival::Datagram {
            at: at(ms),
            sender: unix(7),
            bytes: bytes.to_vec(),
            fds: Vec::new(),
        };
        let limited = |ms, count| Arrival::Dropped {
            at: at(ms),
            reason: DropReason::RateLimited,
            count,
        };
        let batch = vec![
            datagram(1, b"STATUS=one"),
            limited(2, 3),
            datagram(3, b"STATUS=two"),
        ];
        hub.accept_batch("web1", batch, &wake).await.unwrap();
        // Two submissions in a row: the writer may join their drops into one row.
        hub.accept_batch("web1", vec![limited(4, 2)], &wake)
            .await
            .unwrap();
        hub.accept_batch("web1", vec![limited(5, 1)], &wake)
            .await
            .unwrap();
        // Applied once the writer notifies.
        tokio::time::timeout(Duration::from_secs(10), async {
            while hub.guest("web1").unwrap().snapshot().drops.rate_limited < 6 {
                wake.notified().await;
            }
        })
        .await
        .expect("the batches were applied");
        let before = view(&hub);
        assert_eq!(before["guests"][0]["guest"]["status"], "two");
        assert_eq!(before["guests"][0]["guest"]["messages"], 2);
        journal.close().await;

        let drops = texts(
            dir.path(),
            "SELECT data FROM inputs WHERE kind = 'drop' ORDER BY seq",
        );
        let total: u64 = drops
            .iter()
            .map(|data| match serde_json::from_str(data).unwrap() {
                StoredDrop::One(_) => 1,
                StoredDrop::Many { count, .. } => count,
            })
            .sum();
        assert_eq!(total, 6, "{drops:?}");
        assert!((2..=3).contains(&drops.len()), "{drops:?}");
        assert_eq!(drops[0], r#"{"reason":"rate_limited","count":3}"#);

        let (again, journal) = open(dir.path(), keep_all()).await;
        assert_eq!(view(&again), before);
        journal.close().await;
    }

    #[tokio::test]
    async fn one_hub_per_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (_hub, journal) = open(dir.path(), keep_all()).await;
        let error = Journal::open(dir.path(), keep_all(), &Hub::new()).unwrap_err();
        assert!(
            error.to_string().contains("in use by another notifyhub"),
            "{error:#}"
        );
        journal.close().await;
        // Free again once closed.
        let (_hub, journal) = open(dir.path(), keep_all()).await;
        journal.close().await;
    }

    #[tokio::test]
    async fn a_closed_journal_refuses_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, journal) = open(dir.path(), keep_all()).await;
        hub.accept_registration("web1", "/run/x/web1", Reach::Unix, at(0))
            .await
            .unwrap()
            .unwrap();
        journal.close().await;
        let refused = hub
            .accept_datagram("web1", at(1), unix(1), b"READY=1".to_vec(), vec![])
            .await;
        assert!(
            matches!(refused, Err(IngestError::NotStored(_))),
            "{refused:?}"
        );
        assert_eq!(hub.guest("web1").unwrap().snapshot().messages, 0);
    }

    #[test]
    fn state_dir_defaults() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.into())
            }
        };
        let all = &[
            ("STATE_DIRECTORY", "/var/lib/hub:/var/lib/other"),
            ("XDG_STATE_HOME", "/home/u/.state"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            default_state_dir(env(all), false).unwrap(),
            Path::new("/var/lib/hub")
        );
        let user = &[("XDG_STATE_HOME", "/home/u/.state"), ("HOME", "/home/u")];
        assert_eq!(
            default_state_dir(env(user), true).unwrap(),
            Path::new("/var/lib/notifyhub")
        );
        assert_eq!(
            default_state_dir(env(user), false).unwrap(),
            Path::new("/home/u/.state/notifyhub")
        );
        assert_eq!(
            default_state_dir(env(&[("HOME", "/home/u")]), false).unwrap(),
            Path::new("/home/u/.local/state/notifyhub")
        );
        assert!(default_state_dir(env(&[]), false).is_err());
    }
}
