//! The three downstream transports: SSE, NDJSON stream and long-poll, with
//! their framing, cursors, resume, supersede, gaps and byte-exact frames.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Backend, Ev, NdjsonClient, Proxy, SseClient, all_bytes, exotic_texts};

/// The events `/exotic` sends, as the proxy numbers them.
fn exotic_events() -> Vec<Ev> {
    let mut out: Vec<Ev> = exotic_texts()
        .into_iter()
        .enumerate()
        .map(|(i, t)| Ev::Text(i as u64 + 1, t))
        .collect();
    let n = out.len() as u64;
    out.push(Ev::Binary(n + 1, all_bytes()));
    out.push(Ev::Binary(n + 2, Vec::new()));
    out
}

#[tokio::test]
async fn every_text_frame_is_byte_exact_through_every_transport() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let s = proxy.open("/exotic").await;
    let expected = exotic_events();
    let n = expected.len();
    assert_eq!(s.poll_events(0, n).await, expected, "poll");
    assert_eq!(s.stream_events(0, n).await, expected, "stream");
    assert_eq!(s.sse_events(0, n).await, expected, "sse");
}

#[tokio::test]
async fn sse_framing_headers_retry_ids_and_heartbeats() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[sessions]\nheartbeat = \"200ms\"\nclient_retry = \"1500ms\"\n",
    )
    .await;
    let s = proxy.open("/burst?n=2").await;
    let resp = proxy.http.get(s.url("/sse")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(h["x-accel-buffering"], "no");
    assert_eq!(h["x-realtime-transport"], "sse");
    assert_eq!(h["cache-control"], "no-store");
    // Raw bytes: the retry line first, then the events, then heartbeats.
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while !text.contains(": hb\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    // The prelude: one comment line of 2 KiB of padding, then the retry line.
    let prelude = format!(":{}\n\n", " ".repeat(2048));
    assert!(text.starts_with(&prelude), "{text:?}");
    assert!(
        text[prelude.len()..].starts_with("retry: 1500\n\n"),
        "{text:?}"
    );
    assert!(
        text.contains("id: 1\ndata: 1:\n\nid: 2\ndata: 2:\n\n"),
        "{text:?}"
    );
}

#[tokio::test]
async fn sse_resumes_from_last_event_id_and_cursor_wins() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let s = proxy.open("/burst?n=5").await;
    assert_eq!(s.sse_events(0, 5).await.len(), 5);
    // Last-Event-ID, as EventSource sends it on reconnect.
    let resp = proxy
        .http
        .get(s.url("/sse"))
        .header("last-event-id", "3")
        .send()
        .await
        .unwrap();
    let got = SseClient::new(resp).take(2).await;
    assert_eq!(
        got,
        vec![Ev::Text(4, "4:".into()), Ev::Text(5, "5:".into())]
    );
    // Both given: ?cursor wins.
    let resp = proxy
        .http
        .get(s.url("/sse?cursor=4"))
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    let got = SseClient::new(resp).take(1).await;
    assert_eq!(got, vec![Ev::Text(5, "5:".into())]);
}

#[tokio::test]
async fn sse_binary_close_and_named_events() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[[routes]]\npath = \"/echo\"\nupstream = \"ws://{backend}/echo\"\nsse_event_field = \"type\"\n",
    )
    .await;
    let s = proxy.open("/echo").await;
    let mut sse = s.sse(Some(0)).await;
    assert_eq!(
        s.send_text(r#"{"type":"chat.message","text":"hi"}"#)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.send_text(r#"{"type":"has space"}"#).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.send_binary(&[1, 2, 3]).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.delete("?code=4001&reason=done").await.status(),
        StatusCode::NO_CONTENT
    );
    let named = sse.next_raw().await.unwrap();
    assert_eq!(
        (named.event.as_str(), named.id.as_str()),
        ("chat.message", "1")
    );
    let plain = sse.next_raw().await.unwrap();
    assert_eq!(plain.event, "message", "not a plain token: no event name");
    let bin = sse.next_raw().await.unwrap();
    assert_eq!((bin.event.as_str(), bin.data.as_str()), ("binary", "AQID"));
    let close = sse.next_raw().await.unwrap();
    assert_eq!(close.event, "close");
    assert_eq!(
        serde_json::from_str::<Value>(&close.data).unwrap(),
        json!({"code": 4001, "reason": "done"})
    );
    assert!(
        sse.next_raw().await.is_none(),
        "the response ends after the close event"
    );
}

