//! The JavaScript client, embedded at build time from
//! `clients/js/src/bridge.js` (the one source, also published to npm as
//! `@wsbridge/client`) and served twice: `{prefix}/client.js` (a classic
//! script defining `globalThis.WsBridge`) and `{prefix}/client.mjs` (an ES
//! module). Both are built once, on first use, with a strong ETag, and
//! compressed once per coding (gzip, brotli) when first asked for;
//! [`ClientFile::encoded`] picks the form a request's `Accept-Encoding` takes.
//!
//! `clients/js/build.mjs` wraps the same source the same way: its
//! `dist/client.js` and `dist/client.mjs` must be byte-identical to what is
//! served here (tests/client_files.rs checks it).

use std::io::Write as _;
use std::sync::{LazyLock, OnceLock};

use bytes::Bytes;

/// The one source of the client; it declares only top-level items, so it can
/// be wrapped both ways below.
const SOURCE: &str = include_str!("../../clients/js/src/bridge.js");

/// Replaced in [`SOURCE`] by the crate version, so `WsBridge.version` always
/// names the proxy that served it.
const VERSION_PLACEHOLDER: &str = "__WSBRIDGE_VERSION__";

const CONTENT_TYPE: &str = "text/javascript; charset=utf-8";

/// Brotli at its densest: the client is compressed once per process, and
/// every page load after that gets the smallest body.
const BROTLI_QUALITY: u32 = 11;
const BROTLI_WINDOW_LOG2: u32 = 22;

/// One served form of the client, with its compressed copies.
pub struct ClientFile {
    /// The uncompressed body.
    pub body: Bytes,
    /// A strong, quoted entity tag of `body`, e.g. `"3f1c…-9a2b"`.
    pub etag: String,
    pub content_type: &'static str,
    gzip: OnceLock<Representation>,
    br: OnceLock<Representation>,
}

/// A body in one content coding, with the entity tag of that coding (a
/// strong tag names exact bytes, so each coding has its own).
struct Representation {
    body: Bytes,
    etag: String,
}

/// What to send for one request: see [`ClientFile::encoded`].
pub struct Encoded<'a> {
    pub body: Bytes,
    /// The `Content-Encoding` to send with `body`; `None` for identity.
    pub content_encoding: Option<&'static str>,
    /// The `ETag` of `body`, to compare `If-None-Match` against.
    pub etag: &'a str,
}

static CLASSIC: LazyLock<ClientFile> = LazyLock::new(|| {
    ClientFile::new(format!(
        "/*! wsbridge client {version}: classic script, defines globalThis.WsBridge */\n\
         (function () {{\n\
         \"use strict\";\n\
         {source}\n\
         globalThis.WsBridge = Object.freeze({{ BridgeSocket, installWebSocketShim, version: WSBRIDGE_VERSION }});\n\
         }})();\n\
         //# sourceMappingURL=client.js.map\n",
        version = env!("CARGO_PKG_VERSION"),
        source = source(),
    ))
});

static MODULE: LazyLock<ClientFile> = LazyLock::new(|| {
    ClientFile::new(format!(
        "/*! wsbridge client {version}: ES module */\n\
         {source}\n\
         export {{ BridgeSocket, installWebSocketShim, WSBRIDGE_VERSION as version }};\n\
         export default Object.freeze({{ BridgeSocket, installWebSocketShim, version: WSBRIDGE_VERSION }});\n\
         //# sourceMappingURL=client.mjs.map\n",
        version = env!("CARGO_PKG_VERSION"),
        source = source(),
    ))
});

/// `client.js`: the classic script.
pub fn classic() -> &'static ClientFile {
    &CLASSIC
}

/// `client.mjs`: the ES module.
pub fn module() -> &'static ClientFile {
    &MODULE
}

fn source() -> String {
    SOURCE.replace(VERSION_PLACEHOLDER, env!("CARGO_PKG_VERSION"))
}

impl ClientFile {
    fn new(body: String) -> ClientFile {
        ClientFile {
            etag: entity_tag(body.as_bytes(), ""),
            body: Bytes::from(body),
            content_type: CONTENT_TYPE,
            gzip: OnceLock::new(),
            br: OnceLock::new(),
        }
    }

    /// The body to send for a request with this `Accept-Encoding` value
    /// (`None`: the header is absent): brotli when accepted at least as
    /// much as gzip, else gzip when accepted, else the plain body. The
    /// response must carry `Vary: Accept-Encoding` whichever is chosen.
    pub fn encoded(&self, accept_encoding: Option<&str>) -> Encoded<'_> {
        let (q_br, q_gzip) = accept_encoding.map_or((0.0, 0.0), |v| {
            (quality(v, &["br"]), quality(v, &["gzip", "x-gzip"]))
        });
        let (rep, coding) = if q_br > 0.0 && q_br >= q_gzip {
            (self.br.get_or_init(|| self.compress(brotli, "br")), "br")
        } else if q_gzip > 0.0 {
            (
                self.gzip.get_or_init(|| self.compress(gzip, "gzip")),
                "gzip",
            )
        } else {
            return Encoded {
                body: self.body.clone(),
                content_encoding: None,
                etag: &self.etag,
            };
        };
        Encoded {
            body: rep.body.clone(),
            content_encoding: Some(coding),
            etag: &rep.etag,
        }
    }
}

impl ClientFile {
    fn compress(&self, codec: fn(&[u8]) -> Vec<u8>, coding: &str) -> Representation {
        Representation {
            body: Bytes::from(codec(&self.body)),
            etag: entity_tag(&self.body, &format!("-{coding}")),
        }
    }
}

