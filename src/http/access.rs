//! The access log: one line per request, target `wsbridge::access`,
//! written when the response body is done with (finished, failed, or
//! dropped because the client went away), so it carries the bytes sent and
//! the whole duration. Field names are stable and listed in
//! docs/operations.md.

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header;
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::forwarded::ConnInfo;
use crate::state::AppState;
use crate::telemetry::RequestSpan;
use crate::trace::{self, REQUEST_ID, RequestTrace};

/// At most this much of a `User-Agent` is logged, so a client cannot make
/// one line arbitrarily long.
const MAX_USER_AGENT: usize = 256;

/// What is known of a request when it arrives.
pub(super) struct Arrival {
    pub start: Instant,
    pub method: Method,
    /// The path as received, query excluded; `observe` shortens session ids.
    pub path: String,
    version: Version,
    client: IpAddr,
    user_agent: Option<String>,
    /// The declared `Content-Length`; none for a chunked body.
    bytes_in: Option<u64>,
    trace: RequestTrace,
    /// The request's span, when spans are exported.
    span: Option<RequestSpan>,
}

impl Arrival {
    /// Reads the request's identity and normalises its trace headers (see
    /// [`trace::on_arrival`]) before anything forwards them.
    pub fn new<B>(req: &mut Request<B>, conn: ConnInfo, state: &AppState) -> Arrival {
        let start = Instant::now();
        let mut trace = trace::on_arrival(req.headers_mut());
        // After the check: the span's parent is the checked traceparent,
        // and what is forwarded names the span.
        let method = req.method().clone();
        let span = state.telemetry.request_span(&method, req.headers_mut());
        if let Some(span) = &span {
            trace.trace_id.get_or_insert_with(|| span.trace_id.clone());
        }
        let headers = req.headers();
        let bytes_in = match headers.get(header::CONTENT_LENGTH) {
            Some(v) => v.to_str().ok().and_then(|v| v.parse().ok()),
            None if headers.contains_key(header::TRANSFER_ENCODING) => None,
            None => Some(0),
        };
        let user_agent = headers.get(header::USER_AGENT).map(|v| {
            let ua = String::from_utf8_lossy(v.as_bytes());
            let mut end = ua.len().min(MAX_USER_AGENT);
            while !ua.is_char_boundary(end) {
                end -= 1;
            }
            ua[..end].to_owned()
        });
        Arrival {
            start,
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            version: req.version(),
            client: conn.client_ip(headers, &state.config.security),
            user_agent,
            bytes_in,
            trace,
            span,
        }
    }

    /// Echoes the request id on the response and arranges for the access
    /// line once its body is done. `path` is the loggable path.
    pub fn respond(
        self,
        path: String,
        endpoint: &'static str,
        mut resp: Response<Body>,
    ) -> Response<Body> {
        resp.headers_mut()
            .insert(REQUEST_ID, self.trace.request_id.clone());
        let line = Line {
            arrival: self,
            path,
            endpoint,
            status: resp.status().as_u16(),
        };
        resp.map(|inner| {
            Logged {
                inner,
                line: Some(line),
                bytes_out: 0,
                ended: false,
                failed: false,
            }
            .boxed_unsync()
        })
    }
}

struct Line {
    arrival: Arrival,
    path: String,
    endpoint: &'static str,
    status: u16,
}

impl Line {
    fn write(self, bytes_out: u64, outcome: &'static str) {
        let mut a = self.arrival;
        if let Some(span) = a.span.take() {
            span.end(self.endpoint, &self.path, self.status, outcome);
        }
        let request_id = a.trace.request_id.to_str().unwrap_or_default();
        tracing::info!(
            target: "wsbridge::access",
            client = %a.client,
            method = %a.method,
            path = %self.path,
            version = ?a.version,
            status = self.status,
            endpoint = self.endpoint,
            bytes_in = a.bytes_in,
            bytes_out,
            duration_ms = a.start.elapsed().as_secs_f64() * 1000.0,
            user_agent = a.user_agent.as_deref(),
            request_id,
            trace_id = a.trace.trace_id.as_deref(),
            outcome,
            "request"
        );
    }
}

/// A response body that counts what it sends and writes the access line
/// when it is dropped: whoever serves the response (hyper, the HTTP/1.1
/// front end) drops it when done, or when the client goes.
struct Logged {
    inner: Body,
    line: Option<Line>,
    bytes_out: u64,
    /// The inner body said it had no more frames.
    ended: bool,
    failed: bool,
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.failed = true,
            Poll::Ready(None) => self.ended = true,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let Some(line) = self.line.take() else {
            return;
        };
        let outcome = if self.failed {
            "error"
        } else if self.ended || self.inner.is_end_stream() {
            "complete"
        } else {
            // The client went away, or the connection closed, before the
            // body ended: normal for a reader the client stopped.
            "aborted"
        };
        line.write(self.bytes_out, outcome);
    }
}
