//! `[cluster]`: three replicas of the real binary behind a real HAProxy
//! round-robin with no stickiness. Every request of a session may land on
//! any replica; those that do not own it forward it to the owner.
//!
//! Needs Debian's `haproxy` (`apt-get install haproxy`); without it the
//! tests are skipped, unless `CI=true`, where they fail.
//!
//!     cargo test --test cluster -- --nocapture

mod support;

#[path = "cluster/harness.rs"]
mod harness;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::Cluster;
use reqwest::StatusCode;
use serde_json::Value;
use support::soak::{self, Soak};
use support::{Backend, Ev, NdjsonClient, PATIENCE, SseClient};

/// The soak through HAProxy: fewer frames than tests/soak.rs, each request
/// may land on any replica.
const CUTS: Soak = Soak {
    frames: 2000,
    keep_at_most: 300,
    deadline: Duration::from_secs(90),
    pace: false,
};
const SOAK: &str = "[replay]\nmax_events = 8192\n";

/// Forwarded requests that reached their owner, over every live replica.
async fn forwarded_ok(c: &Cluster) -> f64 {
    let mut n = 0.0;
    for i in 0..c.replicas.len() {
        if c.replicas[i].is_some() {
            n += c
                .metric(i, "wsbridge_cluster_forwarded_total", "result=\"ok\"")
                .await;
        }
    }
    n
}

#[tokio::test]
async fn every_request_works_on_any_replica() {
    let backend = Backend::start().await;
    let Some(c) = Cluster::start(&backend, 3, "").await else {
        return;
    };
    let mut owners = std::collections::HashSet::new();
    for round in 0..6 {
        let s = c.open("/echo").await;
        owners.insert(c.owner_of(&s.id));
        // Sends in order with Bridge-Seq, each balanced on its own.
        for i in 1..=10u64 {
            let r = s.http_post_seq(&format!("m{round}-{i}"), i).await;
            assert_eq!(r.status(), StatusCode::NO_CONTENT, "send {i}");
        }
        // A retried send is still a duplicate through another replica.
        let dup = s.http_post_seq(&format!("m{round}-10"), 10).await;
        assert_eq!(dup.status(), StatusCode::OK);
        let want: Vec<Ev> = (1..=10)
            .map(|i| Ev::Text(i, format!("m{round}-{i}")))
            .collect();
        assert_eq!(s.sse_events(0, 10).await, want, "sse");
        assert_eq!(s.stream_events(0, 10).await, want, "stream");
        assert_eq!(s.poll_events(0, 10).await, want, "poll");
        // Last-Event-ID is carried to the owner.
        let resp = c
            .http
            .get(s.url("/sse"))
            .header("last-event-id", "7")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-realtime-transport"], "sse");
        let got = SseClient::new(resp).take(3).await;
        assert_eq!(got, want[7..].to_vec());
        // Close through any replica: the close event, then 410 for sends.
        assert_eq!(
            s.delete("?code=4001&reason=done").await.status(),
            StatusCode::NO_CONTENT
        );
        let end = s.poll_events(10, 1).await;
        assert_eq!(end, vec![Ev::Close(11, 4001, "done".into())]);
        let gone = s.send_text("late").await;
        assert_eq!(gone.status(), StatusCode::GONE);
    }
    assert!(owners.len() > 1, "round robin spread the opens: {owners:?}");
    assert!(forwarded_ok(&c).await > 0.0, "some requests were forwarded");
}

trait SeqSend {
    async fn http_post_seq(&self, text: &str, seq: u64) -> reqwest::Response;
}

