//! `notifyhub launch NAME`: how to start a VM so that its guest reports to this hub.

use std::io::Write as _;

use clap::Args;
use reqwest::StatusCode;
use serde_json::Value;

use super::client::{Hub, HubArgs, REQUEST_TIMEOUT};
use super::format::{escape_line, str_field};
use super::{CLIENT_EXITS, Failure, Result, exit};

/// Show how to start a VM so that its guest reports to the hub
///
/// Prints the hub's launch snippets for the guest (GET /api/v1/guests/NAME/launch): the
/// options of each VMM (QEMU, Firecracker, ...) that hand the guest's systemd its notify socket.
#[derive(Debug, Args)]
#[command(after_long_help = super::exit_help(CLIENT_EXITS))]
pub(crate) struct LaunchArgs {
    /// The guest's name.
    name: String,
    /// Print the hub's JSON untouched.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(crate) hub: HubArgs,
}

pub(crate) async fn run(args: LaunchArgs) -> Result {
    super::check_guest_name(&args.name)?;
    let hub = Hub::new(&args.hub)?;
    let answer = hub
        .get(
            hub.api_url(&["guests", &args.name, "launch"]),
            REQUEST_TIMEOUT,
        )
        .await?;
    match answer.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            // Either no such guest, or a hub without the route: the guest itself tells.
            let guest = hub
                .get(hub.api_url(&["guests", &args.name]), REQUEST_TIMEOUT)
                .await?;
            return Err(match guest.status {
                StatusCode::OK => Failure::new(
                    exit::HUB,
                    "this hub has no launch snippets (it is older than `notifyhub launch`)",
                ),
                StatusCode::NOT_FOUND => guest.no_guest(),
                _ => guest.unexpected(),
            });
        }
        _ => return Err(answer.unexpected()),
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", answer.body.trim_end())?;
        return Ok(());
    }
    stdout.write_all(snippets_text(&answer.json()?).as_bytes())?;
    Ok(())
}

/// `{"guest", "notify_socket", "snippets": [{"vmm", "text"}]}` for people: a heading per VMM
/// and its text as is, ready to copy.
fn snippets_text(launch: &Value) -> String {
    let mut out = String::new();
    if let Some(socket) = str_field(launch, "notify_socket") {
        out.push_str(&format!(
            "# {}: NOTIFY_SOCKET={}\n",
            str_field(launch, "guest").map_or_else(|| "-".to_owned(), escape_line),
            escape_line(socket)
        ));
    }
    let snippets = launch
        .get("snippets")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    for snippet in snippets {
        out.push_str(&format!(
            "\n# {}\n",
            str_field(snippet, "vmm").map_or_else(|| "-".to_owned(), escape_line)
        ));
        // Multi-line text meant to be copied: kept as is, but for control characters other
        // than line breaks and tabs.
        let text = str_field(snippet, "text").unwrap_or("");
        for line in text.lines() {
            let parts: Vec<String> = line.split('\t').map(escape_line).collect();
            out.push_str(&parts.join("\t"));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn snippets() {
        let launch = json!({
            "guest": "web1",
            "notify_socket": "vsock-stream:2:9999",
            "snippets": [
                {"vmm": "qemu", "text": "qemu-system-x86_64 \\\n  -smbios type=11,value=x"},
                {"vmm": "firecracker", "text": "{\"vsock\": {}}\n"},
            ],
        });
        assert_eq!(
            snippets_text(&launch),
            "# web1: NOTIFY_SOCKET=vsock-stream:2:9999\n\
             \n# qemu\nqemu-system-x86_64 \\\n  -smbios type=11,value=x\n\
             \n# firecracker\n{\"vsock\": {}}\n"
        );
    }
}