#[tokio::test]
async fn stream_is_ndjson_with_heartbeats() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[sessions]\nheartbeat = \"200ms\"\n").await;
    let s = proxy.open("/burst?n=3").await;
    let resp = proxy
        .http
        .get(s.url("/stream?cursor=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    assert_eq!(resp.headers()["x-realtime-transport"], "stream");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let mut lines = NdjsonClient::new(resp);
    assert_eq!(
        lines.next().await.unwrap(),
        json!({"id": 2, "type": "text", "data": "2:"})
    );
    assert_eq!(
        lines.next().await.unwrap(),
        json!({"id": 3, "type": "text", "data": "3:"})
    );
    assert_eq!(lines.next().await.unwrap(), json!({"type": "heartbeat"}));
    // The first line was the prelude: 2 KiB of padding.
    assert_eq!(
        lines.prelude,
        Some(json!({"type": "prelude", "pad": " ".repeat(2048)}))
    );
}

#[tokio::test]
async fn poll_answers_at_once_waits_and_caps_batches() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[poll]\nmax_events = 3\nmax_bytes = \"10\"\nmax_wait = \"1s\"\n",
    )
    .await;
    let s = proxy.open("/burst?n=5&size=2").await;
    s.poll_events(0, 1).await; // the burst has arrived

    let r = proxy
        .http
        .get(s.url("/poll?cursor=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-realtime-transport"], "poll");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    // Each event is "i:xx" = 4 bytes: at most 10 bytes means 2 events.
    assert_eq!(body["cursor"], 2);
    assert_eq!(body["events"].as_array().unwrap().len(), 2);

    // Nothing after the cursor: waits up to `wait`, capped by max_wait, and
    // answers with the cursor unchanged.
    let started = tokio::time::Instant::now();
    let (status, body) = s.poll(5, 30.0).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"cursor": 5, "events": []}));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );

    // A waiting poll answers as soon as an event arrives.
    let echo = proxy.open("/echo").await;
    let waiting = echo.poll_in_background(0, 20);
    tokio::time::sleep(Duration::from_millis(100)).await;
    echo.send_text("ping").await;
    let body = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        body,
        json!({"cursor": 1, "events": [{"id": 1, "type": "text", "data": "ping"}]})
    );
}

#[tokio::test]
async fn poll_sends_a_single_oversized_event_alone() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[poll]\nmax_bytes = \"100\"\n").await;
    let s = proxy.open("/big?size=1000").await;
    let (_, body) = s.poll(0, 5.0).await;
    assert_eq!(body["events"].as_array().unwrap().len(), 1);
    assert_eq!(body["events"][0]["data"].as_str().unwrap().len(), 1000);
}

