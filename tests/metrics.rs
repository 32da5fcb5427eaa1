//! The Prometheus exposition, read with a small parser: every name and label
//! of PROTOCOL.md's Metrics section with values that follow what happened,
//! plus replay depth and the request latency histogram; and the separate
//! `[admin]` listener for Kubernetes probes (and `admin.metrics_on_main`);
//! the content type of each format, `promtool check metrics` on a real
//! scrape; build, connection, splice and process metrics.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::json;
use support::{Backend, PATIENCE, Proxy, ProxyProcess};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A parsed exposition: `name{labels}` (labels as written) → value, and
/// each metric family's `# TYPE`.
struct Exposition {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
    text: String,
}

impl Exposition {
    fn parse(text: String) -> Exposition {
        let mut samples = HashMap::new();
        let mut types = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                types.insert(name.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (key, value) = line.rsplit_once(' ').expect("name value");
                let value: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value: {line}"));
                assert!(
                    samples.insert(key.to_owned(), value).is_none(),
                    "duplicate sample {key}"
                );
            }
        }
        assert!(text.ends_with("# EOF\n") || text.ends_with('\n'));
        Exposition {
            samples,
            types,
            text,
        }
    }

    /// The value of one sample; panics when absent.
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("missing {key} in\n{}", self.text))
    }

    fn kind(&self, family: &str) -> &str {
        self.types
            .get(family)
            .unwrap_or_else(|| panic!("no # TYPE for {family} in\n{}", self.text))
    }
}

async fn scrape(http: &reqwest::Client, url: &str) -> Exposition {
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // No Accept: the Prometheus text format, and its content type.
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Exposition::parse(r.text().await.unwrap())
}

