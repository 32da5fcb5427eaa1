//! Forwarding a request to the replica that owns its session: pooled h2c
//! connections to the peers' internal listeners, bodies streamed both ways,
//! and what a reader gets when the owner cannot be reached or its answer
//! breaks off (a `close` event 1006, as a dead upstream gives).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::auth::{self, AuthKey};
use crate::body::{Body, BoxError, RequestBody, full};
use crate::routing::ChannelPart;
use crate::session::replay::{Event, EventData};
use crate::transport::{self, WholeBody, sse, write_event_json};

/// Idle pooled connections to a peer are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The most bytes of one reader's answer held back until the event they
/// belong to is complete (so a cut never leaves half an event before the
/// synthesised close). One event is at most the largest upstream frame,
/// base64'd, plus its framing.
fn max_partial(max_upstream_frame: usize) -> usize {
    max_upstream_frame.saturating_mul(4) / 3 + 64 * 1024
}

/// The reason a synthesised close event carries.
const LOST_REASON: &str = "the replica holding this session is unreachable";

/// Headers that are the connection's or ours, never a peer's to receive.
const DROPPED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    auth::HEADER,
];

/// Which bridge endpoint a forwarded request is; session readers get a
/// synthesised close when the owner is lost, channel readers an end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sse,
    Stream,
    Poll,
    Send,
    Close,
    /// `{prefix}/channels/{id}/...`: the part names the endpoint.
    Channel(ChannelPart),
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sse => "sse",
            Kind::Stream => "stream",
            Kind::Poll => "poll",
            Kind::Send => "send",
            Kind::Close => "close",
            Kind::Channel(part) => part.name(),
        }
    }

    /// A reader whose answer streams: relayed whole events at a time.
    fn streams(self) -> bool {
        matches!(
            self,
            Kind::Sse
                | Kind::Stream
                | Kind::Channel(ChannelPart::Sse)
                | Kind::Channel(ChannelPart::Stream)
        )
    }

    /// A reader whose answer is one JSON document.
    pub(super) fn polls(self) -> bool {
        matches!(self, Kind::Poll | Kind::Channel(ChannelPart::Poll))
    }

    /// Session readers, whose loss is their close event 1006.
    pub(super) fn reads_session(self) -> bool {
        matches!(self, Kind::Sse | Kind::Stream | Kind::Poll)
    }
}

/// The pooled client for the peers' internal listeners: HTTP/2 only
/// (prior knowledge, cleartext), one multiplexed connection per peer.
pub struct Forwarder {
    client: Client<HttpConnector, RequestBody>,
}

impl Forwarder {
    /// `heartbeat` bounds how long a dead owner can go unnoticed: connects
    /// time out after it, and the connection is pinged twice within it.
    pub fn new(heartbeat: Duration) -> Forwarder {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(heartbeat));
        let ping = (heartbeat / 3).max(Duration::from_millis(100));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .http2_adaptive_window(true)
            .http2_keep_alive_interval(ping)
            .http2_keep_alive_timeout(ping)
            .http2_keep_alive_while_idle(true)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(http);
        Forwarder { client }
    }

    /// Sends `req` to `peer` on behalf of `client`, signed with `key`.
    pub async fn send(
        &self,
        peer: SocketAddr,
        req: Request<RequestBody>,
        client: IpAddr,
        key: &AuthKey,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        for name in DROPPED {
            parts.headers.remove(name);
        }
        // Whatever `Connection` named is hop-by-hop too; gone with it above.
        let signed = key.sign(parts.method.as_str(), &pq, client);
        parts
            .headers
            .insert(HeaderName::from_static(auth::HEADER), signed);
        // `peer` is a member of the discovered set; the request supplies
        // only the path.
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(peer.to_string())
            .path_and_query(pq)
            .build()
            .expect("an address and a request's own path make a URI");
        parts.version = http::Version::HTTP_2;
        self.client.request(Request::from_parts(parts, body)).await
    }
}

/// The owner's answer, as this replica sends it on. A reader's body is
/// relayed whole events at a time, so if it breaks the close event that
/// follows starts on an event boundary.
///
/// When this replica starts draining, a relayed reader ends (with no close
/// event): its client reconnects with its cursor, through the load
/// balancer, to a replica that is staying.
pub fn relay(
    resp: Response<Incoming>,
    kind: Kind,
    cursor: u64,
    max_upstream_frame: usize,
    drain: CancellationToken,
) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let streaming = parts.status == StatusCode::OK && kind.streams();
    let body = if streaming {
        Relay {
            inner: body,
            kind,
            pending: BytesMut::new(),
            last_id: cursor,
            limit: max_partial(max_upstream_frame),
            done: false,
            drain: Box::pin(drain.cancelled_owned()),
        }
        .boxed_unsync()
    } else {
        body.map_err(BoxError::from).boxed_unsync()
    };
    let mut resp = Response::from_parts(parts, body);
    if kind.polls() {
        // As the owner's own poll answer: one frame, written with its length.
        resp.extensions_mut().insert(WholeBody);
    }
    resp
}

