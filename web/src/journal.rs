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
//! - `inputs(seq, guest, kind, at, data, fds, bytes)`: one row per input, `seq` the global order
//!   (given by the writer, never used twice, also after the newest rows were pruned); `kind` is
//!   `register`, `datagram`, `drop`, `timeout` or `remove`; `at` µs since the epoch. A
//!   registration's `data` holds its reach, readiness timeout and socket mode and owner. The
//!   index `inputs_by_guest(guest, seq)` is how retention, removals and the replay of a
//!   checkpoint's history find a guest's rows ([`ROWS_OF_GUEST`]): their cost follows the
//!   guest's own rows, however many other guests write at the same time (per-commit spans of a
//!   guest's `seq`s, tried instead to save the index's insert, hold every guest writing in the
//!   same commits, which made pruning 100 flooding guests cost the whole table each time).
//! - `applied_runs(first, ids)`: written after a commit's inputs were applied, one row per commit
//!   (with the next commit): for inputs `first`, `first + 1`, … in order, the hub event ids
//!   around each, and for an accepted datagram its number in the guest's history, as LEB128
//!   varints (a few bytes per input; [`Ids`]). Replay takes the ids from here, so that rows
//!   deleted by retention or by a guest's removal leave the other events' ids as they were;
//!   inputs past the end of the last run (a crash between two commits) are recomputed.
//!   Schema 1 had a row per input here (`applied(seq, events_before, events_after, accepted)`);
//!   [`Journal::open`] migrates such a database in one transaction and refuses a newer one.
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
//!
//! Bounds. Retention (`--retain-days`, `--retain-messages`) runs at start and every
//! [`PRUNE_INTERVAL`]; `--retain-messages` also as the writer goes: it counts each guest's
//! datagram rows and prunes a guest that passes the limit by a quarter (at least 64) right
//! after that commit. The WAL is checkpointed by the writer itself once it passes
//! [`WAL_SIZE_LIMIT`]. The database is `auto_vacuum = INCREMENTAL`: deleted rows' pages go back
//! to the file system after the hourly retention, a removal and at shutdown. The database
//! files are mode 0600 (they hold every datagram), a state directory the journal makes 0700.
//! Of each datagram's fds only the first is held until it is applied ([`Arrival::Datagram`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{DirBuilder, File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use notifyhub_core::{DropReason, Guest, Sender, Timestamp};
use notifyhub_transport_unix::SocketAccess;
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
pub const SCHEMA_VERSION: i64 = 2;

/// Inputs one transaction takes at most.
pub const MAX_BATCH: usize = 4096;

/// Inputs that may wait for the writer before submitters wait (the queue's bound).
pub const QUEUE: usize = 8192;

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

