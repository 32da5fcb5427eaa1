//! One client per transport behind one [`Session`] type: open, read the next
//! frame, and (for echo) send one and read the reply. Each reader parses in
//! place from a reused buffer, so the load generator spends its CPU on the
//! proxy's output rather than on its own allocations, and each checks the
//! protocol as it goes (event ids in order, no gap, a clean close).

mod body;
pub mod channel;
pub mod http;
mod poll;
mod sse;
mod stream;
mod ws;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ::http::Method;
use serde::Deserialize;

use crate::{Result, fail};
use http::{HttpConn, Sender, collect};

/// The proxy's bridge prefix (the default `server.prefix`).
pub const PREFIX: &str = "/_bridge";

/// How a client reaches the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// A WebSocket straight to the backend: the baseline.
    WsDirect,
    /// A WebSocket through the proxy's pass-through (spliced).
    WsProxy,
    /// A WebSocket through nginx as a plain reverse proxy: the peer the
    /// pass-through is measured against.
    WsNginx,
    Sse,
    Stream,
    Poll,
}

impl Transport {
    /// Direct first: every ratio is against it.
    pub const ALL: [Transport; 6] = [
        Transport::WsDirect,
        Transport::WsProxy,
        Transport::WsNginx,
        Transport::Sse,
        Transport::Stream,
        Transport::Poll,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Transport::WsDirect => "ws-direct",
            Transport::WsProxy => "ws-proxy",
            Transport::WsNginx => "ws-nginx",
            Transport::Sse => "sse",
            Transport::Stream => "stream",
            Transport::Poll => "poll",
        }
    }

    /// Whether the run starts wsbridge (nginx's row starts nginx instead).
    pub fn uses_proxy(self) -> bool {
        !matches!(self, Transport::WsDirect | Transport::WsNginx)
    }
}

/// Where the servers of a run listen.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub backend: SocketAddr,
    pub proxy: Option<SocketAddr>,
    /// Bridged sessions: where their reader and sends go, when not where
    /// they were opened (the cluster scenario: another replica).
    pub read_via: Option<SocketAddr>,
    /// Bridged sessions: how their reader's connection is used
    /// (`--connections`); [`Conns::Reused`] also sends a pass-through GET
    /// on the send connection now and then ([`Session::now_and_then`]).
    pub conns: Conns,
}

/// With `--connections reuse`, a pass-through GET on the send connection
/// before the first send and after every this many.
pub const PASSTHROUGH_EVERY: u64 = 100;

/// One frame as the backend stamped it.
#[derive(Clone, Copy, Debug)]
pub struct Msg {
    pub seq: u64,
    pub sent_ns: u64,
}

pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A frame's text: `"<seq> <unix_nanos> "` padded with `x` to `size` bytes.
pub fn payload(seq: u64, sent_ns: u64, size: usize) -> String {
    let mut s = String::with_capacity(size.max(42));
    let _ = write!(s, "{seq} {sent_ns} ");
    let pad = size.saturating_sub(s.len());
    s.extend(std::iter::repeat_n('x', pad));
    s
}

pub fn parse_payload(data: &[u8]) -> Result<Msg> {
    let mut parts = data.splitn(3, |b| *b == b' ');
    match (
        parts.next().and_then(parse_u64),
        parts.next().and_then(parse_u64),
    ) {
        (Some(seq), Some(sent_ns)) => Ok(Msg { seq, sent_ns }),
        _ => {
            let head = String::from_utf8_lossy(&data[..data.len().min(48)]);
            fail!("malformed frame {head:?}")
        }
    }
}

pub fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// What a reader made of one event.
enum Item {
    Msg(Msg),
    /// The session's close event, code 1000: the stream is complete.
    Close,
    /// A heartbeat or the SSE `retry:` line.
    Skip,
}

