//! Request ids and W3C trace context (`traceparent`, `tracestate`): checked
//! once when a request arrives, echoed to the browser, and carried to the
//! upstream (the pass-through and the splice forward the request's headers
//! as they are; the bridge's upstream handshake copies them with
//! [`propagate`]).
//!
//! A leaf: it knows headers and nothing of the front.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest `X-Request-Id` taken from a client; longer ones are replaced.
pub const MAX_REQUEST_ID: usize = 128;
/// The longest `tracestate` passed on (the W3C limit a vendor must accept
/// is 512 bytes); a longer one is dropped, never cut mid-entry.
pub const MAX_TRACESTATE: usize = 512;

/// A request's identity for the logs, after [`on_arrival`].
#[derive(Clone, Debug)]
pub struct RequestTrace {
    pub request_id: HeaderValue,
    /// The trace id of a valid incoming `traceparent` (32 hex digits).
    pub trace_id: Option<String>,
}

/// Normalises the trace headers of an arriving request, in place, so that
/// whatever forwards them forwards only checked values:
/// - `X-Request-Id`: kept if there is exactly one, of 1 to
///   [`MAX_REQUEST_ID`] visible ASCII characters; else replaced by a new one;
/// - `traceparent`: kept if there is exactly one and it is well formed;
///   else removed, with `tracestate` (which means nothing without it);
/// - `tracestate`: kept (its values joined into one) when `traceparent` is
///   and it is visible ASCII of at most [`MAX_TRACESTATE`] bytes.
pub fn on_arrival(headers: &mut HeaderMap) -> RequestTrace {
    let request_id = match single(headers, &REQUEST_ID) {
        Some(v) if valid_request_id(v.as_bytes()) => v.clone(),
        _ => {
            let id = new_request_id();
            headers.insert(REQUEST_ID, id.clone());
            id
        }
    };
    let trace_id = single(headers, &TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
        .map(|t| t.trace_id.to_owned());
    if trace_id.is_none() {
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
    } else {
        let joined = headers
            .get_all(TRACESTATE)
            .iter()
            .map(|v| v.to_str().map(str::trim))
            .collect::<Result<Vec<_>, _>>()
            .map(|parts| parts.join(","));
        headers.remove(TRACESTATE);
        if let Ok(state) = joined
            && !state.is_empty()
            && state.len() <= MAX_TRACESTATE
            && let Ok(v) = HeaderValue::from_str(&state)
        {
            headers.insert(TRACESTATE, v);
        }
    }
    RequestTrace {
        request_id,
        trace_id,
    }
}

/// Copies the request id and the trace context (already checked by
/// [`on_arrival`]) into the headers of the upstream handshake.
pub fn propagate(incoming: &HeaderMap, out: &mut HeaderMap) {
    for name in [REQUEST_ID, TRACEPARENT, TRACESTATE] {
        if let Some(v) = incoming.get(&name) {
            out.insert(name, v.clone());
        }
    }
}

/// The header's value when it appears exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// 1 to [`MAX_REQUEST_ID`] bytes of visible ASCII: no spaces or control
/// characters, so it can never split or forge a log line.
pub fn valid_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.iter().all(u8::is_ascii_graphic)
}

/// A new request id: 16 lowercase hex digits (64 random bits).
pub fn new_request_id() -> HeaderValue {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&hex).expect("hex is a valid header value")
}

/// A parsed `traceparent`.
#[derive(Debug, PartialEq, Eq)]
pub struct TraceParent<'a> {
    pub version: &'a str,
    pub trace_id: &'a str,
    pub parent_id: &'a str,
    pub flags: &'a str,
}

/// Parses a `traceparent` as W3C Trace Context level 1 reads it:
/// `version-traceid-parentid-flags`, lowercase hex of 2, 32, 16 and 2
/// digits; version `ff` and all-zero ids are invalid; a version above `00`
/// may carry more fields after a `-`.
pub fn parse_traceparent(value: &str) -> Option<TraceParent<'_>> {
    let value = value.trim_matches([' ', '\t']);
    let head = value.get(..55)?;
    let rest = &value[55..];
    let mut parts = head.split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = hex(version, 2)
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && version != "ff"
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0')
        && if version == "00" {
            rest.is_empty()
        } else {
            rest.is_empty() || rest.starts_with('-')
        };
    ok.then_some(TraceParent {
        version,
        trace_id,
        parent_id,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_is_checked() {
        let t = parse_traceparent(GOOD).unwrap();
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id, "00f067aa0ba902b7");
        assert_eq!(t.flags, "01");
        // A later version may add fields; version 00 may not.
        assert!(parse_traceparent(&format!("01{}-what", &GOOD[2..])).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            &GOOD.to_uppercase(),
            &format!("{GOOD}-extra"),
            &format!("ff{}", &GOOD[2..]),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0-04bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1é",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(on_arrival(&mut h).request_id, "abc-123");

        for bad in ["has space", "", &"x".repeat(MAX_REQUEST_ID + 1)] {
            let mut h = HeaderMap::new();
            h.insert(REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = on_arrival(&mut h).request_id;
            assert_ne!(id, bad);
            assert_eq!(id.len(), 16);
            assert_eq!(
                h.get(REQUEST_ID),
                Some(&id),
                "the request carries the new one"
            );
        }
        let mut h = HeaderMap::new();
        h.append(REQUEST_ID, HeaderValue::from_static("one"));
        h.append(REQUEST_ID, HeaderValue::from_static("two"));
        let id = on_arrival(&mut h).request_id;
        assert!(id != "one" && id != "two");
        assert_eq!(h.get_all(REQUEST_ID).iter().count(), 1);

        let a = new_request_id();
        assert!(valid_request_id(a.as_bytes()));
        assert_ne!(a, new_request_id());
        assert!(valid_request_id(&[b'x'; MAX_REQUEST_ID]));
    }

    #[test]
    fn invalid_trace_context_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static("00-bogus"));
        h.insert(TRACESTATE, HeaderValue::from_static("a=b"));
        assert_eq!(on_arrival(&mut h).trace_id, None);
        assert!(h.get(TRACEPARENT).is_none() && h.get(TRACESTATE).is_none());

        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(GOOD));
        h.append(TRACESTATE, HeaderValue::from_static("a=b"));
        h.append(TRACESTATE, HeaderValue::from_static("c=d"));
        let t = on_arrival(&mut h);
        assert_eq!(t.trace_id.as_deref(), Some(&GOOD[3..35]));
        assert_eq!(h.get(TRACEPARENT).unwrap(), GOOD);
        assert_eq!(h.get(TRACESTATE).unwrap(), "a=b,c=d");

        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(GOOD));
        h.insert(
            TRACESTATE,
            HeaderValue::from_str(&"a=b,".repeat(200)).unwrap(),
        );
        on_arrival(&mut h);
        assert!(h.get(TRACESTATE).is_none(), "too long: dropped, not cut");

        let mut out = HeaderMap::new();
        propagate(&h, &mut out);
        assert_eq!(out.get(TRACEPARENT).unwrap(), GOOD);
        assert!(out.get(REQUEST_ID).is_some());
    }
}
