//! Who may reach the hub, and how much a request may carry.
//!
//! - **Where HTTP listens** ([`Listen`]): TCP on loopback by default, or a UNIX socket
//!   (`unix:/path`) whose file permissions are the access control
//!   (`notifyhub_transport_unix::stream`, mode [`DEFAULT_HTTP_SOCKET_MODE`]). A
//!   non-loopback TCP address needs a bearer token or an explicit `--insecure-no-auth`
//!   ([`HttpAuth::check`]).
//! - **Bearer token** ([`Token`], [`require_token`]): with `--token-file`, every request, API and
//!   pages alike, needs `Authorization: Bearer <token>` (RFC 6750 §2.1); the token is compared
//!   in constant time.
//! - **Cross-site requests** ([`reject_cross_site`]): a browser's POST or DELETE from another
//!   site is refused with 403, by `Sec-Fetch-Site`, else `Origin`; requests without either
//!   (curl, the `notifyhub` client) pass. The algorithm is Go's `net/http.CrossOriginProtection`
//!   (Go 1.25).
//! - **DNS rebinding** ([`check_host`], [`AllowedHosts`]): without a token, a TCP listener
//!   answers only requests whose `Host` is an IP literal, `localhost`, `*.localhost` or an
//!   `--allowed-host` name, else 421; a page of `evil.example` whose name was rebound to
//!   127.0.0.1 sends `Host: evil.example` and is refused. With a token the token protects (a
//!   browser never adds it to another site's request), and on a UNIX socket `Host` means
//!   nothing.
//! - **Sizes** ([`MAX_BODY_LEN`], [`MAX_QUERY_LEN`], [`limit_query`]): 413 for a larger body,
//!   414 for a longer query string.
//! - **Guest sockets** ([`parse_socket_mode`], [`parse_socket_owner`]): the mode and owner of
//!   each guest's notify socket (`--socket-mode`, `--socket-owner`, or per guest in `POST
//!   /api/v1/guests`), for user-namespaced containers whose root is some host uid.
//!
//! Refusals are `{"error": "…"}` JSON under `/api/`, plain text elsewhere. What a refused
//! request sent is shown in logs and answers cut to [`MAX_SHOWN_LEN`] bytes and escaped
//! ([`shown`]), and refusals are logged once, then at most once per
//! [`LOG_INTERVAL`](crate::limit::LOG_INTERVAL) with their count ([`RefusalLog`]).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use notifyhub_transport_unix::{MAX_SOCKET_PATH_LEN, SocketAccess};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tracing::warn;

/// The largest request body, in bytes: 16 KiB, far more than `POST /api/v1/guests` needs. A
/// larger one is refused with 413 before it is read (axum's `DefaultBodyLimit`).
pub const MAX_BODY_LEN: usize = 16 * 1024;

/// The longest query string (the part after `?`), in bytes; a longer one is refused with 414.
pub const MAX_QUERY_LEN: usize = 2048;

/// The shortest bearer token [`Token`] accepts, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// Mode of the HTTP UNIX socket without `--listen-mode`: owner only.
pub const DEFAULT_HTTP_SOCKET_MODE: u32 = 0o600;

/// The most bytes of a client's header value or path that a log line or a refusal shows.
pub const MAX_SHOWN_LEN: usize = 200;

/// `notifyhub serve`'s access options: who may use HTTP and who may send to the guests'
/// sockets.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Access")]
pub struct AccessArgs {
    /// Require `Authorization: Bearer TOKEN` on every HTTP request (API and pages); FILE holds
    /// TOKEN (16+ printable ASCII characters) and must not be readable by others. The client
    /// commands take the same option.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve a non-loopback --listen address without a token (anyone who reaches it may add,
    /// remove and watch guests).
    #[arg(long, conflicts_with = "token_file")]
    pub insecure_no_auth: bool,
    /// Without a token, answer requests for host NAME too (repeatable; e.g. hub.example when
    /// the hub is reached by that DNS name). Otherwise only a Host that is an IP address,
    /// localhost or *.localhost is answered, so that another site's page cannot reach the hub
    /// by rebinding its own name to 127.0.0.1 (421 Misdirected Request).
    #[arg(long = "allowed-host", value_name = "NAME", value_parser = parse_allowed_host)]
    pub allowed_hosts: Vec<String>,
    /// Permission bits of the HTTP socket of --listen unix:PATH (octal).
    #[arg(long, value_name = "MODE", default_value = "0600", value_parser = parse_socket_mode)]
    pub listen_mode: u32,
    /// Permission bits of every guest's notify socket (octal); sending needs write permission.
    #[arg(long, value_name = "MODE", default_value = "0600", value_parser = parse_socket_mode)]
    pub socket_mode: u32,
    /// Owner of every guest's notify socket: USER, USER:GROUP, USER: or :GROUP, names or
    /// numbers (a user-namespaced container's root, e.g. 100000) [default: the hub's user].
    #[arg(long, value_name = "USER[:GROUP]", value_parser = parse_socket_owner)]
    pub socket_owner: Option<(Option<u32>, Option<u32>)>,
}

