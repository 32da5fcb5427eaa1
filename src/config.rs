//! Configuration: the TOML file is read into raw structs that reject unknown
//! keys, then validated into a typed [`Config`], so that a typo or a bad value
//! fails at start with the key's name, never under traffic.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use http::uri::{Scheme, Uri};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A browser transport a route may allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Websocket,
    Sse,
    Stream,
    Poll,
}

impl Transport {
    pub const ALL: [Transport; 4] = [
        Transport::Websocket,
        Transport::Sse,
        Transport::Stream,
        Transport::Poll,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Websocket => "websocket",
            Transport::Sse => "sse",
            Transport::Stream => "stream",
            Transport::Poll => "poll",
        }
    }
}

/// What the replay queue does when undelivered events exceed
/// `replay.max_pending_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Stop reading the upstream socket until a client drains (the default).
    Backpressure,
    /// Drop the oldest events and report a `gap`.
    DropOldest,
}

/// The validated configuration. Every field has a working default except
/// `upstream.url`.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    /// Empty means every path bridges to `upstream.url` with every transport.
    pub routes: Vec<Route>,
    pub sessions: SessionsConfig,
    pub replay: ReplayConfig,
    pub poll: PollConfig,
    pub limits: LimitsConfig,
    pub security: SecurityConfig,
    pub client: ClientConfig,
    pub admin: Option<AdminConfig>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Starts with `/`, never ends with `/`.
    pub prefix: String,
    pub drain_timeout: Duration,
    pub tls: Option<TlsConfig>,
    /// Slowloris guard: a client must send its request head within this.
    pub header_read_timeout: Duration,
    /// Largest request head accepted (HTTP/1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Largest concurrent connection count; further connections wait in the
    /// kernel's accept queue.
    pub max_connections: usize,
}

#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// `http` or `https`, with an authority; path `/` or empty.
    pub url: Uri,
    pub connect_timeout: Duration,
    /// Time allowed for a pass-through response's head once the request is
    /// sent; long enough for long-polling apps behind the proxy.
    pub response_timeout: Duration,
    pub forward_headers: Vec<HeaderName>,
    /// Extra CA certificate(s) trusted for `wss://`/`https://` upstreams, in
    /// addition to the webpki roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Route {
    /// Exact path, or a prefix when it ends in `/`.
    pub path: String,
    /// `ws` or `wss` URL.
    pub upstream: Uri,
    pub transports: Vec<Transport>,
    pub sse_event_field: Option<String>,
}

impl Route {
    pub fn allows(&self, transport: Transport) -> bool {
        self.transports.contains(&transport)
    }

    /// True when bridging (any of sse, stream, poll) is allowed.
    pub fn bridges(&self) -> bool {
        self.transports.iter().any(|t| *t != Transport::Websocket)
    }
}

#[derive(Clone, Debug)]
pub struct SessionsConfig {
    pub idle_timeout: Duration,
    pub linger: Duration,
    pub heartbeat: Duration,
    pub client_retry: Duration,
    pub upstream_ping: Duration,
    pub max_sessions: usize,
    /// 0 = no limit.
    pub max_sessions_per_client: usize,
    /// Sends per second per session (burst of the same size); 0 = no limit.
    pub max_sends_per_second: u32,
}

