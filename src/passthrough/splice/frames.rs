//! WebSocket frame boundaries in a byte stream, for the splice: it copies
//! bytes as they come and needs only to know where each frame ends (to stop
//! at a boundary at the drain) and which frames are closes. Only headers
//! are parsed; payloads are skipped by their length, so the cost is per
//! frame, not per byte. Pure, tested directly (RFC 6455 §5.2).

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask key.
const MAX_HEADER: usize = 14;

/// The close opcode.
const OP_CLOSE: u8 = 0x8;

/// Follows the frames of one direction of a WebSocket connection.
#[derive(Debug, Default)]
pub(crate) struct FrameTracker {
    /// The header of the frame being read, while it is incomplete.
    header: [u8; MAX_HEADER],
    header_len: usize,
    /// Payload bytes of the current frame still to come (after its header).
    payload_left: u64,
    /// Whether the current frame's header is complete.
    in_payload: bool,
    /// The current frame's opcode, once its header is complete.
    opcode: u8,
}

/// What [`FrameTracker::advance`] went over.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Advance {
    /// Bytes of the input taken: all of it, or up to the first frame end
    /// when asked to stop there.
    pub consumed: usize,
    /// Whether a close frame ended within `consumed`.
    pub close_ended: bool,
}

impl FrameTracker {
    /// Between two frames (or before the first).
    pub(crate) fn at_boundary(&self) -> bool {
        self.header_len == 0 && !self.in_payload
    }

    /// Goes over `buf`. With `stop_at_boundary`, stops right after the
    /// first frame that ends in it, so the caller can forward exactly up to
    /// there (a caller already [at a boundary](Self::at_boundary) that must
    /// stop there does not call this).
    pub(crate) fn advance(&mut self, buf: &[u8], stop_at_boundary: bool) -> Advance {
        let mut out = Advance::default();
        let mut i = 0;
        while i < buf.len() {
            if self.in_payload {
                let left = buf.len() - i;
                // Never more than `left`, so the cast back fits.
                let take = self.payload_left.min(left as u64) as usize;
                i += take;
                self.payload_left -= take as u64;
                if self.payload_left == 0 && self.end_frame(&mut out) && stop_at_boundary {
                    break;
                }
                continue;
            }
            // Between frames with a whole header in `buf` (nearly always):
            // read it in place rather than byte by byte into `header`.
            if self.header_len == 0 {
                let rest = &buf[i..];
                if let Some(&b1) = rest.get(1) {
                    let need = header_len(&[rest[0], b1]);
                    if rest.len() >= need {
                        self.start_payload(&rest[..need]);
                        i += need;
                        if self.payload_left == 0 && self.end_frame(&mut out) && stop_at_boundary {
                            break;
                        }
                        continue;
                    }
                }
            }
            // Header bytes: take what the header still needs.
            let need = header_len(&self.header[..self.header_len]);
            let take = (need - self.header_len).min(buf.len() - i);
            self.header[self.header_len..self.header_len + take].copy_from_slice(&buf[i..i + take]);
            self.header_len += take;
            i += take;
            // The first two bytes may have told that it is longer.
            if self.header_len == header_len(&self.header[..self.header_len]) {
                let header = self.header;
                self.start_payload(&header[..self.header_len]);
                if self.payload_left == 0 && self.end_frame(&mut out) && stop_at_boundary {
                    break;
                }
            }
        }
        out.consumed = i;
        out
    }

    /// The header `h` is complete: note the frame's opcode and length.
    fn start_payload(&mut self, h: &[u8]) {
        self.opcode = h[0] & 0x0f;
        self.payload_left = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        };
        self.header_len = 0;
        self.in_payload = true;
    }

    /// The current frame is over; returns true (a boundary).
    fn end_frame(&mut self, out: &mut Advance) -> bool {
        self.in_payload = false;
        if self.opcode == OP_CLOSE {
            out.close_ended = true;
        }
        true
    }
}

