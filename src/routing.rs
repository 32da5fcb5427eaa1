//! Where a request goes: a bridge endpoint under the prefix, or pass-through;
//! and which configured route (and so which upstream) a WebSocket path maps
//! to. Pure functions, tested directly.

use http::uri::{PathAndQuery, Uri};

use crate::config::{Config, Route, Transport};

/// A bridge endpoint, named for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint<'a> {
    Open,
    Sse(&'a str),
    Stream(&'a str),
    Poll(&'a str),
    Send(&'a str),
    /// `DELETE {prefix}/sessions/{id}`.
    Session(&'a str),
    /// `POST {prefix}/channels`: open a multiplexed channel.
    Channels,
    /// `{prefix}/channels/{id}[/part]`.
    Channel(&'a str, ChannelPart),
    ClientJs,
    ClientMjs,
    Healthz,
    Readyz,
    Metrics,
    Transports,
    NotFound,
}

/// What of a channel an endpoint names: `{prefix}/channels/{id}/<part>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelPart {
    /// The channel itself (`DELETE` ends it).
    Root,
    Sessions,
    Attach,
    Detach,
    Sse,
    Stream,
    Poll,
    Send,
}

impl ChannelPart {
    pub fn name(self) -> &'static str {
        match self {
            ChannelPart::Root => "channel_close",
            ChannelPart::Sessions => "channel_open",
            ChannelPart::Attach => "channel_attach",
            ChannelPart::Detach => "channel_detach",
            ChannelPart::Sse => "channel_sse",
            ChannelPart::Stream => "channel_stream",
            ChannelPart::Poll => "channel_poll",
            ChannelPart::Send => "channel_send",
        }
    }
}

impl Endpoint<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::Channels => "channel",
            Endpoint::Channel(_, part) => part.name(),
            Endpoint::Open => "open",
            Endpoint::Sse(_) => "sse",
            Endpoint::Stream(_) => "stream",
            Endpoint::Poll(_) => "poll",
            Endpoint::Send(_) => "send",
            Endpoint::Session(_) => "close",
            Endpoint::ClientJs | Endpoint::ClientMjs => "client",
            Endpoint::Healthz => "healthz",
            Endpoint::Readyz => "readyz",
            Endpoint::Metrics => "metrics",
            Endpoint::Transports => "transports",
            Endpoint::NotFound => "not_found",
        }
    }

    /// Session endpoints are subject to `security.allowed_origins`.
    pub fn checks_origin(&self) -> bool {
        matches!(
            self,
            Endpoint::Open
                | Endpoint::Sse(_)
                | Endpoint::Stream(_)
                | Endpoint::Poll(_)
                | Endpoint::Send(_)
                | Endpoint::Session(_)
                | Endpoint::Channels
                | Endpoint::Channel(..)
        )
    }
}

/// Whether a path is under the prefix, the bridge's (what [`classify`]
/// answers `Some` for), without classifying it.
pub fn is_bridge_path(prefix: &str, path: &str) -> bool {
    // "/_bridgefoo" is the app's.
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether a path outside the prefix as written would be under it once
/// read loosely: in another case, with `//`, dot segments, `\\` or
/// percent-escapes (`/_BRIDGE/sessions/ID`, `//_bridge/...`,
/// `/app/../_bridge/...`). Such a path may carry a session id, and is never
/// passed through to the app (nor its id logged): it gets the bridge's 404.
pub fn is_disguised_bridge_path(prefix: &str, path: &str) -> bool {
    let decoded = percent_decode_lossy(path).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            seg => segments.push(seg),
        }
    }
    let normal = format!("/{}", segments.join("/")).to_ascii_lowercase();
    is_bridge_path(&prefix.to_ascii_lowercase(), &normal)
}

