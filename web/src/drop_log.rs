//! The log lines of guests' drops: every counted drop ends up in one, without a line per drop.
//!
//! Each guest and reason (`rate_limited`, `oversize`, `embedded_nul`, …, named as in the API's
//! `drops`) has a window of [`LOG_INTERVAL`]. The first drop of a burst is logged at once
//! ([`DropLog::note`] says so, and the caller writes its own line); the drops later in the
//! window are counted, and when the window ends a line sums them up:
//!
//! ```text
//! WARN 8208 more messages dropped (rate_limited) in the last 10.0 s guest="web1" reason="rate_limited" dropped=8208
//! ```
//!
//! A flood that goes on gets one such line per window; once a window ends with nothing
//! suppressed, the next drop is the first of a new burst. Reasons are throttled apart, so a
//! first `embedded_nul` is never hidden behind an `oversize` of the same second. The summaries
//! are written by a thread of their own (`drop-log`), which sleeps until the next window with
//! something to sum up ends, so a burst's remainder is logged even if the guest then goes
//! quiet; [`DropLog::flush`] writes what is pending at once (at shutdown).

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tracing::warn;

pub use crate::limit::LOG_INTERVAL;

/// The process's drop log.
static LOG: OnceLock<DropLog> = OnceLock::new();

/// The hub-wide drop log (one per process), its summary thread started on first use.
pub fn drop_log() -> &'static DropLog {
    static THREAD: OnceLock<()> = OnceLock::new();
    let log = LOG.get_or_init(DropLog::default);
    THREAD.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("drop-log".into())
            .spawn(move || log.run());
        if let Err(error) = spawned {
            warn!(%error, "cannot start the drop log's thread: drops are summed up at shutdown only");
        }
    });
    log
}

/// Logs what the hub-wide drop log still holds back ([`DropLog::flush`]), if anything was ever
/// dropped: at shutdown, once nothing drops any more.
pub fn flush() {
    if let Some(log) = LOG.get() {
        log.flush();
    }
}

/// Drop windows by guest and reason, and the condition its summary thread waits on.
#[derive(Debug, Default)]
pub struct DropLog {
    windows: Mutex<HashMap<(String, String), Window>>,
    /// Notified when a window gets its first suppressed drop: the thread may sleep less.
    pending: Condvar,
}

/// One guest's window for one reason.
#[derive(Clone, Copy, Debug)]
struct Window {
    /// When its last line was logged.
    opened: Instant,
    /// Drops counted since then, not in any line yet.
    unlogged: u64,
}

/// A line summing up the drops a window suppressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The guest.
    pub guest: String,
    /// The reason, as in the API's `drops`.
    pub reason: String,
    /// Drops since the window's last line.
    pub dropped: u64,
    /// Since that line.
    pub over: Duration,
}

impl DropLog {
    /// Counts `count` drops of guest `guest` for `reason` at `now`. Returns how many to log in
    /// a line now (these and any still unlogged) when this starts a window: the first drop of a
    /// burst, or the first after a window ended. `None`: counted, summed up later.
    pub fn note(&self, guest: &str, reason: &str, count: u64, now: Instant) -> Option<u64> {
        if count == 0 {
            return None;
        }
        let mut windows = self.lock();
        let key = (guest.to_owned(), reason.to_owned());
        match windows.get_mut(&key) {
            Some(window) if now.saturating_duration_since(window.opened) < LOG_INTERVAL => {
                if window.unlogged == 0 {
                    self.pending.notify_one();
                }
                window.unlogged += count;
                None
            }
            Some(window) => {
                let dropped = window.unlogged + count;
                *window = Window {
                    opened: now,
                    unlogged: 0,
                };
                Some(dropped)
            }
            None => {
                windows.insert(
                    key,
                    Window {
                        opened: now,
                        unlogged: 0,
                    },
                );
                Some(count)
            }
        }
    }

    /// Takes the summaries of the windows that ended by `now` with drops unlogged (each such
    /// window starts anew at `now`), forgets the windows that ended with none, and returns when
    /// the next window with unlogged drops ends.
    pub fn due(&self, now: Instant) -> (Vec<Summary>, Option<Instant>) {
        let mut windows = self.lock();
        let mut summaries = Vec::new();
        let mut next: Option<Instant> = None;
        windows.retain(|(guest, reason), window| {
            let over = now.saturating_duration_since(window.opened);
            if over < LOG_INTERVAL {
                if window.unlogged > 0 {
                    let ends = window.opened + LOG_INTERVAL;
                    next = Some(next.map_or(ends, |next| next.min(ends)));
                }
                return true;
            }
            if window.unlogged == 0 {
                return false;
            }
            summaries.push(Summary {
                guest: guest.clone(),
                reason: reason.clone(),
                dropped: std::mem::take(&mut window.unlogged),
                over,
            });
            window.opened = now;
            true
        });
        (summaries, next)
    }

