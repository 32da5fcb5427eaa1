//! `{prefix}/channels...`: the multiplexed channel's endpoints. Open a
//! channel; open, attach and detach sessions on it; read all of them with
//! one reader; send frames of many sessions in one batch. The state is
//! `session::channel`; the wire forms are `transport::channel`.

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{no_content, open, query_pairs, read_body};
use crate::body::{Body, RequestBody, json_response};
use crate::config::Transport;
use crate::error::BridgeError;
use crate::forwarded::ConnInfo;
use crate::metrics::CloseReason;
use crate::routing::ChannelPart;
use crate::session::channel::{Channel, watch_idle};
use crate::session::registry::new_id;
use crate::session::{Frame, Queued, SendOutcome, Session};
use crate::state::AppState;
use crate::transport::{channel as wire, poll};

/// Largest attach or detach body: a session id, a cursor and JSON around them.
const SMALL_BODY: usize = 1024;

pub(super) async fn dispatch(
    id: &str,
    part: ChannelPart,
    req: Request<RequestBody>,
    conn: ConnInfo,
    state: &Arc<AppState>,
) -> Result<Response<Body>, BridgeError> {
    let method = req.method().clone();
    let channel = || state.channels.get(id).ok_or(BridgeError::UnknownChannel);
    match part {
        ChannelPart::Root if method == Method::DELETE => {
            state.channels.end(&*channel()?);
            Ok(no_content())
        }
        ChannelPart::Root => Err(BridgeError::MethodNotAllowed("DELETE")),
        ChannelPart::Sse | ChannelPart::Stream | ChannelPart::Poll if method == Method::GET => {
            let transport = match part {
                ChannelPart::Sse => Transport::Sse,
                ChannelPart::Stream => Transport::Stream,
                _ => Transport::Poll,
            };
            read(&channel()?, transport, &req, state)
        }
        ChannelPart::Sse | ChannelPart::Stream | ChannelPart::Poll => {
            Err(BridgeError::MethodNotAllowed("GET"))
        }
        _ if method != Method::POST => Err(BridgeError::MethodNotAllowed("POST")),
        ChannelPart::Sessions => {
            let channel = channel()?;
            if channel.len() >= state.config.channel.max_sessions_per_channel {
                // Checked before the handshake too, so a full channel costs
                // the upstream nothing (the attach checks again).
                return Err(BridgeError::Unavailable {
                    code: "channel_full",
                    retry_after: std::time::Duration::from_secs(5),
                });
            }
            let session = Box::pin(open::open_session(req, conn, state)).await?;
            if let Err(e) = state.channels.attach(&channel, &session, 0) {
                // The channel ended or filled during the handshake.
                session.close(1001, "channel unavailable", CloseReason::Client);
                return Err(e);
            }
            Ok(open::answer(&session, state))
        }
        ChannelPart::Attach => {
            let channel = channel()?;
            let body: AttachBody = small_json(req, "{\"session\": ID, \"cursor\": N}").await?;
            let session = state
                .registry
                .get(&body.session)
                .ok_or(BridgeError::UnknownSession)?;
            state
                .channels
                .attach(&channel, &session, body.cursor.unwrap_or(0))?;
            Ok(no_content())
        }
        ChannelPart::Detach => {
            let channel = channel()?;
            let body: DetachBody = small_json(req, "{\"session\": ID}").await?;
            if !channel.remove(&body.session, false) {
                return Err(BridgeError::UnknownSession);
            }
            Ok(no_content())
        }
        ChannelPart::Send => send(&channel()?, req, state).await,
    }
}

/// `POST {prefix}/channels`: a new channel, ended after
/// `sessions.idle_timeout` without a reader or a send.
pub(super) fn create(state: &Arc<AppState>) -> Result<Response<Body>, BridgeError> {
    if state.is_draining() {
        return Err(BridgeError::Unavailable {
            code: "draining",
            retry_after: std::time::Duration::from_secs(1),
        });
    }
    // In a cluster the id names this replica as its owner, as a session's.
    let id = state.cluster.as_ref().map_or_else(new_id, |c| c.new_id());
    let channel = state.channels.create(id)?;
    tokio::spawn(watch_idle(
        Arc::clone(&channel),
        Arc::clone(&state.channels),
        state.config.sessions.idle_timeout,
    ));
    tracing::debug!(channel = channel.log_id(), "channel opened");
    let config = &state.config;
    let base = format!("{}/channels/{}", config.server.prefix, channel.id);
    let mut links = serde_json::Map::new();
    for t in [Transport::Sse, Transport::Stream, Transport::Poll] {
        let allowed =
            config.routes.is_empty() || config.routes.iter().any(|r| r.transports.contains(&t));
        if allowed {
            links.insert(t.as_str().into(), json!(format!("{base}/{}", t.as_str())));
        }
    }
    for part in ["send", "sessions", "attach", "detach"] {
        links.insert(part.into(), json!(format!("{base}/{part}")));
    }
    links.insert("close".into(), json!(base));
    let body = json!({
        "channel": &*channel.id,
        "heartbeat_ms": u64::try_from(config.sessions.heartbeat.as_millis()).unwrap_or(u64::MAX),
        "links": links,
    });
    Ok(json_response(StatusCode::CREATED, &body))
}

