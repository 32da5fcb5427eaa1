//! The adoption examples in real headless Chromium, each behind the proxy
//! with WebSocket upgrades refused on its socket's route:
//!
//! - `examples/vite-app`, built by `vite build` with `@wsbridge/client`
//!   installed from the `npm pack` tarball, served as the upstream's static
//!   files: the page's `BridgeSocket` (typed as `WebSocket`) round-trips a
//!   message through the echo backend;
//! - `examples/terminal`: xterm.js with `AttachAddon` on a `BridgeSocket`
//!   to a shell on a pseudo-terminal; typing `echo wsbridge-$((6*7))` and
//!   Enter shows `wsbridge-42`.
//!
//! `node tests/browser/examples.mjs` (Playwright driving `/usr/bin/chromium`)
//! does the clicking and typing. Needs what tests/browser.rs needs plus the
//! built app and xterm.js (the steps in `.ci/run`):
//!
//!     (cd clients/js && npm ci && npm pack)
//!     (cd examples/vite-app && npm ci && npm install --no-save ../../clients/js/wsbridge-client-0.1.0.tgz && npm run build)
//!     npm ci --prefix examples/terminal
//!     cargo test --test examples_in_chromium -- --nocapture
//!
//! Without them the test is skipped, unless `CI=true`, where it fails.

mod support;

#[path = "../examples/terminal/backend.rs"]
mod terminal;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Response, StatusCode, header};
use serde_json::json;
use support::{Backend, HttpBackend, Proxy, body};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The browser run (two checks) must end well within CI's budget.
const NODE_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_work_in_chromium_with_upgrades_refused() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("WSB_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let app_dist = root.join("examples/vite-app/dist");
    let terminal_root = root.join("examples/terminal");
    if let Some(missing) = missing_tools(&root, &chromium, &app_dist, &terminal_root) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the examples' browser test cannot run in CI: {missing}");
        }
        eprintln!("\nSKIPPED the examples' browser test: {missing}\n");
        return;
    }

    // The Vite app: its built files as the upstream's HTTP, the echo
    // backend behind /echo, bridged only.
    let echo = Backend::start().await;
    let files = HttpBackend::start(move |req| {
        let dist = app_dist.clone();
        async move { static_file(&dist, req.uri().path()).await }
    })
    .await;
    let mut app_proxy = Proxy::start_toml(&files.config(&format!(
        r#"
        [[routes]]
        path = "/echo"
        upstream = "ws://{}/echo"
        transports = ["sse", "stream", "poll"]
        "#,
        echo.addr
    )))
    .await;

    // The terminal: its backend serves the page and /pty, bridged only.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let terminal_addr = listener.local_addr().unwrap();
    let stop_terminal = CancellationToken::new();
    let terminal = tokio::spawn(terminal::serve(
        listener,
        terminal_root,
        stop_terminal.clone().cancelled_owned(),
    ));
    let mut terminal_proxy = Proxy::start_toml(&format!(
        r#"
        [upstream]
        url = "http://{terminal_addr}"
        [[routes]]
        path = "/pty"
        upstream = "ws://{terminal_addr}/pty"
        transports = ["sse", "stream", "poll"]
        "#
    ))
    .await;

    // The control: both routes refuse a real WebSocket upgrade.
    for (proxy, path) in [(&app_proxy, "/echo"), (&terminal_proxy, "/pty")] {
        let status = upgrade_status(proxy, path).await;
        assert_eq!(status, 403, "{path} must refuse upgrades");
    }

    let mut node = tokio::process::Command::new("node");
    node.arg(root.join("tests/browser/examples.mjs"))
        .current_dir(root.join("tests/browser"))
        .env("WSB_VITE_APP", app_proxy.url(""))
        .env("WSB_TERMINAL", terminal_proxy.url(""))
        .env("WSB_CHROMIUM", &chromium);
    let (status, reports) = support::run_node_checks(node, NODE_TIMEOUT).await;

    app_proxy.shutdown().await;
    terminal_proxy.shutdown().await;
    stop_terminal.cancel();
    tokio::time::timeout(Duration::from_secs(15), terminal)
        .await
        .expect("the terminal backend did not stop")
        .expect("the terminal backend panicked")
        .expect("the terminal backend failed");

    for check in ["vite-app", "terminal"] {
        let report = reports
            .iter()
            .find(|r| r["check"] == check)
            .unwrap_or_else(|| panic!("no report for {check}"));
        assert_eq!(report["ok"], json!(true), "{check}: {report:#}");
        let transport = report["info"]["transport"].as_str().unwrap_or("");
        assert!(
            ["sse", "stream", "poll"].contains(&transport),
            "{check} used {transport:?}, not a bridged transport"
        );
    }
    assert!(status.success(), "examples.mjs exited with {status}");
}

fn missing_tools(root: &Path, chromium: &str, app_dist: &Path, terminal: &Path) -> Option<String> {
    if !Path::new(chromium).exists() {
        return Some(format!("{chromium} not found (apt-get install chromium)"));
    }
    if !root
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        return Some("tests/browser/node_modules missing (npm ci --prefix tests/browser)".into());
    }
    if !app_dist.join("index.html").exists() {
        return Some(format!(
            "{} missing (npm pack clients/js, install it, vite build)",
            app_dist.display()
        ));
    }
    if !terminal.join("node_modules/@xterm/xterm").exists() {
        return Some(
            "examples/terminal/node_modules missing (npm ci --prefix examples/terminal)".into(),
        );
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.map(|o| o.status.success()).unwrap_or(false) {
        return Some("node not found".into());
    }
    None
}

/// A file of the built app; `/` is index.html. Only plain names below
/// `dist` are served.
async fn static_file(
    dist: &Path,
    path: &str,
) -> Response<http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>> {
    let rel = if path == "/" {
        "index.html"
    } else {
        path.trim_start_matches('/')
    };
    let safe = rel
        .split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\\'));
    let content_type = match rel.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("map") => "application/json",
        _ => "application/octet-stream",
    };
    match tokio::fs::read(dist.join(rel)).await {
        Ok(bytes) if safe => {
            let mut r = Response::new(body(bytes));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, content_type.parse().unwrap());
            r
        }
        _ => {
            let mut r = Response::new(body("not found"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

/// The status a WebSocket handshake on `path` gets from the proxy.
async fn upgrade_status(proxy: &Proxy, path: &str) -> u16 {
    use tokio_tungstenite::tungstenite::Error;
    match tokio_tungstenite::connect_async(format!("ws://{}{path}", proxy.addr)).await {
        Ok(_) => 101,
        Err(Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("handshake on {path}: {e}"),
    }
}