impl AccessArgs {
    /// The HTTP authentication asked for; reads the token file.
    ///
    /// # Errors
    /// As [`Token::from_file`].
    pub fn http_auth(&self) -> Result<HttpAuth, TokenError> {
        let token = self
            .token_file
            .as_deref()
            .map(Token::from_file)
            .transpose()?;
        Ok(HttpAuth {
            token: token.map(Arc::new),
            insecure_no_auth: self.insecure_no_auth,
            allowed_hosts: AllowedHosts::new(self.allowed_hosts.iter().map(String::as_str)),
        })
    }

    /// The guests' sockets' default mode and owner.
    pub fn socket_access(&self) -> SocketAccess {
        let (owner, group) = self.socket_owner.unwrap_or_default();
        SocketAccess {
            mode: self.socket_mode,
            owner,
            group,
        }
    }
}

/// Where `notifyhub serve` serves HTTP (`--listen`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address; port 0 picks a free one.
    Tcp(SocketAddr),
    /// A UNIX stream socket at this absolute path (`unix:/path`).
    Unix(PathBuf),
}

/// A `--listen` value that is neither `IP:PORT` nor `unix:/absolute/path`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid listen address {0:?}: expected IP:PORT (e.g. 127.0.0.1:7370, [::1]:7370) or \
     unix:/absolute/path"
)]
pub struct InvalidListen(pub String);

impl FromStr for Listen {
    type Err = InvalidListen;

    fn from_str(text: &str) -> Result<Self, InvalidListen> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = Path::new(path);
            if !path.is_absolute() || path.as_os_str().len() > MAX_SOCKET_PATH_LEN {
                return Err(InvalidListen(text.to_owned()));
            }
            return Ok(Self::Unix(path.to_path_buf()));
        }
        text.parse()
            .map(Self::Tcp)
            .map_err(|_| InvalidListen(text.to_owned()))
    }
}

impl fmt::Display for Listen {
    /// What the client commands take as `--hub`: `http://IP:PORT` or `unix:/path`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "http://{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How HTTP clients authenticate (`--token-file`, `--insecure-no-auth`).
#[derive(Clone, Debug, Default)]
pub struct HttpAuth {
    /// The bearer token every request must carry; `None`: no authentication.
    pub token: Option<Arc<Token>>,
    /// `--insecure-no-auth`: serve a non-loopback address without a token anyway.
    pub insecure_no_auth: bool,
    /// `--allowed-host`: the names a TCP listener without a token answers to besides IP
    /// literals and `localhost` ([`check_host`]).
    pub allowed_hosts: AllowedHosts,
}

/// `serve` would listen on a non-loopback address with no authentication.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to serve HTTP on {0} without authentication: anyone who can reach it could add, \
     remove and watch guests; pass --token-file FILE (clients then send `Authorization: Bearer \
     <token>`), listen on loopback or a unix: socket, or pass --insecure-no-auth"
)]
pub struct Unprotected(pub SocketAddr);

impl HttpAuth {
    /// Whether HTTP may be served on `listen`: loopback addresses and UNIX sockets always; any
    /// other address only with a token or `insecure_no_auth`.
    ///
    /// # Errors
    /// [`Unprotected`] otherwise.
    pub fn check(&self, listen: &Listen) -> Result<(), Unprotected> {
        match listen {
            Listen::Tcp(addr)
                if !addr.ip().to_canonical().is_loopback()
                    && self.token.is_none()
                    && !self.insecure_no_auth =>
            {
                Err(Unprotected(*addr))
            }
            _ => Ok(()),
        }
    }
}

