//! `GET {prefix}/sessions/{id}/sse`: events as `text/event-stream`.
//!
//! A text frame becomes one `data:` line per line, with no `event:` line, so
//! `EventSource.onmessage` gets it unchanged. SSE cannot carry a `\r` inside
//! data (it ends a line), so a text frame holding one is sent as
//! `event: text.b64` with the standard base64 of its UTF-8 bytes; the
//! JavaScript client decodes it, so every text frame arrives byte-exact.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::Response;

use super::{
    Heartbeat, STREAM_BATCH_BYTES, STREAM_BATCH_EVENTS, ends_session, write_base64, write_u64,
};
use crate::body::Body;
use crate::session::replay::{Event, EventData};
use crate::session::{Batch, Reader};

/// Event names the proxy itself uses: a frame's own type field never takes one.
const RESERVED: [&str; 7] = [
    "binary",
    "close",
    "gap",
    "superseded",
    "text.b64",
    "message",
    "heartbeat",
];

pub struct Settings {
    pub heartbeat: Duration,
    pub retry: Duration,
    /// `sse_event_field` of the session's route.
    pub event_field: Option<String>,
    /// Also send each heartbeat as `event: heartbeat` (no id), for clients
    /// that must see it (EventSource hides comments).
    pub named_heartbeat: bool,
}

/// The SSE response for an attached reader.
pub fn respond(reader: Reader, settings: Settings) -> Response<Body> {
    // The prelude, then the retry line, in one chunk before any event. With
    // `heartbeat=event`, one heartbeat at once after them: the client's probe
    // window waits for a first event, and a middlebox that holds streamed
    // bodies is told apart from a quiet session that way.
    let mut first = super::sse_prelude().to_vec();
    first.extend_from_slice(format!("retry: {}\n\n", settings.retry.as_millis()).as_bytes());
    if settings.named_heartbeat {
        first.extend_from_slice(b"event: heartbeat\ndata:\n\n");
    }
    let first = Bytes::from(first);
    let state = State {
        reader,
        heartbeat: Heartbeat::new(settings.heartbeat),
        settings,
        first: Some(first),
        done: false,
    };
    let chunks = stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(first) = st.first.take() {
            return Some((first, st));
        }
        // `next` is cancel-safe: events are taken only when it returns.
        // Biased: events first, so the timer is polled only when there are
        // none (and it then only re-registers its waker).
        let batch = tokio::select! {
            biased;
            batch = st.reader.next(STREAM_BATCH_EVENTS, STREAM_BATCH_BYTES) => Some(batch),
            () = st.heartbeat.due() => None,
        };
        if batch.is_some() {
            st.heartbeat.wrote();
        }
        let chunk = match batch {
            None if st.settings.named_heartbeat => {
                Bytes::from_static(b": hb\n\nevent: heartbeat\ndata:\n\n")
            }
            None => Bytes::from_static(b": hb\n\n"),
            Some(Batch::Superseded) => {
                st.done = true;
                Bytes::from_static(b"event: superseded\ndata: {}\n\n")
            }
            Some(Batch::Events(events)) => {
                st.done = events.is_empty() || ends_session(&events);
                let mut out = super::batch_buffer(&events);
                for event in &events {
                    write_event(&mut out, event, st.settings.event_field.as_deref());
                }
                Bytes::from(out)
            }
        };
        Some((chunk, st))
    });
    super::streaming_response("text/event-stream; charset=utf-8", chunks)
}

struct State {
    reader: Reader,
    /// When the next heartbeat is due: an interval after the last write.
    heartbeat: Heartbeat,
    settings: Settings,
    /// The prelude and the `retry:` line, sent before anything else.
    first: Option<Bytes>,
    /// Set after the close event or a supersede: the response ends.
    done: bool,
}

/// Appends one event in SSE form.
pub fn write_event(out: &mut Vec<u8>, event: &Event, event_field: Option<&str>) {
    out.extend_from_slice(b"id: ");
    write_u64(out, event.id);
    out.push(b'\n');
    match &event.data {
        EventData::Text(text) => write_text(out, text, event_field),
        EventData::Binary(data) => {
            out.extend_from_slice(b"event: binary\ndata: ");
            write_base64(out, data);
            out.push(b'\n');
        }
        EventData::Close { code, reason } => {
            out.extend_from_slice(b"event: close\ndata: ");
            let json = serde_json::json!({"code": code, "reason": reason});
            out.extend_from_slice(json.to_string().as_bytes());
            out.push(b'\n');
        }
        EventData::Gap { from, to } => {
            out.extend_from_slice(
                format!("event: gap\ndata: {{\"from\":{from},\"to\":{to}}}\n").as_bytes(),
            );
        }
    }
    out.push(b'\n');
}

/// A text frame's lines (the caller ends the event): one `data:` line per
/// line, or `text.b64` when it holds a `\r`. One scan finds the first line
/// break of either kind; most frames have none and are written at once.
fn write_text(out: &mut Vec<u8>, text: &[u8], event_field: Option<&str>) {
    let first_break = memchr::memchr2(b'\r', b'\n', text);
    let has_cr = first_break
        .is_some_and(|i| text[i] == b'\r' || memchr::memchr(b'\r', &text[i..]).is_some());
    if has_cr {
        out.extend_from_slice(b"event: text.b64\ndata: ");
        write_base64(out, text);
        out.push(b'\n');
        return;
    }
    if let Some(name) = event_field.and_then(|f| event_name(text, f)) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    match first_break {
        None => {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(text);
            out.push(b'\n');
        }
        Some(_) => {
            for line in text.split(|b| *b == b'\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line);
                out.push(b'\n');
            }
        }
    }
}

