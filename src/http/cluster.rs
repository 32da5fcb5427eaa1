//! The cluster's two hooks into the service: a session or channel request
//! whose id names another replica is forwarded there before dispatch, and the
//! internal listener's requests (peers', authenticated) are dispatched
//! here without a second look at the owner.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use super::error::error_response;
use crate::body::{Body, Deadline, RequestBody, json_response};
use crate::bridge;
use crate::cluster::{Kind, Owner};
use crate::error::BridgeError;
use crate::forwarded::ConnInfo;
use crate::routing::{self, Endpoint};
use crate::state::AppState;

/// Dispatches here, or forwards to the session's owner.
pub(super) async fn dispatch(
    endpoint: Endpoint<'_>,
    req: Request<RequestBody>,
    conn: ConnInfo,
    state: &Arc<AppState>,
) -> Response<Body> {
    let (Some(cluster), Some((id, kind))) = (state.cluster.as_deref(), owned_by(endpoint)) else {
        return local(endpoint, req, conn, state).await;
    };
    let owner = match cluster.owner(id) {
        Owner::Local => return local(endpoint, req, conn, state).await,
        Owner::Invalid => return error_response(unknown(kind)),
        Owner::Peer(addr) => Ok(addr),
        Owner::Gone(tag) => Err(tag),
    };
    let client = conn.client_ip(req.headers(), &state.config.security);
    cluster
        .forward(
            kind,
            owner,
            req,
            client,
            &state.metrics,
            state.drain_token(),
        )
        .await
        .unwrap_or_else(error_response)
}

async fn local(
    endpoint: Endpoint<'_>,
    req: Request<RequestBody>,
    conn: ConnInfo,
    state: &Arc<AppState>,
) -> Response<Body> {
    bridge::dispatch(endpoint, req, conn, state)
        .await
        .unwrap_or_else(error_response)
}

/// A request on the internal listener: a peer's, for a session or channel
/// this replica owns, on its endpoints; anything else is refused.
pub(crate) async fn internal(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<AppState>,
) -> Response<Body> {
    let Some(cluster) = state.cluster.as_deref() else {
        return error_response(BridgeError::NotFound);
    };
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let Some(client) = cluster.authenticate(req.method(), pq, req.headers()) else {
        tracing::warn!(%peer, "internal request without a valid peer signature refused");
        return json_response(StatusCode::UNAUTHORIZED, &json!({"error": "unauthorized"}));
    };
    let path = req.uri().path().to_owned();
    let endpoint = routing::classify(&state.config.server.prefix, &path);
    let Some((id, kind)) = endpoint.and_then(owned_by) else {
        return error_response(BridgeError::NotFound);
    };
    // Only this replica's own sessions and channels: a forwarded request
    // is never forwarded again.
    if cluster.owner(id) != Owner::Local {
        return error_response(unknown(kind));
    }
    let endpoint = endpoint.expect("a session or channel endpoint was classified");
    let conn = ConnInfo {
        peer: SocketAddr::new(client, 0),
        tls: false,
    };
    // A peer's body has a deadline too, as every body hyper reads.
    let req = req.map(|body| Deadline::new(body, &state.config.server).boxed());
    let resp = local(endpoint, req, conn, &state).await;
    cluster.track(resp)
}

/// The session or channel a request names (its id names the owner), and
/// which forwarded kind it is. Opening a channel, as a session, is local.
fn owned_by(endpoint: Endpoint<'_>) -> Option<(&str, Kind)> {
    match endpoint {
        Endpoint::Channel(id, part) => Some((id, Kind::Channel(part))),
        Endpoint::Sse(id) => Some((id, Kind::Sse)),
        Endpoint::Stream(id) => Some((id, Kind::Stream)),
        Endpoint::Poll(id) => Some((id, Kind::Poll)),
        Endpoint::Send(id) => Some((id, Kind::Send)),
        Endpoint::Session(id) => Some((id, Kind::Close)),
        _ => None,
    }
}

/// The unknown-id answer for what a request names.
fn unknown(kind: Kind) -> BridgeError {
    match kind {
        Kind::Channel(_) => BridgeError::UnknownChannel,
        _ => BridgeError::UnknownSession,
    }
}
