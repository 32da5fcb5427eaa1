//! The SSE reader: a small incremental parser for exactly what the proxy
//! sends (`id:`, `event:`, `data:`, `retry:`, `: hb` comments).

use super::body::BodyBuf;
use super::http::{HttpConn, expect_stream};
use super::{Item, Msg, check_close, next_event_id, parse_payload, parse_u64};
use crate::{Result, fail};

pub struct Reader {
    body: BodyBuf,
    last_id: u64,
    /// Keeps the connection's sender alive while the body streams.
    _conn: HttpConn,
}

impl Reader {
    pub async fn attach(mut conn: HttpConn, link: &str) -> Result<Reader> {
        let resp = conn.request(http::Method::GET, link, None).await?;
        expect_stream(&resp, "text/event-stream")?;
        Ok(Reader {
            body: BodyBuf::new(resp.into_body()),
            last_id: 0,
            _conn: conn,
        })
    }

    pub async fn next(&mut self) -> Result<Option<Msg>> {
        loop {
            while let Some(block) = self.body.record(b"\n\n") {
                match parse_event(block, &mut self.last_id)? {
                    Item::Msg(m) => return Ok(Some(m)),
                    Item::Close => return Ok(None),
                    Item::Skip => {}
                }
            }
            self.body.fill("SSE").await?;
        }
    }
}

/// One event block (the lines before a blank line).
fn parse_event(block: &[u8], last_id: &mut u64) -> Result<Item> {
    let mut id = None;
    let mut event: &[u8] = b"";
    let mut data: Option<&[u8]> = None;
    let mut rest = block;
    while !rest.is_empty() {
        let (line, tail) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b""[..]),
        };
        rest = tail;
        if line.is_empty() || line[0] == b':' {
            continue; // a comment: the heartbeat
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"id" => id = Some(parse_u64(value).ok_or("bad SSE id")?),
            b"event" => event = value,
            b"data" if data.is_some() => {
                fail!("multi-line data: no frame of the bench has a newline")
            }
            b"data" => data = Some(value),
            b"retry" => {}
            other => fail!("unexpected SSE field {:?}", String::from_utf8_lossy(other)),
        }
    }
    let Some(data) = data else {
        return Ok(Item::Skip); // the retry: line
    };
    match event {
        b"" => {
            next_event_id(last_id, id)?;
            parse_payload(data).map(Item::Msg)
        }
        b"close" => {
            next_event_id(last_id, id)?;
            let close: serde_json::Value = serde_json::from_slice(data)?;
            let code = close["code"].as_u64().and_then(|c| u16::try_from(c).ok());
            check_close(code, close["reason"].as_str().unwrap_or(""))?;
            Ok(Item::Close)
        }
        b"gap" => fail!(
            "gap event: the proxy dropped events {}",
            String::from_utf8_lossy(data)
        ),
        other => fail!("unexpected SSE event {:?}", String::from_utf8_lossy(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events() {
        let mut last = 0;
        assert!(matches!(
            parse_event(b"retry: 1000", &mut last),
            Ok(Item::Skip)
        ));
        assert!(matches!(parse_event(b": hb", &mut last), Ok(Item::Skip)));
        assert!(matches!(
            parse_event(b"id: 1\ndata: 1 77 xxx", &mut last),
            Ok(Item::Msg(Msg {
                seq: 1,
                sent_ns: 77
            }))
        ));
        assert!(matches!(
            parse_event(
                b"id: 2\nevent: close\ndata: {\"code\":1000,\"reason\":\"done\"}",
                &mut last
            ),
            Ok(Item::Close)
        ));
        let mut last = 0;
        assert!(
            parse_event(b"id: 2\ndata: 2 77 x", &mut last).is_err(),
            "id 1 skipped"
        );
        assert!(parse_event(b"id: 1\nevent: gap\ndata: {\"from\":1,\"to\":1}", &mut 0).is_err());
        assert!(parse_event(b"event: superseded\ndata: {}", &mut 0).is_err());
    }
}
