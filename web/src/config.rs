//! The configuration of `notifyhub serve`: its TOML file, its environment variables, and what a
//! reload (SIGHUP) changes.
//!
//! There is one definition of the options: the clap arguments of `serve`. Each long option
//! `--NAME` is also the key `NAME` of the file and the environment variable `NOTIFYHUB_NAME`
//! (upper case, `-` as `_`; [`with_env`]), and every value, wherever it comes from, goes through
//! that option's own parser. A flag added to `serve` is therefore configurable everywhere with
//! nothing else to write, and its `--help` documents the key too.
//!
//! A single value comes from the first of: the command line, the environment, the file, the
//! default. Repeatable options (`guest`, `vm`, `hybrid`) add up instead: the command line's (or
//! else the environment's) entries, then the file's. Each value has the TOML type of its option
//! ([`TomlType`]): a switch (`auto-register = true`) is a boolean, a count or port an integer, a
//! duration seconds (`300`, `1.5`) or a string with a unit (`"90s"`), anything else a string in the
//! option's command-line syntax; a repeatable option takes an array of those (or one):
//!
//! ```toml
//! listen = "127.0.0.1:7370"
//! guest = ["web1", "web2"]
//! vsock-port = 7371
//! vm = ["vm1=42"]
//! auto-register = true
//! ```
//!
//! [`ConfigFile::parse_partial`] checks the file against the options and keeps each value's
//! place, so that errors, including those found later by [`check`], point at a line and column
//! ([`FileErrors`]). It keeps what passed, so that the checks between options still run on the
//! rest and one run reports every error it can find. [`ConfigFile::args`] turns what the file may
//! still set into command-line arguments for the caller's final parse, which settles precedence
//! with clap's own [`ValueSource`].
//!
//! Reloading changes what can change while the hub runs: the guests that came from the file
//! ([`FileGuests`]) and the options in [`APPLIED_ON_RELOAD`]; [`changed_options`] names the
//! others, which need a restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::num::{NonZeroU8, NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use notifyhub_core::validate_guest_name;
use toml::de::{DeTable, DeValue};
use tracing::{info, warn};

use crate::registry::{RegisterError, Registry};
use crate::vsock::{Reach, VmGuest, VsockConfig};

/// Where `notifyhub serve` looks for its file without `--config`; it need not exist.
pub const DEFAULT_PATH: &str = "/etc/notifyhub/notifyhub.toml";

/// The id and long name of `serve`'s `--config FILE` option, the one option the file cannot set.
pub const CONFIG_OPTION: &str = "config";

/// The prefix of every environment variable of `serve`.
pub const ENV_PREFIX: &str = "NOTIFYHUB_";

/// The options (long names) a reload applies; a change to any other needs a restart.
/// `ready-timeout`, `rate-limit` and `rate-burst` apply to guests registered from then on;
/// `token-file` is read again on every reload (its file may change, not whether there is one).
pub const APPLIED_ON_RELOAD: &[&str] = &[
    "guest",
    "vm",
    "hybrid",
    "ready-timeout",
    "rate-limit",
    "rate-burst",
    "token-file",
];

/// The environment variable of option `--long`: `NOTIFYHUB_` and the name in upper case, `-` as
/// `_` (`--run-dir`: `NOTIFYHUB_RUN_DIR`).
pub fn env_var(long: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long.to_ascii_uppercase().replace('-', "_")
    )
}

/// How an option takes its value from the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One value (`ArgAction::Set`).
    Single,
    /// Any number of values (`ArgAction::Append`).
    Repeated,
    /// A switch (`ArgAction::SetTrue`): a TOML boolean.
    Switch,
}

fn kind(arg: &Arg) -> Option<Kind> {
    match arg.get_action() {
        ArgAction::Set => Some(Kind::Single),
        ArgAction::Append => Some(Kind::Repeated),
        ArgAction::SetTrue => Some(Kind::Switch),
        _ => None,
    }
}

/// The TOML type of an option's values in the file (each value of a repeatable option; a switch
/// is a boolean). It follows the option's value name, then the type its parser produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TomlType {
    /// An integer: a port, a count (`vsock-port = 7371`).
    Integer,
    /// An integer or a float (`rate-limit = 0.5`).
    Number,
    /// A duration, value name `DURATION`: seconds as an integer or a float (`300`, `1.5`), or a
    /// string with a unit ([`parse_duration`]: `"90s"`, `"2m"`).
    Duration,
    /// A size, value name `SIZE`: bytes as an integer, or a string with a unit (`"64MiB"`).
    Size,
    /// A string in the option's command-line syntax (`listen = "127.0.0.1:7370"`; a file mode,
    /// value name `MODE`, is an octal string: `socket-mode = "0660"`).
    String,
    /// A switch: `true` or `false`.
    Boolean,
}

impl TomlType {
    /// The option's TOML type: a switch is [`Boolean`](Self::Boolean); value names `DURATION`,
    /// `SIZE` and `MODE` say [`Duration`](Self::Duration), [`Size`](Self::Size) and
    /// [`String`](Self::String); else an integer or float parser says
    /// [`Integer`](Self::Integer) or [`Number`](Self::Number), and anything else is a string.
    pub fn of(arg: &Arg) -> Self {
        if kind(arg) == Some(Kind::Switch) {
            return Self::Boolean;
        }
        match arg.get_value_names().and_then(|names| names.first()) {
            Some(name) if name == "DURATION" => return Self::Duration,
            Some(name) if name == "SIZE" => return Self::Size,
            Some(name) if name == "MODE" => return Self::String,
            _ => {}
        }
        let parsed = arg.get_value_parser().type_id();
        let is = |id: std::any::TypeId| parsed == id;
        use std::any::TypeId as T;
        let integers = [
            T::of::<u8>(),
            T::of::<u16>(),
            T::of::<u32>(),
            T::of::<u64>(),
            T::of::<usize>(),
            T::of::<i8>(),
            T::of::<i16>(),
            T::of::<i32>(),
            T::of::<i64>(),
            T::of::<isize>(),
            T::of::<NonZeroU8>(),
            T::of::<NonZeroU16>(),
            T::of::<NonZeroU32>(),
            T::of::<NonZeroU64>(),
            T::of::<NonZeroUsize>(),
        ];
        if integers.into_iter().any(is) {
            Self::Integer
        } else if is(T::of::<f64>()) || is(T::of::<f32>()) {
            Self::Number
        } else if is(T::of::<Duration>()) {
            Self::Duration
        } else {
            Self::String
        }
    }

