//! `notifyhub wait NAME --for COND`: the hub's long-poll, as an exit status.

use std::io::Write as _;
use std::time::Duration;

use clap::Args;
use reqwest::StatusCode;

use super::client::{Hub, HubArgs};
use super::{Failure, Result, exit, format};

/// The exit statuses of `wait`.
pub(crate) const EXITS: &[(u8, &str)] = &[
    (
        0,
        "the condition holds; the guest's phase line (or JSON) is printed, and on stderr the \
         condition met",
    ),
    (exit::TIMEOUT, "the timeout passed first (HTTP 408)"),
    (
        exit::CANNOT_HOLD,
        "the condition can no longer hold in this boot, e.g. the guest failed or is stopping (409)",
    ),
    (
        exit::NO_GUEST,
        "no guest of that name (404), or it was removed while waiting (410)",
    ),
    (
        exit::HUB,
        "the hub is unreachable, shutting down (503), or gave an unexpected answer",
    ),
    (
        exit::USAGE,
        "usage error, including a condition or timeout the hub rejects (400)",
    ),
];

/// Slack on top of `--timeout` for the hub to answer a long-poll that timed out.
const ANSWER_SLACK: Duration = Duration::from_secs(30);

/// Wait until a guest reaches a condition (exit status 0), or say why it cannot
///
/// CONDITION is one of:
///   ready         READY=1 seen in this boot (phase ready or reloading)
///   booted        ready, and multi-user.target or graphical.target active
///   unit:UNIT     the target UNIT is active, e.g. unit:ssh-access.target
///   off           the guest sent its last message (X_SYSTEMD_SHUTDOWN=)
///   phase:PHASE   exactly PHASE: registered, booting, ready, reloading, stopping, off or failed
///
/// A wait gives up as soon as the condition can no longer hold in this boot (exit 3), except
/// that a wait begun while the guest is off or has sent nothing yet waits for its next boot: a
/// VMM can start waiting, then start the guest.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment, after_long_help = super::exit_help(EXITS))]
pub(crate) struct WaitArgs {
    /// The guest's name.
    name: String,
    /// What to wait for: ready, booted, off, unit:UNIT or phase:PHASE.
    #[arg(long = "for", value_name = "CONDITION")]
    condition: String,
    /// Give up after DURATION: seconds (60, 0.5) or with a unit (90s, 1500ms, 2m); the hub
    /// allows up to 1 hour.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "60",
        value_parser = notifyhub_web::config::parse_duration
    )]
    timeout: Duration,
    /// Print the hub's JSON answer on stdout, whatever the outcome (the guest's state for 0, 2
    /// and 3; {"error": ...} otherwise), instead of the phase line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(crate) hub: HubArgs,
}

pub(crate) async fn run(args: WaitArgs) -> Result {
    super::check_guest_name(&args.name)?;
    let hub = Hub::new(&args.hub)?;
    let mut url = hub.api_url(&["guests", &args.name, "wait"]);
    url.query_pairs_mut()
        .append_pair("for", &args.condition)
        .append_pair("timeout", &seconds(args.timeout));
    let patience = args.timeout.saturating_add(ANSWER_SLACK);
    let answer = hub.get(url, patience).await?;

    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", answer.body.trim_end())?;
    }
    let code = match answer.status {
        StatusCode::OK => {
            if !args.json {
                writeln!(stdout, "{}", format::phase_line(&answer.json()?))?;
            }
            stdout.flush()?;
            // Which condition was met: stdout stays the guest's state, for scripts.
            super::note(format_args!(
                "{} reached {}",
                args.name,
                format::escape_line(&args.condition)
            ));
            return Ok(());
        }
        StatusCode::REQUEST_TIMEOUT => exit::TIMEOUT,
        StatusCode::CONFLICT => exit::CANNOT_HOLD,
        StatusCode::NOT_FOUND | StatusCode::GONE => exit::NO_GUEST,
        _ => return Err(answer.unexpected()),
    };
    let mut message = answer.error_message();
    // A timeout's sentence does not say where the guest stands; the answer holds it.
    if answer.status == StatusCode::REQUEST_TIMEOUT
        && let Some(phase) = answer.json().ok().and_then(|body| {
            Some(format::escape_line(
                body.get("guest")?.get("phase")?.as_str()?,
            ))
        })
    {
        message.push_str(&format!(" (it is {phase})"));
    }
    Err(Failure::new(code, message))
}

/// `duration` as the hub's `timeout=SECONDS`: a plain decimal.
fn seconds(duration: Duration) -> String {
    duration.as_secs_f64().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_reach_the_hub_as_plain_decimals() {
        let parse = |text| seconds(notifyhub_web::config::parse_duration(text).unwrap());
        assert_eq!(parse("60"), "60");
        assert_eq!(parse("0.5"), "0.5");
        assert_eq!(parse("1500ms"), "1.5");
        assert_eq!(parse("2m"), "120");
        assert_eq!(parse("0"), "0");
        assert_eq!(seconds(Duration::from_secs(1_000_000_000)), "1000000000");
    }
}
