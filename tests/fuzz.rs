//! Property tests over every parser of what a client (or an operator's
//! config file) sends: the open body and its `url`, route matching, the
//! cursor, `Last-Event-ID`, `Bridge-Seq`, `wait`, the SSE and JSON event
//! encoders, the HTTP/1.1 front end's head parser, the upstream's frames,
//! and the config loader. None may panic on any input, and each
//! keeps its contract (the upstream host never changes, no dot segment gets
//! through, every text frame crosses SSE byte-exact, ...).
//!
//! These run in `cargo test`, in CI, in a few seconds. The libFuzzer
//! targets in `fuzz/` cover the same parsers coverage-guided, for longer,
//! where a nightly toolchain and cargo-fuzz are installed (`fuzz/run.sh`).

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use support::server_frame;
use wsbridge::Config;
use wsbridge::parsers::{Event, EventData};
use wsbridge::parsers::{H1Parsed, h1_parse_head};
use wsbridge::parsers::{UpstreamFrameReader, parse_cursor, parse_wait, resume_cursor, sse};
use wsbridge::parsers::{page_path, resolve};
use wsbridge::parsers::{parse_batch_line, parse_cursors, parse_open, parse_seq};
use wsbridge::session::Frame;

/// `n` cases per property: enough to run in a few seconds in `cargo test`.
/// `PROPTEST_CASES=100000 cargo test --release --test fuzz` searches longer.
fn cases(n: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases,
        // Shrinking a failure is worth a while; a pass is not.
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

// ---- cursor, Last-Event-ID, Bridge-Seq, wait ----------------------------------------

/// The cursor grammar, written independently: digits only, no leading zero
/// unless the whole thing is "0", and it fits in a u64.
fn canonical_u64(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

/// Strings that look like numbers often enough to hit the edges.
fn numberish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        "[0-9]{0,25}",
        "[-+ 0]{0,2}[0-9]{1,4}[ .eE_x]{0,2}[0-9]{0,2}",
        "\\PC{0,12}",
        Just("18446744073709551615".to_owned()),
        Just("18446744073709551616".to_owned()),
    ]
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn cursor_accepts_exactly_the_canonical_decimals(text in numberish()) {
        match (parse_cursor(&text), canonical_u64(&text)) {
            (Ok(n), Some(m)) => prop_assert_eq!(n, m),
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "{:?}: got {:?}, want {:?}", text, got.ok(), want),
        }
    }

    #[test]
    fn every_u64_round_trips_as_a_cursor(n in any::<u64>()) {
        prop_assert_eq!(parse_cursor(&n.to_string()).ok(), Some(n));
    }

    #[test]
    fn last_event_id_is_a_cursor_and_query_cursor_wins(
        header in proptest::collection::vec(any::<u8>(), 0..24),
        query in proptest::option::of(numberish()),
    ) {
        let mut headers = http::HeaderMap::new();
        let value = HeaderValue::from_bytes(&header).ok();
        if let Some(v) = &value {
            headers.insert("last-event-id", v.clone());
        }
        let pairs: Vec<(String, String)> =
            query.iter().map(|q| ("cursor".to_owned(), q.clone())).collect();
        let got = resume_cursor(&pairs, &headers).ok();
        let want = match (&query, &value) {
            (Some(q), _) => canonical_u64(q),
            (None, Some(v)) => v.to_str().ok().and_then(canonical_u64),
            (None, None) => Some(0),
        };
        prop_assert_eq!(got, want);
    }

    #[test]
    fn bridge_seq_accepts_exactly_positive_canonical_decimals(
        text in prop_oneof![numberish(), "[0-9]{1,3}".prop_map(|s| format!("0{s}"))],
    ) {
        let Ok(value) = HeaderValue::from_str(&text) else { return Ok(()) };
        let want = canonical_u64(&text).filter(|n| *n > 0);
        prop_assert_eq!(parse_seq(&value).ok(), want, "{:?}", text);
    }

    #[test]
    fn bridge_seq_never_panics_on_any_header_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let _ = parse_seq(&value);
        }
    }

    #[test]
    fn wait_is_bounded_by_max_and_never_panics(
        text in prop_oneof![
            "[0-9.]{0,30}",
            "\\PC{0,10}",
            "[0-9]{300,400}",
            any::<f64>().prop_map(|f| f.to_string()),
        ],
        // Any `poll.max_wait` the config loader accepts.
        max_ms in 0..=wsbridge::config::MAX_DURATION.as_millis() as u64,
    ) {
        let max = Duration::from_millis(max_ms);
        if let Ok(wait) = parse_wait(&text, max) {
            // The cap is applied in f64 seconds, so it may round up by less
            // than a microsecond at 100 years; nothing a timer would notice.
            prop_assert!(
                wait <= max + Duration::from_micros(1),
                "{:?} gave {:?} > {:?}", text, wait, max
            );
            prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
        }
    }
}

// ---- the open body and its url --------------------------------------------------

/// Pieces of URLs an attacker would try: schemes, hosts (with userinfo,
/// ports, IPv6), dot segments in every encoding, doubled slashes, queries,
/// fragments, backslashes, non-ASCII.
fn hostile_url() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        Just(""),
        Just("ws://"),
        Just("wss://"),
        Just("http://"),
        Just("HTTPS://"),
        Just("ftp://"),
        Just("//"),
        Just("javascript:"),
        Just("ws:"),
    ];
    let host = prop_oneof![
        Just(""),
        Just("evil.example"),
        Just("evil.example:9"),
        Just("user:pw@evil.example"),
        Just("[::1]:80"),
        Just("127.0.0.1"),
        Just("a.internal:1@evil"),
    ];
    let fixed = proptest::sample::select(vec![
        "ws",
        "bridge",
        "app",
        "..",
        ".",
        "%2e%2e",
        "%2E.",
        ".%2e",
        "%2e",
        "",
        "a b",
        "x%2f..",
        "..%2F",
        "%2e%2e%5C",
        "..\\",
        "\\..",
        "é",
        "@",
        ":",
    ])
    .prop_map(str::to_owned);
    let segment = prop_oneof![3 => fixed, 1 => "[a-z0-9._~%-]{1,6}"];
    let tail = prop_oneof![
        Just(""),
        Just("?token=abc"),
        Just("?a=1&b=%2e%2e/../x"),
        Just("#frag"),
        Just("?q#f"),
        Just("?"),
    ];
    (
        scheme,
        host,
        proptest::collection::vec(segment, 0..6),
        proptest::bool::ANY,
        tail,
    )
        .prop_map(|(scheme, host, segments, lead, tail)| {
            let mut url = String::new();
            url.push_str(scheme);
            url.push_str(host);
            if lead || !scheme.is_empty() {
                url.push('/');
            }
            url.push_str(&segments.join("/"));
            url.push_str(tail);
            url
        })
}

