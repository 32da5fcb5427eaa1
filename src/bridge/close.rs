//! `DELETE {prefix}/sessions/{id}`: the page closes its session, with a
//! code and reason it may send.

use http::{Request, Response};

use super::{lookup, no_content, query_pairs};
use crate::body::{Body, RequestBody};
use crate::error::BridgeError;
use crate::metrics::CloseReason;
use crate::state::AppState;

/// Parses `?code=&reason=` of a close: a code a page may send (1000 or
/// 3000–4999) and a reason of at most 123 UTF-8 bytes.
fn parse_close(query: &[(String, String)]) -> Result<(u16, String), BridgeError> {
    let code = match query.iter().find(|(k, _)| k == "code") {
        None => 1000,
        Some((_, v)) => match v.parse::<u16>() {
            // What a page may send, plus 1001 "going away" for a page that
            // unloads (what a browser's own WebSocket sends then).
            Ok(c) if c == 1000 || c == 1001 || (3000..=4999).contains(&c) => c,
            _ => {
                return Err(BridgeError::bad_request(
                    "bad_close_code",
                    "code must be 1000, 1001 or 3000-4999",
                ));
            }
        },
    };
    let reason = query
        .iter()
        .find(|(k, _)| k == "reason")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if reason.len() > 123 {
        return Err(BridgeError::bad_request(
            "bad_close_reason",
            "reason must be at most 123 bytes",
        ));
    }
    Ok((code, reason))
}

pub(super) fn close(
    id: &str,
    req: &Request<RequestBody>,
    state: &AppState,
) -> Result<Response<Body>, BridgeError> {
    let session = lookup(id, state)?;
    let (code, reason) = parse_close(&query_pairs(req))?;
    // Closing a closed (lingering) session is a no-op: DELETE is idempotent.
    session.close(code, &reason, CloseReason::Client);
    Ok(no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_parameters() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(parse_close(&q(&[])).unwrap(), (1000, String::new()));
        assert_eq!(
            parse_close(&q(&[("code", "4001"), ("reason", "bye")])).unwrap(),
            (4001, "bye".into())
        );
        assert!(parse_close(&q(&[("code", "1006")])).is_err());
        assert!(parse_close(&q(&[("code", "x")])).is_err());
        assert!(parse_close(&q(&[("reason", &"x".repeat(124))])).is_err());
    }
}
