//! The small header and query parsers: cursor (`?cursor`, `Last-Event-ID`),
//! `Bridge-Seq` and `wait`. Each accepts exactly its grammar and never panics.
#![no_main]

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use wsbridge::parsers::parse_seq;
use wsbridge::parsers::{parse_cursor, parse_wait, resume_cursor};

/// Digits only, no leading zero unless "0", fits in a u64.
fn canonical(text: &str) -> Option<u64> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    (digits && !leading_zero)
        .then(|| text.parse().ok())
        .flatten()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(parse_cursor(text).ok(), canonical(text), "{text:?}");
        let max = Duration::from_secs(30);
        if let Ok(wait) = parse_wait(text, max) {
            assert!(wait <= max + Duration::from_micros(1), "{text:?}");
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let want = value.to_str().ok().and_then(canonical);
        assert_eq!(parse_seq(&value).ok(), want.filter(|n| *n > 0));
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", value);
        assert_eq!(resume_cursor(&[], &headers).ok(), want);
    }
});
