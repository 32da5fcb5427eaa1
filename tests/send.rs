//! Browser → upstream: `POST .../send` ordering, text and binary, the
//! `Bridge-Seq` retry protocol, and every error status.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Backend, Proxy, Seen, all_bytes, exotic_texts};

#[tokio::test]
async fn frames_reach_the_upstream_in_order_and_byte_exact() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let s = proxy.open("/echo").await;
    for i in 0..50 {
        let r = s.send_text(&format!("m{i}")).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()["x-realtime-transport"], "send");
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
    for t in exotic_texts() {
        assert_eq!(s.send_text(&t).await.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(
        s.send_binary(&all_bytes()).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(s.send_binary(&[]).await.status(), StatusCode::NO_CONTENT);
    backend
        .wait_for("the empty binary frame", |x| *x == Seen::Binary(Vec::new()))
        .await;
    let mut expected: Vec<Seen> = (0..50).map(|i| Seen::Text(format!("m{i}"))).collect();
    expected.extend(exotic_texts().into_iter().map(Seen::Text));
    expected.push(Seen::Binary(all_bytes()));
    expected.push(Seen::Binary(Vec::new()));
    let frames: Vec<Seen> = backend
        .seen()
        .into_iter()
        .filter(|x| !matches!(x, Seen::Handshake { .. }))
        .collect();
    assert_eq!(frames, expected);
}

#[tokio::test]
async fn any_content_type_but_octet_stream_is_text_and_must_be_utf8() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let s = proxy.open("/echo").await;
    let r = proxy
        .http
        .post(s.url("/send"))
        .header("content-type", "application/json")
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = proxy
        .http
        .post(s.url("/send"))
        .body("no content type")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    backend
        .wait_for("untyped text", |x| {
            *x == Seen::Text("no content type".into())
        })
        .await;
    let r = proxy
        .http
        .post(s.url("/send"))
        .header("content-type", "text/plain")
        .body(vec![0xff, 0xfe])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "not_utf8");
    let r = proxy
        .http
        .post(s.url("/send"))
        .header("content-type", "application/octet-stream; charset=binary")
        .body(vec![0xff, 0xfe])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    backend
        .wait_for("binary", |x| *x == Seen::Binary(vec![0xff, 0xfe]))
        .await;
}

#[tokio::test]
async fn bridge_seq_makes_retries_safe() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let s = proxy.open("/echo").await;
    let send = |seq: &'static str, body: &'static str| {
        let http = proxy.http.clone();
        let url = s.url("/send");
        async move {
            http.post(url)
                .header("bridge-seq", seq)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(send("1", "one").await.status(), StatusCode::NO_CONTENT);
    let dup = send("1", "one").await;
    assert_eq!(dup.status(), StatusCode::OK);
    assert_eq!(
        dup.json::<Value>().await.unwrap(),
        json!({"duplicate": true})
    );
    let ahead = send("3", "three").await;
    assert_eq!(ahead.status(), StatusCode::CONFLICT);
    assert_eq!(
        ahead.json::<Value>().await.unwrap()["error"],
        "seq_out_of_order"
    );
    assert_eq!(send("2", "two").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(send("3", "three").await.status(), StatusCode::NO_CONTENT);
    for bad in ["0", "-1", "+2", "04", "x", ""] {
        let r = send(bad, "bad").await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "Bridge-Seq {bad:?}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "bad_seq");
    }
    backend
        .wait_for("three", |x| *x == Seen::Text("three".into()))
        .await;
    let texts: Vec<Seen> = backend
        .seen()
        .into_iter()
        .filter(|x| matches!(x, Seen::Text(_)))
        .collect();
    assert_eq!(
        texts,
        vec![
            Seen::Text("one".into()),
            Seen::Text("two".into()),
            Seen::Text("three".into())
        ]
    );
}

#[tokio::test]
async fn oversized_frames_are_413() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[limits]\nmax_frame_bytes = \"1KiB\"\n").await;
    let s = proxy.open("/echo").await;
    assert_eq!(
        s.send_text(&"a".repeat(1024)).await.status(),
        StatusCode::NO_CONTENT
    );
    let r = s.send_text(&"a".repeat(1025)).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "payload_too_large"
    );
    // Also without a Content-Length (chunked).
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'b'; 512]))),
    ));
    let r = proxy
        .http
        .post(s.url("/send"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_stalled_upstream_fills_the_outbound_budget_and_sends_get_429() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[limits]\nmax_outbound_bytes = \"1MiB\"\nmax_frame_bytes = \"1MiB\"\n",
    )
    .await;
    let s = proxy.open("/deaf").await;
    // The deaf backend never reads: once the kernel's buffers are full,
    // frames wait in the proxy, and past 1 MiB the proxy refuses more.
    let chunk = "z".repeat(512 * 1024);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (http, url, chunk) = (proxy.http.clone(), s.url("/send"), chunk.clone());
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(3), http.post(url).body(chunk).send())
                .await;
            r.ok()
                .map(|r| r.unwrap())
                .map(|r| (r.status(), r.headers().get("retry-after").cloned()))
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut refused = 0;
    for t in tasks {
        if let Some((status, retry)) = t.await.unwrap()
            && status == StatusCode::TOO_MANY_REQUESTS
        {
            assert!(retry.is_some(), "429 carries Retry-After");
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "32 MiB to a deaf upstream must hit the 1 MiB outbound budget"
    );
}

#[tokio::test]
async fn sends_are_rate_limited_per_session() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[sessions]\nmax_sends_per_second = 2\n").await;
    let s = proxy.open("/echo").await;
    assert_eq!(s.send_text("a").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.send_text("b").await.status(), StatusCode::NO_CONTENT);
    let r = s.send_text("c").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "rate_limited");
    // Another session has its own budget.
    let other = proxy.open("/echo").await;
    assert_eq!(other.send_text("d").await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn sends_to_a_closed_session_are_410() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let s = proxy.open("/bye").await;
    s.poll_events(0, 1).await;
    let r = s.send_text("late").await;
    assert_eq!(r.status(), StatusCode::GONE);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "session_closed", "close": {"code": 4000, "reason": "bye"}})
    );
}
