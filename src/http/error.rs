//! The one place an error of any layer becomes an HTTP response: a status,
//! a short JSON `{"error": "<code>", ...}` and, where it helps the client,
//! `Retry-After` or `Allow`, and `X-Content-Type-Options: nosniff` so that
//! no browser reads an error body as anything but JSON. The detail stays in
//! the log.

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::body::{Body, json_response};
use crate::error::{BridgeError, ProxyError, UpstreamError};

/// Any error a request can end in.
#[derive(Debug)]
pub(crate) enum HttpError {
    Bridge(BridgeError),
    Proxy(ProxyError),
}

impl From<BridgeError> for HttpError {
    fn from(e: BridgeError) -> Self {
        HttpError::Bridge(e)
    }
}

impl From<ProxyError> for HttpError {
    fn from(e: ProxyError) -> Self {
        HttpError::Proxy(e)
    }
}

/// The response for an error.
pub(crate) fn error_response(e: impl Into<HttpError>) -> Response<Body> {
    let mut resp = match e.into() {
        HttpError::Bridge(e) => bridge(e),
        // The same answer as an open's bad `url`.
        HttpError::Proxy(ProxyError::BadUrl(detail)) => json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "bad_url", "detail": detail }),
        ),
        HttpError::Proxy(e) => {
            let (status, code) = proxy(&e);
            json_response(status, &json!({ "error": code }))
        }
    };
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn proxy(e: &ProxyError) -> (StatusCode, &'static str) {
    match e {
        ProxyError::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
        ProxyError::BadUrl(_) => (StatusCode::BAD_REQUEST, "bad_url"),
        ProxyError::OriginForbidden => (StatusCode::FORBIDDEN, "origin_not_allowed"),
        ProxyError::WebsocketNotAllowed => (StatusCode::FORBIDDEN, "websocket_not_allowed"),
        ProxyError::Unreachable => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
        ProxyError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        ProxyError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
        ProxyError::BadBody => (StatusCode::BAD_REQUEST, "bad_body"),
    }
}

fn bridge_status(e: &BridgeError) -> StatusCode {
    match e {
        BridgeError::NotFound
        | BridgeError::UnknownSession
        | BridgeError::TransportNotAllowed
        | BridgeError::NoRoute
        | BridgeError::UnknownChannel => StatusCode::NOT_FOUND,
        BridgeError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        BridgeError::SessionClosed { .. } => StatusCode::GONE,
        BridgeError::BadRequest { .. } | BridgeError::BadCursor => StatusCode::BAD_REQUEST,
        BridgeError::OriginForbidden => StatusCode::FORBIDDEN,
        BridgeError::PayloadTooLarge { .. } | BridgeError::TooManyFrames { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        BridgeError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        BridgeError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        BridgeError::SeqAhead { .. } => StatusCode::CONFLICT,
        BridgeError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        BridgeError::Upstream(UpstreamError::Rejected(s)) => upstream_rejection_status(*s),
        BridgeError::Upstream(UpstreamError::Timeout) => StatusCode::GATEWAY_TIMEOUT,
        BridgeError::Upstream(_) => StatusCode::BAD_GATEWAY,
    }
}

fn bridge(e: BridgeError) -> Response<Body> {
    let status = bridge_status(&e);
    let mut retry = None;
    let mut allow = None;
    let body: Value = match e {
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
        BridgeError::UnknownChannel => json!({"error": "unknown_channel"}),
        BridgeError::TooManyFrames { limit } => {
            json!({"error": "too_many_frames", "limit": limit})
        }
        BridgeError::BadRequest { code, detail } => json!({"error": code, "detail": detail}),
        BridgeError::BadCursor => json!({"error": "bad_cursor"}),
        BridgeError::OriginForbidden => json!({"error": "origin_not_allowed"}),
        BridgeError::PayloadTooLarge { limit } => {
            json!({"error": "payload_too_large", "limit": limit})
        }
        BridgeError::BodyTimeout => json!({"error": "body_timeout"}),
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

/// The upstream's own refusal is mirrored when it is an HTTP error; a
/// non-error answer to an upgrade (200, 302) is a bad gateway.
fn upstream_rejection_status(s: StatusCode) -> StatusCode {
    if s.is_client_error() || s.is_server_error() {
        s
    } else {
        StatusCode::BAD_GATEWAY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_body_is_nosniff_json() {
        for resp in [
            error_response(BridgeError::NotFound),
            error_response(BridgeError::OriginForbidden),
            error_response(ProxyError::Unreachable),
            error_response(ProxyError::BadRequest),
        ] {
            let h = resp.headers();
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{resp:?}");
            assert_eq!(h[header::CONTENT_TYPE], "application/json");
        }
    }
}
