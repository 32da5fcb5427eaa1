//! A streaming response body read record by record (SSE events end in a
//! blank line, NDJSON lines in a newline) out of one reused buffer.

use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::{Result, fail};

pub struct BodyBuf {
    body: Incoming,
    buf: Vec<u8>,
    /// Where the next record starts.
    start: usize,
    /// Bytes from `start` to here hold no delimiter: not searched again.
    scanned: usize,
}

impl BodyBuf {
    pub fn new(body: Incoming) -> BodyBuf {
        BodyBuf {
            body,
            buf: Vec::with_capacity(4 * 1024),
            start: 0,
            scanned: 0,
        }
    }

    /// The next complete record, without its delimiter, if one is buffered.
    pub fn record(&mut self, delim: &[u8]) -> Option<&[u8]> {
        let from = self.scanned;
        let hay = &self.buf[from..];
        // SIMD search: a naive one was half the load generator's CPU.
        let found = match delim {
            [byte] => memchr::memchr(*byte, hay),
            _ => memchr::memmem::find(hay, delim),
        };
        match found {
            Some(i) => {
                let record = self.start..from + i;
                self.start = from + i + delim.len();
                self.scanned = self.start;
                Some(&self.buf[record])
            }
            None => {
                let tail = self.buf.len().saturating_sub(delim.len() - 1);
                self.scanned = tail.max(self.start);
                None
            }
        }
    }

    /// Reads the next chunk of the body; an ended body is an error, since
    /// every reader ends on a close event first.
    pub async fn fill(&mut self, what: &str) -> Result<()> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        loop {
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                        return Ok(());
                    }
                }
                Some(Err(e)) => fail!("{what} body failed: {e}"),
                None => fail!("{what} response ended without a close event"),
            }
        }
    }
}
