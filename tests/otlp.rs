//! Span export over OTLP/HTTP: a collector on 127.0.0.1:0 decodes what the
//! proxy POSTs with the real OTLP protobuf types, and the spans are checked
//! against the browser's `traceparent` and what the upstream was sent.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};
use support::{Backend, Ev, PATIENCE, ProxyProcess, Seen, SseClient};
use tokio::net::TcpListener;

/// The browser's trace (W3C's example ids).
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The pass-through request's own trace.
const PASS_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
/// In the pass-through query: must appear in no span.
const SECRET_QUERY: &str = "sekrit-query-value";

fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

/// What the collector got.
#[derive(Default)]
struct Received {
    /// Every POST, decoded or not.
    posts: usize,
    /// `(service.name, span)` for every span decoded.
    spans: Vec<(String, Span)>,
    /// Bodies that did not decode as an `ExportTraceServiceRequest`.
    undecodable: usize,
}

/// An OTLP/HTTP traces receiver on 127.0.0.1:0.
struct Collector {
    addr: std::net::SocketAddr,
    got: Arc<Mutex<Received>>,
    /// Connections accepted, whatever they sent.
    connections: Arc<Mutex<usize>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Received::default()));
        let connections = Arc::new(Mutex::new(0));
        let (got2, conns2) = (Arc::clone(&got), Arc::clone(&connections));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                *conns2.lock().unwrap() += 1;
                let got = Arc::clone(&got2);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let got = Arc::clone(&got);
                        async move { Ok::<_, Infallible>(receive(req, &got).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Collector {
            addr,
            got,
            connections,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.got.lock().unwrap().spans.clone()
    }
}

async fn receive(
    req: Request<hyper::body::Incoming>,
    got: &Mutex<Received>,
) -> Response<Full<Bytes>> {
    let path_ok = req.method() == hyper::Method::POST && req.uri().path() == "/v1/traces";
    let proto = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/x-protobuf");
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut got = got.lock().unwrap();
    got.posts += 1;
    let decoded = ExportTraceServiceRequest::decode(body);
    let (true, true, Ok(export)) = (path_ok, proto, decoded) else {
        got.undecodable += 1;
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    for rs in export.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| string_value(kv.value.as_ref()?.value.as_ref()?))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                got.spans.push((service.clone(), span));
            }
        }
    }
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    let mut r = Response::new(Full::new(Bytes::from(answer)));
    r.headers_mut()
        .insert("content-type", "application/x-protobuf".parse().unwrap());
    r
}

