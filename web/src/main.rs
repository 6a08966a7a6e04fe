//! `notifyhub`: receives sd_notify messages from many guests and serves their state over HTTP;
//! its client commands wait for, show and feed guests (`cli`).

mod cli;

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory as _, Parser, Subcommand};
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
    #[command(flatten)]
    hub: cli::client::HubArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive notifications and serve the REST API, SSE and dashboard.
    Serve(ServeArgs),
    // The client commands' help is the doc comment of their arguments, in `cli`.
    Wait(cli::wait::WaitArgs),
    Status(cli::status::StatusArgs),
    Events(cli::events::EventsArgs),
    Send(cli::send::SendArgs),
    Parse(cli::parse::ParseArgs),
    Launch(cli::launch::LaunchArgs),
    Completions(cli::docs::CompletionsArgs),
    Man(cli::docs::ManArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to serve HTTP on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7370")]
    listen: SocketAddr,
    /// Run directory for the guests' notify sockets [default: $RUNTIME_DIRECTORY, else
    /// $XDG_RUNTIME_DIR/notifyhub, else /run/notifyhub as root].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Register a guest at start (repeatable); prints its NOTIFY_SOCKET.
    #[arg(long = "guest", value_name = "NAME")]
    guests: Vec<String>,
    /// Warn about a guest whose boot sends no READY=1 within SECONDS of its first message
    /// (`ready_timed_out`); no limit by default.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    ready_timeout: Option<u64>,
    #[command(flatten)]
    vsock: notifyhub_web::vsock::VsockArgs,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
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
        Command::Serve(args) => run_serve(args),
        Command::Wait(args) => cli::client::block_on(cli::wait::run(&cli.hub, args)),
        Command::Status(args) => cli::client::block_on(cli::status::run(&cli.hub, args)),
        Command::Events(args) => cli::client::block_on(cli::events::run(&cli.hub, args)),
        Command::Launch(args) => cli::client::block_on(cli::launch::run(&cli.hub, args)),
        Command::Send(args) => cli::send::run(args),
        Command::Parse(args) => cli::parse::run(args),
        Command::Completions(args) => cli::docs::completions(Cli::command(), &args),
        Command::Man(args) => cli::docs::man(Cli::command(), &args),
    };
    cli::finish(result)
}

/// `serve` on a multi-threaded runtime; any error is reported with its causes.
fn run_serve(args: ServeArgs) -> cli::Result {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|error| cli::Failure::failed(format_args!("cannot start the runtime: {error}")))?;
    runtime
        .block_on(serve(args))
        .map_err(|error| cli::Failure::failed(format_args!("{error:#}")))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Installed first: a signal that comes while starting up is handled once the server runs.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
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
        run_dir,
        guests: args.guests,
        ready_timeout: args.ready_timeout.map(std::time::Duration::from_secs),
        vsock: args.vsock.into_config(),
    };
    let server = Server::bind(config, shutdown.clone()).await?;
    {
        // Scripts wait for the last line, so all of it is out before it.
        let mut stdout = std::io::stdout().lock();
        for (name, path) in server.notify_sockets() {
            writeln!(stdout, "guest {name}: NOTIFY_SOCKET={path}")?;
        }
        writeln!(
            stdout,
            "notifyhub: listening on http://{}",
            server.local_addr()?
        )?;
        stdout.flush()?;
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM"),
            _ = interrupt.recv() => info!("SIGINT"),
        }
        shutdown.cancel();
    });
    server.run().await?;
    Ok(())
}