/// Checks that event ids come one after another: a skipped or repeated id is
/// the proxy losing or doubling an event, whatever the payload says.
fn next_event_id(last: &mut u64, id: Option<u64>) -> Result<()> {
    match id {
        Some(id) if id == *last + 1 => {
            *last = id;
            Ok(())
        }
        Some(id) => fail!("event id {id} after {last}"),
        None => fail!("event without an id after {last}"),
    }
}

/// The close event must be the backend's own 1000 "done": anything else is
/// the session dying under the load.
fn check_close(code: Option<u16>, reason: &str) -> Result<()> {
    match code {
        Some(1000) => Ok(()),
        other => fail!("session closed early: code {other:?} reason {reason:?}"),
    }
}

/// The fast path for the one event shape the bench sees millions of times,
/// `{"id":N,"type":"text","data":"…"}` with nothing escaped in the data:
/// the id, the data and the bytes taken. Anything else (another event, an
/// escape, other spacing) is `None` and goes through serde.
fn plain_text_event(s: &[u8]) -> Option<(u64, &[u8], usize)> {
    let (id, data, taken) = plain_text_fields(s.strip_prefix(b"{")?)?;
    Some((id, data, taken + 1))
}

/// [`plain_text_event`] after its `{`: `"id":N,"type":"text","data":"…"}`
/// (a channel event has its `"session"` field before these).
fn plain_text_fields(s: &[u8]) -> Option<(u64, &[u8], usize)> {
    let rest = s.strip_prefix(b"\"id\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let id = parse_u64(&rest[..digits])?;
    let rest = rest[digits..].strip_prefix(b",\"type\":\"text\",\"data\":\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    if rest[end] != b'"' {
        return None;
    }
    let after = rest[end + 1..].strip_prefix(b"}")?;
    Some((id, &rest[..end], s.len() - after.len()))
}

/// An event as stream lines and poll responses carry it.
#[derive(Deserialize)]
struct JsonEvent<'a> {
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

impl JsonEvent<'_> {
    fn item(&self, last_id: &mut u64) -> Result<Item> {
        match &*self.kind {
            // The stream's prelude (padding against buffering middleboxes) and
            // heartbeats carry no event.
            "heartbeat" | "prelude" => Ok(Item::Skip),
            "text" => {
                next_event_id(last_id, self.id)?;
                let data = self.data.as_deref().ok_or("text event without data")?;
                parse_payload(data.as_bytes()).map(Item::Msg)
            }
            "close" => {
                next_event_id(last_id, self.id)?;
                check_close(self.code, self.reason.as_deref().unwrap_or(""))?;
                Ok(Item::Close)
            }
            "gap" => fail!(
                "gap event: the proxy dropped events {}..{}",
                self.from.unwrap_or(0),
                self.to.unwrap_or(0)
            ),
            other => fail!("unexpected event type {other:?}"),
        }
    }
}

/// Which connection a bridged reader is held on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conns {
    /// A connection of its own, whose only request is the reader.
    Own,
    /// The open's connection (`--connections own`, the default: the
    /// connection carries only the session's own requests).
    Shared,
    /// A connection that first carried a pass-through GET, the open and
    /// another bridge request, as a browser's or an ingress pool's would.
    Reused,
}

/// An open session, any transport.
pub struct Session {
    down: Down,
    /// For bridged sessions: where frames are POSTed (made on first use).
    up: Option<Sender>,
    send_link: Option<(SocketAddr, String)>,
    /// How this session's connections are used.
    conns: Conns,
    /// Frames sent so far (for [`Session::now_and_then`]).
    sends: u64,
}

enum Down {
    Sse(sse::Reader),
    Stream(stream::Reader),
    Poll(poll::Reader),
    /// Boxed: tungstenite's socket is large beside the others.
    Ws(Box<ws::Socket>),
}

#[derive(Deserialize)]
struct Opened {
    links: Links,
}

#[derive(Deserialize)]
struct Links {
    sse: String,
    stream: String,
    poll: String,
    send: String,
}

