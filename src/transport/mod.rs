//! The downstream transports, one module each, and what they share: cursor
//! parsing, the JSON form of an event (stream and poll), and the response
//! headers every reader sends.

pub mod channel;
pub mod poll;
pub mod sse;
pub mod stream;

use std::pin::Pin;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};
use crate::error::BridgeError;
use crate::session::replay::{Event, EventData};

/// Events and bytes a streaming reader takes from the queue per write: large
/// enough to coalesce a burst into one write, small enough to bound the
/// buffer each reader holds.
pub const STREAM_BATCH_EVENTS: usize = 1024;
pub const STREAM_BATCH_BYTES: usize = 256 * 1024;

/// Padding every SSE and stream response starts with: enough to push a
/// small buffering proxy (or antivirus filter) to pass the response on, so
/// the first event that follows is seen at once.
pub const PRELUDE_PAD: usize = 2048;

/// The SSE prelude: one comment line of [`PRELUDE_PAD`] spaces.
pub fn sse_prelude() -> Bytes {
    static PRELUDE: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
        let mut out = Vec::with_capacity(PRELUDE_PAD + 4);
        out.push(b':');
        out.resize(PRELUDE_PAD + 1, b' ');
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    });
    PRELUDE.clone()
}

/// The NDJSON prelude: `{"type":"prelude","pad":"<PRELUDE_PAD spaces>"}`.
pub fn stream_prelude() -> Bytes {
    static PRELUDE: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
        let mut out = Vec::with_capacity(PRELUDE_PAD + 32);
        out.extend_from_slice(b"{\"type\":\"prelude\",\"pad\":\"");
        out.resize(out.len() + PRELUDE_PAD, b' ');
        out.extend_from_slice(b"\"}\n");
        Bytes::from(out)
    });
    PRELUDE.clone()
}

/// Parses a cursor: a decimal integer, digits only, no sign, no leading zeros.
/// (The upper bound, the session's last id, is checked on attach.)
pub fn parse_cursor(text: &str) -> Result<u64, BridgeError> {
    let ok = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !ok {
        return Err(BridgeError::BadCursor);
    }
    text.parse().map_err(|_| BridgeError::BadCursor)
}

/// The cursor a reader resumes from: `?cursor` wins over `Last-Event-ID`;
/// with neither, 0.
pub fn resume_cursor(query: &[(String, String)], headers: &HeaderMap) -> Result<u64, BridgeError> {
    if let Some((_, v)) = query.iter().find(|(k, _)| k == "cursor") {
        return parse_cursor(v);
    }
    match headers.get("last-event-id") {
        Some(v) => parse_cursor(v.to_str().map_err(|_| BridgeError::BadCursor)?),
        None => Ok(0),
    }
}

