//! The WebSocket splice: an upgrade on a route that allows `websocket` is
//! forwarded to the route's upstream and, after its 101, copied byte for
//! byte both ways. (The origin check is `http`'s, before this.)

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{Body, empty};
use crate::config::Transport;
use crate::error::ProxyError;
use crate::forwarded::{ConnInfo, original_host, prepare_headers, strip_hop_by_hop};
use crate::routing;
use crate::state::AppState;

/// Splices a WebSocket upgrade to the route's upstream when the route
/// allows `websocket`; otherwise 403.
pub(super) async fn splice(
    mut req: Request<Incoming>,
    conn: ConnInfo,
    state: &AppState,
) -> Result<Response<Body>, ProxyError> {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let target = match routing::resolve(&state.config, &pq) {
        Some(t) if t.allows(Transport::Websocket) => t,
        _ => return Err(ProxyError::WebsocketNotAllowed),
    };
    let upstream = target.upstream;
    let secure = upstream.scheme_str() == Some("wss");
    let host = upstream
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let port = upstream.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let connect = TcpStream::connect((host.as_str(), port));
    let tcp = match tokio::time::timeout(state.config.upstream.connect_timeout, connect).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "websocket upstream unreachable");
            return Err(ProxyError::Unreachable);
        }
        Err(_) => return Err(ProxyError::Timeout),
    };
    let _ = tcp.set_nodelay(true);

    // Forward the handshake as the browser sent it (hop-by-hop headers
    // stripped, then the upgrade restored), to the upstream's path.
    let mut headers = req.headers().clone();
    let host_header = original_host(req.uri(), &headers);
    prepare_headers(&mut headers, conn, host_header.as_ref());
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let upstream_pq = upstream
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let mut up_req = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    *up_req.uri_mut() = upstream_pq.parse().map_err(|_| ProxyError::BadRequest)?;
    *up_req.headers_mut() = headers;

    let result = if secure {
        let server_name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| ProxyError::Unreachable)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&state.upstream_tls));
        match tls.connect(server_name, tcp).await {
            Ok(stream) => handshake(TokioIo::new(stream), up_req).await,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upstream TLS failed");
                return Err(ProxyError::Unreachable);
            }
        }
    } else {
        handshake(TokioIo::new(tcp), up_req).await
    };
    let mut up_resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upstream handshake failed");
            return Err(ProxyError::Unreachable);
        }
    };
    if up_resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The upstream refused: the browser sees its answer as is.
        let (mut parts, body) = up_resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(
            parts,
            body.map_err(Into::into).boxed_unsync(),
        ));
    }
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = up_resp.headers().clone();
    let upstream_upgrade = hyper::upgrade::on(&mut up_resp);
    let browser_upgrade = hyper::upgrade::on(&mut req);
    let open = state.metrics.splice_opened();
    tokio::spawn(async move {
        // Counted from the 101 until both legs are done.
        let _open = open;
        let (browser, upstream) = match tokio::try_join!(browser_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
        };
        let mut browser = TokioIo::new(browser);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut browser, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(up, down, "websocket splice ended"),
            Err(e) => tracing::debug!(error = %e, "websocket splice ended"),
        }
    });
    Ok(resp)
}

/// Sends the upgrade request on a fresh connection and returns the answer;
/// the connection keeps running (with upgrades) in its own task.
async fn handshake<I>(
    io: I,
    req: Request<http_body_util::Empty<bytes::Bytes>>,
) -> hyper::Result<Response<Incoming>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "websocket upstream connection ended");
        }
    });
    sender.send_request(req).await
}
