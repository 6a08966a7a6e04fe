//! The configuration file on the command line: `notifyhub config check [FILE]`, the file and
//! `NOTIFYHUB_*` variables merged into `serve`'s options ([`load`]), and the reload on SIGHUP
//! ([`Reload`]). The rules (keys, precedence, checks) are `notifyhub_web::config`'s.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Subcommand};
use notifyhub_web::AppState;
use notifyhub_web::config::{
    self, APPLIED_ON_RELOAD, ConfigFile, FileErrors, FileGuests, LoadError, Problem,
};
use notifyhub_web::security::Token;
use notifyhub_web::vsock::Reach;
use sd_notify::NotifyState;
use tokio::signal::unix::Signal;
use tracing::{error, info, warn};

use super::{Failure, exit};
use crate::{Cli, ServeArgs};

/// The name of the `serve` subcommand.
const SERVE: &str = "serve";

/// The whole command line, with the `NOTIFYHUB_*` variable of every `serve` option
/// ([`config::with_env`]); for parsing, help, man pages and completions alike.
pub(crate) fn command() -> clap::Command {
    Cli::command().mut_subcommand(SERVE, config::with_env)
}

/// Parses the process's command line with [`command`].
///
/// # Errors
/// clap's, to be printed as clap prints them.
pub(crate) fn parse() -> Result<Cli, clap::Error> {
    let mut command = command();
    let matches = command.try_get_matches_from_mut(std::env::args_os())?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(|error| error.format(&mut command))?;
    let (_, command_matches) = matches.subcommand().expect("a command is required");
    let before = &cli.hub;
    before
        .apply(cli.command.hub_mut(), command_matches)
        .map_err(|message| command.error(clap::error::ErrorKind::ArgumentConflict, message))?;
    Ok(cli)
}

/// `serve`'s options from the process's command line, environment and configuration file
/// ([`load`]), with what a reload on SIGHUP starts from.
pub(crate) fn serve_args() -> Result<ServeArgs, Failure> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let loaded = load(&argv)?;
    let reload = Reload::new(argv, &loaded);
    let mut args = loaded.args;
    args.reload = Some(reload);
    Ok(args)
}

/// `serve`'s options from the command line, the environment and the configuration file, and
/// what a reload needs to know.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The options, merged.
    pub(crate) args: ServeArgs,
    /// `serve`'s matches, merged: what each option's value is and where it came from.
    matches: ArgMatches,
    /// The guests the file declares (and the command line and environment do not).
    file_guests: Vec<(String, Reach)>,
}

/// Reads `serve`'s options: `argv` and the environment, then the file of `--config` (or
/// `NOTIFYHUB_CONFIG`; without either, [`config::DEFAULT_PATH`] if it exists) for what they
/// leave open, then [`config::check`]s the guests.
///
/// # Errors
/// `EX_NOINPUT` (66) for a named file that is missing or a file that cannot be read, `EX_CONFIG`
/// (78) for a file with errors (each pointing into the file), `EX_USAGE` (64) for a command line
/// that no longer parses.
pub(crate) fn load(argv: &[OsString]) -> Result<Loaded, Failure> {
    let first = command()
        .try_get_matches_from(argv)
        .map_err(|error| Failure::usage(config::clap_message(&error)))?;
    let first = serve_matches(&first)?;
    let base = ServeArgs::from_arg_matches(first)
        .map_err(|error| Failure::usage(config::clap_message(&error)))?;
    // Reloads never touch the guests of the command line and the environment.
    let fixed: HashSet<String> = guests(&base).into_iter().map(|(name, _)| name).collect();
    let (path, explicit) = match &base.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(config::DEFAULT_PATH), false),
    };
    let Some(file) = read(&path, explicit)? else {
        return Ok(Loaded {
            args: base,
            matches: first.clone(),
            file_guests: Vec::new(),
        });
    };
    let (matches, args) = merge(command(), argv, first, &file).map_err(invalid)?;
    let file_guests = guests(&args)
        .into_iter()
        .filter(|(name, _)| !fixed.contains(name))
        .collect();
    Ok(Loaded {
        args,
        matches,
        file_guests,
    })
}

fn serve_matches(matches: &ArgMatches) -> Result<&ArgMatches, Failure> {
    matches
        .subcommand_matches(SERVE)
        .ok_or_else(|| Failure::usage("not a `serve` command line"))
}