/// A bearer token, kept only as its SHA-256 digest: comparing digests in constant time hides
/// both the token's bytes and its length from a timing attacker. [`Token::reload`] replaces it
/// in place, so that the HTTP middleware that holds it checks the new one from then on.
pub struct Token {
    digest: std::sync::RwLock<[u8; 32]>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The file cannot be read.
    #[error("cannot read token file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Others may read or write the file: the token would be no secret.
    #[error(
        "token file {} has mode {mode:04o}, which gives others access to it; run `chmod o-rwx` on it",
        path.display()
    )]
    OpenToOthers {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token is too short, or has characters a header value cannot carry.
    #[error(
        "token file {} must hold one token of at least {MIN_TOKEN_LEN} printable ASCII characters \
         without spaces (e.g. `head -c 32 /dev/urandom | base64`)",
        path.display()
    )]
    Invalid {
        /// The file.
        path: PathBuf,
    },
}

/// Reads the bearer token from `path`: the file's text less trailing whitespace (a final
/// newline), at least [`MIN_TOKEN_LEN`] visible ASCII characters. The hub and its clients read
/// the same file.
///
/// # Errors
/// [`TokenError`]: unreadable, readable or writable by others (mode `& 0o006`), or not a token.
pub fn read_token_file(path: &Path) -> Result<String, TokenError> {
    let read = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o7777;
    if mode & 0o006 != 0 {
        return Err(TokenError::OpenToOthers {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let token = text.trim_end();
    if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Invalid {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

impl Token {
    /// The token `secret`.
    pub fn new(secret: &str) -> Self {
        Self {
            digest: std::sync::RwLock::new(Sha256::digest(secret.as_bytes()).into()),
        }
    }

    /// [`read_token_file`], as a token.
    ///
    /// # Errors
    /// As [`read_token_file`].
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        read_token_file(path).map(|secret| Self::new(&secret))
    }

    /// Makes this the token in `path` ([`read_token_file`]), as on SIGHUP; whether it changed.
    ///
    /// # Errors
    /// As [`read_token_file`]; the token then stays as it was.
    pub fn reload(&self, path: &Path) -> Result<bool, TokenError> {
        let new: [u8; 32] = Sha256::digest(read_token_file(path)?.as_bytes()).into();
        let mut digest = self
            .digest
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = *digest != new;
        *digest = new;
        Ok(changed)
    }

    /// Whether `presented` is this token, in time independent of both.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let current = *self
            .digest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        current.ct_eq(&digest).into()
    }
}

/// A refusal: JSON `{"error": message}` for `/api/…`, plain text elsewhere.
fn refuse(request: &Request, status: StatusCode, message: String) -> Response {
    if request.uri().path().starts_with("/api/") {
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    } else {
        (status, message).into_response()
    }
}

/// Middleware: 401 unless the request carries `Authorization: Bearer <token>` (the scheme
/// case-insensitive, RFC 7235 §2.1), with `WWW-Authenticate: Bearer realm="notifyhub"` and, for
/// a wrong token, `error="invalid_token"` (RFC 6750 §3).
pub async fn require_token(
    State(token): State<Arc<Token>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| bearer(value.as_bytes()));
    let (challenge, message) = match presented {
        Some(presented) if token.matches(presented) => return next.run(request).await,
        Some(_) => {
            static LOG: RefusalLog = RefusalLog::new();
            if let Some(refused) = LOG.note() {
                warn!(
                    path = shown(request.uri().path().as_bytes()),
                    refused, "request with a wrong bearer token refused"
                );
            }
            (
                r#"Bearer realm="notifyhub", error="invalid_token""#,
                "wrong bearer token",
            )
        }
        None => (
            r#"Bearer realm="notifyhub""#,
            "this hub needs `Authorization: Bearer <token>` (the client commands: --token-file)",
        ),
    };
    let mut response = refuse(&request, StatusCode::UNAUTHORIZED, message.to_owned());
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// The credentials of an `Authorization: Bearer <token>` value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
        .filter(|token| !token.is_empty())
}

/// Middleware: 403 for a state-changing request (any method but GET, HEAD, OPTIONS) that a
/// browser sent from another origin.
///
/// As Go's `net/http.CrossOriginProtection`: `Sec-Fetch-Site` (sent by every current browser)
/// must be `same-origin` or `none`; without it, an `Origin` must name the request's `Host`;
/// without either, the request is not from a browser (curl, the client commands) and passes.
pub async fn reject_cross_site(request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    match cross_site(request.headers()) {
        None => next.run(request).await,
        Some(why) => {
            static LOG: RefusalLog = RefusalLog::new();
            if let Some(refused) = LOG.note() {
                warn!(
                    method = %request.method(),
                    path = shown(request.uri().path().as_bytes()),
                    why,
                    refused,
                    "cross-site request refused"
                );
            }
            let message = format!("cross-site {} refused: {why}", request.method());
            refuse(&request, StatusCode::FORBIDDEN, message)
        }
    }
}

/// A client's bytes (a header value, a path) for a log line or an answer: escaped as guest text
/// is ([`crate::text::escape_bytes`]), and when longer than [`MAX_SHOWN_LEN`] bytes cut there,
/// with `…` and the full length after it.
pub fn shown(value: &[u8]) -> String {
    match value.get(..MAX_SHOWN_LEN) {
        Some(head) if value.len() > MAX_SHOWN_LEN => format!(
            "{}… ({} bytes)",
            crate::text::escape_bytes(head),
            value.len()
        ),
        _ => crate::text::escape_bytes(value),
    }
}

/// Throttles the log lines of one kind of refusal, hub-wide: the first is logged, then at most
/// one line per [`LOG_INTERVAL`](crate::limit::LOG_INTERVAL), whose `refused=` counts the refusals since the line before.
/// A client that sends thousands of refused requests writes a line every 10 s, not a line each.
#[derive(Debug)]
pub struct RefusalLog(std::sync::Mutex<crate::limit::LogThrottle>);

impl RefusalLog {
    /// No refusal yet.
    pub const fn new() -> Self {
        Self(std::sync::Mutex::new(crate::limit::LogThrottle::new()))
    }

    /// Counts one refusal now; how many to report when a line is due, `None` when not.
    pub fn note(&self) -> Option<u64> {
        self.note_at(std::time::Instant::now())
    }

    /// [`note`](Self::note) at `now`.
    fn note_at(&self, now: std::time::Instant) -> Option<u64> {
        // An instant and a counter: a poisoned lock still holds usable ones.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .note(now)
    }
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::new()
    }
}

/// The host names a hub without a token answers to besides IP literals, `localhost` and
/// `*.localhost` (`--allowed-host`), lower case, without a trailing dot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// These names (as [`parse_allowed_host`] gives them).
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            names
                .into_iter()
                .map(|name| name.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        )
    }

    /// Whether a request with `Host: host` is for this hub: an IP literal (`127.0.0.1`,
    /// `[::1]`), `localhost`, a name under `.localhost` (RFC 6761 §6.3: always loopback), or an
    /// allowed name; any port (the port a client used reached this listener). Case-insensitive;
    /// a trailing dot is ignored.
    pub fn allows(&self, host: &[u8]) -> bool {
        let Ok(host) = std::str::from_utf8(host) else {
            return false;
        };
        if let Some(rest) = host.strip_prefix('[') {
            // "[v6]" or "[v6]:port"
            return rest.split_once(']').is_some_and(|(ip, port)| {
                ip.parse::<std::net::Ipv6Addr>().is_ok()
                    && (port.is_empty() || port.strip_prefix(':').is_some_and(is_port))
            });
        }
        let name = match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        };
        if name.parse::<std::net::Ipv4Addr>().is_ok() {
            return true;
        }
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        name == "localhost" || name.ends_with(".localhost") || self.0.contains(&name)
    }
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// Parses `--allowed-host`: a DNS name (letters, digits, `-`, `.`; no port).
///
/// # Errors
/// A sentence for clap to show.
pub fn parse_allowed_host(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 253
        && text.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "expected a host name such as hub.example (letters, digits, '-' and '.'; no port), \
             not {text:?}"
        ))
    }
}