/// The event name for a JSON-object frame: the value of `field`, when it is a
/// plain token of `[A-Za-z0-9_.:-]` and not one of the proxy's own names.
fn event_name(text: &[u8], field: &str) -> Option<String> {
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(text).ok()?;
    let name = object.get(field)?.as_str()?;
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    (plain && !RESERVED.contains(&name)).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(data: EventData, field: Option<&str>) -> String {
        let mut out = Vec::new();
        write_event(&mut out, &Event { id: 5, data }, field);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_lines_become_data_lines() {
        assert_eq!(
            sse(EventData::Text("a\nb".into()), None),
            "id: 5\ndata: a\ndata: b\n\n"
        );
        assert_eq!(sse(EventData::Text("".into()), None), "id: 5\ndata: \n\n");
        assert_eq!(
            sse(EventData::Text("x\n\n".into()), None),
            "id: 5\ndata: x\ndata: \ndata: \n\n"
        );
        assert_eq!(
            sse(EventData::Text(" lead".into()), None),
            "id: 5\ndata:  lead\n\n"
        );
    }

    #[test]
    fn carriage_return_goes_base64() {
        assert_eq!(
            sse(EventData::Text("a\r\nb".into()), None),
            "id: 5\nevent: text.b64\ndata: YQ0KYg==\n\n"
        );
    }

    #[test]
    fn binary_close_gap() {
        assert_eq!(
            sse(EventData::Binary(Bytes::from_static(&[0, 255])), None),
            "id: 5\nevent: binary\ndata: AP8=\n\n"
        );
        assert_eq!(
            sse(
                EventData::Close {
                    code: 1000,
                    reason: "bye".into()
                },
                None
            ),
            "id: 5\nevent: close\ndata: {\"code\":1000,\"reason\":\"bye\"}\n\n"
        );
        assert_eq!(
            sse(EventData::Gap { from: 2, to: 5 }, None),
            "id: 5\nevent: gap\ndata: {\"from\":2,\"to\":5}\n\n"
        );
    }

    #[test]
    fn named_events_only_for_plain_tokens() {
        let f = Some("type");
        assert_eq!(
            sse(EventData::Text(r#"{"type":"chat.msg"}"#.into()), f),
            "id: 5\nevent: chat.msg\ndata: {\"type\":\"chat.msg\"}\n\n"
        );
        assert!(!sse(EventData::Text(r#"{"type":"a b"}"#.into()), f).contains("event:"));
        assert!(!sse(EventData::Text(r#"{"type":"close"}"#.into()), f).contains("event:"));
        assert!(!sse(EventData::Text(r#"{"type":1}"#.into()), f).contains("event:"));
        assert!(!sse(EventData::Text("not json".into()), f).contains("event:"));
        assert!(!sse(EventData::Text(r#"{"type":"x"}"#.into()), None).contains("event:"));
    }

    /// The heartbeat on tokio's paused clock: a comment every interval of
    /// silence, counted from the last write, not from the response's start.
    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_gets_a_heartbeat_each_interval_of_silence() {
        use crate::config::{Overflow, Transport};
        use crate::metrics::Metrics;
        use crate::session::registry::Registry;
        use crate::session::testing::{limits, session};
        use http_body_util::BodyExt;
        use std::sync::Arc;
        use tokio::time::{Instant, sleep};

        let registry = Registry::new(10, 0, 1 << 20);
        let (session, _handle) = session(
            &registry,
            limits(1 << 20, Overflow::Backpressure),
            Arc::new(Metrics::new()),
        );
        let reader = session.attach(Transport::Sse, 0).unwrap();
        let heartbeat = Duration::from_secs(15);
        let mut body = respond(
            reader,
            Settings {
                heartbeat,
                retry: Duration::from_secs(1),
                event_field: None,
                named_heartbeat: false,
            },
        )
        .into_body();
        let mut next = async || {
            let frame = body.frame().await.unwrap().unwrap();
            String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
        };
        let t0 = Instant::now();
        // The prelude (a comment of padding) and the retry line, at once.
        let prelude = format!(":{}\n\n", " ".repeat(super::super::PRELUDE_PAD));
        assert_eq!(next().await, format!("{prelude}retry: 1000\n\n"));
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(next().await, ": hb\n\n");
        assert_eq!(t0.elapsed(), heartbeat);
        // An event 5 s later goes out at once...
        let pusher = Arc::clone(&session);
        tokio::spawn(async move {
            sleep(Duration::from_secs(5)).await;
            let _ = pusher.push(EventData::Text(Bytes::from_static(b"hi")));
        });
        assert_eq!(next().await, "id: 1\ndata: hi\n\n");
        assert_eq!(t0.elapsed(), heartbeat + Duration::from_secs(5));
        // ...and the next heartbeat comes a whole interval after it.
        assert_eq!(next().await, ": hb\n\n");
        assert_eq!(t0.elapsed(), heartbeat * 2 + Duration::from_secs(5));
    }
}
