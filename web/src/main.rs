//! `notifyhub`: receives sd_notify messages from many guests and serves their state over HTTP;
//! its client commands wait for, show and feed guests (`cli`).

mod cli;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use notifyhub_web::server::{Config, Server, default_run_dir};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

/// Receives systemd's sd_notify messages from VM and container guests, and tells what state
/// they are in.
///
/// `notifyhub serve` runs the hub: a notify socket per guest, a REST API, Server-Sent Events
/// and a dashboard. The other commands are its clients (wait, status, events, launch), a sender
/// for guests without systemd-notify (send), and an offline log reader (parse).
#[derive(Debug, Parser)]
#[command(
    name = "notifyhub",
    version,
    max_term_width = 100,
    after_long_help = "Each command's --help lists its exit statuses; a wrong command line exits \
                       with 64 (EX_USAGE). See also: notifyhub man COMMAND."
)]
struct Cli {
    /// `--hub` and `--token-file` before the command, as earlier versions took them.
    #[command(flatten)]
    hub: cli::client::HubArgsBeforeCommand,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once per run: the size of `serve`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Receive notifications and serve the REST API, SSE and dashboard.
    ///
    /// Started by systemd socket activation, it takes over the sockets passed in LISTEN_FDS by
    /// their FileDescriptorName=: http replaces --listen, vsock and vsock-seqpacket replace
    /// --vsock-port and --vsock-seqpacket-port, notify-NAME is guest NAME's notify socket. Any
    /// other name or a socket of the wrong kind stops the start.
    Serve(ServeArgs),
    // The client commands' help is the doc comment of their arguments, in `cli`.
    Wait(cli::wait::WaitArgs),
    Status(cli::status::StatusArgs),
    Events(cli::events::EventsArgs),
    Send(cli::send::SendArgs),
    Parse(cli::parse::ParseArgs),
    Launch(cli::launch::LaunchArgs),
    Config(cli::config::ConfigArgs),
    Completions(cli::docs::CompletionsArgs),
    Man(cli::docs::ManArgs),
}

