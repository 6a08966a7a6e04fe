//! `notifyhub parse FILE...`: folds logs offline with the browser viewer's own reader
//! ([`notifyhub_wasm::LogReader`]), a chunk at a time.

use std::fs::File;
use std::io::{self, Read, Write as _};
use std::path::{Path, PathBuf};

use clap::Args;
use notifyhub_wasm::{LogReader, Replay};

use super::format::{escape_line, quote};
use super::{Failure, Result, exit};

/// The exit statuses of `parse`.
pub(crate) const EXITS: &[(u8, &str)] = &[
    (0, "every line of every file was read"),
    (
        exit::DATA,
        "some lines could not be read (they are listed and skipped; the rest is folded)",
    ),
    (
        exit::NO_INPUT,
        "a file could not be opened or read (the other files are still reported)",
    ),
    (exit::USAGE, "usage error"),
];

/// How much of a file is read at a time.
const CHUNK: usize = 64 * 1024;

/// Fold log files offline: each guest's phase, boots, status and end
///
/// The files are folded as the hub would have. A file may be a capture (JSON lines with "hex", as in shared/vectors), the hub's event log
/// ({"format":"notifyhub-events"} then one message per line), or plain text (KEY=VALUE lines,
/// a blank line between messages, # comments), mixed freely; "-" reads stdin. Each file is read
/// on its own, in chunks, with the same code as the browser viewer. Lines that cannot be read
/// are skipped and listed on stderr as FILE:LINE: why (stdout holds only the summaries).
#[derive(Debug, Args)]
#[command(after_long_help = super::exit_help(EXITS))]
pub(crate) struct ParseArgs {
    /// The logs to read; "-" for stdin.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// The guest that captures and plain text belong to [default: the file's name without its
    /// extension; "stdin" for -]. Event logs name their guests.
    #[arg(long, value_name = "NAME")]
    guest: Option<String>,
    /// Print the log reader's JSON, one line per file, in the order given.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: ParseArgs) -> Result {
    let mut unreadable = false;
    let mut bad_lines = 0;
    let several = args.files.len() > 1;
    for path in &args.files {
        let is_stdin = path.as_os_str() == "-";
        let shown = if is_stdin {
            "<stdin>".to_owned()
        } else {
            escape_line(&path.to_string_lossy())
        };
        let guest = args
            .guest
            .clone()
            .unwrap_or_else(|| default_guest(path, is_stdin));
        let replay = match read_log(path, is_stdin, guest) {
            Ok(replay) => replay,
            Err(error) => {
                Failure::new(exit::NO_INPUT, format_args!("{shown}: {error}")).report();
                unreadable = true;
                continue;
            }
        };
        bad_lines += replay.errors_total;
        let mut stdout = io::stdout().lock();
        if args.json {
            writeln!(stdout, "{}", replay.to_json())?;
        } else {
            if several {
                writeln!(stdout, "==> {shown} <==")?;
            }
            stdout.write_all(summary(&replay).as_bytes())?;
            // The bad lines after the summary they belong to, each fact in its stream.
            stdout.flush()?;
            let _ = io::stderr()
                .lock()
                .write_all(bad_lines_of(&replay, &shown).as_bytes());
        }
    }
    if unreadable {
        // Each file was named as it failed.
        return Err(Failure::Exit(exit::NO_INPUT));
    }
    if bad_lines > 0 {
        let listed = if args.json {
            "in the JSON's \"errors\""
        } else {
            "listed above on stderr"
        };
        return Err(Failure::new(
            exit::DATA,
            format_args!(
                "{bad_lines} line{} could not be read ({listed}) and {} skipped",
                plural(bad_lines),
                if bad_lines == 1 { "was" } else { "were" }
            ),
        ));
    }
    Ok(())
}

/// The file's name without its extension, else `log`.
fn default_guest(path: &Path, is_stdin: bool) -> String {
    if is_stdin {
        return "stdin".to_owned();
    }
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .filter(|stem| !stem.is_empty())
        .unwrap_or_else(|| "log".to_owned())
}

