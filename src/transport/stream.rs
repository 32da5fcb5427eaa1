//! `GET {prefix}/sessions/{id}/stream`: events as chunked NDJSON, for networks
//! whose proxies mangle `text/event-stream`. One JSON event per line (the
//! objects poll returns), plus `{"type":"heartbeat"}` and a final
//! `{"type":"superseded"}` when a newer reader takes over.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::Response;

use super::{STREAM_BATCH_BYTES, STREAM_BATCH_EVENTS, ends_session, write_event_json};
use crate::body::Body;
use crate::session::{Batch, Reader};

/// `hello`: a heartbeat line at once. The client's probe window waits for a
/// first line, which tells a middlebox holding streamed bodies apart from a
/// quiet session.
pub fn respond(reader: Reader, heartbeat: Duration, hello: bool) -> Response<Body> {
    let hello = stream::iter(hello.then(|| Bytes::from_static(b"{\"type\":\"heartbeat\"}\n")));
    let chunks = stream::unfold((reader, false), move |(mut reader, done)| async move {
        if done {
            return None;
        }
        // `next` is cancel-safe: events are taken only when it returns.
        let batch = tokio::select! {
            batch = reader.next(STREAM_BATCH_EVENTS, STREAM_BATCH_BYTES) => Some(batch),
            _ = tokio::time::sleep(heartbeat) => None,
        };
        let (chunk, done) = match batch {
            None => (Bytes::from_static(b"{\"type\":\"heartbeat\"}\n"), false),
            Some(Batch::Superseded) => (Bytes::from_static(b"{\"type\":\"superseded\"}\n"), true),
            Some(Batch::Events(events)) => {
                let mut out = super::batch_buffer(&events);
                for event in &events {
                    write_event_json(&mut out, event);
                    out.push(b'\n');
                }
                (Bytes::from(out), events.is_empty() || ends_session(&events))
            }
        };
        Some((chunk, (reader, done)))
    });
    super::streaming_response("application/x-ndjson", hello.chain(chunks))
}