/// The `serve` subcommand of `command`.
fn serve_command(command: &clap::Command) -> &clap::Command {
    command
        .find_subcommand(SERVE)
        .expect("notifyhub has a serve command")
}

/// The file at `path`, parsed as far as it goes: its problems are reported by [`merge`], with
/// those between options.
fn read(path: &Path, explicit: bool) -> Result<Option<ConfigFile>, Failure> {
    ConfigFile::read(path, explicit, serve_command(&command())).map_err(|error| match error {
        LoadError::Invalid(errors) => invalid(errors),
        other => Failure::new(exit::NO_INPUT, other),
    })
}

fn invalid(errors: FileErrors) -> Failure {
    Failure::new(exit::CONFIG, errors)
}

/// Parses `argv` with what `file` may still set ([`ConfigFile::args`]) added, given `first`,
/// the `serve` matches of `argv` alone; then checks the guests. The merged `serve` matches and
/// options.
///
/// Every error it can find is reported at once: the file's own ([`ConfigFile::problems`]), then
/// the errors between options among the values that passed. clap stops at the first of those,
/// so the key it is placed at is left out and the parse tried again. An error between options
/// that names an option whose value was refused is left out: it may only say that the value is
/// missing. After a TOML syntax error the file is cut short there, so only what holds of a part
/// of it is reported: the guests' names and duplicates, not the rules between options.
fn merge(
    command: clap::Command,
    argv: &[OsString],
    first: &ArgMatches,
    file: &ConfigFile,
) -> Result<(ArgMatches, ServeArgs), FileErrors> {
    let mut problems = file.problems().to_vec();
    let complete = file.is_complete();
    let parse = |file: &ConfigFile| {
        let mut merged = argv.to_vec();
        merged.extend(file.args(first));
        let matches = command.clone().try_get_matches_from(merged)?;
        let matches = matches
            .subcommand_matches(SERVE)
            .expect("the same subcommand")
            .clone();
        let args = ServeArgs::from_arg_matches(&matches)?;
        Ok::<_, clap::Error>((matches, args))
    };
    let mut rest = file.clone();
    let (matches, args) = loop {
        let error = match parse(&rest) {
            Ok(parsed) => break parsed,
            Err(error) => error,
        };
        let message = config::clap_message(&error);
        let key = rest
            .error_key(&message, |without| parse(without).is_ok())
            .map(str::to_owned);
        if complete && !file.names_faulty_option(&message) {
            let span = key.as_deref().and_then(|key| rest.key_span(key));
            let message = match span {
                Some(_) => message,
                None => format!("{message} (with the options the file sets)"),
            };
            problems.push(Problem { message, span });
        }
        match key {
            Some(key) => rest = rest.without(&key),
            // Nothing in the file to blame, or left to leave out.
            None => return Err(file.errors(problems)),
        }
    };
    let vsock = args.vsock.clone().into_config();
    for issue in config::check(&args.guests, &vsock) {
        let span = match &issue.guest {
            Some(guest) => file.guest_span(guest),
            None if !complete || file.names_faulty_option(&issue.message) => continue,
            None => file.option_span(&issue.message),
        };
        problems.push(Problem {
            message: issue.message,
            span,
        });
    }
    if problems.is_empty() {
        Ok((matches, args))
    } else {
        Err(file.errors(problems))
    }
}

/// The guests `args` declares, with how each is reached.
fn guests(args: &ServeArgs) -> Vec<(String, Reach)> {
    config::declared_guests(&args.guests, &args.vsock.clone().into_config())
}

/// Work with the configuration file of `notifyhub serve`.
///
/// The file is TOML; its keys are serve's long options and take what they take on the command
/// line, in the option's TOML type (`listen = "127.0.0.1:7370"`, `guest = ["web1", "web2"]`,
/// `vsock-port = 7371` unquoted, `ready-timeout = 300` or "90s", `auto-register = true`,
/// `socket-mode = "0660"`). The command line and the NOTIFYHUB_* variables (one per option,
/// shown in `notifyhub serve --help`) override it; repeatable options add up. SIGHUP makes
/// serve read it again.
#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    Check(CheckArgs),
}

/// Check a configuration file as `notifyhub serve --config FILE` would read it, with no other
/// options: keys, TOML types, values, guest names, CIDs and conflicts. Every error it finds is
/// reported in one run, each with its line and column.
#[derive(Debug, Args)]
#[command(after_long_help = check_exits())]
struct CheckArgs {
    /// The file [default: $NOTIFYHUB_CONFIG, else /etc/notifyhub/notifyhub.toml].
    #[arg(value_name = "FILE", env = "NOTIFYHUB_CONFIG")]
    file: Option<PathBuf>,
}

