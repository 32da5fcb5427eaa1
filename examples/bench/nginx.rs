//! A real nginx (Debian's `nginx-light`, `/usr/sbin/nginx`) on loopback,
//! set up as the kind of firewall the bridge exists for: it refuses WebSocket
//! upgrades and holds streamed response bodies (`proxy_buffering on`,
//! `X-Accel-Buffering` ignored, megabytes of buffers, and gzip on the
//! streamed types, which is what really holds them: see the config), so SSE
//! and stream show their headers and then nothing, while poll answers pass. Shared by the time-to-open
//! bench scenario and tests/browser.rs (through `#[path]`); std only.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's nginx lives; `WSB_NGINX` overrides it.
pub const NGINX_BIN: &str = "/usr/sbin/nginx";

/// How long nginx may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running nginx, stopped (killed) on drop.
pub struct BufferingNginx {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

/// The nginx binary to use, if there is one.
pub fn nginx_bin() -> Option<PathBuf> {
    let bin = PathBuf::from(std::env::var("WSB_NGINX").unwrap_or_else(|_| NGINX_BIN.into()));
    bin.exists().then_some(bin)
}

/// The configuration: one server on `listen`, everything to `upstream`.
pub fn config(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
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
    }}
}}
"#
    )
}

impl BufferingNginx {
    /// Starts nginx in front of `upstream`, in a fresh directory under
    /// `scratch`, on a free loopback port.
    pub fn start(
        bin: &Path,
        scratch: &Path,
        upstream: SocketAddr,
    ) -> Result<BufferingNginx, String> {
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
            std::fs::write(&conf, config(&dir, listen, upstream)).map_err(|e| e.to_string())?;
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
                    return Ok(BufferingNginx {
                        addr: listen,
                        child,
                        dir,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            if last.is_empty() {
                last = "nginx did not listen in time".into();
            }
        }
        Err(last)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for BufferingNginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
