//! The JavaScript client, embedded at build time from `bridge.js` and served
//! twice: `{prefix}/client.js` (a classic script defining `globalThis.WsBridge`)
//! and `{prefix}/client.mjs` (an ES module). Both are built once, on first use,
//! each with a strong ETag so browsers can revalidate cheaply.

use std::sync::LazyLock;

use bytes::Bytes;

/// The one source of the client; it declares only top-level items, so it can
/// be wrapped both ways below.
const SOURCE: &str = include_str!("bridge.js");

/// Replaced in [`SOURCE`] by the crate version, so `WsBridge.version` always
/// names the proxy that served it.
const VERSION_PLACEHOLDER: &str = "__WSBRIDGE_VERSION__";

const CONTENT_TYPE: &str = "text/javascript; charset=utf-8";

/// One served form of the client.
pub struct ClientFile {
    pub body: Bytes,
    /// A strong, quoted entity tag of `body`, e.g. `"3f1c…-9a2b"`.
    pub etag: String,
    pub content_type: &'static str,
}

static CLASSIC: LazyLock<ClientFile> = LazyLock::new(|| {
    ClientFile::new(format!(
        "/*! wsbridge client {version}: classic script, defines globalThis.WsBridge */\n\
         (function () {{\n\
         \"use strict\";\n\
         {source}\n\
         globalThis.WsBridge = Object.freeze({{ BridgeSocket, installWebSocketShim, version: WSBRIDGE_VERSION }});\n\
         }})();\n",
        version = env!("CARGO_PKG_VERSION"),
        source = source(),
    ))
});

static MODULE: LazyLock<ClientFile> = LazyLock::new(|| {
    ClientFile::new(format!(
        "/*! wsbridge client {version}: ES module */\n\
         {source}\n\
         export {{ BridgeSocket, installWebSocketShim, WSBRIDGE_VERSION as version }};\n\
         export default Object.freeze({{ BridgeSocket, installWebSocketShim, version: WSBRIDGE_VERSION }});\n",
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
        let etag = format!("\"{:016x}-{:x}\"", fnv1a64(body.as_bytes()), body.len());
        ClientFile {
            body: Bytes::from(body),
            etag,
            content_type: CONTENT_TYPE,
        }
    }
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
            assert!(
                file.etag.starts_with('"') && file.etag.ends_with('"'),
                "{}",
                file.etag
            );
            assert!(!file.etag.starts_with("W/"));
            assert!(file.etag.len() > 2);
        }
        assert_ne!(classic().etag, module().etag);
        // Stable: the same body always gives the same tag.
        assert_eq!(
            ClientFile::new("x".into()).etag,
            ClientFile::new("x".into()).etag
        );
    }

    #[test]
    fn fnv_matches_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