/// `%XX` decoded, bytes that are not UTF-8 replaced; for the check above only.
fn percent_decode_lossy(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `None` means the request is outside the prefix: pass it through.
pub fn classify<'a>(prefix: &str, path: &'a str) -> Option<Endpoint<'a>> {
    if !is_bridge_path(prefix, path) {
        return None;
    }
    let rest = &path[prefix.len()..];
    let endpoint = match rest {
        "/sessions" => Endpoint::Open,
        "/channels" => Endpoint::Channels,
        "/client.js" => Endpoint::ClientJs,
        "/client.mjs" => Endpoint::ClientMjs,
        "/healthz" => Endpoint::Healthz,
        "/readyz" => Endpoint::Readyz,
        "/metrics" => Endpoint::Metrics,
        "/transports" => Endpoint::Transports,
        _ if rest.starts_with("/channels/") => classify_channel(&rest["/channels/".len()..]),
        _ => match rest
            .strip_prefix("/sessions/")
            .map(|s| s.split_once('/').unwrap_or((s, "")))
        {
            Some(("", _)) => Endpoint::NotFound,
            Some((id, "")) => Endpoint::Session(id),
            Some((id, "sse")) => Endpoint::Sse(id),
            Some((id, "stream")) => Endpoint::Stream(id),
            Some((id, "poll")) => Endpoint::Poll(id),
            Some((id, "send")) => Endpoint::Send(id),
            _ => Endpoint::NotFound,
        },
    };
    Some(endpoint)
}

fn classify_channel(rest: &str) -> Endpoint<'_> {
    let (id, part) = rest.split_once('/').unwrap_or((rest, ""));
    let part = match part {
        "" => ChannelPart::Root,
        "sessions" => ChannelPart::Sessions,
        "attach" => ChannelPart::Attach,
        "detach" => ChannelPart::Detach,
        "sse" => ChannelPart::Sse,
        "stream" => ChannelPart::Stream,
        "poll" => ChannelPart::Poll,
        "send" => ChannelPart::Send,
        _ => return Endpoint::NotFound,
    };
    if id.is_empty() {
        return Endpoint::NotFound;
    }
    Endpoint::Channel(id, part)
}

/// The route for a WebSocket path: a route whose `path` equals it, else the
/// longest route path ending in `/` that prefixes it. Returns the route and
/// the remainder after the route path.
pub fn match_route<'r, 'p>(routes: &'r [Route], path: &'p str) -> Option<(&'r Route, &'p str)> {
    if let Some(exact) = routes.iter().find(|r| r.path == path) {
        return Some((exact, ""));
    }
    routes
        .iter()
        .filter(|r| r.path.ends_with('/') && path.starts_with(r.path.as_str()))
        .max_by_key(|r| r.path.len())
        .map(|r| (r, &path[r.path.len()..]))
}

/// Where a WebSocket path goes: the upstream URL and what it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub upstream: Uri,
    pub transports: Vec<Transport>,
    pub sse_event_field: Option<String>,
}

impl Target {
    pub fn allows(&self, t: Transport) -> bool {
        self.transports.contains(&t)
    }

    pub fn bridges(&self) -> bool {
        self.transports.iter().any(|t| *t != Transport::Websocket)
    }
}

/// Resolves a path and query (as the page gave them) to its upstream target.
/// With no routes, every path goes to `upstream.url` with every transport.
pub fn resolve(config: &Config, pq: &PathAndQuery) -> Option<Target> {
    let path = pq.path();
    let query = pq.query();
    if config.routes.is_empty() {
        let mut url = config.upstream_ws_base();
        url.push_str(path);
        push_query(&mut url, None, query);
        return Some(Target {
            upstream: url.parse().ok()?,
            transports: Transport::ALL.to_vec(),
            sse_event_field: None,
        });
    }
    let (route, remainder) = match_route(&config.routes, path)?;
    let base = &route.upstream;
    let mut url = format!("{}://{}", base.scheme_str()?, base.authority()?.as_str());
    let base_path = base.path();
    url.push_str(base_path);
    if !remainder.is_empty() {
        if !base_path.ends_with('/') {
            url.push('/');
        }
        url.push_str(remainder);
    }
    push_query(&mut url, base.query(), query);
    Some(Target {
        upstream: url.parse().ok()?,
        transports: route.transports.clone(),
        sse_event_field: route.sse_event_field.clone(),
    })
}

