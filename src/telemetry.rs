//! Span export over OTLP/HTTP (protobuf), off unless `[telemetry]
//! otlp_endpoint` is set: with it unset nothing of OpenTelemetry is built
//! and every method here does nothing.
//!
//! Two kinds of span, both in the browser's trace when its request carried
//! a `traceparent` (see [`crate::trace`]):
//! - `http.request`, one per request (bridge and pass-through), a child of
//!   the incoming `traceparent`. While export is on, the request's
//!   `traceparent` is rewritten to name this span as the parent, so the
//!   upstream (pass-through, splice, the bridge's WebSocket handshake) sees
//!   the proxy's span as its parent; a request without one starts a trace.
//! - `ws.session`, one per bridged session, from the open to its end, a
//!   child of the open request's `http.request` span.
//!
//! No attribute holds a query string or a whole session id: paths are the
//! access log's (ids shortened) and sessions are named by their log id.
//!
//! Spans go through the SDK's batch processor on the tokio runtime, to the
//! collector through the proxy's own hyper client (rustls; the upstream's
//! roots: webpki plus `upstream.ca_file`).
//! [`Telemetry::shutdown`] flushes them within the drain.
//!
//! A leaf: it knows headers and the config, nothing of the front.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider};

use crate::config::TelemetryConfig;
use crate::trace::{TRACEPARENT, TRACESTATE, parse_traceparent};

/// One export request's bound: connect, send and the collector's answer.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Spans waiting for export; past this new spans are dropped (and the SDK
/// says so once), never buffered without bound.
const MAX_QUEUED_SPANS: usize = 2048;
/// How often the batch is sent when it does not fill first.
const EXPORT_INTERVAL: Duration = Duration::from_secs(5);
/// The most of a collector's answer read (its body is not used).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The exporter, or nothing. Held by the shared state.
pub struct Telemetry {
    inner: Option<Inner>,
}

struct Inner {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Telemetry {
    /// Nothing is exported.
    pub fn off() -> Telemetry {
        Telemetry { inner: None }
    }

    /// The exporter the config asks for; [`Telemetry::off`] without an
    /// endpoint. Must be called inside the tokio runtime when on (the batch
    /// processor's task is spawned on it).
    pub fn start(
        config: &TelemetryConfig,
        tls: &rustls::ClientConfig,
    ) -> std::io::Result<Telemetry> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(Telemetry::off());
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.to_string())
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(Exporter::new(tls))
            .build()
            .map_err(|e| std::io::Error::other(format!("telemetry.otlp_endpoint: {e}")))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(MAX_QUEUED_SPANS)
            .with_scheduled_delay(EXPORT_INTERVAL)
            .with_max_export_timeout(EXPORT_TIMEOUT)
            .build();
        let processor = BatchSpanProcessor::builder(exporter, Tokio)
            .with_batch_config(batch)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "wsbridge");
        tracing::info!(endpoint = %endpoint, "exporting spans over OTLP/HTTP");
        Ok(Telemetry {
            inner: Some(Inner { provider, tracer }),
        })
    }

    /// Starts the `http.request` span of an arriving request (its trace
    /// headers already checked by [`crate::trace::on_arrival`]) and points
    /// the request's `traceparent` at it. `None` when export is off.
    pub fn request_span(
        &self,
        method: &http::Method,
        headers: &mut HeaderMap,
    ) -> Option<RequestSpan> {
        let inner = self.inner.as_ref()?;
        let parent = remote_parent(headers);
        let span = inner
            .tracer
            .span_builder("http.request")
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.request.method", method.to_string())])
            .start_with_context(&inner.tracer, &parent);
        let cx = span.span_context();
        let traceparent = format!(
            "00-{}-{}-{:02x}",
            cx.trace_id(),
            cx.span_id(),
            cx.trace_flags().to_u8()
        );
        let trace_id = cx.trace_id().to_string();
        if let Ok(v) = HeaderValue::from_str(&traceparent) {
            headers.insert(TRACEPARENT, v);
        }
        Some(RequestSpan { span, trace_id })
    }

    /// Starts the `ws.session` span of a session being opened, a child of
    /// the open request's span (named by its rewritten `traceparent`).
    pub fn session_span(&self, open_headers: &HeaderMap, session: &str) -> Option<SessionSpan> {
        let inner = self.inner.as_ref()?;
        let span = inner
            .tracer
            .span_builder("ws.session")
            .with_kind(SpanKind::Internal)
            .with_attributes([KeyValue::new("wsbridge.session", session.to_owned())])
            .start_with_context(&inner.tracer, &remote_parent(open_headers));
        Some(SessionSpan(span))
    }

    /// Sends what is queued and stops the exporter, waiting at most `within`.
    pub async fn shutdown(&self, within: Duration) {
        let Some(inner) = &self.inner else {
            return;
        };
        // The SDK blocks the calling thread until its task on the runtime
        // has exported: not on a runtime worker.
        let provider = inner.provider.clone();
        let done = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(within, done).await {
            Ok(Ok(Ok(()))) => tracing::debug!("spans flushed"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "span export did not finish"),
            Ok(Err(e)) => tracing::warn!(error = %e, "span export did not finish"),
            Err(_) => tracing::warn!("span export did not finish within the drain"),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The provider shuts down when its last handle goes, blocking on the
        // runtime's task: never let that be a runtime worker. After
        // `shutdown` this does nothing.
        let provider = self.provider.clone();
        std::thread::spawn(move || drop(provider.shutdown()));
    }
}

