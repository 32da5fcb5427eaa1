//! A bare HTTP/1.1 connection (hyper's client `conn` API): one TCP
//! connection per session, as a browser tab behind a proxy would hold, with
//! no pool deciding for us which request goes where.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{Result, fail};

pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> Result<HttpConn> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        // Ends when the sender is dropped and no response is in flight.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpConn {
            sender,
            host: HeaderValue::from_str(&addr.to_string())?,
        })
    }

    /// Sends a request (body: bytes and content type) and returns the
    /// response head; the body streams from the connection.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Response<Incoming>> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        let body = match body {
            Some((bytes, content_type)) => {
                req = req.header(CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        Ok(self.sender.send_request(req.body(Full::new(body))?).await?)
    }
}

/// Reads a whole (small) response body.
pub async fn collect(resp: Response<Incoming>) -> Result<(StatusCode, Bytes)> {
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Checks the head of a streaming reader's response.
pub fn expect_stream(resp: &Response<Incoming>, content_type: &str) -> Result<()> {
    let got = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if resp.status() != StatusCode::OK || !got.starts_with(content_type) {
        fail!("reader answered {} {got:?}", resp.status());
    }
    Ok(())
}

/// A session's `send` link on its own keep-alive connection.
pub struct Sender {
    conn: HttpConn,
    link: String,
}

impl Sender {
    pub async fn connect(proxy: SocketAddr, link: String) -> Result<Sender> {
        Ok(Sender {
            conn: HttpConn::connect(proxy).await?,
            link,
        })
    }

    /// The keep-alive connection the frames go on.
    pub fn conn(&mut self) -> &mut HttpConn {
        &mut self.conn
    }

    /// POSTs one text frame; the proxy answers 204 once it is written upstream.
    pub async fn send(&mut self, text: String) -> Result<()> {
        let resp = self
            .conn
            .request(
                Method::POST,
                &self.link,
                Some((text.into(), "text/plain; charset=utf-8")),
            )
            .await?;
        let (status, body) = collect(resp).await?;
        if status != StatusCode::NO_CONTENT {
            fail!("send: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }
}