    /// Takes the summaries of every window with drops unlogged, ended or not.
    pub fn take_all(&self, now: Instant) -> Vec<Summary> {
        let mut windows = self.lock();
        let mut summaries = Vec::new();
        for ((guest, reason), window) in windows.iter_mut() {
            if window.unlogged > 0 {
                summaries.push(Summary {
                    guest: guest.clone(),
                    reason: reason.clone(),
                    dropped: std::mem::take(&mut window.unlogged),
                    over: now.saturating_duration_since(window.opened),
                });
            }
        }
        summaries
    }

    /// Logs every drop not logged yet, window ended or not: at shutdown, once nothing drops
    /// any more.
    pub fn flush(&self) {
        for summary in self.take_all(Instant::now()) {
            log(&summary);
        }
    }

    /// The summary thread: logs each window's summary when it ends.
    fn run(&self) {
        loop {
            let (summaries, next) = self.due(Instant::now());
            for summary in &summaries {
                log(summary);
            }
            let windows = self.lock();
            // A drop noted between `due` and here notified no one: look again within a second.
            let sleep = next.map_or(Duration::from_secs(1), |next| {
                next.saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1))
            });
            let _ = self
                .pending
                .wait_timeout(windows, sleep)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Window>> {
        // Counters and instants: a poisoned lock still holds usable ones.
        self.windows.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes one summary line at warn.
fn log(summary: &Summary) {
    let Summary {
        guest,
        reason,
        dropped,
        over,
    } = summary;
    warn!(
        guest = guest.as_str(),
        reason = reason.as_str(),
        dropped,
        "{dropped} more messages dropped ({reason}) in the last {:.1} s",
        over.as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_drop_is_logged_and_the_rest_summed_up_when_the_window_ends() {
        let log = DropLog::default();
        let t0 = Instant::now();
        assert_eq!(log.note("a", "rate_limited", 1, t0), Some(1));
        for i in 1..=8208 {
            assert_eq!(
                log.note("a", "rate_limited", 1, t0 + Duration::from_micros(i)),
                None
            );
        }
        let (summaries, next) = log.due(t0 + Duration::from_secs(1));
        assert_eq!(summaries, []);
        assert_eq!(next, Some(t0 + LOG_INTERVAL));
        let (summaries, next) = log.due(t0 + LOG_INTERVAL);
        assert_eq!(
            summaries,
            [Summary {
                guest: "a".into(),
                reason: "rate_limited".into(),
                dropped: 8208,
                over: LOG_INTERVAL,
            }]
        );
        assert_eq!(next, None);
        // A quiet window ends the burst: the next drop is logged at once.
        let (summaries, _) = log.due(t0 + 2 * LOG_INTERVAL);
        assert_eq!(summaries, []);
        assert_eq!(
            log.note("a", "rate_limited", 3, t0 + 2 * LOG_INTERVAL),
            Some(3)
        );
    }

    #[test]
    fn reasons_and_guests_are_throttled_apart() {
        let log = DropLog::default();
        let t0 = Instant::now();
        assert_eq!(log.note("a", "oversize", 1, t0), Some(1));
        assert_eq!(log.note("a", "embedded_nul", 1, t0), Some(1));
        assert_eq!(log.note("b", "oversize", 1, t0), Some(1));
        assert_eq!(log.note("a", "oversize", 5, t0), None);
        let mut all = log.take_all(t0 + Duration::from_secs(2));
        all.sort_by(|x, y| x.reason.cmp(&y.reason));
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].reason.as_str(), all[0].dropped), ("oversize", 5));
    }

    #[test]
    fn a_drop_after_the_window_ended_takes_the_unlogged_ones_with_it() {
        let log = DropLog::default();
        let t0 = Instant::now();
        assert_eq!(log.note("a", "too_many_fds", 2, t0), Some(2));
        assert_eq!(log.note("a", "too_many_fds", 7, t0), None);
        // The summary thread has not come round yet: this line carries the 7.
        assert_eq!(log.note("a", "too_many_fds", 1, t0 + LOG_INTERVAL), Some(8));
        assert_eq!(log.take_all(t0 + LOG_INTERVAL), []);
    }
}