/// Middleware: 421 Misdirected Request unless the request's `Host` is one this hub answers to
/// ([`AllowedHosts::allows`]); a request without `Host` (HTTP/1.0) passes, as no browser sends
/// one. For a TCP listener without a token: a page whose DNS name was rebound to 127.0.0.1 is
/// same-origin with itself, so `Sec-Fetch-Site`/`Origin` cannot tell it from the dashboard,
/// but its `Host` still names it.
pub async fn check_host(
    State(hosts): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(host) = request.headers().get(header::HOST) else {
        return next.run(request).await;
    };
    if hosts.allows(host.as_bytes()) {
        return next.run(request).await;
    }
    let host = shown(host.as_bytes());
    static LOG: RefusalLog = RefusalLog::new();
    if let Some(refused) = LOG.note() {
        warn!(
            host,
            path = shown(request.uri().path().as_bytes()),
            refused,
            "request for another host refused (421; --allowed-host NAME admits a name)"
        );
    }
    let message = format!(
        "this hub does not answer for host \"{host}\": without a token it answers only an IP \
         address, localhost and the names given by --allowed-host (a protection against DNS \
         rebinding); start it with --allowed-host NAME to reach it by a name"
    );
    refuse(&request, StatusCode::MISDIRECTED_REQUEST, message)
}