#[derive(Clone, Debug)]
pub struct ReplayConfig {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_pending_bytes: usize,
    pub overflow: Overflow,
    /// All sessions' replay queues together (lingering ones included).
    pub max_total_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct PollConfig {
    pub max_wait: Duration,
    pub max_events: usize,
    pub max_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct LimitsConfig {
    pub max_frame_bytes: usize,
    pub max_outbound_bytes: usize,
    pub max_upstream_frame_bytes: usize,
    /// Largest `POST {prefix}/sessions` body.
    pub max_open_body_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct SecurityConfig {
    /// Empty = any origin.
    pub allowed_origins: Vec<String>,
    /// Peers whose `X-Forwarded-For` is believed for the client address.
    pub trusted_proxies: Vec<IpNet>,
}

impl SecurityConfig {
    /// A request without an `Origin` header is allowed (curl, same-origin
    /// requests from some browsers).
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(o) => {
                self.allowed_origins.is_empty() || self.allowed_origins.iter().any(|a| a == o)
            }
        }
    }

    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub inject: bool,
}

#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

/// Why a configuration was refused. `key` names the offending key the way it
/// is written in the file (`sessions.idle_timeout`, `routes[1].path`).
#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Parse(String),
    Invalid {
        key: String,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ConfigError::Parse(msg) => write!(f, "{msg}"),
            ConfigError::Invalid { key, message } => write!(f, "{key}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

// ---- raw TOML ---------------------------------------------------------------

/// A size as written in TOML: a string with a unit or a bare integer.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    sessions: RawSessions,
    #[serde(default)]
    replay: RawReplay,
    #[serde(default)]
    poll: RawPoll,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    security: RawSecurity,
    #[serde(default)]
    client: RawClient,
    admin: Option<RawAdmin>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    prefix: Option<String>,
    drain_timeout: Option<String>,
    tls: Option<RawTls>,
    header_read_timeout: Option<String>,
    max_header_bytes: Option<RawSize>,
    max_connections: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Option<String>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    #[serde(default)]
    forward_headers: Vec<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: Option<String>,
    upstream: Option<String>,
    transports: Option<Vec<String>>,
    sse_event_field: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    idle_timeout: Option<String>,
    linger: Option<String>,
    heartbeat: Option<String>,
    client_retry: Option<String>,
    upstream_ping: Option<String>,
    max_sessions: Option<i64>,
    max_sessions_per_client: Option<i64>,
    max_sends_per_second: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplay {
    max_events: Option<i64>,
    max_bytes: Option<RawSize>,
    max_pending_bytes: Option<RawSize>,
    overflow: Option<String>,
    max_total_bytes: Option<RawSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoll {
    max_wait: Option<String>,
    max_events: Option<i64>,
    max_bytes: Option<RawSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_frame_bytes: Option<RawSize>,
    max_outbound_bytes: Option<RawSize>,
    max_upstream_frame_bytes: Option<RawSize>,
    max_open_body_bytes: Option<RawSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    inject: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
}

// ---- value parsers ----------------------------------------------------------

/// The longest duration any key accepts. Timers add durations to the clock
/// (`now + idle_timeout`, `now + upstream_ping`, hyper's header deadline), and
/// a duration near `u64::MAX` seconds, which the duration syntax allows,
/// would overflow there and panic under traffic instead of failing at boot.
/// 100 years as the duration syntax counts them (`"100y"`, 365.25 days each).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// The most concurrent connections `server.max_connections` accepts: the
/// limit is a semaphore, whose permits are bounded (and no host holds more
/// sockets than this anyway).
pub const MAX_CONNECTIONS: usize = 1 << 30;

fn duration(key: &str, raw: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
    let text = raw.unwrap_or(default).trim();
    let d = humantime::parse_duration(text).map_err(|e| {
        invalid(
            key,
            format!("expected a duration like \"500ms\", \"15s\" or \"1m30s\", got {text:?} ({e})"),
        )
    })?;
    if d > MAX_DURATION {
        return Err(invalid(
            key,
            format!("{text:?} is too long (at most 100 years)"),
        ));
    }
    Ok(d)
}

fn positive_duration(key: &str, raw: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
    let d = duration(key, raw, default)?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

/// Parses a size: `"64KiB"` (powers of 1024), `"1MB"` (powers of 1000), or a
/// bare integer of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    // parse-size's default mode is the contract's: "MB" decimal, "MiB" binary.
    parse_size::parse_size(text.trim()).map_err(|e| e.to_string())
}

fn size(key: &str, raw: Option<&RawSize>, default: u64) -> Result<usize, ConfigError> {
    let bytes = match raw {
        None => default,
        Some(RawSize::Bytes(n)) => u64::try_from(*n)
            .map_err(|_| invalid(key, format!("expected a size like \"64KiB\" or a byte count, got {n}")))?,
        Some(RawSize::Text(t)) => parse_size(t).map_err(|e| {
            invalid(key, format!("expected a size like \"64KiB\", \"1MiB\", \"1MB\" or a byte count, got {t:?} ({e})"))
        })?,
    };
    if bytes == 0 {
        return Err(invalid(key, "must be greater than zero"));
    }
    // The effective config (`wsbridge check`) writes sizes as TOML integers,
    // which stop at i64::MAX: anything larger could not be loaded back.
    if i64::try_from(bytes).is_err() {
        return Err(invalid(key, "is too large"));
    }
    usize::try_from(bytes).map_err(|_| invalid(key, "is too large"))
}

fn count(
    key: &str,
    raw: Option<i64>,
    default: i64,
    allow_zero: bool,
) -> Result<usize, ConfigError> {
    let n = raw.unwrap_or(default);
    if n < 0 || (n == 0 && !allow_zero) {
        let what = if allow_zero {
            "zero or more"
        } else {
            "a positive integer"
        };
        return Err(invalid(key, format!("expected {what}, got {n}")));
    }
    usize::try_from(n).map_err(|_| invalid(key, "is too large"))
}

fn socket_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        invalid(
            key,
            format!("expected an address like \"0.0.0.0:8080\" or \"[::]:8080\", got {text:?}"),
        )
    })
}

fn url(key: &str, text: &str, schemes: &[&str]) -> Result<Uri, ConfigError> {
    let expected = schemes
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(" or ");
    let uri: Uri = text.parse().map_err(|_| {
        invalid(
            key,
            format!("expected a URL starting with {expected}, got {text:?}"),
        )
    })?;
    let scheme_ok = uri.scheme_str().is_some_and(|s| schemes.contains(&s));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(invalid(
            key,
            format!("expected a URL starting with {expected} and naming a host, got {text:?}"),
        ));
    }
    Ok(uri)
}