/// The rows of guest `?1`, as a `FROM … WHERE` clause over `inputs i` (through the index
/// `inputs_by_guest`).
const ROWS_OF_GUEST: &str = "inputs i WHERE i.guest = ?1";

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
    #[arg(long, value_name = "DAYS", default_value_t = DEFAULT_RETAIN_DAYS,
          value_parser = crate::config::integer_in(0_u64, 36_500))]
    pub retain_days: u64,
    /// Keep each guest's newest N stored messages (0: keep all). A guest's state stays.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RETAIN_MESSAGES,
          value_parser = crate::config::integer_in(0_u64, u64::from(u32::MAX)))]
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
        /// Its notify socket's own mode and owner; `None`: the hub's (`--socket-mode`).
        access: Option<SocketAccess>,
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
            access,
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
            if registered.is_ok() {
                hub.set_socket_access(&name, access);
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
        self.accept_registration_with_access(name, notify_socket, reach, None, now)
            .await
    }

    /// [`Hub::accept_registration`] of a guest whose notify socket has a mode and owner of its
    /// own (`access`, stored with it: [`Hub::socket_access`] gives it back after a restart).
    ///
    /// # Errors
    /// As [`Hub::accept_registration`].
    pub async fn accept_registration_with_access(
        &self,
        name: &str,
        notify_socket: &str,
        reach: Reach,
        access: Option<SocketAccess>,
        now: Timestamp,
    ) -> Result<Result<GuestDetail, AlreadyRegistered>, NotStored> {
        let Some(writer) = self.journal() else {
            let registered = self.register_with(name, notify_socket, reach, now);
            if registered.is_ok() {
                self.set_socket_access(name, access);
            }
            return Ok(registered);
        };
        let input = Input::Register {
            name: name.to_owned(),
            notify_socket: notify_socket.to_owned(),
            reach,
            ready_timeout: self.ready_timeout(),
            access,
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
                        held,
                    } => {
                        match self.ingest_with(name, at, sender, bytes, fds, Publish::Later) {
                            Ok(_) => {}
                            Err(IngestError::Rejected(error)) => {
                                debug!(guest = name, %error, "datagram rejected");
                            }
                            Err(error) => return Err(error),
                        }
                        fds_of_batch.extend(held);
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
                    held,
                } => (
                    Input::Datagram {
                        name: name.to_owned(),
                        at,
                        sender,
                        bytes,
                        fds,
                    },
                    held.into_iter().collect(),
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
    /// A whole datagram, received at `at` from `sender`, with `fds` fds, of which only the
    /// first is still open (`held`).
    Datagram {
        /// When it was received.
        at: Timestamp,
        /// Who sent it.
        sender: Sender,
        /// The datagram, exactly.
        bytes: Vec<u8>,
        /// How many fds came with it (the core's and the journal's rules need the exact
        /// count: `BARRIER=1` takes exactly one, `MAINPIDFD=1` one).
        fds: usize,
        /// The first of them, closed once the datagram is stored and published: a `BARRIER=1`
        /// sender waits for that (`sd_notify_barrier(3)`: exactly one fd). The receive loop
        /// closes the others at once, so that inputs in flight ([`QUEUE`]) hold one fd each at
        /// most: holding all of them ran the hub into `RLIMIT_NOFILE`, and the kernel then
        /// truncated the next datagram's fds (`MSG_CTRUNC`, dropped as `too_many_fds`).
        held: Option<OwnedFd>,
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
    /// The socket's own mode and owner; absent in rows of schema 1 (which did not keep it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access: Option<StoredAccess>,
}

/// A [`SocketAccess`] as a registration row keeps it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct StoredAccess {
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
}

impl From<SocketAccess> for StoredAccess {
    fn from(access: SocketAccess) -> Self {
        Self {
            mode: access.mode,
            owner: access.owner,
            group: access.group,
        }
    }
}

impl From<StoredAccess> for SocketAccess {
    fn from(access: StoredAccess) -> Self {
        Self {
            mode: access.mode,
            owner: access.owner,
            group: access.group,
        }
    }
}

impl Registration {
    fn new(
        notify_socket: &str,
        reach: &Reach,
        ready_timeout: Option<Duration>,
        access: Option<SocketAccess>,
    ) -> Self {
        Self {
            notify_socket: notify_socket.to_owned(),
            cid: reach.kernel_cid(),
            hybrid: reach
                .hybrid()
                .map(|hybrid| (hybrid.uds_path().to_owned(), hybrid.port(), hybrid.cid())),
            ready_timeout_us: ready_timeout
                .map(|timeout| u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX)),
            access: access.map(StoredAccess::from),
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
        let started = Instant::now();
        let (replayed, rows) = replay(&mut connection, hub)
            .with_context(|| format!("cannot replay the journal in {}", dir.display()))?;
        let elapsed = started.elapsed();
        let next_seq = next_seq(&connection)?;
        let (commands, queue) = mpsc::unbounded_channel();
        let thread = {
            let hub = hub.clone();
            let mut writer = WriterThread {
                connection,
                path: dir.join(DATABASE),
                hub,
                retention,
                last_prune: None,
                next_seq,
                applied: Vec::new(),
                removed: Vec::new(),
                rows,
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
            elapsed_ms = elapsed.as_millis(),
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

/// Creates the database file `path` (and makes it and its `-wal` and `-shm` files, which
/// SQLite creates with the database's mode) readable by the hub's user only, mode 0600: they
/// hold every datagram as received.
fn restrict_files(path: &Path) -> anyhow::Result<()> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the journal {}", path.display()))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = Path::new(&file);
        match std::fs::metadata(file) {
            Ok(metadata) if metadata.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot make {} mode 0600", file.display()))?;
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", file.display()));
            }
        }
    }
    Ok(())
}

/// The WAL's size kept after a checkpoint (`PRAGMA journal_size_limit`): a burst, or the
/// one-time `VACUUM` of [`open_database`], grows it, and it shrinks back to this.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

fn open_database(path: &Path) -> anyhow::Result<Connection> {
    restrict_files(path)?;
    let mut connection = Connection::open(path)
        .with_context(|| format!("cannot open the journal {}", path.display()))?;
    let tables: i64 =
        connection.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))?;
    if tables == 0 {
        // Only possible before the first table: deleted rows' pages can go back to the file
        // system (`give_back_space`) instead of staying in the file forever.
        connection.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .context("cannot switch the journal to WAL")?;
    connection.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    // The writer's own checkpoints would stall it on their fsyncs: a thread of its own runs
    // them (`Checkpointer`).
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        anyhow::bail!(
            "the journal {} has schema version {version}, newer than this notifyhub's \
             {SCHEMA_VERSION}: it was written by a newer notifyhub; run that one, or move the \
             state directory away to start afresh",
            path.display()
        );
    }
    let transaction = connection.transaction()?;
    transaction.execute_batch(
        "CREATE TABLE IF NOT EXISTS inputs (
             seq INTEGER PRIMARY KEY,
             guest TEXT NOT NULL,
             kind TEXT NOT NULL,
             at INTEGER NOT NULL,
             data TEXT,
             fds INTEGER NOT NULL DEFAULT 0,
             bytes BLOB
         );
         CREATE INDEX IF NOT EXISTS inputs_by_guest ON inputs (guest, seq);
         CREATE TABLE IF NOT EXISTS applied_runs (
             first INTEGER PRIMARY KEY,
             ids BLOB NOT NULL
         );
         CREATE TABLE IF NOT EXISTS checkpoints (
             guest TEXT PRIMARY KEY,
             seq INTEGER NOT NULL,
             state TEXT NOT NULL
         );",
    )?;
    if version == 1 {
        let runs = migrate_applied_rows(&transaction)
            .with_context(|| format!("cannot migrate the journal {}", path.display()))?;
        info!(path = %path.display(), runs, "journal migrated from schema 1 to 2");
    }
    transaction.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    transaction.commit()?;
    vacuum_once(&connection, path)?;
    Ok(connection)
}

/// Turns on `auto_vacuum = INCREMENTAL` in a database made without it (by a notifyhub before
/// it), which takes a `VACUUM`, a copy of the whole database: only when most of the file is
/// free pages (a flood that retention pruned), so that the copy is small and the space comes
/// back. Other such databases reuse their free pages for new rows and are left as they are.
fn vacuum_once(connection: &Connection, path: &Path) -> anyhow::Result<()> {
    let pragma = |name: &str| -> rusqlite::Result<i64> {
        connection.pragma_query_value(None, name, |row| row.get(0))
    };
    // 0: none, 1: full, 2: incremental.
    if pragma("auto_vacuum")? != 0 {
        return Ok(());
    }
    let (pages, free) = (pragma("page_count")?, pragma("freelist_count")?);
    if free * 2 <= pages {
        return Ok(());
    }
    let started = Instant::now();
    connection.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    connection
        .execute_batch("VACUUM")
        .with_context(|| format!("cannot vacuum the journal {}", path.display()))?;
    info!(
        path = %path.display(),
        pages,
        free,
        elapsed_ms = started.elapsed().as_millis(),
        "journal vacuumed: its free pages go back to the file system from now on"
    );
    Ok(())
}

/// Schema 1 → 2: folds the `applied` table (a row per input) into `applied_runs` (a row per run
/// of consecutive inputs, at most [`MAX_BATCH`] each) and drops it. Returns the runs written.
fn migrate_applied_rows(transaction: &Transaction<'_>) -> anyhow::Result<usize> {
    let mut rows = Vec::new();
    {
        let mut statement = transaction.prepare(
            "SELECT seq, events_before, events_after, accepted FROM applied ORDER BY seq",
        )?;
        let mut query = statement.query([])?;
        while let Some(row) = query.next()? {
            rows.push(Applied {
                seq: row.get(0)?,
                ids: Ids {
                    events_before: u64::try_from(row.get::<_, i64>(1)?)?,
                    events_after: u64::try_from(row.get::<_, i64>(2)?)?,
                    accepted: row
                        .get::<_, Option<i64>>(3)?
                        .map(u64::try_from)
                        .transpose()?,
                },
            });
        }
    }
    let runs = store_runs(transaction, &rows)?;
    transaction.execute_batch("DROP TABLE applied;")?;
    Ok(runs)
}