/// Why a request with these headers came from another site, or `None` when it did not.
fn cross_site(headers: &HeaderMap) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.as_bytes() {
            b"same-origin" | b"none" => None,
            other => Some(format!("Sec-Fetch-Site is \"{}\"", shown(other))),
        };
    }
    let origin = headers.get(header::ORIGIN)?;
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    // "scheme://host[:port]"; the scheme is not compared, as a TLS proxy may sit in front.
    let authority = origin
        .as_bytes()
        .iter()
        .position(|&b| b == b':')
        .and_then(|colon| origin.as_bytes()[colon..].strip_prefix(b"://"));
    match (authority, host) {
        (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host) => None,
        _ => Some(format!(
            "Origin \"{}\" is not this hub",
            shown(origin.as_bytes())
        )),
    }
}

/// Middleware: 414 for a query string longer than [`MAX_QUERY_LEN`] bytes.
pub async fn limit_query(request: Request, next: Next) -> Response {
    let len = request.uri().query().map_or(0, str::len);
    if len > MAX_QUERY_LEN {
        let message = format!("the query string is {len} bytes long, the limit is {MAX_QUERY_LEN}");
        return refuse(&request, StatusCode::URI_TOO_LONG, message);
    }
    next.run(request).await
}

/// A socket mode or owner that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SocketAccessError {
    /// Not octal permission bits from 0 to 0777.
    #[error("socket mode {0:?} is not octal permission bits from 0 to 0777 (e.g. 0600, 0660)")]
    Mode(String),
    /// Not `USER`, `USER:GROUP`, `USER:` or `:GROUP`.
    #[error("socket owner {0:?} is not USER, USER:GROUP, USER: or :GROUP")]
    Owner(String),
    /// No such user.
    #[error("no user named {0:?}")]
    NoUser(String),
    /// No such group.
    #[error("no group named {0:?}")]
    NoGroup(String),
}

/// Parses a socket mode: octal permission bits, `0600`, `660` or `0o660`.
///
/// # Errors
/// [`SocketAccessError::Mode`].
pub fn parse_socket_mode(text: &str) -> Result<u32, SocketAccessError> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|mode| !digits.is_empty() && !digits.starts_with('+') && *mode <= 0o777)
        .ok_or_else(|| SocketAccessError::Mode(text.to_owned()))
}

