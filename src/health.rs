//! `wsbridge health`: a liveness probe for places with no HTTP client, such
//! as a container's HEALTHCHECK. It asks `GET {prefix}/healthz` on the admin
//! listener when one is configured (it keeps answering while the main one
//! drains), else on the main listener, and exits 0 only on a 200.
//!
//! Exit status: 0 healthy; 1 any other answer, no answer, or no answer in
//! time; 2 the configuration cannot be read (as every other subcommand).
//! Plain HTTP only: with `[server.tls]` and no `[admin]`, pass `--url` to an
//! `http://` listener or configure `[admin]`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use wsbridge::config::{Config, Overrides};

/// Largest response head read: the status line is all that matters.
const MAX_HEAD: usize = 8 * 1024;

#[derive(clap::Args)]
pub struct HealthArgs {
    /// Probe this http:// URL instead of the one derived from the configuration.
    #[arg(long)]
    url: Option<String>,
    /// Give up (exit 1) after this long: connect, send and the answer together.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Stands in for `upstream.url` when neither a file nor `--upstream` gives
/// one: the probe never reaches the upstream, and the listeners' defaults
/// are what a server started the same way would use.
const NO_UPSTREAM: &str = "http://127.0.0.1:1";

/// Runs the probe; the configuration is read only when `--url` is absent.
pub fn main(args: &HealthArgs, config: Option<&Path>, overrides: &Overrides) -> ExitCode {
    let mut overrides = overrides.clone();
    if config.is_none() && overrides.upstream.is_none() {
        overrides.upstream = Some(NO_UPSTREAM.into());
    }
    let url = match &args.url {
        Some(url) => url.clone(),
        None => match Config::load(config, &overrides) {
            Ok(config) => match config_url(&config) {
                Ok(url) => url,
                Err(e) => {
                    eprintln!("wsbridge health: {e}");
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("wsbridge: configuration error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    match probe(&url, args.timeout) {
        Ok(200) => {
            println!("ok: {url} answered 200");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("wsbridge health: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("wsbridge health: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `http://{admin or main listener}{prefix}/healthz`, with an unspecified
/// bind address (0.0.0.0, ::) asked on loopback.
fn config_url(config: &Config) -> Result<String, String> {
    let addr = match &config.admin {
        Some(admin) => admin.listen,
        None if config.server.tls.is_some() => {
            return Err("the main listener speaks TLS: configure [admin] or pass --url".into());
        }
        None => config.server.listen,
    };
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(format!(
        "http://{}{}/healthz",
        SocketAddr::new(ip, addr.port()),
        config.server.prefix
    ))
}

/// One `GET` over HTTP/1.1 with `Connection: close`; the status code.
fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addrs = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?;
    let mut last = String::from("no address");
    let mut stream = None;
    for addr in addrs {
        let left = remaining(deadline)?;
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: wsbridge-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        if head.len() >= MAX_HEAD {
            return Err("no status line in the first 8 KiB".into());
        }
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => return Err("connection closed before a status line".into()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    parse_status(&head).ok_or_else(|| "not an HTTP response".into())
}

fn remaining(deadline: Instant) -> Result<Duration, String> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "timed out".into())
}

/// The code of an `HTTP/1.x NNN ...` status line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    (version.starts_with("HTTP/1.") && code.len() == 3)
        .then(|| code.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 x\r\n"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.1 200\r\n"), Some(200));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 20 OK\r\n"), None);
    }

    #[test]
    fn urls_from_the_config() {
        let toml = "[upstream]\nurl = \"http://127.0.0.1:3000\"\n[server]\nlisten = \"0.0.0.0:8080\"\nprefix = \"/rt\"\n";
        let config = Config::from_toml(toml).unwrap();
        assert_eq!(
            config_url(&config).unwrap(),
            "http://127.0.0.1:8080/rt/healthz"
        );
        let config =
            Config::from_toml(&format!("{toml}[admin]\nlisten = \"[::]:9100\"\n")).unwrap();
        assert_eq!(config_url(&config).unwrap(), "http://[::1]:9100/rt/healthz");
    }
}
