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
use crate::session::replay::encoded_len;

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

/// Appends one item as its JSON object (a session's events separated by
/// line breaks).
pub fn write_item_json(out: &mut Vec<u8>, item: &Item) {
    match item {
        Item::Events(id, events) => {
            for (i, event) in events.iter().enumerate() {
                if i > 0 {
                    out.push(b'\n');
                }
                write_tagged(out, id, event);
            }
        }
        Item::Detached(id) => {
            out.extend_from_slice(b"{\"session\":");
            write_json_str(out, id.as_bytes());
            out.extend_from_slice(b",\"type\":\"detached\"}");
        }
    }
}

/// `{"session":"S",` then the event object without its `{`, written in
/// place: the event's `{` becomes the comma, so nothing is copied twice.
fn write_tagged(out: &mut Vec<u8>, id: &str, event: &crate::session::replay::Event) {
    out.extend_from_slice(b"{\"session\":");
    write_json_str(out, id.as_bytes());
    let brace = out.len();
    write_event_json(out, event);
    out[brace] = b',';
}

/// Every item of a batch, one object per line (`data: ` first for SSE),
/// into one buffer sized for the batch.
fn encode(items: &[Item], form: Form) -> Vec<u8> {
    // Data, the id twice over (escapes are rare) and the framing.
    let hint: usize = items
        .iter()
        .map(|item| match item {
            Item::Events(id, events) => events
                .iter()
                .map(|e| encoded_len(&e.data) + 2 * id.len() + 64)
                .sum(),
            Item::Detached(id) => 2 * id.len() + 48,
        })
        .sum();
    let mut out = Vec::with_capacity(hint);
    for item in items {
        match item {
            Item::Events(id, events) => {
                for event in events {
                    open_line(&mut out, form);
                    write_tagged(&mut out, id, event);
                    close_line(&mut out, form);
                }
            }
            Item::Detached(_) => {
                open_line(&mut out, form);
                write_item_json(&mut out, item);
                close_line(&mut out, form);
            }
        }
    }
    out
}

// The JSON has no raw line breaks (they are escaped), so one line each.
fn open_line(out: &mut Vec<u8>, form: Form) {
    if form == Form::Sse {
        out.extend_from_slice(b"data: ");
    }
}

fn close_line(out: &mut Vec<u8>, form: Form) {
    match form {
        Form::Sse => out.extend_from_slice(b"\n\n"),
        Form::Ndjson => out.push(b'\n'),
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
        let mut first = true;
        for item in &items {
            if !first {
                out.push(b',');
            }
            first = false;
            let start = out.len();
            write_item_json(&mut out, item);
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
    fn events_are_tagged_in_place_for_both_forms() {
        use crate::session::replay::{Event, EventData};
        let event = |id, data: EventData| Event { id, data };
        let items = [
            Item::Events(
                A.into(),
                vec![
                    event(7, EventData::Text(Bytes::from_static(b"a\"b"))),
                    event(
                        8,
                        EventData::Close {
                            code: 1000,
                            reason: "bye".into(),
                        },
                    ),
                ],
            ),
            Item::Detached(B.to_owned()),
        ];
        let lines = [
            format!(r#"{{"session":"{A}","id":7,"type":"text","data":"a\"b"}}"#),
            format!(r#"{{"session":"{A}","id":8,"type":"close","code":1000,"reason":"bye"}}"#),
            format!(r#"{{"session":"{B}","type":"detached"}}"#),
        ];
        let ndjson: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let sse: String = lines.iter().map(|l| format!("data: {l}\n\n")).collect();
        assert_eq!(
            String::from_utf8(encode(&items, Form::Ndjson)).unwrap(),
            ndjson
        );
        assert_eq!(String::from_utf8(encode(&items, Form::Sse)).unwrap(), sse);
    }

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