/// The q-value `Accept-Encoding` gives a coding known by any of `names`
/// (RFC 9110 §12.5.3): its own entry, else `*`, else 0. A malformed q
/// counts as 0, so a garbled header gets the plain body.
fn quality(accept_encoding: &str, names: &[&str]) -> f32 {
    let mut wildcard = None;
    for item in accept_encoding.split(',') {
        let mut params = item.split(';');
        let coding = params.next().unwrap_or("").trim();
        let q = params
            .find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case("q").then(|| v.trim())
            })
            .map_or(Some(1.0), |v| {
                v.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q))
            })
            .unwrap_or(0.0);
        if names.iter().any(|n| coding.eq_ignore_ascii_case(n)) {
            return q;
        }
        if coding == "*" {
            wildcard = Some(q);
        }
    }
    wildcard.unwrap_or(0.0)
}

fn entity_tag(body: &[u8], coding: &str) -> String {
    format!("\"{:016x}-{:x}{coding}\"", fnv1a64(body), body.len())
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    enc.write_all(body).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

fn brotli(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc =
            brotli::CompressorWriter::new(&mut out, 4096, BROTLI_QUALITY, BROTLI_WINDOW_LOG2);
        enc.write_all(body).expect("brotli into memory");
    }
    out
}

/// FNV-1a, 64 bits: stable across builds and Rust versions (unlike
/// `DefaultHasher`), so every proxy instance serving the same client gives
/// it the same ETag. Not a defence against anything, just an identity.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn both_forms_wrap_the_same_source() {
        let source = source();
        for file in [classic(), module()] {
            let body = std::str::from_utf8(&file.body).unwrap();
            assert!(body.contains(&source));
            assert!(!body.contains(VERSION_PLACEHOLDER));
            assert_eq!(file.content_type, "text/javascript; charset=utf-8");
        }
        assert!(
            std::str::from_utf8(&classic().body)
                .unwrap()
                .contains("globalThis.WsBridge =")
        );
        assert!(
            std::str::from_utf8(&module().body)
                .unwrap()
                .contains("export default")
        );
    }

    #[test]
    fn the_source_stays_wrappable() {
        // bridge.js must declare items only: an import or export inside it
        // would break the classic script.
        for line in SOURCE.lines() {
            assert!(
                !line.starts_with("import ") && !line.starts_with("export "),
                "{line}"
            );
        }
        assert!(SOURCE.contains(VERSION_PLACEHOLDER));
    }

    #[test]
    fn etags_are_strong_quoted_and_distinct() {
        for file in [classic(), module()] {
            let tags = [
                file.etag.as_str(),
                file.encoded(Some("gzip")).etag,
                file.encoded(Some("br")).etag,
            ];
            for tag in tags {
                assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
                assert!(!tag.starts_with("W/"));
                assert!(tag.len() > 2);
            }
            assert!(tags[0] != tags[1] && tags[1] != tags[2] && tags[0] != tags[2]);
        }
        assert_ne!(classic().etag, module().etag);
        // Stable: the same body always gives the same tag.
        assert_eq!(entity_tag(b"x", ""), entity_tag(b"x", ""));
    }

    #[test]
    fn compressed_forms_decode_to_the_body() {
        for file in [classic(), module()] {
            let gz = file.encoded(Some("gzip"));
            assert_eq!(gz.content_encoding, Some("gzip"));
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&gz.body[..])
                .read_to_end(&mut plain)
                .unwrap();
            assert_eq!(plain, file.body);
            assert!(gz.body.len() < file.body.len() / 2);

            let br = file.encoded(Some("br"));
            assert_eq!(br.content_encoding, Some("br"));
            let mut plain = Vec::new();
            brotli::Decompressor::new(&br.body[..], 4096)
                .read_to_end(&mut plain)
                .unwrap();
            assert_eq!(plain, file.body);
            assert!(br.body.len() < gz.body.len());
        }
    }

    #[test]
    fn accept_encoding_chooses_the_coding() {
        let file = module();
        let coding = |h: Option<&str>| file.encoded(h).content_encoding;
        assert_eq!(coding(None), None);
        assert_eq!(coding(Some("")), None);
        assert_eq!(coding(Some("identity")), None);
        assert_eq!(coding(Some("gzip, deflate, br, zstd")), Some("br"));
        assert_eq!(coding(Some("gzip")), Some("gzip"));
        assert_eq!(coding(Some("x-gzip")), Some("gzip"));
        assert_eq!(coding(Some("GZIP;Q=0.5")), Some("gzip"));
        assert_eq!(coding(Some("br;q=0, gzip")), Some("gzip"));
        assert_eq!(coding(Some("br;q=0.5, gzip;q=0.8")), Some("gzip"));
        assert_eq!(coding(Some("br;q=0.8, gzip;q=0.8")), Some("br"));
        assert_eq!(coding(Some("gzip;q=0, br;q=0")), None);
        assert_eq!(coding(Some("*")), Some("br"));
        assert_eq!(coding(Some("br;q=0, *")), Some("gzip"));
        assert_eq!(coding(Some("*;q=0")), None);
        assert_eq!(coding(Some("gzip;q=2")), None);
        assert_eq!(coding(Some("gzip;q=abc")), None);
        assert_eq!(coding(Some(";;,,=;q")), None);
        assert_eq!(file.encoded(None).etag, file.etag);
        assert_eq!(file.encoded(None).body, file.body);
    }

    #[test]
    fn fnv_matches_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
