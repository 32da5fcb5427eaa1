//! The operational endpoints (health, readiness, transports, metrics, the
//! client files) and who may use the session endpoints (origins, CORS).

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Backend, Proxy};

#[tokio::test]
async fn health_readiness_and_transports() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[[routes]]\npath = \"/ws\"\nupstream = \"ws://{backend}/echo\"\ntransports = [\"sse\", \"poll\"]\n",
    )
    .await;
    for path in ["/_bridge/healthz", "/_bridge/readyz"] {
        let r = proxy.http.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
    let r = proxy
        .http
        .get(proxy.url("/_bridge/transports"))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"routes": [{"path": "/ws", "transports": ["sse", "poll"]}]})
    );
    assert!(
        !body.to_string().contains(&backend.addr.to_string()),
        "never upstream addresses"
    );
    let r = proxy
        .http
        .post(proxy.url("/_bridge/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn metrics_expose_the_contract_names() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let s = proxy.open("/echo").await;
    s.send_text("hello").await;
    s.poll_events(0, 1).await;
    let _ = proxy.open_raw(json!({"url": "/auth"})).await;
    let _sse = s.sse(Some(1)).await;
    let r = proxy
        .http
        .get(proxy.url("/_bridge/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    for needle in [
        "wsbridge_sessions_active{transport=\"sse\"} 1",
        "wsbridge_sessions_opened_total 1",
        "wsbridge_sessions_closed_total{reason=\"client\"} 0",
        "wsbridge_events_total{direction=\"down\"} 1",
        "wsbridge_events_total{direction=\"up\"} 1",
        "wsbridge_bytes_total{direction=\"up\"} 5",
        "wsbridge_upstream_handshake_failures_total{status=\"401\"} 1",
        "wsbridge_backpressure_pauses_total 0",
        "wsbridge_http_requests_total{endpoint=\"open\",status=\"201\"} 1",
        "wsbridge_http_request_duration_seconds_bucket",
        "wsbridge_replay_events",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[tokio::test]
async fn client_files_are_cacheable_with_an_etag() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    for (path, needle) in [
        ("/_bridge/client.js", "WsBridge"),
        ("/_bridge/client.mjs", "export"),
    ] {
        let r = proxy.http.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .contains("javascript")
        );
        let cache = r.headers()["cache-control"].to_str().unwrap().to_owned();
        assert!(!cache.contains("no-store"), "{cache}");
        let etag = r.headers()["etag"].clone();
        assert!(r.text().await.unwrap().contains(needle), "{path}");
        let again = proxy
            .http
            .get(proxy.url(path))
            .header("if-none-match", etag.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()["etag"], etag);
    }
}

#[tokio::test]
async fn allowed_origins_guard_session_endpoints_only() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[security]\nallowed_origins = [\"https://app.example\"]\n",
    )
    .await;
    let open = |origin: Option<&'static str>| {
        let mut req = proxy
            .http
            .post(proxy.url("/_bridge/sessions"))
            .json(&json!({"url": "/echo"}));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let r = open(Some("https://evil.example")).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "origin_not_allowed"
    );
    let r = open(None).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "no Origin (curl) is allowed"
    );
    let r = open(Some("https://app.example")).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    let id = r.json::<Value>().await.unwrap()["session"]
        .as_str()
        .unwrap()
        .to_owned();
    // The readers and send too.
    for (method, suffix) in [
        ("GET", "/poll?wait=0"),
        ("GET", "/sse"),
        ("GET", "/stream"),
        ("POST", "/send"),
        ("DELETE", ""),
    ] {
        let url = proxy.url(&format!("/_bridge/sessions/{id}{suffix}"));
        let r = proxy
            .http
            .request(method.parse().unwrap(), url)
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} {suffix}");
    }
    // Health, metrics, transports, the client: not checked.
    for path in [
        "/_bridge/healthz",
        "/_bridge/metrics",
        "/_bridge/transports",
        "/_bridge/client.js",
    ] {
        let r = proxy
            .http
            .get(proxy.url(path))
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    // Plain pass-through is the app's business.
    let r = proxy
        .http
        .get(proxy.url("/http/echo"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // CORS preflight from the allowed origin.
    let r = proxy
        .http
        .request(reqwest::Method::OPTIONS, proxy.url("/_bridge/sessions"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        r.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("bridge-seq")
    );
}
