//! The upstream's frames: reading any bytes, cut anywhere, never panics,
//! ends (at an error or the end of the input), and gives no message above
//! the limit.
#![no_main]

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use wsbridge::parsers::UpstreamFrameReader;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let pieces: Vec<std::io::Result<Bytes>> = bytes
        .chunks(usize::from(cut).max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let io = tokio_util::io::StreamReader::new(futures_util::stream::iter(pieces));
    let mut reader = UpstreamFrameReader::new(io, BytesMut::new(), MAX);
    // In-memory pieces never make it wait.
    while let Some(Some(next)) = reader.next().now_or_never() {
        match next {
            Ok(message) => assert!(message.len() <= MAX),
            Err(_) => break,
        }
    }
});