/// A streaming response (the bridge adds `Cache-Control` and
/// `X-Realtime-Transport` to every reader's answer).
pub fn streaming_response<S>(content_type: &'static str, chunks: S) -> Response<Body>
where
    S: futures_util::Stream<Item = Bytes> + Send + 'static,
{
    use futures_util::StreamExt;
    let body = StreamBody::new(chunks.map(|b| Ok::<_, BoxError>(Frame::data(b))));
    let mut resp = Response::new(body.boxed_unsync());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Proxies in front must not buffer an event stream (nginx reads this).
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// The heartbeat of a streaming reader: due once a whole interval has
/// passed without a write. One timer for the response's life, moved only
/// when it fires: a write just records the time (no timer is registered or
/// reset per batch), and a timer that fires early is pushed to a whole
/// interval after the last write.
pub struct Heartbeat {
    every: Duration,
    /// Boxed: the reader's state moves between its body's polls.
    timer: Pin<Box<Sleep>>,
    last_write: Instant,
}

impl Heartbeat {
    pub fn new(every: Duration) -> Heartbeat {
        let now = Instant::now();
        Heartbeat {
            every,
            timer: Box::pin(tokio::time::sleep_until(now + every)),
            last_write: now,
        }
    }

    /// Something was written: the next heartbeat is an interval from now.
    pub fn wrote(&mut self) {
        self.last_write = Instant::now();
    }

    /// Resolves once an interval has passed since the last write (counting
    /// the heartbeat it returns for as a write). Cancel-safe: only the timer
    /// moves.
    pub async fn due(&mut self) {
        loop {
            self.timer.as_mut().await;
            let at = self.last_write + self.every;
            let now = Instant::now();
            if at <= now {
                self.last_write = now;
                self.timer.as_mut().reset(now + self.every);
                return;
            }
            self.timer.as_mut().reset(at);
        }
    }
}

/// A response extension: the body is one frame, made later (a long poll's
/// answer). The HTTP/1.1 front end (`net::h1`) waits for it and writes
/// the head with its `Content-Length`; hyper sends the head at once and the
/// body chunked (HTTP/1.1) or as one DATA frame (HTTP/2).
#[derive(Clone, Copy, Debug)]
pub struct WholeBody;

/// Appends an event as one JSON object, the form poll and stream share:
/// `{"id":7,"type":"text","data":"..."}`. Written directly: this is the hot
/// path, and only strings need escaping.
pub fn write_event_json(out: &mut Vec<u8>, event: &Event) {
    out.extend_from_slice(b"{\"id\":");
    write_u64(out, event.id);
    match &event.data {
        EventData::Text(text) => {
            out.extend_from_slice(b",\"type\":\"text\",\"data\":");
            // Valid UTF-8 (tungstenite checks every text frame), so it
            // needs no second check here.
            write_json_str(out, text);
        }
        EventData::Binary(data) => {
            out.extend_from_slice(b",\"type\":\"binary\",\"data\":\"");
            write_base64(out, data);
            out.push(b'"');
        }
        EventData::Close { code, reason } => {
            out.extend_from_slice(b",\"type\":\"close\",\"code\":");
            write_u64(out, u64::from(*code));
            out.extend_from_slice(b",\"reason\":");
            write_json_str(out, reason.as_bytes());
        }
        EventData::Gap { from, to } => {
            out.extend_from_slice(b",\"type\":\"gap\",\"from\":");
            write_u64(out, *from);
            out.extend_from_slice(b",\"to\":");
            write_u64(out, *to);
        }
    }
    out.push(b'}');
}

/// Appends UTF-8 `text` as a JSON string. Only `"`, `\\` and control bytes
/// are escaped (as serde_json does); every other byte, the bytes of
/// multi-byte characters included, is copied as it is. The hot path of
/// stream and poll: most text needs no escape, so it is checked 16 bytes at
/// a time (a loop the compiler vectorises) and copied in runs.
pub fn write_json_str(out: &mut Vec<u8>, text: &[u8]) {
    fn needs_escape(b: u8) -> bool {
        (b < 0x20) | (b == b'"') | (b == b'\\')
    }
    out.reserve(text.len() + 2);
    out.push(b'"');
    // `text[..copied]` is written.
    let mut copied = 0;
    for (n, block) in text.chunks(16).enumerate() {
        if !block.iter().fold(false, |any, &b| any | needs_escape(b)) {
            continue;
        }
        for (k, &b) in block.iter().enumerate() {
            if needs_escape(b) {
                let at = n * 16 + k;
                out.extend_from_slice(&text[copied..at]);
                match b {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    0x08 => out.extend_from_slice(b"\\b"),
                    0x0c => out.extend_from_slice(b"\\f"),
                    _ => {
                        const HEX: &[u8; 16] = b"0123456789abcdef";
                        out.extend_from_slice(b"\\u00");
                        out.push(HEX[usize::from(b >> 4)]);
                        out.push(HEX[usize::from(b & 0xf)]);
                    }
                }
                copied = at + 1;
            }
        }
    }
    out.extend_from_slice(&text[copied..]);
    out.push(b'"');
}

pub fn write_base64(out: &mut Vec<u8>, data: &[u8]) {
    let start = out.len();
    out.resize(start + data.len().div_ceil(3) * 4, 0);
    // The slice is exactly the encoded length, so this cannot fail.
    let _ = STANDARD.encode_slice(data, &mut out[start..]);
}

/// Appends a decimal number (itoa: no formatting machinery on the hot path).
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A buffer large enough for a batch in any of the wire forms, so encoding
/// never reallocates: the encoded data plus framing per event.
pub fn batch_buffer(events: &[Event]) -> Vec<u8> {
    let data: usize = events
        .iter()
        .map(|e| crate::session::replay::encoded_len(&e.data))
        .sum();
    Vec::with_capacity(data + 48 * events.len())
}

/// True when the batch ends with the session's close event: the reader is done.
pub fn ends_session(events: &[Event]) -> bool {
    events
        .last()
        .is_some_and(|e| matches!(e.data, EventData::Close { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_grammar() {
        assert_eq!(parse_cursor("0").unwrap(), 0);
        assert_eq!(parse_cursor("17").unwrap(), 17);
        for bad in [
            "",
            "+1",
            "01",
            "-1",
            "1.0",
            " 1",
            "1a",
            "99999999999999999999999",
        ] {
            assert!(parse_cursor(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn event_json_is_valid_and_exact() {
        let text = "a\"b\\c\r\n\0😀";
        let mut out = Vec::new();
        write_event_json(
            &mut out,
            &Event {
                id: 7,
                data: EventData::Text(Bytes::from(text)),
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 7, "type": "text", "data": text})
        );

        out.clear();
        write_event_json(
            &mut out,
            &Event {
                id: 8,
                data: EventData::Binary(Bytes::from_static(&[0, 255, 1])),
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 8, "type": "binary", "data": "AP8B"})
        );

        out.clear();
        write_event_json(
            &mut out,
            &Event {
                id: 3,
                data: EventData::Gap { from: 2, to: 3 },
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 3, "type": "gap", "from": 2, "to": 3})
        );

        out.clear();
        write_event_json(
            &mut out,
            &Event {
                id: 9,
                data: EventData::Close {
                    code: 1000,
                    reason: "bye".into(),
                },
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 9, "type": "close", "code": 1000, "reason": "bye"})
        );
    }
}
