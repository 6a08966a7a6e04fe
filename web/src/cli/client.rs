//! The HTTP side of the client commands: the hub's URL, requests, and what its answers mean.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::{Failure, Result, exit};

/// The hub's default address: `notifyhub serve`'s default `--listen`.
pub(crate) const DEFAULT_HUB: &str = "http://127.0.0.1:7370";

/// How long to wait for a TCP connection to the hub.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an ordinary request (not a long-poll or a stream) may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The names of the commands that talk to a hub, the ones that take [`HubArgs`].
pub(crate) const CLIENT_COMMANDS: [&str; 4] = ["wait", "status", "events", "launch"];

/// Where the hub is and how to authenticate: `--hub` and `--token-file`, options of the client
/// commands ([`CLIENT_COMMANDS`]) only.
#[derive(Debug, Args)]
pub(crate) struct HubArgs {
    /// The hub's URL: http://HOST:PORT[/PREFIX], or unix:PATH for a hub that serves on a UNIX
    /// socket (`serve --listen unix:PATH`).
    #[arg(
        long = "hub",
        value_name = "URL",
        env = "NOTIFYHUB_URL",
        hide_env_values = true,
        default_value = DEFAULT_HUB,
        help_heading = "Hub"
    )]
    pub(crate) url: String,
    /// File with the hub's bearer token (`serve --token-file`), sent as `Authorization: Bearer`.
    #[arg(
        long = "token-file",
        value_name = "FILE",
        env = "NOTIFYHUB_TOKEN_FILE",
        help_heading = "Hub"
    )]
    pub(crate) token_file: Option<PathBuf>,
}

/// `--hub` and `--token-file` given before the command (`notifyhub --hub URL status`), as
/// earlier versions took them; hidden from help. [`HubArgsBeforeCommand::apply`] hands them to
/// the client command.
#[derive(Debug, Args)]
pub(crate) struct HubArgsBeforeCommand {
    #[arg(long = "hub", id = "hub_before", value_name = "URL", hide = true)]
    url: Option<String>,
    #[arg(
        long = "token-file",
        id = "token_file_before",
        value_name = "FILE",
        hide = true
    )]
    token_file: Option<PathBuf>,
}

impl HubArgsBeforeCommand {
    /// Gives `hub`, the client command's own options (`None` for any other command), what was
    /// given before the command, unless the command line also gave it after (the environment
    /// and the defaults come last). `matches` are the command's.
    ///
    /// # Errors
    /// A usage error when they were given before a command that does not talk to a hub.
    pub(crate) fn apply(
        &self,
        hub: Option<&mut HubArgs>,
        matches: &clap::ArgMatches,
    ) -> std::result::Result<(), String> {
        let given_after =
            |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        let Some(hub) = hub else {
            return match (&self.url, &self.token_file) {
                (None, None) => Ok(()),
                _ => {
                    let (last, others) = CLIENT_COMMANDS.split_last().expect("not empty");
                    Err(format!(
                        "--hub and --token-file are options of {} and {last} only",
                        others.join(", ")
                    ))
                }
            };
        };
        if let Some(url) = &self.url
            && !given_after("url")
        {
            hub.url.clone_from(url);
        }
        if let Some(file) = &self.token_file
            && !given_after("token_file")
        {
            hub.token_file = Some(file.clone());
        }
        Ok(())
    }
}

/// A hub to ask.
#[derive(Debug)]
pub(crate) struct Hub {
    /// The base URL, its path ending in `/`.
    base: Url,
    /// Where the hub is, for messages: `--hub` as given.
    shown: String,
    http: reqwest::Client,
}

/// One answer of the hub.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    /// The body as received (`--json` prints it untouched).
    pub(crate) body: String,
}

impl Hub {
    /// A client of the hub at `args.url`: an `http://` URL, optionally with a path prefix (a
    /// hub behind a reverse proxy), or `unix:/path` (HTTP over that UNIX socket); with
    /// `args.token_file`'s bearer token on every request.
    pub(crate) fn new(args: &HubArgs) -> Result<Self> {
        let builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("notifyhub/", env!("CARGO_PKG_VERSION")));
        let builder = match &args.token_file {
            Some(file) => builder.default_headers(bearer(file)?),
            None => builder,
        };
        let (url, builder) = match args.url.strip_prefix("unix:") {
            Some(path) if Path::new(path).is_absolute() => {
                ("http://localhost/", builder.unix_socket(Path::new(path)))
            }
            Some(_) => {
                return Err(Failure::usage(format_args!(
                    "invalid hub URL {:?}: a unix: hub needs an absolute path (unix:/run/x.sock)",
                    args.url
                )));
            }
            None => (args.url.as_str(), builder),
        };
        let mut base = Url::parse(url).map_err(|error| {
            Failure::usage(format_args!(
                "invalid hub URL {:?}: {error} (expected http://HOST:PORT)",
                args.url
            ))
        })?;
        if base.scheme() != "http" {
            return Err(Failure::usage(format_args!(
                "invalid hub URL {:?}: only http:// is supported (expected http://HOST:PORT)",
                args.url
            )));
        }
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = builder
            .build()
            .map_err(|error| Failure::failed(format_args!("cannot set up HTTP: {error}")))?;
        Ok(Self {
            base,
            shown: args.url.clone(),
            http,
        })
    }

    /// The URL of `/api/v1/` followed by `segments`, each percent-encoded as one path segment.
    pub(crate) fn api_url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http URL has a path")
            .pop_if_empty()
            .extend(["api", "v1"])
            .extend(segments);
        url
    }

    /// `GET url`, its whole body within `timeout`.
    pub(crate) async fn get(&self, url: Url, timeout: Duration) -> Result<Answer> {
        let response = self
            .http
            .get(url.clone())
            .timeout(timeout)
            .send()
            .await
            .map_err(|error| self.unreachable(&error, timeout))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|error| self.unreachable(&error, timeout))?;
        Ok(Answer { status, body })
    }

    /// `GET url` as a stream of Server-Sent Events; the response once its headers arrived.
    pub(crate) async fn open_stream(&self, url: Url) -> Result<reqwest::Response> {
        let response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|error| self.unreachable(&error, REQUEST_TIMEOUT))?;
        let status = response.status();
        if status == StatusCode::OK {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(Answer { status, body }.unexpected())
    }

    /// The failure for a request that got no answer.
    pub(crate) fn unreachable(&self, error: &reqwest::Error, timeout: Duration) -> Failure {
        if error.is_timeout() {
            return Failure::new(
                exit::HUB,
                format_args!(
                    "the hub at {} did not answer within {} s",
                    self.shown,
                    timeout.as_secs_f64()
                ),
            );
        }
        // reqwest's own message names the URL; the root cause says what happened.
        let mut cause: &dyn std::error::Error = error;
        while let Some(source) = cause.source() {
            cause = source;
        }
        Failure::new(
            exit::HUB,
            format_args!(
                "cannot reach the hub at {}: {cause} (is `notifyhub serve` running there? set \
                 --hub or NOTIFYHUB_URL)",
                self.shown
            ),
        )
    }
}