#[tokio::test]
async fn bad_cursors_are_400_on_every_reader() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let s = proxy.open("/burst?n=3").await;
    s.poll_events(0, 3).await;
    for reader in ["sse", "stream", "poll"] {
        for bad in [
            "",
            "+1",
            "01",
            "-1",
            "4",
            "1.0",
            "x",
            "99999999999999999999999",
        ] {
            let r = proxy
                .http
                .get(s.url(&format!("/{reader}?cursor={bad}")))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                StatusCode::BAD_REQUEST,
                "{reader} cursor {bad:?}"
            );
            assert_eq!(
                r.json::<Value>().await.unwrap(),
                json!({"error": "bad_cursor"})
            );
        }
        for good in ["0", "3"] {
            let r = proxy
                .http
                .get(s.url(&format!("/{reader}?cursor={good}&wait=0")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{reader} cursor {good}");
        }
    }
    let r = proxy
        .http
        .get(s.url("/sse"))
        .header("last-event-id", "01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = proxy
        .http
        .get(s.url("/poll?cursor=0&wait=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_newer_reader_supersedes_the_older_at_once() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let s = proxy.open("/echo").await;

    // SSE superseded by stream.
    let mut sse = s.sse(Some(0)).await;
    let stream = proxy
        .http
        .get(s.url("/stream?cursor=0"))
        .send()
        .await
        .unwrap();
    let ev = sse.next_raw().await.unwrap();
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str(), ev.id.as_str()),
        ("superseded", "{}", "")
    );
    assert!(
        sse.next_raw().await.is_none(),
        "the superseded SSE response ends"
    );

    // Stream superseded by poll; that poll superseded by another poll.
    let mut lines = NdjsonClient::new(stream);
    let first_poll = s.poll_in_background(0, 20);
    assert_eq!(lines.next().await.unwrap(), json!({"type": "superseded"}));
    assert!(lines.next().await.is_none());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, second) = s.poll(0, 0.0).await;
    assert_eq!(second["events"], json!([]));
    let first = tokio::time::timeout(Duration::from_secs(5), first_poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first,
        json!({"cursor": 0, "events": [], "superseded": true})
    );
}

#[tokio::test]
async fn a_resume_older_than_the_queue_gets_an_exact_gap() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[replay]\nmax_events = 4\n").await;
    let s = proxy.open("/burst?n=10").await;
    assert_eq!(s.poll_events(0, 10).await.len(), 10);
    let mut expected = vec![Ev::Gap(6, 3, 6)];
    expected.extend((7..=10).map(|i| Ev::Text(i, format!("{i}:"))));
    assert_eq!(s.poll_events(2, 5).await, expected, "poll");
    assert_eq!(s.stream_events(2, 5).await, expected, "stream");
    assert_eq!(s.sse_events(2, 5).await, expected, "sse");
}

#[tokio::test]
async fn drop_oldest_reports_the_dropped_as_a_gap() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[replay]\nmax_pending_bytes = \"2KiB\"\noverflow = \"drop-oldest\"\n",
    )
    .await;
    let s = proxy.open("/burst?n=200&size=100").await;
    // Wait until the last frame is in (the backend sends all 200 at once).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = s.poll(199, 0.0).await;
        if body["events"].as_array().is_some_and(|e| !e.is_empty())
            || tokio::time::Instant::now() > deadline
        {
            break;
        }
    }
    let (_, body) = s.poll(0, 0.0).await;
    let events: Vec<Ev> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(Ev::from_json)
        .collect();
    let Ev::Gap(id, from, to) = events[0] else {
        panic!("a gap first: {events:?}")
    };
    assert_eq!((id, from), (to, 1));
    assert!(to > 100, "most of 200 × 100 B cannot fit in 2 KiB: {to}");
    for (i, e) in events[1..].iter().enumerate() {
        assert_eq!(e.id(), to + 1 + i as u64, "in order after the gap");
    }
    assert_eq!(events.last().unwrap().id(), 200);
}