fn check_exits() -> String {
    super::exit_help(&[
        (0, "the file is valid"),
        (exit::USAGE, "usage error"),
        (exit::NO_INPUT, "the file does not exist or cannot be read"),
        (
            exit::CONFIG,
            "the file has errors (each printed as FILE:LINE:COLUMN)",
        ),
    ])
}

/// `notifyhub config …`.
pub(crate) fn run(args: ConfigArgs) -> super::Result {
    match args.command {
        ConfigCommand::Check(args) => check(args),
    }
}

fn check(args: CheckArgs) -> super::Result {
    let path = args
        .file
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    // The file alone: no NOTIFYHUB_* variables (`Cli::command()` has none for serve).
    let command = Cli::command();
    let file = read(&path, true)?.expect("an explicit file is there or an error");
    let argv: Vec<OsString> = ["notifyhub", SERVE].map(OsString::from).to_vec();
    let first = command
        .clone()
        .try_get_matches_from(&argv)
        .map_err(|error| Failure::usage(config::clap_message(&error)))?;
    merge(command, &argv, serve_matches(&first)?, &file).map_err(invalid)?;
    writeln!(std::io::stdout().lock(), "{}: valid", path.display())?;
    Ok(())
}

/// Reloads the configuration on SIGHUP, as `sd_notify(3)` asks of a `Type=notify-reload`
/// service: `RELOADING=1` with `MONOTONIC_USEC=`, then `READY=1` once done (also when the file
/// was invalid and nothing changed).
///
/// A reload reads the command line, the environment and the file again as at start ([`load`]).
/// It registers the guests the file now declares and unregisters those it no longer does (only
/// those: guests from the command line, the environment or the API stay), sets the readiness
/// timeout and rate limit for guests registered from then on, reads the token file again (an
/// unusable one is logged and the old token kept), and logs every other changed option as
/// needing a restart. A file with errors is logged and changes nothing.
#[derive(Debug)]
pub(crate) struct Reload {
    argv: Vec<OsString>,
    /// `serve`'s matches as last applied.
    matches: ArgMatches,
    file_guests: FileGuests,
    /// The bearer token HTTP requires (`--token-file`), read again on every reload.
    token: Option<Arc<Token>>,
}

impl Reload {
    /// What reloading starts from: `loaded`, read from `argv`, with its guests registered.
    pub(crate) fn new(argv: Vec<OsString>, loaded: &Loaded) -> Self {
        Self {
            argv,
            matches: loaded.matches.clone(),
            file_guests: FileGuests::new(loaded.file_guests.clone()),
            token: None,
        }
    }

    /// Reads the token file into `token` on every reload: the token the running server checks.
    pub(crate) fn with_token(self, token: Option<Arc<Token>>) -> Self {
        Self { token, ..self }
    }

    /// Reloads on every `hangup` signal until the hub shuts down.
    pub(crate) async fn run(mut self, mut hangup: Signal, state: AppState) {
        loop {
            tokio::select! {
                () = state.shutdown.cancelled() => return,
                signal = hangup.recv() => if signal.is_none() { return },
            }
            info!("SIGHUP: reloading the configuration");
            let reloading = NotifyState::monotonic_usec_now()
                .map(|now| vec![NotifyState::Reloading, now])
                .unwrap_or_else(|_| vec![NotifyState::Reloading]);
            notify(&reloading);
            match self.reload(&state).await {
                Ok(()) => info!("configuration reloaded"),
                Err(message) => {
                    error!("reload failed; the running configuration stays:\n{message}")
                }
            }
            let status = notifyhub_web::supervisor::status_line(&state.hub);
            notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        }
    }