    /// What the type is, for messages: `an integer`, `a duration: …`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Integer => "an integer",
            Self::Number => "a number",
            Self::Duration => {
                "a duration: seconds as a number (300, 1.5) or a string with a unit (\"90s\", \
                 \"1500ms\", \"2m\")"
            }
            Self::Size => "a size: bytes as an integer, or a string with a unit (\"64MiB\")",
            Self::String => "a string",
            Self::Boolean => "true or false",
        }
    }

    /// The command-line text of a TOML value of this type, if it is one.
    fn text(self, value: &DeValue<'_>) -> Option<String> {
        match (self, value) {
            (Self::Boolean, DeValue::Boolean(on)) => Some(on.to_string()),
            (Self::String | Self::Duration | Self::Size, DeValue::String(text)) => {
                Some(text.to_string())
            }
            (Self::Integer | Self::Number | Self::Duration | Self::Size, DeValue::Integer(n)) => {
                i128::from_str_radix(n.as_str(), n.radix())
                    .ok()
                    .map(|n| n.to_string())
            }
            (Self::Number | Self::Duration, DeValue::Float(float)) => {
                Some(float.as_str().to_owned())
            }
            _ => None,
        }
    }

    /// Why `value` is not of this type, for option `key`: the type wanted, the type found, and
    /// how to write it when only the quotes are wrong.
    fn mismatch(self, key: &str, value: &DeValue<'_>, repeated: bool) -> String {
        let wanted = match (self, repeated) {
            (Self::String, true) => "strings (an array, or one)",
            (Self::Integer, true) => "integers (an array, or one)",
            (wanted, _) => wanted.describe(),
        };
        let found = match value {
            DeValue::Integer(_) | DeValue::Array(_) => "an",
            _ => "a",
        };
        let mut message = format!("`{key}` takes {wanted}, not {found} {}", value.type_str());
        // How to write it: the whole line for one value, the element in an array.
        let write = if repeated {
            String::new()
        } else {
            format!("{key} = ")
        };
        match (self, value) {
            (Self::Integer | Self::Number, DeValue::String(text))
                if text.trim().parse::<f64>().is_ok() =>
            {
                message.push_str(&format!(": write {write}{}, without quotes", text.trim()));
            }
            (Self::String, DeValue::Integer(_) | DeValue::Float(_)) => {
                // As written: an octal 0o660 is the mode "0660".
                let text = match value {
                    DeValue::Integer(n) if n.radix() == 10 => Some(n.as_str().to_owned()),
                    DeValue::Integer(n) if n.radix() == 8 => Some(format!("0{}", n.as_str())),
                    DeValue::Float(float) => Some(float.as_str().to_owned()),
                    _ => None,
                };
                if let Some(text) = text {
                    message.push_str(&format!(": write {write}\"{text}\", in quotes"));
                }
            }
            _ => {}
        }
        message
    }
}

/// Whether `arg` is one of `serve`'s own options rather than clap's `--help` or a global one.
fn is_own(arg: &Arg) -> bool {
    !arg.is_global_set() && !matches!(arg.get_action(), ArgAction::Help | ArgAction::Version)
}

/// The file key of `arg`: its long name, if the file can carry it (a long option that is set
/// once, repeated, or switched on, with at most one value an occurrence), except `--config`.
pub fn config_key(arg: &Arg) -> Option<&str> {
    let long = arg.get_long()?;
    let one_value = arg
        .get_num_args()
        .is_none_or(|range| range.max_values() <= 1);
    (is_own(arg) && long != CONFIG_OPTION && one_value && kind(arg).is_some()).then_some(long)
}

/// `serve` with an environment variable ([`env_var`]) for each of its long options that has
/// none yet; a switch's variable takes `1`/`0`, `yes`/`no`, `on`/`off`, `true`/`false`. Call it on the `serve` subcommand before parsing (and before generating help, man
/// pages and completions, which then show the variables).
pub fn with_env(serve: Command) -> Command {
    serve.mut_args(|arg| {
        if arg.get_env().is_some() || !is_own(&arg) {
            return arg;
        }
        let Some(name) = arg.get_long().map(env_var) else {
            return arg;
        };
        let arg = arg.env(name);
        // A switch from the environment: 1/0, yes/no, on/off as well as true/false.
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            arg.value_parser(clap::builder::BoolishValueParser::new())
        } else {
            arg
        }
    })
}

/// One problem in a file: what is wrong, and where (a byte range of the file, when known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// One line, lowercase, no trailing period.
    pub message: String,
    /// The bytes of the file it is about.
    pub span: Option<Range<usize>>,
}

/// A file's problems, each shown as `FILE:LINE:COLUMN: message` with the line and a caret under
/// the place (lines and columns from 1, columns in characters).
#[derive(Clone, Debug)]
pub struct FileErrors {
    /// The file.
    pub path: PathBuf,
    text: String,
    /// What is wrong, in the order found.
    pub problems: Vec<Problem>,
}

