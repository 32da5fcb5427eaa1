//! Configuration: the TOML file is read into raw structs that reject unknown
//! keys ([`raw`]), with durations and sizes read by serde adapters
//! ([`units`]), then validated into a typed [`Config`], so that a typo or a
//! bad value fails at start with the key's name, never under traffic.
//!
//! Every error names its key the way the file writes it
//! (`sessions.idle_timeout`, `routes[1].path`) and says what was expected.

mod cluster;
mod raw;
mod telemetry;
mod units;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use http::uri::{Scheme, Uri};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use cluster::{ADVERTISE_ENV, ClusterConfig, PeerSource, Secret};
use raw::*;
pub use telemetry::TelemetryConfig;
pub use units::parse_size;
use units::{Count, Dur, Size};

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

impl Overflow {
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Backpressure => "backpressure",
            Overflow::DropOldest => "drop-oldest",
        }
    }
}

/// The `Host` header sent upstream on the bridged WebSocket handshake and on
/// pass-through requests (`upstream.host`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPolicy {
    /// The browser's own `Host`, as a spliced WebSocket carries it (the
    /// default): the app sees the name the user typed.
    Browser,
    /// The upstream's authority, from `upstream.url` or the route's URL: for
    /// apps (or their virtual hosts) that only answer to their own name.
    Upstream,
}

impl HostPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            HostPolicy::Browser => "browser",
            HostPolicy::Upstream => "upstream",
        }
    }
}

