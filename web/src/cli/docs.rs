//! `notifyhub completions SHELL` and `notifyhub man [COMMAND]`: documentation generated from the
//! command line definition itself, so it cannot drift from it.

use std::io::{self, Write};

use clap::Args;
use clap_complete::Shell;

use super::{Failure, Result, exit};

/// Write a shell completion script to stdout
///
/// For example:
///   bash: notifyhub completions bash > ~/.local/share/bash-completion/completions/notifyhub
///   zsh:  notifyhub completions zsh > "${fpath[1]}/_notifyhub"
///   fish: notifyhub completions fish > ~/.config/fish/completions/notifyhub.fish
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    shell: Shell,
}

/// Write a man page to stdout
///
/// The page is notifyhub(1), or notifyhub-COMMAND(1) for one command, in roff. For example: notifyhub man | man -l -   or   notifyhub man wait > notifyhub-wait.1
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// The command to document instead of notifyhub itself, e.g. wait.
    #[arg(value_name = "COMMAND")]
    command: Option<String>,
}

pub(crate) fn completions(mut command: clap::Command, args: &CompletionsArgs) -> Result {
    let mut stdout = io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "notifyhub", &mut stdout);
    Ok(())
}

pub(crate) fn man(mut command: clap::Command, args: &ManArgs) -> Result {
    // Built first, so that the subcommands have the global options and their full names.
    command.build();
    let source = format!("notifyhub {}", command.get_version().unwrap_or_default());
    let mut page = Vec::new();
    match &args.command {
        None => {
            let exits = [
                (0, "success"),
                (exit::FAILURE, "the command failed"),
                (exit::TIMEOUT, "wait: the timeout passed"),
                (
                    exit::CANNOT_HOLD,
                    "wait: the condition can no longer hold in this boot",
                ),
                (exit::NO_GUEST, "no guest of that name, or it was removed"),
                (
                    exit::HUB,
                    "the hub is unreachable, shutting down, or gave an unexpected answer",
                ),
                (exit::USAGE, "usage error"),
                (exit::DATA, "parse: some lines could not be read"),
                (exit::NO_INPUT, "parse: a file could not be read"),
            ];
            render(&command, &source, &exits, &mut page)?;
        }
        Some(name) => {
            let Some(sub) = command.find_subcommand(name) else {
                let names: Vec<&str> = command
                    .get_subcommands()
                    .map(clap::Command::get_name)
                    .collect();
                return Err(Failure::usage(format_args!(
                    "no command {name:?}; the commands are {}",
                    names.join(", ")
                )));
            };
            let sub = sub.clone().name(format!("notifyhub-{name}"));
            render(&sub, &source, exits_of(name), &mut page)?;
        }
    }
    io::stdout().lock().write_all(&page)?;
    Ok(())
}

/// The exit statuses of the command `name`.
fn exits_of(name: &str) -> &'static [(u8, &'static str)] {
    match name {
        "wait" => super::wait::EXITS,
        "events" => super::events::EXITS,
        "send" => super::send::EXITS,
        "parse" => super::parse::EXITS,
        "status" | "launch" => super::CLIENT_EXITS,
        _ => &[
            (0, "success"),
            (exit::FAILURE, "the command failed"),
            (exit::USAGE, "usage error"),
        ],
    }
}

/// A whole page: clap_mangen's sections, then EXIT STATUS, ENVIRONMENT and SEE ALSO.
fn render(
    command: &clap::Command,
    source: &str,
    exits: &[(u8, &str)],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let man = clap_mangen::Man::new(command.clone())
        .source(source)
        .manual("notifyhub");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if command.get_arguments().any(|arg| !arg.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if command.has_subcommands() {
        man.render_subcommands_section(out)?;
    }
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    for (code, meaning) in exits {
        writeln!(out, ".TP\n{code}\n{}", roff_text(meaning))?;
    }
    writeln!(out, ".SH ENVIRONMENT")?;
    for (name, meaning) in [
        (
            "NOTIFYHUB_URL",
            "The hub's URL, as --hub (default http://127.0.0.1:7370).",
        ),
        (
            "NOTIFY_SOCKET",
            "Where send sends to, unless --socket is given.",
        ),
    ] {
        writeln!(out, ".TP\n\\fB{name}\\fR\n{}", roff_text(meaning))?;
    }
    writeln!(out, ".SH \"SEE ALSO\"")?;
    writeln!(
        out,
        "{}",
        roff_text("sd_notify(3), systemd-notify(1), systemd.system-credentials(7)")
    )?;
    if command.get_version().is_some() {
        man.render_version_section(out)?;
    }
    Ok(())
}

/// Plain text as a roff text line: backslashes and hyphens escaped, no leading control
/// character.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roff_escapes() {
        assert_eq!(roff_text("a-b \\ c"), "a\\-b \\e c");
        assert_eq!(roff_text(".x"), "\\&.x");
    }
}