impl Command {
    /// The hub options of a client command (`wait`, `status`, `events`, `launch`).
    fn hub_mut(&mut self) -> Option<&mut cli::client::HubArgs> {
        match self {
            Self::Wait(args) => Some(&mut args.hub),
            Self::Status(args) => Some(&mut args.hub),
            Self::Events(args) => Some(&mut args.hub),
            Self::Launch(args) => Some(&mut args.hub),
            _ => None,
        }
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Read options from this TOML file: its keys are these long options (`guest = ["web1"]`,
    /// `vsock-port = 7371`); the command line and the NOTIFYHUB_* variables override it, and
    /// SIGHUP reloads it [default: /etc/notifyhub/notifyhub.toml, if it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// What a reload on SIGHUP starts from (set by `cli::config::serve_args`).
    #[arg(skip)]
    reload: Option<cli::config::Reload>,
    /// Where to serve HTTP: IP:PORT (port 0: any free port), or unix:PATH (a UNIX socket whose
    /// file mode, --listen-mode, says who may connect). A non-loopback IP needs --token-file or
    /// --insecure-no-auth.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7370")]
    listen: notifyhub_web::security::Listen,
    /// Run directory for the guests' notify sockets [default: $RUNTIME_DIRECTORY, else
    /// $XDG_RUNTIME_DIR/notifyhub, else /run/notifyhub as root].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Register a guest at start (repeatable); prints its NOTIFY_SOCKET.
    #[arg(long = "guest", value_name = "NAME")]
    guests: Vec<String>,
    /// Warn about a guest whose boot sends no READY=1 within DURATION of its first message
    /// (`ready_timed_out`): seconds (300, 1.5) or with a unit (90s, 1500ms, 5m); no limit by
    /// default.
    #[arg(long, value_name = "DURATION", value_parser = notifyhub_web::config::parse_positive_duration)]
    ready_timeout: Option<std::time::Duration>,
    #[command(flatten)]
    limits: notifyhub_web::limit::LimitArgs,
    #[command(flatten)]
    journal: notifyhub_web::journal::JournalArgs,
    #[command(flatten)]
    access: notifyhub_web::security::AccessArgs,
    #[command(flatten)]
    vsock: notifyhub_web::vsock::VsockArgs,
}

fn main() -> ExitCode {
    let cli = match cli::config::parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // --help and --version are no errors; a wrong command line is EX_USAGE (64), not
            // clap's 2, which `wait` uses for a timeout.
            return if error.use_stderr() {
                ExitCode::from(cli::exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Serve(_) => cli::config::serve_args().and_then(run_serve),
        Command::Wait(args) => cli::client::block_on(cli::wait::run(args)),
        Command::Status(args) => cli::client::block_on(cli::status::run(args)),
        Command::Events(args) => cli::client::block_on(cli::events::run(args)),
        Command::Launch(args) => cli::client::block_on(cli::launch::run(args)),
        Command::Send(args) => cli::send::run(args),
        Command::Parse(args) => cli::parse::run(args),
        Command::Config(args) => cli::config::run(args),
        Command::Completions(args) => cli::docs::completions(cli::config::command(), &args),
        Command::Man(args) => cli::docs::man(cli::config::command(), &args),
    };
    cli::finish(result)
}

/// `serve` on a multi-threaded runtime; any error is reported with its causes.
fn run_serve(args: ServeArgs) -> cli::Result {
    // Before any thread starts: taking the passed sockets removes LISTEN_* from the environment.
    // SAFETY: only this thread exists yet; nothing else reads or writes the environment.
    #[allow(unsafe_code)]
    let inherited = unsafe { notifyhub_web::activation::Inherited::take_from_env() }
        .map_err(|error| cli::Failure::failed(format_args!("socket activation: {error}")))?;
    // Journal lines (`<6>…`, no timestamps) when stderr is the journal, else timestamped.
    notifyhub_web::logging::init(
        EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
    );
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|error| cli::Failure::failed(format_args!("cannot start the runtime: {error}")))?;
    runtime
        .block_on(serve(args, inherited))
        .map_err(|error| cli::Failure::failed(cli::causes(error.as_ref())))
}

async fn serve(
    args: ServeArgs,
    inherited: notifyhub_web::activation::Inherited,
) -> anyhow::Result<()> {
    // Installed first: a signal that comes while starting up is handled once the server runs.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // SIGHUP reloads the configuration; installed now, it no longer ends the process.
    let hangup = signal(SignalKind::hangup())?;
    let reload = args.reload;
    let run_dir = match args.run_dir {
        Some(dir) => dir,
        None => default_run_dir(
            |name| std::env::var_os(name),
            rustix::process::geteuid().is_root(),
        )?,
    };
    let shutdown = CancellationToken::new();
    let config = Config {
        listen: args.listen,
        http_auth: args.access.http_auth()?,
        http_socket_mode: args.access.listen_mode,
        socket_access: args.access.socket_access(),
        run_dir,
        guests: args.guests,
        ready_timeout: args.ready_timeout,
        rate_limit: args.limits.rate_limit(),
        history_memory: args.limits.history_memory,
        http_limits: args.limits.http_limits(),
        journal: args.journal.into_config(
            |name| std::env::var_os(name),
            rustix::process::geteuid().is_root(),
        )?,
        vsock: args.vsock.into_config(),
    };
    // The token the server checks, which a reload reads again.
    let token = config.http_auth.token.clone();
    // Every guest holds a socket and every HTTP client a connection: allow all we may.
    notifyhub_web::limit::raise_and_log_nofile_limit();
    if !inherited.is_empty() {
        info!(sockets = %inherited, "taking over the sockets the service manager passed");
    }
    let server = Server::bind_with(config, inherited, shutdown.clone()).await?;
    {
        // Scripts wait for the last line, so all of it is out before it.
        let mut stdout = std::io::stdout().lock();
        for (name, path) in server.notify_sockets() {
            writeln!(stdout, "guest {name}: NOTIFY_SOCKET={path}")?;
        }
        writeln!(stdout, "notifyhub: listening on {}", server.http_address()?)?;
        stdout.flush()?;
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM"),
            _ = interrupt.recv() => info!("SIGINT"),
        }
        shutdown.cancel();
    });
    if let Some(reload) = reload {
        let reload = reload.with_token(token);
        tokio::spawn(reload.run(hangup, server.state().clone()));
    }
    server.run().await?;
    Ok(())
}
