//! The origin check and CORS of the bridge's session endpoints, and the
//! headers every bridge answer carries (`Cache-Control: no-store`,
//! `X-Realtime-Transport`).

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{Body, status_only};
use crate::config::SecurityConfig;
use crate::routing::{ChannelPart, Endpoint};

/// Headers a cross-origin page may send on bridge requests.
const CORS_ALLOW_HEADERS: &str =
    "content-type, bridge-seq, last-event-id, authorization, traceparent, tracestate, x-request-id";
const CORS_EXPOSE_HEADERS: &str = "x-realtime-transport, retry-after, x-request-id";

/// Whether the request's `Origin` (none counts as same-origin) is allowed.
/// One that is not UTF-8 can match no configured origin, so it fails
/// closed when `security.allowed_origins` is set (with no list, any origin
/// is allowed, that one too; it is just never reflected, see [`finish`]).
pub(super) fn origin_allowed(headers: &HeaderMap, security: &SecurityConfig) -> bool {
    match headers.get(header::ORIGIN).map(HeaderValue::to_str) {
        None => security.origin_allowed(None),
        Some(Ok(origin)) => security.origin_allowed(Some(origin)),
        Some(Err(_)) => security.allowed_origins.is_empty(),
    }
}

/// The answer to a CORS preflight on a session endpoint.
pub(super) fn preflight() -> Response<Body> {
    let mut resp = status_only(StatusCode::NO_CONTENT);
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(CORS_ALLOW_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    resp
}

/// Every bridge answer but the client files, errors included: the one
/// place `no-store` and `X-Realtime-Transport` are set; and, for a session
/// endpoint asked from an (allowed) origin, the CORS answer.
pub(super) fn finish(
    endpoint: Endpoint<'_>,
    origin: Option<HeaderValue>,
    resp: &mut Response<Body>,
) {
    let h = resp.headers_mut();
    if !matches!(endpoint, Endpoint::ClientJs | Endpoint::ClientMjs) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let transport = match endpoint {
        Endpoint::Sse(_) => Some("sse"),
        Endpoint::Stream(_) => Some("stream"),
        Endpoint::Poll(_) => Some("poll"),
        Endpoint::Send(_) => Some("send"),
        Endpoint::Channel(_, part) => match part {
            ChannelPart::Sse => Some("sse"),
            ChannelPart::Stream => Some("stream"),
            ChannelPart::Poll => Some("poll"),
            ChannelPart::Send => Some("send"),
            _ => None,
        },
        _ => None,
    };
    if let Some(t) = transport {
        h.insert("x-realtime-transport", HeaderValue::from_static(t));
    }
    // Only an origin that is text is reflected: bytes that are not could
    // be read differently by the browser and whatever sits in between.
    if endpoint.checks_origin()
        && let Some(origin) = origin.filter(|o| o.to_str().is_ok())
    {
        // Allowed (checked before): answer with the page's own origin so
        // credentials (cookies) may be sent.
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(CORS_EXPOSE_HEADERS),
        );
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
}
