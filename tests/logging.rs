//! Logging, on the real binary with `--log-format json`: one access line
//! per request (client, method, path without the query, status, bytes,
//! duration, user agent, request id), one line per session end, no colours
//! into a pipe, and never a query string, a cookie, a credential, a frame
//! payload or a whole session id, not even at `WSBRIDGE_LOG=trace`.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Backend, ProxyProcess, Seen};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

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

const PAYLOAD_SECRET: &str = "PAYLOADSECRET4715";

/// Stops the process with SIGTERM (a drain flushes every line) and returns
/// its stderr.
async fn stop(mut proxy: ProxyProcess) -> String {
    proxy.signal("TERM");
    let exit = proxy
        .wait_exit(Instant::now() + Duration::from_secs(10))
        .await
        .expect("wsbridge exits after SIGTERM");
    assert!(exit.success(), "{}", proxy.stderr());
    proxy.stderr()
}

fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect()
}

/// Secrets in every place a request carries them, through every path: an
/// open (cookie, Authorization, a token in the page URL), a send (the
/// payload), the SSE reader (the echoed payload), a pass-through request
/// and a spliced WebSocket (headers, query, frames both ways).
async fn secret_traffic(proxy: &ProxyProcess) -> String {
    let http = &proxy.http;
    let cookie = format!("sid={COOKIE_SECRET}");
    let auth = format!("Bearer {AUTH_SECRET}");

    let resp = http
        .post(proxy.url("/_bridge/sessions"))
        .header("cookie", &cookie)
        .header("authorization", &auth)
        .json(&json!({"url": format!("/echo?token={TOKEN_SECRET}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let session =
        support::Session::from_open(resp.json().await.unwrap(), proxy.url(""), http.clone());
    let id = session.id.clone();
    let mut sse = session.sse(None).await;
    assert_eq!(session.send_text(PAYLOAD_SECRET).await.status(), 204);
    let echoed = sse.take(1).await;
    assert_eq!(echoed.len(), 1, "{echoed:?}");
    drop(sse);

    let resp = http
        .get(proxy.url(&format!("/http/echo?secret={QUERY_SECRET}")))
        .header("cookie", &cookie)
        .header("authorization", &auth)
        .body(PAYLOAD_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.bytes().await.unwrap();

    let mut req = format!("ws://{}/echo?token={TOKEN_SECRET}", proxy.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    req.headers_mut()
        .insert("authorization", auth.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text(PAYLOAD_SECRET)).await.unwrap();
    let echo = tokio::time::timeout(support::PATIENCE, ws.next())
        .await
        .expect("the splice echoes")
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text(PAYLOAD_SECRET));
    ws.close(None).await.unwrap();
    assert_eq!(session.delete("").await.status(), 204);
    id
}

#[tokio::test]
async fn no_secrets_at_trace_level_on_any_path() {
    // `trace`, and a filter that names the chatty crates itself: they stay
    // capped at info either way.
    for filter in [
        "trace",
        "trace,tungstenite=trace,tokio_tungstenite=trace,hyper=trace,h2=trace,rustls=trace",
    ] {
        let backend = Backend::start().await;
        let proxy = ProxyProcess::start_with(
            &backend,
            "",
            &["--log-format", "json"],
            &[("WSBRIDGE_LOG", filter)],
        )
        .await;
        let id = secret_traffic(&proxy).await;
        let stderr = stop(proxy).await;
        let lines = json_lines(&stderr);
        assert!(
            lines.iter().any(|l| l["level"] == "DEBUG"),
            "{filter}: debug lines were expected:\n{stderr}"
        );
        for line in stderr.lines() {
            assert!(
                !line.contains(PAYLOAD_SECRET),
                "{filter}: a payload: {line}"
            );
        }
        assert_no_secrets(&stderr, &id);
        for line in &lines {
            let target = line["target"].as_str().unwrap_or_default();
            let level = line["level"].as_str().unwrap_or_default();
            let capped = ["tungstenite", "tokio_tungstenite", "hyper", "h2", "rustls"]
                .iter()
                .any(|c| target == *c || target.starts_with(&format!("{c}::")));
            assert!(
                !(capped && (level == "DEBUG" || level == "TRACE")),
                "{filter}: {line}"
            );
        }
    }
}

#[tokio::test]
async fn access_lines_carry_the_fields_a_pipeline_wants() {
    let backend = Backend::start().await;
    let proxy = ProxyProcess::start_with(
        &backend,
        "[security]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        &["--log-format", "json"],
        &[],
    )
    .await;
    let http = &proxy.http;

    // A pass-through request with an id of its own, through a trusted proxy.
    let resp = http
        .post(proxy.url("/http/echo?secret=x"))
        .header("x-request-id", "req-4711.abc")
        .header("x-forwarded-for", "203.0.113.7")
        .header("user-agent", "pipeline-test/1.0")
        .body("twelve bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-request-id"], "req-4711.abc");
    let echoed: Value = resp.json().await.unwrap();
    let upstream_id = echoed.to_string();
    assert!(
        upstream_id.contains("req-4711.abc"),
        "the request id goes upstream: {echoed}"
    );

    // An open without an id, and one with an id that is not acceptable.
    let resp = http
        .post(proxy.url("/_bridge/sessions"))
        .json(&json!({"url": "/echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(
        (8..=128).contains(&generated.len()) && generated.bytes().all(|b| b.is_ascii_graphic()),
        "{generated}"
    );
    let id = resp.json::<Value>().await.unwrap()["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = http
        .get(proxy.url("/_bridge/healthz"))
        .header("x-request-id", "x".repeat(129))
        .send()
        .await
        .unwrap();
    let replaced = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(replaced, "x".repeat(129));
    // The bridged handshake carries the open's request id.
    let resp = http
        .post(proxy.url("/_bridge/sessions"))
        .header("x-request-id", "open-id-42")
        .json(&json!({"url": "/headers"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let headers_session =
        support::Session::from_open(resp.json().await.unwrap(), proxy.url(""), http.clone());
    let frames = headers_session.poll_events(0, 1).await;
    assert!(
        format!("{frames:?}").contains("open-id-42"),
        "the upstream handshake carries x-request-id: {frames:?}"
    );
    let _ = backend.seen();

    let stderr = stop(proxy).await;
    let lines = json_lines(&stderr);
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "wsbridge::access")
        .collect();
    assert_eq!(access.len(), 5, "one access line per request:\n{stderr}");
    let fields = [
        "client",
        "method",
        "path",
        "status",
        "bytes_out",
        "duration_ms",
        "request_id",
        "endpoint",
        "version",
        "outcome",
    ];
    for line in &access {
        assert_eq!(line["message"], "request", "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        for f in fields {
            assert!(line.get(f).is_some(), "no {f} in {line}");
        }
        assert!(!line["path"].as_str().unwrap().contains('?'), "{line}");
        assert!(
            !line.to_string().contains(&id),
            "a whole session id: {line}"
        );
    }
    let pass = access[0];
    assert_eq!(pass["client"], "203.0.113.7", "{pass}");
    assert_eq!(pass["method"], "POST");
    assert_eq!(pass["path"], "/http/echo");
    assert_eq!(pass["status"], 200);
    assert_eq!(pass["endpoint"], "passthrough");
    assert_eq!(pass["bytes_in"], 12);
    let body_len = upstream_id.len() as u64;
    assert_eq!(pass["bytes_out"].as_u64(), Some(body_len), "{pass}");
    assert_eq!(pass["user_agent"], "pipeline-test/1.0");
    assert_eq!(pass["request_id"], "req-4711.abc");
    assert_eq!(pass["outcome"], "complete");
    let ms = pass["duration_ms"].as_f64().unwrap();
    assert!((0.0..10_000.0).contains(&ms), "{pass}");

    let open = access[1];
    assert_eq!(open["client"], "127.0.0.1", "no X-Forwarded-For: the peer");
    assert_eq!(open["status"], 201);
    assert_eq!(open["endpoint"], "open");
    assert_eq!(open["request_id"], generated.as_str());
    assert!(open["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(access[2]["request_id"], replaced.as_str());
}

#[tokio::test]
async fn a_session_end_is_one_line() {
    let backend = Backend::start().await;
    let proxy = ProxyProcess::start_with(&backend, "", &["--log-format", "json"], &[]).await;
    let session = proxy.open("/echo").await;
    assert_eq!(session.send_text("one").await.status(), 204);
    assert_eq!(session.send_text("two").await.status(), 204);
    assert_eq!(session.poll_events(0, 2).await.len(), 2);
    assert_eq!(session.delete("").await.status(), 204);
    let bye = proxy.open("/bye").await;
    bye.poll_events(0, 1).await;
    backend
        .wait_for("the close", |s| matches!(s, Seen::Close { .. }))
        .await;
    // The upstream's close ends the other one; the drain would end it anyway.
    let stderr = stop(proxy).await;
    let lines = json_lines(&stderr);
    let ends: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "session ended")
        .collect();
    assert_eq!(ends.len(), 2, "one line per session:\n{stderr}");
    let by_id = |id: &str| {
        *ends
            .iter()
            .find(|l| id.starts_with(l["session"].as_str().unwrap()))
            .unwrap_or_else(|| panic!("no end line for {id}:\n{stderr}"))
    };
    let deleted = by_id(&session.id);
    assert_eq!(deleted["target"], "wsbridge::session");
    assert_eq!(deleted["level"], "INFO");
    assert_eq!(deleted["owner"], "local");
    assert_eq!(deleted["events_up"], 2, "{deleted}");
    assert_eq!(deleted["events_down"], 2, "{deleted}");
    assert_eq!(deleted["close_code"], 1000, "{deleted}");
    assert_eq!(deleted["reason_class"], "client");
    assert!(deleted["duration_ms"].as_f64().unwrap() >= 0.0);
    let short = deleted["session"].as_str().unwrap();
    assert!(
        short.len() < session.id.len(),
        "never the whole id: {short}"
    );
    let ended = by_id(&bye.id);
    assert_eq!(ended["close_code"], 4000, "{ended}");
    assert_eq!(ended["reason_class"], "upstream");
    assert_eq!(ended["events_up"], 0);
    for line in stderr.lines() {
        assert!(
            !line.contains(&session.id) && !line.contains(&bye.id),
            "{line}"
        );
    }
}

#[tokio::test]
async fn no_colours_into_a_pipe() {
    let backend = Backend::start().await;
    // The text format, stderr a pipe (as in a container or under systemd).
    let proxy = ProxyProcess::start_with(&backend, "", &[], &[("WSBRIDGE_LOG", "debug")]).await;
    let r = proxy
        .http
        .get(proxy.url("/_bridge/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let stderr = stop(proxy).await;
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(stderr.contains("wsbridge::access"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "ANSI escapes in a pipe:\n{stderr:?}"
    );
}