/// The incoming `traceparent` (and `tracestate`) as a remote parent, or
/// none: the span then starts a trace.
fn remote_parent(headers: &HeaderMap) -> Context {
    let Some(tp) = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
    else {
        return Context::new();
    };
    let (Ok(trace_id), Ok(span_id), Ok(flags)) = (
        TraceId::from_hex(tp.trace_id),
        SpanId::from_hex(tp.parent_id),
        u8::from_str_radix(tp.flags, 16),
    ) else {
        return Context::new();
    };
    let state = headers
        .get(TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        state,
    ))
}

/// A request's span, ended with the access line.
pub struct RequestSpan {
    span: opentelemetry_sdk::trace::Span,
    /// For the access line of a request that started its trace here.
    pub trace_id: String,
}

impl RequestSpan {
    /// `endpoint` is the access line's (`open`, `send`, `passthrough`, ...),
    /// `path` its path (query excluded, session ids shortened).
    pub fn end(mut self, endpoint: &'static str, path: &str, status: u16, outcome: &'static str) {
        self.span.set_attributes([
            KeyValue::new("http.route", endpoint),
            KeyValue::new("url.path", path.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(status)),
            KeyValue::new("wsbridge.outcome", outcome),
        ]);
        if status >= 500 {
            self.span.set_status(Status::error(""));
        }
        self.span.end();
    }
}

/// A session's span, ended when the session ends.
pub struct SessionSpan(opentelemetry_sdk::trace::Span);

impl SessionSpan {
    pub fn end(
        mut self,
        close_code: u16,
        reason_class: &'static str,
        events_down: u64,
        events_up: u64,
    ) {
        self.0.set_attributes([
            KeyValue::new("wsbridge.close_code", i64::from(close_code)),
            KeyValue::new("wsbridge.reason_class", reason_class),
            KeyValue::new(
                "wsbridge.events_down",
                i64::try_from(events_down).unwrap_or(i64::MAX),
            ),
            KeyValue::new(
                "wsbridge.events_up",
                i64::try_from(events_up).unwrap_or(i64::MAX),
            ),
        ]);
        self.0.end();
    }
}

/// The exporter's HTTP client: hyper over rustls, the proxy's own stack.
#[derive(Debug)]
struct Exporter {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Exporter {
    fn new(tls: &rustls::ClientConfig) -> Exporter {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(EXPORT_TIMEOUT));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Exporter {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = request.map(Full::new);
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES).collect().await?;
            Ok::<_, HttpError>(Response::from_parts(parts, body.to_bytes()))
        };
        tokio::time::timeout(EXPORT_TIMEOUT, exchange)
            .await
            .map_err(|_| HttpError::from("the collector did not answer in time"))?
    }
}

impl HttpClient for Exporter {
    // The trait is declared with `async_trait`; this is its expansion.
    fn send_bytes<'s, 'f>(
        &'s self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'f>>
    where
        's: 'f,
        Self: 'f,
    {
        Box::pin(self.send(request))
    }
}
