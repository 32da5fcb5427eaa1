//! Who is asking and through whom: the connection's peer, the client address
//! behind trusted proxies, and the one place that decides what an upstream
//! leg carries (Host, Cookie, X-Forwarded-*), for the bridge's handshake,
//! the pass-through and the splice alike.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Uri};

use crate::config::{HostPolicy, SecurityConfig};

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

/// The host the browser asked for: the request target's authority when it
/// has one (HTTP/2 sends it as `:authority`, with no `Host` field; an
/// absolute-form HTTP/1.1 target names it too, and then wins over `Host`,
/// RFC 9112 3.2.2), else the `Host` header.
pub fn original_host(uri: &Uri, headers: &HeaderMap) -> Option<HeaderValue> {
    uri.authority()
        .and_then(authority_value)
        .or_else(|| headers.get(header::HOST).cloned())
}

/// An authority as a `Host` value: host and port, never user information.
fn authority_value(authority: &Authority) -> Option<HeaderValue> {
    let text = authority.as_str();
    let host = text.rsplit_once('@').map_or(text, |(_, host)| host);
    if host.is_empty() {
        return None;
    }
    HeaderValue::from_str(host).ok()
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

/// Headers for the upstream leg of a pass-through request or a spliced
/// WebSocket: `headers` as the browser sent them, for a request to `uri`,
/// become what goes to `upstream`: hop-by-hop ones removed, then
/// [`add_forwarded`].
pub fn prepare_headers(
    headers: &mut HeaderMap,
    uri: &Uri,
    conn: ConnInfo,
    policy: HostPolicy,
    upstream: &Uri,
) {
    let browser_host = original_host(uri, headers);
    strip_hop_by_hop(headers);
    add_forwarded(headers, browser_host, conn, policy, upstream);
}

/// What every upstream leg carries, the bridged handshake as well as the
/// pass-through and the splice, so that the app sees one browser whichever
/// way it came: one `Cookie` field, `X-Forwarded-For` with the peer
/// appended, `X-Forwarded-Proto`, `X-Forwarded-Host` = the browser's host,
/// and `Host` as `upstream.host` says: the browser's host (the default; the
/// upstream's authority when the browser named none), or the authority of
/// `upstream`, the URL this leg goes to.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    browser_host: Option<HeaderValue>,
    conn: ConnInfo,
    policy: HostPolicy,
    upstream: &Uri,
) {
    join_cookies(headers);
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
    // A client-written X-Forwarded-Host never passes: it is ours or absent.
    match &browser_host {
        Some(host) => headers.insert("x-forwarded-host", host.clone()),
        None => headers.remove("x-forwarded-host"),
    };
    let upstream_host = || upstream.authority().and_then(authority_value);
    let host = match policy {
        HostPolicy::Browser => browser_host.or_else(upstream_host),
        HostPolicy::Upstream => upstream_host(),
    };
    match host {
        Some(host) => headers.insert(header::HOST, host),
        None => headers.remove(header::HOST),
    };
}

/// Makes the `Cookie` fields one. Over HTTP/2 a browser sends each cookie
/// as a field of its own, which must be joined with `"; "` before they go
/// to an HTTP/1.1 upstream (RFC 9113 8.2.3): apps read only one `Cookie`
/// header, and an XSRF check then misses its cookie.
pub fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    // Joined field values are still a field value; the check cannot fail.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnInfo {
        ConnInfo {
            peer: "192.0.2.7:5000".parse().unwrap(),
            tls: true,
        }
    }

    fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn cookie_fields_become_one() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        h.append(header::COOKIE, HeaderValue::from_static("d=4"));
        join_cookies(&mut h);
        assert_eq!(values(&h, "cookie"), ["a=1; b=2; c=3; d=4"]);

        let mut one = HeaderMap::new();
        one.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        join_cookies(&mut one);
        assert_eq!(values(&one, "cookie"), ["a=1; b=2"]);
    }

    #[test]
    fn the_authority_wins_over_host_and_loses_its_userinfo() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("other.example"));
        let h2: Uri = "https://user@app.example:8443/x".parse().unwrap();
        assert_eq!(original_host(&h2, &h).unwrap(), "app.example:8443");
        let origin_form: Uri = "/x".parse().unwrap();
        assert_eq!(original_host(&origin_form, &h).unwrap(), "other.example");
        assert!(original_host(&origin_form, &HeaderMap::new()).is_none());
    }

    #[test]
    fn host_follows_the_policy_and_forwarded_host_is_the_browsers() {
        let upstream: Uri = "ws://127.0.0.1:9000/ws".parse().unwrap();
        let browser = Some(HeaderValue::from_static("app.example"));
        for (policy, host) in [
            (HostPolicy::Browser, "app.example"),
            (HostPolicy::Upstream, "127.0.0.1:9000"),
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-host", HeaderValue::from_static("spoofed"));
            h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.1"));
            add_forwarded(&mut h, browser.clone(), conn(), policy, &upstream);
            assert_eq!(values(&h, "host"), [host]);
            assert_eq!(values(&h, "x-forwarded-host"), ["app.example"]);
            assert_eq!(values(&h, "x-forwarded-for"), ["203.0.113.1, 192.0.2.7"]);
            assert_eq!(values(&h, "x-forwarded-proto"), ["https"]);
        }
        // A browser that named no host: the upstream's, and no X-Forwarded-Host.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-host", HeaderValue::from_static("spoofed"));
        add_forwarded(&mut h, None, conn(), HostPolicy::Browser, &upstream);
        assert_eq!(values(&h, "host"), ["127.0.0.1:9000"]);
        assert!(h.get("x-forwarded-host").is_none());
    }
}