/// The `seq` the writer gives its next input: past every `seq` used before, also one whose
/// row retention deleted (a checkpoint or a run of ids still names it).
fn next_seq(connection: &Connection) -> rusqlite::Result<i64> {
    let newest: Option<i64> = connection.query_row(
        "SELECT max(seq) FROM (SELECT max(seq) AS seq FROM inputs
             UNION ALL SELECT max(seq) FROM checkpoints
             UNION ALL SELECT max(first) FROM applied_runs)",
        [],
        |row| row.get(0),
    )?;
    Ok(newest.unwrap_or(0) + 1)
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
                access: registration.access.map(SocketAccess::from),
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

/// Stores `input` as row `seq`.
fn insert(transaction: &Transaction<'_>, seq: i64, input: &Input) -> rusqlite::Result<()> {
    let mut statement = transaction.prepare_cached(
        "INSERT INTO inputs (seq, guest, kind, at, data, fds, bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let (data, fds, bytes): (Option<String>, i64, Option<&[u8]>) = match input {
        Input::Register {
            notify_socket,
            reach,
            ready_timeout,
            access,
            ..
        } => (
            Some(json(&Registration::new(
                notify_socket,
                reach,
                *ready_timeout,
                *access,
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
        seq,
        input.guest(),
        input.kind(),
        to_sql_time(input.at()),
        data,
        fds,
        bytes
    ])?;
    Ok(())
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
///
/// Also returns how many rows each guest has (for [`WriterThread::rows`]).
fn replay(
    connection: &mut Connection,
    hub: &Hub,
) -> anyhow::Result<(Replayed, HashMap<String, u64>)> {
    let _replaying = hub.replaying();
    let mut replayed = Replayed::default();
    let configured_timeout = hub.ready_timeout();
    let history = hub.limits().history;
    let mut starts: HashMap<String, i64> = HashMap::new();
    // Restored in `seq` order among the inputs, so that every event id comes out as it was.
    let mut pending = VecDeque::new();
    let mut missing = Vec::new();
    // Guests with inputs replayed, to publish once at the end.
    let mut touched: HashSet<String> = HashSet::new();
    let mut rows_of: HashMap<String, u64> = HashMap::new();
    {
        let connection = &*connection;
        let mut ids = RunLookup::new(connection)?;
        let mut checkpoints =
            connection.prepare("SELECT guest, seq, state FROM checkpoints ORDER BY seq")?;
        let mut records = connection.prepare(&format!(
            "SELECT i.seq, i.at, i.data, i.fds, i.bytes FROM {ROWS_OF_GUEST}
             AND i.kind = 'datagram' AND i.seq <= ?2 ORDER BY i.seq DESC"
        ))?;
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
            // Its newest accepted datagrams up to the checkpoint, newest first.
            let mut kept = Vec::new();
            let mut rows = records.query(params![name, seq])?;
            while kept.len() < history {
                let Some(row) = rows.next()? else { break };
                let Some(accepted) = ids.get(row.get(0)?)?.and_then(|ids| ids.accepted) else {
                    continue; // Rejected by the core: not in the history.
                };
                kept.push(Record {
                    seq: accepted,
                    received_at: Timestamp::from_micros(u64::try_from(row.get::<_, i64>(1)?)?),
                    sender: serde_json::from_str(&row.get::<_, String>(2)?)?,
                    fds: usize::try_from(row.get::<_, i64>(3)?)?,
                    bytes: row.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default().into(),
                });
            }
            kept.reverse();
            starts.insert(name.clone(), seq);
            pending.push_back((seq, name, state, kept));
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
                let access = state.registration.access.map(SocketAccess::from);
                hub.set_socket_access(&name, access);
                replayed.checkpoints += 1;
            }
            Ok(())
        };
        let mut statement = connection
            .prepare("SELECT seq, guest, kind, at, data, fds, bytes FROM inputs ORDER BY seq")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let guest: String = row.get(1)?;
            let seq: i64 = row.get(0)?;
            match rows_of.get_mut(&guest) {
                Some(count) => *count += 1,
                None => {
                    rows_of.insert(guest.clone(), 1);
                }
            }
            let kind: String = row.get(2)?;
            restore_up_to(seq)?;
            if starts.get(&guest).is_some_and(|&start| seq <= start) {
                continue;
            }
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
            let recorded = ids.get(seq)?;
            if let Some(recorded) = recorded {
                hub.resume_event_ids(recorded.events_before);
            }
            let before = hub.last_event_id();
            if !touched.contains(input.guest()) {
                touched.insert(input.guest().to_owned());
            }
            // Published once at the end: a snapshot per input is most of a replay's time.
            let outcome = apply(hub, input, Publish::Later);
            match recorded {
                Some(recorded) => hub.resume_event_ids(recorded.events_after),
                None => missing.push(Applied {
                    seq,
                    ids: Ids {
                        events_before: before,
                        events_after: hub.last_event_id(),
                        accepted: accepted(&outcome),
                    },
                }),
            }
            replayed.inputs += 1;
        }
        restore_up_to(i64::MAX)?;
    }
    for name in &touched {
        hub.publish(name);
    }
    hub.set_ready_timeout(configured_timeout);
    // Inputs of the last batch before a crash were stored but their ids were not: store them.
    let transaction = connection.transaction()?;
    store_runs(&transaction, &missing)?;
    transaction.commit()?;
    replayed.guests = hub.guests().guests.len();
    Ok((replayed, rows_of))
}

fn accepted(outcome: &Outcome) -> Option<u64> {
    match outcome {
        Outcome::Ingested(Ok(seq)) => Some(*seq),
        _ => None,
    }
}

/// What applying one input gave, as a run of `applied_runs` keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ids {
    /// The hub's last event id before the input.
    events_before: u64,
    /// The hub's last event id after it.
    events_after: u64,
    /// For an accepted datagram, its number in the guest's history (1 for the first).
    accepted: Option<u64>,
}

/// Input `seq`'s [`Ids`], until they are stored ([`store_runs`]).
#[derive(Clone, Copy, Debug)]
struct Applied {
    seq: i64,
    ids: Ids,
}

