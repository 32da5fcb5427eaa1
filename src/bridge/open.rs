//! `POST {prefix}/sessions`: check the body, reserve a slot, run the
//! upstream handshake, start the session's upstream task, answer its links.

use std::collections::HashSet;
use std::sync::Arc;

use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::read_body;
use crate::body::{Body, RequestBody, json_response};
use crate::config::Transport;
use crate::error::BridgeError;
use crate::forwarded::{ConnInfo, add_forwarded, original_host};
use crate::metrics::CloseReason;
use crate::routing;
use crate::session::registry::new_id;
use crate::session::{Session, SessionLimits};
use crate::state::AppState;
use crate::upstream::{self, Timers};

/// The body of `POST {prefix}/sessions`.
#[derive(Debug, Deserialize)]
pub struct OpenRequest {
    /// What the page passed to `new WebSocket()`; see `routing::page_path`.
    pub url: String,
    /// Subprotocols offered, each a valid token, none repeated.
    #[serde(default)]
    pub protocols: Vec<String>,
}

/// The most subprotocols an open may offer: browsers offer a handful, and
/// each costs a check here and bytes in the upstream handshake.
pub const MAX_PROTOCOLS: usize = 64;

/// Parses and checks an open request body (public for the property tests
/// in `tests/fuzz.rs`: it reads untrusted input). Linear in the body: the
/// subprotocols are bounded in count and checked for repeats with a set.
pub fn parse_open(body: &[u8]) -> Result<OpenRequest, BridgeError> {
    let open: OpenRequest = serde_json::from_slice(body).map_err(|e| {
        BridgeError::bad_request(
            "bad_request",
            format!("body must be JSON {{\"url\": \"/path?query\", \"protocols\": [..]}}: {e}"),
        )
    })?;
    if open.protocols.len() > MAX_PROTOCOLS {
        return Err(BridgeError::bad_request(
            "bad_protocol",
            format!("at most {MAX_PROTOCOLS} protocols may be offered"),
        ));
    }
    let mut seen = HashSet::with_capacity(open.protocols.len());
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
        if !seen.insert(p.as_str()) {
            return Err(BridgeError::bad_request(
                "bad_protocol",
                format!("protocols[{i}] is repeated"),
            ));
        }
    }
    Ok(open)
}

pub(super) async fn open(
    req: Request<RequestBody>,
    conn: ConnInfo,
    state: &Arc<AppState>,
) -> Result<Response<Body>, BridgeError> {
    let session = open_session(req, conn, state).await?;
    Ok(answer(&session, state))
}

/// Opens a session from an open request: everything `POST {prefix}/sessions`
/// does but the answer (a channel's open attaches the session first).
pub(super) async fn open_session(
    req: Request<RequestBody>,
    conn: ConnInfo,
    state: &Arc<AppState>,
) -> Result<Arc<Session>, BridgeError> {
    if state.is_draining() {
        return Err(BridgeError::Unavailable {
            code: "draining",
            retry_after: std::time::Duration::from_secs(1),
        });
    }
    let config = &state.config;
    let (parts, body) = req.into_parts();
    let body = read_body(body, &parts.headers, config.limits.max_open_body_bytes).await?;
    let open = parse_open(&body)?;
    let pq = routing::page_path(&open.url).map_err(|e| BridgeError::bad_request("bad_url", e.0))?;
    let target = routing::resolve(config, &pq)
        .filter(|t| t.bridges())
        .ok_or(BridgeError::NoRoute)?;

    let client = conn.client_ip(&parts.headers, &config.security);
    let slot = state.registry.reserve(client)?;

    let headers = handshake_headers(&parts, &target.upstream, conn, state);
    let connected = upstream::connect(
        &target.upstream,
        headers,
        &open.protocols,
        config.limits.max_upstream_frame_bytes,
        Some(Arc::clone(&state.upstream_tls)),
        config.upstream.connect_timeout,
    )
    .await
    .inspect_err(|e| {
        state
            .metrics
            .handshake_failed(upstream::failure_status(e).as_u16());
        tracing::warn!(error = %e, "upstream handshake failed");
    })?;

    // In a cluster the id names this replica as its owner.
    let id = state.cluster.as_ref().map_or_else(new_id, |c| c.new_id());
    let (session, handle) = Session::new(
        id,
        connected.protocol,
        target,
        client,
        slot,
        SessionLimits::from_config(config),
        Arc::clone(&state.metrics),
    );
    session.set_span(
        state
            .telemetry
            .session_span(&parts.headers, session.log_id()),
    );
    state.registry.insert(Arc::clone(&session));
    state.metrics.session_opened();
    tracing::debug!(session = session.log_id(), "session opened");
    let timers = Timers {
        ping: config.sessions.upstream_ping,
        idle: config.sessions.idle_timeout,
        linger: config.sessions.linger,
    };
    tokio::spawn(upstream::run(
        Arc::clone(&session),
        connected.halves,
        handle,
        timers,
        state.upstreams.token(),
        Arc::clone(&state.registry),
        Arc::clone(&state.metrics),
    ));
    if state.is_draining() {
        // Shutdown began during the handshake: the drain missed this one.
        session.close(1001, "proxy shutting down", CloseReason::Drain);
    }
    Ok(session)
}

