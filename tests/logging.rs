//! Logging, on the real binary with `--log-format json`: one info line per
//! request (method, path without the query, status, duration), and never a
//! query string, a cookie, a credential or a whole session id.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Backend, ProxyProcess};

const QUERY_SECRET: &str = "QSECRET4711";
const COOKIE_SECRET: &str = "COOKIESECRET4712";
const AUTH_SECRET: &str = "AUTHSECRET4713";
const TOKEN_SECRET: &str = "TOKENSECRET4714";

/// The traffic every test here logs: a pass-through request with a query,
/// a Cookie and an Authorization; an open (whose URL carries a token); a
/// poll. Returns the session id and the process's stderr once it exited.
async fn traffic(envs: &[(&str, &str)]) -> (String, String) {
    let backend = Backend::start().await;
    let mut proxy = ProxyProcess::start_with(&backend, "", &["--log-format", "json"], envs).await;
    let http = &proxy.http;
    let cookie = format!("sid={COOKIE_SECRET}");
    let auth = format!("Bearer {AUTH_SECRET}");

    let resp = http
        .get(proxy.url(&format!("/http/echo?secret={QUERY_SECRET}&x=1")))
        .header("cookie", &cookie)
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.bytes().await.unwrap();

    let resp = http
        .post(proxy.url("/_bridge/sessions"))
        .header("cookie", &cookie)
        .header("authorization", &auth)
        .json(&json!({"url": format!("/echo?token={TOKEN_SECRET}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id = resp.json::<Value>().await.unwrap()["session"]
        .as_str()
        .unwrap()
        .to_owned();

    let resp = http
        .get(proxy.url(&format!(
            "/_bridge/sessions/{id}/poll?cursor=0&wait=0&secret={QUERY_SECRET}"
        )))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.bytes().await.unwrap();

    // Let the process finish writing: a drain flushes everything.
    proxy.signal("TERM");
    let exit = proxy
        .wait_exit(Instant::now() + Duration::from_secs(10))
        .await
        .expect("wsbridge exits after SIGTERM");
    assert!(exit.success(), "{}", proxy.stderr());
    (id, proxy.stderr())
}

fn assert_no_secrets(stderr: &str, id: &str) {
    for line in stderr.lines() {
        for secret in [QUERY_SECRET, COOKIE_SECRET, AUTH_SECRET, TOKEN_SECRET, id] {
            assert!(
                !line.contains(secret),
                "a log line holds {secret:?}: {line}"
            );
        }
    }
}

#[tokio::test]
async fn one_json_info_line_per_request_without_secrets() {
    let (id, stderr) = traffic(&[]).await;
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    let requests: Vec<&Value> = lines.iter().filter(|l| l.get("method").is_some()).collect();
    assert_eq!(requests.len(), 3, "one line per request:\n{stderr}");

    let expected = [
        ("GET", "/http/echo", 200),
        ("POST", "/_bridge/sessions", 201),
        ("GET", "/_bridge/sessions/", 200),
    ];
    for (line, (method, path, status)) in requests.iter().zip(expected) {
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["method"], method, "{line}");
        assert_eq!(line["status"], status, "{line}");
        let logged = line["path"]
            .as_str()
            .unwrap_or_else(|| panic!("path in {line}"));
        assert!(!logged.contains('?'), "the query is logged: {line}");
        if path.ends_with('/') {
            // The poll: the id shortened, never whole.
            assert!(
                logged.starts_with(path) && logged.ends_with("/poll"),
                "{line}"
            );
        } else {
            assert_eq!(logged, path, "{line}");
        }
        let duration = line
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == "ms" || k.contains("duration") || k.contains("elapsed"))
            .unwrap_or_else(|| panic!("no duration in {line}"));
        let ms = duration.1.as_f64().expect("a numeric duration");
        assert!((0.0..10_000.0).contains(&ms), "{line}");
    }
    // Each request is logged once: no other line names its path.
    for path in ["/http/echo", "/_bridge/sessions"] {
        let naming = lines
            .iter()
            .filter(|l| l["level"] == "INFO" && l["path"].as_str() == Some(path))
            .count();
        assert_eq!(naming, 1, "{path}:\n{stderr}");
    }
    assert_no_secrets(&stderr, &id);
}

#[tokio::test]
async fn no_secrets_even_at_debug_level() {
    let (id, stderr) = traffic(&[("WSBRIDGE_LOG", "debug")]).await;
    assert!(
        stderr.lines().any(|l| l.contains("DEBUG")),
        "debug lines were expected:\n{stderr}"
    );
    assert_no_secrets(&stderr, &id);
}

/// One request sent byte for byte (an HTTP client would normalise the
/// path), on a connection of its own: the status and body.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .expect("an answer, then the close")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The odd spellings of a session's paths: none is an endpoint, and none
/// may log or forward the id whole.
fn non_canonical(id: &str) -> Vec<String> {
    vec![
        format!("/_bridge//sessions/{id}/sse"),
        format!("/_bridge/sessions/{id}/sse/"),
        format!("/_bridge/sessions/{id}/./sse"),
        format!("/_bridge/sessions/x/../{id}/poll"),
        format!("/_BRIDGE/sessions/{id}"),
        format!("/_Bridge/sessions/{id}/sse"),
        format!("//_bridge/sessions/{id}/sse"),
        format!("/app/../_bridge/sessions/{id}/sse"),
        format!("/%5Fbridge/sessions/{id}/sse"),
    ]
}

#[tokio::test]
async fn non_canonical_bridge_paths_never_log_a_whole_session_id() {
    let backend = Backend::start().await;
    let mut proxy = ProxyProcess::start_with(&backend, "", &["--log-format", "json"], &[]).await;
    let id = proxy.open("/echo").await.id;
    for path in non_canonical(&id) {
        let (status, body) = raw_get(proxy.addr, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains(r#""error":"not_found""#), "{path}: {body}");
    }
    proxy.signal("TERM");
    proxy
        .wait_exit(Instant::now() + Duration::from_secs(10))
        .await
        .expect("wsbridge exits after SIGTERM");
    let stderr = proxy.stderr();
    let logged = stderr
        .lines()
        .filter(|l| l.contains(r#""status":404"#))
        .count();
    assert_eq!(logged, non_canonical(&id).len(), "one line each:\n{stderr}");
    assert_no_secrets(&stderr, &id);
}

#[tokio::test]
async fn non_canonical_bridge_paths_are_never_passed_through() {
    use std::sync::{Arc, Mutex};
    let paths = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&paths);
    let app = support::HttpBackend::start(move |req| {
        seen.lock().unwrap().push(req.uri().to_string());
        async { http::Response::new(support::body("app")) }
    })
    .await;
    let proxy = support::Proxy::start_toml(&app.config("")).await;
    let id = "AbCdEfGhIjKlMnOpQrStUv";
    for path in non_canonical(id) {
        let (status, body) = raw_get(proxy.addr, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    // The app's own paths still reach it (and are recorded).
    assert_eq!(raw_get(proxy.addr, "/app/page").await.0, 200);
    let forwarded = paths.lock().unwrap().clone();
    assert_eq!(
        forwarded,
        ["/app/page"],
        "only the app's path was forwarded"
    );
}
