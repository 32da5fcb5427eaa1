//! Opening an upstream WebSocket: TCP with keepalive, TLS for `wss://`, and
//! the client handshake (RFC 6455 4.1), after which the connection is split
//! into the halves the session's task reads and writes ([`super::codec`]).
//!
//! The handshake is ours rather than a library's so that the bytes the
//! upstream sent right behind its `101` are handed to the frame reader
//! instead of staying in a buffer the socket would keep for good.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::generate_request;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::codec::{FrameReader, FrameWriter};
use crate::error::UpstreamError;

/// The halves [`super::run`] takes.
pub type UpstreamStream = FrameReader<ReadHalf>;
pub type UpstreamSink = FrameWriter<WriteHalf>;

/// Idle time before the kernel probes an upstream connection (SO_KEEPALIVE):
/// a backend host that vanished without FIN or RST is found even while the
/// WebSocket pings are paused by backpressure.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// The largest handshake response head taken from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The most header fields in that head (as many as tungstenite took).
const MAX_RESPONSE_HEADERS: usize = 124;

/// A finished upstream handshake.
pub struct Connected {
    pub halves: (UpstreamSink, UpstreamStream),
    /// The negotiated subprotocol, or empty.
    pub protocol: String,
}

/// Opens the upstream WebSocket for a session: `headers` are those to pass on
/// (already chosen by the caller, `Host` included), `protocols` the page's
/// subprotocols, `max_message` the largest message the reader takes.
/// `connect_timeout` bounds the whole of it: TCP connect, TLS and the
/// WebSocket handshake.
pub async fn connect(
    url: &Uri,
    headers: HeaderMap,
    protocols: &[String],
    max_message: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
) -> Result<Connected, UpstreamError> {
    let mut request = url
        .to_string()
        .into_client_request()
        .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
    // `extend` with a map replaces: a `Host` given here wins over the one
    // derived from the URL.
    request.headers_mut().extend(headers);
    if !protocols.is_empty() {
        let list = HeaderValue::from_str(&protocols.join(", ")).map_err(|_| {
            UpstreamError::Protocol("subprotocol is not a valid header value".into())
        })?;
        request
            .headers_mut()
            .insert(http::header::SEC_WEBSOCKET_PROTOCOL, list);
    }
    let (head, key) =
        generate_request(request).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
    let open = async {
        let mut tcp = connect_tcp(url).await?;
        match (url.scheme_str(), tls) {
            (Some("wss"), Some(tls)) => {
                let mut tls = connect_tls(url, tcp, tls).await?;
                let (protocol, read) = handshake(&mut tls, &head, &key, protocols).await?;
                let (r, w) = tokio::io::split(tls);
                Ok((ReadHalf::Tls(r), WriteHalf::Tls(w), protocol, read))
            }
            (Some("wss"), None) => Err(UpstreamError::Protocol("no TLS settings for wss".into())),
            _ => {
                let (protocol, read) = handshake(&mut tcp, &head, &key, protocols).await?;
                // Halves of a plain socket share no lock.
                let (r, w) = tcp.into_split();
                Ok((ReadHalf::Plain(r), WriteHalf::Plain(w), protocol, read))
            }
        }
    };
    let (read_half, write_half, protocol, read) = match timeout(connect_timeout, open).await {
        Err(_) => return Err(UpstreamError::Timeout),
        Ok(result) => result?,
    };
    Ok(Connected {
        halves: (
            FrameWriter::new(write_half),
            FrameReader::new(read_half, read, max_message),
        ),
        protocol,
    })
}

/// Connects the TCP socket of an upstream WebSocket, with TCP keepalive on.
pub(super) async fn connect_tcp(url: &Uri) -> Result<TcpStream, UpstreamError> {
    let host = host(url)?;
    let port = url
        .port_u16()
        .unwrap_or(if url.scheme_str() == Some("wss") {
            443
        } else {
            80
        });
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
    // Each frame is written whole and flushed: Nagle would only delay it.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY on an upstream socket");
    }
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "could not set SO_KEEPALIVE on an upstream socket");
    }
    Ok(tcp)
}