/// The dot-segment rule, written independently: no segment that is `.` or
/// `..` once `%2e` is decoded, where `/`, `\`, `%2f` and `%5c` (any case)
/// all separate segments (WHATWG parsers read `\` as `/`; some servers
/// decode `%2F` before resolving dots).
fn has_dot_segment(path: &str) -> bool {
    let mut decoded = path.to_owned();
    for (from, to) in [
        ("%2e", "."),
        ("%2E", "."),
        ("\\", "/"),
        ("%2f", "/"),
        ("%2F", "/"),
        ("%5c", "/"),
        ("%5C", "/"),
    ] {
        decoded = decoded.replace(from, to);
    }
    decoded.split('/').any(|seg| seg == "." || seg == "..")
}

fn routed_config() -> Config {
    Config::from_toml(
        "[upstream]\nurl = \"http://app.internal:3000\"\n\
         [[routes]]\npath = \"/ws\"\nupstream = \"ws://a.internal:1/ws\"\n\
         [[routes]]\npath = \"/bridge/\"\nupstream = \"wss://b.internal:2/app/\"\n\
         [[routes]]\npath = \"/q/\"\nupstream = \"ws://c.internal:3/q?fixed=1\"\n",
    )
    .unwrap()
}

fn open_config() -> Config {
    Config::from_toml("[upstream]\nurl = \"https://app.internal:3000\"\n").unwrap()
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn a_url_never_chooses_the_host_nor_escapes_its_route(url in hostile_url()) {
        let Ok(pq) = page_path(&url) else { return Ok(()) };
        prop_assert!(pq.path().starts_with('/'), "{:?} -> {:?}", url, pq);
        prop_assert!(!has_dot_segment(pq.path()), "{:?} -> {:?}", url, pq);
        prop_assert!(!pq.as_str().contains('#'));

        // No routes: always upstream.url's host, as wss, the same path and query.
        let open = resolve(&open_config(), &pq).expect("no routes: every path bridges");
        prop_assert_eq!(open.upstream.scheme_str(), Some("wss"));
        prop_assert_eq!(open.upstream.authority().unwrap().as_str(), "app.internal:3000");
        prop_assert_eq!(open.upstream.path(), pq.path());
        // An empty query (`/ws?`) is no query.
        let page_query = pq.query().filter(|q| !q.is_empty());
        prop_assert_eq!(open.upstream.query(), page_query);

        // Routes: one of the configured upstreams, under its path.
        if let Some(t) = resolve(&routed_config(), &pq) {
            let authority = t.upstream.authority().unwrap().as_str().to_owned();
            let path = t.upstream.path().to_owned();
            match authority.as_str() {
                "a.internal:1" => {
                    prop_assert_eq!(pq.path(), "/ws");
                    prop_assert_eq!(&path, "/ws");
                    prop_assert_eq!(t.upstream.query(), page_query);
                }
                "b.internal:2" => {
                    prop_assert_eq!(t.upstream.scheme_str(), Some("wss"));
                    let rest = pq.path().strip_prefix("/bridge/").expect("route prefix");
                    prop_assert_eq!(&path, &format!("/app/{rest}"));
                }
                "c.internal:3" => {
                    // The route's own query comes first, the page's after.
                    let q = t.upstream.query().unwrap();
                    prop_assert!(q == "fixed=1" || q.starts_with("fixed=1&"), "{}", q);
                    prop_assert!(path.starts_with("/q"));
                }
                other => prop_assert!(false, "{:?} reached {}", url, other),
            }
            prop_assert!(!has_dot_segment(&path));
        }
    }

    #[test]
    fn an_absolute_url_means_its_path_and_query_only(
        url in hostile_url(),
        host in prop_oneof![Just("evil.example"), Just("x:1"), Just("[::1]")],
        scheme in prop_oneof![Just("ws"), Just("wss"), Just("http"), Just("https")],
    ) {
        if !url.starts_with('/') || url.starts_with("//") {
            return Ok(());
        }
        let absolute = format!("{scheme}://{host}{url}");
        if let (Ok(a), Ok(b)) = (page_path(&absolute), page_path(&url)) {
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn page_path_never_panics(url in "\\PC{0,40}") {
        let _ = page_path(&url);
    }

    #[test]
    fn open_bodies_never_panic_and_accepted_ones_are_clean(body in open_body()) {
        if let Ok(open) = parse_open(body.as_bytes()) {
            for (i, p) in open.protocols.iter().enumerate() {
                prop_assert!(!p.is_empty());
                prop_assert!(p.bytes().all(|b| b.is_ascii_graphic() && !SEPARATORS.contains(&b)), "{:?}", p);
                prop_assert!(!open.protocols[..i].contains(p));
                // Each token is a valid header value, so the handshake can carry it.
                prop_assert!(HeaderValue::from_str(p).is_ok());
            }
        }
    }

    #[test]
    fn open_body_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_open(&body);
    }
}

/// RFC 9110 delimiters: never in a subprotocol token.
const SEPARATORS: &[u8] = b"()<>@,;:\\\"/[]?={}";

/// JSON-ish open bodies: well-formed, broken, with odd types and protocols.
fn open_body() -> impl Strategy<Value = String> {
    let protocol = prop_oneof![
        "[a-z.0-9]{1,8}",
        Just(String::new()),
        Just("a b".to_owned()),
        Just("chat,v2".to_owned()),
        Just("x\r\ny: z".to_owned()),
        Just("\u{7f}".to_owned()),
        "\\PC{0,5}",
    ];
    let protocols = prop_oneof![
        Just(serde_json::Value::Null),
        proptest::collection::vec(protocol, 0..4).prop_map(|v| serde_json::json!(v)),
        Just(serde_json::json!("chat")),
        Just(serde_json::json!([1, 2])),
    ];
    let url = prop_oneof![
        hostile_url().prop_map(serde_json::Value::String),
        Just(serde_json::json!(5)),
        Just(serde_json::Value::Null),
    ];
    (url, protocols, proptest::bool::ANY, 0usize..3).prop_map(|(url, protocols, extra, cut)| {
        let mut body = serde_json::json!({"url": url, "protocols": protocols});
        if extra {
            body["unknown"] = serde_json::json!({"nested": [1, 2, 3]});
        }
        let text = body.to_string();
        // Sometimes cut it short: truncated JSON.
        match cut {
            0 => text,
            _ => text
                .chars()
                .take(text.chars().count() / (cut + 1))
                .collect(),
        }
    })
}

// ---- the SSE and JSON encoders -------------------------------------------------------

/// A reference SSE parser written from the WHATWG spec's "interpret an
/// event stream": lines end in CRLF, LF or CR; a blank line dispatches;
/// `:` starts a comment; one space after the colon is dropped.
#[derive(Debug, PartialEq)]
struct RefEvent {
    id: Option<String>,
    event: String,
    data: String,
}

fn parse_sse(stream: &str) -> Vec<RefEvent> {
    let mut out = Vec::new();
    let (mut data, mut event, mut last_id) = (String::new(), String::new(), None::<String>);
    let mut rest = stream;
    while !rest.is_empty() {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        let line = &rest[..end];
        rest = &rest[end..];
        if let Some(r) = rest.strip_prefix("\r\n") {
            rest = r;
        } else if !rest.is_empty() {
            rest = &rest[1..];
        } else {
            break; // an unterminated last line is discarded
        }
        if line.is_empty() {
            if !data.is_empty() {
                data.pop(); // the trailing LF
                out.push(RefEvent {
                    id: last_id.clone(),
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        event.clone()
                    },
                    data: std::mem::take(&mut data),
                });
            }
            data.clear();
            event.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "event" => event = value.to_owned(),
            "id" if !value.contains('\0') => last_id = Some(value.to_owned()),
            _ => {}
        }
    }
    out
}