/// Appends the route's own query and the page's, verbatim, joined by `&`.
fn push_query(url: &mut String, route_query: Option<&str>, page_query: Option<&str>) {
    let parts: Vec<&str> = [route_query, page_query]
        .into_iter()
        .flatten()
        .filter(|q| !q.is_empty())
        .collect();
    if !parts.is_empty() {
        url.push('?');
        url.push_str(&parts.join("&"));
    }
}

/// Why the `url` of an open request was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct BadUrl(pub &'static str);

/// Takes the `url` a page would pass to `new WebSocket()` and keeps only its
/// path and query: an absolute URL never chooses the host.
pub fn page_path(url: &str) -> Result<PathAndQuery, BadUrl> {
    if url.is_empty() {
        return Err(BadUrl("url is empty"));
    }
    if url.contains('#') {
        return Err(BadUrl("url must not contain a fragment"));
    }
    let pq = if url.starts_with('/') {
        if url.starts_with("//") {
            return Err(BadUrl(
                "url must be a path or an absolute ws:, wss:, http: or https: URL",
            ));
        }
        url.parse::<PathAndQuery>()
            .map_err(|_| BadUrl("url is not a valid path and query"))?
    } else {
        let uri: Uri = url.parse().map_err(|_| BadUrl("url is not a valid URL"))?;
        match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("ws" | "wss" | "http" | "https") => {}
            _ => {
                return Err(BadUrl(
                    "url must be a path or an absolute ws:, wss:, http: or https: URL",
                ));
            }
        }
        if uri.host().is_none() {
            return Err(BadUrl("url has no host"));
        }
        match uri.path_and_query() {
            Some(pq) if pq.path().starts_with('/') => pq.clone(),
            _ => PathAndQuery::from_static("/"),
        }
    };
    if has_dot_segment(pq.path()) {
        return Err(BadUrl("url path must not contain '.' or '..' segments"));
    }
    Ok(pq)
}

