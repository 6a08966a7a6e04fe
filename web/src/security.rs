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
//! - **Sizes** ([`MAX_BODY_LEN`], [`MAX_QUERY_LEN`], [`limit_query`]): 413 for a larger body,
//!   414 for a longer query string.
//! - **Guest sockets** ([`parse_socket_mode`], [`parse_socket_owner`]): the mode and owner of
//!   each guest's notify socket (`--socket-mode`, `--socket-owner`, or per guest in `POST
//!   /api/v1/guests`), for user-namespaced containers whose root is some host uid.
//!
//! Refusals are `{"error": "…"}` JSON under `/api/`, plain text elsewhere.

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
/// both the token's bytes and its length from a timing attacker.
pub struct Token {
    digest: [u8; 32],
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
            digest: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    /// [`read_token_file`], as a token.
    ///
    /// # Errors
    /// As [`read_token_file`].
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        read_token_file(path).map(|secret| Self::new(&secret))
    }

    /// Whether `presented` is this token, in time independent of both.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        self.digest.ct_eq(&digest).into()
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
            warn!(
                path = request.uri().path(),
                "request with a wrong bearer token"
            );
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
            warn!(method = %request.method(), path = request.uri().path(), why, "cross-site request refused");
            let message = format!("cross-site {} refused: {why}", request.method());
            refuse(&request, StatusCode::FORBIDDEN, message)
        }
    }
}

/// Why a request with these headers came from another site, or `None` when it did not.
fn cross_site(headers: &HeaderMap) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.as_bytes() {
            b"same-origin" | b"none" => None,
            other => Some(format!(
                "Sec-Fetch-Site is {:?}",
                String::from_utf8_lossy(other)
            )),
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
            "Origin {:?} is not this hub",
            String::from_utf8_lossy(origin.as_bytes())
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
            insecure_no_auth: false,
        };
        let insecure = HttpAuth {
            token: None,
            insecure_no_auth: true,
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

    #[test]
    fn token_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let write = |text: &str, mode: u32| {
            std::fs::write(&file, text).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        };
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