/// Parses a socket owner as `chown(1)` does: `USER` (the owner only), `USER:GROUP`, `USER:`
/// (the user's login group) or `:GROUP` (the group only); each a name, looked up in the user
/// and group databases, or a number (a user-namespaced container's root, e.g. `100000`, has no
/// name on the host). Returns `(uid, gid)`.
///
/// # Errors
/// [`SocketAccessError::Owner`] for a malformed value, `NoUser` or `NoGroup` for a name not
/// found.
pub fn parse_socket_owner(text: &str) -> Result<(Option<u32>, Option<u32>), SocketAccessError> {
    let malformed = || SocketAccessError::Owner(text.to_owned());
    let (user, group) = match text.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (text, None),
    };
    if user.is_empty() && group.is_none_or(str::is_empty) {
        return Err(malformed());
    }
    let uid = (!user.is_empty()).then(|| lookup_user(user)).transpose()?;
    let gid = match group {
        Some("") => {
            // `USER:`: the user's login group.
            let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid.unwrap_or(0)))
                .ok()
                .flatten()
                .ok_or_else(|| SocketAccessError::NoUser(user.to_owned()))?;
            Some(user.gid.as_raw())
        }
        Some(group) => Some(lookup_group(group)?),
        None => None,
    };
    Ok((uid, gid))
}

fn lookup_user(user: &str) -> Result<u32, SocketAccessError> {
    if let Ok(uid) = user.parse() {
        return Ok(uid);
    }
    nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|user| user.uid.as_raw())
        .ok_or_else(|| SocketAccessError::NoUser(user.to_owned()))
}

fn lookup_group(group: &str) -> Result<u32, SocketAccessError> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .map(|group| group.gid.as_raw())
        .ok_or_else(|| SocketAccessError::NoGroup(group.to_owned()))
}

