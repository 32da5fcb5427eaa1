//! The demo's proxy configuration (`proxy_config` in examples/demo.rs), for
//! the Chromium tests that drive the example chat app behind it.

use std::net::SocketAddr;

/// The demo's proxy in front of the chat app at `chat`: `/ws` bridges
/// only, as behind a firewall that blocks WebSockets; `/echo` allows all.
pub fn config(chat: SocketAddr) -> String {
    format!("[upstream]\nurl = \"http://{chat}\"\n{}", routes(chat))
}

/// The demo's routes, for a proxy (or a cluster replica) whose upstream is
/// the chat app.
pub fn routes(chat: SocketAddr) -> String {
    format!(
        r#"
        [[routes]]
        path = "/ws"
        upstream = "ws://{chat}/ws"
        transports = ["sse", "stream", "poll"]

        [[routes]]
        path = "/echo"
        upstream = "ws://{chat}/echo"
        transports = ["websocket", "sse", "stream", "poll"]
        "#
    )
}
