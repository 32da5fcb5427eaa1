//! The multiplexed channel: many sessions behind one reader (SSE, stream,
//! poll) and one batched send, each session keeping its own cursor,
//! replay, close and supersede rules.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Backend, Ev, NdjsonClient, PATIENCE, Proxy, Seen, SseClient, assert_sequence};

/// A channel seen from a test client.
struct Chan {
    id: String,
    json: Value,
    base: String,
    http: reqwest::Client,
}

async fn open_channel(proxy: &Proxy) -> Chan {
    let r = proxy
        .http
        .post(proxy.url("/_bridge/channels"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let json: Value = r.json().await.unwrap();
    Chan {
        id: json["channel"].as_str().unwrap().to_owned(),
        json,
        base: proxy.url(""),
        http: proxy.http.clone(),
    }
}

impl Chan {
    fn url(&self, suffix: &str) -> String {
        format!("{}/_bridge/channels/{}{suffix}", self.base, self.id)
    }

    async fn post(&self, suffix: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(suffix))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Opens a session on the channel; its id.
    async fn open(&self, url: &str) -> String {
        let (status, json) = self.post("/sessions", json!({"url": url})).await;
        assert_eq!(status, StatusCode::CREATED, "{json}");
        assert!(
            json["links"]["send"].is_string(),
            "the session answer: {json}"
        );
        json["session"].as_str().unwrap().to_owned()
    }

    async fn batch(&self, lines: &[Value]) -> (StatusCode, Value) {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        self.batch_raw(body).await
    }

    async fn batch_raw(&self, body: String) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url("/send"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, transport: &str, cursors: &str) -> reqwest::Response {
        let r = self
            .http
            .get(self.url(&format!("/{transport}?cursors={cursors}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-realtime-transport"], transport);
        r
    }

    async fn poll(&self, cursors: &str, wait: f64) -> Value {
        let r = self
            .http
            .get(self.url(&format!("/poll?cursors={cursors}&wait={wait}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }
}

/// An item of a channel response: a session's event, or another object.
fn tagged(v: &Value) -> Option<(String, Ev)> {
    let id = v["session"].as_str()?.to_owned();
    (v["type"] != "detached").then(|| (id, Ev::from_json(v)))
}

/// A reader over one of the three transports, as a stream of JSON objects.
enum Reader {
    Sse(SseClient),
    Stream(NdjsonClient),
}

impl Reader {
    async fn open(chan: &Chan, transport: &str, cursors: &str) -> Reader {
        let r = chan.get(transport, cursors).await;
        match transport {
            "sse" => Reader::Sse(SseClient::new(r)),
            _ => Reader::Stream(NdjsonClient::new(r)),
        }
    }

    /// The next object (heartbeats skipped), or None at the end.
    async fn next(&mut self) -> Option<Value> {
        loop {
            let v = match self {
                Reader::Sse(sse) => {
                    let e = sse.next_raw().await?;
                    match e.event.as_str() {
                        "message" | "" => serde_json::from_str(&e.data).expect("JSON data"),
                        "superseded" => json!({"type": "superseded"}),
                        other => panic!("unexpected SSE event {other}"),
                    }
                }
                Reader::Stream(lines) => lines.next().await?,
            };
            if v["type"] != "heartbeat" {
                return Some(v);
            }
        }
    }
}

/// Reads until each session in `want` has that many events (or its close).
async fn collect(reader: &mut Reader, want: &HashMap<String, usize>) -> HashMap<String, Vec<Ev>> {
    let mut got: HashMap<String, Vec<Ev>> = HashMap::new();
    let done = |got: &HashMap<String, Vec<Ev>>| {
        want.iter()
            .all(|(s, n)| got.get(s).is_some_and(|e| e.len() >= *n))
    };
    while !done(&got) {
        let v = reader
            .next()
            .await
            .unwrap_or_else(|| panic!("ended after {got:?}"));
        let (s, ev) = tagged(&v).unwrap_or_else(|| panic!("unexpected {v}"));
        got.entry(s).or_default().push(ev);
    }
    got
}

/// Polls until each session in `want` has that many events.
async fn collect_poll(chan: &Chan, want: &HashMap<String, usize>) -> HashMap<String, Vec<Ev>> {
    let mut got: HashMap<String, Vec<Ev>> = HashMap::new();
    let mut cursors: HashMap<String, u64> = want.keys().map(|s| (s.clone(), 0)).collect();
    while !want
        .iter()
        .all(|(s, n)| got.get(s).is_some_and(|e| e.len() >= *n))
    {
        let list: Vec<String> = cursors.iter().map(|(s, c)| format!("{s}:{c}")).collect();
        let body = chan.poll(&list.join(","), 5.0).await;
        for v in body["events"].as_array().unwrap() {
            let (s, ev) = tagged(v).unwrap();
            got.entry(s).or_default().push(ev);
        }
        for (s, c) in body["cursors"].as_object().unwrap() {
            cursors.insert(s.clone(), c.as_u64().unwrap());
        }
    }
    got
}

fn cursors_at(sessions: &[&String], at: u64) -> String {
    let list: Vec<String> = sessions.iter().map(|s| format!("{s}:{at}")).collect();
    list.join(",")
}

#[tokio::test]
async fn three_sessions_arrive_tagged_and_in_order_over_every_transport() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let chan = open_channel(&proxy).await;
    assert_eq!(chan.json["channel"].as_str().unwrap().len(), 22);
    assert!(chan.json["heartbeat_ms"].as_u64().unwrap() > 0);
    for link in ["sse", "stream", "poll", "send"] {
        assert_eq!(
            chan.json["links"][link],
            format!("/_bridge/channels/{}/{link}", chan.id).as_str()
        );
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(chan.open("/burst?n=30").await);
    }
    let want: HashMap<String, usize> = ids.iter().map(|s| (s.clone(), 30)).collect();
    let all = cursors_at(&ids.iter().collect::<Vec<_>>(), 0);

    let got = collect_poll(&chan, &want).await;
    for s in &ids {
        assert_sequence(&got[s], 30);
    }
    for transport in ["stream", "sse"] {
        // Each reader resumes every session from 0: the events are replayed.
        let mut reader = Reader::open(&chan, transport, &all).await;
        let got = collect(&mut reader, &want).await;
        for s in &ids {
            assert_sequence(&got[s], 30);
            assert_eq!(got[s].len(), 30, "{transport}: nothing doubled");
        }
    }
}

#[tokio::test]
async fn sse_and_stream_carry_tagged_json_after_the_prelude() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let chan = open_channel(&proxy).await;
    let s = chan.open("/burst?n=1").await;
    // Raw SSE bytes: prelude, retry, then `data: <json>` without id or name.
    let r = chan.get("sse", "").await;
    assert_eq!(
        r.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let mut body = r.bytes_stream();
    let mut text = String::new();
    use futures_util::StreamExt;
    let expected =
        format!("data: {{\"session\":\"{s}\",\"id\":1,\"type\":\"text\",\"data\":\"1:\"}}\n\n");
    while !text.contains(&expected) {
        let chunk = tokio::time::timeout(PATIENCE, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let prelude = format!(":{}\n\n", " ".repeat(2048));
    assert!(text.starts_with(&prelude), "{text:?}");
    assert!(
        text[prelude.len()..].starts_with("retry: 1000\n\n"),
        "{text:?}"
    );
    assert!(!text.contains("id:"), "{text:?}");

    let r = chan.get("stream", &format!("{s}:0")).await;
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let mut lines = NdjsonClient::new(r);
    assert_eq!(
        lines.next().await.unwrap(),
        json!({"session": s, "id": 1, "type": "text", "data": "1:"})
    );
    assert_eq!(
        lines.prelude,
        Some(json!({"type": "prelude", "pad": " ".repeat(2048)}))
    );
}

#[tokio::test]
async fn resuming_with_cursors_after_a_cut_loses_and_doubles_nothing() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let chan = open_channel(&proxy).await;
    let a = chan.open("/burst?n=40").await;
    let b = chan.open("/burst?n=40").await;
    let mut got: HashMap<String, Vec<Ev>> = HashMap::new();
    for (round, transport) in ["stream", "sse", "stream", "sse"].iter().enumerate() {
        let cursors: Vec<String> = [&a, &b]
            .iter()
            .map(|s| {
                format!(
                    "{s}:{}",
                    got.get(*s).and_then(|e| e.last()).map_or(0, Ev::id)
                )
            })
            .collect();
        let mut reader = Reader::open(&chan, transport, &cursors.join(",")).await;
        // Take a few events, then cut the connection.
        for _ in 0..(7 + round * 3) {
            let v = reader.next().await.unwrap();
            let (s, ev) = tagged(&v).unwrap();
            got.entry(s).or_default().push(ev);
        }
        drop(reader);
    }
    let cursors: Vec<String> = [&a, &b]
        .iter()
        .map(|s| {
            format!(
                "{s}:{}",
                got.get(*s).and_then(|e| e.last()).map_or(0, Ev::id)
            )
        })
        .collect();
    let mut reader = Reader::open(&chan, "stream", &cursors.join(",")).await;
    let want: HashMap<String, usize> = [(a.clone(), 40), (b.clone(), 40)]
        .into_iter()
        .map(|(s, n)| {
            let have = got.get(&s).map_or(0, Vec::len);
            (s, n - have)
        })
        .collect();
    let rest = collect(&mut reader, &want).await;
    for s in [&a, &b] {
        let mut all = got.remove(s).unwrap_or_default();
        all.extend(rest.get(s).cloned().unwrap_or_default());
        assert_sequence(&all, 40);
        assert_eq!(all.len(), 40);
    }
}

#[tokio::test]
async fn a_newer_reader_supersedes_and_a_session_reader_takes_its_session_off() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let chan = open_channel(&proxy).await;
    let s = chan.open("/echo").await;
    let mut first = Reader::open(&chan, "stream", "").await;
    let mut second = Reader::open(&chan, "sse", "").await;
    assert_eq!(first.next().await.unwrap(), json!({"type": "superseded"}));
    assert!(first.next().await.is_none(), "the superseded response ends");
    // The session's own reader takes it off the channel.
    let own = proxy
        .http
        .get(proxy.url(&format!("/_bridge/sessions/{s}/poll?wait=0")))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    assert_eq!(
        second.next().await.unwrap(),
        json!({"session": s, "type": "detached"})
    );
    // Off the channel: its frames are refused there.
    let (status, body) = chan
        .batch(&[json!({"session": s, "type": "text", "data": "x"})])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["results"][0]["status"], 404);
    assert_eq!(body["results"][0]["error"], "unknown_session");
}

#[tokio::test]
async fn attach_detach_and_move_between_channels() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let s = proxy.open("/echo").await;
    let a = open_channel(&proxy).await;
    let b = open_channel(&proxy).await;
    // A live per-session reader is superseded by the attach.
    let own = proxy.http.get(s.url("/stream")).send().await.unwrap();
    let mut own = NdjsonClient::new(own);
    let (status, _) = a
        .post("/attach", json!({"session": s.id, "cursor": 0}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(own.next().await.unwrap(), json!({"type": "superseded"}));

    let mut on_a = Reader::open(&a, "stream", "").await;
    let (_, r) = a
        .batch(&[json!({"session": s.id, "seq": 1, "type": "text", "data": "one"})])
        .await;
    assert_eq!(
        r["results"],
        json!([{"session": s.id, "seq": 1, "status": 204}])
    );
    assert_eq!(
        on_a.next().await.unwrap(),
        json!({"session": s.id, "id": 1, "type": "text", "data": "one"})
    );
    // Attached to b: moved; a is told.
    let (status, _) = b
        .post("/attach", json!({"session": s.id, "cursor": 1}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        on_a.next().await.unwrap(),
        json!({"session": s.id, "type": "detached"})
    );
    let mut on_b = Reader::open(&b, "sse", "").await;
    let (_, r) = b
        .batch(&[json!({"session": s.id, "seq": 2, "type": "text", "data": "two"})])
        .await;
    assert_eq!(r["results"][0]["status"], 204);
    assert_eq!(
        on_b.next().await.unwrap(),
        json!({"session": s.id, "id": 2, "type": "text", "data": "two"})
    );
    // Detach: then it is b's no more.
    let (status, _) = b.post("/detach", json!({"session": s.id})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = b.post("/detach", json!({"session": s.id})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "unknown_session");
    // And the session reads on its own again from its cursor.
    assert!(matches!(&s.poll_events(2, 0).await[..], []));

    // Bad requests.
    let (status, body) = a
        .post("/attach", json!({"session": "AAAAAAAAAAAAAAAAAAAAAA"}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_session"))
    );
    let (status, body) = a
        .post("/attach", json!({"session": s.id, "cursor": 99}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_cursor"))
    );
    let (status, body) = a.post("/attach", json!({"nope": 1})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let r = proxy
        .http
        .get(proxy.url("/_bridge/channels/AAAAAAAAAAAAAAAAAAAAAA/poll"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unknown_channel");
    let r = a
        .http
        .get(a.url("/poll?cursors=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "bad_cursor");
}

#[tokio::test]
async fn a_batch_keeps_each_sessions_order_and_answers_each_frame() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[limits]\nmax_frame_bytes = \"16\"\n").await;
    let chan = open_channel(&proxy).await;
    let a = chan.open("/echo").await;
    let b = chan.open("/echo").await;
    let closed = chan.open("/echo").await;
    let r = proxy
        .http
        .delete(proxy.url(&format!("/_bridge/sessions/{closed}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let lines = [
        json!({"session": a, "seq": 1, "type": "text", "data": "a1"}).to_string(),
        json!({"session": b, "seq": 1, "type": "text", "data": "b1"}).to_string(),
        json!({"session": a, "seq": 1, "type": "text", "data": "a1"}).to_string(),
        json!({"session": a, "seq": 2, "type": "binary", "data": "%%%"}).to_string(),
        json!({"session": a, "seq": 3, "type": "text", "data": "a3"}).to_string(),
        json!({"session": b, "seq": 2, "type": "binary", "data": "YjI="}).to_string(),
        json!({"session": "AAAAAAAAAAAAAAAAAAAAAA", "seq": 1, "data": "x"}).to_string(),
        json!({"session": closed, "seq": 1, "data": "x"}).to_string(),
        "{not json".to_owned(),
        json!({"session": b, "seq": 3, "data": "this frame is too long"}).to_string(),
        json!({"session": b, "seq": 4, "data": "b4"}).to_string(),
        json!({"session": a, "seq": 4, "data": "a4"}).to_string(),
    ];
    let (status, body) = chan.batch_raw(lines.join("\n")).await;
    assert_eq!(status, StatusCode::OK);
    let results = body["results"].as_array().unwrap();
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [204, 204, 200, 400, 409, 204, 404, 410, 400, 413, 409, 409]
    );
    assert_eq!(results[2]["duplicate"], true);
    assert_eq!(results[3]["error"], "bad_base64");
    assert_eq!(results[4]["error"], "skipped");
    assert_eq!(results[6]["error"], "unknown_session");
    assert_eq!(results[7]["error"], "session_closed");
    assert_eq!(results[8]["session"], Value::Null);
    assert_eq!(results[8]["error"], "bad_frame");
    assert_eq!(results[9]["error"], "payload_too_large");
    assert_eq!(results[0], json!({"session": a, "seq": 1, "status": 204}));

    // The upstream got a1, b1 and b2, each once, in order, and nothing else.
    backend
        .wait_for("b2", |s| *s == Seen::Binary(b"b2".to_vec()))
        .await;
    let frames: Vec<Seen> = backend
        .seen()
        .into_iter()
        .filter(|s| matches!(s, Seen::Text(_) | Seen::Binary(_)))
        .collect();
    assert_eq!(
        frames,
        [
            Seen::Text("a1".into()),
            Seen::Text("b1".into()),
            Seen::Binary(b"b2".to_vec())
        ]
    );
    // A retry of the failed frames, in order, goes through.
    let (_, body) = chan
        .batch(&[
            json!({"session": a, "seq": 2, "data": "a2"}),
            json!({"session": a, "seq": 3, "data": "a3"}),
        ])
        .await;
    assert_eq!(body["results"][0]["status"], 204);
    assert_eq!(body["results"][1]["status"], 204);
    // And the echoes come back on the channel, each session in order.
    let mut reader = Reader::open(&chan, "stream", "").await;
    let want: HashMap<String, usize> = [(a.clone(), 3), (b.clone(), 2)].into_iter().collect();
    let got = collect(&mut reader, &want).await;
    assert_eq!(
        got[&a],
        [
            Ev::Text(1, "a1".into()),
            Ev::Text(2, "a2".into()),
            Ev::Text(3, "a3".into())
        ]
    );
    assert_eq!(
        got[&b],
        [Ev::Text(1, "b1".into()), Ev::Binary(2, b"b2".to_vec())]
    );
}

#[tokio::test]
async fn an_oversized_batch_is_413_and_nothing_of_it_is_sent() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[channel]\nmax_batch_bytes = \"1KiB\"\nmax_batch_frames = 3\n",
    )
    .await;
    let chan = open_channel(&proxy).await;
    let a = chan.open("/echo").await;
    let line = |n: u64| json!({"session": a, "seq": n, "data": "x"});
    let (status, body) = chan.batch(&[line(1), line(2), line(3), line(4)]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body, json!({"error": "too_many_frames", "limit": 3}));
    let big = json!({"session": a, "seq": 1, "data": "y".repeat(2000)});
    let (status, body) = chan.batch(&[big]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"], "payload_too_large");
    // Blank lines are not frames; three frames fit.
    let (status, body) = chan
        .batch_raw(format!("\n{}\n\n{}\n{}\n\n", line(1), line(2), line(3)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 3);
    backend
        .wait_for("x", |s| *s == Seen::Text("x".into()))
        .await;
    let sent = backend
        .seen()
        .into_iter()
        .filter(|s| *s == Seen::Text("x".into()))
        .count();
    assert_eq!(sent, 3, "only the accepted batch reached the upstream");
}

#[tokio::test]
async fn a_flooding_session_gets_one_turn_at_a_time_and_pauses_alone() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[replay]\nmax_pending_bytes = \"16KiB\"\n[poll]\nmax_events = 1000\n",
    )
    .await;
    let chan = open_channel(&proxy).await;
    let flood = chan.open("/flood?n=3000&size=100").await;
    let quiet = chan.open("/echo").await;
    let mut cursors: HashMap<String, u64> = HashMap::new();
    let mut flood_seen = 0usize;
    let mut quiet_at = None;
    let mut sent = false;
    while flood_seen < 3000 {
        let list: Vec<String> = cursors.iter().map(|(s, c)| format!("{s}:{c}")).collect();
        let body = chan.poll(&list.join(","), 5.0).await;
        let events = body["events"].as_array().unwrap();
        let from_flood = events
            .iter()
            .filter(|e| e["session"] == flood.as_str())
            .count();
        // One pass of the round-robin per answer: at most a turn per session.
        assert!(from_flood <= 64, "{from_flood} flood events in one answer");
        flood_seen += from_flood;
        if events.iter().any(|e| e["session"] == quiet.as_str()) {
            quiet_at.get_or_insert(flood_seen);
        }
        for (s, c) in body["cursors"].as_object().unwrap() {
            cursors.insert(s.clone(), c.as_u64().unwrap());
        }
        if !sent {
            // While the flood is still coming, the quiet session speaks.
            let (_, r) = chan
                .batch(&[json!({"session": quiet, "data": "hello"})])
                .await;
            assert_eq!(r["results"][0]["status"], 204);
            sent = true;
        }
    }
    let quiet_at = quiet_at.expect("the quiet session's event arrived");
    assert!(
        quiet_at < 3000,
        "delivered during the flood, after {quiet_at}"
    );
    // The flood was paused by its own backpressure while the other flowed.
    let metrics = proxy
        .http
        .get(proxy.url("/_bridge/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let pauses: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wsbridge_backpressure_pauses_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(pauses >= 1, "{metrics}");
    assert!(metrics.contains("wsbridge_channels_active 1"), "{metrics}");
    assert!(metrics.contains("wsbridge_channel_sessions 2"), "{metrics}");
    assert!(
        metrics.contains("wsbridge_channel_batch_frames_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_close_event_is_a_sessions_last_on_the_channel() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let chan = open_channel(&proxy).await;
    let a = chan.open("/echo").await;
    let b = chan.open("/echo").await;
    let mut reader = Reader::open(&chan, "stream", "").await;
    let (_, r) = chan
        .batch(&[
            json!({"session": a, "seq": 1, "data": "close:4001:done"}),
            json!({"session": b, "seq": 1, "data": "still here"}),
        ])
        .await;
    assert_eq!(r["results"][1]["status"], 204);
    let want: HashMap<String, usize> = [(a.clone(), 1), (b.clone(), 1)].into_iter().collect();
    let got = collect(&mut reader, &want).await;
    assert_eq!(got[&a], [Ev::Close(1, 4001, "done".into())]);
    assert_eq!(got[&b], [Ev::Text(1, "still here".into())]);
    // Closed: its frames are 410, the other's go on.
    let (_, r) = chan
        .batch(&[
            json!({"session": a, "seq": 2, "data": "late"}),
            json!({"session": b, "seq": 2, "data": "on"}),
        ])
        .await;
    assert_eq!(r["results"][0]["status"], 410);
    assert_eq!(r["results"][1]["status"], 204);
    let v = reader.next().await.unwrap();
    assert_eq!(
        v,
        json!({"session": b, "id": 2, "type": "text", "data": "on"})
    );
    // A reader that has the close (its cursor says so) no longer carries it.
    let body = chan.poll(&format!("{a}:1,{b}:2"), 0.0).await;
    assert_eq!(body["events"], json!([]));
    assert_eq!(body["cursors"], json!({b.as_str(): 2}));
}

#[tokio::test]
async fn an_idle_channel_ends_and_its_sessions_then_idle_on_their_own() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[sessions]\nidle_timeout = \"300ms\"\n").await;
    let chan = open_channel(&proxy).await;
    let s = chan.open("/echo").await;
    {
        let _reader = Reader::open(&chan, "stream", "").await;
        // While a reader is attached neither idles; then it goes.
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = chan
            .http
            .get(chan.url("/poll?wait=0"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NOT_FOUND {
            assert_eq!(r.json::<Value>().await.unwrap()["error"], "unknown_channel");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the channel never ended"
        );
        // A poll is a reader: let the idle time pass without one.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Detached, the session idles out by itself: close 1001. (A poll is a
    // reader of the session too, so each asks without waiting.)
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = proxy
            .http
            .get(proxy.url(&format!("/_bridge/sessions/{s}/poll?wait=0")))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        if let Some(last) = body["events"].as_array().unwrap().last() {
            assert_eq!(last["type"], "close");
            assert_eq!(last["code"], 1001);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session never idled"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

#[tokio::test]
async fn a_session_read_on_its_own_is_off_the_channel_even_without_a_channel_reader() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let chan = open_channel(&proxy).await;
    let s = chan.open("/echo").await;
    let own = proxy
        .http
        .get(proxy.url(&format!("/_bridge/sessions/{s}/poll?wait=0")))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    let (_, body) = chan.batch(&[json!({"session": s, "data": "x"})]).await;
    assert_eq!(body["results"][0]["status"], 404);
    // The next reader learns it was taken off.
    let mut reader = Reader::open(&chan, "stream", "").await;
    assert_eq!(
        reader.next().await.unwrap(),
        json!({"session": s, "type": "detached"})
    );
}

#[tokio::test]
async fn sse_with_named_heartbeats_sends_one_at_once_for_the_clients_probe() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let chan = open_channel(&proxy).await;
    // No session at all: still an event within the first write.
    let r = chan
        .http
        .get(chan.url("/sse?heartbeat=event"))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let mut text = String::new();
    use futures_util::StreamExt;
    let prelude = format!(":{}\n\n", " ".repeat(2048));
    let expected = format!("{prelude}retry: 1000\n\nevent: heartbeat\ndata:\n\n");
    while text.len() < expected.len() {
        let chunk = tokio::time::timeout(PATIENCE, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.starts_with(&expected), "{text:?}");
}