/// Scrapes until `pred` holds (gauges follow readers attaching).
async fn scrape_until(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    pred: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let e = scrape(http, url).await;
        if pred(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "never {what}:\n{}", e.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_contract_metric_follows_what_happened() {
    let backend = Backend::start().await;
    // A port that was free a moment ago: nothing answers there.
    let dead = support::free_port();
    let proxy = Proxy::start(
        &backend,
        &format!(
            "[[routes]]\npath = \"/\"\nupstream = \"ws://{{backend}}/\"\n[[routes]]\npath = \"/dead\"\nupstream = \"ws://127.0.0.1:{dead}/\"\n"
        ),
    )
    .await;
    let metrics = proxy.url("/_bridge/metrics");

    // One session per reader kind, one with none.
    let sse = proxy.open("/echo").await;
    let _sse_reader = sse.sse(None).await;
    let stream = proxy.open("/echo").await;
    let stream_reader = proxy.http.get(stream.url("/stream")).send().await.unwrap();
    assert_eq!(stream_reader.status(), StatusCode::OK);
    let poll = proxy.open("/echo").await;
    let waiting_poll = tokio::spawn({
        let http = proxy.http.clone();
        let url = poll.url("/poll?wait=20");
        async move { http.get(url).send().await.unwrap().status() }
    });
    // Five unread events of 4+2 bytes each ("<i>:" + 4 x), held for replay.
    let idle = proxy.open("/burst?n=5&size=4").await;
    let e = scrape_until(&proxy.http, &metrics, "all readers attached", |e| {
        e.samples
            .get("wsbridge_sessions_active{transport=\"poll\"}")
            .is_some_and(|v| *v == 1.0)
            && e.samples
                .get("wsbridge_replay_events")
                .is_some_and(|v| *v >= 5.0)
    })
    .await;
    for (transport, n) in [("none", 1.0), ("sse", 1.0), ("stream", 1.0), ("poll", 1.0)] {
        assert_eq!(
            e.get(&format!(
                "wsbridge_sessions_active{{transport=\"{transport}\"}}"
            )),
            n,
            "{transport}"
        );
    }
    assert_eq!(e.kind("wsbridge_sessions_active"), "gauge");
    assert_eq!(e.get("wsbridge_replay_events"), 5.0);
    assert_eq!(e.get("wsbridge_replay_bytes"), 5.0 * 6.0);
    assert_eq!(e.kind("wsbridge_replay_events"), "gauge");
    assert_eq!(e.get("wsbridge_sessions_opened_total"), 4.0);
    assert_eq!(e.kind("wsbridge_sessions_opened_total"), "counter");

    // Traffic both ways, with known sizes.
    assert_eq!(sse.send_text("abc").await.status(), 204);
    assert_eq!(sse.send_binary(&[1, 2, 3, 4]).await.status(), 204);
    assert_eq!(poll.send_text("p").await.status(), 204);
    assert_eq!(waiting_poll.await.unwrap(), StatusCode::OK);
    // Upstream rejections and an unreachable upstream, by status.
    assert_eq!(
        proxy.open_raw(json!({"url": "/auth"})).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        proxy.open_raw(json!({"url": "/forbidden"})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        proxy.open_raw(json!({"url": "/dead"})).await.0,
        StatusCode::BAD_GATEWAY
    );
    // Closes: one by the client, one by the upstream.
    assert_eq!(idle.delete("").await.status(), 204);
    let bye = proxy.open("/bye").await;
    bye.poll_events(0, 1).await;

    let e = scrape_until(&proxy.http, &metrics, "both closes counted", |e| {
        e.samples
            .get("wsbridge_sessions_closed_total{reason=\"upstream\"}")
            .is_some_and(|v| *v == 1.0)
    })
    .await;
    for (reason, n) in [
        ("upstream", 1.0),
        ("client", 1.0),
        ("idle", 0.0),
        ("dead", 0.0),
        ("drain", 0.0),
        ("error", 0.0),
    ] {
        assert_eq!(
            e.get(&format!(
                "wsbridge_sessions_closed_total{{reason=\"{reason}\"}}"
            )),
            n,
            "{reason}"
        );
    }
    assert_eq!(e.kind("wsbridge_sessions_closed_total"), "counter");
    // Up: "abc", [1,2,3,4], "p". Down: 5 burst frames, the three echoes.
    assert_eq!(e.get("wsbridge_events_total{direction=\"up\"}"), 3.0);
    assert_eq!(e.get("wsbridge_bytes_total{direction=\"up\"}"), 8.0);
    assert_eq!(e.get("wsbridge_events_total{direction=\"down\"}"), 8.0);
    assert_eq!(
        e.get("wsbridge_bytes_total{direction=\"down\"}"),
        30.0 + 3.0 + 4.0 + 1.0
    );
    for (status, n) in [("401", 1.0), ("403", 1.0), ("502", 1.0)] {
        assert_eq!(
            e.get(&format!(
                "wsbridge_upstream_handshake_failures_total{{status=\"{status}\"}}"
            )),
            n,
            "{status}"
        );
    }
    assert_eq!(e.get("wsbridge_backpressure_pauses_total"), 0.0);
    assert_eq!(
        e.get("wsbridge_http_requests_total{endpoint=\"open\",status=\"201\"}"),
        5.0
    );
    assert_eq!(
        e.get("wsbridge_http_requests_total{endpoint=\"open\",status=\"401\"}"),
        1.0
    );
    assert_eq!(
        e.get("wsbridge_http_requests_total{endpoint=\"send\",status=\"204\"}"),
        3.0
    );
    assert_eq!(
        e.get("wsbridge_http_requests_total{endpoint=\"close\",status=\"204\"}"),
        1.0
    );
    assert_eq!(e.kind("wsbridge_http_requests_total"), "counter");

    // The latency histogram: buckets per endpoint, cumulative, +Inf = count.
    let family = "wsbridge_http_request_duration_seconds";
    assert_eq!(e.kind(family), "histogram");
    let opens = 5.0 + 3.0; // 201s and the three failures
    assert_eq!(
        e.get(&format!("{family}_count{{endpoint=\"open\"}}")),
        opens
    );
    assert!(e.get(&format!("{family}_sum{{endpoint=\"open\"}}")) > 0.0);
    assert_eq!(
        e.get(&format!("{family}_bucket{{le=\"+Inf\",endpoint=\"open\"}}")),
        opens
    );
    let mut buckets: Vec<(f64, f64)> = e
        .samples
        .iter()
        .filter_map(|(k, v)| {
            let labels = k.strip_prefix(&format!("{family}_bucket{{le=\""))?;
            let (le, rest) = labels.split_once('"')?;
            (rest == ",endpoint=\"open\"}").then(|| (le.parse::<f64>().unwrap(), *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() >= 10, "{buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "buckets not cumulative: {buckets:?}"
    );
    drop(stream_reader);
}

#[tokio::test]
async fn backpressure_pauses_are_counted() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[replay]\nmax_pending_bytes = \"4KiB\"\n").await;
    let _s = proxy.open("/flood?n=64&size=1024").await;
    let e = scrape_until(
        &proxy.http,
        &proxy.url("/_bridge/metrics"),
        "a backpressure pause",
        |e| {
            e.samples
                .get("wsbridge_backpressure_pauses_total")
                .is_some_and(|v| *v >= 1.0)
        },
    )
    .await;
    // Held, not dropped: about max_pending_bytes' worth, far from all 64 KiB.
    let held = e.get("wsbridge_replay_bytes");
    assert!((4.0 * 1024.0..16.0 * 1024.0).contains(&held), "{held}");
}

// ---- the admin listener ---------------------------------------------------------

#[tokio::test]
async fn the_admin_listener_serves_health_readiness_and_metrics() {
    let backend = Backend::start().await;
    let config = wsbridge::Config::from_toml(&format!(
        "[upstream]\nurl = \"http://{}\"\n[server]\ndrain_timeout = \"2s\"\n",
        backend.addr
    ))
    .unwrap();
    let shared = wsbridge::AppState::new(config).unwrap();
    let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let main_addr = main.local_addr().unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(wsbridge::net::serve(main, Arc::clone(&shared), async {
        let _ = stop_rx.await;
    }));
    tokio::spawn(wsbridge::net::serve_admin(admin, Arc::clone(&shared)));
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let admin_url = |p: &str| format!("http://{admin_addr}{p}");

    // Bare paths (what a probe is configured with) and the prefixed ones.
    for path in ["/healthz", "/readyz", "/_bridge/healthz", "/_bridge/readyz"] {
        let r = http.get(admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    // The admin metrics are the same registry as the main listener's.
    let r = http
        .post(format!("http://{main_addr}/_bridge/sessions"))
        .json(&json!({"url": "/echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    for path in ["/metrics", "/_bridge/metrics"] {
        let e = scrape(&http, &admin_url(path)).await;
        assert_eq!(e.get("wsbridge_sessions_opened_total"), 1.0, "{path}");
    }
    // Nothing else lives there: no bridge endpoints, no pass-through.
    for path in [
        "/_bridge/sessions",
        "/http/echo",
        "/",
        "/_bridge/transports",
    ] {
        let r = http.get(admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let r = http
        .post(admin_url("/_bridge/sessions"))
        .json(&json!({"url": "/echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Draining: readiness fails on the admin listener, which outlives the
    // main one; liveness holds.
    stop_tx.send(()).unwrap();
    served.await.unwrap().unwrap();
    let r = http.get(admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = http.get(admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        tokio::net::TcpStream::connect(main_addr).await.is_err(),
        "the main listener is closed"
    );
}

#[tokio::test]
async fn metrics_can_live_on_the_admin_listener_only() {
    let backend = Backend::start().await;
    let config = wsbridge::Config::from_toml(&format!(
        "[upstream]\nurl = \"http://{}\"\n[admin]\nlisten = \"127.0.0.1:1\"\nmetrics_on_main = false\n",
        backend.addr
    ))
    .unwrap();
    let shared = wsbridge::AppState::new(config).unwrap();
    let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let main_addr = main.local_addr().unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (_stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(wsbridge::net::serve(main, Arc::clone(&shared), async {
        let _ = stop_rx.await;
    }));
    tokio::spawn(wsbridge::net::serve_admin(admin, Arc::clone(&shared)));
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    let r = http
        .get(format!("http://{main_addr}/_bridge/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found", "{body}");
    // The rest of the main listener's operational endpoints stay.
    let r = http
        .get(format!("http://{main_addr}/_bridge/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for path in ["/metrics", "/_bridge/metrics"] {
        let e = scrape(&http, &format!("http://{admin_addr}{path}")).await;
        assert_eq!(e.kind("wsbridge_sessions_opened_total"), "counter");
    }
}

#[tokio::test]
async fn openmetrics_is_served_to_who_asks_for_it_with_its_content_type() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    // What Prometheus itself sends.
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let r = proxy
        .http
        .get(proxy.url("/_bridge/metrics"))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE wsbridge_sessions_opened counter\n"));
    assert!(text.contains("\nwsbridge_sessions_opened_total 0\n"));

    // Without it: the 0.0.4 text format, whose counter families carry _total.
    let e = scrape(&proxy.http, &proxy.url("/_bridge/metrics")).await;
    assert!(!e.text.contains("# EOF"));
    assert_eq!(e.kind("wsbridge_sessions_opened_total"), "counter");
    assert_eq!(e.get("wsbridge_sessions_opened_total"), 0.0);
}

/// `promtool check metrics` on a scrape taken with sessions, readers, a
/// splice and pass-through traffic live, so every family has samples.
#[tokio::test]
async fn promtool_accepts_a_real_scrape() {
    let Some(promtool) = promtool() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is missing (Debian package `prometheus`)"
        );
        eprintln!("skipped: no promtool (install Debian's `prometheus`)");
        return;
    };
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let sse = proxy.open("/echo").await;
    let _reader = sse.sse(None).await;
    let _idle = proxy.open("/burst?n=3&size=4").await;
    assert_eq!(sse.send_text("x").await.status(), 204);
    assert_eq!(proxy.open_raw(json!({"url": "/auth"})).await.0, 401);
    let r = proxy
        .http
        .get(proxy.url("/http/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/echo", proxy.addr))
        .await
        .unwrap();
    let e = scrape_until(
        &proxy.http,
        &proxy.url("/_bridge/metrics"),
        "a splice",
        |e| e.samples.get("wsbridge_websocket_splices_open") == Some(&1.0),
    )
    .await;

    use std::io::Write;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(e.text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n{}",
        e.text
    );
}

fn promtool() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    })
}

#[tokio::test]
async fn build_info_names_the_version_and_commit() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let e = scrape(&proxy.http, &proxy.url("/_bridge/metrics")).await;
    assert_eq!(e.kind("wsbridge_build_info"), "gauge");
    let info: Vec<(&String, &f64)> = e
        .samples
        .iter()
        .filter(|(k, _)| k.starts_with("wsbridge_build_info{"))
        .collect();
    assert_eq!(info.len(), 1, "{}", e.text);
    let (labels, value) = info[0];
    assert_eq!(*value, 1.0);
    assert!(
        labels.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{labels}"
    );
    let commit = labels
        .split("commit=\"")
        .nth(1)
        .and_then(|c| c.split('"').next())
        .unwrap_or_else(|| panic!("no commit label in {labels}"));
    assert!(!commit.is_empty(), "{labels}");
}

#[tokio::test]
async fn open_connections_and_splices_are_gauges_that_follow_them() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let metrics = proxy.url("/_bridge/metrics");
    let base = scrape(&proxy.http, &metrics).await;
    assert_eq!(base.kind("wsbridge_connections_open"), "gauge");
    // The scraper's own pooled connection is one of them.
    let before = base.get("wsbridge_connections_open");
    assert!(before >= 1.0, "{}", base.text);
    assert_eq!(base.get("wsbridge_websocket_splices_open"), 0.0);

    let raw: Vec<TcpStream> = futures_util::future::join_all(
        (0..3).map(|_| async { TcpStream::connect(proxy.addr).await.unwrap() }),
    )
    .await;
    let (mut ws1, _) = tokio_tungstenite::connect_async(format!("ws://{}/echo", proxy.addr))
        .await
        .unwrap();
    let (ws2, _) = tokio_tungstenite::connect_async(format!("ws://{}/echo", proxy.addr))
        .await
        .unwrap();
    // A spliced connection leaves the HTTP connections for the splices.
    let e = scrape_until(
        &proxy.http,
        &metrics,
        "3 raw + 2 spliced connections",
        |e| {
            e.samples.get("wsbridge_connections_open") == Some(&(before + 3.0))
                && e.samples.get("wsbridge_websocket_splices_open") == Some(&2.0)
        },
    )
    .await;
    assert_eq!(e.kind("wsbridge_websocket_splices_open"), "gauge");

    drop(raw);
    ws1.send(Message::Close(None)).await.unwrap();
    drop(ws1);
    drop(ws2);
    scrape_until(&proxy.http, &metrics, "all of them gone", |e| {
        e.samples.get("wsbridge_connections_open") == Some(&before)
            && e.samples.get("wsbridge_websocket_splices_open") == Some(&0.0)
    })
    .await;
}

/// The process metrics of the real binary (so that no other test's sockets
/// count), read at each scrape.
#[tokio::test]
async fn process_metrics_follow_the_process() {
    let backend = Backend::start().await;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let proxy = ProxyProcess::start(&backend, "").await;
    let metrics = proxy.admin_url("/metrics");
    let e = scrape(&proxy.http, &metrics).await;
    for (family, kind) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert_eq!(e.kind(family), kind, "{family}");
    }
    // Started between just before the spawn (clock ticks round down) and now.
    let start = e.get("process_start_time_seconds");
    assert!(
        (started - 2.0..started + PATIENCE.as_secs_f64()).contains(&start),
        "{start} vs {started}"
    );
    assert!(e.get("process_resident_memory_bytes") > 1_000_000.0);
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .expect("a finite fd limit") as f64;
    assert_eq!(e.get("process_max_fds"), limit, "inherited from the test");

    // Open descriptors: three more connections are three more.
    let fds = e.get("process_open_fds");
    let raw: Vec<TcpStream> = futures_util::future::join_all(
        (0..3).map(|_| async { TcpStream::connect(proxy.addr).await.unwrap() }),
    )
    .await;
    scrape_until(&proxy.http, &metrics, "three more fds", |e| {
        e.samples.get("process_open_fds") == Some(&(fds + 3.0))
    })
    .await;
    drop(raw);
    scrape_until(&proxy.http, &metrics, "the fds closed", |e| {
        e.samples.get("process_open_fds") == Some(&fds)
    })
    .await;

    // CPU time grows with work (bounded: at most 20,000 requests or PATIENCE).
    let cpu = scrape(&proxy.http, &metrics)
        .await
        .get("process_cpu_seconds_total");
    let deadline = Instant::now() + PATIENCE;
    let mut grew = false;
    for _ in 0..200 {
        let batch = (0..100).map(|_| proxy.http.get(proxy.url("/_bridge/healthz")).send());
        for r in futures_util::future::join_all(batch).await {
            assert_eq!(r.unwrap().status(), StatusCode::OK);
        }
        if scrape(&proxy.http, &metrics)
            .await
            .get("process_cpu_seconds_total")
            > cpu
        {
            grew = true;
            break;
        }
        if Instant::now() > deadline {
            break;
        }
    }
    assert!(grew, "process_cpu_seconds_total never grew from {cpu}");
}
