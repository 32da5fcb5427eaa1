//! A real nginx (Debian's `nginx-light`, `/usr/sbin/nginx`) on loopback, in
//! one of two roles ([`Role`]):
//!
//! - the kind of firewall the bridge exists for: it refuses WebSocket
//!   upgrades and holds streamed response bodies (`proxy_buffering on`,
//!   `X-Accel-Buffering` ignored, megabytes of buffers, and gzip on the
//!   streamed types, which is what really holds them: see the config), so
//!   SSE and stream show their headers and then nothing, while poll answers
//!   pass (the time-to-open scenario and tests/browser.rs, through
//!   `#[path]`);
//! - the peer the WebSocket pass-through is measured against: a plain
//!   reverse proxy that passes upgrades (the `ws-nginx` transport).
//!
//! std and rustix (to stop nginx's master with the signal it drains on).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's nginx lives; `WSB_NGINX` overrides it.
pub const NGINX_BIN: &str = "/usr/sbin/nginx";

/// How long nginx may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What the nginx is there for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Refuses upgrades and holds streamed bodies ([`buffering_config`]).
    BufferingFirewall,
    /// A plain reverse proxy that passes WebSocket upgrades
    /// ([`passthrough_config`]).
    WebsocketPassthrough,
}

/// A running nginx, stopped on drop.
pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

/// The nginx binary to use, if there is one.
pub fn nginx_bin() -> Option<PathBuf> {
    let bin = PathBuf::from(std::env::var("WSB_NGINX").unwrap_or_else(|_| NGINX_BIN.into()));
    bin.exists().then_some(bin)
}

/// What every nginx here shares: in the foreground, its files in `dir`,
/// no access log, `events` and the `http` server as given.
fn common(dir: &Path, head: &str, events: &str, http: &str) -> String {
    let d = dir.display();
    format!(
        r#"
daemon off;
{head}
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ {events} }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{http}
}}
"#
    )
}

/// The firewall: one server on `listen`, everything to `upstream`.
pub fn buffering_config(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let http = format!(
        r#"    server {{
        listen {listen};
        location / {{
            # The firewall: no WebSocket upgrade gets through.
            if ($http_upgrade) {{ return 403; }}
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # Read bodies into big buffers, whatever the upstream asks for.
            # (nginx still writes each chunk on once the browser can take
            # it; what holds a streamed body is a body filter, here gzip,
            # whose deflate output waits for tens of KiB of input, as a
            # scanning proxy waits for the whole body.)
            proxy_buffering on;
            proxy_ignore_headers X-Accel-Buffering;
            proxy_buffer_size 64k;
            proxy_buffers 16 1m;
            proxy_busy_buffers_size 2m;
            proxy_read_timeout 120s;
            gzip on;
            gzip_types text/event-stream application/x-ndjson application/json;
        }}
    }}"#
    );
    common(
        dir,
        "master_process off;\nworker_processes 1;",
        "worker_connections 512;",
        &http,
    )
}

/// The pass-through peer: one server on `listen`, everything to
/// `upstream`, upgrades passed (`Upgrade` and `Connection` set from the
/// browser's), responses not buffered; otherwise nginx's defaults (the
/// upgraded copy goes through `proxy_buffer_size` buffers, a page each).
/// A worker per core (`auto`: 2 on the bench machine), as wsbridge's
/// runtime runs a worker thread per core; `connections` is what one worker
/// may hold (two per WebSocket).
pub fn passthrough_config(
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    connections: u64,
) -> String {
    let http = format!(
        r#"    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      "";
    }}
    server {{
        listen {listen} backlog=4096;
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_buffering off;
            # Held sessions idle longer than the default minute.
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}"#
    );
    common(
        dir,
        &format!("master_process on;\nworker_processes auto;\nworker_rlimit_nofile {connections};"),
        &format!("worker_connections {connections};"),
        &http,
    )
}

impl Nginx {
    /// Starts nginx in front of `upstream` as `role` says, in a fresh
    /// directory under `scratch`, on a free loopback port.
    pub fn start(
        bin: &Path,
        scratch: &Path,
        upstream: SocketAddr,
        role: Role,
    ) -> Result<Nginx, String> {
        let mut last = String::new();
        for attempt in 0..3 {
            let dir = scratch.join(format!("nginx-{}-{attempt}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            // A free port, given up just before nginx takes it.
            let listen = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| e.to_string())?;
            let conf = dir.join("nginx.conf");
            let text = match role {
                Role::BufferingFirewall => buffering_config(&dir, listen, upstream),
                Role::WebsocketPassthrough => passthrough_config(&dir, listen, upstream, nofile()),
            };
            std::fs::write(&conf, text).map_err(|e| e.to_string())?;
            let mut child = Command::new(bin)
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
            let started = Instant::now();
            while started.elapsed() < START_TIMEOUT {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!(
                        "nginx exited with {status}: {}",
                        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect(listen).is_ok() {
                    return Ok(Nginx {
                        addr: listen,
                        child,
                        dir,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            stop(&mut child);
            if last.is_empty() {
                last = "nginx did not listen in time".into();
            }
        }
        Err(last)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The master and its workers (whose CPU and memory are nginx's).
    pub fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        std::iter::once(master)
            .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
            .collect()
    }
}

/// The open-file limit this process (and so nginx) has.
fn nofile() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024)
}

/// Stops nginx: SIGTERM (the master ends its workers and then itself), a
/// kill if it is still there after a while.
fn stop(child: &mut Child) {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