/// The URL's host, an IPv6 literal without the brackets URLs write it with.
fn host(url: &Uri) -> Result<&str, UpstreamError> {
    let host = url
        .host()
        .ok_or_else(|| UpstreamError::Protocol("the upstream url has no host".into()))?;
    Ok(host.trim_start_matches('[').trim_end_matches(']'))
}

async fn connect_tls(
    url: &Uri,
    tcp: TcpStream,
    tls: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, UpstreamError> {
    let name = rustls::pki_types::ServerName::try_from(host(url)?.to_owned())
        .map_err(|e| UpstreamError::Unreachable(format!("tls: {e}")))?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Unreachable(format!("tls: {e}")))
}

/// Sends the request head and reads the response's; gives the negotiated
/// subprotocol and whatever was read past the head (frames already).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    head: &[u8],
    key: &str,
    protocols: &[String],
) -> Result<(String, BytesMut), UpstreamError> {
    let unreachable = |e: io::Error| UpstreamError::Unreachable(e.to_string());
    io.write_all(head).await.map_err(unreachable)?;
    io.flush().await.map_err(unreachable)?;
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(4096);
        if io.read_buf(&mut buf).await.map_err(unreachable)? == 0 {
            return Err(UpstreamError::Unreachable(
                "the upstream closed the connection during the handshake".into(),
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let protocol = verify(&response, key, protocols)?;
                let _ = buf.split_to(len);
                return Ok((protocol, buf));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(UpstreamError::Protocol("response head too large".into()));
            }
            Err(e) => return Err(UpstreamError::Protocol(format!("bad response: {e}"))),
        }
    }
}

/// Checks a response head the way RFC 6455 4.1 tells a client to; gives
/// the subprotocol chosen.
fn verify(
    response: &httparse::Response<'_, '_>,
    key: &str,
    protocols: &[String],
) -> Result<String, UpstreamError> {
    let status = response.code.unwrap_or_default();
    if status != 101 {
        return Err(match StatusCode::from_u16(status) {
            Ok(status) => UpstreamError::Rejected(status),
            Err(_) => UpstreamError::Protocol(format!("bad status {status}")),
        });
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let refuse = |what: &str| Err(UpstreamError::Protocol(what.to_owned()));
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket")) {
        return refuse("no Upgrade: websocket in the response");
    }
    let connection_upgrade = header("connection").is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    if !connection_upgrade {
        return refuse("no Connection: upgrade in the response");
    }
    if header("sec-websocket-accept") != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
        return refuse("Sec-WebSocket-Accept does not match the key");
    }
    // None was offered, so none may be in use.
    if header("sec-websocket-extensions").is_some_and(|v| !v.trim_ascii().is_empty()) {
        return refuse("the upstream chose an extension that was not offered");
    }
    let chosen = header("sec-websocket-protocol")
        .map(|v| String::from_utf8_lossy(v).trim().to_owned())
        .unwrap_or_default();
    match (protocols.is_empty(), chosen.is_empty()) {
        (true, true) => Ok(chosen),
        (true, false) => refuse("the upstream chose a subprotocol that was not offered"),
        // As a browser does: asked for one, the upstream must choose one.
        (false, true) => refuse("the upstream chose none of the offered subprotocols"),
        (false, false) if protocols.contains(&chosen) => Ok(chosen),
        (false, false) => refuse("the upstream chose a subprotocol that was not offered"),
    }
}

