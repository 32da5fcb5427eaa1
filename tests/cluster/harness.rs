//! Replicas of the real binary with `[cluster]` on free loopback ports, and
//! a real HAProxy round-robin in front of them, with no stickiness.
//! Shared by tests/cluster.rs and tests/browser.rs.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Backend, PATIENCE, ProxyProcess, Session, free_port};

/// HAProxy's binary (Debian's `haproxy`), or `None` when it is missing and
/// the run may skip; under `CI=true` a missing HAProxy fails the test.
pub fn haproxy() -> Option<&'static str> {
    const PATHS: [&str; 3] = [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ];
    if let Some(p) = PATHS.iter().find(|p| std::path::Path::new(p).exists()) {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: haproxy is required (apt-get install haproxy)"
    );
    eprintln!("skipped: haproxy is not installed (apt-get install haproxy)");
    None
}

pub struct Replica {
    pub process: ProxyProcess,
    /// `cluster.listen` = `cluster.advertise`.
    pub internal: SocketAddr,
}

pub struct Cluster {
    pub replicas: Vec<Option<Replica>>,
    pub lb: SocketAddr,
    pub http: reqwest::Client,
    pub secret: Vec<u8>,
    haproxy: Child,
    _files: Vec<tempfile::NamedTempFile>,
}

/// The secret every replica of a test shares.
fn secret_file(secret: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(secret).unwrap();
    f
}

impl Cluster {
    /// `n` replicas (static `peers`), `extra` TOML for each, HAProxy in front.
    pub async fn start(backend: &Backend, n: usize, extra: &str) -> Option<Cluster> {
        Cluster::start_upstream(backend.addr, n, extra).await
    }

    /// Like [`Cluster::start`], in front of any HTTP upstream.
    pub async fn start_upstream(upstream: SocketAddr, n: usize, extra: &str) -> Option<Cluster> {
        let haproxy_bin = haproxy()?;
        let secret: Vec<u8> = (0..48u8).map(|i| b'a' + i % 26).collect();
        let key = secret_file(&secret);
        // The internal listeners' ports are in every replica's config (its
        // own and its peers'): one taken before its replica binds it means
        // picking them all again.
        let mut replicas = Vec::new();
        for _attempt in 0..5 {
            let internals: Vec<SocketAddr> = (0..n)
                .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
                .collect();
            let peers = internals
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ");
            replicas.clear();
            for internal in &internals {
                let toml = format!(
                    "{extra}\n[cluster]\nlisten = \"{internal}\"\nadvertise = \"{internal}\"\npeers = [{peers}]\nsecret_file = \"{}\"\n",
                    key.path().display()
                );
                let Ok(process) = ProxyProcess::try_start_upstream(upstream, &toml, &[], &[]).await
                else {
                    break;
                };
                replicas.push(Some(Replica {
                    process,
                    internal: *internal,
                }));
            }
            if replicas.len() == n {
                break;
            }
        }
        assert_eq!(replicas.len(), n, "no free internal ports after 5 attempts");
        let (lb, haproxy, cfg) = start_haproxy(
            haproxy_bin,
            replicas.iter().flatten().map(|r| r.process.addr),
        )
        .await;
        let cluster = Cluster {
            replicas,
            lb,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            secret,
            haproxy,
            _files: vec![key, cfg],
        };
        cluster.wait_for_peers(n - 1).await;
        Some(cluster)
    }