impl Session {
    /// Opens a session on the backend's `path` (`/pub?…`, `/echo`) and
    /// returns once it is attached: frames published from now on reach it.
    pub async fn open(
        transport: Transport,
        addrs: Addrs,
        path: &str,
        ws_read_buffer: usize,
    ) -> Result<Session> {
        let ws_url = |host: SocketAddr| format!("ws://{host}{path}");
        let proxy = || addrs.proxy.ok_or("this transport needs the proxy");
        let down = match transport {
            Transport::WsDirect => Down::Ws(Box::new(
                ws::Socket::connect(&ws_url(addrs.backend), ws_read_buffer).await?,
            )),
            Transport::WsProxy | Transport::WsNginx => Down::Ws(Box::new(
                ws::Socket::connect(&ws_url(proxy()?), ws_read_buffer).await?,
            )),
            bridged => {
                let open = proxy()?;
                let via = addrs.read_via.unwrap_or(open);
                return Self::open_bridged(bridged, open, via, path, addrs.conns).await;
            }
        };
        Ok(Session {
            down,
            up: None,
            send_link: None,
            conns: addrs.conns,
            sends: 0,
        })
    }

    /// Opens a bridged session on `proxy` and attaches its reader through
    /// `via`, the reader's connection used as `conns` says.
    async fn open_bridged(
        transport: Transport,
        proxy: SocketAddr,
        via: SocketAddr,
        path: &str,
        conns: Conns,
    ) -> Result<Session> {
        let mut conn = HttpConn::connect(proxy).await?;
        if conns == Conns::Reused {
            // A page's pass-through request first, on the same connection.
            pass_through(&mut conn).await?;
        }
        let body = serde_json::json!({ "url": path }).to_string();
        let resp = conn
            .request(
                Method::POST,
                &format!("{PREFIX}/sessions"),
                Some((body.into(), "application/json")),
            )
            .await?;
        let (status, body) = collect(resp).await?;
        if status != ::http::StatusCode::CREATED {
            fail!("open: {status} {}", String::from_utf8_lossy(&body));
        }
        let links = serde_json::from_slice::<Opened>(&body)?.links;
        if conns == Conns::Reused {
            let resp = conn
                .request(Method::GET, &format!("{PREFIX}/transports"), None)
                .await?;
            collect(resp).await?;
        }
        let reader = match conns {
            // The open's connection closes; the reader gets one of its own.
            Conns::Own => HttpConn::connect(via).await?,
            // Read through another replica: a connection to it.
            _ if via != proxy => HttpConn::connect(via).await?,
            Conns::Shared | Conns::Reused => conn,
        };
        let down = match transport {
            Transport::Sse => Down::Sse(sse::Reader::attach(reader, &links.sse).await?),
            Transport::Stream => Down::Stream(stream::Reader::attach(reader, &links.stream).await?),
            _ => Down::Poll(poll::Reader::new(reader, links.poll)),
        };
        Ok(Session {
            down,
            up: None,
            send_link: Some((via, links.send)),
            conns,
            sends: 0,
        })
    }

    /// Opens an SSE session whose reader's connection is used as `conns`
    /// says: the `reuse` scenario's three ways a browser may hold it.
    pub async fn open_sse(proxy: SocketAddr, path: &str, conns: Conns) -> Result<Session> {
        Self::open_bridged(Transport::Sse, proxy, proxy, path, conns).await
    }

    /// The next frame, or `None` once the session closed cleanly (1000).
    pub async fn next(&mut self) -> Result<Option<Msg>> {
        self.down.next().await
    }

