//! The one HTTP service, for every request hyper or the HTTP/1.1 front end
//! reads: classify the path once, check the origin, dispatch to the bridge
//! or the pass-through, turn an error into its response, set the shared
//! headers, and write one access line and the request metrics.

mod access;
mod cluster;
mod cors;
pub(crate) mod error;

pub(crate) use self::cluster::internal;

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use self::access::Arrival;
use self::error::error_response;
use crate::body::{Body, Deadline, Inbound, RequestBody};
use crate::error::{BridgeError, ProxyError};
use crate::forwarded::{ConnInfo, is_websocket_upgrade};
use crate::routing::{self, Endpoint};
use crate::state::AppState;
use crate::{bridge, passthrough};

/// Every request hyper serves.
pub(crate) async fn handle(
    mut req: Request<Incoming>,
    conn: ConnInfo,
    state: Arc<AppState>,
) -> Result<Response<Body>, Infallible> {
    let arrival = Arrival::new(&mut req, conn, &state);
    // Every body hyper reads has a deadline, bridge and pass-through alike.
    let req = req.map(|body| Deadline::new(body, &state.config.server));
    let path = arrival.path.clone();
    let http1 = req.version() <= Version::HTTP_11;
    let prefix = &state.config.server.prefix;
    // A path under the prefix only once read loosely (`/_BRIDGE/..`,
    // `//_bridge/..`) is not the app's: it may carry a session id.
    let endpoint = routing::classify(prefix, &path)
        .or_else(|| routing::is_disguised_bridge_path(prefix, &path).then_some(Endpoint::NotFound));
    let mut resp = match endpoint {
        Some(endpoint) => bridge(endpoint, req.map(BodyExt::boxed), conn, &state).await,
        None => passthrough(req.map(Inbound::hyper), conn, &state).await,
    };
    // While draining, every connection serves what it was sent and ends:
    // an HTTP/1 client learns it from the response (hyper then closes).
    // A 101 keeps its `Connection: upgrade`.
    if http1 && state.is_draining() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(observe(&state, arrival, endpoint, resp))
}

/// A request the HTTP/1.1 front end read itself: one under the prefix (with
/// its body unread), or a bodyless pass-through request that is not an
/// upgrade. Keep-alive and the drain's close are the front end's.
pub(crate) async fn handle_h1(
    mut req: Request<RequestBody>,
    conn: ConnInfo,
    state: &Arc<AppState>,
) -> Response<Body> {
    let arrival = Arrival::new(&mut req, conn, state);
    let path = arrival.path.clone();
    let prefix = &state.config.server.prefix;
    let endpoint = routing::classify(prefix, &path)
        .or_else(|| routing::is_disguised_bridge_path(prefix, &path).then_some(Endpoint::NotFound));
    let resp = match endpoint {
        Some(endpoint) => bridge(endpoint, req, conn, state).await,
        // The front end takes no pass-through request with a body.
        None => passthrough(req.map(|_| Inbound::empty()), conn, state).await,
    };
    observe(state, arrival, endpoint, resp)
}

/// The admin listener's requests: health, readiness and metrics only.
pub(crate) fn admin<B>(req: &Request<B>, state: &AppState) -> Response<Body> {
    bridge::admin(req.uri().path(), req.headers(), state).unwrap_or_else(error_response)
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
        // Before dispatch: a session another replica owns is forwarded.
        cluster::dispatch(endpoint, req, conn, state).await
    };
    cors::finish(endpoint, origin, &mut resp);
    resp
}

async fn passthrough(req: Request<Inbound>, conn: ConnInfo, state: &AppState) -> Response<Body> {
    if is_websocket_upgrade(req.headers())
        && !cors::origin_allowed(req.headers(), &state.config.security)
    {
        return error_response(ProxyError::OriginForbidden);
    }
    passthrough::handle(req, conn, state)
        .await
        .unwrap_or_else(error_response)
}

/// The request metrics (at the response head), the request id echoed, and
/// the access line (once the body is done: see `access`).
fn observe(
    state: &AppState,
    arrival: Arrival,
    endpoint: Option<Endpoint<'_>>,
    resp: Response<Body>,
) -> Response<Body> {
    let elapsed = arrival.start.elapsed();
    let status = resp.status().as_u16();
    let name = match endpoint {
        Some(endpoint) => endpoint.name(),
        None if status == 101 => "websocket",
        None => "passthrough",
    };
    state.metrics.request(name, status, elapsed);
    let path = log_path(endpoint, &arrival.path);
    arrival.respond(path, name, resp)
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
        // Under the prefix but no endpoint (`/_bridge//sessions/ID/sse`,
        // `/_BRIDGE/sessions/ID`): an id could be in any segment, so each
        // is cut to an id's logged length.
        Some(Endpoint::NotFound) => path
            .split('/')
            .map(|seg| match seg.char_indices().nth(LOGGED_SEGMENT) {
                Some((end, _)) => format!("{}…", &seg[..end]),
                None => seg.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/"),
        _ => path.to_owned(),
    }
}

/// The most of one segment of an unknown bridge path that is logged: as
/// much of a session id as `session::log_id` shows.
const LOGGED_SEGMENT: usize = 6;

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
        let id = "AbCdEfGhIjKlMnOpQrStUv";
        for odd in [
            format!("/_bridge//sessions/{id}/sse"),
            format!("/_bridge/sessions/{id}/sse/"),
            format!("/_bridge/sessions/{id}/./sse"),
        ] {
            let logged = log_path(routing::classify("/_bridge", &odd), &odd);
            assert!(!logged.contains(id), "{odd} logged as {logged}");
            assert!(logged.contains("AbCdEf…"), "{logged}");
        }
    }
}
