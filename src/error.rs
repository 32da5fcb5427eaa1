//! The error types of each layer. They become HTTP responses in one place,
//! `http::error`: clients get a short JSON `{"error": "<code>", ...}`; the
//! detail, when there is any, goes to the log.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

/// Why the upstream handshake of a new session failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// The upstream answered the handshake with this status instead of 101.
    Rejected(StatusCode),
    /// TCP or TLS could not be established.
    Unreachable(String),
    /// The handshake took longer than `upstream.connect_timeout`.
    Timeout,
    /// The handshake broke the WebSocket protocol.
    Protocol(String),
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Rejected(s) => write!(f, "upstream rejected the handshake with {s}"),
            UpstreamError::Unreachable(e) => write!(f, "upstream unreachable: {e}"),
            UpstreamError::Timeout => write!(f, "upstream handshake timed out"),
            UpstreamError::Protocol(e) => write!(f, "upstream handshake failed: {e}"),
        }
    }
}

/// An error on a bridge endpoint. Each variant maps to one status and code in
/// `http::error`.
#[derive(Debug)]
pub enum BridgeError {
    /// Unknown path under the prefix.
    NotFound,
    MethodNotAllowed(&'static str),
    /// Unknown, malformed or expired session id: the same answer for each.
    UnknownSession,
    SessionClosed {
        code: u16,
        reason: String,
    },
    /// The session's route does not allow this transport.
    TransportNotAllowed,
    /// Unknown, malformed or ended channel id: the same answer for each.
    UnknownChannel,
    /// 413: a channel batch with more than `channel.max_batch_frames` lines.
    TooManyFrames {
        limit: usize,
    },
    /// No route for the path, or the route does not bridge.
    NoRoute,
    /// 400 with a machine-readable code and a human detail.
    BadRequest {
        code: &'static str,
        detail: String,
    },
    BadCursor,
    OriginForbidden,
    PayloadTooLarge {
        limit: usize,
    },
    /// 408: the request body did not arrive within `server.body_timeout`
    /// (plus what `server.min_recv_rate` earned).
    BodyTimeout,
    /// 429: too much waiting for the upstream, or the send rate limit.
    TooManyRequests {
        code: &'static str,
        retry_after: Duration,
    },
    /// 409: a `Bridge-Seq` beyond the next expected one.
    SeqAhead {
        expected: u64,
    },
    /// 503: session limits or draining.
    Unavailable {
        code: &'static str,
        retry_after: Duration,
    },
    Upstream(UpstreamError),
}

impl BridgeError {
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        BridgeError::BadRequest {
            code,
            detail: detail.into(),
        }
    }
}

impl From<UpstreamError> for BridgeError {
    fn from(e: UpstreamError) -> Self {
        BridgeError::Upstream(e)
    }
}

/// An error of the pass-through or the WebSocket splice, before the
/// upstream answered (its own answers, errors included, go to the browser
/// as they are).
#[derive(Debug)]
pub enum ProxyError {
    /// The request cannot be forwarded (its path does not make a URI).
    BadRequest,
    /// An upgrade's path is refused as an open's `url` would be (dot
    /// segments); the detail says why.
    BadUrl(&'static str),
    /// An upgrade from an origin `security.allowed_origins` does not allow.
    OriginForbidden,
    /// An upgrade on a path whose route does not allow `websocket`.
    WebsocketNotAllowed,
    /// Connecting (or the TLS or upgrade handshake) failed.
    Unreachable,
    /// The upstream took longer than its connect or response timeout.
    Timeout,
    /// The request body did not arrive in time: the upstream request was
    /// abandoned.
    BodyTimeout,
    /// The request body broke its framing (a malformed chunk).
    BadBody,
}
