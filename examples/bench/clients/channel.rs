//! The multiplexed channel client: a channel, sessions opened on it, one
//! reader (SSE or NDJSON stream) for all of them, and the batched send.
//! The reader checks each session's events as a session's own reader does
//! (ids one after another per session, no gap, a clean close) and fails on
//! anything a healthy channel never sends a reader that keeps up:
//! `detached`, `superseded`, an event of a session it does not know.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;

use ::http::{Method, StatusCode};
use serde::Deserialize;

use super::body::BodyBuf;
use super::http::{HttpConn, collect, expect_stream};
use super::{Item, JsonEvent, Msg, PREFIX, next_event_id, parse_payload, plain_text_fields};
use crate::{Result, fail};

/// The reader's wire form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Sse,
    Stream,
}

/// An open channel: where its endpoints are.
#[derive(Clone)]
pub struct Channel {
    proxy: SocketAddr,
    links: Links,
}

#[derive(Clone, Deserialize)]
struct Links {
    sse: String,
    stream: String,
    send: String,
    sessions: String,
}

#[derive(Deserialize)]
struct Created {
    links: Links,
}

#[derive(Deserialize)]
struct Opened {
    session: String,
}

impl Channel {
    /// `POST {prefix}/channels`.
    pub async fn create(proxy: SocketAddr) -> Result<Channel> {
        let mut conn = HttpConn::connect(proxy).await?;
        let resp = conn
            .request(Method::POST, &format!("{PREFIX}/channels"), None)
            .await?;
        let (status, body) = collect(resp).await?;
        if status != StatusCode::CREATED {
            fail!("channel: {status} {}", String::from_utf8_lossy(&body));
        }
        let created: Created = serde_json::from_slice(&body)?;
        Ok(Channel {
            proxy,
            links: created.links,
        })
    }

    /// Opens a session on the backend's `path` on this channel (attached
    /// at cursor 0) over `conn`, a keep-alive connection to the proxy, and
    /// returns its id.
    pub async fn open(&self, conn: &mut HttpConn, path: &str) -> Result<String> {
        let body = serde_json::json!({ "url": path }).to_string();
        let resp = conn
            .request(
                Method::POST,
                &self.links.sessions,
                Some((body.into(), "application/json")),
            )
            .await?;
        let (status, body) = collect(resp).await?;
        if status != StatusCode::CREATED {
            fail!(
                "open on channel: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(serde_json::from_slice::<Opened>(&body)?.session)
    }

    /// The channel's reader on a connection of its own, for the sessions
    /// `ids` (what it reports is an index into them).
    pub async fn reader(&self, form: Form, ids: &[String]) -> Result<Reader> {
        let mut conn = HttpConn::connect(self.proxy).await?;
        let (link, content_type) = match form {
            Form::Sse => (&self.links.sse, "text/event-stream"),
            Form::Stream => (&self.links.stream, "application/x-ndjson"),
        };
        let resp = conn.request(Method::GET, link, None).await?;
        expect_stream(&resp, content_type)?;
        Ok(Reader {
            body: BodyBuf::new(resp.into_body()),
            form,
            index: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_bytes().into(), i))
                .collect(),
            last_id: vec![0; ids.len()],
            _conn: conn,
        })
    }

    /// The batched send on a keep-alive connection of its own.
    pub async fn sender(&self) -> Result<BatchSender> {
        Ok(BatchSender {
            conn: HttpConn::connect(self.proxy).await?,
            link: self.links.send.clone(),
        })
    }
}

/// A channel's one reader.
pub struct Reader {
    body: BodyBuf,
    form: Form,
    /// Session id to its index.
    index: HashMap<Box<[u8]>, usize>,
    /// The last event id seen, per session.
    last_id: Vec<u64>,
    /// Keeps the connection's sender alive while the body streams.
    _conn: HttpConn,
}

impl Reader {
    /// The next event of any session: its index and the frame, or `None`
    /// for its clean close (1000).
    pub async fn next(&mut self) -> Result<(usize, Option<Msg>)> {
        let delim: &[u8] = match self.form {
            Form::Sse => b"\n\n",
            Form::Stream => b"\n",
        };
        loop {
            while let Some(record) = self.body.record(delim) {
                let json = match self.form {
                    Form::Sse => match sse_data(record)? {
                        Some(json) => json,
                        None => continue, // the prelude, retry:, a heartbeat
                    },
                    Form::Stream => record,
                };
                if let Some(got) = parse_event(json, &self.index, &mut self.last_id)? {
                    return Ok(got);
                }
            }
            let what = match self.form {
                Form::Sse => "channel SSE",
                Form::Stream => "channel stream",
            };
            self.body.fill(what).await?;
        }
    }
}

/// The JSON of a channel SSE event block: its one `data:` line. Comments
/// (the prelude, heartbeats) and `retry:` carry none; an `event:` name is
/// only ever `superseded` (no named heartbeats are asked for).
fn sse_data(block: &[u8]) -> Result<Option<&[u8]>> {
    let mut data = None;
    for line in block.split(|b| *b == b'\n') {
        if line.is_empty() || line[0] == b':' || line.starts_with(b"retry:") {
            continue;
        }
        if let Some(json) = line.strip_prefix(b"data: ") {
            if data.is_some() {
                fail!("two data lines in one channel event");
            }
            data = Some(json);
        } else {
            fail!(
                "unexpected channel SSE line {:?}",
                String::from_utf8_lossy(&line[..line.len().min(64)])
            );
        }
    }
    Ok(data)
}

/// A channel event as the slow path reads it.
#[derive(Deserialize)]
struct Tagged<'a> {
    #[serde(borrow)]
    session: Option<Cow<'a, str>>,
    id: Option<u64>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
    code: Option<u16>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    from: Option<u64>,
    to: Option<u64>,
}