/// The HTTP status a failed handshake counts as in the metrics.
pub fn failure_status(e: &UpstreamError) -> StatusCode {
    match e {
        UpstreamError::Rejected(s) => *s,
        UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// The TLS client settings for `wss://` (and `https://`) upstreams: the
/// webpki roots, plus the operator's CA file if any. Verification has no off
/// switch.
pub fn tls_client_config(
    ca_file: Option<&std::path::Path>,
) -> std::io::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        for cert in certs {
            let cert =
                cert.map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The read half of an upstream connection, plain or TLS.
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// The write half of an upstream connection, plain or TLS.
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(io) => Pin::new(io).poll_read(cx, buf),
            ReadHalf::Tls(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(io) => Pin::new(io).poll_write(cx, buf),
            WriteHalf::Tls(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(io) => Pin::new(io).poll_flush(cx),
            WriteHalf::Tls(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(io) => Pin::new(io).poll_shutdown(cx),
            WriteHalf::Tls(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// Against a loopback listener that answers the handshake as scripted.
#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::net::TcpListener;

    /// Accepts one connection, reads the request head, answers with what
    /// `answer` makes of the request's key; gives the URL to connect to.
    async fn upstream(answer: impl FnOnce(&str) -> Vec<u8> + Send + 'static) -> Uri {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(tcp.read_u8().await.unwrap());
            }
            let head = String::from_utf8(head).unwrap();
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            tcp.write_all(&answer(key)).await.unwrap();
            // Held open until the test is done with it.
            let _ = tcp.read_u8().await;
        });
        url.parse().unwrap()
    }

    fn switching(key: &str, extra: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extra}\r\n",
            derive_accept_key(key.as_bytes())
        )
        .into_bytes()
    }

    async fn open(url: &Uri, protocols: &[&str]) -> Result<Connected, UpstreamError> {
        let protocols: Vec<String> = protocols.iter().map(|p| p.to_string()).collect();
        connect(
            url,
            HeaderMap::new(),
            &protocols,
            1 << 20,
            None,
            Duration::from_secs(5),
        )
        .await
    }

    #[tokio::test]
    async fn upstream_sockets_are_connected_with_keepalive_and_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: Uri = format!("ws://{}/ws", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let tcp = connect_tcp(&url).await.unwrap();
        assert!(socket2::SockRef::from(&tcp).keepalive().unwrap());
        assert!(tcp.nodelay().unwrap());
    }

    #[tokio::test]
    async fn a_frame_sent_with_the_101_is_read() {
        let url = upstream(|key| {
            let mut answer = switching(key, "Sec-WebSocket-Protocol: b\r\n");
            answer.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
            answer
        })
        .await;
        let connected = open(&url, &["a", "b"]).await.unwrap();
        assert_eq!(connected.protocol, "b");
        let (_sink, mut stream) = connected.halves;
        let message = stream.next().await.unwrap().unwrap();
        assert_eq!(message.into_text().unwrap().as_str(), "hi");
    }

    #[tokio::test]
    async fn a_response_a_client_must_refuse_is_refused() {
        type Answer = fn(&str) -> Vec<u8>;
        let cases: [(Answer, &[&str], &str); 6] = [
            (
                |_| b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n".to_vec(),
                &[],
                "403",
            ),
            (|key| switching(key, ""), &["a"], "none of the offered"),
            (
                |key| switching(key, "Sec-WebSocket-Protocol: z\r\n"),
                &["a"],
                "not offered",
            ),
            (
                |key| switching(key, "Sec-WebSocket-Extensions: permessage-deflate\r\n"),
                &[],
                "extension",
            ),
            (|_| switching("not the key", ""), &[], "Accept"),
            (|_| b"HTTP/1.1 101 OK\r\n\r\n".to_vec(), &[], "Upgrade"),
        ];
        for (answer, protocols, want) in cases {
            let url = upstream(answer).await;
            let Err(e) = open(&url, protocols).await else {
                panic!("accepted, wanted {want}");
            };
            assert!(e.to_string().contains(want), "{e}, wanted {want}");
        }
    }

    #[tokio::test]
    async fn an_endless_response_head_is_refused() {
        let url = upstream(|_| {
            let mut answer = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
            // One header line that never ends.
            answer.extend(b"x-filler: ");
            answer.extend(vec![b'y'; MAX_RESPONSE_HEAD]);
            answer
        })
        .await;
        let Err(e) = open(&url, &[]).await else {
            panic!("accepted");
        };
        assert!(e.to_string().contains("too large"), "{e}");
    }
}
