//! The HTTP/1.1 front end's head parser (`net::h1::parse_head`): it never
//! panics, and what it takes is a whole bodyless `GET` under the prefix,
//! framed by its head alone (the bytes after it change nothing). Whether it
//! frames as hyper does is `tests/h1.rs`'s differential test.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsbridge::parsers::{H1Parsed, h1_parse_head};

const PREFIX: &str = "/_bridge";

fuzz_target!(|data: &[u8]| {
    let H1Parsed::Ours(head) = h1_parse_head(data, PREFIX) else {
        return;
    };
    assert!(head.len <= data.len() && head.len > 0);
    assert!(data[..head.len].ends_with(b"\n"), "{data:?}");
    let req = &head.request;
    assert_eq!(req.method(), http::Method::GET);
    assert_eq!(req.version(), http::Version::HTTP_11);
    let path = req.uri().path();
    assert!(path == PREFIX || path.starts_with("/_bridge/"), "{path:?}");
    for name in ["content-length", "transfer-encoding", "upgrade", "expect"] {
        assert!(!req.headers().contains_key(name), "{name} in a taken head");
    }
    // Framed by the head alone: the same without what follows it, and
    // nothing shorter is taken.
    match h1_parse_head(&data[..head.len], PREFIX) {
        H1Parsed::Ours(again) => {
            assert_eq!(again.len, head.len);
            assert_eq!(again.request.uri(), req.uri());
            assert_eq!(again.request.headers(), req.headers());
        }
        other => panic!("{other:?} without the bytes after the head"),
    }
    assert!(matches!(
        h1_parse_head(&data[..head.len - 1], PREFIX),
        H1Parsed::Partial
    ));
});