impl FileErrors {
    /// The line and column (both from 1) where byte `offset` of the file is.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        line_column(&self.text, offset)
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

/// `line` with its control characters escaped (`\u{1b}`), so that a file cannot drive the
/// terminal that shows its errors.
fn escape_controls(line: &str) -> String {
    line.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl fmt::Display for FileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let Some(span) = &problem.span else {
                write!(f, "{path}: {}", problem.message)?;
                continue;
            };
            let (line, column) = self.line_column(span.start);
            write!(f, "{path}:{line}:{column}: {}", problem.message)?;
            let text = self.text.lines().nth(line - 1).unwrap_or_default();
            let width = self.text[span.clone()]
                .lines()
                .next()
                .map_or(1, |first| first.chars().count().max(1));
            let number = line.to_string();
            write!(
                f,
                "\n {number} | {}\n {:pad$} | {:col$}{}",
                escape_controls(text),
                "",
                "",
                "^".repeat(width),
                pad = number.len(),
                col = column - 1,
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for FileErrors {}

/// One value of the file, as command-line text, and where it stands.
#[derive(Clone, Debug)]
struct Value {
    text: String,
    span: Range<usize>,
}

/// One key of the file and the option it sets.
#[derive(Clone, Debug)]
struct Entry {
    id: String,
    long: String,
    kind: Kind,
    key: Range<usize>,
    values: Vec<Value>,
}

/// A configuration file checked against `serve`'s options: the keys that are options, with the
/// values that are of the option's TOML type and passed its parser, and the problems of the rest.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    path: PathBuf,
    text: String,
    entries: Vec<Entry>,
    /// What is wrong with the keys and values left out, and the TOML syntax.
    problems: Vec<Problem>,
    /// The keys with a problem (their good values, if any, are in `entries`).
    faulty: Vec<String>,
    /// Whether the TOML parser read the whole file (no syntax error).
    complete: bool,
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// An explicitly named file is missing.
    #[error("configuration file {} does not exist", .0.display())]
    Missing(PathBuf),
    /// The file exists but cannot be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: std::io::Error,
    },
    /// The file has errors.
    #[error("{0}")]
    Invalid(#[from] FileErrors),
}

impl ConfigFile {
    /// Reads and parses the file at `path` ([`ConfigFile::parse_partial`]: its problems are in
    /// [`ConfigFile::problems`]). A missing file is `Ok(None)` unless `explicit` (it was named by
    /// `--config` or `NOTIFYHUB_CONFIG`, not the default).
    ///
    /// # Errors
    /// [`LoadError::Missing`] and [`LoadError::Unreadable`].
    pub fn read(path: &Path, explicit: bool, serve: &Command) -> Result<Option<Self>, LoadError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(Self::parse_partial(path, text, serve))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if explicit {
                    Err(LoadError::Missing(path.to_owned()))
                } else {
                    Ok(None)
                }
            }
            Err(source) => Err(LoadError::Unreadable {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses `text`, the file at `path` (named in errors only), against the options of
    /// `serve`, as [`ConfigFile::parse_partial`] does, and fails on any problem.
    ///
    /// # Errors
    /// [`FileErrors`] with every problem found, each with its place.
    pub fn parse(path: &Path, text: String, serve: &Command) -> Result<Self, FileErrors> {
        let file = Self::parse_partial(path, text, serve);
        if file.problems.is_empty() {
            Ok(file)
        } else {
            Err(file.errors(file.problems.clone()))
        }
    }

    /// Parses `text`, the file at `path` (named in errors only), against the options of
    /// `serve`: each key must be a [`config_key`], each value of the option's [`TomlType`] and
    /// accepted by the option's parser. What fails is left out and its problem kept
    /// ([`ConfigFile::problems`]), so that the checks between options can still run on the rest.
    /// After a TOML syntax error, only the first is kept (the parser's next ones follow from it),
    /// and only the keys before it.
    pub fn parse_partial(path: &Path, text: String, serve: &Command) -> Self {
        let mut problems = Vec::new();
        let mut entries = Vec::new();
        let mut faulty = Vec::new();
        let (table, errors) = DeTable::parse_recoverable(&text);
        let syntax = errors.first().map(|error| Problem {
            message: error.message().trim_end().to_owned(),
            span: error.span(),
        });
        // Past a syntax error the parser guesses: trust only what ends before it.
        let trusted_end = syntax.as_ref().map_or(usize::MAX, |problem| {
            problem.span.as_ref().map_or(0, |span| span.start)
        });
        for (key, value) in table.get_ref() {
            if value.span().end > trusted_end {
                continue;
            }
            let (found, mut wrong) = entry(serve, key.get_ref(), key.span(), value);
            if !wrong.is_empty() {
                faulty.push(key.get_ref().to_string());
                problems.append(&mut wrong);
            }
            entries.extend(found);
        }
        let complete = syntax.is_none();
        problems.extend(syntax);
        sort_by_place(&mut problems);
        entries.sort_by_key(|entry| entry.key.start);
        Self {
            path: path.to_owned(),
            text,
            entries,
            problems,
            faulty,
            complete,
        }
    }

    /// What [`ConfigFile::parse_partial`] found wrong, in the order of the file.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Whether the whole file was read: no TOML syntax error cut it short. Checks between
    /// options make sense only on a complete file.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether `message` names (as `--NAME`) an option whose key in the file has a problem: an
    /// error between options that may only come from that value being left out.
    pub fn names_faulty_option(&self, message: &str) -> bool {
        self.faulty.iter().any(|key| names_option(message, key))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The command-line arguments (`--NAME=VALUE`, `--NAME` for a switch) that give the final
    /// parse what the file may still set, given `matches`, the `serve` matches of the command
    /// line and environment alone: an option they set is left out, except that a repeatable one
    /// adds the file's values to theirs. Append them to the original command line and parse
    /// again.
    pub fn args(&self, matches: &ArgMatches) -> Vec<OsString> {
        let mut args = Vec::new();
        let flag = |long: &str, text: &dyn fmt::Display| OsString::from(format!("--{long}={text}"));
        for entry in &self.entries {
            let source = matches.value_source(&entry.id);
            let given = matches!(
                source,
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            match entry.kind {
                Kind::Single | Kind::Switch if given => {}
                Kind::Single => {
                    args.extend(entry.values.iter().map(|v| flag(&entry.long, &v.text)))
                }
                Kind::Switch => {
                    if entry.values.iter().any(|v| v.text == "true") {
                        args.push(format!("--{}", entry.long).into());
                    }
                }
                Kind::Repeated => {
                    // An option on the command line hides the environment from clap: say it.
                    if source == Some(ValueSource::EnvVariable)
                        && let Ok(Some(raw)) = matches.try_get_raw(&entry.id)
                    {
                        for value in raw {
                            let mut arg = OsString::from(format!("--{}=", entry.long));
                            arg.push(value);
                            args.push(arg);
                        }
                    }
                    args.extend(entry.values.iter().map(|v| flag(&entry.long, &v.text)));
                }
            }
        }
        args
    }

    /// Where the file names guest `name`: the last value of a repeatable option that is `name`
    /// or starts with `name=` (`vm = ["vm1=42"]`).
    pub fn guest_span(&self, name: &str) -> Option<Range<usize>> {
        self.entries
            .iter()
            .filter(|entry| entry.kind == Kind::Repeated)
            .flat_map(|entry| &entry.values)
            .filter(|value| {
                value.text == name
                    || value
                        .text
                        .strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('='))
            })
            .map(|value| value.span.clone())
            .next_back()
    }

    /// Where the file sets the option that `message` names as `--NAME` (a message of clap or of
    /// a check), if it sets one.
    pub fn option_span(&self, message: &str) -> Option<Range<usize>> {
        self.entries
            .iter()
            .find(|entry| names_option(message, &entry.long))
            .map(|entry| entry.key.clone())
    }

    /// The keys the file sets, in its order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|entry| entry.long.as_str())
    }

    /// Where the file sets key `key`.
    pub fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.entries
            .iter()
            .find(|entry| entry.long == key)
            .map(|entry| entry.key.clone())
    }

    /// Where the error `message` of the options together (a conflict, an option another one
    /// requires) belongs: at the key whose option it names as `--NAME`, else at the first key
    /// without which `parses` holds (`parses` tries a file: whether the options parse with it).
    pub fn error_span(
        &self,
        message: &str,
        parses: impl Fn(&Self) -> bool,
    ) -> Option<Range<usize>> {
        self.error_key(message, parses)
            .and_then(|key| self.key_span(key))
    }

    /// The key [`ConfigFile::error_span`] places `message` at.
    pub fn error_key(&self, message: &str, parses: impl Fn(&Self) -> bool) -> Option<&str> {
        self.entries
            .iter()
            .find(|entry| names_option(message, &entry.long))
            .map(|entry| entry.long.as_str())
            .or_else(|| self.keys().find(|key| parses(&self.without(key))))
    }

    /// The file without key `key`.
    pub fn without(&self, key: &str) -> Self {
        Self {
            entries: self
                .entries
                .iter()
                .filter(|entry| entry.long != key)
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// `problems` as errors of this file, in the order of the file.
    pub fn errors(&self, mut problems: Vec<Problem>) -> FileErrors {
        sort_by_place(&mut problems);
        FileErrors {
            path: self.path.clone(),
            text: self.text.clone(),
            problems,
        }
    }
}

/// Sorts `problems` by their place in the file; those without one last. The order among
/// problems at the same place stays.
fn sort_by_place(problems: &mut [Problem]) {
    problems.sort_by_key(|problem| {
        problem
            .span
            .as_ref()
            .map_or((usize::MAX, usize::MAX), |span| (span.start, span.end))
    });
}

/// Whether `message` mentions `--long` as a whole option name.
fn names_option(message: &str, long: &str) -> bool {
    let needle = format!("--{long}");
    message.match_indices(&needle).any(|(at, _)| {
        let next = message[at + needle.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// The option that `key` sets and its values that passed (if any), and the problems of the rest.
fn entry(
    serve: &Command,
    key: &str,
    key_span: Range<usize>,
    value: &toml::Spanned<DeValue<'_>>,
) -> (Option<Entry>, Vec<Problem>) {
    let problem = |message: String, span: Range<usize>| Problem {
        message,
        span: Some(span),
    };
    if key == CONFIG_OPTION {
        let message = "`config` cannot be set in the configuration file; pass --config FILE";
        return (None, vec![problem(message.to_owned(), key_span)]);
    }
    let Some(arg) = serve
        .get_arguments()
        .find(|arg| config_key(arg) == Some(key))
    else {
        let known: Vec<&str> = serve.get_arguments().filter_map(config_key).collect();
        let message = format!(
            "unknown key `{key}`: the keys are the long options of `notifyhub serve`: {}",
            known.join(", ")
        );
        return (None, vec![problem(message, key_span)]);
    };
    let kind = kind(arg).expect("config_key checked it");
    let toml_type = TomlType::of(arg);
    let items: Vec<&toml::Spanned<DeValue<'_>>> = match value.get_ref() {
        DeValue::Array(items) if kind == Kind::Repeated => items.iter().collect(),
        DeValue::Array(_) => {
            let message = format!("`{key}` takes one value, not an array");
            return (None, vec![problem(message, value.span())]);
        }
        DeValue::Table(_) => {
            let message = format!("`{key}` takes a value, not a table");
            return (None, vec![problem(message, value.span())]);
        }
        _ => vec![value],
    };
    let mut values = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for item in items {
        let span = item.span();
        let Some(text) = toml_type.text(item.get_ref()) else {
            let message = toml_type.mismatch(key, item.get_ref(), kind == Kind::Repeated);
            problems.push(problem(message, span));
            continue;
        };
        if kind == Kind::Switch {
            values.push(Value { text, span });
            continue;
        }
        match check_value(arg, &text) {
            Ok(()) => values.push(Value { text, span }),
            Err(message) => problems.push(problem(message, span)),
        }
    }
    let entry = (!values.is_empty() || problems.is_empty()).then(|| Entry {
        id: arg.get_id().to_string(),
        long: key.to_owned(),
        kind,
        key: key_span,
        values,
    });
    (entry, problems)
}

/// A clap value parser for an integer from `min` to `max`, both included, whose error says so in
/// those words (clap's ranged parsers say `not in 1..2000`, Rust's range without its end, which
/// reads as if 2000 were allowed).
pub fn integer_in<T>(min: T, max: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy + Send + Sync + 'static,
{
    move |text: &str| {
        text.parse::<T>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| format!("expected an integer from {min} to {max}, not {text:?}"))
    }
}

/// As [`integer_in`] from 1 to `max`, for a count that must not be 0.
pub fn nonzero_up_to(
    max: usize,
) -> impl Fn(&str) -> Result<NonZeroUsize, String> + Clone + Send + Sync {
    let parse = integer_in(1, max);
    move |text: &str| parse(text).map(|n| NonZeroUsize::new(n).expect("from 1 up"))
}

/// The forms a duration takes on the command line, for help and messages.
pub const DURATION_FORMS: &str = "90, 1.5, 90s, 1500ms, 2m or 1h30m (a number alone is seconds)";

/// Parses a duration as people type it: a number of seconds (`90`, `1.5`), or numbers with units
/// as `humantime` reads them (`90s`, `1500ms`, `2m`, `1h 30m`, `1.5h`; `ms`, `s`, `m`, `h`, `d`
/// and their long names). For `serve --ready-timeout` and the client commands' timeouts.
///
/// # Errors
/// A sentence for clap to show, naming the accepted forms ([`DURATION_FORMS`]).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let plain_number = trimmed.starts_with(|c: char| c.is_ascii_digit())
        && trimmed.chars().all(|c| c.is_ascii_digit() || c == '.');
    let parsed = if plain_number {
        humantime::parse_duration(&format!("{trimmed}s"))
    } else {
        humantime::parse_duration(trimmed)
    };
    parsed.map_err(|error| {
        format!("expected a duration such as {DURATION_FORMS}, not {text:?} ({error})")
    })
}

/// [`parse_duration`], for a duration that must be above 0.
///
/// # Errors
/// As [`parse_duration`]; also for a zero duration.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!(
            "expected a duration above 0 (leave the option out for none), not {text:?}"
        ));
    }
    Ok(duration)
}

/// Runs `text` through `arg`'s own value parser; clap's message without its decorations.
fn check_value(arg: &Arg, text: &str) -> Result<(), String> {
    let long = arg.get_long().unwrap_or("value").to_owned();
    let mut probe = Arg::new(arg.get_id().clone())
        .long(long.clone())
        .action(ArgAction::Set)
        .value_parser(arg.get_value_parser().clone());
    if let Some(names) = arg.get_value_names() {
        probe = probe.value_names(names.to_vec());
    }
    Command::new("notifyhub")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from([format!("--{long}={text}")])
        .map(drop)
        .map_err(|error| clap_message(&error))
}

/// A clap error as one line: its message, without the `error: ` prefix and the usage lines.
pub fn clap_message(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    message
        .strip_prefix("error: ")
        .unwrap_or(&message)
        .to_owned()
}

/// What [`check`] finds wrong in a configuration, and which guest it is about (if any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// The guest the issue is about, for placing it in the file.
    pub guest: Option<String>,
    /// One line, lowercase, no trailing period; it names the option (`--NAME`) when it is about
    /// one.
    pub message: String,
}

/// The guests a [`Config`](crate::server::Config) declares: its `guests` (`--guest`), then its `vsock.guests` (`--vm`,
/// `--hybrid`), with how each is reached.
pub fn declared_guests(guests: &[String], vsock: &VsockConfig) -> Vec<(String, Reach)> {
    let unix = guests.iter().map(|name| (name.clone(), Reach::Unix));
    let vms = vsock
        .guests
        .iter()
        .map(|VmGuest { name, reach }| (name.clone(), reach.clone()));
    unix.chain(vms).collect()
}

/// Checks what the options' parsers cannot see one value at a time: guest names (with
/// `notifyhub-core`'s rule), names, CIDs and hybrid sockets declared twice, and the vsock
/// listeners' settings ([`crate::vsock::VsockConfig::validate`], but for `--auto-register`
/// without a port, which a passed listener makes right). Registration would refuse the
/// same later; found here, the errors can point into the file. `guests` and `vsock` are a
/// [`Config`](crate::server::Config)'s.
pub fn check(guests: &[String], vsock: &VsockConfig) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut names = HashSet::new();
    let mut cids = HashMap::new();
    let mut sockets = HashMap::new();
    for (name, reach) in declared_guests(guests, vsock) {
        let mut issue = |message: String| {
            issues.push(Issue {
                guest: Some(name.clone()),
                message,
            });
        };
        if let Err(error) = validate_guest_name(&name) {
            issue(format!("invalid guest name {name:?}: {error}"));
        } else if !names.insert(name.clone()) {
            issue(format!("guest {name:?} is declared twice"));
        }
        if let Some(cid) = reach.kernel_cid()
            && let Some(other) = cids.insert(cid, name.clone())
        {
            issue(format!("CID {cid} is guest {other:?}'s already"));
        }
        if let Some(hybrid) = reach.hybrid()
            && let Some(other) = sockets.insert(hybrid.socket().to_owned(), name.clone())
        {
            issue(format!(
                "hybrid vsock socket {} is guest {other:?}'s already",
                hybrid.socket()
            ));
        }
    }
    // `--auto-register` without a vsock port is fine when the service manager passes the
    // listener, which only the start can tell (`KernelListeners::bind_or_adopt`).
    let without_auto_register = VsockConfig {
        settings: crate::vsock::VsockSettings {
            auto_register: false,
            ..vsock.settings
        },
        ..vsock.clone()
    };
    if let Err(error) = without_auto_register.validate() {
        issues.push(Issue {
            guest: None,
            message: format!("{error:#}"),
        });
    }
    issues
}

