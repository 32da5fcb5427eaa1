//! The NDJSON stream reader: one JSON event per line, parsed in place.

use super::body::BodyBuf;
use super::http::{HttpConn, expect_stream};
use super::{Item, JsonEvent, Msg, next_event_id, parse_payload, plain_text_event};
use crate::Result;

pub struct Reader {
    body: BodyBuf,
    last_id: u64,
    /// Keeps the connection's sender alive while the body streams.
    _conn: HttpConn,
}

impl Reader {
    pub async fn attach(mut conn: HttpConn, link: &str) -> Result<Reader> {
        let resp = conn.request(http::Method::GET, link, None).await?;
        expect_stream(&resp, "application/x-ndjson")?;
        Ok(Reader {
            body: BodyBuf::new(resp.into_body()),
            last_id: 0,
            _conn: conn,
        })
    }

    pub async fn next(&mut self) -> Result<Option<Msg>> {
        loop {
            while let Some(line) = self.body.record(b"\n") {
                if let Some((id, data, taken)) = plain_text_event(line)
                    && taken == line.len()
                {
                    next_event_id(&mut self.last_id, Some(id))?;
                    return parse_payload(data).map(Some);
                }
                let event: JsonEvent<'_> = serde_json::from_slice(line)?;
                match event.item(&mut self.last_id)? {
                    Item::Msg(m) => return Ok(Some(m)),
                    Item::Close => return Ok(None),
                    Item::Skip => {}
                }
            }
            self.body.fill("stream").await?;
        }
    }
}
