//! The hub's own sd_notify to the service manager that runs it (`Type=notify` units).
//!
//! `READY=1` once every listener and guest socket is bound, `STATUS=` with the guests per phase
//! while it runs, `WATCHDOG=1` at half the `WatchdogSec=` interval, `STOPPING=1` when it stops
//! (`sd_notify(3)`). Without `$NOTIFY_SOCKET` all of it does nothing. Sending uses the
//! `sd-notify` crate; the messages are built here from the hub's own counts, never from guest
//! text.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::store::Hub;

/// How often the `STATUS=` line is refreshed when guests change phase.
const STATUS_PERIOD: Duration = Duration::from_secs(2);

/// The one-line status: the number of guests, then those in each phase that has any, e.g.
/// `3 guests: 2 ready, 1 booting`.
pub fn status_line(hub: &Hub) -> String {
    let counts = hub.phase_counts();
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    let phases: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(phase, n)| format!("{n} {phase}"))
        .collect();
    let noun = if total == 1 { "guest" } else { "guests" };
    if phases.is_empty() {
        format!("{total} {noun}")
    } else {
        format!("{total} {noun}: {}", phases.join(", "))
    }
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        warn!(%error, "cannot notify the service manager");
    }
}

/// Tells the service manager the hub is ready, then keeps it informed until `shutdown`:
/// status changes and watchdog pings. Sends `STOPPING=1` when `shutdown` is cancelled.
pub async fn report(hub: Hub, shutdown: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut status = status_line(&hub);
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    debug!(%status, "READY=1 sent to the service manager");
    let watchdog = sd_notify::watchdog_enabled().map(|interval| interval / 2);
    let mut ping = watchdog.map(tokio::time::interval);
    let mut refresh = tokio::time::interval(STATUS_PERIOD);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = refresh.tick() => {
                let now = status_line(&hub);
                if now != status {
                    status = now;
                    notify(&[NotifyState::Status(&status)]);
                }
            }
            _ = async { ping.as_mut().expect("guarded").tick().await }, if ping.is_some() => {
                notify(&[NotifyState::Watchdog]);
            }
        }
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}
