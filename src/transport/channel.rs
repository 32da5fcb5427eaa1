//! `GET {prefix}/channels/{id}/{sse,stream,poll}`: a channel's events, each
//! the stream/poll event object tagged with its session,
//! `{"session":"S","id":7,"type":"text","data":"..."}`, and
//! `{"session":"S","type":"detached"}` when a session leaves the channel.
//! SSE carries each object as one `data:` line (no event name, no `id:`:
//! a channel resumes from `?cursors`), stream as NDJSON lines, poll as
//! `{"events":[...],"cursors":{"S":M}}`. The `?cursors` parser is here too.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio_util::sync::CancellationToken;

use super::{
    STREAM_BATCH_BYTES, STREAM_BATCH_EVENTS, WholeBody, write_event_json, write_json_str, write_u64,
};
use crate::body::{Body, BoxError};
use crate::error::BridgeError;
use crate::session::channel::{ChannelBatch, ChannelReader, Item};
use crate::session::registry::id_len_ok;

/// Parses `?cursors=SID:N,SID:N`: session ids in the id format, each with
/// a cursor in the cursor grammar, none repeated, at most `max` of them.
/// Empty is none. Anything else is `bad_cursor`.
pub fn parse_cursors(text: &str, max: usize) -> Result<Vec<(String, u64)>, BridgeError> {
    let mut out: Vec<(String, u64)> = Vec::new();
    if text.is_empty() {
        return Ok(out);
    }
    for entry in text.split(',') {
        let (id, cursor) = entry.split_once(':').ok_or(BridgeError::BadCursor)?;
        let id_ok = id_len_ok(id)
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok || out.iter().any(|(seen, _)| seen == id) || out.len() >= max {
            return Err(BridgeError::BadCursor);
        }
        out.push((id.to_owned(), super::parse_cursor(cursor)?));
    }
    Ok(out)
}

/// How an SSE channel response is written.
pub struct SseSettings {
    pub heartbeat: Duration,
    pub retry: Duration,
    /// Also send each heartbeat as `event: heartbeat` (see the session SSE).
    pub named_heartbeat: bool,
}

/// Which wire form a streaming channel response takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Sse,
    Ndjson,
}

/// Appends one item as its JSON object.
pub fn write_item_json(out: &mut Vec<u8>, item: &Item, scratch: &mut Vec<u8>) {
    match item {
        Item::Events(id, events) => {
            for (i, event) in events.iter().enumerate() {
                if i > 0 {
                    out.push(b'\n');
                }
                write_tagged(out, id, event, scratch);
            }
        }
        Item::Detached(id) => {
            out.extend_from_slice(b"{\"session\":");
            write_json_str(out, id.as_bytes());
            out.extend_from_slice(b",\"type\":\"detached\"}");
        }
    }
}

/// `{"session":"S",` then the event object without its `{`.
fn write_tagged(
    out: &mut Vec<u8>,
    id: &str,
    event: &crate::session::replay::Event,
    scratch: &mut Vec<u8>,
) {
    scratch.clear();
    write_event_json(scratch, event);
    out.extend_from_slice(b"{\"session\":");
    write_json_str(out, id.as_bytes());
    out.push(b',');
    out.extend_from_slice(&scratch[1..]);
}

/// Every item of a batch, one object per line (`data: ` first for SSE).
fn encode(items: &[Item], form: Form) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut scratch = Vec::with_capacity(128);
    let mut line = Vec::with_capacity(128);
    for item in items {
        match item {
            Item::Events(id, events) => {
                for event in events {
                    line.clear();
                    write_tagged(&mut line, id, event, &mut scratch);
                    push_line(&mut out, &line, form);
                }
            }
            Item::Detached(_) => {
                line.clear();
                write_item_json(&mut line, item, &mut scratch);
                push_line(&mut out, &line, form);
            }
        }
    }
    out
}

fn push_line(out: &mut Vec<u8>, json: &[u8], form: Form) {
    match form {
        // The JSON has no raw line breaks (they are escaped), so one line.
        Form::Sse => {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(json);
            out.extend_from_slice(b"\n\n");
        }
        Form::Ndjson => {
            out.extend_from_slice(json);
            out.push(b'\n');
        }
    }
}

pub fn sse(
    reader: ChannelReader,
    settings: SseSettings,
    closing: CancellationToken,
) -> Response<Body> {
    let mut first = super::sse_prelude().to_vec();
    first.extend_from_slice(format!("retry: {}\n\n", settings.retry.as_millis()).as_bytes());
    // As on a session's SSE: with `heartbeat=event`, one heartbeat at once,
    // in the same write, so the client's probe window sees an event even on
    // an idle channel (an EventSource hides the prelude comment).
    if settings.named_heartbeat {
        first.extend_from_slice(b"event: heartbeat\ndata:\n\n");
    }
    let heartbeat = if settings.named_heartbeat {
        Bytes::from_static(b": hb\n\nevent: heartbeat\ndata:\n\n")
    } else {
        Bytes::from_static(b": hb\n\n")
    };
    streaming(
        reader,
        Form::Sse,
        Bytes::from(first),
        settings.heartbeat,
        heartbeat,
        Bytes::from_static(b"event: superseded\ndata: {}\n\n"),
        closing,
        "text/event-stream; charset=utf-8",
    )
}