/// Stores `applied` (in `seq` order) as rows of `applied_runs`, one per run of consecutive
/// inputs (at most [`MAX_BATCH`] each). Returns how many rows it wrote.
fn store_runs(transaction: &Transaction<'_>, applied: &[Applied]) -> rusqlite::Result<usize> {
    let mut statement = transaction
        .prepare_cached("INSERT OR REPLACE INTO applied_runs (first, ids) VALUES (?1, ?2)")?;
    let mut runs = 0;
    let mut rest = applied;
    while let Some(first) = rest.first() {
        let mut len = 1;
        while len < rest.len().min(MAX_BATCH)
            && rest[len].seq == rest[len - 1].seq + 1
            && rest[len].ids.events_before >= rest[len - 1].ids.events_after
        {
            len += 1;
        }
        let (run, after) = rest.split_at(len);
        statement.execute(params![first.seq, encode_run(run)])?;
        runs += 1;
        rest = after;
    }
    Ok(runs)
}

/// A run's `ids`: per input, three LEB128 varints: the event ids skipped since the previous
/// input of the run (for the first, the last id before it), the events it caused, and its
/// accepted number (0: none). Each input's ids must not be below the previous one's.
fn encode_run(run: &[Applied]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(run.len() * 4);
    let mut last = 0;
    for Applied { ids, .. } in run {
        // Never below: `store_runs` starts a new run rather (and ids never go back).
        put_varint(&mut blob, ids.events_before.saturating_sub(last));
        put_varint(
            &mut blob,
            ids.events_after.saturating_sub(ids.events_before),
        );
        put_varint(&mut blob, ids.accepted.unwrap_or(0));
        last = ids.events_after;
    }
    blob
}

/// The [`Ids`] of a run's inputs, in order ([`encode_run`]).
fn decode_run(mut blob: &[u8]) -> anyhow::Result<Vec<Ids>> {
    let mut run = Vec::with_capacity(blob.len() / 3);
    let mut last: u64 = 0;
    while !blob.is_empty() {
        let mut next = || take_varint(&mut blob).context("a truncated or oversized varint");
        let events_before = last.checked_add(next()?).context("an event id past 2^64")?;
        let events_after = events_before
            .checked_add(next()?)
            .context("an event id past 2^64")?;
        let accepted = Some(next()?).filter(|&number| number > 0);
        run.push(Ids {
            events_before,
            events_after,
            accepted,
        });
        last = events_after;
    }
    Ok(run)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads one LEB128 varint off the front of `bytes`; `None` if it is cut off or over 64 bits.
fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        if shift == 63 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Finds an input's [`Ids`] in `applied_runs` (the run with the greatest `first` at or below
/// its `seq`), keeping the last run read: inputs in `seq` order read each run once.
struct RunLookup<'c> {
    statement: rusqlite::Statement<'c>,
    run: Option<(i64, Vec<Ids>)>,
}

impl<'c> RunLookup<'c> {
    fn new(connection: &'c Connection) -> rusqlite::Result<Self> {
        let statement = connection.prepare(
            "SELECT first, ids FROM applied_runs WHERE first <= ?1 ORDER BY first DESC LIMIT 1",
        )?;
        Ok(Self {
            statement,
            run: None,
        })
    }

    /// Input `seq`'s ids; `None` when they were never stored.
    fn get(&mut self, seq: i64) -> anyhow::Result<Option<Ids>> {
        let index = |run: &(i64, Vec<Ids>)| {
            usize::try_from(seq - run.0)
                .ok()
                .filter(|&index| index < run.1.len())
        };
        if self.run.as_ref().and_then(index).is_none() {
            let found = self
                .statement
                .query_row([seq], |row| Ok((row.get(0)?, row.get::<_, Vec<u8>>(1)?)))
                .optional()?;
            self.run = match found {
                Some((first, blob)) => Some((
                    first,
                    decode_run(&blob).with_context(|| format!("bad ids of the run at {first}"))?,
                )),
                None => None,
            };
        }
        Ok(self.run.as_ref().and_then(|run| Some(run.1[index(run)?])))
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
    /// The `seq` of the next input stored ([`next_seq`]).
    next_seq: i64,
    /// Ids of inputs applied since the last commit (replay recomputes them if they are lost:
    /// no row is deleted before they are stored).
    applied: Vec<Applied>,
    /// Guests removed since the last commit, with their removal's `seq`: their history goes
    /// in the commit that stores the removal's ids.
    removed: Vec<(String, i64)>,
    /// How many rows each guest has now (counted by the replay, then as they are stored):
    /// `--retain-messages` applies as the writer goes ([`WriterThread::prune_over_limit`]),
    /// not only at the hourly retention. All kinds count, so that a guest whose datagrams are
    /// all dropped (a row per receive batch) is bounded too: pruning keeps only datagrams.
    rows: HashMap<String, u64>,
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
                give_back_space(&self.connection);
                break;
            }
            self.prune_over_limit();
            self.prune_if_due();
            self.bound_wal();
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
                if !self.removed.is_empty() {
                    self.removed.clear();
                    give_back_space(&self.connection);
                }
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
        let first = self.next_seq;
        let stored = (|| {
            let transaction = self.connection.transaction()?;
            for (seq, (input, _, _)) in (first..).zip(&batch.inputs) {
                insert(&transaction, seq, input)?;
            }
            bookkeeping(&transaction, &self.applied, &self.removed)?;
            transaction.commit()
        })();
        match stored {
            Ok(()) => {
                self.hub.metrics().observe_store_write(started.elapsed());
                self.applied.clear();
                self.removed.clear();
                self.next_seq += i64::try_from(batch.len()).unwrap_or(i64::MAX);
                for (input, _, _) in &batch.inputs {
                    let name = input.guest();
                    if let Input::Remove { .. } = input {
                        self.rows.remove(name);
                    } else if let Some(count) = self.rows.get_mut(name) {
                        *count += 1;
                    } else {
                        self.rows.insert(name.to_owned(), 1);
                    }
                }
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
        }
        // Guests whose new state is not published yet, in the order they were first touched.
        let mut unpublished: Vec<String> = Vec::new();
        let mut done = Vec::with_capacity(batch.len());
        for ((input, fds, reply), seq) in batch.inputs.drain(..).zip(first..) {
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
                ids: Ids {
                    events_before,
                    events_after: self.hub.last_event_id(),
                    accepted: accepted(&outcome),
                },
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

    /// Checkpoints the WAL from the writer itself once it is over [`WAL_SIZE_LIMIT`]. The
    /// checkpointer thread's checkpoints never catch up with a writer that commits all the
    /// time (a flood: hundreds of commits a second), and SQLite starts the WAL over only after
    /// a checkpoint that took every frame: without this the WAL grew by about 170 MB/s under a
    /// 4 KiB flood. Between two batches nothing is written, so this one takes every frame
    /// (most of them copied by the checkpointer already), the next commit starts the WAL over,
    /// and `journal_size_limit` truncates the file. The writer waits for its fsyncs once per
    /// [`WAL_SIZE_LIMIT`] of WAL.
    fn bound_wal(&mut self) {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        let size = std::fs::metadata(&wal).map_or(0, |metadata| metadata.len());
        if size <= WAL_SIZE_LIMIT.unsigned_abs() {
            return;
        }
        let checkpoint = self
            .connection
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                row.get::<_, i64>(0)
            });
        if let Err(error) = checkpoint {
            warn!(%error, "WAL checkpoint failed");
        }
    }

