//! The body types of requests and responses, and small constructors for them.

mod deadline;

pub(crate) use self::deadline::recv_allowance;
pub use self::deadline::{BodyError, Deadline};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Empty, Full};
use serde_json::Value;

/// The body type of every response the proxy writes.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of requests to the bridge's own endpoints, which come from
/// hyper (under their [`Deadline`]) or from the HTTP/1.1 front end (whose
/// bodies cannot fail). A concrete error type: with a boxed one, rustc
/// cannot prove the handlers' futures `Send`.
pub type RequestBody = BoxBody<Bytes, BodyError>;
/// A pass-through request's body: as hyper reads it, under its deadline,
/// or none (a bodyless request the HTTP/1.1 front end read itself). What
/// the pass-through forwards.
pub struct Inbound(Option<Deadline<hyper::body::Incoming>>);

impl Inbound {
    pub fn hyper(body: Deadline<hyper::body::Incoming>) -> Inbound {
        Inbound(Some(body))
    }

    /// The body of a request with none.
    pub fn empty() -> Inbound {
        Inbound(None)
    }

    /// hyper's body, for a request handed on whole (a WebSocket upgrade,
    /// which only hyper serves); none for the front end's.
    pub fn into_incoming(self) -> Option<hyper::body::Incoming> {
        self.0.map(Deadline::into_inner)
    }
}

impl hyper::body::Body for Inbound {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        match &mut self.0 {
            Some(body) => std::pin::Pin::new(body).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(hyper::body::Body::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0.as_ref().map_or_else(
            || hyper::body::SizeHint::with_exact(0),
            hyper::body::Body::size_hint,
        )
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A JSON response with `Cache-Control: no-store`, as every bridge response is.
pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An empty response with this status (204, 304).
pub fn status_only(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    resp
}