/// What a session reader gets when the owner cannot be asked: its
/// transport's close event 1006, after the cursor it resumed from.
pub fn lost(kind: Kind, cursor: u64) -> Response<Body> {
    let event = close_event(cursor + 1);
    let mut out = Vec::with_capacity(128);
    match kind {
        Kind::Sse => {
            out.extend_from_slice(b"retry: 1000\n\n");
            sse::write_event(&mut out, &event, None);
            let chunk = Bytes::from(out);
            transport::streaming_response(
                "text/event-stream; charset=utf-8",
                futures_util::stream::once(async move { chunk }),
            )
        }
        Kind::Stream => {
            write_event_json(&mut out, &event);
            out.push(b'\n');
            let chunk = Bytes::from(out);
            transport::streaming_response(
                "application/x-ndjson",
                futures_util::stream::once(async move { chunk }),
            )
        }
        Kind::Poll | Kind::Send | Kind::Close | Kind::Channel(_) => {
            out.extend_from_slice(format!("{{\"cursor\":{},\"events\":[", cursor + 1).as_bytes());
            write_event_json(&mut out, &event);
            out.extend_from_slice(b"]}");
            let mut resp = Response::new(full(out));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp.extensions_mut().insert(WholeBody);
            resp
        }
    }
}

fn close_event(id: u64) -> Event {
    Event {
        id,
        data: EventData::Close {
            code: 1006,
            reason: LOST_REASON.into(),
        },
    }
}

/// A reader's body from the owner, passed on one whole event at a time
/// (the bytes of a partial event wait for the rest), ending with a close
/// event 1006 if it breaks.
struct Relay<B> {
    inner: B,
    kind: Kind,
    /// Bytes after the last event boundary seen.
    pending: BytesMut,
    /// The id of the last event passed on (the resume cursor at first).
    last_id: u64,
    limit: usize,
    done: bool,
    /// Resolves when this replica starts draining.
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<B> Relay<B> {
    /// Splits off everything up to the last complete event, noting its id.
    /// What ends an event: a blank line in SSE, a newline in NDJSON.
    fn separator(&self) -> &'static [u8] {
        match self.kind {
            Kind::Sse | Kind::Channel(ChannelPart::Sse) => b"\n\n",
            _ => b"\n",
        }
    }

    fn complete(&mut self) -> Option<Bytes> {
        let sep = self.separator();
        let end = memchr::memmem::rfind(&self.pending, sep)? + sep.len();
        let chunk = self.pending.split_to(end).freeze();
        self.note_id(&chunk);
        Some(chunk)
    }

    /// Notes the last event id of a session reader's chunk (a channel's
    /// events carry their sessions' ids, not the reader's).
    fn note_id(&mut self, chunk: &[u8]) {
        if self.kind.reads_session()
            && let Some(id) = last_event_id(chunk, self.kind)
        {
            self.last_id = id;
        }
    }

    /// What ends a broken reader: a session's close event 1006, or for a
    /// channel nothing (its response ends, as an ended channel's does).
    fn broken(&mut self) -> Option<Bytes> {
        self.done = true;
        self.pending.clear();
        if !self.kind.reads_session() {
            return None;
        }
        let mut out = Vec::with_capacity(128);
        let event = close_event(self.last_id + 1);
        match self.kind {
            Kind::Sse => sse::write_event(&mut out, &event, None),
            _ => {
                write_event_json(&mut out, &event);
                out.push(b'\n');
            }
        }
        Some(Bytes::from(out))
    }
}