impl Answer {
    /// The body as JSON.
    pub(crate) fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).map_err(|error| {
            Failure::new(
                exit::HUB,
                format_args!("the hub's answer is not JSON ({error}): {}", self.excerpt()),
            )
        })
    }

    /// The hub's `{"error": "..."}` sentence, else a short excerpt of the body.
    pub(crate) fn error_message(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|body| body.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{}: {}", self.status, self.excerpt()))
    }

    /// The failure for a 404 of a guest's route: no such guest.
    pub(crate) fn no_guest(&self) -> Failure {
        Failure::new(exit::NO_GUEST, self.error_message())
    }

    /// The failure for an answer the command did not expect: 400 as a usage error (the hub
    /// judged an argument), anything else as a hub error.
    pub(crate) fn unexpected(&self) -> Failure {
        match self.status {
            StatusCode::BAD_REQUEST => Failure::usage(self.error_message()),
            StatusCode::SERVICE_UNAVAILABLE => Failure::new(
                exit::HUB,
                format_args!("the hub is shutting down: {}", self.error_message()),
            ),
            status => Failure::new(
                exit::HUB,
                format_args!(
                    "unexpected answer from the hub ({status}): {}",
                    self.error_message()
                ),
            ),
        }
    }

    fn excerpt(&self) -> String {
        super::format::escape_line(&super::format::truncate(self.body.trim(), 200))
    }
}

/// The `Authorization: Bearer` header of the token in `file`.
fn bearer(file: &Path) -> Result<reqwest::header::HeaderMap> {
    let token = notifyhub_web::security::read_token_file(file).map_err(|error| {
        match std::error::Error::source(&error) {
            Some(cause) => Failure::usage(format_args!("{error}: {cause}")),
            None => Failure::usage(error),
        }
    })?;
    let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|error| Failure::usage(format_args!("{}: {error}", file.display())))?;
    value.set_sensitive(true);
    Ok([(reqwest::header::AUTHORIZATION, value)]
        .into_iter()
        .collect())
}

/// Runs `command` on a fresh Tokio runtime (the client commands are async; `send`, `parse` and
/// the documentation commands need none).
pub(crate) fn block_on<F: Future<Output = Result>>(command: F) -> Result {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::failed(format_args!("cannot start the runtime: {error}")))?
        .block_on(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(url: &str) -> Result<Hub> {
        Hub::new(&HubArgs {
            url: url.into(),
            token_file: None,
        })
    }

    #[test]
    fn api_urls_encode_segments() {
        let plain = hub("http://127.0.0.1:7370").unwrap();
        assert_eq!(
            plain.api_url(&["guests", "web1", "wait"]).as_str(),
            "http://127.0.0.1:7370/api/v1/guests/web1/wait"
        );
        let prefixed = hub("http://example.test/hub?x=1").unwrap();
        assert_eq!(
            prefixed.api_url(&["guests", "a/b"]).as_str(),
            "http://example.test/hub/api/v1/guests/a%2Fb"
        );
        let slash = hub("http://example.test/hub/").unwrap();
        assert_eq!(
            slash.api_url(&["guests"]).as_str(),
            "http://example.test/hub/api/v1/guests"
        );
    }

    #[test]
    fn bad_hub_urls_are_usage_errors() {
        for url in [
            "127.0.0.1:7370",
            "https://example.test",
            "not a url",
            "unix:run/x",
        ] {
            match hub(url) {
                Err(Failure::Error { code, .. }) => assert_eq!(code, exit::USAGE, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn error_messages() {
        let answer = Answer {
            status: StatusCode::NOT_FOUND,
            body: r#"{"error":"no guest named \"x\""}"#.into(),
        };
        assert_eq!(answer.error_message(), r#"no guest named "x""#);
        let html = Answer {
            status: StatusCode::BAD_GATEWAY,
            body: "<html>\x1b[31mbad</html>".into(),
        };
        assert_eq!(
            html.error_message(),
            "502 Bad Gateway: <html>\\x1b[31mbad</html>"
        );
    }
}
