//! The errors of each layer and the one place they become HTTP responses.
//!
//! Clients get a short JSON `{"error": "<code>", ...}`; the detail, when
//! there is any, goes to the log.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Empty, Full};
use serde_json::{Value, json};

/// The body type of every response the proxy writes.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of requests to the bridge's own endpoints, which come from
/// hyper or from [`crate::h1`] (whose bodies cannot fail). A concrete error
/// type: with a boxed one, rustc cannot prove the handlers' futures `Send`.
pub type RequestBody = BoxBody<Bytes, hyper::Error>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A JSON response with `Cache-Control: no-store`, as every bridge response is.
pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

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
/// [`BridgeError::into_response`].
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

    /// The status alone, for logs and metrics.
    pub fn status(&self) -> StatusCode {
        match self {
            BridgeError::NotFound
            | BridgeError::UnknownSession
            | BridgeError::TransportNotAllowed
            | BridgeError::NoRoute => StatusCode::NOT_FOUND,
            BridgeError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            BridgeError::SessionClosed { .. } => StatusCode::GONE,
            BridgeError::BadRequest { .. } | BridgeError::BadCursor => StatusCode::BAD_REQUEST,
            BridgeError::OriginForbidden => StatusCode::FORBIDDEN,
            BridgeError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BridgeError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            BridgeError::SeqAhead { .. } => StatusCode::CONFLICT,
            BridgeError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            BridgeError::Upstream(UpstreamError::Rejected(s)) => upstream_rejection_status(*s),
            BridgeError::Upstream(UpstreamError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            BridgeError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let mut retry = None;
        let mut allow = None;
        let body = match self {
            BridgeError::NotFound => json!({"error": "not_found"}),
            BridgeError::MethodNotAllowed(methods) => {
                allow = Some(methods);
                json!({"error": "method_not_allowed", "allow": methods})
            }
            BridgeError::UnknownSession => json!({"error": "unknown_session"}),
            BridgeError::SessionClosed { code, reason } => {
                json!({"error": "session_closed", "close": {"code": code, "reason": reason}})
            }
            BridgeError::TransportNotAllowed => json!({"error": "transport_not_allowed"}),
            BridgeError::NoRoute => json!({"error": "no_route"}),
            BridgeError::BadRequest { code, detail } => json!({"error": code, "detail": detail}),
            BridgeError::BadCursor => json!({"error": "bad_cursor"}),
            BridgeError::OriginForbidden => json!({"error": "origin_not_allowed"}),
            BridgeError::PayloadTooLarge { limit } => {
                json!({"error": "payload_too_large", "limit": limit})
            }
            BridgeError::TooManyRequests { code, retry_after } => {
                retry = Some(retry_after);
                json!({"error": code})
            }
            BridgeError::SeqAhead { expected } => {
                json!({"error": "seq_out_of_order", "expected": expected})
            }
            BridgeError::Unavailable { code, retry_after } => {
                retry = Some(retry_after);
                json!({"error": code})
            }
            BridgeError::Upstream(UpstreamError::Rejected(s)) => {
                json!({"error": "upstream_rejected", "status": s.as_u16()})
            }
            BridgeError::Upstream(UpstreamError::Timeout) => json!({"error": "upstream_timeout"}),
            BridgeError::Upstream(UpstreamError::Unreachable(_)) => {
                json!({"error": "upstream_unreachable"})
            }
            BridgeError::Upstream(UpstreamError::Protocol(_)) => {
                json!({"error": "upstream_protocol_error"})
            }
        };
        let mut resp = json_response(status, &body);
        if let Some(after) = retry {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(methods) = allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(methods));
        }
        resp
    }
}

impl From<UpstreamError> for BridgeError {
    fn from(e: UpstreamError) -> Self {
        BridgeError::Upstream(e)
    }
}

/// The upstream's own refusal is mirrored when it is an HTTP error; a
/// non-error answer to an upgrade (200, 302) is a bad gateway.
fn upstream_rejection_status(s: StatusCode) -> StatusCode {
    if s.is_client_error() || s.is_server_error() {
        s
    } else {
        StatusCode::BAD_GATEWAY
    }
}