impl<B> HttpBody for Relay<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if !this.done && this.drain.as_mut().poll(cx).is_ready() {
            this.done = true;
        }
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers: none are sent
                    };
                    if this.pending.is_empty() && data.ends_with(this.separator()) {
                        // The common case, whole events: passed on uncopied.
                        this.note_id(&data);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    this.pending.extend_from_slice(&data);
                    if let Some(chunk) = this.complete() {
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    }
                    if this.pending.len() > this.limit {
                        tracing::warn!("forwarded reader sent an event larger than any frame");
                        return Poll::Ready(this.broken().map(|b| Ok(Frame::data(b))));
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "forwarded reader broke off");
                    return Poll::Ready(this.broken().map(|b| Ok(Frame::data(b))));
                }
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The id of the last event in `chunk`, which starts on an event boundary.
fn last_event_id(chunk: &[u8], kind: Kind) -> Option<u64> {
    // Data lines hold no newline, so the marker after one starts a line.
    let marker: &[u8] = match kind {
        Kind::Sse => b"id: ",
        _ => b"{\"id\":",
    };
    let mut needle = Vec::with_capacity(marker.len() + 1);
    needle.push(b'\n');
    needle.extend_from_slice(marker);
    let start = match memchr::memmem::rfind(chunk, &needle) {
        Some(i) => i + needle.len(),
        None if chunk.starts_with(marker) => marker.len(),
        None => return None,
    };
    let digits = chunk[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&chunk[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use http_body_util::StreamBody;

    use super::*;

    /// Relays `chunks` then, if `cut`, an error; returns what came out.
    async fn relayed(kind: Kind, chunks: &[&str], cut: bool) -> String {
        let mut items: Vec<Result<Frame<Bytes>, String>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c.as_bytes()))))
            .collect();
        if cut {
            items.push(Err("connection reset".into()));
        }
        let relay = Relay {
            inner: StreamBody::new(futures_util::stream::iter(items)),
            kind,
            pending: BytesMut::new(),
            last_id: 3,
            limit: 1024,
            done: false,
            drain: Box::pin(CancellationToken::new().cancelled_owned()),
        };
        let out = relay.collect().await.unwrap().to_bytes();
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_broken_reader_ends_on_an_event_boundary_with_close_1006() {
        let close = |id: u64| {
            let mut out = Vec::new();
            sse::write_event(&mut out, &close_event(id), None);
            String::from_utf8(out).unwrap()
        };
        // Whole events pass; a half event before the cut is dropped, and
        // the close takes the id after the last whole one.
        let got = relayed(
            Kind::Sse,
            &[
                "retry: 1000\n\n",
                "id: 4\ndata: a\n\nid: 5\nda",
                "ta: b\n\nid: 6\ndata: par",
            ],
            true,
        )
        .await;
        assert_eq!(
            got,
            format!(
                "retry: 1000\n\nid: 4\ndata: a\n\nid: 5\ndata: b\n\n{}",
                close(6)
            )
        );
        // No cut: nothing added.
        let got = relayed(Kind::Sse, &["id: 4\ndata: a\n\n"], false).await;
        assert_eq!(got, "id: 4\ndata: a\n\n");
        // A cut before any event: the close follows the resume cursor.
        assert_eq!(relayed(Kind::Sse, &[], true).await, close(4));
        // NDJSON: lines are the events.
        let got = relayed(
            Kind::Stream,
            &["{\"id\":4,\"type\":\"text\",\"data\":\"a\"}\n{\"type\":\"heart"],
            true,
        )
        .await;
        assert!(got.starts_with("{\"id\":4,\"type\":\"text\",\"data\":\"a\"}\n{\"id\":5,\"type\":\"close\",\"code\":1006,"), "{got}");
    }

    #[tokio::test]
    async fn a_broken_channel_reader_ends_on_an_event_boundary_with_nothing_added() {
        // A channel's events are its sessions': no close of the reader's own
        // is made up; the response ends, as an ended channel's does.
        let got = relayed(
            Kind::Channel(ChannelPart::Sse),
            &[
                "data: {\"session\":\"S\",\"id\":4,\"type\":\"text\",\"data\":\"a\"}\n\nda",
                "ta: {\"session\":\"T\",\"id\":9",
            ],
            true,
        )
        .await;
        assert_eq!(
            got,
            "data: {\"session\":\"S\",\"id\":4,\"type\":\"text\",\"data\":\"a\"}\n\n"
        );
        let got = relayed(
            Kind::Channel(ChannelPart::Stream),
            &["{\"session\":\"S\",\"id\":4,\"type\":\"text\",\"data\":\"a\"}\n{\"sess"],
            true,
        )
        .await;
        assert_eq!(
            got,
            "{\"session\":\"S\",\"id\":4,\"type\":\"text\",\"data\":\"a\"}\n"
        );
        assert_eq!(
            relayed(Kind::Channel(ChannelPart::Sse), &[], true).await,
            ""
        );
    }

    #[test]
    fn the_last_event_id_is_found_in_either_form() {
        let sse = b"id: 4\ndata: id: 9\n\nid: 5\nevent: binary\ndata: AA==\n\n: hb\n\n";
        assert_eq!(last_event_id(sse, Kind::Sse), Some(5));
        assert_eq!(last_event_id(b"id: 12\ndata: x\n\n", Kind::Sse), Some(12));
        assert_eq!(last_event_id(b"retry: 1000\n\n: hb\n\n", Kind::Sse), None);
        let nd =
            b"{\"id\":7,\"type\":\"text\",\"data\":\"{\\\"id\\\":99\"}\n{\"type\":\"heartbeat\"}\n";
        assert_eq!(last_event_id(nd, Kind::Stream), Some(7));
        assert_eq!(
            last_event_id(
                b"{\"id\":3,\"type\":\"gap\",\"from\":2,\"to\":3}\n{\"id\":8,",
                Kind::Stream
            ),
            Some(8)
        );
    }

    #[test]
    fn a_lost_reader_gets_the_next_id_closed_1006() {
        let ev = close_event(8);
        let mut out = Vec::new();
        write_event_json(&mut out, &ev);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{{\"id\":8,\"type\":\"close\",\"code\":1006,\"reason\":\"{LOST_REASON}\"}}")
        );
    }
}