/// The validated configuration. Every field has a working default except
/// `upstream.url`.
#[derive(Clone, Debug, PartialEq)]
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
    pub channel: ChannelConfig,
    pub admin: Option<AdminConfig>,
    /// `[cluster]`: `None` is a lone replica, ids as before.
    pub cluster: Option<ClusterConfig>,
    /// Span export; off unless `[telemetry] otlp_endpoint` is set.
    pub telemetry: TelemetryConfig,
    /// Things worth telling the operator that do not stop the start
    /// (`--upstream` leaving routes' upstreams in place); see [`Config::warnings`].
    warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Starts with `/`, never ends with `/`.
    pub prefix: String,
    pub drain_timeout: Duration,
    /// On a shutdown signal, readiness answers 503 at once, and closing
    /// starts only after this, so a load balancer can take the replica out
    /// before connections are refused. Zero = close at once.
    pub drain_delay: Duration,
    pub tls: Option<TlsConfig>,
    /// Slowloris guard: a client must send its request head within this.
    pub header_read_timeout: Duration,
    /// An idle connection between requests (HTTP/1 keep-alive, or HTTP/2
    /// with no open stream) is closed after this.
    pub keepalive_timeout: Duration,
    /// A request body must progress: its deadline is its start +
    /// `body_timeout` + received bytes / `min_recv_rate`.
    pub body_timeout: Duration,
    /// Bytes per second a request body earns as extra time; 0 = none (the
    /// deadline is `body_timeout` alone).
    pub min_recv_rate: usize,
    /// A response write that cannot progress is cut: a buffer of `len`
    /// bytes is allowed max(`write_timeout`, `len` / `min_send_rate`).
    pub write_timeout: Duration,
    /// Bytes per second; 0 = `write_timeout` alone, whatever the length.
    pub min_send_rate: usize,
    /// Largest request head accepted (HTTP/1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Largest concurrent connection count; further connections wait in the
    /// kernel's accept queue. Defaults below the open-file limit (see
    /// [`fd_connection_limit`]) so the limit engages before `accept` fails.
    pub max_connections: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamConfig {
    /// `http` or `https`, with an authority; path `/` or empty.
    pub url: Uri,
    pub connect_timeout: Duration,
    /// Time allowed for a pass-through response's head once the request is
    /// sent; long enough for long-polling apps behind the proxy.
    pub response_timeout: Duration,
    /// An idle pass-through pool connection is closed after this.
    pub pool_idle_timeout: Duration,
    /// The `Host` sent on the bridged handshake and on pass-through.
    pub host: HostPolicy,
    pub forward_headers: Vec<HeaderName>,
    /// Extra CA certificate(s) trusted for `wss://`/`https://` upstreams, in
    /// addition to the webpki roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq)]
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

#[derive(Clone, Debug, PartialEq)]
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

#[derive(Clone, Debug, PartialEq)]
pub struct ReplayConfig {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_pending_bytes: usize,
    /// The process-wide bound over every session's replay queue, lingering
    /// sessions included; never below `max_bytes`.
    pub max_total_bytes: usize,
    pub overflow: Overflow,
}

/// `[channel]`: the multiplexed channels (many sessions, one reader).
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelConfig {
    /// Open channels, in all.
    pub max_channels: usize,
    /// Sessions on one channel at a time.
    pub max_sessions_per_channel: usize,
    /// Frames in one `POST .../channels/{id}/send`.
    pub max_batch_frames: usize,
    /// Bytes of one batch body.
    pub max_batch_bytes: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PollConfig {
    pub max_wait: Duration,
    pub max_events: usize,
    pub max_bytes: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LimitsConfig {
    pub max_frame_bytes: usize,
    pub max_outbound_bytes: usize,
    pub max_upstream_frame_bytes: usize,
    /// Largest `POST {prefix}/sessions` body.
    pub max_open_body_bytes: usize,
}

#[derive(Clone, Debug, PartialEq)]
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

#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    pub inject: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// false: `{prefix}/metrics` on the main listener answers 404, and
    /// metrics are served on the admin listener only.
    pub metrics_on_main: bool,
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

// ---- bounds -----------------------------------------------------------------

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

/// `server.max_connections` when the open-file limit allows it.
const DEFAULT_MAX_CONNECTIONS: usize = 20_000;

/// File descriptors kept for everything that is not a connection: listeners,
/// the admin side, TLS files, the runtime, logs.
const RESERVED_FDS: u64 = 256;

/// The open-file limit (`RLIMIT_NOFILE`, soft), `None` when unlimited.
fn nofile_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// The most connections this process's open-file limit can hold: 256
/// descriptors are kept for the rest, and each connection may hold two (the
/// browser's socket and an upstream one). `server.max_connections` defaults
/// to this (at most 20000, at least 1) so the semaphore engages before
/// `accept` fails with EMFILE, and refuses a value above it.
pub fn fd_connection_limit() -> usize {
    match nofile_limit() {
        None => MAX_CONNECTIONS,
        Some(n) => usize::try_from(n.saturating_sub(RESERVED_FDS) / 2)
            .unwrap_or(MAX_CONNECTIONS)
            .clamp(1, MAX_CONNECTIONS),
    }
}

// ---- value checks -----------------------------------------------------------

fn duration(raw: Option<Dur>, default: Duration) -> Duration {
    raw.map_or(default, |d| d.0)
}

fn positive_duration(
    key: &str,
    raw: Option<Dur>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(raw, default);
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A size that may be zero (a rate whose zero switches it off).
fn size_or_zero(key: &str, raw: Option<Size>, default: u64) -> Result<usize, ConfigError> {
    let bytes = raw.map_or(default, |s| s.0);
    usize::try_from(bytes).map_err(|_| invalid(key, "is too large"))
}

fn size(key: &str, raw: Option<Size>, default: u64) -> Result<usize, ConfigError> {
    let bytes = size_or_zero(key, raw, default)?;
    if bytes == 0 {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(bytes)
}

fn count(
    key: &str,
    raw: Option<Count>,
    default: i64,
    allow_zero: bool,
) -> Result<usize, ConfigError> {
    let n = raw.map_or(default, |c| c.0);
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

/// A file the process will open later (TLS, CA): refused now if it cannot
/// be read, rather than at the first handshake or the next SIGHUP.
fn readable_file(key: &str, path: &Path) -> Result<(), ConfigError> {
    let file = std::fs::File::open(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(invalid(
            key,
            format!("{} is not a regular file", path.display()),
        )),
        Err(e) => Err(invalid(key, format!("cannot read {}: {e}", path.display()))),
    }
}

/// Whether two listeners could not both bind: the same address, or the same
/// port with one of them on every interface (`0.0.0.0` takes every IPv4
/// address; `[::]` takes every address, IPv4 too on a dual-stack host). Port
/// 0 asks the kernel for a free port and never clashes.
fn listeners_clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let covers =
        |wild: IpAddr, other: IpAddr| wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4());
    a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip())
}

/// Where a URL's traffic goes, scheme defaults applied, to compare upstreams.
fn host_port(uri: &Uri) -> (String, u16) {
    let default = match uri.scheme_str() {
        Some("https" | "wss") => 443,
        _ => 80,
    };
    (
        uri.host().unwrap_or_default().to_ascii_lowercase(),
        uri.port_u16().unwrap_or(default),
    )
}

/// Turns a deserialisation error into one naming its key. toml's own
/// message points at a line; the key is found by walking the parsed
/// document to the innermost entry whose key or value spans the error.
fn located(text: &str, e: toml::de::Error) -> ConfigError {
    let path = e.span().and_then(|span| {
        let doc = toml::de::DeTable::parse(text).ok()?;
        let mut path = Vec::new();
        find_key(doc.get_ref(), span.start, &mut path).then_some(path)
    });
    match path {
        Some(parts) if !parts.is_empty() => {
            let mut key = String::new();
            for p in parts {
                if !p.starts_with('[') && !key.is_empty() {
                    key.push('.');
                }
                key.push_str(&p);
            }
            let before = e.span().and_then(|s| text.get(..s.start)).unwrap_or("");
            let line = before.matches('\n').count() + 1;
            invalid(key, format!("{} (line {line})", e.message().trim_end()))
        }
        _ => ConfigError::Parse(e.to_string()),
    }
}

fn find_key(table: &toml::de::DeTable<'_>, pos: usize, path: &mut Vec<String>) -> bool {
    for (k, v) in table.iter() {
        if k.span().contains(&pos) {
            path.push(k.get_ref().to_string());
            return true;
        }
        path.push(k.get_ref().to_string());
        if find_in_value(v, pos, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(
    v: &toml::Spanned<toml::de::DeValue<'_>>,
    pos: usize,
    path: &mut Vec<String>,
) -> bool {
    match v.get_ref() {
        toml::de::DeValue::Table(t) => find_key(t, pos, path) || v.span().contains(&pos),
        toml::de::DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(format!("[{i}]"));
                if find_in_value(item, pos, path) {
                    return true;
                }
                path.pop();
            }
            v.span().contains(&pos)
        }
        _ => v.span().contains(&pos),
    }
}

// ---- loading ----------------------------------------------------------------

/// Overrides from the command line or the environment; each wins over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    /// `cluster.advertise`, from WSBRIDGE_CLUSTER_ADVERTISE ([`Config::load`]
    /// reads the variable when this is `None`).
    pub cluster_advertise: Option<String>,
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
        let mut overrides = overrides.clone();
        if overrides.cluster_advertise.is_none() {
            overrides.cluster_advertise = std::env::var(ADVERTISE_ENV).ok();
        }
        Config::from_toml_with(&text, &overrides)
    }

    /// Parses and validates TOML text with no overrides.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with(text, &Overrides::default())
    }

    pub fn from_toml_with(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| located(text, e))?;
        if let Some(listen) = &overrides.listen {
            raw.server.listen = Some(listen.clone());
        }
        if let Some(upstream) = &overrides.upstream {
            raw.upstream.url = Some(upstream.clone());
        }
        let mut config = validate(raw, overrides.cluster_advertise.clone())?;
        if overrides.upstream.is_some() {
            let target = host_port(&config.upstream.url);
            let kept: Vec<String> = config
                .routes
                .iter()
                .filter(|r| host_port(&r.upstream) != target)
                .map(|r| format!("{:?} -> {}", r.path, r.upstream))
                .collect();
            if !kept.is_empty() {
                config.warnings.push(format!(
                    "--upstream (WSBRIDGE_UPSTREAM) replaces upstream.url only; these routes keep their own upstream: {}",
                    kept.join(", ")
                ));
            }
        }
        Ok(config)
    }

    /// What loading found worth telling the operator without refusing the
    /// configuration; the binary prints each on stderr.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Whether `{prefix}/metrics` is served on the main listener.
    pub fn metrics_on_main(&self) -> bool {
        self.admin.as_ref().is_none_or(|a| a.metrics_on_main)
    }
}

