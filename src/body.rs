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
/// A request body as hyper reads it, under its deadline: what the service
/// gets and the pass-through forwards.
pub type Inbound = Deadline<hyper::body::Incoming>;

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
