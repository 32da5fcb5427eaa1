//! wsbridge: a reverse proxy that re-exposes upstream WebSocket sessions to
//! browsers over plain HTTP (SSE, NDJSON stream, long-poll down; POST up) and
//! passes every other request straight through.
//!
//! The modules, in the order a newcomer should read them:
//!
//! - [`config`]: raw TOML → validated [`Config`]; defaults.
//! - `state`: [`AppState`], what every request can reach, and why.
//! - [`net`]: listeners (main, admin, the cluster's internal one), TLS and
//!   its reload, connection serving with a bound on every phase, the
//!   HTTP/1.1 front end, the graceful drain; [`run`].
//! - `http`: the one service: classify once, origin check and CORS,
//!   dispatch, the one error → response mapping, the log line and metrics.
//! - `cluster`: replicas without sticky sessions: ids naming their owner,
//!   peer discovery and authentication, forwarding to the owner.
//! - `routing`: a request → a bridge endpoint or pass-through; route matching.
//! - `forwarded`: the connection's peer, the client address, X-Forwarded-*.
//! - `trace`: request ids and W3C trace context, checked on arrival and
//!   carried upstream.
//! - `telemetry`: optional span export over OTLP (a span per request and
//!   per session), off by default.
//! - `body`: the request and response body types; the request-body deadline.
//! - `error`: the error types of each layer.
//! - `bridge`: the bridge endpoints, one file each (open, read, send, close,
//!   ops, channel).
//! - `passthrough`: the plain reverse proxy and the WebSocket splice.
//! - `transport`: one module per downstream transport (sse, stream, poll),
//!   and the channel's tagged forms of them.
//! - `session`: a session, its registry, its replay queue and the
//!   process-wide replay budget; the multiplexed channel (many sessions,
//!   one reader).
//! - `upstream`: the task that owns one upstream WebSocket; its handshake
//!   (`connect`) and its frames (`codec`), read and written by the proxy.
//! - `metrics`: counters, gauges, histograms, process metrics and the
//!   exposition in the format the scraper asks for.
//! - `client`: the JavaScript client, embedded at build time.
//! - `inject`: streaming injection of the client into HTML pages.
//! - [`shutdown`]: signals and the shutdown token.
//!
//! Dependencies run one way, top to bottom, and no module imports one
//! above it: `net` → `http` → `bridge` | `passthrough` | `cluster` →
//! `session`, `transport`, `upstream`; under them all the leaves `config`, `state`,
//! `forwarded`, `trace`, `telemetry`, `body`, `error`, `metrics`, `routing`, `shutdown`, `client`,
//! `inject`. (`bridge` and `passthrough` never import each other, nor
//! `http` or `net`; `cluster` imports none of them either; `state` holds
//! the session registry, the upstream TLS settings and the cluster, and
//! imports nothing of the front.)
//!
//! A message's path reads the same way: from the upstream socket
//! (`upstream`) into the session's replay queue (`session::replay`), out
//! through one `transport`.

pub mod config;
pub mod net;
pub mod shutdown;

mod body;
mod bridge;
mod client;
mod cluster;
mod error;
mod forwarded;
mod http;
mod inject;
mod metrics;
mod passthrough;
mod routing;
mod state;
mod telemetry;
mod trace;
mod transport;
mod upstream;

// Public only because some of its items are used by its own tests alone
// (`Frame::is_empty`, `Registry::active`, `ReplayQueue::read`, ...), which
// would be dead code in a private module; its owners trim or use them.
#[doc(hidden)]
pub mod session;

pub use config::Config;
pub use net::run;
pub use state::AppState;

/// The parsers of untrusted input, public for the property tests in
/// `tests/fuzz.rs` and the fuzz targets; not an API.
#[doc(hidden)]
pub mod parsers {
    pub use crate::bridge::{parse_batch_line, parse_open, parse_seq};
    pub use crate::net::h1::{Head as H1Head, Parsed as H1Parsed, parse_head as h1_parse_head};
    pub use crate::routing::{page_path, resolve};
    pub use crate::session::replay::{Event, EventData};
    pub use crate::transport::channel::parse_cursors;
    pub use crate::transport::poll::parse_wait;
    pub use crate::transport::{
        parse_cursor, resume_cursor, sse, write_event_json, write_json_str,
    };
    pub use crate::upstream::FrameReader as UpstreamFrameReader;
}
