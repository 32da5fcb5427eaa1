//! The plain reverse proxy: every request outside the prefix goes to
//! `upstream.url` unchanged (less hop-by-hop headers, plus X-Forwarded-*),
//! bodies streamed both ways; and the WebSocket splice for upgrades on routes
//! that allow `websocket`.

use std::error::Error as _;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpStream;

use crate::config::{Config, Transport};
use crate::error::{Body, json_response};
use crate::routing;
use crate::server::{ConnInfo, Shared};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Headers that belong to one hop and are never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub struct PassThrough {
    /// Pooled keep-alive connections to the upstream.
    client: Client<Connector, Incoming>,
    /// `scheme://authority` of `upstream.url`.
    base: String,
    response_timeout: std::time::Duration,
}

impl PassThrough {
    pub fn new(config: &Config, tls: Arc<rustls::ClientConfig>) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.upstream.connect_timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let url = &config.upstream.url;
        let base = format!(
            "{}://{}",
            url.scheme_str().unwrap_or("http"),
            url.authority().map_or("", |a| a.as_str())
        );
        PassThrough {
            client,
            base,
            response_timeout: config.upstream.response_timeout,
        }
    }

    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        shared: &Shared,
    ) -> Response<Body> {
        if is_websocket_upgrade(req.headers()) {
            return splice(req, conn, shared).await;
        }
        let (mut parts, body) = req.into_parts();
        let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let uri: Uri = match format!("{}{pq}", self.base).parse() {
            Ok(uri) => uri,
            Err(_) => return error(StatusCode::BAD_REQUEST, "bad_request"),
        };
        let host = original_host(&parts.uri, &parts.headers);
        prepare_headers(&mut parts.headers, conn, host.as_ref());
        if shared.config.client.inject {
            keep_decodable_encodings(&mut parts.headers);
        }
        parts.uri = uri;
        // The upstream leg is HTTP/1.1 whatever the browser spoke.
        parts.version = Version::HTTP_11;
        let upstream_req = Request::from_parts(parts, body);
        let resp =
            match tokio::time::timeout(self.response_timeout, self.client.request(upstream_req))
                .await
            {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => return upstream_failure(&e),
                Err(_) => {
                    tracing::debug!("upstream response timed out");
                    return error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
                }
            };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let resp = Response::from_parts(
            parts,
            body.boxed_unsync().map_err(Into::into).boxed_unsync(),
        );
        if shared.config.client.inject {
            return crate::inject::rewrite(resp, &shared.config.server.prefix);
        }
        resp
    }
}

fn error(status: StatusCode, code: &str) -> Response<Body> {
    json_response(status, &json!({"error": code}))
}

/// Connect timeouts are 504, everything else (refused, reset, TLS) 502.
fn upstream_failure(e: &hyper_util::client::legacy::Error) -> Response<Body> {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            tracing::debug!(error = %e, "upstream connect timed out");
            return error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
        }
        source = s.source();
    }
    tracing::debug!(error = %e, "upstream unreachable");
    error(StatusCode::BAD_GATEWAY, "upstream_unreachable")
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

pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name: HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// The Host the browser asked for (HTTP/2 carries it in the authority).
fn original_host(uri: &Uri, headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get(header::HOST).cloned().or_else(|| {
        uri.authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// Removes hop-by-hop headers, including those the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Headers for the upstream leg: hop-by-hop ones removed, Host kept as the
/// browser sent it, `X-Forwarded-For/-Proto/-Host` added.
pub fn prepare_headers(headers: &mut HeaderMap, conn: ConnInfo, host: Option<&HeaderValue>) {
    strip_hop_by_hop(headers);
    add_forwarded(headers, conn, host);
}

/// Appends the peer to `X-Forwarded-For` and sets `-Proto` and `-Host`.
pub fn add_forwarded(headers: &mut HeaderMap, conn: ConnInfo, host: Option<&HeaderValue>) {
    let peer = conn.peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {peer}"),
        _ => peer,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    let proto = if conn.tls { "https" } else { "http" };
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert("x-forwarded-host", host.clone());
        headers.insert(header::HOST, host.clone());
    }
}

/// Splices a WebSocket upgrade to the route's upstream, byte for byte, when
/// the route allows `websocket`; otherwise 403.
async fn splice(mut req: Request<Incoming>, conn: ConnInfo, shared: &Shared) -> Response<Body> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if !shared.config.security.origin_allowed(origin) {
        return error(StatusCode::FORBIDDEN, "origin_not_allowed");
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let target = match routing::resolve(&shared.config, &pq) {
        Some(t) if t.allows(Transport::Websocket) => t,
        _ => return error(StatusCode::FORBIDDEN, "websocket_not_allowed"),
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
    let tcp = match tokio::time::timeout(shared.config.upstream.connect_timeout, connect).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "websocket upstream unreachable");
            return error(StatusCode::BAD_GATEWAY, "upstream_unreachable");
        }
        Err(_) => return error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
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
    *up_req.uri_mut() = match upstream_pq.parse() {
        Ok(u) => u,
        Err(_) => return error(StatusCode::BAD_REQUEST, "bad_request"),
    };
    *up_req.headers_mut() = headers;

    let result = if secure {
        let server_name = match rustls::pki_types::ServerName::try_from(host.clone()) {
            Ok(n) => n,
            Err(_) => return error(StatusCode::BAD_GATEWAY, "upstream_unreachable"),
        };
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&shared.upstream_tls));
        match tls.connect(server_name, tcp).await {
            Ok(stream) => handshake(TokioIo::new(stream), up_req).await,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upstream TLS failed");
                return error(StatusCode::BAD_GATEWAY, "upstream_unreachable");
            }
        }
    } else {
        handshake(TokioIo::new(tcp), up_req).await
    };
    let mut up_resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upstream handshake failed");
            return error(StatusCode::BAD_GATEWAY, "upstream_unreachable");
        }
    };
    if up_resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The upstream refused: the browser sees its answer as is.
        let (mut parts, body) = up_resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        return Response::from_parts(parts, body.map_err(Into::into).boxed_unsync());
    }
    let mut resp = Response::new(crate::error::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = up_resp.headers().clone();
    let upstream_upgrade = hyper::upgrade::on(&mut up_resp);
    let browser_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
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
    resp
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