#[derive(Deserialize)]
struct AttachBody {
    session: String,
    cursor: Option<u64>,
}

#[derive(Deserialize)]
struct DetachBody {
    session: String,
}

async fn small_json<T: serde::de::DeserializeOwned>(
    req: Request<RequestBody>,
    shape: &str,
) -> Result<T, BridgeError> {
    let (parts, body) = req.into_parts();
    let body = read_body(body, &parts.headers, SMALL_BODY).await?;
    serde_json::from_slice(&body).map_err(|e| {
        BridgeError::bad_request("bad_request", format!("body must be JSON {shape}: {e}"))
    })
}

fn read(
    channel: &Arc<Channel>,
    transport: Transport,
    req: &Request<RequestBody>,
    state: &AppState,
) -> Result<Response<Body>, BridgeError> {
    let config = &state.config;
    let query = query_pairs(req);
    let cursors = match query.iter().find(|(k, _)| k == "cursors") {
        Some((_, v)) => wire::parse_cursors(v, config.channel.max_sessions_per_channel)?,
        None => Vec::new(),
    };
    let wait = match query.iter().find(|(k, _)| k == "wait") {
        Some((_, w)) => poll::parse_wait(w, config.poll.max_wait)?,
        None => poll::DEFAULT_WAIT.min(config.poll.max_wait),
    };
    let reader = channel.attach_reader(transport, &cursors)?;
    let closing = state.closing_token();
    Ok(match transport {
        Transport::Sse => wire::sse(
            reader,
            wire::SseSettings {
                heartbeat: config.sessions.heartbeat,
                retry: config.sessions.client_retry,
                named_heartbeat: query.iter().any(|(k, v)| k == "heartbeat" && v == "event"),
            },
            closing,
        ),
        Transport::Stream => wire::ndjson(reader, config.sessions.heartbeat, closing),
        Transport::Poll | Transport::Websocket => {
            wire::poll(reader, wait, config.poll.max_events, config.poll.max_bytes)
        }
    })
}

// ---- batched send ------------------------------------------------------------

/// One frame of a batch, as parsed.
#[derive(Debug)]
pub struct BatchFrame {
    pub session: String,
    pub seq: Option<u64>,
    pub frame: Frame,
}

/// Why a batch line was refused, and whose it was when that could be read.
#[derive(Debug)]
pub struct LineError {
    pub session: Option<String>,
    pub seq: Option<u64>,
    pub error: BridgeError,
}

#[derive(Deserialize)]
struct RawLine {
    session: String,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    data: String,
}

/// Parses one line of a batch body (public for the property tests: it
/// reads untrusted input): `{"session": ID, "seq": n, "type": "text" |
/// "binary", "data": "..."}`; `seq` optional (positive), `type` defaults
/// to text, binary data is standard base64; a frame over
/// `max_frame_bytes` (decoded) is refused.
pub fn parse_batch_line(line: &[u8], max_frame_bytes: usize) -> Result<BatchFrame, LineError> {
    let raw: RawLine = match serde_json::from_slice(line) {
        Ok(raw) => raw,
        Err(e) => {
            // Whose line it was, if that much is readable, so its session
            // can be held back for the rest of the batch.
            let value: Option<Value> = serde_json::from_slice(line).ok();
            let field = |k: &str| value.as_ref().and_then(|v| v.get(k).cloned());
            return Err(LineError {
                session: field("session").and_then(|s| s.as_str().map(str::to_owned)),
                seq: field("seq").and_then(|s| s.as_u64()),
                error: BridgeError::bad_request(
                    "bad_frame",
                    format!(
                        "a line must be JSON {{\"session\": ID, \"seq\": n, \"type\": \"text\"|\"binary\", \"data\": \"...\"}}: {e}"
                    ),
                ),
            });
        }
    };
    let fail = |error| LineError {
        session: Some(raw.session.clone()),
        seq: raw.seq,
        error,
    };
    if raw.seq == Some(0) {
        return Err(fail(BridgeError::bad_request(
            "bad_seq",
            "seq must be a positive integer",
        )));
    }
    let frame = match raw.kind.as_deref() {
        None | Some("text") => Frame::Text(Bytes::from(raw.data.clone().into_bytes())),
        Some("binary") => match STANDARD.decode(raw.data.as_bytes()) {
            Ok(bytes) => Frame::Binary(Bytes::from(bytes)),
            Err(_) => {
                return Err(fail(BridgeError::bad_request(
                    "bad_base64",
                    "binary data must be standard base64",
                )));
            }
        },
        Some(_) => {
            return Err(fail(BridgeError::bad_request(
                "bad_frame",
                "type must be \"text\" or \"binary\"",
            )));
        }
    };
    if frame.len() > max_frame_bytes {
        return Err(fail(BridgeError::PayloadTooLarge {
            limit: max_frame_bytes,
        }));
    }
    Ok(BatchFrame {
        session: raw.session,
        seq: raw.seq,
        frame,
    })
}

