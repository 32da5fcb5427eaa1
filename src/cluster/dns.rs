//! A minimal DNS client (A and AAAA over UDP) for `peers_dns` when a
//! nameserver is named in WSBRIDGE_CLUSTER_DNS_SERVER, for a resolver other
//! than the system's (and the tests' local stand-in). Without it, names go
//! to the system resolver, search domains and all.
//!
//! The message code is pure and tested directly; answers are bounded by the
//! UDP datagram (512 bytes asked, 4096 read).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

/// The environment variable naming the nameserver, `ip:port`.
pub const SERVER_ENV: &str = "WSBRIDGE_CLUSTER_DNS_SERVER";

/// How long one query waits for its answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read.
const MAX_ANSWER: usize = 4096;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// Every A and AAAA address of `host` at `server`, with `port`.
pub async fn lookup(server: SocketAddr, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for (i, qtype) in [TYPE_A, TYPE_AAAA].into_iter().enumerate() {
        let id = rand_id().wrapping_add(i as u16);
        let query = encode_query(id, host, qtype)?;
        let bind = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(server).await?;
        socket.send(&query).await?;
        let mut buf = vec![0u8; MAX_ANSWER];
        let n = tokio::time::timeout(QUERY_TIMEOUT, socket.recv(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "DNS query timed out"))??;
        let ips = decode_answer(id, &buf[..n])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed DNS answer"))?;
        out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, port)));
    }
    Ok(out)
}

fn rand_id() -> u16 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    u16::from_be_bytes(b)
}

/// A standard recursive query for one name and type.
pub fn encode_query(id: u16, host: &str, qtype: u16) -> io::Result<Vec<u8>> {
    let mut q = Vec::with_capacity(32 + host.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in host.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad DNS name"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    Ok(q)
}

/// The A and AAAA records of an answer to query `id`; `None` when it is
/// not one (wrong id, truncated, an error code other than "no such name").
pub fn decode_answer(id: u16, msg: &[u8]) -> Option<Vec<IpAddr>> {
    let u16_at = |i: usize| Some(u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]));
    if u16_at(0)? != id || msg.get(2)? & 0x80 == 0 {
        return None;
    }
    match msg.get(3)? & 0x0f {
        0 => {}
        3 => return Some(Vec::new()), // NXDOMAIN: no peers by that name
        _ => return None,
    }
    let (qd, an) = (u16_at(4)?, u16_at(6)?);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(msg, i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        i = skip_name(msg, i)?;
        let (rtype, len) = (u16_at(i)?, usize::from(u16_at(i + 8)?));
        let data = msg.get(i + 10..i + 10 + len)?;
        match (rtype, len) {
            (TYPE_A, 4) => out.push(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (TYPE_AAAA, 16) => {
                let b: [u8; 16] = data.try_into().ok()?;
                out.push(IpAddr::V6(Ipv6Addr::from(b)));
            }
            _ => {} // CNAMEs and the like: their targets' records follow
        }
        i += 10 + len;
    }
    Some(out)
}

/// The offset after a (possibly compressed) name starting at `i`.
fn skip_name(msg: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *msg.get(i)?;
        match len {
            0 => return Some(i + 1),
            l if l & 0xc0 == 0xc0 => return Some(i + 2),
            l if l & 0xc0 == 0 => i += 1 + usize::from(l),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as a nameserver writes it: the question, then records
    /// whose names point back at it.
    fn answer(id: u16, query: &[u8], records: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = query.to_vec();
        m[2] = 0x81;
        m[3] = 0x80;
        m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        m[0..2].copy_from_slice(&id.to_be_bytes());
        for (rtype, data) in records {
            m.extend_from_slice(&[0xc0, 12]);
            m.extend_from_slice(&rtype.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 0, 5]);
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    #[test]
    fn answers_are_read_and_strangers_refused() {
        let q = encode_query(7, "peers.ns.svc.cluster.local", TYPE_A).unwrap();
        assert_eq!(&q[12..18], b"\x05peers");
        let a = answer(
            7,
            &q,
            &[
                (TYPE_A, &[10, 0, 0, 1]),
                (5, b"\x01x\x00"),
                (TYPE_A, &[10, 0, 0, 2]),
            ],
        );
        assert_eq!(
            decode_answer(7, &a).unwrap(),
            vec![IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])]
        );
        assert_eq!(decode_answer(8, &a), None, "another query's answer");
        assert_eq!(decode_answer(7, &a[..a.len() - 2]), None, "truncated");
        assert_eq!(decode_answer(7, &q), None, "a query is no answer");
        let mut nx = answer(7, &q, &[]);
        nx[3] = 0x83;
        assert_eq!(decode_answer(7, &nx), Some(vec![]));
        assert!(encode_query(1, "a..b", TYPE_A).is_err());
        for n in 0..a.len() {
            let _ = decode_answer(7, &a[..n]); // never panics
        }
    }
}
