//! Session ids that name their owner: 128 random bits, the owner's tag, and
//! a MAC over both with the cluster secret, as URL-safe base64.
//!
//! Pure: minting takes the random bytes, checking needs nothing but the key,
//! so both are tested directly. The tag is a short hash of the owner's
//! advertise address; it is looked up in the discovered peer set, never
//! turned into an address by itself.

use std::net::SocketAddr;

use aws_lc_rs::{constant_time, digest, hmac};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Random bytes: the bearer capability, as in a lone replica's ids.
pub const RANDOM_BYTES: usize = 16;
/// The owner tag: 32 bits of SHA-256 of the advertise address. Collisions
/// between the few replicas of one cluster are logged at discovery.
pub const TAG_BYTES: usize = 4;
/// The MAC, truncated: 80 bits, so a forged id is accepted with odds of one
/// in 2^80 per try; each try is a request.
pub const MAC_BYTES: usize = 10;
const RAW_BYTES: usize = RANDOM_BYTES + TAG_BYTES + MAC_BYTES;
/// Length of a cluster id as text (30 bytes, base64url without padding).
pub const ID_LEN: usize = RAW_BYTES / 3 * 4;
const _: () = assert!(RAW_BYTES.is_multiple_of(3), "an id must have one spelling");

/// A replica's short name inside ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tag(pub [u8; TAG_BYTES]);

impl Tag {
    /// The tag of the replica that advertises `addr` (its canonical text,
    /// `ip:port`, as every replica writes it).
    pub fn of(addr: SocketAddr) -> Tag {
        let hash = digest::digest(&digest::SHA256, addr.to_string().as_bytes());
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&hash.as_ref()[..TAG_BYTES]);
        Tag(tag)
    }
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The key that signs ids, derived from the cluster secret (so the peer
/// authentication key, derived with another label, is a different key).
pub struct IdKey(hmac::Key);

impl IdKey {
    pub fn new(secret: &[u8]) -> IdKey {
        IdKey(derive(secret, b"wsbridge cluster session id v1"))
    }

    /// An id owned by `owner` over these random bytes.
    pub fn mint(&self, random: [u8; RANDOM_BYTES], owner: Tag) -> String {
        let mut raw = [0u8; RAW_BYTES];
        raw[..RANDOM_BYTES].copy_from_slice(&random);
        raw[RANDOM_BYTES..RANDOM_BYTES + TAG_BYTES].copy_from_slice(&owner.0);
        let mac = hmac::sign(&self.0, &raw[..RANDOM_BYTES + TAG_BYTES]);
        raw[RANDOM_BYTES + TAG_BYTES..].copy_from_slice(&mac.as_ref()[..MAC_BYTES]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// A fresh id from the OS CSPRNG.
    pub fn mint_random(&self, owner: Tag) -> String {
        let mut random = [0u8; RANDOM_BYTES];
        // As in `session::registry::new_id`: a predictable id would be
        // worse than stopping.
        getrandom::fill(&mut random).expect("the OS random number generator failed");
        self.mint(random, owner)
    }

    /// The owner of a well-formed id whose MAC checks, else `None`: forged,
    /// altered, truncated and foreign ids alike.
    pub fn owner(&self, id: &str) -> Option<Tag> {
        if id.len() != ID_LEN {
            return None;
        }
        let mut raw = [0u8; RAW_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(id, &mut raw) {
            Ok(RAW_BYTES) => {}
            _ => return None,
        }
        // 30 bytes are exactly 40 characters: no padding bits, so each id
        // has one spelling, and the registry may compare ids as text.
        let signed = &raw[..RANDOM_BYTES + TAG_BYTES];
        let mac = hmac::sign(&self.0, signed);
        constant_time::verify_slices_are_equal(
            &mac.as_ref()[..MAC_BYTES],
            &raw[RANDOM_BYTES + TAG_BYTES..],
        )
        .ok()?;
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&raw[RANDOM_BYTES..RANDOM_BYTES + TAG_BYTES]);
        Some(Tag(tag))
    }
}

/// A key for one purpose, derived from the secret with HMAC-SHA256.
pub(super) fn derive(secret: &[u8], label: &[u8]) -> hmac::Key {
    let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&root, label).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &[u8]) -> IdKey {
        IdKey::new(s)
    }

    #[test]
    fn minted_ids_name_their_owner() {
        let k = key(&[7; 32]);
        let owner = Tag::of("10.0.0.1:8081".parse().unwrap());
        let id = k.mint_random(owner);
        assert_eq!(id.len(), ID_LEN);
        assert!(
            id.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(k.owner(&id), Some(owner));
        assert_ne!(k.mint_random(owner), id);
    }

    #[test]
    fn altered_foreign_and_malformed_ids_have_no_owner() {
        let k = key(&[7; 32]);
        let owner = Tag::of("10.0.0.1:8081".parse().unwrap());
        let id = k.mint([1; RANDOM_BYTES], owner);
        // Every single-character change is refused.
        for i in 0..id.len() {
            for c in ['A', 'z', '-', '_', '0'] {
                let mut altered: Vec<char> = id.chars().collect();
                if altered[i] == c {
                    continue;
                }
                altered[i] = c;
                let altered: String = altered.into_iter().collect();
                assert_eq!(k.owner(&altered), None, "{altered}");
            }
        }
        // Another cluster's secret.
        assert_eq!(key(&[8; 32]).owner(&id), None);
        assert_eq!(k.owner(&id[..ID_LEN - 1]), None);
        assert_eq!(k.owner(""), None);
        assert_eq!(k.owner(&"A".repeat(ID_LEN)), None);
        assert_eq!(k.owner(&format!("{}!", &id[..ID_LEN - 1])), None);
        // A lone replica's id (22 characters).
        assert_eq!(k.owner("AbCdEfGhIjKlMnOpQrStUv"), None);
    }

    #[test]
    fn tags_differ_by_address() {
        let a = Tag::of("10.0.0.1:8081".parse().unwrap());
        let b = Tag::of("10.0.0.2:8081".parse().unwrap());
        assert_ne!(a, b);
        assert_eq!(a, Tag::of("10.0.0.1:8081".parse().unwrap()));
        assert_eq!(a.to_string().len(), 2 * TAG_BYTES);
    }
}
