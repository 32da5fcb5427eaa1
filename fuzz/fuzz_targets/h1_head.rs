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
    assert_eq!(req.version(), http::Version::HTTP_11);
    let path = req.uri().path();
    assert!(path.starts_with('/'), "{path:?}");
    let bridge = path == PREFIX || path.starts_with("/_bridge/");
    let method = req.method().as_str();
    // The app's: bodyless GETs; the bridge's: GET, POST, DELETE, OPTIONS.
    assert!(
        method == "GET" || (bridge && ["POST", "DELETE", "OPTIONS"].contains(&method)),
        "{method} {path}"
    );
    for name in ["transfer-encoding", "upgrade"] {
        assert!(!req.headers().contains_key(name), "{name} in a taken head");
    }
    // At most one length, plain digits, and it is the body's.
    let lengths: Vec<_> = req.headers().get_all("content-length").iter().collect();
    assert!(lengths.len() <= 1);
    match lengths.first() {
        Some(v) => {
            assert!(v.as_bytes().iter().all(u8::is_ascii_digit));
            assert_eq!(v.to_str().unwrap().parse::<u64>().unwrap(), head.body_len);
        }
        None => assert_eq!(head.body_len, 0),
    }
    assert!(bridge || (head.body_len == 0 && !head.expect_continue));
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
