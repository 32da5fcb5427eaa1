//! wsbridge: a reverse proxy that re-exposes upstream WebSocket sessions to
//! browsers over plain HTTP (SSE, NDJSON stream, long-poll down; POST up) and
//! passes every other request straight through.
//!
//! The modules, in the order a newcomer should read them:
//!
//! - [`config`]: raw TOML → validated [`Config`]; defaults.
//! - [`server`]: accept loop, TLS, HTTP/1 + HTTP/2, graceful drain; [`run`].
//! - [`h1`]: the bufferless HTTP/1.1 front end for the bridge's endpoints.
//! - [`routing`]: a request → a bridge endpoint or pass-through; route matching.
//! - [`error`]: the error types of each layer and the one mapping to HTTP.
//! - [`passthrough`]: the plain reverse proxy and the WebSocket splice.
//! - [`bridge`]: the bridge endpoints (open, send, close, health, …).
//! - [`transport`]: one module per downstream transport (sse, stream, poll).
//! - [`session`]: a session, its registry and its replay queue.
//! - [`upstream`]: the task that owns one upstream WebSocket.
//! - [`metrics`]: counters, gauges, histograms and the exposition.
//! - [`client`]: the JavaScript client, embedded at build time.
//! - [`inject`]: streaming injection of the client into HTML pages.
//! - [`shutdown`]: signals and the shutdown token.
//!
//! A message's path reads the same way: from the upstream socket
//! ([`upstream`]) into the session's replay queue ([`session::replay`]), out
//! through one [`transport`].

pub mod bridge;
pub mod client;
pub mod config;
pub mod error;
pub mod h1;
pub mod inject;
pub mod metrics;
pub mod passthrough;
pub mod routing;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod transport;
pub mod upstream;

pub use config::Config;
pub use server::run;