impl SeqSend for support::Session {
    async fn http_post_seq(&self, text: &str, seq: u64) -> reqwest::Response {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(self.url("/send"))
            .header("content-type", "text/plain")
            .header("bridge-seq", seq.to_string())
            .body(text.to_owned())
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn sse_soak_through_haproxy_with_random_cuts() {
    let backend = Backend::start().await;
    let Some(c) = Cluster::start(&backend, 3, SOAK).await else {
        return;
    };
    let s = c.open(&format!("/burst?n={}&size=16", CUTS.frames)).await;
    soak::sse(&s, CUTS).await;
    assert!(forwarded_ok(&c).await > 0.0);
}

#[tokio::test]
async fn stream_soak_through_haproxy_with_random_cuts() {
    let backend = Backend::start().await;
    let Some(c) = Cluster::start(&backend, 3, SOAK).await else {
        return;
    };
    let s = c.open(&format!("/burst?n={}&size=16", CUTS.frames)).await;
    soak::stream(&s, CUTS).await;
    assert!(forwarded_ok(&c).await > 0.0);
}

#[tokio::test]
async fn poll_soak_through_haproxy_with_lost_responses() {
    let backend = Backend::start().await;
    let config = format!("{SOAK}[poll]\nmax_events = 50\n");
    let Some(c) = Cluster::start(&backend, 3, &config).await else {
        return;
    };
    let s = c.open(&format!("/burst?n={}&size=16", CUTS.frames)).await;
    soak::poll(&s, CUTS).await;
    assert!(forwarded_ok(&c).await > 0.0);
}

#[tokio::test]
async fn forged_altered_and_foreign_ids_get_the_unknown_answer() {
    let backend = Backend::start().await;
    let Some(c) = Cluster::start(&backend, 3, "").await else {
        return;
    };
    let s = c.open("/echo").await;
    let unknown = |body: &Value| body == &serde_json::json!({"error": "unknown_session"});
    let mut forged = vec![
        // A lone replica's id, and one of a cluster's length, made up.
        "AbCdEfGhIjKlMnOpQrStUv".to_owned(),
        "A".repeat(40),
    ];
    // Every character of the real id altered in turn, owner tag and MAC too.
    for i in 0..s.id.len() {
        let mut chars: Vec<char> = s.id.chars().collect();
        chars[i] = if chars[i] == 'x' { 'y' } else { 'x' };
        forged.push(chars.into_iter().collect());
    }
    for id in &forged {
        for (method, suffix) in [
            ("GET", "/sse"),
            ("GET", "/poll?wait=0"),
            ("POST", "/send"),
            ("DELETE", ""),
        ] {
            let url = c.lb_url(&format!("/_bridge/sessions/{id}{suffix}"));
            let r = c
                .http
                .request(method.parse().unwrap(), url)
                .body("x")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {id}{suffix}");
            let body: Value = r.json().await.unwrap();
            assert!(unknown(&body), "{method} {id}{suffix}: {body}");
        }
    }
    // The real one still works.
    assert_eq!(s.send_text("hi").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.poll_events(0, 1).await, vec![Ev::Text(1, "hi".into())]);
}

#[tokio::test]
async fn the_internal_listener_serves_authenticated_peers_only() {
    let backend = Backend::start().await;
    let Some(c) = Cluster::start(&backend, 3, "").await else {
        return;
    };
    let s = c.open("/echo").await;
    let owner = c.replicas[c.owner_of(&s.id)].as_ref().unwrap().internal;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let poll = format!("/_bridge/sessions/{}/poll?cursor=0&wait=0", s.id);
    let attempts: Vec<(&str, String, Option<String>)> = vec![
        ("GET", poll.clone(), None),
        (
            "GET",
            poll.clone(),
            Some(format!(
                "v1 {now} 127.0.0.1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            )),
        ),
        ("GET", poll.clone(), Some("Bearer anything".into())),
        // Signed for another path: not valid for this one.
        (
            "GET",
            poll.clone(),
            Some(sign(&c.secret, now, "GET", "/_bridge/healthz")),
        ),
        // Signed too long ago.
        (
            "GET",
            poll.clone(),
            Some(sign(&c.secret, now - 600, "GET", &poll)),
        ),
        ("POST", "/_bridge/sessions".into(), None),
        ("GET", "/".into(), None),
    ];
    for (method, path, auth) in attempts {
        let mut req = h2.request(method.parse().unwrap(), format!("http://{owner}{path}"));
        if let Some(a) = &auth {
            req = req.header("wsbridge-peer", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path} {auth:?}"
        );
    }
    // Correctly signed, but not a session request of this replica: nothing
    // else is served, opens and pass-through included.
    for (method, path) in [
        ("POST", "/_bridge/sessions"),
        ("GET", "/page"),
        ("GET", "/_bridge/metrics"),
    ] {
        let r = h2
            .request(method.parse().unwrap(), format!("http://{owner}{path}"))
            .header("wsbridge-peer", sign(&c.secret, now, method, path))
            .body(r#"{"url":"/echo"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
    // And a correctly signed session request is served.
    let r = h2
        .get(format!("http://{owner}{poll}"))
        .header("wsbridge-peer", sign(&c.secret, now, "GET", &poll))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// The peer header as docs/cluster.md specifies it, made independently of
/// the proxy's code.
fn sign(secret: &[u8], ts: u64, method: &str, pq: &str) -> String {
    use aws_lc_rs::hmac;
    use base64::Engine;
    let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let derived = hmac::sign(&root, b"wsbridge cluster peer auth v1");
    let key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
    let text = format!("v1\n{ts}\n127.0.0.1\n{method}\n{pq}");
    let mac = hmac::sign(&key, text.as_bytes());
    format!(
        "v1 {ts} 127.0.0.1 {}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.as_ref())
    )
}

#[tokio::test]
async fn kill_9_of_a_replica_ends_its_sessions_with_1006_and_spares_the_rest() {
    let backend = Backend::start().await;
    let Some(mut c) = Cluster::start(&backend, 3, "[sessions]\nheartbeat = \"1s\"\n").await else {
        return;
    };
    // Sessions until every replica owns at least one.
    let mut sessions = Vec::new();
    for _ in 0..30 {
        let s = c.open("/echo").await;
        let owner = c.owner_of(&s.id);
        sessions.push((s, owner));
        let owned: std::collections::HashSet<_> = sessions.iter().map(|(_, o)| *o).collect();
        if owned.len() == 3 {
            break;
        }
    }
    let victim = sessions[0].1;
    assert!(sessions.iter().any(|(_, o)| *o != victim));
    for (s, _) in &sessions {
        assert_eq!(s.send_text("before").await.status(), StatusCode::NO_CONTENT);
    }
    // A live SSE reader (through whichever replica) on each session.
    let mut readers = Vec::new();
    for (s, _) in &sessions {
        let mut sse = s.sse(Some(0)).await;
        assert_eq!(sse.take(1).await, vec![Ev::Text(1, "before".into())]);
        readers.push(sse);
    }
    c.kill(victim);
    for ((s, owner), mut sse) in sessions.iter().zip(readers) {
        if *owner != victim {
            continue;
        }
        // Its reader ends with close 1006, on this connection if it was
        // forwarded, else on the next, which lands on a live replica.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let close = loop {
            assert!(tokio::time::Instant::now() < deadline, "no close 1006");
            if let Some(raw) = sse.next_raw().await {
                if let Some(ev) = Ev::from_sse(&raw) {
                    break ev;
                }
                continue;
            }
            let Ok(resp) = c.http.get(s.url("/sse?cursor=1")).send().await else {
                continue;
            };
            if resp.status() != StatusCode::OK {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            sse = SseClient::new(resp);
        };
        assert!(matches!(close, Ev::Close(2, 1006, _)), "{close:?}");
        // Poll and stream readers get the same.
        let polled = s.poll_events(1, 1).await;
        assert!(matches!(polled[..], [Ev::Close(2, 1006, _)]), "{polled:?}");
        let streamed = s.stream_events(1, 1).await;
        assert!(
            matches!(streamed[..], [Ev::Close(2, 1006, _)]),
            "{streamed:?}"
        );
    }
    // Every other session carries on through the survivors.
    for (s, owner) in &sessions {
        if *owner == victim {
            continue;
        }
        assert_eq!(s.send_text("after").await.status(), StatusCode::NO_CONTENT);
        assert_eq!(s.poll_events(1, 1).await, vec![Ev::Text(2, "after".into())]);
    }
}

#[tokio::test]
async fn peers_come_and_go_with_dns_re_resolution() {
    use std::net::Ipv4Addr;
    use std::sync::{Arc, Mutex};
    // No load balancer here: each replica is asked directly, so which one
    // answers is the test's choice. Replicas on 127.0.0.1-3, one port.
    let backend = Backend::start().await;
    let answers = Arc::new(Mutex::new(vec![
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(127, 0, 0, 2),
    ]));
    let dns = harness::dns_stand_in("peers.test", Arc::clone(&answers)).await;
    let port = support::free_port();
    let mut key = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut key, &[b'k'; 40]).unwrap();
    let dns_env = dns.to_string();
    let start = |n: u8| {
        let toml = format!(
            "[cluster]\nlisten = \"127.0.0.{n}:{port}\"\npeers_dns = \"peers.test:{port}\"\nsecret_file = \"{}\"\n",
            key.path().display()
        );
        let advertise = format!("127.0.0.{n}:{port}");
        let backend = &backend;
        let dns_env = dns_env.clone();
        async move {
            support::ProxyProcess::start_with(
                backend,
                &toml,
                &[],
                &[
                    ("WSBRIDGE_CLUSTER_ADVERTISE", advertise.as_str()),
                    ("WSBRIDGE_CLUSTER_DNS_SERVER", dns_env.as_str()),
                ],
            )
            .await
        }
    };
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let a = start(1).await;
    let b = start(2).await;
    harness::wait_peers(&http, &a, 1).await;
    harness::wait_peers(&http, &b, 1).await;

    // A session of B, used through A.
    let sb = b.open("/echo").await;
    let sb_via_a = support::Session::from_open(sb.json.clone(), a.url(""), http.clone());
    assert_eq!(
        sb_via_a.send_text("one").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        sb_via_a.poll_events(0, 1).await,
        vec![Ev::Text(1, "one".into())]
    );

    // C starts, but is not in DNS yet: A does not forward to it.
    let c = start(3).await;
    harness::wait_peers(&http, &c, 2).await;
    let sc = c.open("/echo").await;
    let sc_via_a = support::Session::from_open(sc.json.clone(), a.url(""), http.clone());
    assert_eq!(sc_via_a.send_text("early").await.status(), StatusCode::GONE);
    // C's session itself is untouched.
    assert_eq!(
        sc.send_text("direct").await.status(),
        StatusCode::NO_CONTENT
    );

    // C joins the DNS answer: A finds it on a later resolution.
    answers.lock().unwrap().push(Ipv4Addr::new(127, 0, 0, 3));
    harness::wait_peers(&http, &a, 2).await;
    assert_eq!(
        sc_via_a.send_text("joined").await.status(),
        StatusCode::NO_CONTENT
    );
    let got = sc_via_a.poll_events(0, 2).await;
    assert_eq!(
        got,
        vec![Ev::Text(1, "direct".into()), Ev::Text(2, "joined".into())]
    );

    // B leaves the answer: A forgets it, and B's sessions seen through A
    // end with 1006, as after a replica loss.
    answers
        .lock()
        .unwrap()
        .retain(|ip| *ip != Ipv4Addr::new(127, 0, 0, 2));
    harness::wait_peers(&http, &a, 1).await;
    let polled = sb_via_a.poll_events(1, 1).await;
    assert!(matches!(polled[..], [Ev::Close(2, 1006, _)]), "{polled:?}");
    assert!(
        harness::metric_of(
            &http,
            &a,
            "wsbridge_cluster_forwarded_total",
            "result=\"gone\""
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_draining_replica_serves_its_forwarded_readers_to_the_end() {
    let backend = Backend::start().await;
    let Some(mut c) = Cluster::start(&backend, 3, "").await else {
        return;
    };
    let http = c.http.clone();
    let direct = |c: &Cluster, i: usize, s: &support::Session| {
        let p = &c.replicas[i].as_ref().unwrap().process;
        support::Session::from_open(s.json.clone(), p.url(""), http.clone())
    };
    // One session owned by replica 0, one by replica 1.
    let p0 = &c.replicas[0].as_ref().unwrap().process;
    let p1 = &c.replicas[1].as_ref().unwrap().process;
    let s0 = p0.open("/echo").await;
    let s1 = p1.open("/echo").await;
    assert_eq!(s0.send_text("a").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(s1.send_text("b").await.status(), StatusCode::NO_CONTENT);
    // Replica 0's session read through replica 2; replica 1's through 0.
    let mut r0 = direct(&c, 2, &s0).sse(Some(0)).await;
    assert_eq!(r0.take(1).await, vec![Ev::Text(1, "a".into())]);
    let mut r1 = direct(&c, 0, &s1).sse(Some(0)).await;
    assert_eq!(r1.take(1).await, vec![Ev::Text(1, "b".into())]);

    c.replicas[0].as_ref().unwrap().process.signal("TERM");
    // Its own session ends with the drain's 1001, delivered through the
    // forwarding replica: the owner served the forwarded reader to the end.
    assert_eq!(
        r0.take(1).await,
        vec![Ev::Close(2, 1001, "proxy shutting down".into())]
    );
    // The reader it forwarded ends with no close event: its client
    // reconnects elsewhere, and the session carries on.
    let mut rest = Vec::new();
    while let Some(raw) = r1.next_raw().await {
        rest.extend(Ev::from_sse(&raw));
    }
    assert_eq!(rest, vec![], "no event after a forwarder's drain");
    let via2 = direct(&c, 2, &s1);
    assert_eq!(via2.send_text("c").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(via2.sse_events(1, 1).await, vec![Ev::Text(2, "c".into())]);
    let mut p0 = c.replicas[0].take().unwrap().process;
    let status = p0.wait_exit(std::time::Instant::now() + PATIENCE).await;
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "{}", p0.stderr());
}

/// The Kubernetes example's proxy.toml (its ConfigMap) loads, `[cluster]`
/// and all, with the advertise address the Deployment sets.
#[test]
fn the_kubernetes_example_config_loads() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/k8s/deployment.yaml"
    ))
    .unwrap();
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("proxy.toml: |"));
    lines.next().expect("a proxy.toml key in the ConfigMap");
    let toml: String = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let mut key = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut key, &[b'k'; 44]).unwrap();
    let toml = toml.replace(
        "/etc/wsbridge-cluster/cluster.key",
        &key.path().display().to_string(),
    );
    let overrides = wsbridge::config::Overrides {
        cluster_advertise: Some("10.1.2.3:8081".into()),
        ..Default::default()
    };
    let config = wsbridge::Config::from_toml_with(&toml, &overrides)
        .expect("the example's proxy.toml loads");
    let cluster = config.cluster.expect("the example runs a cluster");
    assert_eq!(cluster.advertise, "10.1.2.3:8081".parse().unwrap());
    assert!(matches!(
        cluster.peers,
        wsbridge::config::PeerSource::Dns(_)
    ));
}

// ---- the multiplexed channel ------------------------------------------------

/// Reads channel objects (heartbeats skipped) from an SSE or NDJSON
/// response until each session has `n` events; the events by session.
async fn channel_events(
    resp: reqwest::Response,
    sse: bool,
    sessions: &[&str],
    n: usize,
) -> std::collections::HashMap<String, Vec<Ev>> {
    let (mut s, mut nd) = if sse {
        (Some(SseClient::new(resp)), None)
    } else {
        (None, Some(NdjsonClient::new(resp)))
    };
    let mut got: std::collections::HashMap<String, Vec<Ev>> = std::collections::HashMap::new();
    while !sessions
        .iter()
        .all(|id| got.get(*id).is_some_and(|e| e.len() >= n))
    {
        let v: Value = match (&mut s, &mut nd) {
            (Some(sse), _) => {
                let raw = sse.next_raw().await.expect("the channel reader ended");
                if raw.event != "message" && !raw.event.is_empty() {
                    continue;
                }
                serde_json::from_str(&raw.data).expect("JSON data")
            }
            (_, Some(nd)) => nd.next().await.expect("the channel reader ended"),
            _ => unreachable!(),
        };
        if v["type"] == "heartbeat" {
            continue;
        }
        let id = v["session"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert_ne!(v["type"], "detached", "{v}");
        got.entry(id.to_owned())
            .or_default()
            .push(Ev::from_json(&v));
    }
    got
}

/// A channel opened through the load balancer; its id.
async fn open_channel(c: &Cluster) -> String {
    let r = c
        .http
        .post(c.lb_url("/_bridge/channels"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let chan: Value = r.json().await.unwrap();
    chan["channel"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_channel_lives_on_its_owner_and_works_through_any_replica() {
    let backend = Backend::start().await;
    let Some(c) = Cluster::start(&backend, 3, "").await else {
        return;
    };
    let cid = open_channel(&c).await;
    assert_eq!(cid.len(), 40, "a cluster channel id: {cid}");
    let owner = c.owner_of(&cid);
    let url = |suffix: &str| c.lb_url(&format!("/_bridge/channels/{cid}{suffix}"));
    let post = |suffix: &str, body: String| {
        c.http
            .post(url(suffix))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // Two sessions opened on it, each request on another replica: both live
    // on the channel's owner.
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let r = post("/sessions", json_text(&serde_json::json!({"url": "/echo"})))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        let sid = body["session"].as_str().unwrap().to_owned();
        assert_eq!(c.owner_of(&sid), owner, "a session opened on a channel");
        sessions.push(sid);
    }
    let ids: Vec<&str> = sessions.iter().map(String::as_str).collect();
    let batch = |lines: Vec<Value>| {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        c.http
            .post(url("/send"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    let frame = |sid: &str, i: u64| serde_json::json!({"session": sid, "seq": i, "data": format!("{}-{i}", &sid[..4])});

    // Frames 1..=5 of both in one batch, then 6..=10 one batch each, so the
    // batches land on every replica in turn.
    let first: Vec<Value> = (1..=5)
        .flat_map(|i| ids.iter().map(move |s| (*s, i)))
        .map(|(s, i)| frame(s, i))
        .collect();
    let r = batch(first).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let results: Value = r.json().await.unwrap();
    let statuses: Vec<u64> = results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![204; 10], "{results}");
    for i in 6..=10 {
        let r = batch(ids.iter().map(|s| frame(s, i)).collect())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let results: Value = r.json().await.unwrap();
        assert!(
            results["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["status"] == 204),
            "{results}"
        );
    }
    // A retried frame is a duplicate wherever it lands.
    let r = batch(vec![frame(ids[0], 10)]).await.unwrap();
    let results: Value = r.json().await.unwrap();
    assert_eq!(results["results"][0]["duplicate"], true, "{results}");

    let want = |sid: &str, from: u64| -> Vec<Ev> {
        (from..=10)
            .map(|i| Ev::Text(i, format!("{}-{i}", &sid[..4])))
            .collect()
    };
    // SSE and stream readers, each landing where the balancer sends it:
    // every echo once, in order.
    let all: String = ids
        .iter()
        .map(|s| format!("{s}:0"))
        .collect::<Vec<_>>()
        .join(",");
    for (transport, sse) in [("sse", true), ("stream", false), ("sse", true)] {
        let r = c
            .http
            .get(url(&format!("/{transport}?cursors={all}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{transport}");
        assert_eq!(r.headers()["x-realtime-transport"], transport);
        let got = channel_events(r, sse, &ids, 10).await;
        for sid in &ids {
            assert_eq!(got[*sid], want(sid, 1), "{transport} {sid}");
        }
    }
    // Polls from cursor 4, each on the next replica, until both are at 10.
    let mut cursors: std::collections::HashMap<String, u64> =
        ids.iter().map(|s| (s.to_string(), 4)).collect();
    let mut polled: std::collections::HashMap<String, Vec<Ev>> = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while cursors.values().any(|c| *c < 10) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "polls stalled at {cursors:?}"
        );
        let list: Vec<String> = cursors.iter().map(|(s, n)| format!("{s}:{n}")).collect();
        // Few events per answer, so it takes several polls.
        let r = c
            .http
            .get(url(&format!("/poll?cursors={}&wait=2", list.join(","))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        for v in body["events"].as_array().unwrap() {
            let sid = v["session"].as_str().unwrap().to_owned();
            polled.entry(sid).or_default().push(Ev::from_json(v));
        }
        for (s, n) in body["cursors"].as_object().unwrap() {
            cursors.insert(s.clone(), n.as_u64().unwrap());
        }
    }
    for sid in &ids {
        assert_eq!(polled[*sid], want(sid, 5), "poll {sid}");
    }
    for part in [
        "channel_open",
        "channel_send",
        "channel_sse",
        "channel_stream",
        "channel_poll",
    ] {
        let mut n = 0.0;
        for i in 0..3 {
            n += c
                .metric(
                    i,
                    "wsbridge_cluster_forwarded_total",
                    &format!("endpoint=\"{part}\",result=\"ok\""),
                )
                .await;
        }
        assert!(n > 0.0, "some {part} requests were forwarded");
    }

    // A session another replica owns cannot join: it lives there.
    let mut foreign = None;
    for _ in 0..6 {
        let s = c.open("/echo").await;
        if c.owner_of(&s.id) != owner {
            foreign = Some(s);
            break;
        }
    }
    let foreign = foreign.expect("round robin opens on another replica");
    for _ in 0..3 {
        let r = post("/attach", format!("{{\"session\":\"{}\"}}", foreign.id))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unknown_session");
    }
    // Detach and DELETE through any replica.
    let r = post("/detach", format!("{{\"session\":\"{}\"}}", ids[1]))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c.http.delete(url("")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for _ in 0..3 {
        let r = c.http.get(url("/poll?wait=0")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unknown_channel");
    }
}

fn json_text(v: &Value) -> String {
    v.to_string()
}

#[tokio::test]
async fn forged_channel_ids_get_the_unknown_channel_answer() {
    let backend = Backend::start().await;
    let Some(c) = Cluster::start(&backend, 3, "").await else {
        return;
    };
    let cid = open_channel(&c).await;
    let s = c.open("/echo").await;
    let mut forged = vec!["AbCdEfGhIjKlMnOpQrStUv".to_owned(), "A".repeat(40)];
    for i in 0..cid.len() {
        let mut chars: Vec<char> = cid.chars().collect();
        chars[i] = if chars[i] == 'x' { 'y' } else { 'x' };
        forged.push(chars.into_iter().collect());
    }
    let open = serde_json::json!({"url": "/echo"}).to_string();
    let attach = format!("{{\"session\":\"{}\"}}", s.id);
    for id in &forged {
        for (method, suffix, body) in [
            ("GET", "/sse", ""),
            ("GET", "/poll?wait=0", ""),
            ("POST", "/send", "{\"session\":\"x\",\"data\":\"y\"}\n"),
            ("POST", "/sessions", open.as_str()),
            ("POST", "/attach", attach.as_str()),
            ("POST", "/detach", attach.as_str()),
            ("DELETE", "", ""),
        ] {
            let r = c
                .http
                .request(
                    method.parse().unwrap(),
                    c.lb_url(&format!("/_bridge/channels/{id}{suffix}")),
                )
                .body(body.to_owned())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {id}{suffix}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(
                body,
                serde_json::json!({"error": "unknown_channel"}),
                "{method} {id}{suffix}"
            );
        }
    }
    // The real one still works, and nothing forged opened a session.
    let r = c
        .http
        .get(c.lb_url(&format!("/_bridge/channels/{cid}/poll?wait=0")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut sessions = 0.0;
    for i in 0..3 {
        sessions += c.metric(i, "wsbridge_sessions_active", "").await;
    }
    assert_eq!(sessions, 1.0, "only the real session is open");
}

#[tokio::test]
async fn kill_9_of_a_channels_owner_ends_its_reader_and_the_channel() {
    let backend = Backend::start().await;
    let Some(mut c) = Cluster::start(&backend, 3, "[sessions]\nheartbeat = \"1s\"\n").await else {
        return;
    };
    let cid = open_channel(&c).await;
    let base = c.lb_url(&format!("/_bridge/channels/{cid}"));
    let url = |suffix: &str| format!("{base}{suffix}");
    let r = c
        .http
        .post(url("/sessions"))
        .json(&serde_json::json!({"url": "/echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let sid = r.json::<Value>().await.unwrap()["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let line = serde_json::json!({"session": sid, "data": "before"});
    let r = c
        .http
        .post(url("/send"))
        .body(format!("{line}\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.http.get(url("/sse")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut sse = SseClient::new(r);
    let first = loop {
        let raw = sse.next_raw().await.expect("an event");
        if raw.event == "message" || raw.event.is_empty() {
            break serde_json::from_str::<Value>(&raw.data).unwrap();
        }
    };
    assert_eq!(Ev::from_json(&first), Ev::Text(1, "before".into()));
    let owner = c.owner_of(&cid);
    c.kill(owner);
    // The reader ends (forwarded or not), with no made-up event.
    while let Some(raw) = sse.next_raw().await {
        assert!(
            raw.data.is_empty(),
            "only heartbeats after the loss: {raw:?}"
        );
    }
    // The channel is then unknown wherever the request lands.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut answers = 0;
    while answers < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no unknown_channel");
        let Ok(r) = c.http.get(url("/poll?wait=0")).send().await else {
            continue;
        };
        if r.status() != StatusCode::NOT_FOUND {
            // HAProxy's own answer for the dead replica.
            assert!(r.status().is_server_error(), "{}", r.status());
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unknown_channel");
        answers += 1;
    }
    // Its session, read on its own, ends with close 1006.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no close 1006");
        let Ok(r) = c
            .http
            .get(c.lb_url(&format!("/_bridge/sessions/{sid}/poll?cursor=1&wait=0")))
            .send()
            .await
        else {
            continue;
        };
        if r.status() != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let body: Value = r.json().await.unwrap();
        let events = body["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{body}");
        assert!(
            matches!(Ev::from_json(&events[0]), Ev::Close(2, 1006, _)),
            "{body}"
        );
        break;
    }
}