    /// Prunes each guest whose rows exceed `--retain-messages` by [`over_limit`]'s
    /// margin down to the limit (checkpoint and delete, as retention does, without its scan of
    /// every row), so that a flooding guest's rows stay bounded between the hourly runs. Runs
    /// between batches, when the hub holds every stored input.
    fn prune_over_limit(&mut self) {
        let Some(max) = self.retention.max_messages else {
            return;
        };
        let mut over: Vec<String> = self
            .rows
            .iter()
            .filter(|&(_, &count)| count > over_limit(max))
            .map(|(name, _)| name.clone())
            .collect();
        if over.is_empty() {
            return;
        }
        // Pruning deletes rows: the ids of those after them must be stored first.
        self.record();
        if !self.applied.is_empty() {
            return;
        }
        over.sort();
        let retention = Retention {
            max_age: None,
            ..self.retention
        };
        for name in over {
            let pruned = prune_guest(&mut self.connection, &self.hub, &name, retention, None)
                .and_then(|oldest| match oldest {
                    Some(oldest) => {
                        delete_empty_runs(&self.connection, oldest)?;
                        count_rows(&self.connection, &name).map(Some)
                    }
                    None => Ok(None),
                });
            match pruned {
                Ok(Some(count)) => {
                    debug!(
                        guest = name,
                        kept = count,
                        "journal pruned to --retain-messages"
                    );
                    self.rows.insert(name, count);
                }
                Ok(None) => {
                    // Removed (its rows go with the removal).
                    self.rows.remove(&name);
                }
                Err(error) => {
                    warn!(guest = name, %error, "cannot prune the journal");
                    // Not again after every batch: at the next hourly retention.
                    self.rows.insert(name, 0);
                }
            }
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
            Ok(guests) => {
                info!(guests, "journal pruned");
                match rows_per_guest(&self.connection) {
                    Ok(rows) => self.rows = rows,
                    Err(error) => warn!(%error, "cannot count the journal's rows"),
                }
                give_back_space(&self.connection);
            }
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
    store_runs(transaction, applied)?;
    for (name, seq) in removed {
        purge(transaction, name, *seq)?;
    }
    Ok(())
}

/// Deletes every row of removed guest `name` before its removal (input `seq`). Their ids stay
/// in their runs until retention finds a run with no input left ([`prune`]).
fn purge(transaction: &Transaction<'_>, name: &str, seq: i64) -> rusqlite::Result<()> {
    transaction.execute(
        &format!(
            "DELETE FROM inputs WHERE seq IN (SELECT i.seq FROM {ROWS_OF_GUEST} AND i.seq < ?2)"
        ),
        params![name, seq],
    )?;
    transaction.execute("DELETE FROM checkpoints WHERE guest = ?1", params![name])?;
    Ok(())
}

/// How many rows guest `name` may have before the writer prunes it down to `max` datagrams
/// (`--retain-messages`): a quarter more, at least 64, so that a flood prunes once per
/// `max / 4` inputs, not after each batch.
const fn over_limit(max: u64) -> u64 {
    let margin = if max / 4 > 64 { max / 4 } else { 64 };
    max.saturating_add(margin)
}

/// How many rows each guest has (one scan of `inputs`, which reads no blob).
fn rows_per_guest(connection: &Connection) -> rusqlite::Result<HashMap<String, u64>> {
    let mut statement = connection.prepare("SELECT guest, count(*) FROM inputs GROUP BY guest")?;
    let rows = statement.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    rows.map(|row| row.map(|(guest, count)| (guest, u64::try_from(count).unwrap_or(0))))
        .collect()
}

/// How many rows guest `name` has.
fn count_rows(connection: &Connection, name: &str) -> rusqlite::Result<u64> {
    let count: i64 = connection.query_row(
        &format!("SELECT count(*) FROM {ROWS_OF_GUEST}"),
        [name],
        |row| row.get(0),
    )?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Returns the database's free pages to the file system (`PRAGMA incremental_vacuum`, a no-op
/// unless `auto_vacuum` is incremental: see [`open_database`]). Called after the hourly
/// retention, a removal and at shutdown, not after each prune of a flooding guest, whose next
/// rows take the free pages again at once.
fn give_back_space(connection: &Connection) {
    // A row per page freed: it frees them as it is stepped through.
    let vacuumed = connection
        .prepare("PRAGMA incremental_vacuum")
        .and_then(|mut statement| {
            let mut rows = statement.query([])?;
            while rows.next()?.is_some() {}
            Ok(())
        });
    if let Err(error) = vacuumed {
        warn!(%error, "cannot give the journal's free pages back");
    }
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
    // One pass over the datagrams: how many each guest has, and whether one is too old.
    let mut datagrams: HashMap<String, (u64, bool)> = HashMap::new();
    {
        let mut statement =
            connection.prepare("SELECT guest, at FROM inputs WHERE kind = 'datagram'")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let old = cutoff.is_some_and(|cutoff| row.get::<_, i64>(1).is_ok_and(|at| at < cutoff));
            let guest = row.get_ref(0)?.as_str()?;
            match datagrams.get_mut(guest) {
                Some((count, any_old)) => {
                    *count += 1;
                    *any_old |= old;
                }
                None => {
                    datagrams.insert(guest.to_owned(), (1, old));
                }
            }
        }
    }
    let mut candidates: Vec<String> = datagrams
        .into_iter()
        .filter(|(_, (count, old))| *old || retention.max_messages.is_some_and(|max| *count > max))
        .map(|(guest, _)| guest)
        .collect();
    candidates.sort();
    let mut pruned = 0;
    for name in candidates {
        if prune_guest(connection, hub, &name, retention, cutoff)?.is_some() {
            pruned += 1;
        }
    }
    if pruned > 0 {
        delete_empty_runs(connection, 0)?;
    }
    Ok(pruned)
}

/// Deletes the rows of `applied_runs` from `from` on whose inputs are all gone (pruned, or
/// purged with a removal).
fn delete_empty_runs(connection: &Connection, from: i64) -> rusqlite::Result<usize> {
    connection.execute(
        "DELETE FROM applied_runs AS run WHERE run.first >= ?1 AND NOT EXISTS (
             SELECT 1 FROM inputs WHERE seq >= run.first AND seq < coalesce(
                 (SELECT min(first) FROM applied_runs WHERE first > run.first),
                 9223372036854775807))",
        [from],
    )
}

/// Checkpoints guest `name` at its newest input and deletes its older rows that `retention`
/// (with `cutoff`, µs since the epoch, for its age) does not keep, in one transaction. The hub
/// must hold every stored input. Returns the `seq` of its oldest row before, `None` if it is
/// not in the hub (removed: purged with its removal).
fn prune_guest(
    connection: &mut Connection,
    hub: &Hub,
    name: &str,
    retention: Retention,
    cutoff: Option<i64>,
) -> rusqlite::Result<Option<i64>> {
    let Some(state) = hub.checkpoint(name) else {
        return Ok(None);
    };
    let transaction = connection.transaction()?;
    let (Some(oldest), Some(newest)): (Option<i64>, Option<i64>) = transaction.query_row(
        &format!("SELECT min(i.seq), max(i.seq) FROM {ROWS_OF_GUEST}"),
        [name],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?
    else {
        return Ok(None);
    };
    // Recorded before pruning starts; the hub's last id is as good for a guest's newest input
    // when it is the newest of all.
    let recorded = RunLookup::new(&transaction)?
        .get(newest)
        .map_err(|error| rusqlite::Error::ToSqlConversionFailure(error.into()))?;
    let events_after = recorded.map_or_else(|| hub.last_event_id(), |ids| ids.events_after);
    let (guest, accepted, notify_socket, reach) = state;
    let access = hub.socket_access(name);
    let state = CheckpointState {
        registration: Registration::new(&notify_socket, &reach, None, access),
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
                &format!(
                    "SELECT i.seq FROM {ROWS_OF_GUEST} AND i.kind = 'datagram'
                         ORDER BY i.seq DESC LIMIT 1 OFFSET ?2"
                ),
                params![
                    name,
                    i64::try_from(max.saturating_sub(1)).unwrap_or(i64::MAX)
                ],
                |row| row.get(0),
            )
            .optional()?,
        None => None,
    };
    let doomed = "i.seq <= ?2 AND (i.kind != 'datagram' OR i.seq < ?3 OR i.at < ?4)";
    let keep_from = if retention.max_messages == Some(0) {
        i64::MAX
    } else {
        keep_from.unwrap_or(0)
    };
    let cutoff = cutoff.unwrap_or(i64::MIN);
    let arguments = params![name, newest, keep_from, cutoff];
    transaction.execute(
        &format!(
            "DELETE FROM inputs WHERE seq IN (SELECT i.seq FROM {ROWS_OF_GUEST} AND {doomed})"
        ),
        arguments,
    )?;
    transaction.commit()?;
    Ok(Some(oldest))
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

    /// Each guest's newest `n` datagrams, at any age.
    fn keep_newest(n: u64) -> Retention {
        Retention {
            max_age: None,
            max_messages: Some(n),
        }
    }

    /// The journal's database in `dir`, opened as it is (no migration, no replay).
    fn database(dir: &Path) -> Connection {
        Connection::open(dir.join(DATABASE)).unwrap()
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

    /// Retention, removals and replay find a guest's rows through `inputs_by_guest`, not by
    /// scanning the table.
    fn assert_rows_of_guest_use_the_index(dir: &Path) {
        let connection = Connection::open(dir.join(DATABASE)).unwrap();
        let sql = format!("EXPLAIN QUERY PLAN SELECT i.seq FROM {ROWS_OF_GUEST}");
        let mut statement = connection.prepare(&sql).unwrap();
        let plan: Vec<String> = statement
            .query_map(["g"], |row| row.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("INDEX inputs_by_guest (guest=?)")),
            "{plan:?}"
        );
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
        assert_rows_of_guest_use_the_index(dir.path());

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
            .execute("DELETE FROM applied_runs WHERE first > 5", [])
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
        assert_rows_of_guest_use_the_index(dir.path());

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

    /// `--retain-messages` holds while the writer goes: a flooding guest's datagram rows never
    /// pass the limit and its margin, other guests keep theirs, and a restart gives the same
    /// state and the newest history.
    #[tokio::test]
    async fn a_flooding_guest_is_pruned_as_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, journal) = open(dir.path(), keep_newest(100)).await;
        for name in ["web1", "web2"] {
            hub.accept_registration(name, "/run/x/g", Reach::Unix, at(0))
                .await
                .unwrap()
                .unwrap();
        }
        for i in 0..10 {
            let status = format!("STATUS=quiet {i}").into_bytes();
            hub.accept_datagram("web2", at(1), unix(2), status, vec![])
                .await
                .unwrap();
        }
        let connection = database(dir.path());
        let rows = |guest: &str| -> u64 { count_rows(&connection, guest).unwrap() };
        let mut most = 0;
        for i in 0..1000_u64 {
            let status = format!("STATUS=flood {i}").into_bytes();
            hub.accept_datagram("web1", at(2 + i), unix(1), status, vec![])
                .await
                .unwrap();
            most = most.max(rows("web1"));
        }
        assert_eq!(over_limit(100), 164);
        // Pruned to 100 datagrams each time it passed 164 rows (its registration and 164
        // datagrams the first time; a commit per datagram here).
        assert_eq!(most, 165);
        assert_eq!(rows("web1"), 100 + (1000 - 164) % 65);
        assert_eq!(rows("web2"), 11);
        assert_rows_of_guest_use_the_index(dir.path());
        let before = view(&hub);
        journal.close().await;

        let (again, journal) = open(dir.path(), keep_newest(100)).await;
        let after = view(&again);
        assert_eq!(after["last_event_id"], before["last_event_id"]);
        for i in 0..2 {
            let (was, is) = (&before["guests"][i], &after["guests"][i]);
            assert_eq!(is["guest"], was["guest"], "state and timeline");
        }
        let history = after["guests"][0]["history"].as_array().unwrap();
        let was = before["guests"][0]["history"].as_array().unwrap();
        // The checkpoint's 100 and the 56 after it.
        assert_eq!(history.len(), 156);
        assert_eq!(history[..], was[was.len() - history.len()..]);
        assert_eq!(
            after["guests"][1]["history"],
            before["guests"][1]["history"]
        );
        journal.close().await;
        // Retention at start took it down to 100.
        assert_eq!(rows("web1"), 100);
    }