/// The options whose values differ between two parses of `serve` (by long name, in the order
/// of `serve`'s arguments), except `--config`.
pub fn changed_options(serve: &Command, old: &ArgMatches, new: &ArgMatches) -> Vec<String> {
    let raw = |matches: &ArgMatches, id: &str| -> Vec<OsString> {
        match matches.try_get_raw(id) {
            Ok(Some(values)) => values.map(OsString::from).collect(),
            _ => Vec::new(),
        }
    };
    serve
        .get_arguments()
        .filter(|arg| is_own(arg) && arg.get_id() != CONFIG_OPTION)
        .filter(|arg| raw(old, arg.get_id().as_str()) != raw(new, arg.get_id().as_str()))
        .map(|arg| arg.get_long().unwrap_or(arg.get_id().as_str()).to_owned())
        .collect()
}

/// The guests registered because the configuration file declared them, by name. A reload
/// ([`FileGuests::reconcile`]) makes the registry match the file for these, and only these:
/// guests from the command line, the environment or the API are never touched.
#[derive(Clone, Debug, Default)]
pub struct FileGuests {
    owned: BTreeMap<String, Reach>,
}

/// What a [`FileGuests::reconcile`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Guests registered (new in the file, changed, or removed since by the API).
    pub registered: Vec<String>,
    /// Guests unregistered (gone from the file, or changed).
    pub removed: Vec<String>,
    /// Guests of the file that could not be registered, with why.
    pub failed: Vec<(String, String)>,
}