#[tokio::test]
async fn backpressure_stops_reading_the_upstream_until_a_client_drains() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[replay]\nmax_pending_bytes = \"64KiB\"\nmax_events = 100000\nmax_bytes = \"64MiB\"\n",
    )
    .await;
    let total = 20_000u64;
    let s = proxy.open(&format!("/flood?n={total}&size=1024")).await;
    // Without a reader the backend stalls: 64 KiB in the queue plus what the
    // kernel's socket buffers hold, far below 20 MiB.
    let mut last = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = backend.sent.load(std::sync::atomic::Ordering::SeqCst);
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    let stalled = backend.sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        stalled < total,
        "the backend was never held back: sent {stalled}"
    );
    let metrics = proxy
        .http
        .get(proxy.url("/_bridge/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let pauses = metric_value(&metrics, "wsbridge_backpressure_pauses_total");
    assert!(pauses >= 1.0, "{metrics}");
    // A reader drains everything: nothing was dropped, no gap.
    let events = s.sse_events(0, total as usize).await;
    assert_eq!(events.len() as u64, total);
    for (i, e) in events.iter().enumerate() {
        assert!(
            matches!(e, Ev::Text(id, t) if *id == i as u64 + 1 && t.starts_with(&format!("{}:", i + 1))),
            "{e:?}"
        );
    }
}

pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

#[tokio::test]
async fn sse_options_for_the_javascript_client() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[sessions]\nheartbeat = \"200ms\"\n[[routes]]\npath = \"/echo\"\nupstream = \"ws://{backend}/echo\"\nsse_event_field = \"type\"\n",
    )
    .await;
    let s = proxy.open("/echo").await;
    s.send_text(r#"{"type":"chat"}"#).await;
    // ?plain=1: no event name taken from the frame.
    let resp = proxy
        .http
        .get(s.url("/sse?cursor=0&plain=1"))
        .send()
        .await
        .unwrap();
    let ev = SseClient::new(resp).next_raw().await.unwrap();
    assert_eq!((ev.event.as_str(), ev.id.as_str()), ("message", "1"));
    // ?heartbeat=event: heartbeats also as a named event without an id.
    let resp = proxy
        .http
        .get(s.url("/sse?cursor=1&heartbeat=event"))
        .send()
        .await
        .unwrap();
    let ev = SseClient::new(resp).next_raw().await.unwrap();
    assert_eq!(
        (ev.event.as_str(), ev.id.as_str(), ev.data.as_str()),
        ("heartbeat", "", ""),
        "no id line"
    );
    // Without it, heartbeats are comments only: nothing reaches the parser.
    let resp = proxy.http.get(s.url("/sse?cursor=1")).send().await.unwrap();
    let mut plain = SseClient::new(resp);
    let quiet = tokio::time::timeout(Duration::from_millis(600), plain.next_raw()).await;
    assert!(
        quiet.is_err(),
        "comment heartbeats are not events: {quiet:?}"
    );
}

#[tokio::test]
async fn reader_endpoints_mark_errors_too_and_head_supersedes_nothing() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let s = proxy.open("/echo").await;
    for reader in ["sse", "stream", "poll"] {
        let r = proxy
            .http
            .get(s.url(&format!("/{reader}?cursor=x")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()["x-realtime-transport"], reader);
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
    let mut sse = s.sse(Some(0)).await;
    let head = proxy.http.head(s.url("/sse")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::METHOD_NOT_ALLOWED);
    s.send_text("still mine").await;
    assert_eq!(sse.take(1).await, vec![Ev::Text(1, "still mine".into())]);
}

/// The JavaScript client's probe window waits for a first event: asked for
/// (`heartbeat=event` on SSE, `heartbeat=now` on stream), a heartbeat comes
/// at once, not after a whole interval of silence (15 s here).
#[tokio::test]
async fn a_first_heartbeat_comes_at_once_when_asked_for() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[sessions]\nheartbeat = \"15s\"\n").await;
    let s = proxy.open("/echo").await;
    let within = Duration::from_secs(5);

    let resp = proxy
        .http
        .get(s.url("/sse?cursor=0&heartbeat=event"))
        .send()
        .await
        .unwrap();
    let mut sse = SseClient::new(resp);
    let ev = tokio::time::timeout(within, sse.next_raw())
        .await
        .expect("no heartbeat at once over SSE")
        .unwrap();
    assert_eq!((ev.event.as_str(), ev.id.as_str()), ("heartbeat", ""));

    let resp = proxy
        .http
        .get(s.url("/stream?cursor=0&heartbeat=now"))
        .send()
        .await
        .unwrap();
    let mut lines = NdjsonClient::new(resp);
    let line = tokio::time::timeout(within, lines.next())
        .await
        .expect("no heartbeat at once over stream")
        .unwrap();
    assert_eq!(line, json!({"type": "heartbeat"}));
}
