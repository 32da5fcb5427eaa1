//! The long-poll reader: `GET poll?cursor=N&wait=S` on one keep-alive
//! connection, the cursor advanced by each answer.

use std::collections::VecDeque;
use std::fmt::Write as _;

use http::StatusCode;
use serde::Deserialize;

use super::http::{HttpConn, collect};
use super::{Item, JsonEvent, Msg, next_event_id, parse_payload, parse_u64, plain_text_event};
use crate::{Result, fail};

/// The wait of each poll, in seconds (the proxy's default `poll.max_wait`
/// is 30 s).
const WAIT_SECS: u32 = 25;

pub struct Reader {
    conn: HttpConn,
    link: String,
    cursor: u64,
    last_id: u64,
    /// Frames of the last answer not yet handed out.
    queue: VecDeque<Msg>,
    closed: bool,
    uri: String,
}

#[derive(Deserialize)]
struct Answer<'a> {
    cursor: u64,
    #[serde(borrow)]
    events: Vec<JsonEvent<'a>>,
    #[serde(default)]
    superseded: bool,
}

impl Reader {
    pub fn new(conn: HttpConn, link: String) -> Reader {
        Reader {
            conn,
            link,
            cursor: 0,
            last_id: 0,
            queue: VecDeque::with_capacity(256),
            closed: false,
            uri: String::new(),
        }
    }

    pub async fn next(&mut self) -> Result<Option<Msg>> {
        loop {
            if let Some(m) = self.queue.pop_front() {
                return Ok(Some(m));
            }
            if self.closed {
                return Ok(None);
            }
            self.poll().await?;
        }
    }

    async fn poll(&mut self) -> Result<()> {
        self.uri.clear();
        let _ = write!(
            self.uri,
            "{}?cursor={}&wait={WAIT_SECS}",
            self.link, self.cursor
        );
        let resp = self
            .conn
            .request(http::Method::GET, &self.uri, None)
            .await?;
        let (status, body) = collect(resp).await?;
        if status != StatusCode::OK {
            fail!("poll: {status} {}", String::from_utf8_lossy(&body));
        }
        let mut plain = Vec::new();
        let cursor = match plain_answer(&body, &mut plain) {
            Some(cursor) => {
                for (id, data) in plain {
                    next_event_id(&mut self.last_id, Some(id))?;
                    self.queue.push_back(parse_payload(data)?);
                }
                cursor
            }
            None => self.take_answer(&body)?,
        };
        if cursor != self.last_id {
            fail!(
                "poll cursor {cursor} but the last event was {}",
                self.last_id
            );
        }
        self.cursor = cursor;
        Ok(())
    }

    /// Any answer, through serde: the close event, heartbeats, errors.
    fn take_answer(&mut self, body: &[u8]) -> Result<u64> {
        let answer: Answer<'_> = serde_json::from_slice(body)?;
        if answer.superseded {
            fail!("poll superseded: another reader took the session");
        }
        for event in &answer.events {
            if self.closed {
                fail!("an event after the close event");
            }
            match event.item(&mut self.last_id)? {
                Item::Msg(m) => self.queue.push_back(m),
                Item::Close => self.closed = true,
                Item::Skip => {}
            }
        }
        Ok(answer.cursor)
    }
}

/// The fast path: an answer of plain text events only (see
/// [`plain_text_event`]); its cursor, and the events in `out`.
fn plain_answer<'a>(body: &'a [u8], out: &mut Vec<(u64, &'a [u8])>) -> Option<u64> {
    let rest = body.strip_prefix(b"{\"cursor\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let cursor = parse_u64(&rest[..digits])?;
    let mut rest = rest[digits..].strip_prefix(b",\"events\":[")?;
    if rest == b"]}" {
        return Some(cursor);
    }
    loop {
        let (id, data, taken) = plain_text_event(rest)?;
        out.push((id, data));
        rest = &rest[taken..];
        match rest.strip_prefix(b",") {
            Some(more) => rest = more,
            None => return (rest == b"]}").then_some(cursor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_answers() {
        let mut out = Vec::new();
        let body = br#"{"cursor":3,"events":[{"id":2,"type":"text","data":"2 1 x"},{"id":3,"type":"text","data":"3 1 x"}]}"#;
        assert_eq!(plain_answer(body, &mut out), Some(3));
        assert_eq!(out, vec![(2, &b"2 1 x"[..]), (3, &b"3 1 x"[..])]);
        out.clear();
        assert_eq!(
            plain_answer(br#"{"cursor":3,"events":[]}"#, &mut out),
            Some(3)
        );
        // A close event or a superseded answer take the serde path.
        out.clear();
        let closing =
            br#"{"cursor":4,"events":[{"id":4,"type":"close","code":1000,"reason":"done"}]}"#;
        assert_eq!(plain_answer(closing, &mut out), None);
        let superseded = br#"{"cursor":3,"events":[],"superseded":true}"#;
        assert_eq!(plain_answer(superseded, &mut out), None);
    }
}