impl FileGuests {
    /// The file's guests, as registered at start.
    pub fn new(registered: impl IntoIterator<Item = (String, Reach)>) -> Self {
        Self {
            owned: registered.into_iter().collect(),
        }
    }

    /// The names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.owned.keys().map(String::as_str)
    }

    /// Makes the registry hold `wanted` (the file's guests now): unregisters the guests this
    /// owns that `wanted` drops or reaches otherwise, then registers every guest of `wanted`
    /// that is not registered. A name registered by someone else (the API) is left alone and
    /// reported in `failed`.
    pub async fn reconcile(
        &mut self,
        registry: &Registry,
        wanted: Vec<(String, Reach)>,
    ) -> Reconciled {
        let mut done = Reconciled::default();
        let wanted: BTreeMap<String, Reach> = wanted.into_iter().collect();
        let stale: Vec<String> = self
            .owned
            .iter()
            .filter(|(name, reach)| wanted.get(*name) != Some(reach))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.owned.remove(&name);
            // Gone already when the API removed it.
            if registry.unregister(&name).await.is_ok() {
                done.removed.push(name);
            }
        }
        for (name, reach) in wanted {
            let ours = self.owned.contains_key(&name);
            match registry.register_with(&name, reach.clone()).await {
                Ok(_) => {
                    self.owned.insert(name.clone(), reach);
                    done.registered.push(name);
                }
                Err(RegisterError::Exists(_)) if ours => {}
                Err(RegisterError::Exists(_)) => done.failed.push((
                    name,
                    "a guest of that name is registered already (by the API); left as it is"
                        .to_owned(),
                )),
                Err(error) => done.failed.push((name, error.to_string())),
            }
        }
        if !done.removed.is_empty() || !done.registered.is_empty() {
            info!(registered = ?done.registered, removed = ?done.removed, "guests of the configuration file updated");
        }
        for (name, error) in &done.failed {
            warn!(guest = name, %error, "guest of the configuration file not registered");
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    use crate::store::Hub;

    /// A `serve` like the binary's, small: one of each kind of option, with a parser that can
    /// refuse.
    fn serve() -> Command {
        with_env(
            Command::new("serve")
                .arg(
                    Arg::new("listen")
                        .long("listen")
                        .value_name("ADDR")
                        .value_parser(clap::value_parser!(std::net::SocketAddr))
                        .default_value("127.0.0.1:7370"),
                )
                .arg(
                    Arg::new("ready_timeout")
                        .long("ready-timeout")
                        .value_name("DURATION")
                        .value_parser(parse_positive_duration),
                )
                .arg(Arg::new("guests").long("guest").action(ArgAction::Append))
                .arg(
                    Arg::new("auto_register")
                        .long("auto-register")
                        .action(ArgAction::SetTrue),
                )
                .arg(Arg::new(CONFIG_OPTION).long(CONFIG_OPTION)),
        )
    }

    fn parse(text: &str) -> Result<ConfigFile, FileErrors> {
        ConfigFile::parse(Path::new("hub.toml"), text.to_owned(), &serve())
    }

    /// The final parse of the binary: the command line, then what the file may still set.
    fn merged(text: &str, argv: &[&str]) -> ArgMatches {
        let file = parse(text).unwrap();
        let first = serve().try_get_matches_from(argv).unwrap();
        let mut all: Vec<OsString> = argv.iter().map(OsString::from).collect();
        all.extend(file.args(&first));
        serve().try_get_matches_from(all).unwrap()
    }

    fn errors(text: &str) -> Vec<String> {
        let errors = parse(text).unwrap_err();
        errors
            .problems
            .iter()
            .map(|problem| {
                let (line, column) = errors.line_column(problem.span.clone().unwrap().start);
                format!("{line}:{column}: {}", problem.message)
            })
            .collect()
    }

    const FILE: &str = "listen = \"0.0.0.0:80\"\nready-timeout = 30\nguest = [\"f1\", \"f2\"]\n\
                        auto-register = true\n";

    #[test]
    fn flag_beats_file_beats_default() {
        let matches = merged(FILE, &["serve", "--listen", "127.0.0.1:1"]);
        let listen = matches.get_one::<std::net::SocketAddr>("listen").unwrap();
        assert_eq!(listen.to_string(), "127.0.0.1:1");
        assert_eq!(
            matches.value_source("listen"),
            Some(ValueSource::CommandLine)
        );
        assert_eq!(
            matches.get_one::<Duration>("ready_timeout"),
            Some(&Duration::from_secs(30))
        );
        assert!(matches.get_flag("auto_register"));

        let defaults = merged("", &["serve"]);
        let listen = defaults.get_one::<std::net::SocketAddr>("listen").unwrap();
        assert_eq!(listen.to_string(), "127.0.0.1:7370");
        assert_eq!(defaults.get_one::<Duration>("ready_timeout"), None);
        assert!(!defaults.get_flag("auto_register"));

        let from_file = merged(FILE, &["serve"]);
        let listen = from_file.get_one::<std::net::SocketAddr>("listen").unwrap();
        assert_eq!(listen.to_string(), "0.0.0.0:80");
        // A switch off in the file is the default, and a switch on the command line stays on.
        let off = merged("auto-register = false", &["serve", "--auto-register"]);
        assert!(off.get_flag("auto_register"));
        assert!(!merged("auto-register = false", &["serve"]).get_flag("auto_register"));
    }

    #[test]
    fn repeated_options_add_up() {
        let matches = merged(FILE, &["serve", "--guest", "c1"]);
        let guests: Vec<&String> = matches.get_many("guests").unwrap().collect();
        assert_eq!(guests, ["c1", "f1", "f2"]);
        // One value is as good as an array of one.
        let one = merged("guest = \"solo\"", &["serve"]);
        let guests: Vec<&String> = one.get_many("guests").unwrap().collect();
        assert_eq!(guests, ["solo"]);
    }

    #[test]
    fn every_option_has_a_key_and_a_variable() {
        let serve = serve();
        let vars: Vec<String> = serve
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|var| var.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            vars,
            [
                "NOTIFYHUB_LISTEN",
                "NOTIFYHUB_READY_TIMEOUT",
                "NOTIFYHUB_GUEST",
                "NOTIFYHUB_AUTO_REGISTER",
                "NOTIFYHUB_CONFIG"
            ]
        );
        let keys: Vec<&str> = serve.get_arguments().filter_map(config_key).collect();
        assert_eq!(keys, ["listen", "ready-timeout", "guest", "auto-register"]);
        // What the file cannot carry has no key: a positional argument, a counter.
        assert_eq!(config_key(&Arg::new("file")), None);
        assert_eq!(
            config_key(&Arg::new("v").long("verbose").action(ArgAction::Count)),
            None
        );
    }

    #[test]
    fn errors_point_at_line_and_column() {
        assert_eq!(
            errors("listen = \"nowhere\"\n"),
            ["1:10: invalid value 'nowhere' for '--listen <ADDR>': invalid socket address syntax"]
        );
        assert_eq!(
            errors("# comment\nready-timeout = 0\nguest = [\"a\", 7, true]\n"),
            [
                "2:17: invalid value '0' for '--ready-timeout <DURATION>': expected a duration \
                 above 0 (leave the option out for none), not \"0\"",
                "3:15: `guest` takes strings (an array, or one), not an integer: write \"7\", in \
                 quotes",
                "3:18: `guest` takes strings (an array, or one), not a boolean",
            ]
        );
        let unknown = errors("\nlisten = \"127.0.0.1:1\"\n  lisen = 1\n");
        assert_eq!(unknown.len(), 1);
        assert!(
            unknown[0].starts_with(
                "3:3: unknown key `lisen`: the keys are the long options of `notifyhub serve`: \
                 listen, ready-timeout, guest, auto-register"
            ),
            "{unknown:?}"
        );
        assert_eq!(
            errors("auto-register = \"yes\"\nlisten = [\"127.0.0.1:1\"]\n[listen2]\n"),
            [
                "1:17: `auto-register` takes true or false, not a string",
                "2:10: `listen` takes one value, not an array",
                "3:2: unknown key `listen2`: the keys are the long options of `notifyhub serve`: \
                 listen, ready-timeout, guest, auto-register",
            ]
        );
        assert_eq!(
            errors("config = \"/etc/other.toml\""),
            ["1:1: `config` cannot be set in the configuration file; pass --config FILE"]
        );
        // The TOML parser's own errors keep their place too.
        let syntax = errors("guest = [\"a\"\nlisten = 1\n");
        assert_eq!(syntax.len(), 1);
        assert!(syntax[0].starts_with("2:1: "), "{syntax:?}");
    }

    #[test]
    fn toml_types_follow_value_names_then_parsers() {
        let of = |arg: Arg| TomlType::of(&arg.long("x").action(ArgAction::Set));
        assert_eq!(
            of(Arg::new("a").value_parser(clap::value_parser!(u32))),
            TomlType::Integer
        );
        assert_eq!(
            of(Arg::new("a").value_parser(clap::value_parser!(u64).range(1..10))),
            TomlType::Integer
        );
        assert_eq!(
            of(Arg::new("a").value_parser(clap::value_parser!(NonZeroU32))),
            TomlType::Integer
        );
        assert_eq!(
            of(Arg::new("a").value_parser(clap::value_parser!(f64))),
            TomlType::Number
        );
        assert_eq!(
            of(Arg::new("a").value_parser(parse_duration)),
            TomlType::Duration
        );
        assert_eq!(
            of(Arg::new("a").value_parser(clap::value_parser!(PathBuf))),
            TomlType::String
        );
        assert_eq!(of(Arg::new("a")), TomlType::String);
        // The value name overrides the parser's type: a size or a mode is a number with a syntax.
        let sized = Arg::new("a")
            .value_name("SIZE")
            .value_parser(clap::value_parser!(usize));
        assert_eq!(of(sized), TomlType::Size);
        let mode = Arg::new("a")
            .value_name("MODE")
            .value_parser(clap::value_parser!(u32));
        assert_eq!(of(mode), TomlType::String);
        let switch = Arg::new("a").long("x").action(ArgAction::SetTrue);
        assert_eq!(TomlType::of(&switch), TomlType::Boolean);
    }

    #[test]
    fn values_must_have_their_options_toml_type() {
        let serve = serve()
            .arg(
                Arg::new("port")
                    .long("port")
                    .value_parser(clap::value_parser!(u16)),
            )
            .arg(
                Arg::new("rate")
                    .long("rate")
                    .value_parser(clap::value_parser!(f64)),
            )
            .arg(
                Arg::new("mode")
                    .long("mode")
                    .value_name("MODE")
                    .value_parser(clap::value_parser!(u32)),
            )
            .arg(Arg::new("size").long("size").value_name("SIZE"));
        let errors = |text: &str| -> Vec<String> {
            let file = ConfigFile::parse_partial(Path::new("t"), text.to_owned(), &serve);
            file.problems().iter().map(|p| p.message.clone()).collect()
        };
        let fine = "port = 7371\nrate = 0.5\nmode = \"0660\"\nsize = \"64MiB\"\nready-timeout = \
                    \"90s\"\nguest = \"one\"\n";
        assert_eq!(errors(fine), Vec::<String>::new());
        assert!(errors("rate = 2\nsize = 1000\nready-timeout = 1.5").is_empty());
        assert_eq!(
            errors("port = \"7371\"\nrate = \"0.5\"\nmode = 0o660\nlisten = 7370\nguest = [1.5]"),
            [
                "`port` takes an integer, not a string: write port = 7371, without quotes",
                "`rate` takes a number, not a string: write rate = 0.5, without quotes",
                "`mode` takes a string, not an integer: write mode = \"0660\", in quotes",
                "`listen` takes a string, not an integer: write listen = \"7370\", in quotes",
                "`guest` takes strings (an array, or one), not a float: write \"1.5\", in quotes",
            ]
        );
        assert_eq!(
            errors("port = 1.5\nready-timeout = true\nsize = 1.5\nport = \"x\""),
            [
                "`port` takes an integer, not a float",
                "`ready-timeout` takes a duration: seconds as a number (300, 1.5) or a string \
                 with a unit (\"90s\", \"1500ms\", \"2m\"), not a boolean",
                "`size` takes a size: bytes as an integer, or a string with a unit (\"64MiB\"), \
                 not a float",
                "duplicate key",
            ]
        );
    }

    #[test]
    fn what_passed_is_kept_with_the_problems_of_the_rest() {
        let text = "guest = [\"a\", 7, \"b\"]\nlisten = \"nowhere\"\nready-timeout = 30\n";
        let file = ConfigFile::parse_partial(Path::new("t"), text.to_owned(), &serve());
        assert_eq!(file.problems().len(), 2, "{:?}", file.problems());
        assert!(file.is_complete());
        // The good values of a key with a bad one stay; the bad key's option is faulty.
        assert_eq!(file.keys().collect::<Vec<_>>(), ["guest", "ready-timeout"]);
        assert_eq!(file.guest_span("b"), Some(17..20));
        assert!(file.names_faulty_option("--guest needs something"));
        assert!(file.names_faulty_option("--listen is wrong"));
        assert!(!file.names_faulty_option("--ready-timeout is wrong"));
        // A syntax error: only the first error, only the keys before it.
        let text = "guest = [\"a\"]\nlisen = 1\nvm = [\"x\"\nready-timeout = 30\n";
        let file = ConfigFile::parse_partial(Path::new("t"), text.to_owned(), &serve());
        assert!(!file.is_complete());
        let shown: Vec<String> = file
            .problems()
            .iter()
            .map(|p| {
                let (line, column) = line_column(text, p.span.clone().unwrap().start);
                format!("{line}:{column}: {}", p.message)
            })
            .collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown[0].starts_with("2:1: unknown key `lisen`"),
            "{shown:?}"
        );
        assert!(shown[1].starts_with("4:1: "), "{shown:?}");
        assert_eq!(file.keys().collect::<Vec<_>>(), ["guest"]);
    }

    #[test]
    fn integers_in_a_range_say_the_range() {
        let idle = integer_in(1_u64, 1999);
        assert_eq!(idle("1"), Ok(1));
        assert_eq!(idle("1999"), Ok(1999));
        for bad in ["0", "2000", "-1", "1.5", "x", ""] {
            assert_eq!(
                idle(bad),
                Err(format!("expected an integer from 1 to 1999, not {bad:?}"))
            );
        }
        let arg = Arg::new("a").long("x").value_parser(integer_in(0_u32, 9));
        assert_eq!(TomlType::of(&arg), TomlType::Integer);
    }

    #[test]
    fn durations_as_people_type_them() {
        let secs = |s: f64| Ok(Duration::from_secs_f64(s));
        assert_eq!(parse_duration("90"), secs(90.0));
        assert_eq!(parse_duration("1.5"), secs(1.5));
        assert_eq!(parse_duration("90s"), secs(90.0));
        assert_eq!(parse_duration("1500ms"), secs(1.5));
        assert_eq!(parse_duration("2m"), secs(120.0));
        assert_eq!(parse_duration("1h 30m"), secs(5400.0));
        assert_eq!(parse_duration("1.5h"), secs(5400.0));
        assert_eq!(parse_duration(" 0 "), secs(0.0));
        for bad in ["", "-1", "5x", "1.2.3", "inf", "s"] {
            let error = parse_duration(bad).unwrap_err();
            assert!(
                error.starts_with(&format!(
                    "expected a duration such as {DURATION_FORMS}, not {bad:?} ("
                )),
                "{bad:?}: {error}"
            );
        }
        assert_eq!(parse_positive_duration("0.5"), secs(0.5));
        assert_eq!(
            parse_positive_duration("0s").unwrap_err(),
            "expected a duration above 0 (leave the option out for none), not \"0s\""
        );
    }

    #[test]
    fn errors_show_the_line() {
        let errors = parse("# hub\nguest = [\"ok\", \"wrong\"]\nlisten = \"x:y\"").unwrap_err();
        let errors = errors.errors_with(vec![Problem {
            message: "guest \"wrong\" is bad".into(),
            span: Some(22..29),
        }]);
        assert_eq!(
            errors.to_string(),
            "hub.toml:2:17: guest \"wrong\" is bad\n 2 | guest = [\"ok\", \"wrong\"]\n   \
             |                 ^^^^^^^"
        );
    }

    impl FileErrors {
        fn errors_with(self, problems: Vec<Problem>) -> Self {
            Self { problems, ..self }
        }
    }

    #[test]
    fn places_of_guests_and_options() {
        let file = parse("guest = [\"web1\", \"web2\"]\nready-timeout = 5\n").unwrap();
        assert_eq!(file.guest_span("web2"), Some(17..23));
        assert_eq!(file.guest_span("web"), None);
        assert_eq!(
            file.option_span("--ready-timeout needs --vsock-port"),
            Some(25..38)
        );
        assert_eq!(file.option_span("--ready-timeouts"), None);
        assert_eq!(
            line_column("a\nbé c", "a\nbé ".len()),
            (2, 4),
            "columns count characters"
        );
    }

    #[test]
    fn errors_between_options_are_placed_at_a_key() {
        let serve = serve().arg(
            Arg::new("needs_guest")
                .long("needs-guest")
                .action(ArgAction::SetTrue)
                .requires("guests"),
        );
        let text = "listen = \"127.0.0.1:1\"\nneeds-guest = true\n";
        let file = ConfigFile::parse(Path::new("hub.toml"), text.to_owned(), &serve).unwrap();
        let parses = |file: &ConfigFile| {
            let first = serve.clone().try_get_matches_from(["serve"]).unwrap();
            let mut argv = vec![OsString::from("serve")];
            argv.extend(file.args(&first));
            serve.clone().try_get_matches_from(argv)
        };
        let error = parses(&file).unwrap_err();
        let message = clap_message(&error);
        // clap names the missing option, not the one that needs it.
        assert!(message.contains("--guest"), "{message}");
        assert!(!message.contains("--needs-guest"), "{message}");
        let span = file.error_span(&message, |file| parses(file).is_ok());
        assert_eq!(span, file.key_span("needs-guest"));
        assert_eq!(file.key_span("needs-guest"), Some(23..34));
        // A message that names a key the file sets is placed there.
        assert_eq!(
            file.error_span("'--listen <ADDR>' is wrong", |_| false),
            Some(0..6)
        );
    }

    #[test]
    fn check_finds_what_registration_would_refuse() {
        let guests = ["web1", "../x", "web1", "vm1"].map(String::from);
        let vsock = VsockConfig {
            stream_port: Some(7371),
            seqpacket_port: Some(7371),
            guests: vec![
                VmGuest::parse_cid("vm1=42").unwrap(),
                VmGuest::parse_cid("vm2=42").unwrap(),
            ],
            ..VsockConfig::default()
        };
        let found = check(&guests, &vsock);
        let issues: Vec<(Option<&str>, &str)> = found
            .iter()
            .map(|issue| (issue.guest.as_deref(), issue.message.as_str()))
            .collect();
        assert_eq!(issues.len(), 5, "{issues:?}");
        assert_eq!(issues[0].0, Some("../x"));
        assert!(issues[0].1.starts_with("invalid guest name \"../x\": "));
        assert_eq!(
            &issues[1..4],
            [
                (Some("web1"), "guest \"web1\" is declared twice"),
                (Some("vm1"), "guest \"vm1\" is declared twice"),
                (Some("vm2"), "CID 42 is guest \"vm1\"'s already"),
            ]
        );
        assert_eq!(issues[4].0, None);
        assert!(issues[4].1.contains("--vsock-port"), "{}", issues[4].1);
    }

    #[test]
    fn changed_options_are_named() {
        let serve = serve();
        let old = merged(FILE, &["serve"]);
        let new = merged(
            "listen = \"0.0.0.0:80\"\nready-timeout = 31\nguest = [\"f1\"]\n",
            &["serve"],
        );
        assert_eq!(
            changed_options(&serve, &old, &new),
            ["ready-timeout", "guest", "auto-register"]
        );
        assert!(changed_options(&serve, &old, &old).is_empty());
    }

    #[tokio::test]
    async fn reload_touches_only_the_file_guests() {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let registry = Registry::new(Hub::new(), dir.path().join("guests"), &shutdown);
        let names = |registry: &Registry| -> Vec<String> {
            registry
                .hub()
                .guests()
                .guests
                .iter()
                .map(|guest| guest.summary.snapshot.name.to_string())
                .collect()
        };
        registry.register("cli1").await.unwrap();
        registry.register("f1").await.unwrap();
        let mut file = FileGuests::new([("f1".to_owned(), Reach::Unix)]);

        let unix = |name: &str| (name.to_owned(), Reach::Unix);
        let done = file
            .reconcile(&registry, vec![unix("f1"), unix("f2")])
            .await;
        assert_eq!(done.registered, ["f2"]);
        assert!(done.removed.is_empty() && done.failed.is_empty());
        assert_eq!(names(&registry), ["cli1", "f1", "f2"]);

        // The API adds api1 and removes f2; the file drops f1 and declares api1.
        registry.register("api1").await.unwrap();
        registry.unregister("f2").await.unwrap();
        let done = file
            .reconcile(&registry, vec![unix("f2"), unix("api1")])
            .await;
        assert_eq!(done.removed, ["f1"]);
        assert_eq!(done.registered, ["f2"]);
        assert_eq!(done.failed.len(), 1);
        assert_eq!(done.failed[0].0, "api1");
        assert_eq!(names(&registry), ["api1", "cli1", "f2"]);
        assert_eq!(file.names().collect::<Vec<_>>(), ["f2"]);

        // An empty file removes the file's guests and nothing else.
        let done = file.reconcile(&registry, Vec::new()).await;
        assert_eq!(done.removed, ["f2"]);
        assert_eq!(names(&registry), ["api1", "cli1"]);
        registry.close().await;
    }
}