/// One channel event object: `Some((session, frame or close))`, or `None`
/// for one that carries no event (prelude, heartbeat).
fn parse_event(
    json: &[u8],
    index: &HashMap<Box<[u8]>, usize>,
    last_id: &mut [u64],
) -> Result<Option<(usize, Option<Msg>)>> {
    let session = |id: &[u8]| {
        index.get(id).copied().ok_or_else(|| {
            format!(
                "an event of a session not opened here: {}",
                String::from_utf8_lossy(id)
            )
        })
    };
    // The fast path: `{"session":"S",` then a plain text event's fields.
    if let Some(rest) = json.strip_prefix(b"{\"session\":\"")
        && let Some(end) = memchr::memchr(b'"', rest)
        && let Some(fields) = rest[end + 1..].strip_prefix(b",")
        && let Some((id, data, taken)) = plain_text_fields(fields)
        && taken == fields.len()
    {
        let i = session(&rest[..end])?;
        next_event_id(&mut last_id[i], Some(id))?;
        return Ok(Some((i, Some(parse_payload(data)?))));
    }
    let ev: Tagged<'_> = serde_json::from_slice(json)?;
    match (&*ev.kind, ev.session.as_deref()) {
        ("heartbeat" | "prelude", _) => Ok(None),
        ("superseded", _) => fail!("the channel reader was superseded"),
        ("detached", Some(s)) => fail!("session {s} was detached from the channel"),
        (_, None) => fail!("a channel event without a session: {:?}", ev.kind),
        (_, Some(s)) => {
            let i = session(s.as_bytes())?;
            let event = JsonEvent {
                id: ev.id,
                kind: ev.kind,
                data: ev.data,
                code: ev.code,
                reason: ev.reason,
                from: ev.from,
                to: ev.to,
            };
            match event.item(&mut last_id[i])? {
                Item::Msg(m) => Ok(Some((i, Some(m)))),
                Item::Close => Ok(Some((i, None))),
                Item::Skip => Ok(None),
            }
        }
    }
}

/// A channel's `send` link on its own keep-alive connection.
pub struct BatchSender {
    conn: HttpConn,
    link: String,
}

#[derive(Deserialize)]
struct Results {
    results: Vec<SendResult>,
}

#[derive(Deserialize)]
struct SendResult {
    status: u16,
}

impl BatchSender {
    /// POSTs one batch of text frames, `(session, text)` each, as NDJSON;
    /// the proxy answers once each is written upstream, which must be 204
    /// for every one.
    pub async fn send(&mut self, frames: &[(&str, &str)]) -> Result<()> {
        let mut body = String::new();
        for (session, text) in frames {
            body.push_str(&serde_json::json!({ "session": session, "data": text }).to_string());
            body.push('\n');
        }
        let resp = self
            .conn
            .request(
                Method::POST,
                &self.link,
                Some((body.into(), "application/x-ndjson")),
            )
            .await?;
        let (status, body) = collect(resp).await?;
        if status != StatusCode::OK {
            fail!("batched send: {status} {}", String::from_utf8_lossy(&body));
        }
        let results: Results = serde_json::from_slice(&body)?;
        if results.results.len() != frames.len() || results.results.iter().any(|r| r.status != 204)
        {
            fail!("batched send: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "AAAAAAAAAAAAAAAAAAAAAA";
    const B: &str = "BBBBBBBBBBBBBBBBBBBBB_";

    fn index() -> HashMap<Box<[u8]>, usize> {
        [(A, 0), (B, 1)]
            .into_iter()
            .map(|(id, i)| (id.as_bytes().into(), i))
            .collect()
    }

    #[test]
    fn events_are_checked_per_session() {
        let index = index();
        let mut last = [0, 0];
        let line = |s: &str, id: u64, seq: u64| {
            format!(r#"{{"session":"{s}","id":{id},"type":"text","data":"{seq} 5 xx"}}"#)
        };
        let got = parse_event(line(A, 1, 1).as_bytes(), &index, &mut last).unwrap();
        assert!(matches!(got, Some((0, Some(Msg { seq: 1, .. })))));
        // Each session counts its own ids.
        let got = parse_event(line(B, 1, 1).as_bytes(), &index, &mut last).unwrap();
        assert!(matches!(got, Some((1, Some(_)))));
        assert!(parse_event(line(A, 3, 3).as_bytes(), &index, &mut last).is_err());
        let close =
            format!(r#"{{"session":"{B}","id":2,"type":"close","code":1000,"reason":"done"}}"#);
        assert!(matches!(
            parse_event(close.as_bytes(), &index, &mut last).unwrap(),
            Some((1, None))
        ));
        for bad in [
            format!(r#"{{"session":"{A}","type":"detached"}}"#),
            r#"{"type":"superseded"}"#.to_owned(),
            line("CCCCCCCCCCCCCCCCCCCCCC", 1, 1),
            format!(r#"{{"session":"{A}","id":2,"type":"gap","from":2,"to":2}}"#),
        ] {
            assert!(
                parse_event(bad.as_bytes(), &index, &mut [0, 0]).is_err(),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_event(br#"{"type":"heartbeat"}"#, &index, &mut last),
            Ok(None)
        ));
    }

    #[test]
    fn sse_blocks() {
        assert_eq!(sse_data(b":    ").unwrap(), None);
        assert_eq!(sse_data(b"retry: 1000").unwrap(), None);
        assert_eq!(sse_data(b"data: {}").unwrap(), Some(&b"{}"[..]));
        assert!(sse_data(b"event: superseded\ndata: {}").is_err());
    }
}