    /// Sends one text frame upstream and waits for the next frame down.
    /// Bridged, the POST and the read run at once, as a browser's would: a
    /// long-poll is already waiting when the reply is published.
    pub async fn round_trip(&mut self, text: String) -> Result<Option<Msg>> {
        if let Down::Ws(ws) = &mut self.down {
            ws.send(text).await?;
            return ws.next().await;
        }
        if self.up.is_none() {
            let (proxy, link) = self.send_link.clone().ok_or("no send link")?;
            let mut up = Sender::connect(proxy, link).await?;
            if self.conns == Conns::Reused {
                pass_through(up.conn()).await?;
            }
            self.up = Some(up);
        }
        let up = self.up.as_mut().ok_or("no sender")?;
        let (sent, got) = tokio::join!(up.send(text), self.down.next());
        sent?;
        self.sends += 1;
        got
    }

    /// Between round trips (not timed): with reused connections, every
    /// [`PASSTHROUGH_EVERY`] sends, a pass-through GET on the send
    /// connection, as a browser's pool sends a page's requests on whichever
    /// keep-alive connection is free.
    pub async fn now_and_then(&mut self) -> Result<()> {
        if self.conns != Conns::Reused || !self.sends.is_multiple_of(PASSTHROUGH_EVERY) {
            return Ok(());
        }
        match self.up.as_mut() {
            Some(up) => pass_through(up.conn()).await,
            None => Ok(()),
        }
    }
}

/// A GET through the pass-through (the backend's plain `/plain`) on `conn`.
async fn pass_through(conn: &mut HttpConn) -> Result<()> {
    let (status, body) = collect(conn.request(Method::GET, "/plain", None).await?).await?;
    if status != ::http::StatusCode::OK {
        fail!("pass-through: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

impl Down {
    async fn next(&mut self) -> Result<Option<Msg>> {
        match self {
            Down::Sse(r) => r.next().await,
            Down::Stream(r) => r.next().await,
            Down::Poll(r) => r.next().await,
            Down::Ws(s) => s.next().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let text = payload(42, 1_700_000_000_123_456_789, 128);
        assert_eq!(text.len(), 128);
        let m = parse_payload(text.as_bytes()).unwrap();
        assert_eq!((m.seq, m.sent_ns), (42, 1_700_000_000_123_456_789));
        assert!(parse_payload(b"x 1 ").is_err());
        assert!(parse_payload(b"1").is_err());
    }

    #[test]
    fn plain_text_events_take_the_fast_path_and_nothing_else() {
        let line = br#"{"id":7,"type":"text","data":"3 99 xx"}"#;
        let (id, data, taken) = plain_text_event(line).unwrap();
        assert_eq!((id, data, taken), (7, &b"3 99 xx"[..], line.len()));
        // An escape, another type or another spacing go through serde.
        assert!(plain_text_event(br#"{"id":7,"type":"text","data":"a\"b"}"#).is_none());
        assert!(plain_text_event(br#"{"id":8,"type":"close","code":1000,"reason":""}"#).is_none());
        assert!(plain_text_event(br#"{"id": 7,"type":"text","data":"x"}"#).is_none());
    }

    #[test]
    fn json_events_are_checked() {
        let mut last = 0;
        let ev: JsonEvent<'_> =
            serde_json::from_str(r#"{"id":1,"type":"text","data":"1 5 x"}"#).unwrap();
        assert!(matches!(
            ev.item(&mut last),
            Ok(Item::Msg(Msg { seq: 1, .. }))
        ));
        let skipped: JsonEvent<'_> =
            serde_json::from_str(r#"{"id":3,"type":"text","data":"3 5 x"}"#).unwrap();
        assert!(skipped.item(&mut last).is_err(), "event id 3 after 1");
        let gap: JsonEvent<'_> =
            serde_json::from_str(r#"{"id":4,"type":"gap","from":2,"to":4}"#).unwrap();
        assert!(gap.item(&mut last).is_err());
        let early: JsonEvent<'_> =
            serde_json::from_str(r#"{"id":2,"type":"close","code":1006,"reason":""}"#).unwrap();
        assert!(
            early.item(&mut last).is_err(),
            "only 1000 ends a run cleanly"
        );
    }
}
