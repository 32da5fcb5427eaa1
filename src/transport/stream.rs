//! `GET {prefix}/sessions/{id}/stream`: events as chunked NDJSON, for networks
//! whose proxies mangle `text/event-stream`. One JSON event per line (the
//! objects poll returns), after a `{"type":"prelude",...}` padding line,
//! plus `{"type":"heartbeat"}` and a final
//! `{"type":"superseded"}` when a newer reader takes over.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::Response;

use super::{Heartbeat, STREAM_BATCH_BYTES, STREAM_BATCH_EVENTS, ends_session, write_event_json};
use crate::body::Body;
use crate::session::{Batch, Reader};

/// `hello`: a heartbeat line at once after the prelude. The client's probe
/// window waits for a first line, which tells a middlebox holding streamed
/// bodies apart from a quiet session.
pub fn respond(reader: Reader, heartbeat: Duration, hello: bool) -> Response<Body> {
    // The prelude first: `started` is false until it is sent.
    // The heartbeat's timer lives in the state, across the body's polls.
    let chunks = stream::unfold(
        (reader, Heartbeat::new(heartbeat), false, false),
        move |(mut reader, mut beat, started, done)| async move {
            if done {
                return None;
            }
            if !started {
                let prelude = super::stream_prelude();
                let first = if hello {
                    let mut first = prelude.to_vec();
                    first.extend_from_slice(b"{\"type\":\"heartbeat\"}\n");
                    Bytes::from(first)
                } else {
                    prelude
                };
                return Some((first, (reader, beat, true, false)));
            }
            // `next` is cancel-safe: events are taken only when it returns.
            // Biased: events first; the timer is polled only when there are none.
            let batch = tokio::select! {
                biased;
                batch = reader.next(STREAM_BATCH_EVENTS, STREAM_BATCH_BYTES) => Some(batch),
                () = beat.due() => None,
            };
            if batch.is_some() {
                beat.wrote();
            }
            let (chunk, done) = match batch {
                None => (Bytes::from_static(b"{\"type\":\"heartbeat\"}\n"), false),
                Some(Batch::Superseded) => {
                    (Bytes::from_static(b"{\"type\":\"superseded\"}\n"), true)
                }
                Some(Batch::Events(events)) => {
                    let mut out = super::batch_buffer(&events);
                    for event in &events {
                        write_event_json(&mut out, event);
                        out.push(b'\n');
                    }
                    (Bytes::from(out), events.is_empty() || ends_session(&events))
                }
            };
            Some((chunk, (reader, beat, true, done)))
        },
    );
    super::streaming_response("application/x-ndjson", chunks)
}