fn encode_sse(id: u64, data: EventData, field: Option<&str>) -> String {
    let mut out = Vec::new();
    sse::write_event(&mut out, &Event { id, data }, field);
    String::from_utf8(out).expect("SSE output is UTF-8")
}

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("standard base64")
}

/// Text frames with the characters SSE cares about, often.
/// Strings of any length around the 16-byte blocks the escaper checks at a
/// time, dense in what JSON escapes.
fn json_text() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        2 => any::<char>(),
        2 => proptest::sample::select(vec!['"', '\\', '\t', '\n', '\u{1f}', '\u{7f}', '\u{8}', '\u{c}']),
        4 => proptest::char::range('a', 'z'),
    ];
    proptest::collection::vec(ch, 0..70).prop_map(|v| v.into_iter().collect())
}

fn frame_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,30}",
        proptest::collection::vec(
            prop_oneof![
                3 => proptest::sample::select(vec![
                    "\n",
                    "\r",
                    "\r\n",
                    ":",
                    " ",
                    "data: x",
                    "event: close",
                    "id: 9",
                    "\0",
                    "\u{2028}",
                    "😀",
                ])
                .prop_map(str::to_owned),
                1 => "[a-z]{1,3}",
            ],
            0..12
        )
        .prop_map(|v| v.concat()),
    ]
}

/// Names the proxy itself uses for SSE events; a frame must never pose as one.
const PROXY_EVENTS: [&str; 5] = ["binary", "close", "gap", "superseded", "text.b64"];

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn every_text_frame_crosses_sse_byte_exact(text in frame_text(), id in 1u64..u64::MAX) {
        let out = encode_sse(id, EventData::Text(Bytes::from(text.clone())), None);
        let events = parse_sse(&out);
        prop_assert_eq!(events.len(), 1, "{:?} -> {:?}", text, out);
        let e = &events[0];
        let id_text = id.to_string();
        prop_assert_eq!(e.id.as_deref(), Some(id_text.as_str()));
        if text.contains('\r') {
            // The documented encoding: `event: text.b64`, data = base64.
            prop_assert_eq!(e.event.as_str(), "text.b64");
            prop_assert_eq!(b64(&e.data), text.into_bytes());
        } else {
            prop_assert_eq!(e.event.as_str(), "message");
            prop_assert_eq!(&e.data, &text);
        }
    }

    #[test]
    fn a_frame_cannot_pose_as_a_proxy_event(
        kind in "[A-Za-z0-9_.:-]{1,10}|close|gap|binary|superseded|text\\.b64|\\PC{0,6}",
        body in frame_text(),
    ) {
        let frame = serde_json::json!({"type": kind, "body": body}).to_string();
        let out = encode_sse(3, EventData::Text(Bytes::from(frame.clone())), Some("type"));
        let events = parse_sse(&out);
        prop_assert_eq!(events.len(), 1);
        let e = &events[0];
        prop_assert_eq!(&e.data, &frame, "JSON escapes every CR and LF");
        prop_assert!(!PROXY_EVENTS.contains(&e.event.as_str()), "{:?}", e);
        let plain = !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if plain && !PROXY_EVENTS.contains(&kind.as_str()) && kind != "message" {
            prop_assert_eq!(&e.event, &kind);
        } else {
            prop_assert_eq!(e.event.as_str(), "message");
        }
    }

    #[test]
    fn binary_and_close_events_round_trip(
        data in proptest::collection::vec(any::<u8>(), 0..64),
        code in 1000u16..5000,
        reason in "\\PC{0,20}|[\r\n:]{0,5}",
    ) {
        let e = parse_sse(&encode_sse(1, EventData::Binary(Bytes::from(data.clone())), None));
        prop_assert_eq!(e.len(), 1);
        prop_assert_eq!(e[0].event.as_str(), "binary");
        prop_assert_eq!(b64(&e[0].data), data);

        let e = parse_sse(&encode_sse(2, EventData::Close { code, reason: reason.clone() }, None));
        prop_assert_eq!(e.len(), 1);
        prop_assert_eq!(e[0].event.as_str(), "close");
        let v: serde_json::Value = serde_json::from_str(&e[0].data).unwrap();
        prop_assert_eq!(v, serde_json::json!({"code": code, "reason": reason}));
    }

    #[test]
    fn json_events_round_trip(text in frame_text(), id in any::<u64>()) {
        let mut out = Vec::new();
        wsbridge::parsers::write_event_json(
            &mut out,
            &Event { id, data: EventData::Text(Bytes::from(text.clone())) },
        );
        prop_assert!(!out.contains(&b'\n'), "one NDJSON line");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(v, serde_json::json!({"id": id, "type": "text", "data": text}));
    }

    #[test]
    fn json_strings_are_escaped_exactly_as_serde_json_does(text in json_text()) {
        let mut out = b"[".to_vec();
        wsbridge::parsers::write_json_str(&mut out, text.as_bytes());
        prop_assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("[{}", serde_json::to_string(&text).unwrap())
        );
    }
}

