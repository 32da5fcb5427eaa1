//! What the app sees of the browser's request, on every path to it: the
//! bridged upstream handshake (`POST {prefix}/sessions`), the pass-through
//! and the WebSocket splice carry the same `Host` (the browser's, or with
//! `upstream.host = "upstream"` the upstream's authority), one `Cookie`
//! field however many the browser sent (HTTP/2 sends one per cookie), and
//! `X-Forwarded-Host` = the browser's host (over HTTP/2: its `:authority`),
//! over HTTP/1.1, h2c with prior knowledge and TLS with ALPN h2.
//!
//! The browser's host is `app.test:<proxy port>` (reqwest resolves the name
//! to the proxy), so it differs from the upstream's `127.0.0.1:<port>` in
//! name as well as in port.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use support::PATIENCE;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The cookies a browser holds for the page; over HTTP/2 they go as two
/// `cookie` fields, and the test sends them as two over HTTP/1.1 as well.
const COOKIES: [&str; 2] = ["_xsrf=2|abc", "session=s3cr3t; theme=dark"];
const JOINED: &str = "_xsrf=2|abc; session=s3cr3t; theme=dark";
const ORIGIN: &str = "http://app.test";

// ---- a backend that records every request head --------------------------------------

/// One request as the backend received it: how it came (`ws` for an upgrade,
/// `http` otherwise), its path, and every header line in order.
#[derive(Clone, Debug)]
struct Head {
    kind: &'static str,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// What the assertions compare: the fields this file is about.
    fn leg(&self) -> Leg {
        Leg {
            host: self.values("host"),
            cookie: self.values("cookie"),
            forwarded_host: self.values("x-forwarded-host"),
            origin: self.values("origin"),
        }
    }
}

#[derive(Debug, PartialEq)]
struct Leg {
    host: Vec<String>,
    cookie: Vec<String>,
    forwarded_host: Vec<String>,
    origin: Vec<String>,
}

/// What every leg must carry: `host` as the policy says, one joined
/// Cookie, the browser's host as X-Forwarded-Host, its Origin.
fn expected(host: &str, browser: &str) -> Leg {
    Leg {
        host: vec![host.to_owned()],
        cookie: vec![JOINED.to_owned()],
        forwarded_host: vec![browser.to_owned()],
        origin: vec![ORIGIN.to_owned()],
    }
}

#[derive(Default)]
struct Heads {
    seen: Mutex<Vec<Head>>,
    changed: Notify,
}

/// A real HTTP/1.1 backend on loopback: WebSocket upgrades get a 101 and a
/// socket that is read until it closes, other requests a 200.
struct Recorder {
    addr: SocketAddr,
    heads: Arc<Heads>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Heads::default());
        let shared = Arc::clone(&heads);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let heads = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let heads = Arc::clone(&heads);
                        async move { Ok::<_, std::convert::Infallible>(answer(req, &heads)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Recorder { addr, heads }
    }

    /// The first request of `kind` on `path`, waiting for it to arrive.
    async fn head(&self, kind: &str, path: &str) -> Head {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let changed = self.heads.changed.notified();
            if let Some(h) = self
                .heads
                .seen
                .lock()
                .unwrap()
                .iter()
                .find(|h| h.kind == kind && h.path == path)
            {
                return h.clone();
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "the backend never saw a {kind} request for {path}; saw {:?}",
                    self.heads.seen.lock().unwrap()
                );
            }
        }
    }
}

fn answer(mut req: Request<Incoming>, heads: &Heads) -> Response<Full<Bytes>> {
    let key = req.headers().get("sec-websocket-key").cloned();
    let head = Head {
        kind: if key.is_some() { "ws" } else { "http" },
        path: req.uri().path().to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect(),
    };
    heads.seen.lock().unwrap().push(head);
    heads.changed.notify_waiters();
    let Some(key) = key else {
        return Response::new(Full::from("ok"));
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while ws.next().await.is_some_and(|m| m.is_ok()) {}
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-accept", accept)
        .body(Full::default())
        .unwrap()
}

// ---- the proxy and the browser's side ---------------------------------------------

/// The proxy in front of `backend`: `/ws` bridges and splices to its `/ws`,
/// everything else passes through; `extra` is more TOML (keys of
/// `[upstream]` first, then tables).
async fn proxy(backend: &Recorder, extra: &str) -> support::Proxy {
    support::Proxy::start_toml(&format!(
        "[upstream]\nurl = \"http://{b}\"\nconnect_timeout = \"2s\"\n{extra}\n\
         [[routes]]\npath = \"/ws\"\nupstream = \"ws://{b}/ws\"\n\
         transports = [\"websocket\", \"sse\", \"poll\"]\n",
        b = backend.addr
    ))
    .await
}

/// A TLS section with a self-signed certificate for `app.test`, written
/// into `dir`.
fn tls_section(dir: &std::path::Path) -> String {
    let key = rcgen::generate_simple_self_signed(vec!["app.test".to_owned()]).unwrap();
    let (cert, pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&pem, key.signing_key.serialize_pem()).unwrap();
    format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        pem.display()
    )
}

/// How the browser reaches the proxy.
#[derive(Clone, Copy, Debug)]
enum Wire {
    Http1,
    H2c,
    /// TLS, HTTP/2 chosen by ALPN.
    H2Tls,
}

/// A browser-like client that knows `app.test` as the proxy's address.
fn client(wire: Wire, proxy: SocketAddr) -> reqwest::Client {
    let b = reqwest::Client::builder()
        .no_proxy()
        .resolve("app.test", proxy);
    match wire {
        Wire::Http1 => b.http1_only(),
        Wire::H2c => b.http2_prior_knowledge(),
        Wire::H2Tls => b.tls_danger_accept_invalid_certs(true),
    }
    .build()
    .unwrap()
}

