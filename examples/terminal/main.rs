//! A browser terminal through wsbridge: xterm.js with its `AttachAddon` on a
//! `BridgeSocket`, a shell on a pseudo-terminal behind it, and WebSocket
//! upgrades refused on `/pty`, as behind a firewall that blocks them. So
//! every keystroke goes up as a POST and the output comes down over SSE,
//! NDJSON stream or long-poll.
//!
//! ```text
//! npm ci --prefix examples/terminal        # xterm.js, once
//! cargo run --example terminal
//! cargo run --example terminal -- --listen 127.0.0.1:8080 --backend 127.0.0.1:3002
//! ```
//!
//! then open <http://127.0.0.1:8080/>. Both servers bind to loopback only: a
//! shell over HTTP is remote code execution by design. Ctrl-C stops both.

#[path = "backend.rs"]
mod backend;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "xterm.js over wsbridge to a shell on a pseudo-terminal, WebSockets refused")]
struct Args {
    /// Where the proxy listens: the address to open in a browser.
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = loopback)]
    listen: SocketAddr,
    /// Where the terminal backend listens.
    #[arg(long, default_value = "127.0.0.1:3002", value_parser = loopback)]
    backend: SocketAddr,
}

fn loopback(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|e| format!("{e}"))?;
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err("a shell must not be reachable from the network: use a loopback address".into())
    }
}

/// `/pty` bridges only: a WebSocket upgrade there is refused with 403.
pub fn proxy_config(listen: SocketAddr, backend: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
drain_timeout = "5s"

[upstream]
url = "http://{backend}"

[[routes]]
path = "/pty"
upstream = "ws://{backend}/pty"
transports = ["sse", "stream", "poll"]
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
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("terminal: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = wsbridge::Config::from_toml(&proxy_config(args.listen, args.backend))?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/terminal");
    if !root.join("node_modules/@xterm/xterm").exists() {
        return Err("xterm.js is missing: run `npm ci --prefix examples/terminal` first".into());
    }
    let backend_listener = TcpListener::bind(args.backend).await?;
    let proxy_listener = TcpListener::bind(args.listen).await?;
    // The backend outlives the proxy, so the proxy's closes reach it.
    let stop_backend = CancellationToken::new();
    let backend = tokio::spawn(backend::serve(
        backend_listener,
        root,
        stop_backend.clone().cancelled_owned(),
    ));
    println!("open http://{}/ in a browser", args.listen);
    let ctrl_c = async {
        // An error means no handler could be installed: run on.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let proxied = wsbridge::run(proxy_listener, config, ctrl_c).await;
    stop_backend.cancel();
    backend.await??;
    proxied?;
    Ok(())
}