fn read_log(path: &Path, is_stdin: bool, guest: String) -> io::Result<Replay> {
    let mut reader = LogReader::new(guest);
    let mut input: Box<dyn Read> = if is_stdin {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(path)?)
    };
    let mut buffer = vec![0_u8; CHUNK];
    loop {
        match input.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => reader.push(&buffer[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(reader.finish())
}

/// What a person wants to know of a replay: per guest its end state.
fn summary(replay: &Replay) -> String {
    let mut out = String::new();
    let formats = &replay.formats;
    let messages = formats.capture + formats.events + formats.text;
    let mut kinds = Vec::new();
    for (count, kind) in [
        (formats.capture, "capture"),
        (formats.events, "event log"),
        (formats.text, "plain text"),
    ] {
        if count > 0 {
            kinds.push(format!("{count} {kind}"));
        }
    }
    out.push_str(&format!(
        "{} line{}, {messages} message{}{}\n",
        replay.lines,
        plural(replay.lines),
        plural(messages),
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        }
    ));
    for guest in &replay.guests {
        let snapshot = &guest.snapshot;
        out.push_str(&format!("guest {}\n", escape_line(&snapshot.name)));
        let mut rows = vec![
            ("phase", snapshot.phase.to_string()),
            ("boots", snapshot.boot_count.to_string()),
            (
                "status",
                snapshot
                    .status
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), quote),
            ),
        ];
        if let Some(hostname) = &snapshot.hostname {
            rows.push(("hostname", escape_line(hostname)));
        }
        let shutdown = match &snapshot.shutdown {
            Some(shutdown) => {
                let mut text = escape_line(&shutdown.verb);
                if let Some(parameter) = &shutdown.reboot_parameter {
                    text.push_str(&format!(" {}", quote(parameter)));
                }
                match snapshot.exit_status {
                    Some(code) => text.push_str(&format!(", exit status {code}")),
                    None => text.push_str(", exit status unknown"),
                }
                text
            }
            None => "-".to_owned(),
        };
        rows.push(("shutdown", shutdown));
        if snapshot.failed_boot {
            rows.push((
                "failed boot",
                "yes: emergency.target or rescue.target".to_owned(),
            ));
        }
        let drops = snapshot.drops.total();
        rows.push((
            "messages",
            format!("{} ({drops} dropped)", guest.messages_total),
        ));
        for (label, value) in rows {
            out.push_str(&format!("  {:<10} {value}\n", format!("{label}:")));
        }
    }
    out
}

/// The lines of a replay that could not be read, as `FILE:LINE: why`, `shown` being the file.
fn bad_lines_of(replay: &Replay, shown: &str) -> String {
    let mut out = String::new();
    for error in &replay.errors {
        out.push_str(&format!(
            "{shown}:{}: {}\n",
            error.line,
            escape_line(&error.message)
        ));
    }
    let unlisted = replay.errors_total - replay.errors.len() as u64;
    if unlisted > 0 {
        out.push_str(&format!(
            "{shown}: {unlisted} more bad lines not listed ({} in all)\n",
            replay.errors_total
        ));
    }
    out
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(guest: &str, text: &[u8], chunk: usize) -> Replay {
        let mut reader = LogReader::new(guest);
        for part in text.chunks(chunk) {
            reader.push(part);
        }
        reader.finish()
    }

    #[test]
    fn plain_text_summary() {
        let log = b"X_SYSTEMD_HOSTNAME=h1\n\nREADY=1\nSTATUS=Up\n\nnot a line\n\
                    \nEXIT_STATUS=3\nX_SYSTEMD_SHUTDOWN=poweroff\n";
        let replay = replay("web1", log, 5);
        let text = summary(&replay);
        assert_eq!(
            text,
            "9 lines, 3 messages (3 plain text)\n\
             guest web1\n\
             \x20 phase:     off\n\
             \x20 boots:     1\n\
             \x20 status:    \"Up\"\n\
             \x20 hostname:  h1\n\
             \x20 shutdown:  poweroff, exit status 3\n\
             \x20 messages:  3 (0 dropped)\n"
        );
        assert_eq!(
            bad_lines_of(&replay, "log.txt"),
            "log.txt:6: expected a JSON object, a KEY=VALUE line or a blank line\n"
        );
    }

    #[test]
    fn default_guest_names() {
        assert_eq!(default_guest(Path::new("/x/boot.jsonl"), false), "boot");
        assert_eq!(default_guest(Path::new("-"), true), "stdin");
        assert_eq!(default_guest(Path::new("/"), false), "log");
    }
}