fn base(wire: Wire, proxy: SocketAddr) -> String {
    let scheme = if matches!(wire, Wire::H2Tls) {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://app.test:{}", proxy.port())
}

fn with_browser_headers(r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    r.header("origin", ORIGIN)
        .header("cookie", COOKIES[0])
        .header("cookie", COOKIES[1])
}

fn expected_version(wire: Wire) -> Version {
    match wire {
        Wire::Http1 => Version::HTTP_11,
        Wire::H2c | Wire::H2Tls => Version::HTTP_2,
    }
}

/// Opens a bridged session on `/ws` over `wire`; the backend then has the
/// handshake the proxy made.
async fn bridged_open(wire: Wire, proxy: SocketAddr) {
    let resp = with_browser_headers(
        client(wire, proxy).post(format!("{}/_bridge/sessions", base(wire, proxy))),
    )
    .json(&json!({"url": "/ws"}))
    .send()
    .await
    .unwrap();
    assert_eq!(
        resp.version(),
        expected_version(wire),
        "the wire under test"
    );
    let status = resp.status();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        resp.text().await.unwrap()
    );
}

/// A plain request passed through to the backend's `/page` over `wire`.
async fn pass_through(wire: Wire, proxy: SocketAddr) {
    let resp = with_browser_headers(client(wire, proxy).get(format!("{}/page", base(wire, proxy))))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.version(),
        expected_version(wire),
        "the wire under test"
    );
    assert_eq!(resp.status(), StatusCode::OK);
}

/// A WebSocket on `/ws` spliced through (browsers upgrade over HTTP/1.1),
/// with the browser's headers; returns once the proxy answered 101.
async fn splice(proxy: SocketAddr) {
    let mut req = format!("ws://app.test:{}/ws", proxy.port())
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert("origin", ORIGIN.parse().unwrap());
    for c in COOKIES {
        h.append("cookie", c.parse().unwrap());
    }
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (_ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
}

/// The ways a browser's request reaches the app.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// `POST /_bridge/sessions`: the proxy makes the upstream handshake.
    Bridged,
    /// A plain request passed through.
    PassThrough,
    /// A WebSocket upgrade spliced through (over HTTP/1.1, as browsers do).
    Splice,
}

/// What the app saw of one request on `path` over `wire`, through a fresh
/// proxy with `extra` config; and the browser's host and the upstream's
/// authority, to compare with.
async fn leg(wire: Wire, path: Path, extra: &str) -> (Leg, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Recorder::start().await;
    let extra = match wire {
        Wire::H2Tls => format!("{extra}\n{}", tls_section(dir.path())),
        Wire::Http1 | Wire::H2c => extra.to_owned(),
    };
    let proxy = proxy(&backend, &extra).await;
    let head = match path {
        Path::Bridged => {
            bridged_open(wire, proxy.addr).await;
            backend.head("ws", "/ws").await
        }
        Path::PassThrough => {
            pass_through(wire, proxy.addr).await;
            backend.head("http", "/page").await
        }
        Path::Splice => {
            assert!(matches!(wire, Wire::Http1), "browsers splice over HTTP/1.1");
            splice(proxy.addr).await;
            backend.head("ws", "/ws").await
        }
    };
    if matches!(wire, Wire::H2Tls) {
        assert_eq!(head.values("x-forwarded-proto"), ["https"], "{path:?}");
    }
    let browser = format!("app.test:{}", proxy.addr.port());
    (head.leg(), browser, backend.addr.to_string())
}

// ---- the browser's host (the default) -----------------------------------------------

#[tokio::test]
async fn over_http1_every_path_carries_the_browsers_host_and_one_cookie() {
    // The splice's handshake is the reference the bridged one must match.
    for path in [Path::Splice, Path::Bridged, Path::PassThrough] {
        let (leg, browser, _) = leg(Wire::Http1, path, "").await;
        assert_eq!(leg, expected(&browser, &browser), "{path:?}");
    }
}

#[tokio::test]
async fn over_h2c_the_authority_is_the_host_and_cookie_fields_are_joined() {
    for path in [Path::Bridged, Path::PassThrough] {
        let (leg, browser, _) = leg(Wire::H2c, path, "").await;
        assert_eq!(leg, expected(&browser, &browser), "{path:?}");
    }
}

#[tokio::test]
async fn over_tls_h2_the_authority_is_the_host_and_cookie_fields_are_joined() {
    for path in [Path::Bridged, Path::PassThrough] {
        let (leg, browser, _) = leg(Wire::H2Tls, path, "").await;
        assert_eq!(leg, expected(&browser, &browser), "{path:?}");
    }
}

// ---- upstream.host = "upstream" -----------------------------------------------------

#[tokio::test]
async fn host_upstream_sends_the_upstreams_authority_on_every_path() {
    let cases = [
        (Wire::Http1, Path::Splice),
        (Wire::Http1, Path::Bridged),
        (Wire::Http1, Path::PassThrough),
        (Wire::H2c, Path::Bridged),
        (Wire::H2c, Path::PassThrough),
        (Wire::H2Tls, Path::Bridged),
        (Wire::H2Tls, Path::PassThrough),
    ];
    for (wire, path) in cases {
        let (leg, browser, upstream) = leg(wire, path, "host = \"upstream\"").await;
        assert_eq!(leg, expected(&upstream, &browser), "{wire:?} {path:?}");
    }
}
