//! The example backend on its own: a chat room and an echo that speak only
//! WebSocket, plus a page and a JSON health endpoint.
//!
//! Run it, then put wsbridge in front of it with the shipped config:
//!
//! ```text
//! cargo run --example chat -- --listen 127.0.0.1:3000
//! cargo run -- --config proxy.toml
//! ```
//!
//! and open <http://127.0.0.1:8080/>. (`cargo run --release --example demo`
//! does both in one process.) Without the proxy the page at
//! <http://127.0.0.1:3000/> has no `/_bridge/client.js` to load.

mod app;

use std::net::SocketAddr;

use clap::Parser;
use tokio::net::TcpListener;
use tracing::info;

#[derive(Parser)]
#[command(about = "Example WebSocket-only chat backend for wsbridge")]
struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let listener = TcpListener::bind(args.listen).await?;
    info!(
        "chat backend listening on http://{}",
        listener.local_addr()?
    );
    app::serve(listener, async {
        // An error here means no signal handler could be installed: run on.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        info!("shutting down");
    })
    .await
}