/// `base` with a guest's own `socket_mode` and `socket_owner` (as in `POST /api/v1/guests`)
/// applied; an owner replaces both of `base`'s owner and group.
///
/// # Errors
/// As [`parse_socket_mode`] and [`parse_socket_owner`].
pub fn socket_access(
    base: SocketAccess,
    mode: Option<&str>,
    owner: Option<&str>,
) -> Result<SocketAccess, SocketAccessError> {
    let mut access = base;
    if let Some(mode) = mode {
        access.mode = parse_socket_mode(mode)?;
    }
    if let Some(owner) = owner {
        (access.owner, access.group) = parse_socket_owner(owner)?;
    }
    Ok(access)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "127.0.0.1:7370".parse(),
            Ok(Listen::Tcp("127.0.0.1:7370".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/notifyhub/http.sock".parse(),
            Ok(Listen::Unix("/run/notifyhub/http.sock".into()))
        );
        for bad in [
            "unix:relative",
            "localhost:80",
            "",
            "unix:",
            "http://127.0.0.1:1",
        ] {
            assert_eq!(
                bad.parse::<Listen>(),
                Err(InvalidListen(bad.into())),
                "{bad}"
            );
        }
        let long = format!("unix:/{}", "a".repeat(MAX_SOCKET_PATH_LEN));
        assert!(long.parse::<Listen>().is_err());
        assert_eq!(Listen::Unix("/x.sock".into()).to_string(), "unix:/x.sock");
        assert_eq!(
            Listen::Tcp("[::1]:80".parse().unwrap()).to_string(),
            "http://[::1]:80"
        );
    }

    #[test]
    fn only_loopback_and_unix_serve_without_auth() {
        let open = HttpAuth::default();
        for ok in [
            "127.0.0.1:1",
            "127.1.2.3:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(open.check(&ok.parse().unwrap()), Ok(()), "{ok}");
        }
        assert_eq!(open.check(&Listen::Unix("/x".into())), Ok(()));
        for bad in ["0.0.0.0:1", "[::]:1", "192.0.2.1:1", "[::ffff:192.0.2.1]:1"] {
            let listen: Listen = bad.parse().unwrap();
            let Listen::Tcp(addr) = listen else {
                unreachable!()
            };
            assert_eq!(open.check(&listen), Err(Unprotected(addr)), "{bad}");
        }
        let with_token = HttpAuth {
            token: Some(Arc::new(Token::new("0123456789abcdef"))),
            ..HttpAuth::default()
        };
        let insecure = HttpAuth {
            insecure_no_auth: true,
            ..HttpAuth::default()
        };
        let any: Listen = "0.0.0.0:1".parse().unwrap();
        assert_eq!(with_token.check(&any), Ok(()));
        assert_eq!(insecure.check(&any), Ok(()));
        assert!(
            Unprotected("0.0.0.0:1".parse().unwrap())
                .to_string()
                .contains("--token-file")
        );
    }

    #[test]
    fn tokens_match_exactly() {
        let token = Token::new("0123456789abcdef");
        assert!(token.matches(b"0123456789abcdef"));
        for wrong in [
            &b""[..],
            b"0123456789abcde",
            b"0123456789abcdef0",
            b"0123456789ABCDEF",
        ] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{token:?}"), "Token(…)");
    }

    #[test]
    fn bearer_credentials() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"BEARER abc"), Some(&b"abc"[..]));
        for none in [&b"Basic abc"[..], b"Bearer", b"Bearer ", b"Bearerabc", b""] {
            assert_eq!(bearer(none), None, "{none:?}");
        }
    }

    /// `text` into `file`, with permission bits `mode`.
    fn write_with_mode(file: &Path, text: &str, mode: u32) {
        std::fs::write(file, text).unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn token_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let write = |text: &str, mode: u32| write_with_mode(&file, text, mode);
        write("0123456789abcdef\n", 0o640);
        assert_eq!(read_token_file(&file).unwrap(), "0123456789abcdef");
        write("0123456789abcdef\n", 0o644);
        let error = read_token_file(&file).unwrap_err();
        assert!(
            matches!(error, TokenError::OpenToOthers { mode: 0o644, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("mode 0644"), "{error}");
        for bad in ["short\n", "0123456789 abcdef", "0123456789abcdé\n", ""] {
            write(bad, 0o600);
            assert!(
                matches!(read_token_file(&file), Err(TokenError::Invalid { .. })),
                "{bad:?}"
            );
        }
        let missing = read_token_file(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(missing, TokenError::Read { .. }), "{missing}");
    }

    #[test]
    fn a_token_reloads_in_place_or_stays() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let write = |text: &str, mode: u32| write_with_mode(&file, text, mode);
        write("first-token-0123456789\n", 0o600);
        let token = Token::from_file(&file).unwrap();
        assert_eq!(token.reload(&file).ok(), Some(false), "unchanged");
        write("second-token-0123456789\n", 0o600);
        assert_eq!(token.reload(&file).ok(), Some(true));
        assert!(token.matches(b"second-token-0123456789"));
        assert!(!token.matches(b"first-token-0123456789"));
        // A file that cannot be used leaves the token as it was.
        for (text, mode) in [("short\n", 0o600), ("third-token-0123456789\n", 0o644)] {
            write(text, mode);
            assert!(token.reload(&file).is_err(), "{text:?} {mode:o}");
            assert!(token.matches(b"second-token-0123456789"));
        }
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(token.reload(&file), Err(TokenError::Read { .. })));
        assert!(token.matches(b"second-token-0123456789"));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    axum::http::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn cross_site_rules() {
        let host = ("host", "127.0.0.1:7370");
        // Not from a browser: no Sec-Fetch-Site, no Origin.
        assert_eq!(cross_site(&headers(&[host])), None);
        for ok in ["same-origin", "none"] {
            assert_eq!(cross_site(&headers(&[host, ("sec-fetch-site", ok)])), None);
        }
        for bad in ["cross-site", "same-site"] {
            let why = cross_site(&headers(&[host, ("sec-fetch-site", bad)])).unwrap();
            assert!(why.contains(bad), "{why}");
        }
        // Sec-Fetch-Site decides when present, whatever Origin says.
        assert_eq!(
            cross_site(&headers(&[
                host,
                ("sec-fetch-site", "same-origin"),
                ("origin", "http://evil.test")
            ])),
            None
        );
        // Older browsers: Origin against Host.
        assert_eq!(
            cross_site(&headers(&[host, ("origin", "http://127.0.0.1:7370")])),
            None
        );
        assert_eq!(
            cross_site(&headers(&[host, ("origin", "https://127.0.0.1:7370")])),
            None
        );
        for bad in [
            "http://evil.test",
            "http://127.0.0.1:7371",
            "null",
            "http://127.0.0.1",
        ] {
            let why = cross_site(&headers(&[host, ("origin", bad)])).unwrap();
            assert!(why.contains("is not this hub"), "{bad}: {why}");
        }
        assert!(cross_site(&headers(&[("origin", "http://127.0.0.1:7370")])).is_some());
    }

    #[test]
    fn hosts_a_hub_without_a_token_answers() {
        let hosts = AllowedHosts::new(["Hub.Example."]);
        for ok in [
            "127.0.0.1",
            "127.0.0.1:7370",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:7370",
            "[fe80::1]:1",
            "localhost",
            "LOCALHOST:7370",
            "localhost.",
            "dev.localhost:1",
            "hub.example",
            "HUB.EXAMPLE.:7370",
        ] {
            assert!(hosts.allows(ok.as_bytes()), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:7370",
            "hub.example.evil",
            "localhost.evil",
            "127.0.0.1.evil",
            "[::1",
            "[::1]x",
            "[evil]:1",
            "127.0.0.1:http",
            "127.0.0.1:123456",
            "",
            ":7370",
        ] {
            assert!(!hosts.allows(refused.as_bytes()), "{refused}");
        }
        assert!(!hosts.allows(b"\xff"));
        assert!(!AllowedHosts::default().allows(b"hub.example"));
        assert_eq!(parse_allowed_host("hub.example"), Ok("hub.example".into()));
        for bad in ["", "hub.example:80", "a..b", "http://x", "x y", "é.example"] {
            assert!(parse_allowed_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shown_values_are_cut_and_escaped() {
        assert_eq!(shown(b"http://a.example"), "http://a.example");
        assert_eq!(shown(b"a\x1b[2J\n"), "a\\x1b[2J\\n");
        let long = vec![b'o'; 150_000];
        let cut = shown(&long);
        assert!(cut.ends_with("… (150000 bytes)"), "{cut}");
        assert_eq!(cut.len(), MAX_SHOWN_LEN + "… (150000 bytes)".len());
    }

    #[test]
    fn refusals_are_logged_first_then_once_per_interval() {
        use crate::limit::LOG_INTERVAL;
        let log = RefusalLog::new();
        let t0 = std::time::Instant::now();
        assert_eq!(log.note_at(t0), Some(1));
        for i in 1..=99 {
            assert_eq!(log.note_at(t0 + std::time::Duration::from_millis(i)), None);
        }
        assert_eq!(log.note_at(t0 + LOG_INTERVAL), Some(100));
        assert_eq!(log.note_at(t0 + LOG_INTERVAL), None);
    }

    #[test]
    fn socket_modes() {
        assert_eq!(parse_socket_mode("0600"), Ok(0o600));
        assert_eq!(parse_socket_mode("660"), Ok(0o660));
        assert_eq!(parse_socket_mode("0o620"), Ok(0o620));
        assert_eq!(parse_socket_mode("0"), Ok(0));
        for bad in [
            "",
            "0o",
            "800",
            "1777",
            "4600",
            "+600",
            "rw-------",
            "0x1ff",
        ] {
            assert_eq!(
                parse_socket_mode(bad),
                Err(SocketAccessError::Mode(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn socket_owners() {
        assert_eq!(parse_socket_owner("100000"), Ok((Some(100_000), None)));
        assert_eq!(
            parse_socket_owner("100000:100005"),
            Ok((Some(100_000), Some(100_005)))
        );
        assert_eq!(parse_socket_owner(":5"), Ok((None, Some(5))));
        // root is in every user and group database.
        assert_eq!(parse_socket_owner("root:root"), Ok((Some(0), Some(0))));
        assert_eq!(parse_socket_owner("root:"), Ok((Some(0), Some(0))));
        for bad in ["", ":"] {
            assert_eq!(
                parse_socket_owner(bad),
                Err(SocketAccessError::Owner(bad.into()))
            );
        }
        assert_eq!(
            parse_socket_owner("no-such-user-x"),
            Err(SocketAccessError::NoUser("no-such-user-x".into()))
        );
        assert_eq!(
            parse_socket_owner("0:no-such-group-x"),
            Err(SocketAccessError::NoGroup("no-such-group-x".into()))
        );
        let base = SocketAccess::default();
        assert_eq!(socket_access(base, None, None), Ok(base));
        assert_eq!(
            socket_access(base, Some("0660"), Some("100000:100000")),
            Ok(SocketAccess {
                mode: 0o660,
                owner: Some(100_000),
                group: Some(100_000)
            })
        );
    }
}
