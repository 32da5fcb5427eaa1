//! `GET {prefix}/sessions/{id}/{sse,stream,poll}`: attach the one reader of
//! a session at its resume cursor and answer with that transport's body.

use http::{Request, Response};

use super::{lookup, query_pairs};
use crate::body::{Body, RequestBody};
use crate::config::Transport;
use crate::error::BridgeError;
use crate::state::AppState;
use crate::transport::{self, poll, sse, stream};

pub(super) fn read(
    id: &str,
    transport: Transport,
    req: &Request<RequestBody>,
    state: &AppState,
) -> Result<Response<Body>, BridgeError> {
    let session = lookup(id, state)?;
    if !session.target.allows(transport) {
        return Err(BridgeError::TransportNotAllowed);
    }
    let query = query_pairs(req);
    let cursor = transport::resume_cursor(&query, req.headers())?;
    let config = &state.config;
    // Parse everything before attaching: a bad request must not supersede
    // the live reader.
    let wait = match query.iter().find(|(k, _)| k == "wait") {
        Some((_, w)) => poll::parse_wait(w, config.poll.max_wait)?,
        None => poll::DEFAULT_WAIT.min(config.poll.max_wait),
    };
    let reader = session.attach(transport, cursor)?;
    Ok(match transport {
        Transport::Sse => sse::respond(
            reader,
            sse::Settings {
                heartbeat: config.sessions.heartbeat,
                retry: config.sessions.client_retry,
                // `?plain=1`: the JavaScript client, whose EventSource
                // cannot listen for names it does not know, wants none.
                event_field: session
                    .target
                    .sse_event_field
                    .clone()
                    .filter(|_| !flag(&query, "plain", "1")),
                // `?heartbeat=event`: heartbeats also as a named event, which
                // EventSource (unlike comments) lets a watchdog see.
                named_heartbeat: flag(&query, "heartbeat", "event"),
            },
        ),
        // `?heartbeat=now`: one heartbeat line at once, which the client's
        // probe window waits for.
        Transport::Stream => stream::respond(
            reader,
            config.sessions.heartbeat,
            flag(&query, "heartbeat", "now"),
        ),
        Transport::Poll | Transport::Websocket => {
            poll::respond(reader, wait, config.poll.max_events, config.poll.max_bytes)
        }
    })
}

fn flag(query: &[(String, String)], key: &str, value: &str) -> bool {
    query.iter().any(|(k, v)| k == key && v == value)
}
