//! The WebSocket client, direct to the backend or through the proxy's
//! pass-through.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Msg, check_close, parse_payload};
use crate::{Result, fail};

pub struct Socket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Socket {
    pub async fn connect(url: &str, read_buffer: usize) -> Result<Socket> {
        let config = WebSocketConfig::default().read_buffer_size(read_buffer);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
        Ok(Socket { ws })
    }

    pub async fn next(&mut self) -> Result<Option<Msg>> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return parse_payload(text.as_bytes()).map(Some),
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame.map_or((None, String::new()), |f| {
                        (Some(u16::from(f.code)), f.reason.to_string())
                    });
                    check_close(code, &reason)?;
                    return Ok(None);
                }
                Some(Ok(Message::Binary(_))) => fail!("unexpected binary frame"),
                Some(Ok(_)) => {} // ping, pong
                Some(Err(e)) => fail!("websocket: {e}"),
                None => fail!("websocket ended without a close frame"),
            }
        }
    }

    pub async fn send(&mut self, text: String) -> Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }
}