/// The `201` answer of an open: the session's id, protocol and links.
pub(super) fn answer(session: &Session, state: &AppState) -> Response<Body> {
    let config = &state.config;
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
    json_response(StatusCode::CREATED, &body)
}

/// The headers passed on the upstream handshake: the browser's identity
/// (Cookie, Authorization, Origin, User-Agent), the request id and trace
/// context, those named in
/// `upstream.forward_headers`, then what every upstream leg carries
/// ([`add_forwarded`]: Host as `upstream.host` says, so the handshake names
/// the host a spliced WebSocket would, one Cookie, X-Forwarded-*).
///
/// Headers that make the handshake itself (Host, Connection, Upgrade,
/// Sec-WebSocket-*) are the proxy's to write: a `forward_headers` entry
/// naming one is not copied.
fn handshake_headers(
    parts: &http::request::Parts,
    upstream: &http::Uri,
    conn: ConnInfo,
    state: &AppState,
) -> HeaderMap {
    let incoming = &parts.headers;
    let mut out = HeaderMap::new();
    let fixed = [
        header::COOKIE,
        header::AUTHORIZATION,
        header::ORIGIN,
        header::USER_AGENT,
    ];
    let own = |name: &header::HeaderName| {
        *name == header::HOST
            || *name == header::CONNECTION
            || *name == header::UPGRADE
            || name.as_str().starts_with("sec-websocket-")
    };
    for name in fixed
        .iter()
        .chain(&state.config.upstream.forward_headers)
        .filter(|n| !own(n))
    {
        for value in incoming.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    if let Some(xff) = incoming.get("x-forwarded-for") {
        out.insert("x-forwarded-for", xff.clone());
    }
    crate::trace::propagate(incoming, &mut out);
    let browser_host = original_host(&parts.uri, incoming);
    add_forwarded(
        &mut out,
        browser_host,
        conn,
        state.config.upstream.host,
        upstream,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn offering(protocols: impl Iterator<Item = String>) -> Vec<u8> {
        let list: Vec<String> = protocols.collect();
        serde_json::to_vec(&json!({"url": "/ws", "protocols": list})).unwrap()
    }

    fn code(e: BridgeError) -> &'static str {
        match e {
            BridgeError::BadRequest { code, .. } => code,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn protocols_are_bounded_in_count_and_checked_for_repeats_with_a_set() {
        let max = offering((0..MAX_PROTOCOLS).map(|i| format!("p{i}")));
        assert_eq!(parse_open(&max).unwrap().protocols.len(), MAX_PROTOCOLS);
        let over = offering((0..=MAX_PROTOCOLS).map(|i| format!("p{i}")));
        assert_eq!(code(parse_open(&over).unwrap_err()), "bad_protocol");
        // 9,000 (the quadratic scan cost 93 ms a request): refused by count.
        let many = offering((0..9000).map(|i| format!("p{i}")));
        assert_eq!(code(parse_open(&many).unwrap_err()), "bad_protocol");
        // A repeat far from its first: still found.
        let mut list: Vec<String> = (0..MAX_PROTOCOLS - 1).map(|i| format!("p{i}")).collect();
        list.push("p0".into());
        let err = parse_open(&offering(list.into_iter())).unwrap_err();
        assert!(
            format!("{err:?}").contains("protocols[63] is repeated"),
            "{err:?}"
        );
    }
}
