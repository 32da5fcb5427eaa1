//! The operational endpoints: health, readiness, metrics, the routes'
//! transports, and the JavaScript client files.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;

use crate::body::{Body, full, json_response, status_only};
use crate::client;
use crate::config::Transport;
use crate::error::BridgeError;
use crate::metrics::{Format, SessionSnapshot};
use crate::state::AppState;

/// The admin listener's endpoints: `/healthz`, `/readyz` and `/metrics`,
/// bare or under the prefix; anything else is not found.
/// Metrics are always served here, whatever `admin.metrics_on_main` says.
pub(crate) fn admin(
    path: &str,
    headers: &HeaderMap,
    state: &AppState,
) -> Result<Response<Body>, BridgeError> {
    let prefix = &state.config.server.prefix;
    match path.strip_prefix(prefix.as_str()).unwrap_or(path) {
        "/healthz" => Ok(healthz()),
        "/readyz" => Ok(readyz(state)),
        "/metrics" => Ok(metrics(state, headers)),
        _ => Err(BridgeError::NotFound),
    }
}

pub(super) fn healthz() -> Response<Body> {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

pub(super) fn readyz(state: &AppState) -> Response<Body> {
    if state.is_draining() {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "draining"}),
        )
    } else {
        json_response(StatusCode::OK, &json!({"status": "ready"}))
    }
}

/// The exposition, in the format the scraper's `Accept` asks for, with
/// that format's content type.
pub(super) fn metrics(state: &AppState, headers: &HeaderMap) -> Response<Body> {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let mut snapshot = SessionSnapshot::default();
    for session in state.registry.all() {
        if session.closed().is_some() {
            snapshot.lingering += 1;
        } else {
            snapshot.count(session.reader_transport());
        }
        let (events, bytes) = session.replay_depth();
        snapshot.replay_events += events;
        snapshot.replay_bytes += bytes;
    }
    let mut resp = Response::new(full(state.metrics.render(&snapshot, format)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    // The negotiated format depends on Accept: a cache must not mix them.
    h.insert(header::VARY, HeaderValue::from_static("accept"));
    resp
}

/// The routes and what each allows; never the upstream addresses.
pub(super) fn transports(state: &AppState) -> Response<Body> {
    let names = |ts: &[Transport]| ts.iter().map(|t| t.as_str()).collect::<Vec<_>>();
    let routes: Vec<_> = if state.config.routes.is_empty() {
        vec![json!({"path": "/", "transports": names(&Transport::ALL)})]
    } else {
        state
            .config
            .routes
            .iter()
            .map(|r| json!({"path": r.path, "transports": names(&r.transports)}))
            .collect()
    };
    json_response(StatusCode::OK, &json!({ "routes": routes }))
}

pub(super) fn client_file(file: &client::ClientFile, headers: &HeaderMap) -> Response<Body> {
    // gzip or brotli by Accept-Encoding, compressed once per process; each
    // coding has its own strong ETag.
    let accept = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let encoded = file.encoded(accept);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == encoded.etag || tag.trim() == "*")
        });
    let mut resp = if fresh {
        status_only(StatusCode::NOT_MODIFIED)
    } else {
        let mut r = Response::new(full(encoded.body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(file.content_type),
        );
        if let Some(coding) = encoded.content_encoding {
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
        }
        r
    };
    let h = resp.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(encoded.etag) {
        h.insert(header::ETAG, etag);
    }
    // On every answer, 304 included, so caches keep one copy per coding.
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    // Cacheable, but revalidated often enough that an upgrade reaches pages soon.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    // A page on another origin may load the module.
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}