#[test]
fn the_reference_parser_agrees_with_eventsource_stream() {
    // The reference parser is itself checked against the SSE client crate
    // the integration tests use, on the tricky cases.
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let texts = ["a\nb", "", "\n", "x\n\n", " lead", "data: y", ":c", "😀\0"];
    let mut stream = String::new();
    for (i, t) in texts.iter().enumerate() {
        stream.push_str(&encode_sse(
            i as u64 + 1,
            EventData::Text(Bytes::from(*t)),
            None,
        ));
    }
    let theirs: Vec<(String, String)> = block_on(async {
        futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(
            stream.clone(),
        ))])
        .eventsource()
        .map(|e| e.unwrap())
        .map(|e| (e.id, e.data))
        .collect()
        .await
    });
    let ours: Vec<(String, String)> = parse_sse(&stream)
        .into_iter()
        .map(|e| (e.id.unwrap(), e.data))
        .collect();
    assert_eq!(ours, theirs);
    assert_eq!(
        ours.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>(),
        texts
    );
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

// ---- the config loader ----------------------------------------------------------

/// The TLS files `FULL` names: the loader refuses files it cannot read.
const TLS_CERT: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/fuzz-config-cert.pem");
const TLS_KEY: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/fuzz-config-key.pem");

fn tls_files() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The loader checks that they can be read, not what they hold.
        std::fs::write(TLS_CERT, "cert").unwrap();
        std::fs::write(TLS_KEY, "key").unwrap();
    });
}

/// A config that sets every key, for mutation.
const FULL: &str = concat!(
    r#"
[server]
listen = "127.0.0.1:8080"
prefix = "/_bridge"
drain_timeout = "10s"
drain_delay = "0s"
header_read_timeout = "10s"
keepalive_timeout = "75s"
body_timeout = "30s"
min_recv_rate = "1KiB"
write_timeout = "30s"
min_send_rate = "1KiB"
max_header_bytes = "64KiB"
max_connections = 100

[server.tls]
cert = '"#,
    env!("CARGO_TARGET_TMPDIR"),
    r#"/fuzz-config-cert.pem'
key = '"#,
    env!("CARGO_TARGET_TMPDIR"),
    r#"/fuzz-config-key.pem'

[upstream]
url = "http://127.0.0.1:3000"
connect_timeout = "5s"
response_timeout = "60s"
pool_idle_timeout = "90s"
host = "browser"
forward_headers = ["x-request-id"]

[[routes]]
path = "/ws"
upstream = "ws://127.0.0.1:3000/ws"
transports = ["websocket", "sse", "stream", "poll"]
sse_event_field = "type"

[[routes]]
path = "/bridge/"
upstream = "wss://app.example/app/"

[sessions]
idle_timeout = "60s"
linger = "30s"
heartbeat = "15s"
client_retry = "1s"
upstream_ping = "30s"
max_sessions = 10000
max_sessions_per_client = 0
max_sends_per_second = 0

[replay]
max_events = 1024
max_bytes = "4MiB"
max_pending_bytes = "4MiB"
max_total_bytes = "256MiB"
overflow = "backpressure"

[poll]
max_wait = "30s"
max_events = 256
max_bytes = "1MiB"

[limits]
max_frame_bytes = "1MiB"
max_outbound_bytes = "1MiB"
max_upstream_frame_bytes = "16MiB"
max_open_body_bytes = "64KiB"

[security]
allowed_origins = ["https://app.example"]
trusted_proxies = ["10.0.0.0/8", "192.0.2.1"]

[client]
inject = false

[admin]
listen = "127.0.0.1:9090"
metrics_on_main = true
"#
);

/// Values to put where a value was: each type TOML has, and the edge cases
/// of durations, sizes and counts.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_owned()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("1.5".to_owned()),
        Just("nan".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("[1, \"a\"]".to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
        Just("\"0s\"".to_owned()),
        Just("\"500000000000y\"".to_owned()),
        Just("\"584942417355y\"".to_owned()),
        Just("\"18446744073709551615s\"".to_owned()),
        Just("\"18446744073709551615\"".to_owned()),
        Just("\"99999999999999999999999PiB\"".to_owned()),
        Just("\"16EiB\"".to_owned()),
        Just("\"1.5MiB\"".to_owned()),
        Just("\"-1KiB\"".to_owned()),
        Just("\"ws://\"".to_owned()),
        Just("\"http://[::1\"".to_owned()),
        Just("\"/\"".to_owned()),
        Just("\"0.0.0.0:0\"".to_owned()),
        Just("\"::/0\"".to_owned()),
        Just("\"10.0.0.0/33\"".to_owned()),
        "\"\\PC{0,12}\"".prop_map(|s| s.replace('\\', "\\\\")),
        any::<i64>().prop_map(|n| n.to_string()),
        "[0-9]{1,3}(ns|us|ms|s|m|h|d|w|y|B|KiB|MB|GiB)".prop_map(|s| format!("\"{s}\"")),
    ]
}

