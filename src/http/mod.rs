//! The one HTTP service, for every request hyper or the HTTP/1.1 front end
//! reads: classify the path once, check the origin, dispatch to the bridge
//! or the pass-through, turn an error into its response, set the shared
//! headers, and write one log line and the request metrics.

mod cors;
pub(crate) mod error;

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use self::error::error_response;
use crate::body::{Body, RequestBody};
use crate::error::{BridgeError, ProxyError};
use crate::forwarded::{ConnInfo, is_websocket_upgrade};
use crate::routing::{self, Endpoint};
use crate::state::AppState;
use crate::{bridge, passthrough};

/// Every request hyper serves.
pub(crate) async fn handle(
    req: Request<Incoming>,
    conn: ConnInfo,
    state: Arc<AppState>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let http1 = req.version() <= Version::HTTP_11;
    let endpoint = routing::classify(&state.config.server.prefix, &path);
    let mut resp = match endpoint {
        Some(endpoint) => bridge(endpoint, req.map(BodyExt::boxed), conn, &state).await,
        None => passthrough(req, conn, &state).await,
    };
    // While draining, every connection serves what it was sent and ends:
    // an HTTP/1 client learns it from the response (hyper then closes).
    // A 101 keeps its `Connection: upgrade`.
    if http1 && state.is_draining() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    observe(&state, &method, &path, endpoint, start, &resp);
    Ok(resp)
}

/// A request the HTTP/1.1 front end read itself: always under the prefix.
pub(crate) async fn handle_bridge(
    req: Request<RequestBody>,
    conn: ConnInfo,
    state: &Arc<AppState>,
) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let endpoint = routing::classify(&state.config.server.prefix, &path);
    let resp = match endpoint {
        Some(endpoint) => bridge(endpoint, req, conn, state).await,
        None => error_response(BridgeError::NotFound),
    };
    observe(state, &method, &path, endpoint, start, &resp);
    resp
}

/// The admin listener's requests: health, readiness and metrics only.
pub(crate) fn admin<B>(req: &Request<B>, state: &AppState) -> Response<Body> {
    bridge::admin(req.uri().path(), state).unwrap_or_else(error_response)
}

async fn bridge(
    endpoint: Endpoint<'_>,
    req: Request<RequestBody>,
    conn: ConnInfo,
    state: &Arc<AppState>,
) -> Response<Body> {
    if endpoint.checks_origin() && !cors::origin_allowed(req.headers(), &state.config.security) {
        return error_response(BridgeError::OriginForbidden);
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = if req.method() == Method::OPTIONS && endpoint.checks_origin() {
        cors::preflight()
    } else {
        bridge::dispatch(endpoint, req, conn, state)
            .await
            .unwrap_or_else(error_response)
    };
    cors::finish(endpoint, origin, &mut resp);
    resp
}

async fn passthrough(req: Request<Incoming>, conn: ConnInfo, state: &AppState) -> Response<Body> {
    if is_websocket_upgrade(req.headers())
        && !cors::origin_allowed(req.headers(), &state.config.security)
    {
        return error_response(ProxyError::OriginForbidden);
    }
    passthrough::handle(req, conn, state)
        .await
        .unwrap_or_else(error_response)
}

/// One log line and the request metrics.
fn observe(
    state: &AppState,
    method: &Method,
    path: &str,
    endpoint: Option<Endpoint<'_>>,
    start: Instant,
    resp: &Response<Body>,
) {
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    let name = match endpoint {
        Some(endpoint) => endpoint.name(),
        None if status == 101 => "websocket",
        None => "passthrough",
    };
    state.metrics.request(name, status, elapsed);
    tracing::info!(
        method = %method,
        path = %log_path(endpoint, path),
        status,
        ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
}

/// The path as it may be logged: never the query (tokens live there) and
/// never a whole session id (it is a bearer capability).
fn log_path(endpoint: Option<Endpoint<'_>>, path: &str) -> String {
    match endpoint {
        Some(
            Endpoint::Sse(id)
            | Endpoint::Stream(id)
            | Endpoint::Poll(id)
            | Endpoint::Send(id)
            | Endpoint::Session(id)
            | Endpoint::Channel(id, _),
        ) => path.replacen(id, &format!("{}…", crate::session::log_id(id)), 1),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_path_hides_session_ids() {
        let log = |path| log_path(routing::classify("/_bridge", path), path);
        let p = log("/_bridge/sessions/AbCdEfGhIjKlMnOpQrStUv/sse");
        assert_eq!(p, "/_bridge/sessions/AbCdEf…/sse");
        let p = log("/_bridge/channels/AbCdEfGhIjKlMnOpQrStUv/send");
        assert_eq!(p, "/_bridge/channels/AbCdEf…/send");
        assert_eq!(log("/app/page"), "/app/page");
    }
}
