//! Who is asking and through whom: the connection's peer, the client address
//! behind trusted proxies, and the forwarding headers both the bridge's
//! upstream handshake and the pass-through write.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Uri;

use crate::config::SecurityConfig;

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

/// What a handler knows of the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

impl ConnInfo {
    /// The browser's address: the peer, or, when the peer is a trusted proxy,
    /// the nearest untrusted address in `X-Forwarded-For`.
    ///
    /// The list is walked from the right (the hops our own proxies appended)
    /// and the walk stops at the first entry that is not an address: entries
    /// left of it were written by someone we cannot vouch for, so skipping
    /// it would let a client pick its own address (e.g. behind a proxy that
    /// appends `ip:port`, were ports not understood). Then the nearest
    /// trusted hop stands for the client, which can only over-count.
    pub fn client_ip(&self, headers: &HeaderMap, security: &SecurityConfig) -> IpAddr {
        let mut client = self.peer.ip();
        if !security.is_trusted_proxy(client) {
            return client;
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .flat_map(|v| v.split(','))
            .collect();
        for entry in entries.into_iter().rev() {
            let Some(ip) = parse_forwarded_ip(entry.trim()) else {
                break;
            };
            client = ip;
            if !security.is_trusted_proxy(ip) {
                break;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, or an address with a port
/// (`203.0.113.9:4711`, `[2001:db8::1]:443`) as some proxies write it.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The Host the browser asked for (HTTP/2 carries it in the authority).
pub fn original_host(uri: &Uri, headers: &HeaderMap) -> Option<HeaderValue> {
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

/// Whether a request asks to upgrade to a WebSocket.
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