fn validate(raw: RawConfig, cluster_advertise: Option<String>) -> Result<Config, ConfigError> {
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
        channel,
        admin,
        cluster,
        telemetry,
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
    let tls = match server.tls {
        None => None,
        Some(t) => {
            readable_file("server.tls.cert", &t.cert)?;
            readable_file("server.tls.key", &t.key)?;
            Some(TlsConfig {
                cert: t.cert,
                key: t.key,
            })
        }
    };
    let server = ServerConfig {
        listen: socket_addr(
            "server.listen",
            server.listen.as_deref().unwrap_or("0.0.0.0:8080"),
        )?,
        prefix,
        drain_timeout: positive_duration("server.drain_timeout", server.drain_timeout, secs(10))?,
        drain_delay: duration(server.drain_delay, Duration::ZERO),
        tls,
        header_read_timeout: positive_duration(
            "server.header_read_timeout",
            server.header_read_timeout,
            secs(10),
        )?,
        keepalive_timeout: positive_duration(
            "server.keepalive_timeout",
            server.keepalive_timeout,
            secs(75),
        )?,
        body_timeout: positive_duration("server.body_timeout", server.body_timeout, secs(30))?,
        min_recv_rate: size_or_zero("server.min_recv_rate", server.min_recv_rate, 1024)?,
        write_timeout: positive_duration("server.write_timeout", server.write_timeout, secs(30))?,
        min_send_rate: size_or_zero("server.min_send_rate", server.min_send_rate, 1024)?,
        max_header_bytes: size(
            "server.max_header_bytes",
            server.max_header_bytes,
            64 * 1024,
        )?,
        max_connections: max_connections(server.max_connections)?,
    };
    if server.drain_delay >= server.drain_timeout {
        return Err(invalid(
            "server.drain_delay",
            format!(
                "must be shorter than server.drain_timeout ({}), which counts from the signal and includes the delay: sessions would get no time to close",
                humantime::format_duration(server.drain_timeout)
            ),
        ));
    }

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
    if let Some(ca) = &upstream.ca_file {
        readable_file("upstream.ca_file", ca)?;
    }
    let host = match upstream.host.as_deref().unwrap_or("browser") {
        "browser" => HostPolicy::Browser,
        "upstream" => HostPolicy::Upstream,
        other => {
            return Err(invalid(
                "upstream.host",
                format!(
                    "expected \"browser\" (the browser's Host) or \"upstream\" (the upstream's authority), got {other:?}"
                ),
            ));
        }
    };
    let upstream = UpstreamConfig {
        url: upstream_uri,
        connect_timeout: positive_duration(
            "upstream.connect_timeout",
            upstream.connect_timeout,
            secs(5),
        )?,
        response_timeout: positive_duration(
            "upstream.response_timeout",
            upstream.response_timeout,
            secs(60),
        )?,
        pool_idle_timeout: positive_duration(
            "upstream.pool_idle_timeout",
            upstream.pool_idle_timeout,
            secs(90),
        )?,
        host,
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
        idle_timeout: positive_duration("sessions.idle_timeout", sessions.idle_timeout, secs(60))?,
        linger: duration(sessions.linger, secs(30)),
        heartbeat: positive_duration("sessions.heartbeat", sessions.heartbeat, secs(15))?,
        client_retry: duration(sessions.client_retry, secs(1)),
        upstream_ping: positive_duration(
            "sessions.upstream_ping",
            sessions.upstream_ping,
            secs(30),
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
    let max_bytes = size("replay.max_bytes", replay.max_bytes, 4 << 20)?;
    let max_total_bytes = size("replay.max_total_bytes", replay.max_total_bytes, 256 << 20)?;
    if max_total_bytes < max_bytes {
        return Err(invalid(
            "replay.max_total_bytes",
            format!(
                "{} is below replay.max_bytes ({}): one session's replay queue alone may hold that much",
                units::format_size(max_total_bytes as u64),
                units::format_size(max_bytes as u64),
            ),
        ));
    }
    let replay = ReplayConfig {
        max_events: count("replay.max_events", replay.max_events, 1024, false)?,
        max_bytes,
        max_pending_bytes: size(
            "replay.max_pending_bytes",
            replay.max_pending_bytes,
            4 << 20,
        )?,
        max_total_bytes,
        overflow,
    };

    let poll = PollConfig {
        max_wait: duration(poll.max_wait, secs(30)),
        max_events: count("poll.max_events", poll.max_events, 256, false)?,
        max_bytes: size("poll.max_bytes", poll.max_bytes, 1 << 20)?,
    };

    let limits = LimitsConfig {
        max_frame_bytes: size("limits.max_frame_bytes", limits.max_frame_bytes, 1 << 20)?,
        max_outbound_bytes: size(
            "limits.max_outbound_bytes",
            limits.max_outbound_bytes,
            1 << 20,
        )?,
        max_upstream_frame_bytes: size(
            "limits.max_upstream_frame_bytes",
            limits.max_upstream_frame_bytes,
            16 << 20,
        )?,
        max_open_body_bytes: size(
            "limits.max_open_body_bytes",
            limits.max_open_body_bytes,
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

    let channel = ChannelConfig {
        max_channels: count("channel.max_channels", channel.max_channels, 1000, false)?,
        max_sessions_per_channel: count(
            "channel.max_sessions_per_channel",
            channel.max_sessions_per_channel,
            256,
            false,
        )?,
        max_batch_frames: count(
            "channel.max_batch_frames",
            channel.max_batch_frames,
            256,
            false,
        )?,
        max_batch_bytes: size("channel.max_batch_bytes", channel.max_batch_bytes, 4 << 20)?,
    };

    let admin = match admin {
        None => None,
        Some(a) => {
            let Some(listen) = a.listen else {
                return Err(invalid(
                    "admin.listen",
                    "is required when [admin] is set, like \"127.0.0.1:9100\"",
                ));
            };
            let listen = socket_addr("admin.listen", &listen)?;
            if listeners_clash(listen, server.listen) {
                return Err(invalid(
                    "admin.listen",
                    format!(
                        "{listen} clashes with server.listen ({}): both cannot bind the same port; give the admin listener a port of its own",
                        server.listen
                    ),
                ));
            }
            Some(AdminConfig {
                listen,
                metrics_on_main: a.metrics_on_main.unwrap_or(true),
            })
        }
    };

    let cluster = cluster
        .map(|c| {
            cluster::validate(
                c,
                cluster_advertise,
                server.listen,
                admin.as_ref().map(|a| a.listen),
            )
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
        channel,
        admin,
        cluster,
        telemetry: telemetry::validate(telemetry)?,
        warnings: Vec::new(),
    })
}

fn max_connections(raw: Option<Count>) -> Result<usize, ConfigError> {
    const KEY: &str = "server.max_connections";
    let fd_limit = fd_connection_limit();
    let Some(raw) = raw else {
        return Ok(fd_limit.min(DEFAULT_MAX_CONNECTIONS));
    };
    let n = count(KEY, Some(raw), 0, false)?;
    if n > MAX_CONNECTIONS {
        return Err(invalid(
            KEY,
            format!("is too large (at most {MAX_CONNECTIONS})"),
        ));
    }
    if n > fd_limit {
        let nofile = nofile_limit().map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
        return Err(invalid(
            KEY,
            format!(
                "{n} is more than the open-file limit allows: RLIMIT_NOFILE (ulimit -n) is {nofile}, \
                 which holds at most {fd_limit} connections ({RESERVED_FDS} descriptors kept for the \
                 process, then two per connection: the browser's socket and its upstream's); \
                 raise the limit or lower this value"
            ),
        ));
    }
    Ok(n)
}

// ---- the effective configuration -------------------------------------------

impl From<&Config> for RawConfig {
    /// Every key, defaults included, as the file would write it.
    fn from(c: &Config) -> RawConfig {
        let size = |n: usize| Some(Size(n as u64));
        let count = |n: usize| Some(Count(i64::try_from(n).unwrap_or(i64::MAX)));
        let dur = |d: Duration| Some(Dur(d));
        let s = &c.server;
        let u = &c.upstream;
        let se = &c.sessions;
        let re = &c.replay;
        let p = &c.poll;
        let l = &c.limits;
        RawConfig {
            server: RawServer {
                listen: Some(s.listen.to_string()),
                prefix: Some(s.prefix.clone()),
                drain_timeout: dur(s.drain_timeout),
                drain_delay: dur(s.drain_delay),
                header_read_timeout: dur(s.header_read_timeout),
                keepalive_timeout: dur(s.keepalive_timeout),
                body_timeout: dur(s.body_timeout),
                min_recv_rate: size(s.min_recv_rate),
                write_timeout: dur(s.write_timeout),
                min_send_rate: size(s.min_send_rate),
                max_header_bytes: size(s.max_header_bytes),
                max_connections: count(s.max_connections),
                tls: s.tls.as_ref().map(|t| RawTls {
                    cert: t.cert.clone(),
                    key: t.key.clone(),
                }),
            },
            upstream: RawUpstream {
                url: Some(u.url.to_string()),
                connect_timeout: dur(u.connect_timeout),
                response_timeout: dur(u.response_timeout),
                pool_idle_timeout: dur(u.pool_idle_timeout),
                host: Some(u.host.as_str().to_owned()),
                forward_headers: u.forward_headers.iter().map(|h| h.to_string()).collect(),
                ca_file: u.ca_file.clone(),
            },
            routes: c
                .routes
                .iter()
                .map(|r| RawRoute {
                    path: Some(r.path.clone()),
                    upstream: Some(r.upstream.to_string()),
                    transports: Some(r.transports.iter().map(|t| t.as_str().into()).collect()),
                    sse_event_field: r.sse_event_field.clone(),
                })
                .collect(),
            sessions: RawSessions {
                idle_timeout: dur(se.idle_timeout),
                linger: dur(se.linger),
                heartbeat: dur(se.heartbeat),
                client_retry: dur(se.client_retry),
                upstream_ping: dur(se.upstream_ping),
                max_sessions: count(se.max_sessions),
                max_sessions_per_client: count(se.max_sessions_per_client),
                max_sends_per_second: Some(Count(se.max_sends_per_second.into())),
            },
            replay: RawReplay {
                max_events: count(re.max_events),
                max_bytes: size(re.max_bytes),
                max_pending_bytes: size(re.max_pending_bytes),
                max_total_bytes: size(re.max_total_bytes),
                overflow: Some(re.overflow.as_str().into()),
            },
            poll: RawPoll {
                max_wait: dur(p.max_wait),
                max_events: count(p.max_events),
                max_bytes: size(p.max_bytes),
            },
            limits: RawLimits {
                max_frame_bytes: size(l.max_frame_bytes),
                max_outbound_bytes: size(l.max_outbound_bytes),
                max_upstream_frame_bytes: size(l.max_upstream_frame_bytes),
                max_open_body_bytes: size(l.max_open_body_bytes),
            },
            security: RawSecurity {
                allowed_origins: c.security.allowed_origins.clone(),
                trusted_proxies: c
                    .security
                    .trusted_proxies
                    .iter()
                    .map(|n| n.to_string())
                    .collect(),
            },
            client: RawClient {
                inject: Some(c.client.inject),
            },
            channel: RawChannel {
                max_channels: count(c.channel.max_channels),
                max_sessions_per_channel: count(c.channel.max_sessions_per_channel),
                max_batch_frames: count(c.channel.max_batch_frames),
                max_batch_bytes: size(c.channel.max_batch_bytes),
            },
            admin: c.admin.as_ref().map(|a| RawAdmin {
                listen: Some(a.listen.to_string()),
                metrics_on_main: Some(a.metrics_on_main),
            }),
            cluster: c.cluster.as_ref().map(RawCluster::from),
            telemetry: RawTelemetry::from(&c.telemetry),
        }
    }
}

impl Config {
    /// The effective configuration as TOML, for `wsbridge check`: every key,
    /// defaults included, durations and sizes with their units. Loading it
    /// gives this configuration back.
    pub fn to_toml(&self) -> String {
        // Every value is a string, integer, bool or table of those, which
        // TOML can always write.
        toml::to_string(&RawConfig::from(self)).expect("a validated config serialises")
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

    fn load(extra: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n{extra}"
        ))
    }

    #[test]
    fn durations_in_human_form() {
        let c = load("[sessions]\nidle_timeout = \"1m30s\"\nheartbeat = \"500ms\"").unwrap();
        assert_eq!(c.sessions.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.sessions.heartbeat, Duration::from_millis(500));
    }

    #[test]
    fn type_errors_name_the_key_and_what_was_expected() {
        let e = load("[sessions]\nidle_timeout = 60\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("sessions.idle_timeout: "), "{e}");
        assert!(
            e.contains("duration string") && e.contains("\"60s\""),
            "{e}"
        );
        let e = load("[sessions]\nmax_sessions = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("sessions.max_sessions: "), "{e}");
        assert!(e.contains("whole number") && !e.contains("i64"), "{e}");
        let e = load("[[routes]]\npath = \"/a\"\nupstream = \"ws://h/a\"\n[[routes]]\npath = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("routes[1].path: "), "{e}");
    }

    #[test]
    fn listeners_clash_on_one_port_unless_both_are_specific_and_differ() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(listeners_clash(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(listeners_clash(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(listeners_clash(a("127.0.0.1:80"), a("[::]:80")));
        assert!(listeners_clash(a("[::]:80"), a("[::1]:80")));
        assert!(!listeners_clash(a("0.0.0.0:80"), a("[::1]:80")));
        assert!(!listeners_clash(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!listeners_clash(a("0.0.0.0:80"), a("0.0.0.0:81")));
        assert!(!listeners_clash(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }
}
