//! JupyterLab, unchanged, through the bridge in a real headless Chromium:
//! `jupyter lab` on loopback with a token (Tornado's own origin check on),
//! the proxy in front of it with `client.inject = true` and every WebSocket
//! upgrade refused, so the kernel, event and terminal sockets are all
//! bridged; over plain HTTP/1.1 and over TLS with HTTP/2. The page creates
//! a notebook, runs `print(6*7)` and reads `42`, then opens a terminal, runs
//! `echo jupyter-$((6*7))` and reads `jupyter-42` (tests/browser/jupyter.mjs).
//!
//! Needs JupyterLab in `target/venv-jupyter` (`.ci/run` makes it:
//! `python3 -m venv target/venv-jupyter && target/venv-jupyter/bin/pip install
//! jupyterlab`; or name a `jupyter` binary in `WSB_JUPYTER`), Chromium and
//! `npm ci --prefix tests/browser`. Without them the test is skipped, unless
//! `CI=true`, where it fails.
//!
//!     cargo test --test jupyter -- --nocapture

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::{Proxy, free_port};

/// The whole browser run (two labs) must end well within CI's budget.
const NODE_TIMEOUT: Duration = Duration::from_secs(240);
/// How long JupyterLab may take to answer its status API after starting.
const JUPYTER_START: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jupyterlab_in_chromium_with_upgrades_refused() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("WSB_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let jupyter = std::env::var("WSB_JUPYTER").map_or_else(
        |_| target_dir().join("venv-jupyter/bin/jupyter"),
        PathBuf::from,
    );
    if let Some(missing) = missing_tools(&root, &chromium, &jupyter) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("jupyter test cannot run in CI: {missing}");
        }
        eprintln!(
            "\n{}\nSKIPPED jupyter test: {missing}\n{}\n",
            "!".repeat(72),
            "!".repeat(72)
        );
        return;
    }

    let lab = Lab::start(&jupyter).await;
    let dir = tempfile::tempdir().unwrap();
    let mut plain = Proxy::start_toml(&proxy_config(lab.port, "")).await;
    let mut tls = Proxy::start_toml(&proxy_config(lab.port, &tls_section(dir.path()))).await;
    let runs = json!([
        {"name": "jupyter_http1", "url": format!("http://127.0.0.1:{}", plain.addr.port()), "protocol": "http/1.1"},
        {"name": "jupyter_h2_tls", "url": format!("https://127.0.0.1:{}", tls.addr.port()), "protocol": "h2"},
    ]);

    let mut node = tokio::process::Command::new("node");
    node.arg(root.join("tests/browser/jupyter.mjs"))
        .current_dir(root.join("tests/browser"))
        .env("WSB_JUPYTER_RUNS", runs.to_string())
        .env("WSB_JUPYTER_TOKEN", &lab.token)
        .env("WSB_CHROMIUM", &chromium);
    let (status, reports) = support::run_node_checks(node, NODE_TIMEOUT).await;

    // The sockets were bridged (upgrades are refused, so nothing else could
    // have carried them): each proxy opened sessions.
    let http = reqwest::Client::builder()
        .no_proxy()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    for (name, base) in [
        ("http1", format!("http://{}", plain.addr)),
        ("h2_tls", format!("https://{}", tls.addr)),
    ] {
        let metrics = http
            .get(format!("{base}/_bridge/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let opened = metrics
            .lines()
            .find_map(|l| l.strip_prefix("wsbridge_sessions_opened_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        // A kernel, the event stream and a terminal at the least.
        assert!(
            opened >= 3.0,
            "{name}: only {opened} bridged sessions were opened"
        );
    }
    plain.shutdown().await;
    tls.shutdown().await;
    drop(lab);

    let failed = support::list_failed(&reports);
    assert_eq!(
        reports.len(),
        2,
        "jupyter.mjs reported {} runs",
        reports.len()
    );
    assert!(
        failed.is_empty(),
        "{} JupyterLab run(s) failed",
        failed.len()
    );
    assert!(status.success(), "jupyter.mjs exited with {status}");
}

/// Why the run cannot happen here, if it cannot.
fn missing_tools(root: &Path, chromium: &str, jupyter: &Path) -> Option<String> {
    if !jupyter.exists() {
        return Some(format!(
            "{} not found (python3 -m venv target/venv-jupyter && target/venv-jupyter/bin/pip install jupyterlab)",
            jupyter.display()
        ));
    }
    if !Path::new(chromium).exists() {
        return Some(format!("{chromium} not found (apt-get install chromium)"));
    }
    if !root
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        return Some("tests/browser/node_modules missing (npm ci --prefix tests/browser)".into());
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.map(|o| o.status.success()).unwrap_or(false) {
        return Some("node not found".into());
    }
    None
}

/// The target directory (honours `CARGO_TARGET_DIR`): the parent of the
/// scratch directory cargo gives integration tests.
fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

/// The proxy in front of the lab: every path passes through, and a
/// WebSocket on any path is bridged (sse, stream, poll), never spliced.
fn proxy_config(port: u16, extra: &str) -> String {
    format!(
        "{extra}\n\
         [upstream]\nurl = \"http://127.0.0.1:{port}\"\n\
         [client]\ninject = true\n\
         [[routes]]\npath = \"/\"\nupstream = \"ws://127.0.0.1:{port}/\"\n\
         transports = [\"sse\", \"stream\", \"poll\"]\n"
    )
}

/// TLS with a self-signed certificate for 127.0.0.1 (Chromium runs with
/// `--ignore-certificate-errors`); HTTP/2 by ALPN.
fn tls_section(dir: &Path) -> String {
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&pem, key.signing_key.serialize_pem()).unwrap();
    format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        pem.display()
    )
}

/// `jupyter lab` on 127.0.0.1, in a directory of its own, killed on drop.
struct Lab {
    port: u16,
    token: String,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Lab {
    async fn start(jupyter: &Path) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).unwrap();
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let port = free_port();
        let sub = |name: &str| {
            let p = dir.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let root_dir = sub("root");
        // The terminal's DOM renderer keeps its screen readable as text.
        let settings = sub("settings");
        let terminal = settings.join("@jupyterlab/terminal-extension");
        std::fs::create_dir_all(&terminal).unwrap();
        std::fs::write(
            terminal.join("plugin.jupyterlab-settings"),
            r#"{"rendererType": "dom"}"#,
        )
        .unwrap();
        let mut cmd = tokio::process::Command::new(jupyter);
        cmd.arg("lab")
            .arg("--no-browser")
            .arg(format!("--ServerApp.token={token}"))
            .arg("--ServerApp.ip=127.0.0.1")
            .arg(format!("--ServerApp.port={port}"))
            .arg("--ServerApp.port_retries=0")
            // CI containers run as root; the lab is on loopback in a tempdir.
            .arg("--allow-root")
            .arg(format!("--ServerApp.root_dir={}", root_dir.display()))
            // The page names the app for the script (window.jupyterapp).
            .arg("--LabApp.expose_app_in_browser=True")
            .arg("--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")
            .env("JUPYTER_CONFIG_DIR", sub("config"))
            .env("JUPYTER_RUNTIME_DIR", sub("runtime"))
            .env("JUPYTERLAB_SETTINGS_DIR", &settings)
            .env("JUPYTERLAB_WORKSPACES_DIR", sub("workspaces"))
            .env("IPYTHONDIR", sub("ipython"))
            .env("SHELL", "/bin/sh")
            .env_remove("JUPYTER_TOKEN")
            .current_dir(&root_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = cmd.spawn().expect("jupyter lab could not be started");
        let mut lab = Lab {
            port,
            token,
            child,
            _dir: dir,
        };
        lab.wait_ready().await;
        lab
    }

    /// Until the status API answers with the token: the server is up.
    async fn wait_ready(&mut self) {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = format!("http://127.0.0.1:{}/api/status", self.port);
        let deadline = tokio::time::Instant::now() + JUPYTER_START;
        loop {
            let ok = http
                .get(&url)
                .header("authorization", format!("token {}", self.token))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("jupyter lab exited with {status} before it answered {url}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "jupyter lab did not answer {url} within {JUPYTER_START:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