fn string_value(v: &AnyValue) -> Option<String> {
    match v {
        AnyValue::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn str_attr(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        other => panic!("{}: {key} is {other:?}", span.name),
    }
}

fn int_attr(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(AnyValue::IntValue(n)) => *n,
        other => panic!("{}: {key} is {other:?}", span.name),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The span ids the test's requests name as their parents.
const OPEN_PARENT: &str = "00f067aa0ba90201";
const SEND_PARENT: &str = "00f067aa0ba90202";
const SSE_PARENT: &str = "00f067aa0ba90203";
const DELETE_PARENT: &str = "00f067aa0ba90204";
const PASS_PARENT: &str = "00f067aa0ba90205";

/// What the browser side did, for the assertions.
struct Traffic {
    session_id: String,
    /// The `traceparent` of the upstream WebSocket handshake.
    handshake_traceparent: Option<String>,
    /// The `traceparent` the pass-through's upstream received.
    passthrough_traceparent: Option<String>,
}

/// An open with a `traceparent`, a send, an SSE read, a DELETE, and a
/// pass-through request with its own `traceparent` and a query.
async fn browse(proxy: &ProxyProcess, backend: &Backend) -> Traffic {
    let http = &proxy.http;
    let open = http
        .post(proxy.url("/_bridge/sessions"))
        .header("traceparent", traceparent(TRACE, OPEN_PARENT))
        .json(&json!({"url": "/echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::CREATED);
    let session =
        support::Session::from_open(open.json().await.unwrap(), proxy.url(""), http.clone());

    let sent = http
        .post(session.url("/send"))
        .header("traceparent", traceparent(TRACE, SEND_PARENT))
        .header("content-type", "text/plain; charset=utf-8")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert!(sent.status().is_success(), "{}", sent.status());

    let sse = http
        .get(session.url("/sse?cursor=0"))
        .header("traceparent", traceparent(TRACE, SSE_PARENT))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    let events = SseClient::new(sse).take(1).await;
    assert!(
        matches!(&events[..], [Ev::Text(_, t)] if t == "hello"),
        "{events:?}"
    );

    let deleted = http
        .delete(session.url(""))
        .header("traceparent", traceparent(TRACE, DELETE_PARENT))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());

    let echo: Value = http
        .get(proxy.url(&format!("/http/echo?token={SECRET_QUERY}")))
        .header("traceparent", traceparent(PASS_TRACE, PASS_PARENT))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let passthrough_traceparent = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv[0] == "traceparent")
        .map(|kv| kv[1].as_str().unwrap().to_owned());

    let handshake_traceparent = backend
        .seen()
        .iter()
        .find_map(|s| match s {
            Seen::Handshake { headers, .. } => Some(headers.get("traceparent").cloned()),
            _ => None,
        })
        .expect("the upstream saw the handshake");
    Traffic {
        session_id: session.id.clone(),
        handshake_traceparent,
        passthrough_traceparent,
    }
}

/// SIGTERM, then the exit (the drain and the span flush are in it).
async fn stop(proxy: &mut ProxyProcess) {
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(std::time::Instant::now() + 2 * PATIENCE)
        .await
        .expect("the proxy exits after SIGTERM");
    assert!(status.success(), "{status}: {}", proxy.stderr());
}

const FAST_DRAIN: &str = "[server]\ndrain_delay = \"0s\"\ndrain_timeout = \"5s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_in_the_browsers_trace() {
    let collector = Collector::start().await;
    let backend = Backend::start().await;
    let mut proxy = ProxyProcess::start(
        &backend,
        &format!(
            "{FAST_DRAIN}[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"wsbridge-test\"\n",
            collector.endpoint()
        ),
    )
    .await;
    let traffic = browse(&proxy, &backend).await;
    // The shutdown flushes the batch: every span is in once it exits.
    stop(&mut proxy).await;

    let got = collector.got.lock().unwrap();
    assert!(got.posts > 0, "nothing was exported");
    assert_eq!(got.undecodable, 0, "an export was not OTLP protobuf");
    drop(got);
    let spans = collector.spans();
    assert!(spans.iter().all(|(service, _)| service == "wsbridge-test"));

    let request = |parent: &str| -> Span {
        let found: Vec<&Span> = spans
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.name == "http.request" && hex(&s.parent_span_id) == parent)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one request span under {parent}: {spans:#?}"
        );
        found[0].clone()
    };
    for (parent, route, method) in [
        (OPEN_PARENT, "open", "POST"),
        (SEND_PARENT, "send", "POST"),
        (SSE_PARENT, "sse", "GET"),
        (DELETE_PARENT, "close", "DELETE"),
    ] {
        let span = request(parent);
        assert_eq!(hex(&span.trace_id), TRACE, "{route}");
        assert_eq!(str_attr(&span, "http.route"), route);
        assert_eq!(str_attr(&span, "http.request.method"), method);
        let status = int_attr(&span, "http.response.status_code");
        assert!((200..300).contains(&status), "{route}: {status}");
    }
    let open = request(OPEN_PARENT);
    let pass = request(PASS_PARENT);
    assert_eq!(hex(&pass.trace_id), PASS_TRACE);
    assert_eq!(str_attr(&pass, "http.route"), "passthrough");
    assert_eq!(str_attr(&pass, "url.path"), "/http/echo");
    assert_eq!(int_attr(&pass, "http.response.status_code"), 200);

    // Upstream, the proxy's span is the parent.
    assert_eq!(
        traffic.handshake_traceparent.as_deref(),
        Some(traceparent(TRACE, &hex(&open.span_id)).as_str()),
        "the handshake names the open's span"
    );
    assert_eq!(
        traffic.passthrough_traceparent.as_deref(),
        Some(traceparent(PASS_TRACE, &hex(&pass.span_id)).as_str()),
        "the pass-through names its request's span"
    );

    // The session: open to DELETE, under the open request's span.
    let sessions: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "ws.session")
        .collect();
    assert_eq!(sessions.len(), 1, "{spans:#?}");
    let session = sessions[0];
    assert_eq!(hex(&session.trace_id), TRACE);
    assert_eq!(hex(&session.parent_span_id), hex(&open.span_id));
    assert_eq!(int_attr(session, "wsbridge.close_code"), 1000);
    assert_eq!(str_attr(session, "wsbridge.reason_class"), "client");
    assert_eq!(int_attr(session, "wsbridge.events_up"), 1);
    assert_eq!(int_attr(session, "wsbridge.events_down"), 1);
    assert!(session.end_time_unix_nano >= session.start_time_unix_nano);
    let short = str_attr(session, "wsbridge.session");
    assert!(
        !short.is_empty() && traffic.session_id.starts_with(&short) && short != traffic.session_id
    );

    // Nothing carries the query or the whole session id.
    for (_, span) in &spans {
        for kv in &span.attributes {
            let text = format!("{:?}", kv.value);
            for secret in [SECRET_QUERY, "cursor=", &traffic.session_id] {
                assert!(
                    !text.contains(secret) && !span.name.contains(secret),
                    "{}: {} = {text} holds {secret:?}",
                    span.name,
                    kv.key
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_telemetry_off_nothing_is_sent_and_traceparent_passes_unchanged() {
    let collector = Collector::start().await;
    let backend = Backend::start().await;
    // No endpoint in the file; the OpenTelemetry variables name the
    // collector, and would be read if any exporter were built.
    let endpoint = collector.endpoint();
    let base = format!("http://{}", collector.addr);
    let mut proxy = ProxyProcess::start_with(
        &backend,
        &format!("{FAST_DRAIN}[telemetry]\notlp_endpoint = \"\"\n"),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &base),
            ("OTEL_TRACES_EXPORTER", "otlp"),
        ],
    )
    .await;
    let traffic = browse(&proxy, &backend).await;
    stop(&mut proxy).await;
    assert_eq!(*collector.connections.lock().unwrap(), 0);
    assert_eq!(collector.got.lock().unwrap().posts, 0);
    assert_eq!(
        traffic.handshake_traceparent.as_deref(),
        Some(traceparent(TRACE, OPEN_PARENT).as_str())
    );
    assert_eq!(
        traffic.passthrough_traceparent.as_deref(),
        Some(traceparent(PASS_TRACE, PASS_PARENT).as_str())
    );
}
