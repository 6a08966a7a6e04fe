//! `notifyhub`: receives sd_notify messages from many guests and serves their state over HTTP.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use notifyhub_web::server::{Config, Server, default_run_dir};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive notifications and serve the REST API, SSE and dashboard.
    Serve(ServeArgs),
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
    }
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
