//! Opening a session: the upstream handshake, what is forwarded, route
//! matching, and every error status of the contract.

mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Backend, Proxy, Seen};

#[tokio::test]
async fn open_answers_201_with_links_after_the_handshake() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let (status, body, headers) = proxy.open_raw(json!({"url": "/echo?token=abc"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let id = body["session"].as_str().unwrap();
    assert!(id.len() >= 22, "128 bits at least: {id}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(body["protocol"], "");
    assert_eq!(body["heartbeat_ms"], 15000);
    let base = format!("/_bridge/sessions/{id}");
    assert_eq!(body["links"]["sse"], format!("{base}/sse"));
    assert_eq!(body["links"]["stream"], format!("{base}/stream"));
    assert_eq!(body["links"]["poll"], format!("{base}/poll"));
    assert_eq!(body["links"]["send"], format!("{base}/send"));
    assert_eq!(body["links"]["close"], base);
    // The handshake happened before the answer.
    let Seen::Handshake { uri, .. } = backend
        .wait_for("handshake", |s| matches!(s, Seen::Handshake { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(uri, "/echo?token=abc");
}

#[tokio::test]
async fn session_ids_are_distinct() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let a = proxy.open("/echo").await;
    let b = proxy.open("/echo").await;
    assert_ne!(a.id, b.id);
}

#[tokio::test]
async fn identity_headers_and_query_are_forwarded_verbatim() {
    let backend = Backend::start().await;
    let proxy = Proxy::start_toml(&format!(
        "[upstream]\nurl = \"http://{}\"\nforward_headers = [\"x-tenant\"]\n",
        backend.addr
    ))
    .await;
    let r = proxy
        .http
        .post(proxy.url("/_bridge/sessions"))
        .header("cookie", "sid=42")
        .header("authorization", "Bearer t")
        .header("origin", "http://page.example")
        .header("user-agent", "test-agent/1")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-tenant", "acme")
        .header("x-not-forwarded", "secret")
        .json(&json!({"url": "/headers?a=1&b=%20x", "protocols": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    let id = body["session"].as_str().unwrap();
    let events = poll_first(&proxy, id).await;
    let seen: Value = serde_json::from_str(events["events"][0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(seen["uri"], "/headers?a=1&b=%20x");
    let h = &seen["headers"];
    assert_eq!(h["cookie"], "sid=42");
    assert_eq!(h["authorization"], "Bearer t");
    assert_eq!(h["origin"], "http://page.example");
    assert_eq!(h["user-agent"], "test-agent/1");
    assert_eq!(h["x-tenant"], "acme");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], proxy.addr.to_string());
    assert!(
        h.get("x-not-forwarded").is_none(),
        "only named headers pass: {h}"
    );
}

async fn poll_first(proxy: &Proxy, id: &str) -> Value {
    proxy
        .http
        .get(proxy.url(&format!("/_bridge/sessions/{id}/poll?cursor=0&wait=5")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn subprotocol_is_negotiated_and_reported() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let (status, body, _) = proxy
        .open_raw(json!({"url": "/proto", "protocols": ["chat.v1", "chat.v2"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["protocol"], "chat.v2");
    let Seen::Handshake { headers, .. } = backend
        .wait_for("handshake", |s| matches!(s, Seen::Handshake { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(headers["sec-websocket-protocol"], "chat.v1, chat.v2");
}

#[tokio::test]
async fn upstream_refusals_are_mirrored() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let (status, body, _) = proxy.open_raw(json!({"url": "/auth"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({"error": "upstream_rejected", "status": 401}));
    let (status, body, _) = proxy.open_raw(json!({"url": "/forbidden"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, json!({"error": "upstream_rejected", "status": 403}));
    // The credentials of the page reach the upstream's check.
    let r = proxy
        .http
        .post(proxy.url("/_bridge/sessions"))
        .header("authorization", "Bearer good")
        .json(&json!({"url": "/auth"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_handshake_504() {
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start_toml(&format!("[upstream]\nurl = \"http://{closed}\"\n")).await;
    let (status, body, _) = proxy.open_raw(json!({"url": "/ws"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body["error"].is_string());

    // Accepts TCP but never answers the handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let proxy = Proxy::start_toml(&format!(
        "[upstream]\nurl = \"http://{silent_addr}\"\nconnect_timeout = \"300ms\"\n"
    ))
    .await;
    let (status, body, _) = proxy.open_raw(json!({"url": "/ws"})).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
}

#[tokio::test]
async fn malformed_open_bodies_are_400_with_a_reason() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    for body in [
        "",
        "not json",
        "{}",
        r#"{"url": 5}"#,
        r#"{"url": "ws"}"#,
        r#"{"url": "ftp://x/ws"}"#,
        r#"{"url":"/ws","protocols":["bad token"]}"#,
    ] {
        let r = proxy
            .http
            .post(proxy.url("/_bridge/sessions"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"].is_string() && v["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}: {v}"
        );
    }
}

#[tokio::test]
async fn absolute_url_never_chooses_the_host() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let (status, body, _) = proxy
        .open_raw(json!({"url": "ws://127.0.0.1:1/headers?x=1"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let Seen::Handshake { uri, .. } = backend
        .wait_for("handshake", |s| matches!(s, Seen::Handshake { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(uri, "/headers?x=1");
}

#[tokio::test]
async fn routes_exact_prefix_and_no_route() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        r#"
[[routes]]
path = "/chat"
upstream = "ws://{backend}/headers"
transports = ["sse", "poll"]
[[routes]]
path = "/bridge/"
upstream = "ws://{backend}/"
[[routes]]
path = "/wsonly"
upstream = "ws://{backend}/echo"
transports = ["websocket"]
"#,
    )
    .await;
    let (status, body, _) = proxy.open_raw(json!({"url": "/chat?room=1"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(
        body["links"].get("stream").is_none(),
        "stream not allowed: {body}"
    );
    assert!(body["links"]["sse"].is_string() && body["links"]["poll"].is_string());
    let id = body["session"].as_str().unwrap().to_owned();
    let r = proxy
        .http
        .get(proxy.url(&format!("/_bridge/sessions/{id}/stream")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a disallowed transport answers 404"
    );
    let first = poll_first(&proxy, &id).await;
    let seen: Value = serde_json::from_str(first["events"][0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(seen["uri"], "/headers?room=1");

    let (status, _, _) = proxy.open_raw(json!({"url": "/bridge/headers?q"})).await;
    assert_eq!(status, StatusCode::CREATED);
    backend
        .wait_for(
            "prefix route remainder",
            |s| matches!(s, Seen::Handshake { uri, .. } if uri == "/headers?q"),
        )
        .await;

    let (status, _, _) = proxy.open_raw(json!({"url": "/nowhere"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = proxy.open_raw(json!({"url": "/wsonly"})).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a route that does not bridge"
    );
    let (status, _, _) = proxy.open_raw(json!({"url": "/bridge/../admin"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn session_limits_answer_503_with_retry_after() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[sessions]\nmax_sessions = 2\n").await;
    let a = proxy.open("/echo").await;
    let _b = proxy.open("/echo").await;
    let (status, body, headers) = proxy.open_raw(json!({"url": "/echo"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("retry-after"));
    // A lingering session does not count.
    assert_eq!(a.delete("").await.status(), StatusCode::NO_CONTENT);
    let (status, _, _) = proxy.open_raw(json!({"url": "/echo"})).await;
    assert_eq!(status, StatusCode::CREATED);

    let proxy = Proxy::start(&backend, "[sessions]\nmax_sessions_per_client = 1\n").await;
    let _c = proxy.open("/echo").await;
    let (status, _, headers) = proxy.open_raw(json!({"url": "/echo"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
}

#[tokio::test]
async fn unknown_paths_and_ids_under_the_prefix() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let r = proxy
        .http
        .get(proxy.url("/_bridge/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "not_found"})
    );
    for id in [
        "AAAAAAAAAAAAAAAAAAAAAA",
        "short",
        "no-such-session-id-at-all-0123",
    ] {
        for suffix in ["/sse", "/stream", "/poll"] {
            let r = proxy
                .http
                .get(proxy.url(&format!("/_bridge/sessions/{id}{suffix}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND);
            assert_eq!(
                r.json::<Value>().await.unwrap(),
                json!({"error": "unknown_session"})
            );
        }
        let r = proxy
            .http
            .post(proxy.url(&format!("/_bridge/sessions/{id}/send")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = proxy
            .http
            .delete(proxy.url(&format!("/_bridge/sessions/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
