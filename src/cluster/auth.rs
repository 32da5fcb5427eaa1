//! How replicas prove to each other that a request is a peer's: a header
//! holding a timestamp, the original client's address and an HMAC over
//! both, the method and the path with query, under a key derived from the
//! cluster secret. Checked in constant time; a stale or replayed-elsewhere
//! header is refused.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{constant_time, hmac};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;

use super::id::derive;

/// The header a forwarding replica adds, and the only one the internal
/// listener trusts.
pub const HEADER: &str = "wsbridge-peer";

/// How far a peer's clock and the request's travel may put the timestamp
/// from ours. Bounds the replay of one header onto the same method and path.
const MAX_SKEW: Duration = Duration::from_secs(30);

pub struct AuthKey(hmac::Key);

impl AuthKey {
    pub fn new(secret: &[u8]) -> AuthKey {
        AuthKey(derive(secret, b"wsbridge cluster peer auth v1"))
    }

    /// The header for a request forwarded on behalf of `client`.
    pub fn sign(&self, method: &str, path_and_query: &str, client: IpAddr) -> HeaderValue {
        self.sign_at(unix_now(), method, path_and_query, client)
    }

    fn sign_at(&self, ts: u64, method: &str, pq: &str, client: IpAddr) -> HeaderValue {
        let mac = hmac::sign(&self.0, signed_text(ts, method, pq, client).as_bytes());
        let value = format!("v1 {ts} {client} {}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
        // Digits, an address, base64url and spaces: always a valid value.
        HeaderValue::from_str(&value).expect("a peer header is visible ASCII")
    }

    /// The original client's address when the header is a peer's, for this
    /// method and path, signed recently; else `None`.
    pub fn verify(&self, value: Option<&HeaderValue>, method: &str, pq: &str) -> Option<IpAddr> {
        self.verify_at(unix_now(), value?, method, pq)
    }

    fn verify_at(&self, now: u64, value: &HeaderValue, method: &str, pq: &str) -> Option<IpAddr> {
        let mut parts = value.to_str().ok()?.split(' ');
        let (Some("v1"), Some(ts), Some(client), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let ts: u64 = ts.parse().ok()?;
        let client: IpAddr = client.parse().ok()?;
        if now.abs_diff(ts) > MAX_SKEW.as_secs() {
            return None;
        }
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let expected = hmac::sign(&self.0, signed_text(ts, method, pq, client).as_bytes());
        constant_time::verify_slices_are_equal(expected.as_ref(), &mac).ok()?;
        Some(client)
    }
}

fn signed_text(ts: u64, method: &str, pq: &str, client: IpAddr) -> String {
    format!("v1\n{ts}\n{client}\n{method}\n{pq}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_header_checks_only_for_its_request_and_time() {
        let k = AuthKey::new(&[3; 32]);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let pq = "/_bridge/sessions/x/sse?cursor=3";
        let h = k.sign_at(1000, "GET", pq, client);
        assert_eq!(k.verify_at(1000, &h, "GET", pq), Some(client));
        assert_eq!(k.verify_at(1029, &h, "GET", pq), Some(client));
        assert_eq!(k.verify_at(1031, &h, "GET", pq), None, "stale");
        assert_eq!(k.verify_at(1000, &h, "POST", pq), None, "other method");
        assert_eq!(
            k.verify_at(1000, &h, "GET", "/_bridge/sessions/y/sse"),
            None,
            "other path"
        );
        assert_eq!(
            AuthKey::new(&[4; 32]).verify_at(1000, &h, "GET", pq),
            None,
            "other secret"
        );
        // Another client address with the same MAC.
        let text = h.to_str().unwrap().replace("192.0.2.7", "192.0.2.8");
        let forged = HeaderValue::from_str(&text).unwrap();
        assert_eq!(k.verify_at(1000, &forged, "GET", pq), None);
        for junk in [
            "",
            "v1",
            "v1 1000 192.0.2.7",
            "v2 1000 192.0.2.7 AAAA",
            "Bearer x",
        ] {
            let v = HeaderValue::from_str(junk).unwrap();
            assert_eq!(k.verify_at(1000, &v, "GET", pq), None, "{junk:?}");
        }
    }
}
