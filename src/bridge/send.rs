//! `POST {prefix}/sessions/{id}/send`: one frame up, in `Bridge-Seq` order,
//! a retried one acknowledged without being sent twice.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use serde_json::json;

use super::{lookup, no_content, read_body};
use crate::body::{Body, RequestBody, json_response};
use crate::error::BridgeError;
use crate::session::{Frame, SendOutcome};
use crate::state::AppState;

/// Parses `Bridge-Seq`: a positive decimal integer.
pub fn parse_seq(value: &HeaderValue) -> Result<u64, BridgeError> {
    let bad = || BridgeError::bad_request("bad_seq", "Bridge-Seq must be a positive integer");
    let text = value.to_str().map_err(|_| bad())?;
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

pub(super) async fn send(
    id: &str,
    req: Request<RequestBody>,
    state: &AppState,
) -> Result<Response<Body>, BridgeError> {
    let session = lookup(id, state)?;
    if let Some(close) = session.closed() {
        return Err(BridgeError::SessionClosed {
            code: close.code,
            reason: close.reason,
        });
    }
    let (parts, body) = req.into_parts();
    let seq = parts.headers.get("bridge-seq").map(parse_seq).transpose()?;
    let body = read_body(body, &parts.headers, state.config.limits.max_frame_bytes).await?;
    let binary = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/octet-stream"));
    let frame = if binary {
        Frame::Binary(body)
    } else {
        if std::str::from_utf8(&body).is_err() {
            return Err(BridgeError::bad_request(
                "not_utf8",
                "a text frame must be UTF-8 (send binary as application/octet-stream)",
            ));
        }
        Frame::Text(body)
    };
    Ok(match session.send(frame, seq).await? {
        SendOutcome::Written => no_content(),
        SendOutcome::Duplicate => json_response(StatusCode::OK, &json!({"duplicate": true})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_grammar() {
        assert_eq!(parse_seq(&HeaderValue::from_static("1")).unwrap(), 1);
        for bad in ["0", "-1", "+1", "01", "", "x", "99999999999999999999999"] {
            assert!(
                parse_seq(&HeaderValue::from_static(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
