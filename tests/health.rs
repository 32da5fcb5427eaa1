//! `wsbridge health` on the real binary: exit 0 only when `{prefix}/healthz`
//! answers 200, on the admin listener when one is configured, else on the
//! main one; 1 for any other answer, a refused connection or no answer in
//! time; 2 for a configuration that cannot be read.
//!
//!     cargo test --test health

mod support;

use std::process::Stdio;

use http::{Response, StatusCode};
use support::{Backend, HttpBackend, Proxy, body};
use tokio::net::TcpListener;

async fn health(args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .arg("health")
        .args(args)
        .env_remove("WSBRIDGE_CONFIG")
        .env_remove("WSBRIDGE_LISTEN")
        .env_remove("WSBRIDGE_UPSTREAM")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("wsbridge could not be started");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().expect("killed by a signal"), text)
}

/// A port nothing listens on (bound, then released).
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_status_follows_healthz() {
    let backend = Backend::start().await;
    let mut proxy = Proxy::start(&backend, "").await;

    let (code, out) = health(&["--url", &proxy.url("/_bridge/healthz")]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("200"), "{out}");

    // Another status, on a path that is no health endpoint.
    let (code, out) = health(&["--url", &proxy.url("/_bridge/nope")]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("404"), "{out}");

    let failing = HttpBackend::start(|_req| async {
        let mut r = Response::new(body("draining"));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r
    })
    .await;
    let (code, out) = health(&["--url", &format!("http://{}/_bridge/healthz", failing.addr)]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("503"), "{out}");

    let port = closed_port().await;
    let (code, out) = health(&["--url", &format!("http://127.0.0.1:{port}/_bridge/healthz")]).await;
    assert_eq!(code, 1, "{out}");

    // Accepts and never answers: the timeout ends it.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let url = format!("http://{silent_addr}/_bridge/healthz");
    let (code, out) = health(&["--url", &url, "--timeout", "300ms"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no answer") || out.contains("timed out"),
        "{out}"
    );
    hold.abort();

    let (code, out) = health(&["--url", "https://127.0.0.1:1/"]).await;
    assert_eq!(code, 1, "{out}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_comes_from_the_config() {
    let backend = Backend::start().await;
    let mut proxy = Proxy::start(&backend, "").await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let upstream = format!("[upstream]\nurl = \"{}\"\n", backend.http_url());
    let dead = closed_port().await;

    // The main listener, with no [admin].
    let main_only = write(
        "main.toml",
        format!("{upstream}[server]\nlisten = \"{}\"\n", proxy.addr),
    );
    let (code, out) = health(&["--config", &main_only]).await;
    assert_eq!(code, 0, "{out}");

    // [admin] wins over the main listener: here the main one is dead and
    // the "admin" address is the live proxy (which serves healthz too).
    let admin = write(
        "admin.toml",
        format!(
            "{upstream}[server]\nlisten = \"127.0.0.1:{dead}\"\n[admin]\nlisten = \"{}\"\n",
            proxy.addr
        ),
    );
    let (code, out) = health(&["--config", &admin]).await;
    assert_eq!(code, 0, "{out}");
    // ...and the other way round fails.
    let admin_dead = write(
        "admin-dead.toml",
        format!(
            "{upstream}[server]\nlisten = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{dead}\"\n",
            proxy.addr
        ),
    );
    let (code, out) = health(&["--config", &admin_dead]).await;
    assert_eq!(code, 1, "{out}");

    // The prefix is the configured one.
    let prefixed = write(
        "prefix.toml",
        format!(
            "{upstream}[server]\nlisten = \"{}\"\nprefix = \"/rt\"\n",
            proxy.addr
        ),
    );
    let (code, out) = health(&["--config", &prefixed]).await;
    assert_eq!(
        code, 1,
        "the proxy's prefix is /_bridge, so /rt/healthz is not found: {out}"
    );

    let broken = write("broken.toml", "[server]\nlisten = 5\n".into());
    let (code, out) = health(&["--config", &broken]).await;
    assert_eq!(code, 2, "{out}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_and_defaults_without_a_file() {
    let backend = Backend::start().await;
    let mut proxy = Proxy::start(&backend, "").await;
    // No file and no --upstream: the listeners' defaults and --listen apply.
    let (code, out) = health(&["--listen", &proxy.addr.to_string()]).await;
    assert_eq!(code, 0, "{out}");
    let dead = closed_port().await;
    let (code, out) = health(&["--listen", &format!("127.0.0.1:{dead}")]).await;
    assert_eq!(code, 1, "{out}");
    proxy.shutdown().await;
}