/// Mutations of `FULL`: a value replaced, a line dropped or repeated, a
/// byte flipped, the text cut short.
fn mutated_config() -> impl Strategy<Value = String> {
    let n = FULL.lines().count();
    prop_oneof![
        4 => (0..n, toml_value()).prop_map(move |(i, v)| {
            let mut lines: Vec<String> = FULL.lines().map(str::to_owned).collect();
            if let Some((key, _)) = lines[i].split_once(" = ") {
                lines[i] = format!("{key} = {v}");
            }
            lines.join("\n")
        }),
        1 => (0..n).prop_map(move |i| {
            let mut lines: Vec<&str> = FULL.lines().collect();
            lines.remove(i);
            lines.join("\n")
        }),
        1 => (0..n).prop_map(move |i| {
            let mut lines: Vec<&str> = FULL.lines().collect();
            lines.insert(i, lines[i]);
            lines.join("\n")
        }),
        1 => (0..FULL.len(), any::<u8>()).prop_map(|(i, b)| {
            let mut bytes = FULL.as_bytes().to_vec();
            bytes[i] = b;
            String::from_utf8_lossy(&bytes).into_owned()
        }),
        1 => (0..FULL.len()).prop_map(|i| FULL[..FULL.floor_char_boundary(i)].to_owned()),
    ]
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn the_config_loader_never_panics_on_mutations(text in mutated_config()) {
        check_config(&text)?;
    }

    #[test]
    fn the_config_loader_never_panics_on_noise(text in "\\PC{0,200}") {
        check_config(&text)?;
    }

    #[test]
    fn the_config_loader_never_panics_on_toml_shaped_noise(
        text in "(\\[[a-z.\\[\\]]{0,12}\\]\n)?([a-z_]{1,12} = (\"[^\"\n]{0,8}\"|[0-9-]{1,4}|true|\\[\\]|\\{\\})\n){0,6}",
    ) {
        check_config(&text)?;
    }
}

/// Loads `text`; when accepted, what the loader promises holds: the
/// effective config (`wsbridge check`) loads again to itself, and every
/// duration can be added to the clock (timers do that).
fn check_config(text: &str) -> Result<(), TestCaseError> {
    tls_files();
    let Ok(config) = Config::from_toml(text) else {
        return Ok(());
    };
    let effective = config.to_toml();
    let again = Config::from_toml(&effective)
        .map_err(|e| TestCaseError::fail(format!("{e}\n{effective}")))?;
    prop_assert_eq!(again.to_toml(), effective);
    prop_assert_eq!(&again, &config);
    let now = std::time::Instant::now();
    for d in [
        config.server.drain_timeout,
        config.server.drain_delay,
        config.server.header_read_timeout,
        config.server.keepalive_timeout,
        config.server.body_timeout,
        config.server.write_timeout,
        config.upstream.pool_idle_timeout,
        config.upstream.connect_timeout,
        config.upstream.response_timeout,
        config.sessions.idle_timeout,
        config.sessions.linger,
        config.sessions.heartbeat,
        config.sessions.client_retry,
        config.sessions.upstream_ping,
        config.poll.max_wait,
    ] {
        prop_assert!(now.checked_add(d).is_some(), "{:?} overflows the clock", d);
    }
    prop_assert!(config.server.max_connections <= tokio::sync::Semaphore::MAX_PERMITS);
    Ok(())
}

/// Any duration the loader accepts, at every precision the printer picks a
/// unit for (hours, seconds, ms, us, ns).
fn any_duration(min: u64) -> impl Strategy<Value = Duration> {
    let max = wsbridge::config::MAX_DURATION.as_nanos() as u64;
    prop_oneof![
        (min.max(1)..=876_600u64).prop_map(|h| Duration::from_secs(h * 3600)),
        (min..=100_000u64).prop_map(Duration::from_secs),
        (min..=10_000_000u64).prop_map(Duration::from_millis),
        (min..=10_000_000u64).prop_map(Duration::from_micros),
        (min..=max).prop_map(Duration::from_nanos),
    ]
}

/// Any size: whole binary and decimal units, and odd byte counts.
fn any_size(min: u64) -> impl Strategy<Value = usize> {
    prop_oneof![
        (min.max(1)..=1 << 20).prop_map(|k| k << 10),
        (min.max(1)..=1_000_000u64).prop_map(|k| k * 1000),
        (min..=u64::MAX),
    ]
    .prop_map(|n| n as usize)
}

fn any_addr() -> impl Strategy<Value = std::net::SocketAddr> {
    (
        prop_oneof![
            Just("127.0.0.1"),
            Just("0.0.0.0"),
            Just("[::]"),
            Just("[::1]"),
            Just("10.1.2.3")
        ],
        any::<u16>(),
    )
        .prop_map(|(ip, port)| format!("{ip}:{port}").parse().unwrap())
}