    async fn reload(&mut self, state: &AppState) -> Result<(), String> {
        let loaded = load(&self.argv).map_err(|failure| match failure {
            Failure::Error { message, .. } => message,
            Failure::Exit(code) => format!("exit status {code}"),
        })?;
        let command = command();
        let changed =
            config::changed_options(serve_command(&command), &self.matches, &loaded.matches);
        let changed = |option: &str| changed.iter().any(|o| o == option);
        for option in serve_command(&command)
            .get_arguments()
            .filter_map(config::config_key)
        {
            if changed(option) && !APPLIED_ON_RELOAD.contains(&option) {
                warn!(
                    option,
                    "changed in the configuration; restart the hub to apply it"
                );
            }
        }
        if changed("ready-timeout") {
            let timeout = loaded.args.ready_timeout;
            state.hub.set_ready_timeout(timeout);
            info!(ready_timeout = ?timeout, "readiness timeout set, for guests registered from now on");
        }
        self.reload_token(loaded.args.access.token_file.as_deref());
        if changed("rate-limit") || changed("rate-burst") {
            let limit = loaded.args.limits.rate_limit();
            state.registry.set_rate_limit(limit);
            info!(?limit, "rate limit set, for guests registered from now on");
        }
        self.file_guests
            .reconcile(&state.registry, loaded.file_guests)
            .await;
        self.matches = loaded.matches;
        Ok(())
    }
}