    pub fn lb_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.lb)
    }

    /// Opens a session through the load balancer.
    pub async fn open(&self, url: &str) -> Session {
        let r = self
            .http
            .post(self.lb_url("/_bridge/sessions"))
            .json(&json!({"url": url}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let json: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status.as_u16(), 201, "open {url}: {json}");
        Session::from_open(json, self.lb_url(""), self.http.clone())
    }

    /// Which replica owns a session: the tag in its id is the hash of the
    /// owner's advertise address.
    pub fn owner_of(&self, id: &str) -> usize {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(id)
            .expect("a cluster id is base64url");
        assert_eq!(raw.len(), 30, "a cluster id is 30 bytes");
        self.replicas
            .iter()
            .position(|r| {
                r.as_ref().is_some_and(|r| {
                    let h = aws_lc_rs::digest::digest(
                        &aws_lc_rs::digest::SHA256,
                        r.internal.to_string().as_bytes(),
                    );
                    h.as_ref()[..4] == raw[16..20]
                })
            })
            .expect("the owner is one of the replicas")
    }

    /// A metric's value summed over its label sets matching `filter`, on
    /// replica `i` (its admin listener).
    pub async fn metric(&self, i: usize, name: &str, filter: &str) -> f64 {
        let r = self.replicas[i].as_ref().unwrap();
        let text = self
            .http
            .get(r.process.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until every live replica's peer gauge shows `n`.
    pub async fn wait_for_peers(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        for i in 0..self.replicas.len() {
            if self.replicas[i].is_none() {
                continue;
            }
            while self.metric(i, "wsbridge_cluster_peers", "").await as usize != n {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "replica {i} never saw {n} peers"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// kill -9 of replica `i`.
    pub fn kill(&mut self, i: usize) {
        let r = self.replicas[i].take().expect("a live replica");
        r.process.signal("KILL");
        drop(r);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.haproxy.kill();
        let _ = self.haproxy.wait();
    }
}

/// HAProxy on a free loopback port, round-robin over `servers`, every
/// request balanced on its own (no stickiness of any kind), readiness
/// checked so a dead or draining replica leaves the rotation.
async fn start_haproxy(
    bin: &str,
    servers: impl Iterator<Item = SocketAddr>,
) -> (SocketAddr, Child, tempfile::NamedTempFile) {
    let servers: Vec<SocketAddr> = servers.collect();
    for _attempt in 0..5 {
        let port = free_port();
        let lb: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cfg = tempfile::Builder::new().suffix(".cfg").tempfile().unwrap();
        let mut text = format!(
            "global\n  maxconn 2000\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  \
             timeout http-keep-alive 10s\n  option redispatch\n  retries 3\n\
             frontend fe\n  bind {lb}\n  default_backend replicas\n\
             backend replicas\n  balance roundrobin\n  option httpchk GET /_bridge/readyz\n"
        );
        for (i, s) in servers.iter().enumerate() {
            text.push_str(&format!(
                "  server r{i} {s} check inter 200ms fall 1 rise 1\n"
            ));
        }
        cfg.write_all(text.as_bytes()).unwrap();
        let mut child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(cfg.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                eprintln!("haproxy exited with {status}; trying another port");
                break;
            }
            if tokio::net::TcpStream::connect(lb).await.is_ok() {
                return (lb, child, cfg);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "haproxy never listened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("haproxy could not start");
}

/// A metric's value summed over its label sets matching `filter`.
pub async fn metric_of(http: &reqwest::Client, p: &ProxyProcess, name: &str, filter: &str) -> f64 {
    let text = http
        .get(p.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `p`'s peer gauge shows `n`.
pub async fn wait_peers(http: &reqwest::Client, p: &ProxyProcess, n: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE + PATIENCE;
    while metric_of(http, p, "wsbridge_cluster_peers", "").await as usize != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {n} peers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A local DNS stand-in on 127.0.0.1:0 (UDP): `name` has the A records in
/// `answers`, as they are at each query; any other name is NXDOMAIN.
pub async fn dns_stand_in(
    name: &'static str,
    answers: std::sync::Arc<std::sync::Mutex<Vec<std::net::Ipv4Addr>>>,
) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let q = &buf[..n];
            // The question: labels from byte 12, then type and class.
            let mut i = 12;
            let mut labels = Vec::new();
            while i < n && q[i] != 0 {
                let l = usize::from(q[i]);
                labels.push(String::from_utf8_lossy(&q[i + 1..(i + 1 + l).min(n)]).into_owned());
                i += 1 + l;
            }
            let end = i + 5;
            if end > n {
                continue;
            }
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            let mut m = q[..end].to_vec();
            m[2] = 0x81;
            m[3] = 0x80;
            let ips: Vec<std::net::Ipv4Addr> = if labels.join(".") != name {
                m[3] = 0x83;
                Vec::new()
            } else if qtype == 1 {
                answers.lock().unwrap().clone()
            } else {
                Vec::new()
            };
            m[6..8].copy_from_slice(&(ips.len() as u16).to_be_bytes());
            for ip in ips {
                m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                m.extend_from_slice(&ip.octets());
            }
            let _ = socket.send_to(&m, from).await;
        }
    });
    addr
}