/// A `Config` with every field drawn at random within what validation
/// accepts, built on the typed struct rather than on TOML text.
fn any_config() -> impl Strategy<Value = Config> {
    let server = (
        any_addr(),
        "/[a-z_]{1,8}",
        (any_duration(1), any_duration(0), any_duration(1)),
        (any_duration(1), any_duration(1), any_duration(1)),
        (any_size(0), any_size(0), any_size(1)),
        1..=wsbridge::config::fd_connection_limit(),
        any::<bool>(),
    );
    let upstream = (
        ("https?", "[a-z]{1,8}\\.example", any::<u16>()),
        (any_duration(1), any_duration(1), any_duration(1)),
        any::<bool>(),
        proptest::collection::vec("x-[a-z]{1,6}", 0..3),
        any::<bool>(),
    );
    let routes = proptest::collection::vec(
        (
            "/[a-z]{1,6}/?",
            ("wss?", "[a-z]{1,8}", any::<u16>(), "/[a-z/]{0,8}"),
            proptest::collection::vec(any::<bool>(), 4),
            proptest::option::of("[a-z]{1,6}"),
        ),
        0..4,
    );
    let sessions = (
        (any_duration(1), any_duration(0), any_duration(1)),
        (any_duration(0), any_duration(1)),
        (1..=i64::MAX as usize, 0..=i64::MAX as usize, any::<u32>()),
    );
    let replay = (
        1..=i64::MAX as usize,
        (any_size(1), any_size(1), any_size(1)),
        any::<bool>(),
    );
    let rest = (
        (any_duration(0), 1..=100_000usize, any_size(1)),
        (any_size(1), any_size(1), any_size(1), any_size(1)),
        proptest::collection::vec("https://[a-z]{1,8}\\.example(:[0-9]{1,4})?", 0..3),
        proptest::collection::vec((any::<u32>(), 0u8..=32), 0..3),
        any::<bool>(),
        proptest::option::of((any::<u16>(), any::<bool>())),
    );
    (server, upstream, routes, sessions, replay, rest).prop_map(
        |(server, upstream, routes, sessions, replay, rest)| {
            tls_files();
            let mut c = Config::from_toml("[upstream]\nurl = \"http://127.0.0.1:1\"\n").unwrap();
            let s = &mut c.server;
            let (listen, prefix, (drain, delay, head), (keep, body, write), rates, conns, tls) =
                server;
            s.listen = listen;
            s.prefix = prefix;
            // A valid config's delay is shorter than its drain timeout.
            let delay = if delay < drain {
                delay
            } else {
                std::time::Duration::ZERO
            };
            (s.drain_timeout, s.drain_delay, s.header_read_timeout) = (drain, delay, head);
            (s.keepalive_timeout, s.body_timeout, s.write_timeout) = (keep, body, write);
            (s.min_recv_rate, s.min_send_rate, s.max_header_bytes) = rates;
            s.max_connections = conns;
            s.tls = tls.then(|| wsbridge::config::TlsConfig {
                cert: TLS_CERT.into(),
                key: TLS_KEY.into(),
            });
            let u = &mut c.upstream;
            let ((scheme, host, port), (connect, response, pool), upstream_host, headers, ca) =
                upstream;
            u.url = format!("{scheme}://{host}:{port}").parse().unwrap();
            (u.connect_timeout, u.response_timeout, u.pool_idle_timeout) =
                (connect, response, pool);
            u.host = if upstream_host {
                wsbridge::config::HostPolicy::Upstream
            } else {
                wsbridge::config::HostPolicy::Browser
            };
            u.forward_headers = headers.iter().map(|h| h.parse().unwrap()).collect();
            u.ca_file = ca.then(|| TLS_CERT.into());
            c.routes = Vec::new();
            for (i, (path, (scheme, host, port, up_path), on, field)) in
                routes.into_iter().enumerate()
            {
                let path = format!("/{i}{path}");
                c.routes.push(wsbridge::config::Route {
                    path,
                    upstream: format!("{scheme}://{host}:{port}{up_path}")
                        .parse()
                        .unwrap(),
                    transports: wsbridge::config::Transport::ALL
                        .into_iter()
                        .zip(on)
                        .filter_map(|(t, on)| on.then_some(t))
                        .collect(),
                    sse_event_field: field,
                });
            }
            let se = &mut c.sessions;
            let ((idle, linger, heartbeat), (retry, ping), (max, per_client, sends)) = sessions;
            (se.idle_timeout, se.linger, se.heartbeat) = (idle, linger, heartbeat);
            (se.client_retry, se.upstream_ping) = (retry, ping);
            (
                se.max_sessions,
                se.max_sessions_per_client,
                se.max_sends_per_second,
            ) = (max, per_client, sends);
            let re = &mut c.replay;
            let (events, (bytes, pending, total), drop_oldest) = replay;
            re.max_events = events;
            (re.max_bytes, re.max_pending_bytes) = (bytes, pending);
            re.max_total_bytes = total.max(bytes);
            re.overflow = if drop_oldest {
                wsbridge::config::Overflow::DropOldest
            } else {
                wsbridge::config::Overflow::Backpressure
            };
            let (poll, limits, origins, proxies, inject, admin) = rest;
            (c.poll.max_wait, c.poll.max_events, c.poll.max_bytes) = poll;
            let l = &mut c.limits;
            (
                l.max_frame_bytes,
                l.max_outbound_bytes,
                l.max_upstream_frame_bytes,
                l.max_open_body_bytes,
            ) = limits;
            c.security.allowed_origins = origins;
            c.security.trusted_proxies = proxies
                .into_iter()
                .map(|(ip, len)| ipnet::Ipv4Net::new(ip.into(), len).unwrap().into())
                .collect();
            c.client.inject = inject;
            c.admin = admin.map(|(port, metrics_on_main)| {
                // One port above the main listener's: never the same one.
                let mut listen = c.server.listen;
                listen.set_port(listen.port().wrapping_add(1));
                if port % 2 == 0 {
                    listen.set_port(0);
                }
                wsbridge::config::AdminConfig {
                    listen,
                    metrics_on_main,
                }
            });
            c
        },
    )
}

proptest! {
    #![proptest_config(cases(500))]

    /// `wsbridge check`'s output is the configuration: loaded again, it is
    /// equal to the one printed, whatever that one holds.
    #[test]
    fn any_config_round_trips_through_checks_output(config in any_config()) {
        let printed = config.to_toml();
        let again = Config::from_toml(&printed)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{printed}")))?;
        prop_assert_eq!(&again, &config, "{}", printed);
    }
}

#[test]
fn durations_that_would_overflow_the_clock_are_refused_at_boot() {
    // Both parse as durations; added to `Instant::now()` they overflow,
    // which used to panic the first session's upstream task (idle timer,
    // ping interval) or every connection (hyper's header deadline).
    for value in ["500000000000y", "18446744073709551615s"] {
        for key in [
            "sessions.idle_timeout",
            "sessions.upstream_ping",
            "server.header_read_timeout",
            "server.keepalive_timeout",
            "server.write_timeout",
            "upstream.pool_idle_timeout",
        ] {
            let (section, name) = key.split_once('.').unwrap();
            // Inline tables, so `upstream` is written once.
            let text = if section == "upstream" {
                format!("upstream = {{ url = \"http://127.0.0.1:1\", {name} = \"{value}\" }}\n")
            } else {
                format!(
                    "upstream = {{ url = \"http://127.0.0.1:1\" }}\n{section} = {{ {name} = \"{value}\" }}\n"
                )
            };
            let err = Config::from_toml(&text).expect_err(&format!("{key} = {value} was accepted"));
            assert!(err.to_string().contains(key), "{err}");
        }
    }
    let err = Config::from_toml(
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[server]\nmax_connections = 9000000000000000000\n",
    )
    .expect_err("a semaphore cannot hold that many permits");
    assert!(err.to_string().contains("server.max_connections"), "{err}");
}