    /// A guest whose every datagram is dropped (a row per receive batch) is bounded too, and
    /// keeps its drop count across a restart.
    #[tokio::test]
    async fn a_guest_of_drops_only_is_pruned_as_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, journal) = open(dir.path(), keep_newest(10)).await;
        hub.accept_registration("web1", "/run/x/g", Reach::Unix, at(0))
            .await
            .unwrap()
            .unwrap();
        let connection = database(dir.path());
        let mut most = 0;
        for i in 0..200 {
            let oversize = Arrival::Dropped {
                at: at(i),
                reason: DropReason::Oversize,
                count: 2,
            };
            let wake = Arc::new(Notify::new());
            hub.accept_batch("web1", vec![oversize], &wake)
                .await
                .unwrap();
            wake.notified().await;
            most = most.max(count_rows(&connection, "web1").unwrap());
        }
        assert_eq!(most, over_limit(10) + 1);
        let drops = hub.guest("web1").unwrap().snapshot().drops;
        assert_eq!(drops.oversize, 400);
        journal.close().await;
        let (again, journal) = open(dir.path(), keep_newest(10)).await;
        assert_eq!(again.guest("web1").unwrap().snapshot().drops, drops);
        journal.close().await;
    }

    /// The database and its WAL files are the hub's user's only (they hold every datagram); a
    /// state directory the hub makes is too, one that exists is left as it is.
    #[tokio::test]
    async fn the_journal_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let parent = tempfile::tempdir().unwrap();
        let made = parent.path().join("made/state");
        let (_hub, journal) = open(&made, keep_all()).await;
        assert_eq!(mode(&made), 0o700);
        assert_eq!(mode(&parent.path().join("made")), 0o700);
        for file in [
            DATABASE,
            "journal.sqlite3-wal",
            "journal.sqlite3-shm",
            LOCK_FILE,
        ] {
            assert_eq!(mode(&made.join(file)), 0o600, "{file}");
        }
        journal.close().await;

        // Of an older notifyhub, which left them 0644 in a 0755 directory.
        let given = tempfile::tempdir().unwrap();
        std::fs::set_permissions(given.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(database(given.path()));
        let database_file = given.path().join(DATABASE);
        std::fs::set_permissions(&database_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_hub, journal) = open(given.path(), keep_all()).await;
        assert_eq!(mode(given.path()), 0o755);
        assert_eq!(mode(&database_file), 0o600);
        assert_eq!(mode(&given.path().join("journal.sqlite3-wal")), 0o600);
        journal.close().await;
    }

    /// Pruned rows' pages go back to the file system: a new database is `auto_vacuum =
    /// INCREMENTAL`, and one without it that is mostly free pages is vacuumed once on open.
    #[tokio::test]
    async fn freed_pages_go_back_to_the_file_system() {
        let size = |dir: &Path| std::fs::metadata(dir.join(DATABASE)).unwrap().len();
        let auto_vacuum = |dir: &Path| -> i64 {
            database(dir)
                .pragma_query_value(None, "auto_vacuum", |row| row.get(0))
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let (hub, journal) = open(dir.path(), keep_all()).await;
        assert_eq!(auto_vacuum(dir.path()), 2);
        for name in ["web1", "web2"] {
            hub.accept_registration(name, "/run/x/g", Reach::Unix, at(0))
                .await
                .unwrap()
                .unwrap();
            let batch = (0..2000)
                .map(|i| Arrival::Datagram {
                    at: at(i),
                    sender: unix(1),
                    bytes: format!("STATUS={i}-{}", "Z".repeat(1000)).into_bytes(),
                    fds: 0,
                    held: None,
                })
                .collect();
            let wake = Arc::new(Notify::new());
            hub.accept_batch(name, batch, &wake).await.unwrap();
            wake.notified().await;
        }
        journal.close().await;
        checkpoint_wal(dir.path());
        let full = size(dir.path());
        assert!(full > 4_000_000, "{full} bytes");

        // Removing web2 frees half.
        let (hub, journal) = open(dir.path(), keep_all()).await;
        hub.accept_removal("web2").await.unwrap();
        journal.close().await;
        checkpoint_wal(dir.path());
        let half = size(dir.path());
        assert!(half < full * 6 / 10, "{half} of {full} bytes");

        // A database of before `auto_vacuum`, mostly free pages.
        let old = tempfile::tempdir().unwrap();
        let connection = database(old.path());
        connection
            .execute_batch(
                "CREATE TABLE filler (b BLOB);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                 INSERT INTO filler SELECT zeroblob(2000) FROM n;
                 DROP TABLE filler;",
            )
            .unwrap();
        drop(connection);
        let before = size(old.path());
        assert_eq!(auto_vacuum(old.path()), 0);
        let (_hub, journal) = open(old.path(), keep_all()).await;
        journal.close().await;
        checkpoint_wal(old.path());
        assert_eq!(auto_vacuum(old.path()), 2);
        let after = size(old.path());
        assert!(after < before / 10, "{after} of {before} bytes");
    }

    /// Moves the WAL into the database file, so that its size shows what the data takes.
    fn checkpoint_wal(dir: &Path) {
        database(dir)
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            })
            .unwrap();
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
            fds: 0,
            held: None,
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

    /// A journal of schema 1, as the notifyhub before it wrote it (see the fixture's
    /// `written_by`), is migrated on open, and replays to the guests that notifyhub showed, its
    /// histories (less what its retention deleted) and its last event id; new inputs go on from
    /// there, and it opens again as schema 2.
    #[tokio::test]
    async fn a_schema_1_journal_is_migrated_and_replays_to_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let connection = database(dir.path());
        connection
            .execute_batch(include_str!("../tests/fixtures/journal-schema1.sql"))
            .unwrap();
        drop(connection);
        let was: Value =
            serde_json::from_str(include_str!("../tests/fixtures/journal-schema1.json")).unwrap();
        // Its `applied` table's newest id.
        let last_id = 23;
        for round in ["migrated", "schema 2"] {
            let (hub, journal) = open(dir.path(), keep_all()).await;
            let guests = serde_json::to_value(hub.guests().guests).unwrap();
            assert_eq!(guests, was["guests"], "{round}");
            let view = view(&hub);
            for (name, kept) in [("api1", 3), ("hy1", 1), ("web1", 3)] {
                let history = &view["guests"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|guest| guest["guest"]["name"] == name)
                    .unwrap()["history"];
                let was = was["history"][name].as_array().unwrap();
                // web1's two oldest were deleted by retention; the rest is as it was.
                assert_eq!(
                    history.as_array().unwrap()[..],
                    was[was.len() - kept..],
                    "{name}"
                );
            }
            assert_eq!(hub.last_event_id(), last_id, "{round}");
            assert_eq!(hub.socket_access("api1"), None, "schema 1 did not keep it");
            journal.close().await;
        }
        let tables = texts(
            dir.path(),
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
        );
        assert_eq!(tables, ["applied_runs", "checkpoints", "inputs"]);
        let indexes = texts(
            dir.path(),
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'inputs'",
        );
        assert_eq!(indexes, ["inputs_by_guest"], "inputs_by_guest is kept");
        assert_rows_of_guest_use_the_index(dir.path());
        let (hub, journal) = open(dir.path(), keep_all()).await;
        hub.accept_datagram("api1", at(1), unix(9), b"STATUS=three".to_vec(), vec![])
            .await
            .unwrap();
        assert_eq!(hub.last_event_id(), last_id + 1);
        journal.close().await;
        assert_eq!(
            texts(dir.path(), "SELECT max(seq) || '' FROM inputs"),
            ["18"],
            "after schema 1's newest, 17"
        );
        let (again, journal) = open(dir.path(), keep_all()).await;
        assert_eq!(view(&again), view(&hub));
        journal.close().await;
    }

    #[tokio::test]
    async fn a_journal_of_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let connection = database(dir.path());
        connection
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(connection);
        let error = Journal::open(dir.path(), keep_all(), &Hub::new()).unwrap_err();
        assert!(
            format!("{error:#}").contains("has schema version 3, newer than this notifyhub's 2"),
            "{error:#}"
        );
        // Untouched.
        let connection = database(dir.path());
        let version: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION + 1);
    }

    /// Retention may delete the newest row of all (a guest's newest input, when it is not a
    /// datagram); the next input must not take its `seq`, which the guest's checkpoint covers:
    /// a restart would skip it.
    #[tokio::test]
    async fn a_pruned_newest_row_leaves_its_seq_unused() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, journal) = open(dir.path(), keep_all()).await;
        hub.accept_registration("web1", "/run/x/web1", Reach::Unix, at(0))
            .await
            .unwrap()
            .unwrap();
        for i in 0..3 {
            hub.accept_datagram("web1", at(i), unix(7), b"STATUS=before".to_vec(), vec![])
                .await
                .unwrap();
        }
        hub.accept_drop("web1", DropReason::Oversize).await.unwrap();
        journal.close().await;
        let mut connection = database(dir.path());
        let newest = |connection: &Connection| -> i64 {
            connection
                .query_row("SELECT max(seq) FROM inputs", [], |row| row.get(0))
                .unwrap()
        };
        let dropped = newest(&connection);
        assert_eq!(
            prune(&mut connection, &hub, keep_newest(1), at(10)).unwrap(),
            1
        );
        assert!(newest(&connection) < dropped, "the drop's row is gone");

        let (hub, journal) = open(dir.path(), keep_all()).await;
        hub.accept_datagram("web1", at(20), unix(7), b"STATUS=after".to_vec(), vec![])
            .await
            .unwrap();
        journal.close().await;
        assert_eq!(newest(&connection), dropped + 1);
        drop(connection);
        let (again, journal) = open(dir.path(), keep_all()).await;
        let snapshot = again.guest("web1").unwrap().summary.snapshot;
        assert_eq!(snapshot.status.as_deref(), Some("after"));
        assert_eq!((snapshot.messages, snapshot.drops.oversize), (4, 1));
        assert_eq!(view(&again), view(&hub));
        journal.close().await;
    }

    /// A guest's own socket mode and owner come back with it, from its registration row and
    /// from a checkpoint.
    #[tokio::test]
    async fn a_guest_keeps_its_socket_access() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, journal) = open(dir.path(), keep_all()).await;
        let own = SocketAccess {
            mode: 0o660,
            owner: Some(100_000),
            group: None,
        };
        hub.accept_registration_with_access("own", "/run/x/own", Reach::Unix, Some(own), at(0))
            .await
            .unwrap()
            .unwrap();
        hub.accept_registration("plain", "/run/x/plain", Reach::Unix, at(0))
            .await
            .unwrap()
            .unwrap();
        for i in 0..3 {
            hub.accept_datagram("own", at(i), unix(7), b"STATUS=up".to_vec(), vec![])
                .await
                .unwrap();
        }
        assert_eq!(hub.socket_access("own"), Some(own));
        journal.close().await;
        let (again, journal) = open(dir.path(), keep_all()).await;
        assert_eq!(again.socket_access("own"), Some(own));
        assert_eq!(again.socket_access("plain"), None);
        journal.close().await;
        // From a checkpoint: the registration row is pruned.
        let mut connection = database(dir.path());
        assert_eq!(
            prune(&mut connection, &again, keep_newest(1), at(10)).unwrap(),
            1
        );
        drop(connection);
        assert!(texts(dir.path(), "SELECT kind FROM inputs WHERE guest = 'own'") == ["datagram"]);
        let (restored, journal) = open(dir.path(), keep_all()).await;
        assert_eq!(restored.socket_access("own"), Some(own));
        let state = |hub: &Hub| serde_json::to_value(hub.guests().guests).unwrap();
        assert_eq!(state(&restored), state(&again));
        journal.close().await;
    }

    /// The ids of a run survive their encoding: large ids, gaps, rejected datagrams.
    #[test]
    fn runs_of_ids_round_trip() {
        let ids = [
            (0, 0, None),
            (0, 1, Some(1)),
            (5, 5, None),
            (5, 300, Some(u64::MAX)),
            (u64::MAX - 1, u64::MAX, Some(2)),
        ];
        let run: Vec<Applied> = (10..)
            .zip(ids)
            .map(|(seq, (events_before, events_after, accepted))| Applied {
                seq,
                ids: Ids {
                    events_before,
                    events_after,
                    accepted,
                },
            })
            .collect();
        let blob = encode_run(&run);
        let decoded = decode_run(&blob).unwrap();
        assert_eq!(decoded, run.iter().map(|a| a.ids).collect::<Vec<_>>());
        // Cut short, or a varint past 64 bits: an error, not a panic.
        assert!(decode_run(&blob[..blob.len() - 1]).is_err());
        assert!(decode_run(&[0xff; 11]).is_err());
        assert!(decode_run(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]).is_err());
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
