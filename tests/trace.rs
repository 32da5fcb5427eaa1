//! W3C trace context: a valid `traceparent` (and its `tracestate`) from the
//! browser reaches the upstream on the open's handshake, on pass-through
//! requests and on spliced WebSockets; an invalid one is dropped, never
//! forwarded. The JavaScript client's `traceparent` option, run in Node
//! against the real proxy, puts one on the open request.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Backend, PATIENCE, Proxy, Seen};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

/// The headers of the `n`-th WebSocket handshake the backend saw.
async fn handshake(backend: &Backend, n: usize) -> std::collections::HashMap<String, String> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let mut seen = backend.seen().into_iter().filter_map(|s| match s {
            Seen::Handshake { headers, .. } => Some(headers),
            _ => None,
        });
        if let Some(headers) = seen.nth(n) {
            return headers;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no handshake #{n}: {:?}",
            backend.seen()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_open_carries_the_trace_context_upstream() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let open = |traceparent: &'static str| {
        proxy
            .http
            .post(proxy.url("/_bridge/sessions"))
            .header("traceparent", traceparent)
            .header("tracestate", TRACESTATE)
            .json(&json!({"url": "/echo"}))
            .send()
    };
    assert_eq!(
        open(TRACEPARENT).await.unwrap().status(),
        StatusCode::CREATED
    );
    let h = handshake(&backend, 0).await;
    assert_eq!(
        h.get("traceparent").map(String::as_str),
        Some(TRACEPARENT),
        "{h:?}"
    );
    assert_eq!(
        h.get("tracestate").map(String::as_str),
        Some(TRACESTATE),
        "{h:?}"
    );
    assert!(h.contains_key("x-request-id"), "{h:?}");

    // Malformed (an all-zero trace id): dropped, with its tracestate.
    let bad = "00-00000000000000000000000000000000-b7ad6b7169203331-01";
    assert_eq!(open(bad).await.unwrap().status(), StatusCode::CREATED);
    let h = handshake(&backend, 1).await;
    assert!(!h.contains_key("traceparent"), "{h:?}");
    assert!(!h.contains_key("tracestate"), "{h:?}");
}

#[tokio::test]
async fn pass_through_and_splice_carry_it_too() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let proxy = &proxy;
    let echo = |traceparent: &'static str| async move {
        let r = proxy
            .http
            .get(proxy.url("/http/echo"))
            .header("traceparent", traceparent)
            .header("tracestate", TRACESTATE)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()
    };
    let seen = echo(TRACEPARENT).await;
    let headers = seen["headers"].to_string();
    assert!(headers.contains(TRACEPARENT), "{seen}");
    assert!(headers.contains("rojo=00f067aa0ba902b7"), "{seen}");
    let seen = echo("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331").await;
    let headers = seen["headers"].to_string();
    assert!(!headers.contains("traceparent"), "{seen}");
    assert!(!headers.contains("tracestate"), "{seen}");

    let mut req = format!("ws://{}/echo", proxy.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("traceparent", TRACEPARENT.parse().unwrap());
    let (_ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let h = handshake(&backend, 0).await;
    assert_eq!(
        h.get("traceparent").map(String::as_str),
        Some(TRACEPARENT),
        "{h:?}"
    );
}

/// The client's `traceparent` option (a function here), in Node's fetch,
/// on the poll transport: the upstream handshake of the open it made
/// carries the value. Needs `node` (skipped without it, unless CI=true).
#[tokio::test]
async fn the_javascript_client_sends_the_pages_traceparent() {
    let node = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("node"))
            .find(|p| p.is_file())
    });
    let Some(node) = node else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "node is missing"
        );
        eprintln!("skipped: no node");
        return;
    };
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let module = proxy
        .http
        .get(proxy.url("/_bridge/client.mjs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client.mjs"), module).unwrap();
    let script = format!(
        r#"
import WsBridge from "./client.mjs";
// What a browser has and Node 20 lacks; used only when events fire.
globalThis.CloseEvent ??= class extends Event {{
  constructor(type, init = {{}}) {{ super(type); Object.assign(this, init); }}
}};
globalThis.ErrorEvent ??= class extends Event {{
  constructor(type, init = {{}}) {{ super(type); Object.assign(this, init); }}
}};
const ws = new WsBridge.BridgeSocket("ws://{addr}/echo", [], {{
  transports: ["poll"],
  traceparent: () => "{TRACEPARENT}",
}});
ws.onopen = () => ws.send("hi");
ws.onmessage = (e) => {{ console.log("got " + e.data); ws.close(); setTimeout(() => process.exit(0), 100); }};
ws.onerror = (e) => {{ console.log("error " + (e.message || e.type)); }};
setTimeout(() => {{ console.log("timeout"); process.exit(1); }}, 8000);
"#,
        addr = proxy.addr
    );
    std::fs::write(dir.path().join("run.mjs"), script).unwrap();
    let run = tokio::process::Command::new(node)
        .arg("run.mjs")
        .current_dir(dir.path())
        .output();
    let out = tokio::time::timeout(PATIENCE + Duration::from_secs(5), run)
        .await
        .expect("node ends")
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("got hi"), "{said}");
    let h = handshake(&backend, 0).await;
    assert_eq!(
        h.get("traceparent").map(String::as_str),
        Some(TRACEPARENT),
        "{h:?}"
    );
}