/// Reads a batch body, stopping with `413` as soon as it has more than
/// `max_bytes` bytes or `max_frames` non-blank lines.
async fn read_batch(
    req: Request<RequestBody>,
    max_bytes: usize,
    max_frames: usize,
) -> Result<Vec<u8>, BridgeError> {
    let (parts, mut body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_bytes as u64) {
        return Err(BridgeError::PayloadTooLarge { limit: max_bytes });
    }
    let mut buf = Vec::new();
    let (mut lines, mut in_line) = (0usize, false);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            BridgeError::bad_request("bad_body", format!("could not read the request body: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > max_bytes {
            return Err(BridgeError::PayloadTooLarge { limit: max_bytes });
        }
        for &b in data.iter() {
            if b == b'\n' {
                in_line = false;
            } else if !b.is_ascii_whitespace() && !in_line {
                in_line = true;
                lines += 1;
            }
        }
        if lines > max_frames {
            return Err(BridgeError::TooManyFrames { limit: max_frames });
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf)
}

/// One frame's outcome in the batch answer.
fn result(session: Option<&str>, seq: Option<u64>, status: u16, extra: Value) -> Value {
    let mut v = json!({"session": session, "status": status});
    if let Some(seq) = seq {
        v["seq"] = json!(seq);
    }
    if let (Value::Object(v), Value::Object(extra)) = (&mut v, extra) {
        v.extend(extra);
    }
    v
}

/// A frame's error as the single send would answer it: status and body.
fn error_result(session: Option<&str>, seq: Option<u64>, e: &BridgeError) -> Value {
    let (status, extra) = match e {
        BridgeError::UnknownSession => (404, json!({"error": "unknown_session"})),
        BridgeError::SessionClosed { code, reason } => (
            410,
            json!({"error": "session_closed", "close": {"code": code, "reason": reason}}),
        ),
        BridgeError::SeqAhead { expected } => (
            409,
            json!({"error": "seq_out_of_order", "expected": expected}),
        ),
        BridgeError::PayloadTooLarge { limit } => {
            (413, json!({"error": "payload_too_large", "limit": limit}))
        }
        BridgeError::TooManyRequests { code, retry_after } => (
            429,
            json!({"error": code, "retry_after_ms": u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX)}),
        ),
        BridgeError::BadRequest { code, detail } => (400, json!({"error": code, "detail": detail})),
        other => (500, json!({"error": format!("{other:?}")})),
    };
    result(session, seq, status, extra)
}

