//! `GET {prefix}/sessions/{id}/poll?cursor=N&wait=S`: cursor-based long-poll.
//! Answers at once when events after the cursor are held, else waits up to
//! `wait` seconds for the first one.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::{WholeBody, write_event_json};
use crate::body::{Body, BoxError};
use crate::error::BridgeError;
use crate::session::{Batch, Reader};

/// The wait when the request names none.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(25);

/// Parses `wait`: seconds, a non-negative decimal number.
pub fn parse_wait(text: &str, max: Duration) -> Result<Duration, BridgeError> {
    let bad = || {
        BridgeError::bad_request(
            "bad_wait",
            "wait must be a number of seconds, like 25 or 0.5",
        )
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    let secs: f64 = text.parse().map_err(|_| bad())?;
    // Duration's own conversion refuses what does not fit; anything that
    // large is over the cap anyway. The cap is applied as a Duration so
    // float rounding can never exceed it.
    let wait = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
    Ok(wait.min(max))
}

/// The answer to a long poll. Its body is one frame, made once events come
/// or `wait` ends: the response (marked [`WholeBody`]) returns at once, so
/// nothing of the request's handling is held while the poll waits.
pub fn respond(
    mut reader: Reader,
    wait: Duration,
    max_events: usize,
    max_bytes: usize,
) -> Response<Body> {
    let answer = async move {
        let start = reader.cursor();
        let batch = match reader.try_next(max_events, max_bytes) {
            Batch::Events(events) if events.is_empty() && !reader.finished() => {
                tokio::select! {
                    batch = reader.next(max_events, max_bytes) => batch,
                    _ = tokio::time::sleep(wait) => Batch::Events(Vec::new()),
                }
            }
            other => other,
        };
        let mut out = Vec::with_capacity(128);
        match batch {
            Batch::Superseded => {
                out.extend_from_slice(
                    format!("{{\"cursor\":{start},\"events\":[],\"superseded\":true}}").as_bytes(),
                );
            }
            Batch::Events(events) => {
                let cursor = events.last().map_or(start, |e| e.id);
                out.extend_from_slice(format!("{{\"cursor\":{cursor},\"events\":[").as_bytes());
                for (i, event) in events.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_event_json(&mut out, event);
                }
                out.extend_from_slice(b"]}");
            }
        }
        Ok::<_, BoxError>(Frame::data(Bytes::from(out)))
    };
    let mut resp = Response::new(StreamBody::new(stream::once(answer)).boxed_unsync());
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.extensions_mut().insert(WholeBody);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_grammar_and_cap() {
        let max = Duration::from_secs(30);
        assert_eq!(parse_wait("0", max).unwrap(), Duration::ZERO);
        assert_eq!(parse_wait("0.5", max).unwrap(), Duration::from_millis(500));
        assert_eq!(parse_wait("99", max).unwrap(), max);
        for bad in ["", "-1", "abc", "1e3", "inf", "1..2"] {
            assert!(parse_wait(bad, max).is_err(), "{bad:?}");
        }
    }
}