pub fn ndjson(
    reader: ChannelReader,
    heartbeat: Duration,
    closing: CancellationToken,
) -> Response<Body> {
    streaming(
        reader,
        Form::Ndjson,
        super::stream_prelude(),
        heartbeat,
        Bytes::from_static(b"{\"type\":\"heartbeat\"}\n"),
        Bytes::from_static(b"{\"type\":\"superseded\"}\n"),
        closing,
        "application/x-ndjson",
    )
}

struct Streaming {
    reader: ChannelReader,
    first: Option<Bytes>,
    done: bool,
    /// The drain has begun: the response ends once every session on the
    /// channel has delivered its close (the drain closes them all).
    draining: bool,
}

#[allow(
    clippy::too_many_arguments,
    reason = "one private constructor of two forms"
)]
fn streaming(
    reader: ChannelReader,
    form: Form,
    first: Bytes,
    every: Duration,
    heartbeat: Bytes,
    superseded: Bytes,
    closing: CancellationToken,
    content_type: &'static str,
) -> Response<Body> {
    let state = Streaming {
        reader,
        first: Some(first),
        done: false,
        draining: false,
    };
    let chunks = stream::unfold(state, move |mut st| {
        let (heartbeat, superseded, closing) =
            (heartbeat.clone(), superseded.clone(), closing.clone());
        async move {
            if st.done {
                return None;
            }
            if let Some(first) = st.first.take() {
                return Some((first, st));
            }
            loop {
                if st.draining && st.reader.all_finished() {
                    return None;
                }
                // `next` is cancel-safe: events are taken only when it returns.
                let batch = tokio::select! {
                    batch = st.reader.next(STREAM_BATCH_EVENTS, STREAM_BATCH_BYTES) => Some(batch),
                    _ = tokio::time::sleep(every) => None,
                    // Once: then the loop checks whether the sessions are done.
                    _ = closing.cancelled(), if !st.draining => {
                        st.draining = true;
                        continue;
                    }
                };
                let chunk = match batch {
                    None => heartbeat,
                    Some(ChannelBatch::Superseded) => {
                        st.done = true;
                        superseded
                    }
                    Some(ChannelBatch::Ended) => return None,
                    Some(ChannelBatch::Items(items)) => Bytes::from(encode(&items, form)),
                };
                return Some((chunk, st));
            }
        }
    });
    super::streaming_response(content_type, chunks)
}

/// The answer to a channel long poll: `{"events":[...],"cursors":{...}}`,
/// made once events come or `wait` ends (see the session poll).
pub fn poll(
    mut reader: ChannelReader,
    wait: Duration,
    max_events: usize,
    max_bytes: usize,
) -> Response<Body> {
    let answer = async move {
        let batch = match reader.try_next(max_events, max_bytes) {
            ChannelBatch::Items(items) if items.is_empty() => {
                tokio::select! {
                    batch = reader.next(max_events, max_bytes) => batch,
                    _ = tokio::time::sleep(wait) => ChannelBatch::Items(Vec::new()),
                }
            }
            other => other,
        };
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"{\"events\":[");
        let (items, superseded) = match batch {
            ChannelBatch::Items(items) => (items, false),
            ChannelBatch::Superseded | ChannelBatch::Ended => (Vec::new(), true),
        };
        let mut scratch = Vec::with_capacity(128);
        let mut first = true;
        for item in &items {
            if !first {
                out.push(b',');
            }
            first = false;
            let start = out.len();
            write_item_json(&mut out, item, &mut scratch);
            // write_item_json separates a session's events by line breaks.
            for b in &mut out[start..] {
                if *b == b'\n' {
                    *b = b',';
                }
            }
        }
        out.extend_from_slice(b"],\"cursors\":{");
        for (i, (id, cursor)) in reader.cursors().iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(&mut out, id.as_bytes());
            out.push(b':');
            write_u64(&mut out, *cursor);
        }
        out.push(b'}');
        if superseded {
            out.extend_from_slice(b",\"superseded\":true");
        }
        out.push(b'}');
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

    const A: &str = "AAAAAAAAAAAAAAAAAAAAAA";
    const B: &str = "BBBBBBBBBBBBBBBBBBBBB_";

    #[test]
    fn cursors_grammar() {
        assert_eq!(parse_cursors("", 4).unwrap(), vec![]);
        assert_eq!(
            parse_cursors(&format!("{A}:0,{B}:17"), 4).unwrap(),
            vec![(A.to_owned(), 0), (B.to_owned(), 17)]
        );
        for bad in [
            A.to_owned(),
            format!("{A}:"),
            format!("{A}:01"),
            format!("{A}:1,{A}:2"),
            format!("{A}:1,"),
            format!(",{A}:1"),
            "short:1".to_owned(),
            format!("{A}:-1"),
            format!("{A}:1:2"),
        ] {
            assert!(parse_cursors(&bad, 4).is_err(), "{bad:?}");
        }
        assert!(
            parse_cursors(&format!("{A}:1,{B}:2"), 1).is_err(),
            "over max"
        );
    }
}