// ---- loading ----------------------------------------------------------------

/// Overrides from the command line or the environment; each wins over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
}

impl Config {
    /// Reads and validates a file, applying the overrides.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        Config::from_toml_with(&text, overrides)
    }

    /// Parses and validates TOML text with no overrides.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with(text, &Overrides::default())
    }

    pub fn from_toml_with(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if let Some(listen) = &overrides.listen {
            raw.server.listen = Some(listen.clone());
        }
        if let Some(upstream) = &overrides.upstream {
            raw.upstream.url = Some(upstream.clone());
        }
        validate(raw)
    }
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let RawConfig {
        server,
        upstream,
        routes,
        sessions,
        replay,
        poll,
        limits,
        security,
        client,
        admin,
    } = raw;

    let prefix = server.prefix.unwrap_or_else(|| "/_bridge".into());
    if !prefix.starts_with('/')
        || prefix.len() < 2
        || prefix.ends_with('/')
        || prefix.contains(['?', '#', ' '])
    {
        return Err(invalid(
            "server.prefix",
            format!(
                "expected a path like \"/_bridge\" (leading '/', no trailing '/'), got {prefix:?}"
            ),
        ));
    }
    let server = ServerConfig {
        listen: socket_addr(
            "server.listen",
            server.listen.as_deref().unwrap_or("0.0.0.0:8080"),
        )?,
        prefix,
        drain_timeout: positive_duration(
            "server.drain_timeout",
            server.drain_timeout.as_deref(),
            "10s",
        )?,
        tls: server.tls.map(|t| TlsConfig {
            cert: t.cert,
            key: t.key,
        }),
        header_read_timeout: positive_duration(
            "server.header_read_timeout",
            server.header_read_timeout.as_deref(),
            "10s",
        )?,
        max_header_bytes: size(
            "server.max_header_bytes",
            server.max_header_bytes.as_ref(),
            64 * 1024,
        )?,
        max_connections: count(
            "server.max_connections",
            server.max_connections,
            20_000,
            false,
        )
        .and_then(|n| {
            if n > MAX_CONNECTIONS {
                Err(invalid(
                    "server.max_connections",
                    format!("is too large (at most {MAX_CONNECTIONS})"),
                ))
            } else {
                Ok(n)
            }
        })?,
    };

    let Some(upstream_url) = upstream.url else {
        return Err(invalid(
            "upstream.url",
            "is required: the app to proxy, like \"http://127.0.0.1:3000\" (or pass --upstream)",
        ));
    };
    let upstream_uri = url("upstream.url", &upstream_url, &["http", "https"])?;
    if upstream_uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str() != "/")
    {
        return Err(invalid(
            "upstream.url",
            format!(
                "expected scheme and host only (pass-through keeps the request path), got {upstream_url:?}"
            ),
        ));
    }
    let forward_headers = upstream
        .forward_headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                invalid(
                    format!("upstream.forward_headers[{i}]"),
                    format!("not a header name: {h:?}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(ca) = &upstream.ca_file
        && !ca.is_file()
    {
        return Err(invalid(
            "upstream.ca_file",
            format!("no such file: {}", ca.display()),
        ));
    }
    let upstream = UpstreamConfig {
        url: upstream_uri,
        connect_timeout: positive_duration(
            "upstream.connect_timeout",
            upstream.connect_timeout.as_deref(),
            "5s",
        )?,
        response_timeout: positive_duration(
            "upstream.response_timeout",
            upstream.response_timeout.as_deref(),
            "60s",
        )?,
        forward_headers,
        ca_file: upstream.ca_file,
    };

    let mut validated_routes = Vec::with_capacity(routes.len());
    for (i, r) in routes.into_iter().enumerate() {
        let key = |field: &str| format!("routes[{i}].{field}");
        let path = r
            .path
            .ok_or_else(|| invalid(key("path"), "is required, like \"/ws\""))?;
        if !path.starts_with('/') || path.contains(['?', '#']) {
            return Err(invalid(
                key("path"),
                format!("expected a path starting with '/', got {path:?}"),
            ));
        }
        let upstream_text = r.upstream.ok_or_else(|| {
            invalid(
                key("upstream"),
                "is required, like \"ws://127.0.0.1:3000/ws\"",
            )
        })?;
        let upstream = url(&key("upstream"), &upstream_text, &["ws", "wss"])?;
        let transports = match r.transports {
            None => Transport::ALL.to_vec(),
            Some(list) => {
                let mut out = Vec::new();
                for name in list {
                    let t = Transport::ALL.into_iter().find(|t| t.as_str() == name).ok_or_else(|| {
                        invalid(
                            key("transports"),
                            format!("unknown transport {name:?}; expected websocket, sse, stream or poll"),
                        )
                    })?;
                    if !out.contains(&t) {
                        out.push(t);
                    }
                }
                out
            }
        };
        if let Some(field) = &r.sse_event_field
            && field.is_empty()
        {
            return Err(invalid(key("sse_event_field"), "must not be empty"));
        }
        if validated_routes
            .iter()
            .any(|other: &Route| other.path == path)
        {
            return Err(invalid(
                key("path"),
                format!("duplicate route path {path:?}"),
            ));
        }
        validated_routes.push(Route {
            path,
            upstream,
            transports,
            sse_event_field: r.sse_event_field,
        });
    }

    let sessions = SessionsConfig {
        idle_timeout: positive_duration(
            "sessions.idle_timeout",
            sessions.idle_timeout.as_deref(),
            "60s",
        )?,
        linger: duration("sessions.linger", sessions.linger.as_deref(), "30s")?,
        heartbeat: positive_duration("sessions.heartbeat", sessions.heartbeat.as_deref(), "15s")?,
        client_retry: duration(
            "sessions.client_retry",
            sessions.client_retry.as_deref(),
            "1s",
        )?,
        upstream_ping: positive_duration(
            "sessions.upstream_ping",
            sessions.upstream_ping.as_deref(),
            "30s",
        )?,
        max_sessions: count(
            "sessions.max_sessions",
            sessions.max_sessions,
            10_000,
            false,
        )?,
        max_sessions_per_client: count(
            "sessions.max_sessions_per_client",
            sessions.max_sessions_per_client,
            0,
            true,
        )?,
        max_sends_per_second: u32::try_from(count(
            "sessions.max_sends_per_second",
            sessions.max_sends_per_second,
            0,
            true,
        )?)
        .map_err(|_| invalid("sessions.max_sends_per_second", "is too large"))?,
    };

    let overflow = match replay.overflow.as_deref().unwrap_or("backpressure") {
        "backpressure" => Overflow::Backpressure,
        "drop-oldest" => Overflow::DropOldest,
        other => {
            return Err(invalid(
                "replay.overflow",
                format!("expected \"backpressure\" or \"drop-oldest\", got {other:?}"),
            ));
        }
    };
    let replay = ReplayConfig {
        max_events: count("replay.max_events", replay.max_events, 1024, false)?,
        max_bytes: size("replay.max_bytes", replay.max_bytes.as_ref(), 4 << 20)?,
        max_pending_bytes: size(
            "replay.max_pending_bytes",
            replay.max_pending_bytes.as_ref(),
            4 << 20,
        )?,
        overflow,
        max_total_bytes: size(
            "replay.max_total_bytes",
            replay.max_total_bytes.as_ref(),
            256 << 20,
        )?,
    };

    let poll = PollConfig {
        max_wait: duration("poll.max_wait", poll.max_wait.as_deref(), "30s")?,
        max_events: count("poll.max_events", poll.max_events, 256, false)?,
        max_bytes: size("poll.max_bytes", poll.max_bytes.as_ref(), 1 << 20)?,
    };

    let limits = LimitsConfig {
        max_frame_bytes: size(
            "limits.max_frame_bytes",
            limits.max_frame_bytes.as_ref(),
            1 << 20,
        )?,
        max_outbound_bytes: size(
            "limits.max_outbound_bytes",
            limits.max_outbound_bytes.as_ref(),
            1 << 20,
        )?,
        max_upstream_frame_bytes: size(
            "limits.max_upstream_frame_bytes",
            limits.max_upstream_frame_bytes.as_ref(),
            16 << 20,
        )?,
        max_open_body_bytes: size(
            "limits.max_open_body_bytes",
            limits.max_open_body_bytes.as_ref(),
            64 * 1024,
        )?,
    };

    for (i, origin) in security.allowed_origins.iter().enumerate() {
        let ok = origin.parse::<Uri>().is_ok_and(|u| {
            u.scheme().is_some() && u.host().is_some() && u.path() == "/" && !origin.ends_with('/')
        });
        if !ok && origin != "null" {
            return Err(invalid(
                format!("security.allowed_origins[{i}]"),
                format!(
                    "expected an origin like \"https://app.example.com\" (scheme, host, optional port), got {origin:?}"
                ),
            ));
        }
    }
    let trusted_proxies = security
        .trusted_proxies
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.parse::<IpNet>()
                .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    invalid(
                        format!("security.trusted_proxies[{i}]"),
                        format!("expected an address or network like \"10.0.0.0/8\", got {t:?}"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let security = SecurityConfig {
        allowed_origins: security.allowed_origins,
        trusted_proxies,
    };

    let admin = admin
        .map(|a| {
            Ok::<_, ConfigError>(AdminConfig {
                listen: socket_addr("admin.listen", &a.listen)?,
            })
        })
        .transpose()?;

    Ok(Config {
        server,
        upstream,
        routes: validated_routes,
        sessions,
        replay,
        poll,
        limits,
        security,
        client: ClientConfig {
            inject: client.inject.unwrap_or(false),
        },
        admin,
    })
}

impl Config {
    /// The effective configuration as TOML, for `wsbridge check`.
    pub fn to_toml(&self) -> String {
        fn d(d: Duration) -> String {
            humantime::format_duration(d).to_string().replace(' ', "")
        }
        let s = |v: &str| toml::Value::String(v.to_owned());
        let mut out = String::new();
        let server = &self.server;
        out.push_str("[server]\n");
        out.push_str(&format!("listen = {}\n", s(&server.listen.to_string())));
        out.push_str(&format!("prefix = {}\n", s(&server.prefix)));
        out.push_str(&format!(
            "drain_timeout = {}\n",
            s(&d(server.drain_timeout))
        ));
        out.push_str(&format!(
            "header_read_timeout = {}\n",
            s(&d(server.header_read_timeout))
        ));
        out.push_str(&format!("max_header_bytes = {}\n", server.max_header_bytes));
        out.push_str(&format!("max_connections = {}\n", server.max_connections));
        if let Some(tls) = &server.tls {
            out.push_str("\n[server.tls]\n");
            out.push_str(&format!("cert = {}\n", s(&tls.cert.display().to_string())));
            out.push_str(&format!("key = {}\n", s(&tls.key.display().to_string())));
        }
        let up = &self.upstream;
        out.push_str("\n[upstream]\n");
        out.push_str(&format!("url = {}\n", s(&up.url.to_string())));
        out.push_str(&format!(
            "connect_timeout = {}\n",
            s(&d(up.connect_timeout))
        ));
        out.push_str(&format!(
            "response_timeout = {}\n",
            s(&d(up.response_timeout))
        ));
        let names: Vec<String> = up
            .forward_headers
            .iter()
            .map(|h| s(h.as_str()).to_string())
            .collect();
        out.push_str(&format!("forward_headers = [{}]\n", names.join(", ")));
        if let Some(ca) = &up.ca_file {
            out.push_str(&format!("ca_file = {}\n", s(&ca.display().to_string())));
        }
        for r in &self.routes {
            out.push_str("\n[[routes]]\n");
            out.push_str(&format!("path = {}\n", s(&r.path)));
            out.push_str(&format!("upstream = {}\n", s(&r.upstream.to_string())));
            let ts: Vec<String> = r
                .transports
                .iter()
                .map(|t| s(t.as_str()).to_string())
                .collect();
            out.push_str(&format!("transports = [{}]\n", ts.join(", ")));
            if let Some(f) = &r.sse_event_field {
                out.push_str(&format!("sse_event_field = {}\n", s(f)));
            }
        }
        let se = &self.sessions;
        out.push_str("\n[sessions]\n");
        out.push_str(&format!("idle_timeout = {}\n", s(&d(se.idle_timeout))));
        out.push_str(&format!("linger = {}\n", s(&d(se.linger))));
        out.push_str(&format!("heartbeat = {}\n", s(&d(se.heartbeat))));
        out.push_str(&format!("client_retry = {}\n", s(&d(se.client_retry))));
        out.push_str(&format!("upstream_ping = {}\n", s(&d(se.upstream_ping))));
        out.push_str(&format!("max_sessions = {}\n", se.max_sessions));
        out.push_str(&format!(
            "max_sessions_per_client = {}\n",
            se.max_sessions_per_client
        ));
        out.push_str(&format!(
            "max_sends_per_second = {}\n",
            se.max_sends_per_second
        ));
        let re = &self.replay;
        out.push_str("\n[replay]\n");
        out.push_str(&format!("max_events = {}\n", re.max_events));
        out.push_str(&format!("max_bytes = {}\n", re.max_bytes));
        out.push_str(&format!("max_pending_bytes = {}\n", re.max_pending_bytes));
        let overflow = match re.overflow {
            Overflow::Backpressure => "backpressure",
            Overflow::DropOldest => "drop-oldest",
        };
        out.push_str(&format!("overflow = {}\n", s(overflow)));
        out.push_str(&format!("max_total_bytes = {}\n", re.max_total_bytes));
        let p = &self.poll;
        out.push_str("\n[poll]\n");
        out.push_str(&format!("max_wait = {}\n", s(&d(p.max_wait))));
        out.push_str(&format!("max_events = {}\n", p.max_events));
        out.push_str(&format!("max_bytes = {}\n", p.max_bytes));
        let l = &self.limits;
        out.push_str("\n[limits]\n");
        out.push_str(&format!("max_frame_bytes = {}\n", l.max_frame_bytes));
        out.push_str(&format!("max_outbound_bytes = {}\n", l.max_outbound_bytes));
        out.push_str(&format!(
            "max_upstream_frame_bytes = {}\n",
            l.max_upstream_frame_bytes
        ));
        out.push_str(&format!(
            "max_open_body_bytes = {}\n",
            l.max_open_body_bytes
        ));
        let sec = &self.security;
        out.push_str("\n[security]\n");
        let origins: Vec<String> = sec
            .allowed_origins
            .iter()
            .map(|o| s(o).to_string())
            .collect();
        out.push_str(&format!("allowed_origins = [{}]\n", origins.join(", ")));
        let proxies: Vec<String> = sec
            .trusted_proxies
            .iter()
            .map(|n| s(&n.to_string()).to_string())
            .collect();
        out.push_str(&format!("trusted_proxies = [{}]\n", proxies.join(", ")));
        out.push_str("\n[client]\n");
        out.push_str(&format!("inject = {}\n", self.client.inject));
        if let Some(admin) = &self.admin {
            out.push_str("\n[admin]\n");
            out.push_str(&format!("listen = {}\n", s(&admin.listen.to_string())));
        }
        out
    }

    /// The upstream as a WebSocket base (`ws`/`wss`) for the no-routes case.
    pub fn upstream_ws_base(&self) -> String {
        let scheme = if self.upstream.url.scheme() == Some(&Scheme::HTTPS) {
            "wss"
        } else {
            "ws"
        };
        let authority = self
            .upstream
            .url
            .authority()
            .map(|a| a.as_str())
            .unwrap_or_default();
        format!("{scheme}://{authority}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_contract_units() {
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        assert_eq!(parse_size("1234").unwrap(), 1234);
    }

    #[test]
    fn durations_in_human_form() {
        let c = Config::from_toml(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[sessions]\nidle_timeout = \"1m30s\"\nheartbeat = \"500ms\"",
        )
        .unwrap();
        assert_eq!(c.sessions.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.sessions.heartbeat, Duration::from_millis(500));
    }
}
