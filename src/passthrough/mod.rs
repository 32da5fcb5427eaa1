//! The plain reverse proxy: every request outside the prefix goes to
//! `upstream.url` unchanged (less hop-by-hop headers, plus X-Forwarded-*),
//! bodies streamed both ways. WebSocket upgrades go to [`splice`].

mod splice;

use std::error::Error as _;

use crate::body::{Body, BodyError, Inbound};
use crate::error::ProxyError;
use crate::forwarded::{ConnInfo, is_websocket_upgrade, prepare_headers, strip_hop_by_hop};
use crate::state::AppState;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Uri;
use http::{Request, Response, Version};
use http_body_util::BodyExt;

/// A request outside the prefix: spliced when it is a WebSocket upgrade,
/// proxied otherwise. The upstream's own answers, errors included, go to
/// the browser as they are; `Err` is for what failed before one came.
pub(crate) async fn handle(
    req: Request<Inbound>,
    conn: ConnInfo,
    state: &AppState,
) -> Result<Response<Body>, ProxyError> {
    if is_websocket_upgrade(req.headers()) {
        // An upgrade's body is empty: the splice takes the request as hyper
        // gave it.
        // (Only hyper serves upgrades: the front end's requests have none.)
        let (parts, body) = req.into_parts();
        let body = body.into_incoming().ok_or(ProxyError::BadRequest)?;
        return splice::splice(Request::from_parts(parts, body), conn, state).await;
    }
    proxy(req, conn, state).await
}

async fn proxy(
    req: Request<Inbound>,
    conn: ConnInfo,
    state: &AppState,
) -> Result<Response<Body>, ProxyError> {
    let config = &state.config;
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let base = &config.upstream.url;
    let uri: Uri = format!(
        "{}://{}{pq}",
        base.scheme_str().unwrap_or("http"),
        base.authority().map_or("", |a| a.as_str())
    )
    .parse()
    .map_err(|_| ProxyError::BadRequest)?;
    prepare_headers(
        &mut parts.headers,
        &parts.uri,
        conn,
        config.upstream.host,
        base,
    );
    if config.client.inject {
        keep_decodable_encodings(&mut parts.headers);
    }
    parts.uri = uri;
    // The upstream leg is HTTP/1.1 whatever the browser spoke.
    parts.version = Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, body);
    let resp = match tokio::time::timeout(
        config.upstream.response_timeout,
        state.upstream_http.request(upstream_req),
    )
    .await
    {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return Err(upstream_failure(&e)),
        Err(_) => {
            tracing::debug!("upstream response timed out");
            return Err(ProxyError::Timeout);
        }
    };
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let resp = Response::from_parts(
        parts,
        body.boxed_unsync().map_err(Into::into).boxed_unsync(),
    );
    if config.client.inject {
        return Ok(crate::inject::rewrite(resp, &config.server.prefix));
    }
    Ok(resp)
}

/// A request body that failed is the client's doing: 408 when it was too
/// slow, 400 when its framing broke. Connect timeouts are 504, everything
/// else (refused, reset, TLS) 502.
fn upstream_failure(e: &hyper_util::client::legacy::Error) -> ProxyError {
    match BodyError::find(e) {
        Some(BodyError::Timeout) => return ProxyError::BodyTimeout,
        Some(BodyError::Read(read)) => {
            tracing::debug!(error = %read, "request body unreadable: upstream request abandoned");
            return ProxyError::BadBody;
        }
        None => {}
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            tracing::debug!(error = %e, "upstream connect timed out");
            return ProxyError::Timeout;
        }
        source = s.source();
    }
    tracing::debug!(error = %e, "upstream unreachable");
    ProxyError::Unreachable
}

/// With injection on, the page must come back in an encoding the injector
/// can decode: zstd (which browsers offer) is taken out of `Accept-Encoding`.
fn keep_decodable_encodings(headers: &mut HeaderMap) {
    let Some(offered) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let kept: Vec<&str> = offered
        .split(',')
        .map(str::trim)
        .filter(|e| {
            !e.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("zstd")
        })
        .collect();
    match HeaderValue::from_str(&kept.join(", ")) {
        Ok(v) if !kept.is_empty() => {
            headers.insert(header::ACCEPT_ENCODING, v);
        }
        _ => {
            headers.remove(header::ACCEPT_ENCODING);
        }
    }
}
