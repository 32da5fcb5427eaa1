//! The two server processes of a run: the backend (this executable re-run as
//! `bench backend`) and the release proxy with a bench configuration. Each
//! scenario starts fresh ones per transport, so one run's sessions, memory
//! and CPU never leak into the next.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::clients::PREFIX;
use crate::clients::http::HttpConn;
use crate::{Result, fail};

/// How long a process may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the proxy may take to exit after SIGTERM; its drain_timeout is
/// set to 2 s below.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The backend process.
pub struct Backend {
    child: Child,
    stdin: Option<ChildStdin>,
    pub addr: SocketAddr,
}

impl Backend {
    pub async fn start(exe: &Path) -> Result<Backend> {
        let mut child = Command::new(exe)
            .arg("backend")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("backend stdout")?;
        let mut line = String::new();
        let mut lines = BufReader::new(stdout);
        timeout(START_TIMEOUT, lines.read_line(&mut line))
            .await
            .map_err(|_| "the backend did not start listening")??;
        let addr = line
            .trim()
            .strip_prefix("LISTEN ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("unexpected backend output {line:?}"))?;
        Ok(Backend {
            stdin: child.stdin.take(),
            child,
            addr,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Starts every publisher, present and future.
    pub async fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or("backend stdin closed")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    pub async fn stop(mut self) {
        // End of stdin ends the backend.
        drop(self.stdin.take());
        if timeout(STOP_TIMEOUT, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// Replay settings of a proxy run.
#[derive(Clone, Copy)]
pub struct ProxySettings {
    /// `replay.max_pending_bytes`: where backpressure starts.
    pub max_pending: &'static str,
}

/// The proxy process.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    /// Holds the config and the log until the run is over.
    _dir: tempfile::TempDir,
}

/// What stopping the proxy revealed.
#[derive(Default)]
pub struct Findings {
    /// Correctness problems: the run fails.
    pub failures: Vec<String>,
    /// Worth a look, not a failure (warnings the proxy logged, a slow exit).
    pub notes: Vec<String>,
}

impl Proxy {
    pub async fn start(bin: &Path, backend: SocketAddr, settings: ProxySettings) -> Result<Proxy> {
        Proxy::start_with(bin, backend, settings, "").await
    }

    /// Like [`Proxy::start`], with `extra` TOML tables appended (the
    /// cluster scenario's `[cluster]`).
    pub async fn start_with(
        bin: &Path,
        backend: SocketAddr,
        settings: ProxySettings,
        extra: &str,
    ) -> Result<Proxy> {
        let dir = tempfile::tempdir()?;
        let addr = free_port()?;
        let config = dir.path().join("proxy.toml");
        std::fs::write(
            &config,
            format!(
                "{}
{extra}",
                config_toml(addr, backend, settings)
            ),
        )?;
        let log = dir.path().join("proxy.log");
        let level = std::env::var("WSBRIDGE_LOG").unwrap_or_else(|_| "warn".into());
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env("WSBRIDGE_LOG", level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ready(addr).await {
                break;
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                fail!("the proxy exited at start ({status}): {log}");
            }
            if Instant::now() > deadline {
                fail!("the proxy did not become ready on {addr}");
            }
            sleep(Duration::from_millis(20)).await;
        }
        Ok(Proxy {
            child,
            addr,
            log,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the proxy with SIGTERM (a graceful drain) and reports a crash
    /// during the run, a slow exit, and anything it logged at warn or above.
    pub async fn stop(mut self, findings: &mut Findings) {
        match self.child.try_wait() {
            Ok(Some(status)) => findings
                .failures
                .push(format!("the proxy exited during the run ({status})")),
            _ => {
                let pid = self.child.id().and_then(|p| i32::try_from(p).ok());
                if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
                match timeout(STOP_TIMEOUT, self.child.wait()).await {
                    Ok(Ok(status)) if status.success() => {}
                    Ok(Ok(status)) => findings
                        .notes
                        .push(format!("the proxy exited with {status} after SIGTERM")),
                    _ => {
                        findings.notes.push(format!(
                            "the proxy was still running {}s after SIGTERM (drain_timeout 2s); killed",
                            STOP_TIMEOUT.as_secs()
                        ));
                        let _ = self.child.kill().await;
                    }
                }
            }
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        if !lines.is_empty() {
            findings.notes.push(format!(
                "the proxy logged {} line(s) at warn or above; first: {}",
                lines.len(),
                lines[0]
            ));
        }
    }
}

/// A port nobody listens on now (the proxy binds it a moment later).
pub fn free_port() -> Result<SocketAddr> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?)
}

async fn ready(addr: SocketAddr) -> bool {
    let Ok(mut conn) = HttpConn::connect(addr).await else {
        return false;
    };
    let path = format!("{PREFIX}/readyz");
    matches!(conn.request(Method::GET, &path, None).await, Ok(r) if r.status() == StatusCode::OK)
}

/// The proxy configuration of the bench: limits far above the load, so
/// nothing but the proxy's own speed shows; backpressure, so nothing is
/// ever dropped. `server.max_connections` is left to its default, the most
/// the open-file limit (raised by `probe`, inherited) holds: a larger value
/// is refused at start.
fn config_toml(listen: SocketAddr, backend: SocketAddr, s: ProxySettings) -> String {
    format!(
        r#"# Written by the wsbridge bench (examples/bench).
[server]
listen = "{listen}"
drain_timeout = "2s"

[upstream]
url = "http://{backend}"

[sessions]
max_sessions = 100000
idle_timeout = "10m"

[replay]
max_pending_bytes = "{pending}"
overflow = "backpressure"
"#,
        pending = s.max_pending
    )
}
