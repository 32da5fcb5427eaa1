//! The terminal example's backend: an ordinary hyper app that knows nothing
//! of wsbridge. `GET /pty?cols=C&rows=R` is a WebSocket to a shell on a
//! fresh pseudo-terminal: binary frames from the server are the terminal's
//! output, every frame from the client is typed into it. `GET /` and the
//! `/vendor/` files are the page (`index.html`, `main.js`) and xterm.js from
//! `examples/terminal/node_modules` (`npm ci --prefix examples/terminal`).
//!
//! A shell over a socket is remote code execution by design: this binds to
//! loopback only, and has no authentication. Do not put it on a network.
//! Shared by `examples/terminal/main.rs` and `tests/examples_in_chromium.rs`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Body = Full<Bytes>;

/// Terminal size when the page gives none, and the largest accepted.
const DEFAULT_SIZE: (u16, u16) = (80, 24);
const MAX_SIZE: u16 = 1000;
/// Terminal output is read and sent in chunks of at most this.
const READ_CHUNK: usize = 16 * 1024;
/// Open terminals at once: each is a shell process.
const MAX_TERMINALS: usize = 16;

/// The page's files: URL path, file under the example directory, type.
const FILES: &[(&str, &str, &str)] = &[
    ("/", "index.html", "text/html; charset=utf-8"),
    ("/main.js", "main.js", "text/javascript; charset=utf-8"),
    (
        "/vendor/xterm.mjs",
        "node_modules/@xterm/xterm/lib/xterm.mjs",
        "text/javascript; charset=utf-8",
    ),
    (
        "/vendor/xterm.css",
        "node_modules/@xterm/xterm/css/xterm.css",
        "text/css; charset=utf-8",
    ),
    (
        "/vendor/addon-attach.mjs",
        "node_modules/@xterm/addon-attach/lib/addon-attach.mjs",
        "text/javascript; charset=utf-8",
    ),
];

struct App {
    /// examples/terminal: where the page and node_modules are.
    root: PathBuf,
    /// Cancelled on shutdown: every terminal's shell is killed.
    stop: CancellationToken,
    /// The terminal tasks, so shutdown waits for their shells to go.
    terminals: TaskTracker,
}

/// Serves on `listener` until `shutdown`; then ends every terminal.
pub async fn serve(
    listener: TcpListener,
    root: PathBuf,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let app = Arc::new(App {
        root,
        stop: CancellationToken::new(),
        terminals: TaskTracker::new(),
    });
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            // Why: a new connection; served on its own task.
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let app = Arc::clone(&app);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let app = Arc::clone(&app);
                        async move { Ok::<_, Infallible>(handle(&app, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
            // Why: the owner asked us to stop.
            () = &mut shutdown => break,
        }
    }
    app.stop.cancel();
    app.terminals.close();
    app.terminals.wait().await;
    Ok(())
}

async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    if path == "/pty" {
        if app.terminals.len() >= MAX_TERMINALS {
            return text(StatusCode::SERVICE_UNAVAILABLE, "too many terminals\n");
        }
        let size = size_from_query(req.uri().query());
        return upgrade(app, req, size);
    }
    let Some(&(_, file, content_type)) = FILES.iter().find(|(p, _, _)| *p == path) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    match tokio::fs::read(app.root.join(file)).await {
        Ok(bytes) => Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from(bytes))
            .expect("static response"),
        Err(e) => text(
            StatusCode::NOT_FOUND,
            &format!("{file}: {e} (run `npm ci --prefix examples/terminal`)\n"),
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(body.to_owned()))
        .expect("static response")
}

/// `cols` and `rows` from the query, each 1..=MAX_SIZE, else the default.
fn size_from_query(query: Option<&str>) -> (u16, u16) {
    let (mut cols, mut rows) = DEFAULT_SIZE;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let n = v.parse::<u16>().ok().filter(|n| (1..=MAX_SIZE).contains(n));
        match (&*k, n) {
            ("cols", Some(n)) => cols = n,
            ("rows", Some(n)) => rows = n,
            _ => {}
        }
    }
    (cols, rows)
}

/// `101` and a terminal on the upgraded connection; `400` for anything
/// that is no WebSocket handshake.
fn upgrade(app: &Arc<App>, mut req: Request<Incoming>, size: (u16, u16)) -> Response<Body> {
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| is_upgrade)
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "a WebSocket handshake is expected\n",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let stop = app.stop.clone();
    app.terminals.spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            if let Err(e) = terminal(ws, size, stop).await {
                tracing::warn!(error = %e, "terminal failed");
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).expect("base64 is a header value"),
        )
        .body(Body::default())
        .expect("static response")
}

/// A new pseudo-terminal: the master side, and the path of the other side.
fn open_pty(size: (u16, u16)) -> io::Result<(OwnedFd, OwnedFd)> {
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::termios::tcsetwinsize(
        &master,
        rustix::termios::Winsize {
            ws_col: size.0,
            ws_row: size.1,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok((master, slave))
}

/// The shell: bash if there is one, else sh; interactive, without the
/// user's startup files, so every session starts the same.
fn shell_command() -> (&'static str, &'static [&'static str]) {
    if Path::new("/bin/bash").exists() {
        ("/bin/bash", &["--noprofile", "--norc", "-i"])
    } else {
        ("/bin/sh", &["-i"])
    }
}

/// One terminal, from the handshake until the shell exits, the page goes
/// or the server stops.
async fn terminal<S>(
    ws: WebSocketStream<S>,
    size: (u16, u16),
    stop: CancellationToken,
) -> io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (master, slave) = open_pty(size)?;
    let (shell, args) = shell_command();
    // `setsid --ctty`: a new session whose controlling terminal is the pty,
    // so Ctrl-C, job control and SIGHUP on close work as in any terminal.
    let mut child = tokio::process::Command::new("setsid")
        .arg("--ctty")
        .arg(shell)
        .args(args)
        .env("TERM", "xterm-256color")
        .env("PS1", "\\w\\$ ")
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave))
        .kill_on_drop(true)
        .spawn()?;
    // Two handles on the master: one read and one write can then be in
    // flight at once (each tokio File runs one operation at a time).
    let mut output = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
    let mut input = tokio::fs::File::from_std(std::fs::File::from(master));
    let (mut sink, mut frames) = ws.split();
    let mut buf = vec![0u8; READ_CHUNK];
    let close = loop {
        tokio::select! {
            // Why: the shell wrote; a read error (EIO) means it has exited.
            read = output.read(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        break None;
                    }
                }
                _ => break Some((CloseCode::Normal, "the shell exited")),
            },
            // Why: the page typed (text or binary, both are bytes to the pty).
            frame = frames.next() => match frame {
                Some(Ok(Message::Text(t))) => input.write_all(t.as_bytes()).await?,
                Some(Ok(Message::Binary(b))) => input.write_all(&b).await?,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            },
            // Why: the server stops; the page is told it went away.
            () = stop.cancelled() => break Some((CloseCode::Away, "server stopping")),
        }
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    if let Some((code, reason)) = close {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }
    Ok(())
}
