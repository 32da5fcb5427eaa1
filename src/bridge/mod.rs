//! The bridge endpoints under the prefix, one file each: open, the three
//! readers, send, close, and the operational ones. Each is thin (parse,
//! call the session API, answer) and returns `Result<_, BridgeError>`; the
//! error becomes a response in `http::error`, and the origin check, CORS
//! and the shared headers are `http`'s too.

mod channel;
mod close;
mod open;
mod ops;
mod read;
mod send;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use crate::body::{Body, BodyError, RequestBody, status_only};
use crate::client;
use crate::config::Transport;
use crate::error::BridgeError;
use crate::forwarded::ConnInfo;
use crate::routing::Endpoint;
use crate::session::Session;
use crate::state::AppState;

pub use channel::parse_batch_line;
pub use open::parse_open;
pub(crate) use ops::admin;
pub use send::parse_seq;

/// Runs the endpoint a request was classified as.
pub(crate) async fn dispatch(
    endpoint: Endpoint<'_>,
    req: Request<RequestBody>,
    conn: ConnInfo,
    state: &Arc<AppState>,
) -> Result<Response<Body>, BridgeError> {
    let method = req.method().clone();
    let is_get = method == Method::GET || method == Method::HEAD;
    match endpoint {
        // Boxed: the upstream handshake is by far the largest state of any
        // handler, and every request's future would otherwise be its size.
        Endpoint::Open if method == Method::POST => Box::pin(open::open(req, conn, state)).await,
        Endpoint::Open => Err(BridgeError::MethodNotAllowed("POST")),
        // GET only: a HEAD must not supersede the live reader.
        Endpoint::Sse(id) if method == Method::GET => read::read(id, Transport::Sse, &req, state),
        Endpoint::Stream(id) if method == Method::GET => {
            read::read(id, Transport::Stream, &req, state)
        }
        Endpoint::Poll(id) if method == Method::GET => read::read(id, Transport::Poll, &req, state),
        Endpoint::Sse(_) | Endpoint::Stream(_) | Endpoint::Poll(_) => {
            Err(BridgeError::MethodNotAllowed("GET"))
        }
        Endpoint::Send(id) if method == Method::POST => {
            let id = id.to_owned();
            send::send(&id, req, state).await
        }
        Endpoint::Send(_) => Err(BridgeError::MethodNotAllowed("POST")),
        Endpoint::Session(id) if method == Method::DELETE => close::close(id, &req, state),
        Endpoint::Session(_) => Err(BridgeError::MethodNotAllowed("DELETE")),
        Endpoint::ClientJs if is_get => Ok(ops::client_file(client::classic(), req.headers())),
        Endpoint::ClientMjs if is_get => Ok(ops::client_file(client::module(), req.headers())),
        Endpoint::Healthz if is_get => Ok(ops::healthz()),
        Endpoint::Readyz if is_get => Ok(ops::readyz(state)),
        // With `admin.metrics_on_main = false` they live on the admin listener only.
        Endpoint::Metrics if !state.config.metrics_on_main() => Err(BridgeError::NotFound),
        Endpoint::Metrics if is_get => Ok(ops::metrics(state, req.headers())),
        Endpoint::Transports if is_get => Ok(ops::transports(state)),
        Endpoint::ClientJs
        | Endpoint::ClientMjs
        | Endpoint::Healthz
        | Endpoint::Readyz
        | Endpoint::Metrics
        | Endpoint::Transports => Err(BridgeError::MethodNotAllowed("GET, HEAD")),
        Endpoint::Channels if method == Method::POST => channel::create(state),
        Endpoint::Channels => Err(BridgeError::MethodNotAllowed("POST")),
        Endpoint::Channel(id, part) => {
            let id = id.to_owned();
            Box::pin(channel::dispatch(&id, part, req, conn, state)).await
        }
        Endpoint::NotFound => Err(BridgeError::NotFound),
    }
}

/// The session an endpoint names; unknown, malformed and expired ids get
/// the same answer.
fn lookup(id: &str, state: &AppState) -> Result<Arc<Session>, BridgeError> {
    state.registry.get(id).ok_or(BridgeError::UnknownSession)
}

fn query_pairs(req: &Request<RequestBody>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn no_content() -> Response<Body> {
    status_only(StatusCode::NO_CONTENT)
}

/// Reads a request body up to `limit` bytes, else 413.
async fn read_body(
    body: RequestBody,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, BridgeError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BridgeError::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(BridgeError::PayloadTooLarge { limit })
        }
        Err(e) if matches!(e.downcast_ref(), Some(BodyError::Timeout)) => {
            Err(BridgeError::BodyTimeout)
        }
        Err(e) => Err(BridgeError::bad_request(
            "bad_body",
            format!("could not read the request body: {e}"),
        )),
    }
}