/// `POST {prefix}/channels/{id}/send`: NDJSON frames of the channel's
/// sessions, applied in order; one result per line. A frame after a failed
/// one of the same session is skipped (`409 skipped`) so its order holds;
/// other sessions' frames go on.
async fn send(
    channel: &Arc<Channel>,
    req: Request<RequestBody>,
    state: &AppState,
) -> Result<Response<Body>, BridgeError> {
    let config = &state.config;
    let body = read_batch(
        req,
        config.channel.max_batch_bytes,
        config.channel.max_batch_frames,
    )
    .await?;
    channel.touch();
    let lines: Vec<&[u8]> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    state
        .metrics
        .channel
        .batch_frames
        .inc_by(lines.len() as u64);
    let mut results: Vec<Value> = vec![Value::Null; lines.len()];
    // Sessions with a failed frame in this batch: their later frames wait.
    let mut failed: HashSet<String> = HashSet::new();
    // Frames queued and not yet known written: (line, session, ack).
    let mut waiting: Vec<Waiting> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let f = match parse_batch_line(line, config.limits.max_frame_bytes) {
            Ok(f) => f,
            Err(LineError {
                session,
                seq,
                error,
            }) => {
                results[i] = error_result(session.as_deref(), seq, &error);
                if let Some(s) = session {
                    failed.insert(s);
                }
                continue;
            }
        };
        if failed.contains(&f.session) {
            results[i] = result(
                Some(&f.session),
                f.seq,
                409,
                json!({"error": "skipped", "detail": "an earlier frame of this session in the batch failed"}),
            );
            continue;
        }
        let Some(session) = channel.session(&f.session) else {
            results[i] = error_result(Some(&f.session), f.seq, &BridgeError::UnknownSession);
            failed.insert(f.session);
            continue;
        };
        let mut queued = session.enqueue(f.frame.clone(), f.seq);
        if matches!(
            &queued,
            Err(BridgeError::TooManyRequests {
                code: "outbound_full",
                ..
            })
        ) && waiting.iter().any(|(_, s, _, _)| s.id == session.id)
        {
            // The batch itself filled the session's queue: let what is
            // queued be written, then try once more.
            finish(&mut waiting, &mut results, &mut failed).await;
            queued = session.enqueue(f.frame, f.seq);
        }
        match queued {
            Ok(Queued::Waiting(ack)) => waiting.push((i, session, f.seq, ack)),
            Ok(Queued::Duplicate) => {
                results[i] = result(Some(&f.session), f.seq, 200, json!({"duplicate": true}));
            }
            Err(e) => {
                results[i] = error_result(Some(&f.session), f.seq, &e);
                failed.insert(f.session);
            }
        }
    }
    finish(&mut waiting, &mut results, &mut failed).await;
    Ok(json_response(StatusCode::OK, &json!({"results": results})))
}

/// A frame queued and not yet known written: its line, session, seq, ack.
type Waiting = (
    usize,
    Arc<Session>,
    Option<u64>,
    tokio::sync::oneshot::Receiver<()>,
);

/// Waits for every queued frame's write and records its outcome.
async fn finish(waiting: &mut Vec<Waiting>, results: &mut [Value], failed: &mut HashSet<String>) {
    let writes = waiting.drain(..).map(|(i, session, seq, ack)| async move {
        let outcome = session.written(ack).await;
        (i, session, seq, outcome)
    });
    for (i, session, seq, outcome) in futures_util::future::join_all(writes).await {
        results[i] = match outcome {
            Ok(SendOutcome::Written) => result(Some(&session.id), seq, 204, json!({})),
            Ok(SendOutcome::Duplicate) => {
                result(Some(&session.id), seq, 200, json!({"duplicate": true}))
            }
            Err(e) => {
                failed.insert(session.id.clone());
                error_result(Some(&session.id), seq, &e)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_lines_are_checked() {
        let ok =
            parse_batch_line(br#"{"session":"s","seq":1,"type":"text","data":"hi"}"#, 10).unwrap();
        assert_eq!(ok.session, "s");
        assert_eq!(ok.seq, Some(1));
        assert!(matches!(ok.frame, Frame::Text(b) if &b[..] == b"hi"));
        let bin =
            parse_batch_line(br#"{"session":"s","type":"binary","data":"AP8="}"#, 10).unwrap();
        assert!(matches!(bin.frame, Frame::Binary(b) if b[..] == [0, 255]));
        let e =
            parse_batch_line(br#"{"session":"s","type":"binary","data":"%%"}"#, 10).unwrap_err();
        assert_eq!(e.session.as_deref(), Some("s"));
        let e = parse_batch_line(br#"{"session":"s","data":"01234567890"}"#, 10).unwrap_err();
        assert!(matches!(
            e.error,
            BridgeError::PayloadTooLarge { limit: 10 }
        ));
        let e = parse_batch_line(br#"{"session":"s","seq":"x","data":""}"#, 10).unwrap_err();
        assert_eq!(e.session.as_deref(), Some("s"));
        assert!(
            parse_batch_line(b"not json", 10)
                .unwrap_err()
                .session
                .is_none()
        );
        assert!(parse_batch_line(br#"{"session":"s","seq":0,"data":""}"#, 10).is_err());
        assert!(parse_batch_line(br#"{"session":"s","type":"ping","data":""}"#, 10).is_err());
    }
}
