//! The bridge endpoints under the prefix: open, the three readers, send,
//! close, and the operational ones (health, readiness, metrics, transports,
//! the client files). Each handler returns `Result<_, BridgeError>`; the
//! error becomes a response in one place, [`BridgeError::into_response`].

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::json;

use crate::client;
use crate::config::Transport;
use crate::error::{Body, BridgeError, RequestBody, full, json_response};
use crate::metrics::{CloseReason, SessionSnapshot};
use crate::passthrough::add_forwarded;
use crate::routing::{self, Endpoint};
use crate::server::{ConnInfo, Shared};
use crate::session::registry::new_id;
use crate::session::{Frame, SendOutcome, Session, SessionLimits};
use crate::transport::{self, poll, sse, stream};
use crate::upstream::{self, Timers};

/// Headers a cross-origin page may send on bridge requests.
const CORS_ALLOW_HEADERS: &str = "content-type, bridge-seq, last-event-id, authorization";
const CORS_EXPOSE_HEADERS: &str = "x-realtime-transport, retry-after";

pub async fn handle(
    req: Request<RequestBody>,
    conn: ConnInfo,
    shared: &Arc<Shared>,
) -> Response<Body> {
    let prefix = &shared.config.server.prefix;
    let path = req.uri().path().to_owned();
    let Some(endpoint) = routing::classify(prefix, &path) else {
        return BridgeError::NotFound.into_response();
    };
    let origin = req.headers().get(header::ORIGIN).cloned();
    let origin_text = origin.as_ref().and_then(|o| o.to_str().ok());
    if endpoint.checks_origin() && !shared.config.security.origin_allowed(origin_text) {
        return BridgeError::OriginForbidden.into_response();
    }
    let mut resp = if req.method() == Method::OPTIONS && endpoint.checks_origin() {
        preflight()
    } else {
        dispatch(endpoint, req, conn, shared)
            .await
            .unwrap_or_else(BridgeError::into_response)
    };
    let h = resp.headers_mut();
    if !matches!(endpoint, Endpoint::ClientJs | Endpoint::ClientMjs) {
        // Every bridge answer but the client files, errors included: the
        // one place these two headers are set.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let transport = match endpoint {
        Endpoint::Sse(_) => Some("sse"),
        Endpoint::Stream(_) => Some("stream"),
        Endpoint::Poll(_) => Some("poll"),
        Endpoint::Send(_) => Some("send"),
        _ => None,
    };
    if let Some(t) = transport {
        h.insert("x-realtime-transport", HeaderValue::from_static(t));
    }
    if endpoint.checks_origin()
        && let Some(origin) = origin
    {
        // Allowed (checked above): answer with the page's own origin so
        // credentials (cookies) may be sent.
        let h = resp.headers_mut();
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
    resp
}

fn preflight() -> Response<Body> {
    let mut resp = Response::new(crate::error::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
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

async fn dispatch(
    endpoint: Endpoint<'_>,
    req: Request<RequestBody>,
    conn: ConnInfo,
    shared: &Arc<Shared>,
) -> Result<Response<Body>, BridgeError> {
    let method = req.method().clone();
    let is_get = method == Method::GET || method == Method::HEAD;
    match endpoint {
        // Boxed: the upstream handshake is by far the largest state of any
        // handler, and every request's future would otherwise be its size.
        Endpoint::Open if method == Method::POST => Box::pin(open(req, conn, shared)).await,
        Endpoint::Open => Err(BridgeError::MethodNotAllowed("POST")),
        // GET only: a HEAD must not supersede the live reader.
        Endpoint::Sse(id) if method == Method::GET => read(id, Transport::Sse, &req, shared),
        Endpoint::Stream(id) if method == Method::GET => read(id, Transport::Stream, &req, shared),
        Endpoint::Poll(id) if method == Method::GET => read(id, Transport::Poll, &req, shared),
        Endpoint::Sse(_) | Endpoint::Stream(_) | Endpoint::Poll(_) => {
            Err(BridgeError::MethodNotAllowed("GET"))
        }
        Endpoint::Send(id) if method == Method::POST => {
            let id = id.to_owned();
            send(&id, req, shared).await
        }
        Endpoint::Send(_) => Err(BridgeError::MethodNotAllowed("POST")),
        Endpoint::Session(id) if method == Method::DELETE => close(id, &req, shared),
        Endpoint::Session(_) => Err(BridgeError::MethodNotAllowed("DELETE")),
        Endpoint::ClientJs if is_get => Ok(client_file(client::classic(), req.headers())),
        Endpoint::ClientMjs if is_get => Ok(client_file(client::module(), req.headers())),
        Endpoint::Healthz if is_get => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        Endpoint::Readyz if is_get => Ok(readyz(shared)),
        Endpoint::Metrics if is_get => Ok(metrics(shared)),
        Endpoint::Transports if is_get => Ok(transports(shared)),
        Endpoint::ClientJs
        | Endpoint::ClientMjs
        | Endpoint::Healthz
        | Endpoint::Readyz
        | Endpoint::Metrics
        | Endpoint::Transports => Err(BridgeError::MethodNotAllowed("GET, HEAD")),
        Endpoint::NotFound => Err(BridgeError::NotFound),
    }
}

// ---- open ---------------------------------------------------------------------

/// The body of `POST {prefix}/sessions`.
#[derive(Debug, Deserialize)]
pub struct OpenRequest {
    /// What the page passed to `new WebSocket()`; see [`routing::page_path`].
    pub url: String,
    /// Subprotocols offered, each a valid token, none repeated.
    #[serde(default)]
    pub protocols: Vec<String>,
}

/// Parses and checks an open request body (public for the property tests
/// in `tests/fuzz.rs`: it reads untrusted input).
pub fn parse_open(body: &[u8]) -> Result<OpenRequest, BridgeError> {
    let open: OpenRequest = serde_json::from_slice(body).map_err(|e| {
        BridgeError::bad_request(
            "bad_request",
            format!("body must be JSON {{\"url\": \"/path?query\", \"protocols\": [..]}}: {e}"),
        )
    })?;
    for (i, p) in open.protocols.iter().enumerate() {
        let token = !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        if !token {
            return Err(BridgeError::bad_request(
                "bad_protocol",
                format!("protocols[{i}] is not a valid subprotocol token"),
            ));
        }
        if open.protocols[..i].contains(p) {
            return Err(BridgeError::bad_request(
                "bad_protocol",
                format!("protocols[{i}] is repeated"),
            ));
        }
    }
    Ok(open)
}

async fn open(
    req: Request<RequestBody>,
    conn: ConnInfo,
    shared: &Arc<Shared>,
) -> Result<Response<Body>, BridgeError> {
    if shared.is_draining() {
        return Err(BridgeError::Unavailable {
            code: "draining",
            retry_after: std::time::Duration::from_secs(1),
        });
    }
    let config = &shared.config;
    let (parts, body) = req.into_parts();
    let body = read_body(body, &parts.headers, config.limits.max_open_body_bytes).await?;
    let open = parse_open(&body)?;
    let pq = routing::page_path(&open.url).map_err(|e| BridgeError::bad_request("bad_url", e.0))?;
    let target = routing::resolve(config, &pq)
        .filter(|t| t.bridges())
        .ok_or(BridgeError::NoRoute)?;

    let client = conn.client_ip(&parts.headers, shared);
    let slot = shared.registry.reserve(client)?;

    let headers = handshake_headers(&parts.headers, conn, shared);
    let connected = upstream::connect(
        &target.upstream,
        headers,
        &open.protocols,
        upstream::socket_config(config.limits.max_upstream_frame_bytes),
        Some(Arc::clone(&shared.upstream_tls)),
        config.upstream.connect_timeout,
    )
    .await
    .inspect_err(|e| {
        shared
            .metrics
            .handshake_failed(upstream::failure_status(e).as_u16());
        tracing::info!(error = %e, "upstream handshake failed");
    })?;

    let id = new_id();
    let (session, handle) = Session::new(
        id,
        connected.protocol,
        target,
        client,
        slot,
        SessionLimits::from_config(config),
        Arc::clone(&shared.metrics),
    );
    shared.registry.insert(Arc::clone(&session));
    shared.metrics.session_opened();
    tracing::debug!(session = session.log_id(), "session opened");
    let timers = Timers {
        ping: config.sessions.upstream_ping,
        idle: config.sessions.idle_timeout,
        linger: config.sessions.linger,
    };
    tokio::spawn(upstream::run(
        Arc::clone(&session),
        connected.socket,
        handle,
        timers,
        shared.upstreams.token(),
        Arc::clone(&shared.registry),
        Arc::clone(&shared.metrics),
    ));
    if shared.is_draining() {
        // Shutdown began during the handshake: the drain missed this one.
        session.close(1001, "proxy shutting down", CloseReason::Drain);
    }

    let base = format!("{}/sessions/{}", config.server.prefix, session.id);
    let mut links = serde_json::Map::new();
    for t in [Transport::Sse, Transport::Stream, Transport::Poll] {
        if session.target.allows(t) {
            links.insert(t.as_str().into(), json!(format!("{base}/{}", t.as_str())));
        }
    }
    links.insert("send".into(), json!(format!("{base}/send")));
    links.insert("close".into(), json!(base));
    let body = json!({
        "session": session.id,
        "protocol": session.protocol,
        "heartbeat_ms": u64::try_from(config.sessions.heartbeat.as_millis()).unwrap_or(u64::MAX),
        "links": links,
    });
    Ok(json_response(StatusCode::CREATED, &body))
}

/// The headers passed on the upstream handshake: the browser's identity
/// (Cookie, Authorization, Origin, User-Agent), X-Forwarded-*, and those
/// named in `upstream.forward_headers`.
fn handshake_headers(incoming: &HeaderMap, conn: ConnInfo, shared: &Shared) -> HeaderMap {
    let mut out = HeaderMap::new();
    let fixed = [
        header::COOKIE,
        header::AUTHORIZATION,
        header::ORIGIN,
        header::USER_AGENT,
    ];
    for name in fixed.iter().chain(&shared.config.upstream.forward_headers) {
        for value in incoming.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    if let Some(xff) = incoming.get("x-forwarded-for") {
        out.insert("x-forwarded-for", xff.clone());
    }
    let host = incoming.get(header::HOST).cloned();
    add_forwarded(&mut out, conn, host.as_ref());
    // The upstream handshake sets its own Host, for the upstream.
    out.remove(header::HOST);
    out
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
        Err(e) => Err(BridgeError::bad_request(
            "bad_body",
            format!("could not read the request body: {e}"),
        )),
    }
}

// ---- readers ------------------------------------------------------------------

fn lookup(id: &str, shared: &Shared) -> Result<Arc<Session>, BridgeError> {
    shared.registry.get(id).ok_or(BridgeError::UnknownSession)
}

fn query_pairs(req: &Request<RequestBody>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn read(
    id: &str,
    transport: Transport,
    req: &Request<RequestBody>,
    shared: &Shared,
) -> Result<Response<Body>, BridgeError> {
    let session = lookup(id, shared)?;
    if !session.target.allows(transport) {
        return Err(BridgeError::TransportNotAllowed);
    }
    let query = query_pairs(req);
    let cursor = transport::resume_cursor(&query, req.headers())?;
    let config = &shared.config;
    // Parse everything before attaching: a bad request must not supersede
    // the live reader.
    let wait = match query.iter().find(|(k, _)| k == "wait") {
        Some((_, w)) => poll::parse_wait(w, config.poll.max_wait)?,
        None => poll::DEFAULT_WAIT.min(config.poll.max_wait),
    };
    let reader = session.attach(transport, cursor)?;
    Ok(match transport {
        Transport::Sse => sse::respond(
            reader,
            sse::Settings {
                heartbeat: config.sessions.heartbeat,
                retry: config.sessions.client_retry,
                // `?plain=1`: the JavaScript client, whose EventSource
                // cannot listen for names it does not know, wants none.
                event_field: session
                    .target
                    .sse_event_field
                    .clone()
                    .filter(|_| !flag(&query, "plain", "1")),
                // `?heartbeat=event`: heartbeats also as a named event, which
                // EventSource (unlike comments) lets a watchdog see.
                named_heartbeat: flag(&query, "heartbeat", "event"),
            },
        ),
        Transport::Stream => stream::respond(reader, config.sessions.heartbeat),
        Transport::Poll | Transport::Websocket => {
            poll::respond(reader, wait, config.poll.max_events, config.poll.max_bytes)
        }
    })
}

fn flag(query: &[(String, String)], key: &str, value: &str) -> bool {
    query.iter().any(|(k, v)| k == key && v == value)
}

// ---- send and close -------------------------------------------------------------

/// Parses `Bridge-Seq`: a positive decimal integer.
pub fn parse_seq(value: &HeaderValue) -> Result<u64, BridgeError> {
    let bad = || BridgeError::bad_request("bad_seq", "Bridge-Seq must be a positive integer");
    let text = value.to_str().map_err(|_| bad())?;
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

async fn send(
    id: &str,
    req: Request<RequestBody>,
    shared: &Shared,
) -> Result<Response<Body>, BridgeError> {
    let session = lookup(id, shared)?;
    if let Some(close) = session.closed() {
        return Err(BridgeError::SessionClosed {
            code: close.code,
            reason: close.reason,
        });
    }
    let (parts, body) = req.into_parts();
    let seq = parts.headers.get("bridge-seq").map(parse_seq).transpose()?;
    let body = read_body(body, &parts.headers, shared.config.limits.max_frame_bytes).await?;
    let binary = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/octet-stream"));
    let frame = if binary {
        Frame::Binary(body)
    } else {
        if std::str::from_utf8(&body).is_err() {
            return Err(BridgeError::bad_request(
                "not_utf8",
                "a text frame must be UTF-8 (send binary as application/octet-stream)",
            ));
        }
        Frame::Text(body)
    };
    Ok(match session.send(frame, seq).await? {
        SendOutcome::Written => no_content(),
        SendOutcome::Duplicate => json_response(StatusCode::OK, &json!({"duplicate": true})),
    })
}

/// Parses `?code=&reason=` of a close: a code a page may send (1000 or
/// 3000–4999) and a reason of at most 123 UTF-8 bytes.
fn parse_close(query: &[(String, String)]) -> Result<(u16, String), BridgeError> {
    let code = match query.iter().find(|(k, _)| k == "code") {
        None => 1000,
        Some((_, v)) => match v.parse::<u16>() {
            // What a page may send, plus 1001 "going away" for a page that
            // unloads (what a browser's own WebSocket sends then).
            Ok(c) if c == 1000 || c == 1001 || (3000..=4999).contains(&c) => c,
            _ => {
                return Err(BridgeError::bad_request(
                    "bad_close_code",
                    "code must be 1000, 1001 or 3000-4999",
                ));
            }
        },
    };
    let reason = query
        .iter()
        .find(|(k, _)| k == "reason")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if reason.len() > 123 {
        return Err(BridgeError::bad_request(
            "bad_close_reason",
            "reason must be at most 123 bytes",
        ));
    }
    Ok((code, reason))
}

fn close(
    id: &str,
    req: &Request<RequestBody>,
    shared: &Shared,
) -> Result<Response<Body>, BridgeError> {
    let session = lookup(id, shared)?;
    let (code, reason) = parse_close(&query_pairs(req))?;
    // Closing a closed (lingering) session is a no-op: DELETE is idempotent.
    session.close(code, &reason, CloseReason::Client);
    Ok(no_content())
}

fn no_content() -> Response<Body> {
    let mut resp = Response::new(crate::error::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

// ---- operational ----------------------------------------------------------------

/// Health, readiness or metrics by path suffix, for the admin listener.
pub fn handle_ops(path: &str, shared: &Shared) -> Response<Body> {
    if path.ends_with("/readyz") {
        readyz(shared)
    } else if path.ends_with("/metrics") {
        metrics(shared)
    } else {
        json_response(StatusCode::OK, &json!({"status": "ok"}))
    }
}

fn readyz(shared: &Shared) -> Response<Body> {
    if shared.is_draining() {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "draining"}),
        )
    } else {
        json_response(StatusCode::OK, &json!({"status": "ready"}))
    }
}

fn metrics(shared: &Shared) -> Response<Body> {
    let mut snapshot = SessionSnapshot::default();
    for session in shared.registry.all() {
        if session.closed().is_some() {
            snapshot.lingering += 1;
        } else {
            snapshot.count(session.reader_transport());
        }
        let (events, bytes) = session.replay_depth();
        snapshot.replay_events += events;
        snapshot.replay_bytes += bytes;
    }
    let mut resp = Response::new(full(shared.metrics.render(&snapshot)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// The routes and what each allows; never the upstream addresses.
fn transports(shared: &Shared) -> Response<Body> {
    let names = |ts: &[Transport]| ts.iter().map(|t| t.as_str()).collect::<Vec<_>>();
    let routes: Vec<_> = if shared.config.routes.is_empty() {
        vec![json!({"path": "/", "transports": names(&Transport::ALL)})]
    } else {
        shared
            .config
            .routes
            .iter()
            .map(|r| json!({"path": r.path, "transports": names(&r.transports)}))
            .collect()
    };
    json_response(StatusCode::OK, &json!({ "routes": routes }))
}

fn client_file(file: &client::ClientFile, headers: &HeaderMap) -> Response<Body> {
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == file.etag || tag.trim() == "*")
        });
    let mut resp = if fresh {
        let mut r = Response::new(crate::error::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(full(file.body.clone()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(file.content_type),
        );
        r
    };
    let h = resp.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&file.etag) {
        h.insert(header::ETAG, etag);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_grammar() {
        assert_eq!(parse_seq(&HeaderValue::from_static("1")).unwrap(), 1);
        for bad in ["0", "-1", "+1", "01", "", "x", "99999999999999999999999"] {
            assert!(
                parse_seq(&HeaderValue::from_static(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn open_body_is_checked() {
        assert!(parse_open(br#"{"url":"/ws"}"#).is_ok());
        assert!(parse_open(br#"{"url":"/ws","protocols":["chat.v1"]}"#).is_ok());
        assert!(parse_open(b"").is_err());
        assert!(parse_open(br#"{"protocols":[]}"#).is_err());
        assert!(parse_open(br#"{"url":5}"#).is_err());
        assert!(parse_open(br#"{"url":"/ws","protocols":["a b"]}"#).is_err());
        assert!(parse_open(br#"{"url":"/ws","protocols":["a","a"]}"#).is_err());
    }

    #[test]
    fn close_parameters() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(parse_close(&q(&[])).unwrap(), (1000, String::new()));
        assert_eq!(
            parse_close(&q(&[("code", "4001"), ("reason", "bye")])).unwrap(),
            (4001, "bye".into())
        );
        assert!(parse_close(&q(&[("code", "1006")])).is_err());
        assert!(parse_close(&q(&[("code", "x")])).is_err());
        assert!(parse_close(&q(&[("reason", &"x".repeat(124))])).is_err());
    }
}
