//! TLS and HTTP/2: `[server.tls]` served with rustls, HTTP/1.1 and HTTP/2 by
//! ALPN, h2c with prior knowledge, many SSE sessions on one HTTP/2
//! connection, certificate reload on SIGHUP (the real binary), and `wss://`
//! upstreams verified against `upstream.ca_file` with no way to turn
//! verification off.
//!
//! Certificates are made at test time with rcgen: a throwaway CA and leaves
//! for `localhost` and `127.0.0.1`.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use support::{Backend, Ev, PATIENCE, Proxy, ProxyProcess, Seen};
use tokio::net::{TcpListener, TcpStream};

// ---- test PKI -------------------------------------------------------------------

/// A throwaway certificate authority.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate and its key, as PEM files would hold them.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        Pki {
            ca: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    fn leaf(&self, cn: &str) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A rustls client that trusts this CA only, offering `alpn`.
    fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A reqwest client that trusts this CA only and reports the peer's
    /// certificate (`tls_info`).
    fn reqwest(
        &self,
        tune: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    ) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca_pem().as_bytes()).unwrap();
        tune(
            reqwest::Client::builder()
                .no_proxy()
                .tls_certs_only([ca])
                .tls_info(true),
        )
        .build()
        .unwrap()
    }
}

impl Leaf {
    /// Writes `cert.pem` and `key.pem` into `dir` (replacing them).
    fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

fn tls_section(cert: &Path, key: &Path) -> String {
    format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// The DER of the certificate the server presented on this response's
/// connection.
fn peer_cert(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info with a peer certificate")
        .to_vec()
}

/// An in-process proxy with TLS in front of `backend`.
struct TlsProxy {
    proxy: Proxy,
    pki: Pki,
    leaf: Leaf,
    _dir: tempfile::TempDir,
}

impl TlsProxy {
    async fn start(backend: &Backend, extra: &str) -> TlsProxy {
        let pki = Pki::new("wsbridge test CA");
        let leaf = pki.leaf("proxy");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = leaf.write(dir.path());
        let proxy = Proxy::start(backend, &format!("{}{extra}", tls_section(&cert, &key))).await;
        TlsProxy {
            proxy,
            pki,
            leaf,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.proxy.addr.port())
    }
}

// ---- one HTTP/2 connection, driven directly ---------------------------------------

/// One HTTP/2 connection: every request made through it shares it, so a
/// test that uses only this has used one connection by construction.
struct H2 {
    send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    base: String,
}

impl H2 {
    /// h2c with prior knowledge on plain TCP.
    async fn plain(addr: SocketAddr) -> H2 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        H2::handshake(TokioIo::new(tcp), format!("http://{addr}")).await
    }

    /// HTTP/2 over TLS, chosen by ALPN (asserted).
    async fn tls(addr: SocketAddr, pki: &Pki) -> H2 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(pki.client_config(&[b"h2", b"http/1.1"]));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "the server picks h2 by ALPN"
        );
        H2::handshake(
            TokioIo::new(tls),
            format!("https://localhost:{}", addr.port()),
        )
        .await
    }

    async fn handshake<T>(io: TokioIo<T>, base: String) -> H2
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        H2 { send, base }
    }

    async fn request(&self, method: Method, path: &str, body: &str) -> Response<Incoming> {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let mut send = self.send.clone();
        let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
            .await
            .expect("HTTP/2 response in time")
            .unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        resp
    }

    async fn json(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        let resp = self.request(method, path, body).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

type SseEvents = std::pin::Pin<Box<dyn futures_util::Stream<Item = Ev> + Send>>;

/// The data events of an SSE response read off an HTTP/2 stream.
fn sse_events(resp: Response<Incoming>) -> SseEvents {
    use eventsource_stream::Eventsource;
    assert_eq!(resp.status(), StatusCode::OK);
    Box::pin(
        BodyDataStream::new(resp.into_body())
            .eventsource()
            .filter_map(|e| async move { e.ok().and_then(|e| Ev::from_sse(&e)) }),
    )
}

async fn next_event(events: &mut SseEvents) -> Ev {
    tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("SSE event in time")
        .expect("SSE stream still open")
}

/// Opens `n` sessions and an SSE reader for each, all on `h2`, keeps every
/// reader open at once, then checks each gets its own echo. Over HTTP/1.1 a
/// browser would stall after six such readers.
async fn many_sse_sessions_on_one_connection(h2: &H2, n: usize) {
    let mut sessions = Vec::new();
    for _ in 0..n {
        let (status, body) = h2
            .json(
                Method::POST,
                "/_bridge/sessions",
                &json!({"url": "/echo"}).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["session"].as_str().unwrap().to_owned();
        let sse = h2
            .request(Method::GET, &format!("/_bridge/sessions/{id}/sse"), "")
            .await;
        sessions.push((id, sse_events(sse)));
    }
    for (i, (id, _)) in sessions.iter().enumerate() {
        let resp = h2
            .request(
                Method::POST,
                &format!("/_bridge/sessions/{id}/send"),
                &format!("hello {i}"),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }
    for (i, (_, events)) in sessions.iter_mut().enumerate() {
        assert_eq!(next_event(events).await, Ev::Text(1, format!("hello {i}")));
    }
}

// ---- the tests ------------------------------------------------------------------

#[tokio::test]
async fn https_serves_http1_and_http2_by_alpn() {
    let backend = Backend::start().await;
    let proxy = TlsProxy::start(&backend, "").await;

    // Offering both, the client gets HTTP/2.
    let h2 = proxy.pki.reqwest(|b| b);
    let r = h2.get(proxy.url("/_bridge/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), Version::HTTP_2);
    assert_eq!(peer_cert(&r), proxy.leaf.der);

    // Offering only http/1.1, it gets HTTP/1.1; bridge and pass-through both.
    let h1 = proxy.pki.reqwest(|b| b.http1_only());
    let r = h1.get(proxy.url("/_bridge/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), Version::HTTP_11);
    let r = h1.get(proxy.url("/http/echo")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let echo: Value = r.json().await.unwrap();
    let forwarded_proto = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "x-forwarded-proto")
        .map(|h| h[1].clone());
    assert_eq!(forwarded_proto, Some(json!("https")));

    // A whole session over HTTPS: open, send, read over SSE.
    let (open, body) = {
        let r = h2
            .post(proxy.url("/_bridge/sessions"))
            .json(&json!({"url": "/echo"}))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(open, StatusCode::CREATED, "{body}");
    let id = body["session"].as_str().unwrap();
    let r = h2
        .post(proxy.url(&format!("/_bridge/sessions/{id}/send")))
        .body("over tls")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let sse = h2
        .get(proxy.url(&format!("/_bridge/sessions/{id}/sse")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.version(), Version::HTTP_2);
    let mut sse = support::SseClient::new(sse);
    assert_eq!(sse.take(1).await, [Ev::Text(1, "over tls".into())]);

    // A client that does not trust the CA gets no connection at all.
    let stranger = Pki::new("another CA").reqwest(|b| b);
    assert!(
        stranger
            .get(proxy.url("/_bridge/healthz"))
            .send()
            .await
            .is_err()
    );
    // Neither does plain HTTP on the TLS port.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = plain
        .get(proxy.proxy.url("/_bridge/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(r.is_err(), "plain HTTP answered on the TLS port: {r:?}");
}

#[tokio::test]
async fn many_sse_sessions_share_one_tls_http2_connection() {
    let backend = Backend::start().await;
    let proxy = TlsProxy::start(&backend, "").await;
    let h2 = H2::tls(proxy.proxy.addr, &proxy.pki).await;
    many_sse_sessions_on_one_connection(&h2, 8).await;
}

#[tokio::test]
async fn h2c_with_prior_knowledge_on_plain_tcp() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;

    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client
        .get(proxy.url("/_bridge/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), Version::HTTP_2);
    // Pass-through over h2c too.
    let r = client.get(proxy.url("/http/echo")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), Version::HTTP_2);
    // And HTTP/1.1 on the same port.
    let r = proxy
        .http
        .get(proxy.url("/_bridge/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), Version::HTTP_11);

    let h2 = H2::plain(proxy.addr).await;
    many_sse_sessions_on_one_connection(&h2, 8).await;
}

/// Polls `pred` on the process's stderr until it holds.
async fn wait_log(proxy: &ProxyProcess, what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !pred(&proxy.stderr()) {
        assert!(
            Instant::now() < deadline,
            "never logged {what}:\n{}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_sessions() {
    let backend = Backend::start().await;
    let pki = Pki::new("wsbridge test CA");
    let (a, b) = (pki.leaf("cert A"), pki.leaf("cert B"));
    assert_ne!(a.der, b.der);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = a.write(dir.path());
    let proxy = ProxyProcess::start(&backend, &tls_section(&cert, &key)).await;
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", proxy.addr.port());

    // A session with a live SSE reader, on a connection that saw cert A.
    let old = pki.reqwest(|b| b);
    let r = old
        .post(url("/_bridge/sessions"))
        .json(&json!({"url": "/echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(peer_cert(&r), a.der);
    let id = r.json::<Value>().await.unwrap()["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let sse = old
        .get(url(&format!("/_bridge/sessions/{id}/sse")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    let mut sse = support::SseClient::new(sse);
    let send = |client: &reqwest::Client, text: &str| {
        client
            .post(url(&format!("/_bridge/sessions/{id}/send")))
            .body(text.to_owned())
            .send()
    };
    assert_eq!(send(&old, "one").await.unwrap().status(), 204);
    assert_eq!(sse.take(1).await, [Ev::Text(1, "one".into())]);

    // Replace the files with cert B and signal.
    b.write(dir.path());
    proxy.signal("HUP");
    wait_log(&proxy, "the reload", |log| {
        log.contains("TLS certificate reloaded")
    })
    .await;

    // A new connection sees cert B.
    let new = pki.reqwest(|b| b);
    let r = new.get(url("/_bridge/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(peer_cert(&r), b.der, "a new connection still gets cert A");

    // The session and its reader carry on, on the old connection (still A)
    // and from the new one alike.
    let r = send(&old, "two").await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(peer_cert(&r), a.der, "the open connection was replaced");
    assert_eq!(sse.take(1).await, [Ev::Text(2, "two".into())]);
    assert_eq!(send(&new, "three").await.unwrap().status(), 204);
    assert_eq!(sse.take(1).await, [Ev::Text(3, "three".into())]);

    // A broken file on reload keeps cert B and says so.
    std::fs::write(&key, "not a key").unwrap();
    proxy.signal("HUP");
    wait_log(&proxy, "the failed reload", |log| {
        log.contains("TLS reload failed")
    })
    .await;
    let r = pki
        .reqwest(|b| b)
        .get(url("/_bridge/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(peer_cert(&r), b.der);
    assert_eq!(send(&old, "four").await.unwrap().status(), 204);
    assert_eq!(sse.take(1).await, [Ev::Text(4, "four".into())]);
}

// ---- wss:// upstreams -------------------------------------------------------------

/// A WebSocket echo backend behind TLS with `leaf`'s certificate; counts
/// the TLS handshakes it completed.
async fn tls_ws_backend(leaf: &Leaf) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&handshakes);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counter) = (acceptor.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        let _ = ws.send(msg).await;
                    }
                }
            });
        }
    });
    (addr, handshakes)
}

#[tokio::test]
async fn wss_upstreams_are_verified_against_the_ca_file() {
    let upstream_pki = Pki::new("upstream CA");
    let (addr, handshakes) = tls_ws_backend(&upstream_pki.leaf("upstream")).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, upstream_pki.ca_pem()).unwrap();
    // `https` upstream: bridged paths go to `wss://` on the same host.
    let config = |extra: &str| {
        format!(
            "[upstream]\nurl = \"https://127.0.0.1:{}\"\nconnect_timeout = \"2s\"\n{extra}",
            addr.port()
        )
    };

    // Without the CA file the self-signed upstream is refused: 502.
    let proxy = Proxy::start_toml(&config("")).await;
    let (status, body, _) = proxy.open_raw(json!({"url": "/echo"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"], "upstream_unreachable");
    assert_eq!(
        handshakes.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the proxy completed a TLS handshake with an unverified upstream"
    );

    // With it, the session opens and frames cross both ways.
    let proxy = Proxy::start_toml(&config(&format!("ca_file = \"{}\"\n", ca_file.display()))).await;
    let s = proxy.open("/echo").await;
    assert_eq!(s.send_text("secure").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.poll_events(0, 1).await, [Ev::Text(1, "secure".into())]);
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 1);

    // A CA file that is not the upstream's CA does not help.
    let other = tempfile::tempdir().unwrap();
    let wrong = other.path().join("ca.pem");
    std::fs::write(&wrong, Pki::new("unrelated CA").ca_pem()).unwrap();
    let proxy = Proxy::start_toml(&config(&format!("ca_file = \"{}\"\n", wrong.display()))).await;
    let (status, _, _) = proxy.open_raw(json!({"url": "/echo"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[test]
fn no_configuration_key_turns_upstream_verification_off() {
    // Every spelling an operator might try is an unknown key, so the proxy
    // refuses to start rather than run with verification off (or silently
    // on while the operator believes it off).
    let keys = [
        "insecure",
        "tls_insecure",
        "skip_verify",
        "tls_skip_verify",
        "verify",
        "tls_verify",
        "verify_certificates",
        "danger_accept_invalid_certs",
        "accept_invalid_certs",
        "insecure_skip_verify",
    ];
    for key in keys {
        for (value, section) in [
            ("false", "upstream"),
            ("true", "security"),
            ("true", "server"),
        ] {
            let text = if section == "upstream" {
                format!("[upstream]\nurl = \"https://app.example\"\n{key} = {value}\n")
            } else {
                format!("[upstream]\nurl = \"https://app.example\"\n[{section}]\n{key} = {value}\n")
            };
            let err = wsbridge::Config::from_toml(&text)
                .expect_err(&format!("{section}.{key} was accepted"));
            assert!(err.to_string().contains(key), "{err}");
        }
    }
    // The effective configuration names no such switch either.
    let effective = wsbridge::Config::from_toml("[upstream]\nurl = \"https://app.example\"\n")
        .unwrap()
        .to_toml();
    for word in ["insecure", "verify", "danger", "skip"] {
        assert!(!effective.contains(word), "{word} in\n{effective}");
    }
}

#[tokio::test]
async fn a_wss_route_is_verified_by_host_name_beside_a_plain_route() {
    let upstream_pki = Pki::new("upstream CA");
    let (addr, handshakes) = tls_ws_backend(&upstream_pki.leaf("upstream")).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, upstream_pki.ca_pem()).unwrap();
    let backend = Backend::start().await;
    // `extra` continues the `[upstream]` table, so `ca_file` lands there.
    let proxy = Proxy::start(
        &backend,
        &format!(
            "ca_file = \"{}\"\n[[routes]]\npath = \"/secure\"\nupstream = \"wss://localhost:{}/echo\"\n[[routes]]\npath = \"/plain\"\nupstream = \"ws://{{backend}}/echo\"\n",
            ca_file.display(),
            addr.port()
        ),
    )
    .await;
    let secure = proxy.open("/secure").await;
    assert_eq!(secure.send_text("s").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(secure.poll_events(0, 1).await, [Ev::Text(1, "s".into())]);
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 1);
    let plain = proxy.open("/plain").await;
    assert_eq!(plain.send_text("p").await.status(), StatusCode::NO_CONTENT);
    backend
        .wait_for("p", |s| *s == Seen::Text("p".into()))
        .await;
}
