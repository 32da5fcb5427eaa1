//! The one-command demo: the example chat backend and wsbridge in front of it,
//! with WebSocket upgrades refused on the chat route as a blocking firewall
//! would, so the page has to chat over SSE, stream or poll.
//!
//! ```text
//! cargo run --release --example demo
//! cargo run --release --example demo -- --listen 0.0.0.0:8080 --backend 127.0.0.1:3001
//! ```
//!
//! then open <http://127.0.0.1:8080/> in as many tabs as you like: a dozen
//! tabs of one browser all chat over plain HTTP/1.1, whose six connections
//! per host would otherwise run out at the sixth, because every tab's socket
//! shares one connection to the proxy. A line under the header says that
//! WebSocket upgrades are refused on `/ws` by configuration, which transport
//! the page is on and why (the client's `transport` event), and that it
//! shares one connection (`socket.shared`) with how many other tabs. Go
//! offline and back (the browser's developer tools):
//! the page shows "reconnecting", then "resumed, nothing lost", with what was
//! said meanwhile. Ctrl-C stops both: the proxy drains first (every session
//! gets close 1001), then the backend.

#[path = "chat/app.rs"]
mod app;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Parser)]
#[command(about = "The wsbridge demo: the chat backend behind the proxy, WebSockets refused")]
struct Args {
    /// Where the proxy listens: the address to open in a browser.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the chat backend listens.
    #[arg(long, default_value = "127.0.0.1:3000")]
    backend: SocketAddr,
}

/// The proxy's configuration: `/ws` bridges only (a WebSocket upgrade there is
/// refused with 403, as behind a firewall that blocks them); `/echo` allows
/// every transport.
fn proxy_config(listen: SocketAddr, backend: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
drain_timeout = "5s"

[upstream]
url = "http://{backend}"

[[routes]]
path = "/ws"
upstream = "ws://{backend}/ws"
transports = ["sse", "stream", "poll"]

[[routes]]
path = "/echo"
upstream = "ws://{backend}/echo"
transports = ["websocket", "sse", "stream", "poll"]
"#
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match demo(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = wsbridge::Config::from_toml(&proxy_config(args.listen, args.backend))?;

    let backend_listener = TcpListener::bind(args.backend)
        .await
        .map_err(|e| format!("cannot listen on {} for the backend: {e}", args.backend))?;
    let proxy_listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {} for the proxy: {e}", args.listen))?;

    // The backend outlives the proxy: it stops only once the proxy has
    // drained, so the proxy's closes reach it.
    let stop_backend = CancellationToken::new();
    let backend = tokio::spawn(app::serve(
        backend_listener,
        stop_backend.clone().cancelled_owned(),
    ));
    info!("chat backend on http://{}", args.backend);

    let ctrl_c = async {
        // An error here means no signal handler could be installed: run on.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        info!("Ctrl-C: shutting down");
    };
    println!(
        "open http://{}/ in a browser",
        browsable(proxy_listener.local_addr()?)
    );
    let proxied = wsbridge::run(proxy_listener, config, ctrl_c).await;

    stop_backend.cancel();
    backend.await??;
    proxied?;
    Ok(())
}

/// The address to type into a browser: an unspecified listen address
/// (`0.0.0.0`, `::`) is reachable as localhost.
fn browsable(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}