/// How long the header that starts with `h` is: 2 until its second byte is
/// known, then 2 + the extended length + the mask key.
fn header_len(h: &[u8]) -> usize {
    let Some(&b1) = h.get(1) else {
        return 2;
    };
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// A close frame 1001 "proxy shutting down". Frames to the upstream are
/// masked (the proxy is its client; RFC 6455 §5.3), with `mask_key`;
/// frames to the browser are not.
pub(crate) fn shutdown_close_frame(mask_key: Option<[u8; 4]>) -> Vec<u8> {
    const REASON: &[u8] = b"proxy shutting down";
    let mut payload = Vec::with_capacity(2 + REASON.len());
    payload.extend_from_slice(&1001u16.to_be_bytes());
    payload.extend_from_slice(REASON);
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x80 | OP_CLOSE);
    // Well under 126: a one-byte length.
    let len = payload.len() as u8;
    match mask_key {
        Some(key) => {
            frame.push(0x80 | len);
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => {
            frame.push(len);
            frame.extend_from_slice(&payload);
        }
    }
    frame
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A frame as a sender would write it.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                f.extend_from_slice(&key);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    /// The frame ends (offsets) and close ends found when `stream` comes in
    /// the given chunks, stopping at every boundary.
    fn boundaries(stream: &[u8], cuts: &[usize]) -> (Vec<usize>, Vec<usize>) {
        let mut t = FrameTracker::default();
        let (mut ends, mut closes) = (Vec::new(), Vec::new());
        let mut pos = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        for cut in cuts {
            while pos < cut {
                let a = t.advance(&stream[pos..cut], true);
                assert!(a.consumed > 0, "no progress at {pos}");
                pos += a.consumed;
                if t.at_boundary() {
                    ends.push(pos);
                    if a.close_ended {
                        closes.push(pos);
                    }
                }
            }
        }
        (ends, closes)
    }

    #[test]
    fn stops_after_each_frame() {
        let mut s = frame(true, 1, b"hello", None);
        let first = s.len();
        s.extend(frame(true, 8, &[3, 232], Some([1, 2, 3, 4])));
        let (ends, closes) = boundaries(&s, &[]);
        assert_eq!(ends, [first, s.len()]);
        assert_eq!(closes, [s.len()]);
    }

    #[test]
    fn extended_lengths() {
        let mut s = frame(true, 2, &[7; 300], Some([9, 9, 9, 9]));
        let first = s.len();
        s.extend(frame(true, 2, &[1; 70_000], None));
        assert_eq!(boundaries(&s, &[1, 2, 3, 5, 9]).0, [first, s.len()]);
    }

    #[test]
    fn a_stop_comes_after_the_first_frame_end() {
        let mut t = FrameTracker::default();
        assert_eq!(t.advance(b"\x81\x00\x81\x00", true).consumed, 2);
        assert!(t.at_boundary());
        let a = t.advance(b"\x81\x00\x81", false);
        assert_eq!(a.consumed, 3);
        assert!(!t.at_boundary());
    }

    #[test]
    fn the_injected_close_is_one_close_frame() {
        for key in [None, Some([0xa, 0xb, 0xc, 0xd])] {
            let f = shutdown_close_frame(key);
            let mut t = FrameTracker::default();
            let a = t.advance(&f, false);
            assert_eq!(a.consumed, f.len());
            assert!(a.close_ended && t.at_boundary());
        }
        let masked = shutdown_close_frame(Some([1, 2, 3, 4]));
        assert_eq!(masked[1], 0x80 | 21);
        let plain = shutdown_close_frame(None);
        assert_eq!(&plain[2..4], &1001u16.to_be_bytes());
        assert_eq!(&plain[4..], b"proxy shutting down");
    }

    /// A frame to generate: FIN, opcode, payload, mask key.
    type Spec = (bool, u8, Vec<u8>, Option<[u8; 4]>);

    fn frames() -> impl Strategy<Value = Vec<Spec>> {
        let op = prop_oneof![Just(0u8), Just(1), Just(2), Just(8), Just(9), Just(10)];
        let payload = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..130),
            prop::collection::vec(any::<u8>(), 65_530..65_540),
        ];
        prop::collection::vec(
            (
                any::<bool>(),
                op,
                payload,
                prop::option::of(any::<[u8; 4]>()),
            ),
            1..8,
        )
    }

    proptest! {
        // Payloads up to 64 KiB: fewer cases keep the test quick.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// However the bytes are cut, the frames end at the same offsets:
        /// fragmented messages, interleaved control frames, every length
        /// form, masked or not.
        #[test]
        fn chunking_does_not_move_boundaries(
            spec in frames(),
            cuts in prop::collection::vec(any::<usize>(), 0..40),
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            let mut closes = Vec::new();
            for (fin, op, payload, mask) in &spec {
                stream.extend(frame(*fin, *op, payload, *mask));
                expected.push(stream.len());
                if *op == 8 {
                    closes.push(stream.len());
                }
            }
            let (ends, close_ends) = boundaries(&stream, &cuts);
            prop_assert_eq!(&ends, &expected);
            prop_assert_eq!(&close_ends, &closes);
            // Without stops, one pass takes everything and ends between frames.
            let mut t = FrameTracker::default();
            prop_assert_eq!(t.advance(&stream, false).consumed, stream.len());
            prop_assert!(t.at_boundary());
        }
    }
}