impl Reload {
    /// Reads the token file again (`file`: `--token-file` as reloaded), keeping the old token
    /// when it cannot be used. Turning authentication on or off needs a restart.
    fn reload_token(&self, file: Option<&Path>) {
        match (&self.token, file) {
            (Some(token), Some(file)) => match token.reload(file) {
                Ok(true) => info!(file = %file.display(), "bearer token replaced"),
                Ok(false) => {}
                Err(error) => {
                    let cause = std::error::Error::source(&error)
                        .map(|cause| format!(": {cause}"))
                        .unwrap_or_default();
                    error!("{error}{cause}; the bearer token stays as it was");
                }
            },
            (Some(_), None) => warn!(
                option = "token-file",
                "removed from the configuration; restart the hub to serve without a token \
                 (the bearer token stays as it was)"
            ),
            (None, Some(_)) => warn!(
                option = "token-file",
                "changed in the configuration; restart the hub to apply it"
            ),
            (None, None) => {}
        }
    }
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        warn!(%error, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Every option of `serve` must be reachable from the file and the environment. An option
    /// added later that the generic mapping cannot carry (no long name, a counter, several values
    /// an occurrence) fails here, with what to change.
    #[test]
    fn every_serve_option_has_a_key_and_a_variable() {
        let mut command = command();
        command.build();
        let serve = serve_command(&command);
        let mut keys = Vec::new();
        for arg in serve.get_arguments() {
            if arg.is_global_set() || arg.get_id() == "help" {
                continue;
            }
            let id = arg.get_id();
            let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
            assert!(
                env.as_deref()
                    .is_some_and(|env| env.starts_with(config::ENV_PREFIX)),
                "serve option {id} has no NOTIFYHUB_* variable ({env:?}): give it a long name, \
                 and no env of its own, so that config::with_env names it"
            );
            if id == config::CONFIG_OPTION {
                assert_eq!(config::config_key(arg), None);
                continue;
            }
            let key = config::config_key(arg).unwrap_or_else(|| {
                panic!(
                    "serve option {id} has no key in the configuration file: config::config_key \
                     takes long options that are set once, repeated or switched on"
                )
            });
            assert_eq!(env.unwrap(), config::env_var(key));
            keys.push(key.to_owned());
        }
        for key in [
            "listen",
            "run-dir",
            "guest",
            "ready-timeout",
            "vsock-port",
            "vm",
            "hybrid",
        ] {
            assert!(keys.iter().any(|k| k == key), "no key {key} in {keys:?}");
        }
        for key in APPLIED_ON_RELOAD {
            assert!(
                keys.iter().any(|k| k == key),
                "{key} is applied on reload but no key"
            );
        }
    }

    /// The TOML type of every option of `serve`: an option added later fails here until its
    /// type, as the file takes it, is looked at (`config::TomlType::of` follows the value name,
    /// then the parser's type).
    #[test]
    fn every_serve_option_has_its_toml_type() {
        use config::TomlType::{Boolean, Duration as Dur, Integer, Number, Size, String as Text};
        let mut command = command();
        command.build();
        let types: Vec<(&str, config::TomlType)> = serve_command(&command)
            .get_arguments()
            .filter_map(|arg| Some((config::config_key(arg)?, config::TomlType::of(arg))))
            .collect();
        assert_eq!(
            types,
            [
                ("listen", Text),
                ("run-dir", Text),
                ("guest", Text),
                ("ready-timeout", Dur),
                ("rate-limit", Number),
                ("rate-burst", Integer),
                ("history-memory", Size),
                ("max-connections", Integer),
                ("http-idle-timeout", Dur),
                ("max-sse-clients", Integer),
                ("state-dir", Text),
                ("retain-days", Integer),
                ("retain-messages", Integer),
                ("token-file", Text),
                ("insecure-no-auth", Boolean),
                ("allowed-host", Text),
                ("listen-mode", Text),
                ("socket-mode", Text),
                ("socket-owner", Text),
                ("vsock-port", Integer),
                ("vsock-seqpacket-port", Integer),
                ("vsock-idle-ms", Integer),
                ("vm", Text),
                ("hybrid", Text),
                ("auto-register", Boolean),
                ("max-guests", Integer),
                ("ignore-unprivileged", Boolean),
            ]
        );
    }

    /// `notifyhub serve ARGS` merged with the file `t.toml` holding `text`.
    fn merged(text: &str, args: &[&str]) -> Result<(ArgMatches, ServeArgs), FileErrors> {
        let command = Cli::command();
        let file =
            ConfigFile::parse_partial(Path::new("t.toml"), text.into(), serve_command(&command));
        let argv: Vec<OsString> = ["notifyhub", SERVE]
            .iter()
            .chain(args)
            .map(OsString::from)
            .collect();
        let first = command.clone().try_get_matches_from(&argv).unwrap();
        merge(command, &argv, serve_matches(&first).unwrap(), &file)
    }

    #[test]
    fn file_values_reach_serve_args() {
        let text = "listen = \"127.0.0.1:9\"\nguest = [\"f1\"]\nvsock-port = 7371\n\
                    vm = [\"vm1=42\"]\nready-timeout = 30\n";
        let (_, args) = merged(text, &["--guest", "c1"]).unwrap();
        assert_eq!(args.guests, ["c1", "f1"]);
        assert_eq!(args.ready_timeout, Some(Duration::from_secs(30)));
        assert_eq!(args.vsock.vsock_port, Some(7371));
        assert_eq!(args.vsock.vms[0].reach, Reach::Cid(42));
    }

    /// The lines of `errors` that name a place in `t.toml`.
    fn places(errors: &FileErrors) -> Vec<String> {
        errors
            .to_string()
            .lines()
            .filter(|line| line.starts_with("t.toml"))
            .map(str::to_owned)
            .collect()
    }

    /// The file's own errors and those between the options that passed, in one run, in the
    /// file's order; an error that may only come from a refused value is left out.
    #[test]
    fn every_error_in_one_run() {
        let text = "vsock-port = \"7371\"\nguest = [\"web1\", \"web1\"]\nvm = [\"vm1=42\", \
                    \"vm2=42\"]\ntoken-file = \"/t\"\ninsecure-no-auth = true\nlisen = 1\n\
                    vsock-seqpacket-port = 7371\nauto-register = true\n";
        let shown = places(&merged(text, &[]).unwrap_err());
        let expected = [
            "t.toml:1:14: `vsock-port` takes an integer, not a string: write vsock-port = 7371, \
             without quotes",
            "t.toml:2:18: guest \"web1\" is declared twice",
            "t.toml:3:17: CID 42 is guest \"vm1\"'s already",
            "t.toml:4:1: the argument '--token-file <FILE>' cannot be used with \
             '--insecure-no-auth'",
            "t.toml:6:1: unknown key `lisen`: the keys are the long options",
        ];
        assert_eq!(shown.len(), expected.len(), "{shown:#?}");
        for (line, expected) in shown.iter().zip(expected) {
            assert!(line.starts_with(expected), "{line}\nis not\n{expected}");
        }
        // Without the bad port, the rule between the ports holds it (and --auto-register has
        // its listener).
        let fixed = places(&merged(&text.replace("\"7371\"", "7371"), &[]).unwrap_err());
        assert_eq!(fixed.len(), expected.len(), "{fixed:#?}");
        assert!(
            fixed[0]
                .starts_with("t.toml:1:1: --vsock-port and --vsock-seqpacket-port are both 7371"),
            "{fixed:#?}"
        );
    }

    #[test]
    fn semantic_errors_point_into_the_file() {
        let text = "guest = [\"web1\"]\nvm = [\"web1=42\", \"vm2=42\"]\n";
        let shown = places(&merged(text, &["--vsock-port", "7371"]).unwrap_err());
        assert_eq!(
            shown,
            [
                "t.toml:2:7: guest \"web1\" is declared twice",
                "t.toml:2:18: CID 42 is guest \"web1\"'s already",
            ]
        );
    }
}