#[tokio::test]
async fn the_longest_accepted_durations_serve_a_session() {
    // Every duration at the longest the loader accepts, and the largest
    // connection count: the proxy still serves, opens a session (whose
    // upstream task arms the idle and ping timers) and bridges a frame.
    let backend = support::Backend::start().await;
    let y = "100y";
    let proxy = support::Proxy::start(
        &backend,
        &format!(
            "response_timeout = \"{y}\"\n\
             [server]\ndrain_timeout = \"{y}\"\nheader_read_timeout = \"{y}\"\nmax_connections = {}\n\
             [sessions]\nidle_timeout = \"{y}\"\nlinger = \"{y}\"\nheartbeat = \"{y}\"\nclient_retry = \"{y}\"\nupstream_ping = \"{y}\"\n\
             [poll]\nmax_wait = \"{y}\"\n",
            // The most the open-file limit lets the loader accept.
            wsbridge::config::fd_connection_limit()
        ),
    )
    .await;
    let s = proxy.open("/echo").await;
    assert_eq!(s.send_text("still here").await.status(), 204);
    assert_eq!(
        s.poll_events(0, 1).await,
        [support::Ev::Text(1, "still here".into())]
    );
    let r = proxy
        .http
        .get(proxy.url("/http/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---- the HTTP/1.1 front end's head parser ------------------------------------------
// (As fuzz/fuzz_targets/h1_head.rs. That it frames as hyper does is
// tests/h1.rs's differential test, against a real hyper server.)

/// Bytes that look like a request head, with the parts parsers disagree on.
fn head_bytes() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(b"host: a".to_vec()),
        Just(b" folded".to_vec()),
        Just(b"content-length: 3".to_vec()),
        Just(b"transfer-encoding: chunked".to_vec()),
        Just(b"connection: close".to_vec()),
        Just(b"upgrade: websocket".to_vec()),
        Just(b"expect: 100-continue".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..16),
        "[a-z-]{1,8}: [ -~]{0,10}".prop_map(String::into_bytes),
    ];
    let start = prop_oneof![
        Just(b"GET /_bridge/sessions/abc/sse HTTP/1.1".to_vec()),
        Just(b"GET /_bridge/healthz?x=1 HTTP/1.1".to_vec()),
        Just(b"GET /_bridge HTTP/1.1".to_vec()),
        Just(b"GET /app HTTP/1.1".to_vec()),
        Just(b"POST /_bridge/sessions HTTP/1.1".to_vec()),
        Just(b"GET /_bridge/healthz HTTP/1.0".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    let eol = prop_oneof![Just(&b"\r\n"[..]), Just(&b"\n"[..])];
    (
        start,
        proptest::collection::vec(line, 0..6),
        eol,
        proptest::collection::vec(any::<u8>(), 0..20),
    )
        .prop_map(|(start, lines, eol, tail)| {
            let mut out = start;
            out.extend_from_slice(eol);
            for l in lines {
                out.extend_from_slice(&l);
                out.extend_from_slice(eol);
            }
            out.extend_from_slice(eol);
            out.extend_from_slice(&tail);
            out
        })
}

// ---- the channel: `?cursors=` and the batch lines ---------------------------------

/// A session id as the proxy makes them: 22 characters of base64url.
fn session_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{22}"
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn the_h1_head_parser_takes_only_what_it_can_frame(
        data in prop_oneof![head_bytes(), proptest::collection::vec(any::<u8>(), 0..300)],
    ) {
        let H1Parsed::Ours(head) = h1_parse_head(&data, "/_bridge") else { return Ok(()) };
        prop_assert!(head.len > 0 && head.len <= data.len());
        prop_assert!(data[..head.len].ends_with(b"\n"));
        let req = &head.request;
        let path = req.uri().path();
        prop_assert!(path.starts_with('/'), "{:?}", path);
        let bridge = path == "/_bridge" || path.starts_with("/_bridge/");
        let method = req.method().as_str();
        // The app's: bodyless GETs; the bridge's: GET, POST, DELETE, OPTIONS.
        prop_assert!(method == "GET" || (bridge && ["POST", "DELETE", "OPTIONS"].contains(&method)), "{} {}", method, path);
        for name in ["transfer-encoding", "upgrade"] {
            prop_assert!(!req.headers().contains_key(name), "{} in a taken head", name);
        }
        // At most one length, plain digits, and it is the body's.
        let lengths: Vec<_> = req.headers().get_all("content-length").iter().collect();
        prop_assert!(lengths.len() <= 1);
        if let Some(v) = lengths.first() {
            prop_assert!(v.as_bytes().iter().all(u8::is_ascii_digit));
            prop_assert_eq!(v.to_str().unwrap().parse::<u64>().unwrap(), head.body_len);
        } else {
            prop_assert_eq!(head.body_len, 0);
        }
        prop_assert!(bridge || (head.body_len == 0 && !head.expect_continue));
        prop_assert_eq!(head.expect_continue, req.headers().contains_key("expect"));
        // Framed by the head alone.
        match h1_parse_head(&data[..head.len], "/_bridge") {
            H1Parsed::Ours(again) => {
                prop_assert_eq!(again.len, head.len);
                prop_assert_eq!(again.request.headers(), req.headers());
            }
            other => prop_assert!(false, "{:?} without what follows the head", other),
        }
        prop_assert!(matches!(h1_parse_head(&data[..head.len - 1], "/_bridge"), H1Parsed::Partial));
    }
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn cursors_lists_never_panic(text in ".{0,120}", max in 0usize..8) {
        if let Ok(list) = parse_cursors(&text, max) {
            // What is accepted is well formed, and written back, the same.
            prop_assert!(list.len() <= max);
            let again: Vec<String> = list.iter().map(|(s, c)| format!("{s}:{c}")).collect();
            prop_assert_eq!(again.join(","), text);
        }
    }

    #[test]
    fn valid_cursors_lists_round_trip(
        entries in proptest::collection::btree_map(session_id(), any::<u64>(), 0..6),
    ) {
        let list: Vec<(String, u64)> = entries.into_iter().collect();
        let text: Vec<String> = list.iter().map(|(s, c)| format!("{s}:{c}")).collect();
        let text = text.join(",");
        prop_assert_eq!(parse_cursors(&text, 6).unwrap(), list.clone());
        // One too many, a repeat, or a mangled cursor: refused.
        if !list.is_empty() {
            prop_assert!(parse_cursors(&text, list.len() - 1).is_err());
            let repeat = format!("{text},{}:1", list[0].0);
            prop_assert!(parse_cursors(&repeat, 8).is_err());
            let leading_zero = format!("{text},{}:01", "Z".repeat(22));
            prop_assert!(parse_cursors(&leading_zero, 8).is_err());
        }
    }

    #[test]
    fn batch_lines_never_panic(line in proptest::collection::vec(any::<u8>(), 0..200), max in 0usize..64) {
        let _ = parse_batch_line(&line, max);
    }

    #[test]
    fn batch_lines_that_look_like_frames_never_panic(
        session in prop_oneof![session_id(), ".{0,30}"],
        seq in prop_oneof![Just("".to_owned()), any::<i64>().prop_map(|n| format!(",\"seq\":{n}")), "[,\"seq\":]{0,3}[0-9.e-]{0,6}"],
        kind in prop_oneof![Just(""), Just(",\"type\":\"text\""), Just(",\"type\":\"binary\""), Just(",\"type\":\"x\"")],
        data in ".{0,40}",
    ) {
        let line = format!("{{\"session\":{}{seq}{kind},\"data\":{}}}", json_str(&session), json_str(&data));
        match parse_batch_line(line.as_bytes(), 1 << 20) {
            Ok(f) => prop_assert_eq!(f.session, session),
            // A failure names its session whenever the line is a JSON object with one.
            Err(e) => if serde_json::from_str::<serde_json::Value>(&line).is_ok() {
                prop_assert_eq!(e.session, Some(session));
            },
        }
    }

    #[test]
    fn valid_batch_lines_round_trip(
        session in session_id(),
        seq in proptest::option::of(1u64..),
        text in ".{0,40}",
        bytes in proptest::collection::vec(any::<u8>(), 0..40),
        binary in any::<bool>(),
    ) {
        use base64::Engine;
        let mut v = serde_json::json!({"session": session});
        if let Some(n) = seq {
            v["seq"] = n.into();
        }
        if binary {
            v["type"] = "binary".into();
            v["data"] = base64::engine::general_purpose::STANDARD.encode(&bytes).into();
        } else {
            v["type"] = "text".into();
            v["data"] = text.clone().into();
        }
        let line = v.to_string();
        let f = parse_batch_line(line.as_bytes(), 1 << 20).unwrap();
        prop_assert_eq!(&f.session, &session);
        prop_assert_eq!(f.seq, seq);
        match f.frame {
            Frame::Binary(b) => { prop_assert!(binary); prop_assert_eq!(&b[..], &bytes[..]); }
            Frame::Text(t) => { prop_assert!(!binary); prop_assert_eq!(&t[..], text.as_bytes()); }
        }
        // The frame limit is on the decoded length.
        let len = if binary { bytes.len() } else { text.len() };
        if len > 0 {
            prop_assert!(parse_batch_line(line.as_bytes(), len - 1).is_err());
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Reads every message the upstream's `bytes` hold, handed over `cut` bytes
/// at a time, up to the first error; a reader over in-memory pieces never
/// waits, so `now_or_never` drives it.
fn upstream_messages(
    bytes: &[u8],
    cut: usize,
    max: usize,
) -> Vec<Result<tokio_tungstenite::tungstenite::Message, String>> {
    use futures_util::{FutureExt, StreamExt};
    let pieces: Vec<std::io::Result<Bytes>> = bytes
        .chunks(cut.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let io = tokio_util::io::StreamReader::new(futures_util::stream::iter(pieces));
    let mut reader = UpstreamFrameReader::new(io, bytes::BytesMut::new(), max);
    let mut got = Vec::new();
    while let Some(Some(next)) = reader.next().now_or_never() {
        let failed = next.is_err();
        got.push(next.map_err(|e| e.to_string()));
        if failed {
            break;
        }
    }
    got
}

proptest! {
    #![proptest_config(cases(500))]

    #[test]
    fn upstream_frames_never_panic_and_stay_bounded(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cut in 1usize..300,
        max in 0usize..512,
    ) {
        for message in upstream_messages(&bytes, cut, max).into_iter().flatten() {
            prop_assert!(message.len() <= max.max(125));
        }
    }

    /// Messages cut into fragments, with pings between them, read back whole
    /// and in order however the bytes arrive.
    #[test]
    fn upstream_messages_read_back_whatever_the_cuts(
        messages in proptest::collection::vec(
            (any::<bool>(), ".{0,80}", proptest::collection::vec(any::<u8>(), 0..300), 1usize..4),
            1..12,
        ),
        cut in 1usize..700,
    ) {
        use tokio_tungstenite::tungstenite::Message;
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for (text, s, b, parts) in &messages {
            let (opcode, payload) = if *text { (1, s.as_bytes()) } else { (2, &b[..]) };
            let step = payload.len().div_ceil(*parts).max(1);
            let chunks: Vec<&[u8]> = if payload.is_empty() { vec![&[][..]] } else { payload.chunks(step).collect() };
            for (i, chunk) in chunks.iter().enumerate() {
                let op = if i == 0 { opcode } else { 0 };
                wire.extend(server_frame(i + 1 == chunks.len(), op, chunk));
                // A control frame may come between fragments.
                if i == 0 && chunks.len() > 1 {
                    wire.extend(server_frame(true, 9, b"ping"));
                    want.push(Message::Ping(Bytes::from_static(b"ping")));
                }
            }
            want.push(if *text { Message::Text(s.as_str().into()) } else { Message::Binary(b.clone().into()) });
        }
        let got: Vec<Message> = upstream_messages(&wire, cut, 1 << 20).into_iter().map(Result::unwrap).collect();
        prop_assert_eq!(got, want);
    }
}