/// `.`/`..` segments (also percent-encoded) could walk a prefix route out of
/// its upstream path, so they are refused rather than normalised. A
/// backslash and an encoded slash or backslash separate segments here too:
/// WHATWG URL parsers (browsers, Node's `URL`) read `\` as `/` in http and
/// ws URLs, and some servers decode `%2F` before resolving dot segments, so
/// `/bridge/..\admin` or `/bridge/..%2Fadmin` would reach `/admin` there.
fn has_dot_segment(path: &str) -> bool {
    let decoded = path
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .replace('\\', "/")
        .replace("%2f", "/")
        .replace("%5c", "/");
    decoded.split('/').any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(routes: &str) -> Config {
        Config::from_toml(&format!("[upstream]\nurl = \"http://app:3000\"\n{routes}")).unwrap()
    }

    #[test]
    fn classify_endpoints() {
        let p = "/_bridge";
        assert_eq!(classify(p, "/"), None);
        assert_eq!(classify(p, "/_bridgex"), None);
        assert_eq!(classify(p, "/_bridge/sessions"), Some(Endpoint::Open));
        assert_eq!(
            classify(p, "/_bridge/sessions/abc/sse"),
            Some(Endpoint::Sse("abc"))
        );
        assert_eq!(
            classify(p, "/_bridge/sessions/abc"),
            Some(Endpoint::Session("abc"))
        );
        assert_eq!(
            classify(p, "/_bridge/sessions/abc/nope"),
            Some(Endpoint::NotFound)
        );
        assert_eq!(
            classify(p, "/_bridge/sessions//sse"),
            Some(Endpoint::NotFound)
        );
        assert_eq!(classify(p, "/_bridge"), Some(Endpoint::NotFound));
        assert_eq!(classify(p, "/_bridge/zzz"), Some(Endpoint::NotFound));
        // Non-canonical forms under the prefix: no endpoint, never an id.
        for odd in [
            "/_bridge//sessions/abc/sse",
            "/_bridge/sessions/abc/sse/",
            "/_bridge/sessions/abc/./sse",
            "/_bridge/sessions/x/../abc/sse",
        ] {
            assert_eq!(classify(p, odd), Some(Endpoint::NotFound), "{odd}");
        }
    }

    #[test]
    fn disguised_bridge_paths_are_seen() {
        let p = "/_bridge";
        for disguised in [
            "/_BRIDGE/sessions/abc",
            "/_Bridge/sessions/abc/sse",
            "//_bridge/sessions/abc/sse",
            "/./_bridge/sessions/abc",
            "/app/../_bridge/sessions/abc",
            "/%5Fbridge/sessions/abc",
            "/%5fBRIDGE",
            "/app/..\\_bridge/sessions/abc",
            "/app/%2e%2e/_bridge/sessions/abc",
        ] {
            assert_eq!(classify(p, disguised), None, "{disguised}");
            assert!(is_disguised_bridge_path(p, disguised), "{disguised}");
        }
        for app in [
            "/",
            "/app",
            "/_bridgefoo",
            "/_BRIDGEFOO/x",
            "/app/_bridge",
            "/%zz",
            "/%",
        ] {
            assert!(!is_disguised_bridge_path(p, app), "{app}");
        }
    }

    #[test]
    fn exact_then_longest_prefix() {
        let c = config(
            r#"
[[routes]]
path = "/ws"
upstream = "ws://a/ws"
[[routes]]
path = "/bridge/"
upstream = "ws://b/app/"
[[routes]]
path = "/bridge/deep/"
upstream = "ws://c/deep"
"#,
        );
        let t = |p: &str| resolve(&c, &p.parse().unwrap()).map(|t| t.upstream.to_string());
        assert_eq!(t("/ws?x=1").as_deref(), Some("ws://a/ws?x=1"));
        assert_eq!(t("/ws/more"), None);
        assert_eq!(t("/bridge/sub/x?q").as_deref(), Some("ws://b/app/sub/x?q"));
        assert_eq!(t("/bridge/deep/y").as_deref(), Some("ws://c/deep/y"));
        assert_eq!(t("/other"), None);
    }

    #[test]
    fn no_routes_bridges_everything_to_upstream() {
        let c = config("");
        let t = resolve(&c, &"/chat?token=a%20b".parse().unwrap()).unwrap();
        assert_eq!(t.upstream.to_string(), "ws://app:3000/chat?token=a%20b");
        assert_eq!(t.transports, Transport::ALL.to_vec());
    }

    #[test]
    fn page_url_never_chooses_host() {
        assert_eq!(
            page_path("ws://evil.example:9/ws?a=1").unwrap().as_str(),
            "/ws?a=1"
        );
        assert_eq!(page_path("https://x/").unwrap().as_str(), "/");
        assert_eq!(page_path("/ws").unwrap().as_str(), "/ws");
        assert!(page_path("//evil/ws").is_err());
        assert!(page_path("ftp://x/ws").is_err());
        assert!(page_path("ws").is_err());
        assert!(page_path("").is_err());
        assert!(page_path("/ws#frag").is_err());
        assert!(page_path("/bridge/../admin").is_err());
        assert!(page_path("/bridge/%2E%2e/admin").is_err());
        assert!(page_path("/bridge/..\\admin").is_err());
        assert!(page_path("/bridge/..%2Fadmin").is_err());
        assert!(page_path("/bridge/%2e%2e%5cadmin").is_err());
        assert!(page_path("ws://h/bridge/x/..%2f..%2fadmin").is_err());
        assert_eq!(page_path("/ws/a%2Fb").unwrap().as_str(), "/ws/a%2Fb");
        assert_eq!(page_path("/ws/..x").unwrap().as_str(), "/ws/..x");
    }
}
