//! The hub's log on stderr, through `tracing`: plain lines for a terminal or a file, and lines
//! as the journal wants them when stderr is the journal (a systemd service).
//!
//! Under systemd, stderr is a stream to journald, which stamps every line with the time and
//! reads a leading `<N>` as its syslog priority (`sd-daemon(3)`, `SyslogLevelPrefix=` in
//! `systemd.exec(5)`, on by default). So when [`stderr_is_journal`], each event is one line:
//! `<N>`, then the target, message and fields, without a timestamp or colour, and with any line
//! break inside it written as `\n`, so that no text (a guest's, say) can start a journal entry of
//! its own. The fields are the same in both forms: `guest="web1"`, `reason=…`, `from=`/`to=`
//! for phase changes, so `journalctl -u notifyhub | grep 'guest="web1"'` finds a guest's lines.
//!
//! Native journal fields (`tracing-journald`) would add little: the priority already reaches
//! the journal, and the fields stay searchable as text, with one output path for every setup.

use std::ffi::OsStr;
use std::fmt;
use std::io::IsTerminal as _;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{self, DefaultFields, Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Whether `$JOURNAL_STREAM` (`DEV:INODE`, set by systemd for a service whose stderr or stdout
/// goes to the journal, `systemd.exec(5)`) names the file `stderr_stat` describes, as
/// `(st_dev, st_ino)`. The comparison tells a child that inherited the variable, but not the
/// stream, from a real journal stream.
pub fn is_journal_stream(journal_stream: Option<&OsStr>, stderr_stat: (u64, u64)) -> bool {
    let Some((dev, ino)) = journal_stream
        .and_then(OsStr::to_str)
        .and_then(|value| value.split_once(':'))
    else {
        return false;
    };
    dev.parse() == Ok(stderr_stat.0) && ino.parse() == Ok(stderr_stat.1)
}

/// Whether this process's stderr is the journal ([`is_journal_stream`] of the environment and
/// `fstat(2)` of fd 2).
pub fn stderr_is_journal() -> bool {
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    is_journal_stream(
        std::env::var_os("JOURNAL_STREAM").as_deref(),
        (stat.st_dev, stat.st_ino),
    )
}

/// The syslog priority prefix of `level` (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug
/// and trace; `sd-daemon(3)`).
pub const fn priority_prefix(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "<3>",
        Level::WARN => "<4>",
        Level::INFO => "<6>",
        _ => "<7>",
    }
}

/// An event as one journal line: [`priority_prefix`], then `tracing`'s full format without time,
/// level or colour, line breaks escaped.
#[derive(Debug)]
pub struct JournalFormat {
    inner: Format<Full, ()>,
}

impl Default for JournalFormat {
    fn default() -> Self {
        Self {
            inner: format::format()
                .without_time()
                .with_level(false)
                .with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        writer.write_str(priority_prefix(event.metadata().level()))?;
        let mut rest = line;
        while let Some(at) = rest.find(['\n', '\r']) {
            writer.write_str(&rest[..at])?;
            writer.write_str(if rest.as_bytes()[at] == b'\n' {
                "\\n"
            } else {
                "\\r"
            })?;
            rest = &rest[at + 1..];
        }
        writer.write_str(rest)?;
        writer.write_char('\n')
    }
}

/// Installs the global subscriber for `notifyhub serve`: `filter` (`$RUST_LOG`, default
/// `info`), on stderr, as journal lines when [`stderr_is_journal`], else as `tracing`'s full
/// format with timestamps (coloured on a terminal).
pub fn init(filter: EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if stderr_is_journal() {
        // Without colour here too: span fields are formatted when the span opens, by the
        // builder's setting, not the event format's.
        builder
            .with_ansi(false)
            .fmt_fields(DefaultFields::new())
            .event_format(JournalFormat::default())
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing::{debug, error, info, info_span, warn};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[test]
    fn journal_stream_must_name_stderr() {
        let value = |text: &str| Some(OsStr::new(text).to_owned());
        assert!(is_journal_stream(value("8:4711").as_deref(), (8, 4711)));
        assert!(!is_journal_stream(value("8:4711").as_deref(), (8, 4712)));
        assert!(!is_journal_stream(value("9:4711").as_deref(), (8, 4711)));
        assert!(!is_journal_stream(None, (8, 4711)));
        for bad in ["", "8", "8:", ":4711", "8:4711:1", "x:y", "-8:4711"] {
            assert!(
                !is_journal_stream(value(bad).as_deref(), (8, 4711)),
                "{bad:?}"
            );
        }
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    #[test]
    fn journal_lines_carry_the_priority_and_nothing_else_of_the_terminal_format() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_env_filter(EnvFilter::new("debug"))
            .with_ansi(false)
            .fmt_fields(DefaultFields::new())
            .event_format(JournalFormat::default())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            error!(guest = "web1", "receive loop failed");
            warn!(reason = "oversize", "dropped");
            let span = info_span!("receive", guest = "web2");
            span.in_scope(|| info!(from = "booting", to = "ready", "phase changed"));
            debug!(status = "line one\nline two\r", "multi-line");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let target = module_path!();
        assert_eq!(
            text,
            format!(
                "<3>{target}: receive loop failed guest=\"web1\"\n\
                 <4>{target}: dropped reason=\"oversize\"\n\
                 <6>receive{{guest=\"web2\"}}: {target}: phase changed from=\"booting\" to=\"ready\"\n\
                 <7>{target}: multi-line status=\"line one\\nline two\\r\"\n"
            )
        );
    }
}
